/**
 * Following the state bucket: one watch from its first entry that hands every change on in
 * order, restarted when it goes silent (`followState`), and what the reconciler and the builder
 * build on it, a copy of every key's status kept current (`StatusMirror`), so that what reads
 * whole dependency closures (a reconcile, a build request's check) reads memory instead of one
 * round trip per key.
 */
import type { KV } from "@nats-io/kv";
import { keyFromToken, type Key } from "./key.ts";
import { errorMessage, type Logger } from "./log.ts";
import { bucketRevision, type MirroredStatuses, type StatusReader } from "./state.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";

/** One change of the state bucket: the key, its revision, its status after it (undefined: deleted). */
export type StateChange = { key: Key; revision: number; status: KeyStatus | undefined };

/**
 * How long the follower may go without a change while the state bucket holds newer revisions
 * before its watch is started again from the last one applied. The watch is an ordered push
 * consumer that only notices a silent stream by two missed idle heartbeats (10 s, then 60 s
 * once it has been recreated), and a region that lost quorum can leave it waiting longer than
 * that: a regions test saw a follower stay 12 revisions behind for 150 s while the bucket answered.
 */
export const followerStallMs = 10_000;

/**
 * Follows the state bucket from its first entry: every entry, deletions included, goes to
 * `onChange` with its revision, in order and once (the queue feeds its key feed and read model
 * from one follower; the reconciler and the builder their StatusMirror). Resolves once every
 * entry present at the start has been delivered.
 *
 * Every `stallMs / 4` it asks the bucket for its last revision; when that is ahead of what was
 * applied and nothing arrived for `stallMs`, the watch is replaced by one that resumes after the
 * last revision applied (a revision already applied is never delivered twice).
 */
export async function followState(
  state: KV,
  signal: AbortSignal,
  onChange: (entry: StateChange) => void,
  o: { stallMs?: number; log?: Pick<Logger, "warn"> } = {},
): Promise<void> {
  const stallMs = o.stallMs ?? followerStallMs;
  let applied = 0;
  let progressAt = Date.now();
  let caughtUp: () => void = () => {};
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  let watch: Awaited<ReturnType<KV["watch"]>> | undefined;
  const follow = async () => {
    const w = await state.watch(applied > 0 ? { resumeFromRevision: applied + 1 } : {});
    if (signal.aborted) return void w.stop();
    watch = w;
    void (async () => {
      for await (const e of w) {
        if (e.revision <= applied) continue;
        applied = e.revision;
        progressAt = Date.now();
        const key = keyFromToken(e.key);
        onChange({ key, revision: e.revision, status: e.operation === "PUT" ? keyStatusSchema.parse(e.json()) : undefined });
        if (e.delta === 0) caughtUp();
      }
    })();
  };
  await follow();
  let checking = false;
  const restartIfStalled = async () => {
    if (checking || Date.now() - progressAt < stallMs) return;
    checking = true;
    try {
      // Asked with a bound: a check that never answered would hold every later one back.
      const last = await Promise.race([
        state.status().then(({ streamInfo: { state: stream, cluster } }) => ({ seq: stream.last_seq, leader: !cluster || Boolean(cluster.leader) })),
        new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), stallMs).unref()),
      ]).catch(() => undefined);
      // Quiet (nothing newer), or without a leader (nothing new can be written, and a new watch
      // could not be made either): the watch stays. A bucket that does not answer at all is no
      // proof of quiet: seen in the regions test, a follower that stopped at revision 56 of 68 was
      // only started again 157 s later, so then the watch is made again too (from the last
      // revision applied, which costs nothing if it was fine).
      if ((last && (!last.leader || last.seq <= applied)) || Date.now() - progressAt < stallMs || signal.aborted) return;
      o.log?.warn("state follower stalled: watching again from the last revision applied", {
        applied,
        last: last?.seq ?? "the bucket did not answer",
        stalledMs: Date.now() - progressAt,
      });
      watch?.stop();
      watch = undefined;
      progressAt = Date.now();
      void follow().catch((err: unknown) => o.log?.warn("state follower could not watch again; trying at the next check", { reason: errorMessage(err) }));
    } finally {
      checking = false;
    }
  };
  const timer = setInterval(() => void restartIfStalled(), Math.max(stallMs / 4, 1));
  signal.addEventListener(
    "abort",
    () => {
      clearInterval(timer);
      watch?.stop();
    },
    { once: true },
  );
  // An empty bucket delivers nothing: treat "no pending entries" as caught up.
  const status = await state.status();
  if (status.values === 0) caughtUp();
  await ready;
}

