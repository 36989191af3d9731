/**
 * How a build request's failures end (core failure.ts), around the request handler
 * (request.ts):
 *
 * - before building, a durable "started" mark goes into the key's status (`building`: input
 *   digest, this process's instance, when). A request for the same inputs that finds another
 *   instance's mark (a redelivery after that builder's keep-alives missed the ack wait, or the
 *   request published again) asks whether that builder is alive (liveness.ts: its pid on this
 *   host, its heartbeat). Alive, it is building these inputs and answers them: the request is
 *   handed back, to be looked at again when that builder's heartbeat would turn stale, and is
 *   never built beside it. Gone, it died while building it: a crash, counted, and the build is
 *   taken over. Alive without these inputs in hand (its heartbeat lists what it has), it left
 *   the mark behind (an attempt that failed while NATS failed over): taken over, not counted.
 *   At the crash limit the key is Failed with "the builder died while building this key" and
 *   the message is dropped, so a build that kills its builder ends in the dead
 *   letters (the reconciler's doing) instead of looping;
 * - a request for inputs already built (the key Signing or Ready at them: a copy of the request
 *   that waited while another builder built them) is answered by that build and dropped;
 * - a transient failure (disk full, I/O, a lost connection) leaves the key Building with
 *   "retrying: <reason>, next at <time>" and the request comes back after the backoff;
 * - a permanent one (a step, a test, a checksum) marks the key Failed with the reason and the
 *   count of failures of these inputs; the reconciler retries it with backoff a bounded number
 *   of times, then dead-letters it;
 * - an invalid one (a request the catalog and the facts refuse) marks the key Failed at once;
 *   but a request refused because the key waits for another build is retried like a transient
 *   failure: it came early, and that build comes. Not for ever: a request still waiting
 *   `waitLimitMs` after it was published (longer than a build may take) marks the key Failed
 *   (transient) with the reason, and the reconciler decides again: the key waits for that build
 *   (its completion brings it back) and is retried with backoff, or dead-lettered once the
 *   retries are spent.
 *
 * Every ending that leaves the key Failed tells the queue (an intake request), so that the
 * reconciler acts on it now instead of when the build should have ended. Only the status of a
 * key whose desired inputs are the request's is touched: a stale or forged request changes
 * nothing.
 *
 * Within one builder process a key has at most one build at a time. The mark tells other
 * instances apart, and the same request can reach the instance that is running it (after a NATS
 * restart the server redelivers a message whose ack wait ran out while it could not hear the
 * keep-alives; the reconciler may publish a request again): such a delivery joins the running
 * build and ends as it ends (acked, retried or dropped with it), so there is one build and one
 * result. A request for other inputs of a key building here waits for that build to end first.
 */
import {
  classifyFailure,
  ContractError,
  crashReason,
  errorMessage,
  exponentialBackoff,
  NonRetriableError,
  retryingText,
  TransientError,
  type Backoff,
  type BuildRequest,
  type EnqueueRequest,
  type FailureKind,
  type Key,
  type KeyStatus,
  type Logger,
  type StateStore,
} from "@homeostat/core";
import { BuildFailure } from "./errors.ts";
import type { Mark, MarkOwner } from "./liveness.ts";
import { BuildRefusedError } from "./request.ts";

export type AttemptDeps = {
  state: StateStore;
  /** This process, as its marks name it: a restarted builder is another instance. */
  instance: string;
  /** Whether the builder instance a mark names is alive and has the mark's inputs in hand (liveness.ts). */
  markOwner: (mark: Mark) => Promise<MarkOwner>;
  /** How long after it was published a request waiting for another key's build is given up (see the module comment). */
  waitLimitMs: number;
  /** Deaths of a builder with one key's build before the key is given up. */
  crashLimit: number;
  /** Delay before a transiently failed request comes back, by delivery count. */
  backoff?: Backoff;
  /** Tells the queue the key's build ended (it is reconciled again). */
  enqueue: (req: EnqueueRequest) => Promise<void>;
  log: Logger;
};

/** What a handler sees of a message's delivery: its count, and when the message was published (ns since the epoch). */
type Delivery = { info: { deliveryCount: number; timestampNanos: number } };

/** How a claim on a key's build ended: build it, leave it to the live builder that is building it, drop it (already built), or give up (crash limit). */
type Claim = { outcome: "run" | "built" | "gave-up" } | { outcome: "elsewhere"; instance: string; recheckMs: number };

/** A key's build running in this process: the inputs and how its handling ends. */
type Running = { inputDigest: string; ended: Promise<void> };

/** How many times a claim looks at a mark that other builders keep replacing before it hands the request back. */
const maxClaimLooks = 3;

