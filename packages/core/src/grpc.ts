/**
 * gRPC: the one home of the status API contract (proto/homeostat/v1/status.proto) on the
 * TypeScript side: the loaded service definition, a typed client, and the mapping between
 * the wire messages and `KeyStatus` (status.ts). The queue service serves it, the CLI calls
 * it; neither knows the wire shape.
 *
 * The proto is loaded at runtime with @grpc/proto-loader; `pnpm gen` (scripts/gen-proto.ts)
 * generates the matching types into ./generated/ with these same loader options.
 * `@grpc/grpc-js` is re-exported as `grpc` so that packages which use this module do not
 * need their own copy of it (one copy of grpc-js per process, one set of status codes).
 */
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { keySchema, type Key } from "./key.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";
import type { ProtoGrpcType } from "./generated/status.ts";
import type { KeyStatus as ProtoKeyStatus, KeyStatus__Output as ProtoKeyStatusOutput } from "./generated/homeostat/v1/KeyStatus.ts";
import type { ListKeysRequest, ListKeysRequest__Output } from "./generated/homeostat/v1/ListKeysRequest.ts";
import type { ListKeysResponse, ListKeysResponse__Output } from "./generated/homeostat/v1/ListKeysResponse.ts";
import type { GetKeyRequest, GetKeyRequest__Output } from "./generated/homeostat/v1/GetKeyRequest.ts";
import type { StatusServiceClient, StatusServiceDefinition, StatusServiceHandlers } from "./generated/homeostat/v1/StatusService.ts";

export { grpc };
export type {
  ProtoKeyStatus,
  ProtoKeyStatusOutput,
  GetKeyRequest,
  GetKeyRequest__Output,
  ListKeysRequest,
  ListKeysRequest__Output,
  ListKeysResponse,
  ListKeysResponse__Output,
  StatusServiceClient,
  StatusServiceDefinition,
  StatusServiceHandlers,
};

/** Root of the .proto files (the repository's proto/ directory; ship it next to packages/). */
export const protoDir = fileURLToPath(new URL("../../../proto/", import.meta.url)).replace(/[\\/]$/, "");
export const statusProtoFile = "homeostat/v1/status.proto";
/** The service's full name, as health checks and reflection know it. */
export const statusServiceName = "homeostat.v1.StatusService";

/**
 * Loader options, shared with the type generator (scripts/gen-proto.ts turns them into its
 * flags): camelCase field names, 64-bit integers and enums as strings, defaults for absent
 * scalar fields, and proto3 `optional` fields left absent when unset.
 */
export const protoLoaderOptions = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const;

const packageDefinition = protoLoader.loadSync(statusProtoFile, { ...protoLoaderOptions, includeDirs: [protoDir] });
const proto = grpc.loadPackageDefinition(packageDefinition) as unknown as ProtoGrpcType;

/** StatusService as grpc-js serves it: `server.addService(statusServiceDefinition, handlers)`. */
export const statusServiceDefinition: StatusServiceDefinition = proto.homeostat.v1.StatusService.service;

/** Pages hold at most this many statuses; a request for more gets this many. */
export const maxPageSize = 1000;
export const defaultPageSize = 100;

/** A typed StatusService client. Plaintext: the API is meant for a trusted network or a local socket. */
export function statusClient(addr: string, options: grpc.ClientOptions = {}): StatusServiceClient {
  return new proto.homeostat.v1.StatusService(addr, grpc.credentials.createInsecure(), options);
}

export type CallOptions = { deadlineMs?: number };

/** GetKey as a promise of a validated `KeyStatus`; rejects with the grpc-js ServiceError. */
export function getKeyStatus(client: StatusServiceClient, key: string, opts: CallOptions = {}): Promise<KeyStatus> {
  return new Promise((resolve, reject) => {
    client.getKey({ key }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        resolve(fromProtoStatus(res!));
      } catch (e) {
        reject(e);
      }
    });
  });
}

export type StatusPage = { items: KeyStatus[]; nextPageToken?: string };

