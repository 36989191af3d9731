/**
 * gRPC: the one home of the status API contract (proto/homeostat/v1/status.proto) on the
 * TypeScript side: the loaded service definition, a typed client, and the mapping between
 * the wire messages and `KeyStatus` (status.ts), the work queue's types (workqueue.ts), and
 * the known releases and advisories (releases.ts, osv.ts).
 * The queue service serves it, the CLI calls it; neither knows the wire shape.
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
import { z } from "zod";
import { causeSchema, priorities, prioritySchema, type Cause, type Priority } from "@homeostat/core/contracts";
import { keySchema, nameSchema, type Key } from "@homeostat/core/key";
import { compareVersions, type Osv, osvSchema, type Release } from "@homeostat/catalog";
import { keyStatusSchema, type KeyStatus } from "@homeostat/core/status";
import type { DeadLetter, EnqueueOutcome, QueueRequest, QueueStats } from "@homeostat/workqueue";
import type { ProtoGrpcType } from "./generated/status.ts";
import type { KeyStatus as ProtoKeyStatus, KeyStatus__Output as ProtoKeyStatusOutput } from "./generated/homeostat/v1/KeyStatus.ts";
import type { ListKeysRequest, ListKeysRequest__Output } from "./generated/homeostat/v1/ListKeysRequest.ts";
import type { ListKeysResponse, ListKeysResponse__Output } from "./generated/homeostat/v1/ListKeysResponse.ts";
import type { GetKeyRequest, GetKeyRequest__Output } from "./generated/homeostat/v1/GetKeyRequest.ts";
import type { StatusServiceClient, StatusServiceDefinition, StatusServiceHandlers } from "./generated/homeostat/v1/StatusService.ts";
import type { QueueStatsResponse, QueueStatsResponse__Output } from "./generated/homeostat/v1/QueueStatsResponse.ts";
import type { EnqueueRequest, EnqueueRequest__Output } from "./generated/homeostat/v1/EnqueueRequest.ts";
import type { DeadLetter as ProtoDeadLetter, DeadLetter__Output as ProtoDeadLetterOutput } from "./generated/homeostat/v1/DeadLetter.ts";
import type { KnownFactsRequest, KnownFactsRequest__Output } from "./generated/homeostat/v1/KnownFactsRequest.ts";
import type { KnownFactsResponse__Output } from "./generated/homeostat/v1/KnownFactsResponse.ts";
import type { PackageFacts as ProtoPackageFacts } from "./generated/homeostat/v1/PackageFacts.ts";

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
  QueueStatsResponse,
  QueueStatsResponse__Output,
  EnqueueRequest,
  EnqueueRequest__Output,
  ProtoDeadLetter,
  ProtoDeadLetterOutput,
  KnownFactsRequest,
  KnownFactsRequest__Output,
  ProtoPackageFacts,
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

/** Why: the key's status, then each dependency status its cause leads to (see the proto). */
export function whyKey(client: StatusServiceClient, key: string, opts: CallOptions = {}): Promise<KeyStatus[]> {
  return new Promise((resolve, reject) => {
    client.why({ key }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        resolve(res!.chain.map(fromProtoStatus));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** Longest chain Why follows: deeper than any real dependency path, short enough to bound a loop. */
export const maxWhyDepth = 64;

/**
 * The causal chain from `key`: its status, then while a status's cause is a dependency
 * (cause.id a key), that key's status. Stops at a missing status, a repeated key or
 * `maxWhyDepth` links. Shared by the server (over its read model) and tests.
 */
export async function causalChain(key: Key, get: (key: Key) => Promise<KeyStatus | undefined>): Promise<KeyStatus[]> {
  const chain: KeyStatus[] = [];
  const seen = new Set<Key>();
  let next: Key | undefined = key;
  while (next !== undefined && !seen.has(next) && chain.length < maxWhyDepth) {
    seen.add(next);
    const status = await get(next);
    if (!status) break;
    chain.push(status);
    const c = status.cause;
    const parsed = c?.type === "dependency" && c.id ? keySchema.safeParse(c.id) : undefined;
    next = parsed?.success ? parsed.data : undefined;
  }
  return chain;
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

/** QueueStats as a promise of validated `QueueStats`. */
export function getQueueStats(client: StatusServiceClient, opts: CallOptions = {}): Promise<QueueStats> {
  return new Promise((resolve, reject) => {
    client.queueStats({}, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        resolve(fromProtoQueueStats(res!));
      } catch (e) {
        reject(e);
      }
    });
  });
}

/**
 * What a client asks Enqueue for. Delays are relative to the server's receipt; the server
 * validates everything, so this is passed on unchecked.
 */
export type EnqueueArgs = { key: string; priority?: string; notBeforeDelayMs?: number; floorDelayMs?: number; causeDetail?: string };

/** Enqueue; resolves to the queue's outcome. */
export function enqueueKey(client: StatusServiceClient, args: EnqueueArgs, opts: CallOptions = {}): Promise<EnqueueOutcome> {
  return new Promise((resolve, reject) => {
    client.enqueue({ ...args, priority: args.priority ?? "" }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      const outcome = enqueueOutcomeSchema.safeParse(res!.outcome);
      if (outcome.success) resolve(outcome.data);
      else reject(new ContractViolation(`invalid Enqueue outcome ${JSON.stringify(res!.outcome)}`));
    });
  });
}

export type DeadLetterPage = { items: DeadLetterEntry[]; total: number };

/** ListDeadLetters: the oldest `limit` entries (server default when absent) and the total. */
export function listDeadLetters(client: StatusServiceClient, req: { limit?: number } = {}, opts: CallOptions = {}): Promise<DeadLetterPage> {
  return new Promise((resolve, reject) => {
    client.listDeadLetters({ limit: req.limit ?? 0 }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        resolve({ items: res!.deadLetters.map(fromProtoDeadLetter), total: parseCount(res!.total, "total") });
      } catch (e) {
        reject(e);
      }
    });
  });
}

