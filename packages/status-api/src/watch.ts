/**
 * WatchKeys on the TypeScript side: the request's filter, the events as a client sees them,
 * their wire mapping, and a client that resumes after a lost connection from the last revision
 * it received (see WatchKeys in proto/homeostat/v1/status.proto for the contract).
 */
import { keySchema, type Key, type Kind } from "@homeostat/core/key";
import { phases, type KeyStatus, type Phase } from "@homeostat/core/status";
import { ContractViolation, fromProtoStatus, isGrpcError, Status, type StatusClient, toProtoStatus } from "./grpc.ts";
import type { DeepPartial, WatchEvent as ProtoWatchEvent, WatchKeysRequest } from "./generated/homeostat/v1/status.ts";
import { maxPrefixLength } from "./limits.ts";

export type { WatchKeysRequest };

/** Which keys a watch selects: a key prefix, kinds and phases; an empty list selects all. */
export type WatchFilter = { prefix: string; kinds: readonly Kind[]; phases: readonly Phase[] };

export type WatchEvent =
  | { type: "initial" | "put"; key: Key; revision: number; status: KeyStatus }
  | { type: "delete"; key: Key; revision: number }
  | { type: "synced"; revision: number }
  | { type: "reset"; revision: number; reason: string };

const kinds: readonly Kind[] = ["package", "image"];

/** Whether a key's status is in the view `filter` selects. */
export function matchesWatch(filter: WatchFilter, status: KeyStatus): boolean {
  return (
    status.key.startsWith(filter.prefix) &&
    (filter.kinds.length === 0 || filter.kinds.some((k) => status.key.startsWith(`${k}/`))) &&
    (filter.phases.length === 0 || filter.phases.includes(status.phase))
  );
}

/** A WatchKeys request as a filter and a resume point, or the reason it is not valid. */
export function parseWatchRequest(m: WatchKeysRequest): { filter: WatchFilter; afterRevision?: number } | { error: string } {
  if (m.prefix.length > maxPrefixLength) return { error: `prefix is longer than ${maxPrefixLength} characters` };
  const badKind = m.kinds.find((k) => !kinds.includes(k as Kind));
  if (badKind !== undefined) return { error: `invalid kind ${JSON.stringify(badKind)}: must be one of ${kinds.join(", ")}` };
  const badPhase = m.phases.find((p) => !phases.includes(p as Phase));
  if (badPhase !== undefined) return { error: `invalid phase ${JSON.stringify(badPhase)}: must be one of ${phases.join(", ")}` };
  const filter: WatchFilter = { prefix: m.prefix, kinds: [...new Set(m.kinds as Kind[])], phases: [...new Set(m.phases as Phase[])] };
  if (m.afterRevision === undefined) return { filter };
  const afterRevision = Number(m.afterRevision);
  if (!/^\d+$/.test(m.afterRevision) || !Number.isSafeInteger(afterRevision))
    return { error: `after_revision must be a non-negative integer, got ${m.afterRevision}` };
  return { filter, afterRevision };
}

export function toProtoWatchEvent(e: WatchEvent): DeepPartial<ProtoWatchEvent> {
  const revision = String(e.revision);
  switch (e.type) {
    case "initial":
    case "put":
      return { type: e.type, key: e.key, revision, status: toProtoStatus(e.status) };
    case "delete":
      return { type: e.type, key: e.key, revision };
    case "synced":
      return { type: e.type, revision };
    case "reset":
      return { type: e.type, revision, reason: e.reason };
  }
}

/** A received event, validated: a status that does not parse, an unknown type or a missing field is a ContractViolation. */
export function fromProtoWatchEvent(m: ProtoWatchEvent): WatchEvent {
  const revision = Number(m.revision);
  if (!/^\d+$/.test(m.revision) || !Number.isSafeInteger(revision)) throw new ContractViolation(`invalid WatchEvent revision ${JSON.stringify(m.revision)}`);
  switch (m.type) {
    case "initial":
    case "put": {
      if (!m.status) throw new ContractViolation(`invalid WatchEvent: ${m.type} of ${m.key} without a status`);
      const status = fromProtoStatus(m.status);
      if (status.key !== m.key) throw new ContractViolation(`invalid WatchEvent: ${m.type} of ${m.key} carries the status of ${status.key}`);
      return { type: m.type, key: status.key, revision, status };
    }
    case "delete": {
      const key = keySchema.safeParse(m.key);
      if (!key.success) throw new ContractViolation(`invalid WatchEvent: delete of ${JSON.stringify(m.key)}`);
      return { type: "delete", key: key.data, revision };
    }
    case "synced":
      return { type: "synced", revision };
    case "reset":
      return { type: "reset", revision, reason: m.reason ?? "" };
    default:
      throw new ContractViolation(`invalid WatchEvent type ${JSON.stringify(m.type)}`);
  }
}

