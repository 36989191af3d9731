/**
 * Auth: who may write to ingest.
 *
 * - GitHub deliveries carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, raw body)>`,
 *   checked over the bytes as received (before any parsing) in constant time.
 * - Every other write endpoint (and the audit read) takes `Authorization: Bearer <token>`, one
 *   of HOMEOSTAT_INGEST_TOKENS. Tokens are compared as SHA-256 digests with timingSafeEqual, so
 *   neither a token's content nor its length leaks through timing.
 * - With no token configured, those endpoints are open only when ingest listens on a loopback
 *   address (the quick start); on any other address they refuse every request, so a deployment
 *   that forgot to set tokens is closed, not open.
 */
import { createHash, createHmac, createSecretKey, timingSafeEqual, type KeyObject } from "node:crypto";
import type { FastifyRequest } from "fastify";
import { Problem } from "./problem.ts";

const sha256 = (s: string | Buffer) => createHash("sha256").update(s).digest();

export type BearerAuth = {
  /**
   * Throws a 401 Problem unless the request may write; else returns its principal, what the
   * per-principal rate limit counts by: the matched token's fingerprint (never the token), or
   * the peer address when writes are open on loopback.
   */
  check(req: FastifyRequest): string;
  /** How writes are protected, for the start-up log. */
  mode: "tokens" | "open-on-loopback" | "closed";
};

export function bearerAuth(tokens: readonly string[], listenHost: string): BearerAuth {
  const digests = tokens.map((t) => sha256(t));
  const mode = digests.length > 0 ? "tokens" : isLoopback(listenHost) ? "open-on-loopback" : "closed";
  const challenge = { "www-authenticate": 'Bearer realm="homeostat-ingest"' };
  return {
    mode,
    check(req) {
      if (mode === "open-on-loopback") return `loopback:${req.ip}`;
      if (mode === "closed") {
        throw new Problem(
          401,
          "unauthorized",
          "no bearer token is configured (HOMEOSTAT_INGEST_TOKENS) and ingest is not on a loopback address, so writes are refused",
          { headers: challenge },
        );
      }
      const [, token] = /^Bearer\s+(\S{1,4096})\s*$/i.exec(req.headers.authorization ?? "") ?? [];
      if (token === undefined) throw new Problem(401, "unauthorized", "send Authorization: Bearer <token>", { headers: challenge });
      const given = sha256(token);
      // Every configured token is compared, so the time taken does not say which one matched.
      let matched: Buffer | undefined;
      for (const d of digests) if (timingSafeEqual(given, d)) matched = d;
      if (!matched)
        throw new Problem(401, "unauthorized", "the bearer token is not valid", {
          headers: { "www-authenticate": 'Bearer realm="homeostat-ingest", error="invalid_token"' },
        });
      return `token:${matched.subarray(0, 8).toString("hex")}`;
    },
  };
}

/** Throws a 401 Problem unless `header` is the GitHub signature of `raw` under `secret`. */
export function verifyGithubSignature(secret: string | undefined, raw: Buffer, header: string | string[] | undefined): void {
  if (secret === undefined)
    throw new Problem(401, "unauthorized", "no GitHub webhook secret is configured (HOMEOSTAT_GITHUB_WEBHOOK_SECRET); deliveries are refused");
  const [, signature] = (typeof header === "string" ? /^sha256=([0-9a-f]{64})$/i.exec(header.trim()) : null) ?? [];
  if (signature === undefined) throw new Problem(401, "bad-signature", "X-Hub-Signature-256 is missing or not sha256=<64 hex>");
  const expected = createHmac("sha256", hmacKey(secret)).update(raw).digest();
  if (!timingSafeEqual(Buffer.from(signature, "hex"), expected)) throw new Problem(401, "bad-signature", "X-Hub-Signature-256 does not match the body");
}

// The secret as a key object, made once: a string key is imported again on every createHmac.
let cachedKey: { secret: string; key: KeyObject } | undefined;
function hmacKey(secret: string): KeyObject {
  if (cachedKey?.secret !== secret) cachedKey = { secret, key: createSecretKey(Buffer.from(secret, "utf8")) };
  return cachedKey.key;
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