/** RetryDeadLetter; rejects with NOT_FOUND when the key is not in the dead letters. */
export function retryDeadLetter(client: StatusServiceClient, key: string, opts: CallOptions = {}): Promise<void> {
  return new Promise((resolve, reject) => {
    client.retryDeadLetter({ key }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      if (res!.retried) resolve();
      else reject(new ContractViolation(`RetryDeadLetter of ${key} answered OK without retrying`));
    });
  });
}

/**
 * KnownFacts: the releases and stored advisories of each of `packages` (at most
 * `maxKnownFactsPackages`), one entry per distinct name in request order, validated.
 */
export function knownFacts(client: StatusServiceClient, packages: readonly string[], opts: CallOptions = {}): Promise<PackageFacts[]> {
  return new Promise((resolve, reject) => {
    client.knownFacts({ packages: [...packages] }, { deadline: deadline(opts) }, (err, res) => {
      if (err) return reject(err);
      try {
        resolve(fromProtoKnownFacts(res!, packages));
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
    builds: (s.builds ?? []).map((b) => ({ ...b, cause: b.cause ? { ...b.cause } : null })),
    waitingFor: s.waitingFor,
    advisories: s.advisories ?? [],
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
    // Empty repeated fields are absent in status.ts, as they were before the wire.
    builds: m.builds.length
      ? m.builds.map((b) => ({
          version: b.version,
          inputDigest: b.inputDigest,
          outcome: b.outcome,
          at: b.at,
          traceId: b.traceId,
          cause: b.cause ? { type: b.cause.type, id: b.cause.id, detail: b.cause.detail } : undefined,
        }))
      : undefined,
    waitingFor: m.waitingFor,
    advisories: m.advisories.length ? [...m.advisories] : undefined,
  };
  const parsed = keyStatusSchema.safeParse(dropUndefined(candidate));
  if (!parsed.success) {
    const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ContractViolation(`invalid KeyStatus${m.key ? ` for ${m.key}` : ""}: ${where}`);
  }
  return parsed.data;
}

/* ---------------------------------------------------------------- queue */

const enqueueOutcomeSchema = z.enum(["added", "deduped", "rerun"]);

/** Longest delay an Enqueue may ask for: further out is a mistake, not a schedule. */
export const maxEnqueueDelayMs = 30 * 24 * 3_600_000;
/** The class of an Enqueue that names none (see EnqueueRequest.priority in the proto). */
export const defaultEnqueuePriority: Priority = "release";
export const defaultDeadLetterLimit = 100;
export const maxDeadLetterLimit = 1000;

export function toProtoQueueStats(s: QueueStats): QueueStatsResponse {
  return {
    depth: priorities.map((priority) => ({ priority, depth: s.depth[priority] })),
    running: s.running,
    retrying: s.retrying,
    deadLetters: s.deadLetters,
  };
}

/** Received stats, validated: every class of contracts.ts exactly once, counts non-negative. */
export function fromProtoQueueStats(m: QueueStatsResponse__Output): QueueStats {
  const depth = {} as Record<Priority, number>;
  for (const d of m.depth) {
    const p = prioritySchema.safeParse(d.priority);
    if (!p.success) throw new ContractViolation(`invalid QueueStats: unknown priority class ${JSON.stringify(d.priority)}`);
    if (p.data in depth) throw new ContractViolation(`invalid QueueStats: class ${p.data} given twice`);
    depth[p.data] = parseCount(d.depth, `depth of ${p.data}`);
  }
  const missing = priorities.filter((p) => !(p in depth));
  if (missing.length) throw new ContractViolation(`invalid QueueStats: no depth for ${missing.join(", ")}`);
  return { depth, running: parseCount(m.running, "running"), retrying: parseCount(m.retrying, "retrying"), deadLetters: parseCount(m.deadLetters, "dead_letters") };
}

/**
 * An Enqueue request as the queue's `QueueRequest`, or the reason it is not one (the server
 * answers INVALID_ARGUMENT with it). Delays become times on `now`, the server's clock.
 */
export function fromProtoEnqueue(m: EnqueueRequest__Output, now: number): { request: QueueRequest } | { error: string } {
  const parsed = parseKeyArg(m.key);
  if ("error" in parsed) return parsed;
  const priority = m.priority === "" ? defaultEnqueuePriority : m.priority;
  if (!prioritySchema.safeParse(priority).success) {
    return { error: `invalid priority ${JSON.stringify(m.priority)}: must be one of ${priorities.join(", ")} (empty: ${defaultEnqueuePriority})` };
  }
  const delays: Record<"notBefore" | "floor", number | undefined> = { notBefore: undefined, floor: undefined };
  for (const [field, raw, name] of [["notBefore", m.notBeforeDelayMs, "not_before_delay_ms"], ["floor", m.floorDelayMs, "floor_delay_ms"]] as const) {
    if (raw === undefined) continue;
    const ms = Number(raw);
    if (!/^\d+$/.test(raw) || ms > maxEnqueueDelayMs) {
      return { error: `${name} must be between 0 and ${maxEnqueueDelayMs} (30 days), got ${raw}` };
    }
    delays[field] = now + ms;
  }
  const cause = causeSchema.safeParse({ type: "manual", ...(m.causeDetail !== undefined ? { detail: m.causeDetail } : {}) });
  if (!cause.success) return { error: `invalid cause_detail: ${cause.error.issues[0]?.message ?? "malformed"}` };
  return {
    request: {
      key: parsed.key,
      priority: priority as Priority,
      cause: cause.data,
      ...(delays.notBefore !== undefined ? { notBefore: delays.notBefore } : {}),
      ...(delays.floor !== undefined ? { floor: delays.floor } : {}),
    },
  };
}

/** A dead letter as a client sees it: the time as RFC 3339, the queued item's class and cause. */
export type DeadLetterEntry = { key: Key; reason: string; nonRetriable: boolean; attempts: number; at: string; priority: Priority; cause: Cause };

const deadLetterEntrySchema = z.object({
  key: keySchema,
  reason: z.string(),
  nonRetriable: z.boolean(),
  attempts: z.number().int().nonnegative(),
  at: z.iso.datetime(),
  priority: prioritySchema,
  cause: causeSchema,
});

export function toProtoDeadLetter(d: DeadLetter): ProtoDeadLetter {
  return {
    key: d.key,
    reason: d.reason,
    nonRetriable: d.nonRetriable,
    attempts: d.attempts,
    at: new Date(d.at).toISOString(),
    priority: d.item.priority,
    cause: { ...d.item.cause },
  };
}

export function fromProtoDeadLetter(m: ProtoDeadLetterOutput): DeadLetterEntry {
  const candidate = {
    key: m.key,
    reason: m.reason,
    nonRetriable: m.nonRetriable,
    attempts: m.attempts,
    at: m.at,
    priority: m.priority,
    cause: m.cause ? { type: m.cause.type, id: m.cause.id, detail: m.cause.detail } : undefined,
  };
  const parsed = deadLetterEntrySchema.safeParse(dropUndefined(candidate));
  if (!parsed.success) {
    const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ContractViolation(`invalid DeadLetter${m.key ? ` for ${m.key}` : ""}: ${where}`);
  }
  return parsed.data;
}

/** A count received as an int64 decimal string (longs=String). */
function parseCount(raw: string, what: string): number {
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || !Number.isSafeInteger(n)) throw new ContractViolation(`invalid ${what}: ${JSON.stringify(raw)}`);
  return n;
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

/* ---------------------------------------------------------------- known facts */

/** A KnownFacts request names at most this many packages. */
export const maxKnownFactsPackages = 1000;

/** What the factory knows of one package: its release versions (oldest first) and its stored advisories (in id order). */
export type PackageFacts = { package: string; releases: string[]; advisories: Osv[] };

const packageFactsSchema = z.object({ package: nameSchema, releases: z.array(z.string().min(1)), advisories: z.array(osvSchema) });

/** The distinct package names of a KnownFacts request, in request order, or the reason they are not valid. */
export function parseKnownFactsRequest(m: KnownFactsRequest__Output): { packages: string[] } | { error: string } {
  if (m.packages.length === 0) return { error: "packages must name at least one package" };
  if (m.packages.length > maxKnownFactsPackages) return { error: `packages may name at most ${maxKnownFactsPackages} packages, got ${m.packages.length}` };
  const packages = [...new Set(m.packages)];
  for (const name of packages) {
    const r = nameSchema.safeParse(name);
    if (!r.success) return { error: `invalid package name ${JSON.stringify(name)}: ${r.error.issues[0]?.message ?? "malformed"}` };
  }
  return { packages };
}

/** One package's stored facts as its wire message: versions oldest first, advisories as OSV JSON. */
export function toProtoPackageFacts(name: string, releases: readonly Release[], advisories: readonly Osv[]): ProtoPackageFacts {
  return {
    package: name,
    releaseVersions: releases.map((r) => r.version).sort(compareVersions),
    advisories: advisories.map((a) => JSON.stringify(a)),
  };
}

/** A received KnownFacts answer, validated: every advisory an OSV document, every requested name answered. */
export function fromProtoKnownFacts(m: KnownFactsResponse__Output, requested: readonly string[]): PackageFacts[] {
  const facts = m.packages.map((p) => {
    const advisories = p.advisories.map((json, i) => {
      try {
        return JSON.parse(json) as unknown;
      } catch {
        throw new ContractViolation(`invalid KnownFacts for ${p.package}: advisory ${i} is not JSON`);
      }
    });
    const parsed = packageFactsSchema.safeParse({ package: p.package, releases: p.releaseVersions, advisories });
    if (!parsed.success) {
      const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
      throw new ContractViolation(`invalid KnownFacts${p.package ? ` for ${p.package}` : ""}: ${where}`);
    }
    return parsed.data;
  });
  const answered = new Set(facts.map((f) => f.package));
  const missing = [...new Set(requested)].filter((name) => !answered.has(name));
  if (missing.length) throw new ContractViolation(`invalid KnownFacts: no answer for ${missing.join(", ")}`);
  return facts;
}
