/**
 * Who may call the status API, and over what.
 *
 * - Transport: TLS when HOMEOSTAT_GRPC_TLS_CERT / _KEY are set, with client certificates
 *   required when HOMEOSTAT_GRPC_TLS_CLIENT_CA is (mTLS: a client without a certificate that CA
 *   signed does not get past the handshake).
 * - Calls: `authorization: Bearer <token>`, one of HOMEOSTAT_GRPC_TOKENS, which holds only each
 *   token's SHA-256. The write methods (Enqueue, RetryDeadLetter,
 *   ApproveProposal, RejectProposal) need the `write` role; the read
 *   methods need a token of either role when read auth is `token`, nothing when it is `none`.
 *   No credentials, or a token that is not configured, is UNAUTHENTICATED; a read token on a
 *   write method PERMISSION_DENIED. With no token configured every write is refused: there is
 *   no unauthenticated write, not even on loopback (the local launcher makes a token per run).
 * - Start: beyond loopback the server starts only with TLS and tokens, unless
 *   HOMEOSTAT_GRPC_INSECURE=true (development), which it then warns about on every start.
 *
 * This guards StatusService only: the health and reflection services answer without a token
 * (they say nothing about keys or the queue, and probes and tools must reach them).
 */
import { timingSafeEqual } from "node:crypto";
import { readFile } from "node:fs/promises";
import type { GrpcToken, StatusApiSecurity } from "@homeostat/core/config";
import { isLoopbackAddress } from "@homeostat/core/config";
import { grpc, type CallContext, ServerError, type ServerMiddleware, Status, tokenDigest, writeMethods } from "@homeostat/status-api";

export class InsecureBindError extends Error {}

/** What the start-up log says about the API's protection. */
export type SecuritySummary = { transport: "plaintext" | "tls" | "mtls"; readAuth: "token" | "none"; tokens: number; insecure: boolean };

/**
 * Checks that `addr` may be served with `security` and returns the warnings to log; throws an
 * InsecureBindError naming what is missing when a non-loopback address lacks TLS or tokens and
 * HOMEOSTAT_GRPC_INSECURE is not set.
 */
export function checkBind(addr: string, security: StatusApiSecurity): string[] {
  if (isLoopbackAddress(addr)) return [];
  const missing = [
    ...(security.tls ? [] : ["TLS (HOMEOSTAT_GRPC_TLS_CERT and HOMEOSTAT_GRPC_TLS_KEY)"]),
    ...(security.tokens.length > 0 ? [] : ["tokens (HOMEOSTAT_GRPC_TOKENS)"]),
  ];
  if (missing.length === 0) return [];
  if (!security.insecure) {
    throw new InsecureBindError(
      `the status API refuses to listen on ${addr}, beyond loopback, without ${missing.join(" and ")}; ` +
        "configure them, bind to 127.0.0.1, or set HOMEOSTAT_GRPC_INSECURE=true for development only",
    );
  }
  const warnings = [
    `INSECURE: HOMEOSTAT_GRPC_INSECURE=true: the status API listens on ${addr} without ${missing.join(" and ")}; never do this outside development`,
  ];
  if (security.readAuth === "none") warnings.push(`INSECURE: HOMEOSTAT_GRPC_READ_AUTH=none: anyone who reaches ${addr} can read every key's status`);
  return warnings;
}

/** The server's transport credentials, read from the PEM files now (so a bad path fails the start). */
export async function serverCredentials(tls: StatusApiSecurity["tls"]): Promise<grpc.ServerCredentials> {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  const read = async (what: string, file: string) => {
    try {
      return await readFile(file);
    } catch (err) {
      throw new Error(`cannot read the status API's ${what} ${file}: ${(err as Error).message}`);
    }
  };
  const [cert, key, clientCa] = await Promise.all([
    read("TLS certificate (HOMEOSTAT_GRPC_TLS_CERT)", tls.certPath),
    read("TLS key (HOMEOSTAT_GRPC_TLS_KEY)", tls.keyPath),
    tls.clientCaPath === undefined ? undefined : read("client CA (HOMEOSTAT_GRPC_TLS_CLIENT_CA)", tls.clientCaPath),
  ]);
  return grpc.ServerCredentials.createSsl(clientCa ?? null, [{ cert_chain: cert, private_key: key }], clientCa !== undefined);
}

export function summary(security: StatusApiSecurity): SecuritySummary {
  const transport = !security.tls ? "plaintext" : security.tls.clientCaPath ? "mtls" : "tls";
  return { transport, readAuth: security.readAuth, tokens: security.tokens.length, insecure: security.insecure };
}

/** The configured token `authorization` carries; every configured digest is compared, so timing does not tell which. */
function matchToken(tokens: readonly GrpcToken[], authorization: string): GrpcToken | undefined {
  const [, token] = /^Bearer\s+(\S{1,4096})\s*$/i.exec(authorization) ?? [];
  if (token === undefined) return undefined;
  const given = Buffer.from(tokenDigest(token), "hex");
  let found: GrpcToken | undefined;
  for (const t of tokens) {
    if (timingSafeEqual(given, Buffer.from(t.sha256, "hex"))) found = t;
  }
  return found;
}

/**
 * Decides one call: returns the caller's token (undefined for an anonymous read) or throws the
 * ServerError the client gets. `method` is the proto method name, e.g. "Enqueue".
 */
export function authorize(security: Pick<StatusApiSecurity, "tokens" | "readAuth">, method: string, authorization: string | undefined): GrpcToken | undefined {
  const write = writeMethods.has(method);
  if (!write && security.readAuth === "none") return undefined;
  const needs = write ? "a bearer token with the write role" : "a bearer token";
  if (security.tokens.length === 0) {
    throw new ServerError(Status.UNAUTHENTICATED, `${method} needs ${needs}, and this server has none configured (HOMEOSTAT_GRPC_TOKENS)`);
  }
  if (authorization === undefined || authorization === "") {
    throw new ServerError(Status.UNAUTHENTICATED, `${method} needs ${needs}: send authorization: Bearer <token>`);
  }
  const token = matchToken(security.tokens, authorization);
  if (!token) throw new ServerError(Status.UNAUTHENTICATED, "the bearer token is not valid here");
  if (write && token.role !== "write") {
    throw new ServerError(Status.PERMISSION_DENIED, `${method} needs the write role; token ${token.name} has the ${token.role} role`);
  }
  return token;
}

/** Who makes a call, for the record of what it changed: its token's name (a write always carries one), or `anonymous`. */
export function callerOf(security: Pick<StatusApiSecurity, "tokens">, context: CallContext): string {
  const authorization = context.metadata.get("authorization");
  const token = authorization ? matchToken(security.tokens, authorization) : undefined;
  return token ? `token:${token.name}` : "anonymous";
}

/** StatusService's authorization, as nice-grpc middleware. */
export function authMiddleware(security: Pick<StatusApiSecurity, "tokens" | "readAuth">): ServerMiddleware {
  return async function* (call, context: CallContext) {
    authorize(security, methodName(call.method.path), context.metadata.get("authorization"));
    return yield* call.next(call.request, context);
  };
}

/** "/homeostat.v1.StatusService/Enqueue" -> "Enqueue". */
export function methodName(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}