/** How long a mirror's reader waits for it to reach the bucket's revision before reading the bucket itself. */
export const mirrorWaitMs = 2_000;

/**
 * Every key's status as the follower last applied it. A reader (`reader`, StateStore.reader's
 * contract) takes the bucket's revision, waits until the mirror has applied it, and then reads
 * memory: each status as of that revision or later, as a read of the bucket would give. A
 * mirror that does not get there in `waitMs` (its watch stalled and not yet replaced, a region
 * without quorum) hands out a reader of the bucket itself: slower, never stale.
 */
export class StatusMirror implements MirroredStatuses {
  /** Each key's status with the revision that wrote it. */
  readonly #statuses = new Map<Key, { status: KeyStatus; revision: number }>();
  /** The keys whose status is marked waiting: a reader's `waiting`. */
  readonly #markedWaiting = new Set<Key>();
  #applied = 0;
  /** Readers waiting for a revision, woken as the follower passes it. */
  #waiting: { revision: number; wake: () => void }[] = [];

  /** Follows `state` until `signal` aborts; resolves once everything present at the start is in. */
  static async follow(state: KV, signal: AbortSignal, log?: Pick<Logger, "warn">): Promise<StatusMirror> {
    const mirror = new StatusMirror();
    await followState(state, signal, (change) => mirror.apply(change), log ? { log } : {});
    return mirror;
  }

  apply(change: StateChange): void {
    if (change.status) this.#statuses.set(change.key, { status: change.status, revision: change.revision });
    else this.#statuses.delete(change.key);
    if (change.status?.waitingFor) this.#markedWaiting.add(change.key);
    else this.#markedWaiting.delete(change.key);
    this.#applied = change.revision;
    if (this.#waiting.length === 0) return;
    const passed = this.#waiting.filter((w) => w.revision <= change.revision);
    if (passed.length === 0) return;
    this.#waiting = this.#waiting.filter((w) => w.revision > change.revision);
    for (const w of passed) w.wake();
  }

  /** Whether the mirror has applied `revision` (waiting up to `waitMs` for it). */
  async reached(revision: number, waitMs = mirrorWaitMs): Promise<boolean> {
    if (this.#applied >= revision) return true;
    let timer: NodeJS.Timeout | undefined;
    const reached = await new Promise<boolean>((resolve) => {
      const waiter = { revision, wake: () => resolve(true) };
      this.#waiting.push(waiter);
      timer = setTimeout(() => {
        this.#waiting = this.#waiting.filter((w) => w !== waiter);
        resolve(false);
      }, waitMs);
    });
    clearTimeout(timer);
    return reached;
  }

  written(key: Key, revision: number): KeyStatus | undefined {
    const held = this.#statuses.get(key);
    return held?.revision === revision ? held.status : undefined;
  }

  /**
   * Every key's status as of the bucket's revision now or later, or undefined when the mirror
   * does not get there in `waitMs`: for a caller that acts on what no status names (the
   * builder's store collection), to which a key left out would be a key without outputs.
   */
  async all(kv: KV, waitMs = mirrorWaitMs): Promise<KeyStatus[] | undefined> {
    if (!(await this.reached(await bucketRevision(kv), waitMs))) return undefined;
    return Array.from(this.#statuses.values(), (held) => held.status);
  }

  /** A reader as of the bucket's revision now or later, from memory once the mirror is there; `fallback` otherwise. */
  async reader(kv: KV, fallback: (at: number) => Promise<StatusReader>, waitMs = mirrorWaitMs): Promise<StatusReader> {
    const at = await bucketRevision(kv);
    if (!(await this.reached(at, waitMs))) return fallback(at);
    const read = (key: Key) => Promise.resolve(this.#statuses.get(key)?.status);
    return Object.assign(read, { revision: at, waiting: this.#markedWaiting });
  }
}