/**
 * A request that came before a build its inputs need (a dependency released after the request,
 * not built yet): transient. Failing it would leave the key Failed for inputs that become
 * buildable as they are once that build ends (a new version with the same archive), and the
 * reconciler never asks again for inputs that failed as invalid.
 */
const isEarly = (e: unknown): boolean => e instanceof BuildRefusedError && e.reason === "waiting";
const isInvalid = (e: unknown): boolean => !isEarly(e) && (e instanceof BuildRefusedError || e instanceof ContractError);
const isPermanent = (e: unknown): boolean => !isEarly(e) && (e instanceof BuildFailure || e instanceof NonRetriableError);

export function withFailureHandling(handle: (req: BuildRequest) => Promise<void>, deps: AttemptDeps) {
  const backoff = deps.backoff ?? exponentialBackoff(1_000, 60_000);
  const current = (s: KeyStatus | undefined, req: BuildRequest): s is KeyStatus & Required<Pick<KeyStatus, "desiredInputDigest">> =>
    s !== undefined && s.desiredInputDigest === req.inputDigest;

  const markOf = (s: KeyStatus | undefined, req: BuildRequest) =>
    current(s, req) && s.phase === "Building" && s.building?.inputDigest === req.inputDigest ? s.building : undefined;

  /**
   * Marks the build started, unless another instance's mark on it belongs to a builder that is
   * alive ("elsewhere"), the inputs are built already ("built"), or the crash limit is reached
   * ("gave-up").
   */
  async function claim(req: BuildRequest, looks = 1): Promise<Claim> {
    // The owner's liveness is asked before the update, which then takes over that very mark only.
    const seen = markOf(await deps.state.get(req.key), req);
    let abandoned = false;
    if (seen && seen.instance !== deps.instance) {
      const owner = await deps.markOwner(seen);
      if (owner.alive) return { outcome: "elsewhere", instance: seen.instance, recheckMs: owner.recheckMs };
      abandoned = owner.abandoned === true;
      deps.log.warn(abandoned ? "taking over a build its builder abandoned" : "taking over the build of a builder that is gone", {
        key: req.key,
        inputDigest: req.inputDigest,
        owner: seen.instance,
        why: owner.why,
      });
    }
    let claimed = { outcome: "run" } as Claim | "marked-since";
    await deps.state.update(req.key, (s) => {
      claimed = { outcome: "run" };
      if (!current(s, req)) return undefined; // not asked for now: the handler refuses or skips it
      if (s.phase !== "Building") {
        if (s.phase === "Signing" || s.phase === "Ready") claimed = { outcome: "built" };
        return undefined; // else the handler refuses or skips it
      }
      const mark = markOf(s, req);
      if (mark && mark.instance !== deps.instance && (mark.instance !== seen?.instance || mark.startedAt !== seen.startedAt)) {
        claimed = "marked-since";
        return undefined;
      }
      let crashes = mark?.crashes ?? 0;
      if (mark && mark.instance !== deps.instance && !abandoned) crashes++;
      const now = new Date().toISOString();
      if (crashes >= deps.crashLimit) {
        claimed = { outcome: "gave-up" };
        const reason = crashReason("builder", crashes);
        return {
          ...s,
          phase: "Failed",
          lastError: reason,
          building: undefined,
          failure: { inputDigest: s.desiredInputDigest, kind: "crash", reason, count: crashes, at: now },
        };
      }
      return { ...s, building: { inputDigest: s.desiredInputDigest, instance: deps.instance, startedAt: now, crashes } };
    });
    if (claimed !== "marked-since") return claimed;
    // Another builder marked it since the look above: look at that one. Each look follows a
    // claim by another builder, and there are few; the bound only keeps a pathological race finite.
    if (looks < maxClaimLooks) return claim(req, looks + 1);
    throw new TransientError(`${req.key}: builders kept marking this build while this one looked (${looks} times)`);
  }

  /** Records how the build ended: the mark goes, and a failure is written when there is one. */
  async function settle(req: BuildRequest, failure?: { kind: FailureKind; reason: string; retryAt?: number }): Promise<boolean> {
    let failed = false;
    await deps.state.update(req.key, (s) => {
      failed = false;
      if (!current(s, req)) return undefined;
      const mine = s.building?.inputDigest === req.inputDigest && s.building.instance === deps.instance;
      const building = mine ? undefined : s.building;
      if (!failure) {
        if (!mine && s.failure?.inputDigest !== req.inputDigest) return undefined;
        return { ...s, building, failure: undefined };
      }
      if (failure.retryAt !== undefined) return { ...s, building, lastError: retryingText(failure.reason, failure.retryAt) };
      // A refusal (invalid, or a wait given up) is only recorded for the build being asked for; a request for a key that moved on changes nothing.
      if ((failure.kind === "invalid" || failure.kind === "transient") && s.phase !== "Building") return undefined;
      const before = s.failure?.inputDigest === req.inputDigest && s.failure.kind === failure.kind ? s.failure.count : 0;
      failed = true;
      return {
        ...s,
        phase: "Failed",
        lastError: failure.reason,
        building,
        failure: {
          inputDigest: s.desiredInputDigest,
          kind: failure.kind,
          reason: failure.reason.slice(0, 8192),
          count: before + 1,
          at: new Date().toISOString(),
        },
      };
    });
    return failed;
  }

  const tellQueue = (req: BuildRequest, detail: string) =>
    deps
      .enqueue({ v: 1, key: req.key, priority: "release", cause: { type: "built", id: req.inputDigest, detail: detail.slice(0, 2048) } })
      .catch((err: unknown) =>
        // The reconciler looks again when the build should have ended: late, not lost.
        deps.log.warn("could not tell the queue a build ended", { key: req.key, reason: errorMessage(err) }),
      );

  const running = new Map<Key, Running>();

  /** One delivery, with the key's build to itself in this process (see the module comment). */
  async function handleWithAttempts(req: BuildRequest, msg: Delivery): Promise<void> {
    // Each turn waits for one build of the key to end; the map holds at most one per key.
    for (let other = running.get(req.key); other; other = running.get(req.key)) {
      if (other.inputDigest === req.inputDigest) {
        deps.log.info("joining the build of these inputs already running in this builder", { key: req.key, inputDigest: req.inputDigest });
        return other.ended;
      }
      deps.log.info("waiting for this key's build of other inputs to end", { key: req.key, inputDigest: req.inputDigest, running: other.inputDigest });
      await other.ended.catch(() => undefined);
    }
    const mine: Running = { inputDigest: req.inputDigest, ended: attempt(req, msg) };
    running.set(req.key, mine);
    try {
      await mine.ended;
    } finally {
      if (running.get(req.key) === mine) running.delete(req.key);
    }
  }
  /** The inputs whose handling is under way here, marked or about to be (for the heartbeat: liveness.ts). */
  const inputsInFlight = () => [...running.values()].map((r) => r.inputDigest);
  return { handle: handleWithAttempts, inputsInFlight };

  async function attempt(req: BuildRequest, msg: Delivery): Promise<void> {
    const claimed = await claim(req);
    if (claimed.outcome === "elsewhere")
      throw new TransientError(`${req.key}: builder ${claimed.instance} is alive and building these inputs; looking again in ${claimed.recheckMs} ms`, {
        retryAfterMs: claimed.recheckMs,
      });
    if (claimed.outcome === "built") {
      deps.log.info("these inputs are built already: nothing to do for this copy of the request", { key: req.key, inputDigest: req.inputDigest });
      return;
    }
    if (claimed.outcome === "gave-up") {
      deps.log.error("giving up a build that kept killing its builder", { key: req.key, inputDigest: req.inputDigest, crashLimit: deps.crashLimit });
      await tellQueue(req, crashReason("builder", deps.crashLimit));
      return;
    }
    try {
      await handle(req);
    } catch (err) {
      const { kind, reason } = classifyFailure(err, { invalid: isInvalid, permanent: isPermanent });
      const waitedMs = Date.now() - msg.info.timestampNanos / 1e6;
      if (isEarly(err) && waitedMs > deps.waitLimitMs) {
        const gaveUp = `${reason} (still waiting ${Math.round(waitedMs / 1000)} s after the request, longer than a build may take)`;
        deps.log.warn("giving up a request that waits for another build", { key: req.key, inputDigest: req.inputDigest, waitedMs });
        if (await settle(req, { kind, reason: gaveUp })) await tellQueue(req, `build request given up: ${gaveUp}`);
        throw new NonRetriableError(`${req.key}: ${gaveUp}`, { cause: err });
      }
      if (kind === "transient") {
        const delay = err instanceof TransientError && err.retryAfterMs !== undefined ? err.retryAfterMs : backoff(msg.info.deliveryCount);
        await settle(req, { kind, reason, retryAt: Date.now() + delay });
        throw new TransientError(reason, { retryAfterMs: delay, cause: err });
      }
      if (await settle(req, { kind, reason })) await tellQueue(req, `build failed (${kind}): ${reason}`);
      throw err instanceof NonRetriableError ? err : new NonRetriableError(`${req.key}: ${reason}`, { cause: err });
    }
    await settle(req);
  }
}