export type WatchArgs = { prefix?: string; kinds?: readonly Kind[]; phases?: readonly Phase[]; afterRevision?: number };

/** One WatchKeys call: its events, validated, until the server ends it or `signal` aborts (then it ends quietly). */
export async function* watchKeys(client: StatusClient, args: WatchArgs, opts: { signal?: AbortSignal } = {}): AsyncGenerator<WatchEvent> {
  const request = {
    prefix: args.prefix ?? "",
    kinds: [...(args.kinds ?? [])],
    phases: [...(args.phases ?? [])],
    ...(args.afterRevision !== undefined ? { afterRevision: String(args.afterRevision) } : {}),
  };
  try {
    for await (const m of client.rpc.watchKeys(request, opts.signal ? { signal: opts.signal } : {})) yield fromProtoWatchEvent(m);
  } catch (err) {
    if (opts.signal?.aborted) return;
    throw err;
  }
}

export type ResumingWatchOptions = {
  signal?: AbortSignal;
  /** Told each time the stream broke and is about to be resumed (after `delayMs`). */
  onInterruption?: (err: unknown, resumeAfter: number | undefined, delayMs: number) => void;
  /** Consecutive failed attempts before giving up (default: never give up). */
  maxAttempts?: number;
  /** First delay before a new attempt, doubled each time up to `maxDelayMs` (defaults 250 ms and 5 s). */
  delayMs?: number;
  maxDelayMs?: number;
};

/** The statuses that mean "the stream broke, try again": the server went away, restarted, or dropped a client that fell behind. */
const resumable = new Set([Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED, Status.CANCELLED, Status.ABORTED, Status.INTERNAL, Status.UNKNOWN]);

/**
 * WatchKeys that survives lost connections: after the stream breaks it calls again with the
 * revision of the last change received, so the events continue without a gap or a duplicate.
 * When it broke before the initial state was complete, the next attempt starts over, and a
 * `reset` event (as the server sends when it cannot resume) tells the caller to drop what it
 * holds. Ends when `signal` aborts, or throws when the server refuses the request (e.g.
 * INVALID_ARGUMENT) or `maxAttempts` consecutive attempts failed.
 */
export async function* watchKeysResuming(client: StatusClient, args: WatchArgs, opts: ResumingWatchOptions = {}): AsyncGenerator<WatchEvent> {
  const { signal, maxAttempts = Infinity, delayMs = 250, maxDelayMs = 5_000 } = opts;
  let resumeAfter = args.afterRevision;
  let failures = 0;
  while (!signal?.aborted) {
    let initialPending = resumeAfter === undefined;
    let partialInitial = false;
    try {
      for await (const e of watchKeys(client, { ...args, afterRevision: resumeAfter }, { signal })) {
        failures = 0;
        if (e.type === "reset") {
          initialPending = true;
          resumeAfter = undefined;
        } else if (e.type === "initial") {
          partialInitial = true;
        } else {
          if (e.type === "synced") initialPending = false;
          resumeAfter = e.revision;
        }
        yield e;
      }
      if (signal?.aborted) return;
      throw new Error("the server ended the watch");
    } catch (err) {
      if (signal?.aborted) return;
      if (isGrpcError(err) && !resumable.has(err.code)) throw err;
      if (++failures >= maxAttempts) throw err;
      const delay = Math.min(maxDelayMs, delayMs * 2 ** (failures - 1));
      opts.onInterruption?.(err, initialPending ? undefined : resumeAfter, delay);
      if (initialPending && partialInitial) {
        resumeAfter = undefined;
        yield { type: "reset", revision: 0, reason: "the connection broke before the initial state was complete" };
      }
      await sleep(delay, signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
