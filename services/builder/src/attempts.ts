/**
 * How a build request's failures end (core failure.ts), around the request handler
 * (request.ts):
 *
 * - before building, a durable "started" mark goes into the key's status (`building`: input
 *   digest, this process's instance, when). A redelivered request that finds another
 *   instance's mark, older than one ack wait, knows that builder died while building it: a
 *   crash, counted. At the crash limit the key is Failed with "the builder died while
 *   building this key" and the message is dropped, so a build that kills its builder ends in
 *   the dead letters (the reconciler's doing) instead of looping;
 * - a transient failure (disk full, I/O, a lost connection) leaves the key Building with
 *   "retrying: <reason>, next at <time>" and the request comes back after the backoff;
 * - a permanent one (a step, a test, a checksum) marks the key Failed with the reason and the
 *   count of failures of these inputs; the reconciler retries it with backoff a bounded number
 *   of times, then dead-letters it;
 * - an invalid one (a request the catalog and the facts refuse) marks the key Failed at once;
 *   but a request refused because the key waits for another build is retried like a transient
 *   failure: it came early, and that build comes.
 *
 * Every ending that leaves the key Failed tells the queue (an intake request), so that the
 * reconciler acts on it now instead of when the build should have ended. Only the status of a
 * key whose desired inputs are the request's is touched: a stale or forged request changes
 * nothing.
 *
 * Within one builder process a key has at most one build at a time. The mark only tells other
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
import { BuildRefusedError } from "./request.ts";

export type AttemptDeps = {
  state: StateStore;
  /** This process, as its marks name it: a restarted builder is another instance. */
  instance: string;
  /** The build consumer's ack wait: a mark younger than this may belong to a builder that is alive. */
  ackWaitMs: number;
  /** Deaths of a builder with one key's build before the key is given up. */
  crashLimit: number;
  /** Delay before a transiently failed request comes back, by delivery count. */
  backoff?: Backoff;
  /** Tells the queue the key's build ended (it is reconciled again). */
  enqueue: (req: EnqueueRequest) => Promise<void>;
  log: Logger;
};

type Delivery = { info: { deliveryCount: number } };

/** A key's build running in this process: the inputs and how its handling ends. */
type Running = { inputDigest: string; ended: Promise<void> };

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

  /** Marks the build started; "busy" when a live builder may hold it, "gave-up" at the crash limit. */
  async function claim(req: BuildRequest): Promise<"run" | "busy" | "gave-up"> {
    let outcome: "run" | "busy" | "gave-up" = "run";
    await deps.state.update(req.key, (s) => {
      outcome = "run";
      if (!current(s, req) || s.phase !== "Building") return undefined; // not asked for now: the handler refuses or skips it
      const mark = s.building?.inputDigest === req.inputDigest ? s.building : undefined;
      let crashes = mark?.crashes ?? 0;
      if (mark && mark.instance !== deps.instance) {
        if (Date.now() - Date.parse(mark.startedAt) < deps.ackWaitMs) {
          outcome = "busy";
          return undefined;
        }
        crashes++;
      }
      const now = new Date().toISOString();
      if (crashes >= deps.crashLimit) {
        outcome = "gave-up";
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
    return outcome;
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
      // Invalid is only recorded for the build being asked for; a request for a key that moved on changes nothing.
      if (failure.kind === "invalid" && s.phase !== "Building") return undefined;
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
  return async function handleWithAttempts(req: BuildRequest, msg: Delivery): Promise<void> {
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
  };

  async function attempt(req: BuildRequest, msg: Delivery): Promise<void> {
    const claimed = await claim(req);
    if (claimed === "busy")
      throw new TransientError(`${req.key}: another builder started this build less than ${deps.ackWaitMs} ms ago`, { retryAfterMs: deps.ackWaitMs });
    if (claimed === "gave-up") {
      deps.log.error("giving up a build that kept killing its builder", { key: req.key, inputDigest: req.inputDigest, crashLimit: deps.crashLimit });
      await tellQueue(req, crashReason("builder", deps.crashLimit));
      return;
    }
    try {
      await handle(req);
    } catch (err) {
      const { kind, reason } = classifyFailure(err, { invalid: isInvalid, permanent: isPermanent });
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