/** One ListKeys page as validated statuses; `nextPageToken` is absent on the last page. */
export function listKeyStatuses(
  client: StatusServiceClient,
  req: { prefix?: string; pageSize?: number; pageToken?: string } = {},
  opts: CallOptions = {},
): Promise<StatusPage> {
  return new Promise((resolve, reject) => {
    client.listKeys({ prefix: req.prefix ?? "", pageSize: req.pageSize ?? 0, pageToken: req.pageToken ?? "" }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        const items = res!.keys.map(fromProtoStatus);
        resolve(res!.nextPageToken ? { items, nextPageToken: res!.nextPageToken } : { items });
      } catch (e) {
        reject(e);
      }
    });
  });
}

function deadline(opts: CallOptions): Date {
  return new Date(Date.now() + (opts.deadlineMs ?? 10_000));
}

/** True when `err` is a gRPC error with this status code. */
export function isGrpcError(err: unknown, code?: grpc.status): err is grpc.ServiceError {
  const e = err as Partial<grpc.ServiceError> | null;
  return typeof e === "object" && e !== null && typeof e.code === "number" && "metadata" in e && (code === undefined || e.code === code);
}

/** The status as its wire message. Absent optional fields stay absent. */
export function toProtoStatus(s: KeyStatus): ProtoKeyStatus {
  const a = s.actual;
  return {
    key: s.key,
    phase: s.phase,
    desiredVersion: s.desiredVersion,
    desiredInputDigest: s.desiredInputDigest,
    actual: a
      ? {
          version: a.version,
          inputDigest: a.inputDigest,
          outputs: { ...a.outputs },
          signatures: { ...a.signatures },
          keyId: a.keyId,
          builtAt: a.builtAt,
          traceId: a.traceId,
        }
      : null,
    attempts: s.attempts,
    lastError: s.lastError,
    cause: s.cause ? { ...s.cause } : null,
    traceId: s.traceId,
    updatedAt: s.updatedAt,
    fannedOut: s.fannedOut,
  };
}

export class ContractViolation extends Error {}

/**
 * A received wire message as a `KeyStatus`, validated against status.ts: a message that
 * does not satisfy it (a server speaking another version, say) throws a ContractViolation
 * naming the fields instead of travelling on half-typed.
 */
export function fromProtoStatus(m: ProtoKeyStatusOutput): KeyStatus {
  const a = m.actual;
  const o = a?.outputs;
  const candidate = {
    key: m.key,
    phase: m.phase,
    desiredVersion: m.desiredVersion,
    desiredInputDigest: m.desiredInputDigest,
    actual: a
      ? {
          version: a.version,
          inputDigest: a.inputDigest,
          outputs: o
            ? {
                archive: o.archive,
                diffId: o.diffId,
                size: o.size === undefined ? undefined : Number(o.size),
                metadata: o.metadata,
                manifest: o.manifest,
                config: o.config,
                sbom: o.sbom,
                provenance: o.provenance,
                location: o.location,
              }
            : undefined,
          signatures: { ...a.signatures },
          keyId: a.keyId,
          builtAt: a.builtAt,
          traceId: a.traceId,
        }
      : undefined,
    attempts: m.attempts,
    lastError: m.lastError,
    cause: m.cause ? { type: m.cause.type, id: m.cause.id, detail: m.cause.detail } : undefined,
    traceId: m.traceId,
    updatedAt: m.updatedAt,
    fannedOut: m.fannedOut,
  };
  const parsed = keyStatusSchema.safeParse(dropUndefined(candidate));
  if (!parsed.success) {
    const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ContractViolation(`invalid KeyStatus${m.key ? ` for ${m.key}` : ""}: ${where}`);
  }
  return parsed.data;
}

/** A key from a request, or the reason it is not one. */
export function parseKeyArg(raw: string): { key: Key } | { error: string } {
  const r = keySchema.safeParse(raw);
  return r.success ? { key: r.data } : { error: `invalid key ${JSON.stringify(raw)}: ${r.error.issues[0]?.message ?? "malformed"}` };
}

/** Removes undefined-valued properties at every level, so parsed objects keep status.ts's shape. */
function dropUndefined<T>(v: T): T {
  if (Array.isArray(v)) return v.map(dropUndefined) as T;
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = dropUndefined(x);
    return out as T;
  }
  return v;
}
