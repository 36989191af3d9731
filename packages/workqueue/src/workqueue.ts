/**
 * Work queue: keys to reconcile, durable in JetStream, with DriftlessAF's and client-go's
 * per-key guarantees across processes (and, because every name carries the region, regions).
 *
 * Where things live:
 *  - A queued key is one message on `<prefix>.<region>.work.<class>.<kind>.<name>` in a
 *    WorkQueue stream that allows one message per subject (`discard_new_per_subject`). Its
 *    body is the key's schedule (`WorkItem`: class, not-before, floor, attempts).
 *  - Each class has its own durable consumer, shared by every worker.
 *  - A key's run record (KV `<prefix>_runs`, key `<region>.<kind>.<name>`) exists while the key
 *    runs, waits for a retry or for a reconcile's floor, or sits in the dead letters. It is
 *    the lease.
 *
 * Invariants (each holds across processes and restarts; "record" is the key's run record):
 *  1. Dedup: a key has at most one queued message per class, and an enqueue that finds the key
 *     queued in any class merges into one message: the higher class wins, the earlier
 *     not-before wins, and not-before never moves before the strongest floor. Counted.
 *     A reconcile's floor is also kept in the record and holds for every message of the key.
 *  2. Exclusivity: a key runs only in the worker that created its record (create fails if it
 *     exists), and only while the record's lease is unexpired. A message delivered while the
 *     record is held waits (nak with delay); it never runs. (A copy of a message delivered
 *     twice, after it outlived its ack wait in a client's buffer, may run the key once more
 *     afterwards: at least once, never at once.)
 *  3. Rerun once: an enqueue that finds the key running marks the record (compare-and-set).
 *     A run ends by acking its message and then erasing the record by its revision; erasing
 *     fails if a mark arrived, and the worker then queues the key once, with the marks merged.
 *     However many enqueues arrived, the key runs exactly once more.
 *  4. Nothing lost: a message is acked only after its run ended and anything that must follow
 *     (children, a requeue) is durable in the stream or in the record. A worker that dies
 *     stops renewing: after the lease its message comes back, and the next worker takes the
 *     expired record over (the crash counts as an attempt, so a poison key ends in the dead
 *     letters instead of looping). What a dead worker had promised to queue after its ack is
 *     in its record, as is a retry whose message is gone; `sweep()` queues them.
 *  5. Results: done; requeueAfter (attempts reset, an enqueue may pull it earlier); notBefore
 *     (a floor, capped); children (enqueued before the parent's message is acked);
 *     nonRetriable (to the dead letters at once, with the reason); a throw retries after
 *     base × 2^(attempts-1) (capped, jittered), keeping the attempts in the record, and after
 *     `maxAttempts` the key moves to the dead letters. A later successful run clears them.
 *  6. Attempts are counted by the queue (max_deliver is unlimited): an exhausted max_deliver
 *     would leave its message blocking the subject of a WorkQueue stream (nats-server #5564).
 *  7. Priority: each worker takes from the most urgent class that has a message; a less urgent
 *     one waits while a more urgent one is available.
 *  8. Drain: when the run signal aborts, no new message is taken; runs still going after the
 *     drain time are handed back without spending an attempt, and `run()` returns.
 */
import type { JsMsg } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { metrics } from "@opentelemetry/api";
import { decodeMessage, encodeMessage, priorities, workItemSchema, type Cause, type Priority, type WorkItem } from "@homeostat/core/contracts";
import { keyFromToken, type Key } from "@homeostat/core/key";
import { errorMessage, type Logger } from "@homeostat/core/log";
import { JetStreamPipe } from "@homeostat/core/jetstream-pipe";
import { exponentialBackoff, type Backoff } from "@homeostat/core/messaging";
import { contextFromHeaders, inSpan, SpanKind, traceHeaders } from "@homeostat/core/telemetry";
import { bucketStream, type Nats } from "@homeostat/core/topology";

/** What a reconcile asks the queue to do next with its key. Errors are thrown, not returned. */
export type ReconcileResult =
  | { type: "done"; children?: readonly QueueRequest[] }
  | { type: "requeueAfter"; ms: number; children?: readonly QueueRequest[] }
  | { type: "notBefore"; ms: number; children?: readonly QueueRequest[] }
  | { type: "nonRetriable"; reason: string };

export const done: ReconcileResult = { type: "done" };
export const doneWith = (children: readonly QueueRequest[]): ReconcileResult => ({ type: "done", children });
export const requeueAfter = (ms: number): ReconcileResult => ({ type: "requeueAfter", ms });
export const notBefore = (ms: number): ReconcileResult => ({ type: "notBefore", ms });
export const nonRetriable = (reason: string): ReconcileResult => ({ type: "nonRetriable", reason });

/** "Reconcile this key": a class, optionally not before a time, optionally with a floor. */
export type QueueRequest = { key: Key; priority: Priority; cause: Cause; notBefore?: number; floor?: number };

/** added: newly queued; deduped: merged into the queued message; rerun: marked to run once more. */
export type EnqueueOutcome = "added" | "deduped" | "rerun";

export type Reconcile = (item: WorkItem, run: { attempt: number; signal: AbortSignal }) => Promise<ReconcileResult>;

export type DeadLetter = { key: Key; reason: string; nonRetriable: boolean; attempts: number; at: number; item: WorkItem };

export type QueueStats = {
  /** Queued messages per class (waiting, delayed or running). */
  depth: Record<Priority, number>;
  running: number;
  retrying: number;
  deadLetters: number;
};

type RunRecord = {
  /** waiting: the key may not run before `floor` (a reconcile's notBefore), whichever message is taken. */
  phase: "running" | "retrying" | "waiting" | "dead";
  owner: string;
  /** Stream sequence and class of the message this record is about. */
  seq: number;
  priority: Priority;
  leaseUntil: number;
  attempts: number;
  /** Enqueues that arrived while running, merged: queue the key once more afterwards. */
  rerun?: WorkItem;
  /** What the run queues after its ack (a requeue); kept here so that a crash cannot lose it. */
  pending?: WorkItem;
  retryAt?: number;
  floor?: number;
  error?: string;
  dead?: { reason: string; nonRetriable: boolean; at: number; item: WorkItem };
};

export type WorkQueueOptions = {
  leaseMs: number;
  log: Logger;
  /** Who holds a lease (shown in run records): e.g. `reconciler-<pid>`. */
  owner: string;
  maxAttempts: number;
  backoff: Backoff;
  /** The longest floor a `notBefore` result may set. */
  maxFloorMs: number;
  drainMs: number;
  /** Told after a key moved to the dead letters (e.g. to show it in the key's status); errors are logged. */
  onDeadLetter?: (letter: DeadLetter) => Promise<void>;
};

const SUBJECT_BUSY = 10077;
/** A compare-and-set lost: the subject's last sequence is not the one expected. */
const WRONG_LAST_SEQUENCE = 10071;
const NOT_FOUND = 10037;
const NO_MESSAGE = 10057;
const SEQUENCE_NOT_FOUND = 10043;
const rank = (p: Priority): number => priorities.indexOf(p);

/** Options from the config, the one place defaults live. */
export function workQueueOptions(
  config: { leaseMs: number; queue: { maxAttempts: number; backoffBaseMs: number; backoffMaxMs: number; maxFloorMs: number; drainMs: number } },
  o: { log: Logger; owner: string; onDeadLetter?: (letter: DeadLetter) => Promise<void> },
): WorkQueueOptions {
  return {
    ...o,
    leaseMs: config.leaseMs,
    maxAttempts: config.queue.maxAttempts,
    backoff: exponentialBackoff(config.queue.backoffBaseMs, config.queue.backoffMaxMs),
    maxFloorMs: config.queue.maxFloorMs,
    drainMs: config.queue.drainMs,
  };
}

/**
 * The merge of two schedules of one key: the more urgent class, the earlier not-before, never
 * before the stronger floor, the fewer attempts (a new enqueue is new information).
 */
export function mergeItems(a: WorkItem, b: WorkItem): WorkItem {
  const floor = Math.max(a.floor, b.floor);
  const urgent = rank(b.priority) < rank(a.priority) ? b : a;
  return {
    v: 1,
    key: a.key,
    priority: urgent.priority,
    cause: urgent.cause,
    floor,
    notBefore: Math.max(Math.min(a.notBefore, b.notBefore), floor),
    attempts: Math.min(a.attempts, b.attempts),
    enqueuedAt: Math.min(a.enqueuedAt, b.enqueuedAt),
  };
}

function sameSchedule(a: WorkItem, b: WorkItem): boolean {
  return a.priority === b.priority && a.notBefore === b.notBefore && a.floor === b.floor && a.attempts === b.attempts;
}

export class WorkQueue {
  private readonly n: Nats;
  private readonly o: WorkQueueOptions;
  private readonly metrics = queueMetrics();
  private readonly stream: string;
  private readonly runsStream: string;
  /** The per-run requests (claim, ack, release, publish) go through the lean path. */
  private readonly pipe: JetStreamPipe;
  constructor(n: Nats, o: WorkQueueOptions) {
    this.n = n;
    this.o = o;
    this.stream = n.topology.stream("work");
    this.runsStream = bucketStream(n, "runs");
    this.pipe = new JetStreamPipe(n.nc);
  }

  /** Queues the key, merges it into its queued message, or marks its run for exactly one rerun. */
  async enqueue(req: QueueRequest): Promise<EnqueueOutcome> {
    const now = Date.now();
    const floor = req.floor ?? 0;
    const item: WorkItem = {
      v: 1, key: req.key, priority: req.priority, cause: req.cause,
      floor, notBefore: Math.max(req.notBefore ?? 0, floor), attempts: 0, enqueuedAt: now,
    };
    const outcome = await this.place(item);
    this.metrics.enqueued.add(1, { outcome, priority: req.priority });
    return outcome;
  }

  /**
   * Puts `item` into the stream under invariants 1 and 3. `self` is the sequence of the message
   * the caller itself is running: its own record does not count as "running" for this item.
   *
   * The common case costs one publish: the server refuses a second message in a class (10077),
   * and only then are the queued message and the run record read, to merge. A message added in
   * one class is then checked against the others and merged into one. A worker may take the new
   * message before that merge; the key then runs (never twice at once: the record) and what was
   * queued in the other class folds into one rerun. Floors are safe in that window because a
   * reconcile's floor is kept in the run record and enforced at claim; a floor that an enqueue
   * asks for has no record, so such an enqueue reads every class before it writes.
   */
  private async place(item: WorkItem, self?: number): Promise<EnqueueOutcome> {
    const recordKey = this.n.topology.runRecordKey(item.key);
    const own = (p: Priority) => this.lastMessage(this.n.topology.workSubject(p, item.key));
    // Each turn follows a change made by someone else; none lasts longer than a lease.
    const deadline = Date.now() + this.o.leaseMs * 4;
    for (let turn = 0; ; turn++) {
      if (turn > 0 && Date.now() > deadline) throw new Error(`enqueue of ${item.key} did not settle within ${this.o.leaseMs * 4} ms`);
      let next: EnqueueOutcome | WorkItem;
      if (item.floor > Date.now()) {
        const { rec, queued } = await this.snapshot(item.key, recordKey);
        if (queued.length === 0) {
          if (!(await this.publish(item))) continue;
          next = await this.mergeAcrossClasses(item, recordKey, self, "added");
        } else next = await this.merge(item, queued, rec, recordKey, self);
      } else if (await this.publish(item)) {
        next = await this.mergeAcrossClasses(item, recordKey, self, "added");
      } else {
        // This class already holds the key: queued, waiting for a retry, or running.
        const rec = await this.record(recordKey); // before the message: see snapshot()
        const mine = await own(item.priority);
        if (!mine) continue; // acked meanwhile: the subject is free again
        next = await this.merge(item, [mine], rec, recordKey, self);
      }
      if (typeof next === "string") return next;
      item = next; // what was merged so far, whatever moved meanwhile
    }
  }

  /** After adding `item` in its class: if the key is queued in another class too, merge into one. */
  private async mergeAcrossClasses(item: WorkItem, recordKey: string, self: number | undefined, alone: EnqueueOutcome): Promise<EnqueueOutcome | WorkItem> {
    const others = await this.queuedMessages(item.key, item.priority);
    if (others.length === 0) return alone;
    const { rec, queued } = await this.snapshot(item.key, recordKey);
    return this.merge(item, queued, rec, recordKey, self);
  }

  /**
   * The key's run record, then its queued messages, in that order. A message seen after a record
   * that shows no run of it had not begun running when the record was read, so merging into it
   * is safe. Read the other way round (or at once), a run could end between the two reads: its
   * acked message would look queued, its record absent, and the enqueue would merge into a run
   * that began before it and is already over, and be lost.
   */
  private async snapshot(key: Key, recordKey: string): Promise<{ rec: Versioned | undefined; queued: Queued[] }> {
    const rec = await this.record(recordKey);
    return { rec, queued: await this.queuedMessages(key) };
  }

  /** Merges `item` into the key's queued messages; returns the merge to place again when something moved meanwhile. */
  private async merge(item: WorkItem, queued: Queued[], rec: Versioned | undefined, recordKey: string, self?: number): Promise<EnqueueOutcome | WorkItem> {
    const held = rec && rec.value.phase !== "dead" && rec.value.seq !== self ? rec.value : undefined;
    // A message waiting for its retry keeps its schedule: the retry is the run this enqueue asks for.
    if (held?.phase === "retrying" && queued.some((m) => m.seq === held.seq)) {
      for (const m of queued) if (m.seq !== held.seq) await this.deleteMessage(m.seq);
      return "deduped";
    }
    const runningSeq = held?.phase === "running" ? held.seq : undefined;
    const idle = queued.filter((m) => m.seq !== runningSeq);
    const merged = idle.reduce((acc, m) => mergeItems(acc, m.item), item);
    if (rec && runningSeq !== undefined && queued.some((m) => m.seq === runningSeq)) {
      // The key runs: it runs once more afterwards, so whatever else is queued folds into that.
      for (const m of idle) await this.deleteMessage(m.seq);
      return (await this.markRerun(recordKey, rec, merged)) ? "rerun" : merged;
    }
    // Keep one message, in the most urgent class, rewritten to the merge where it differs.
    const keep = idle.find((m) => m.item.priority === merged.priority && sameSchedule(m.item, merged));
    for (const m of idle) if (m !== keep && !(await this.deleteMessage(m.seq)) && m.item.priority === merged.priority) return merged;
    if (!keep && !(await this.publish(merged))) return merged;
    return "deduped";
  }

  /** The key's queued messages, most urgent class first (all classes, or all but `except`). */
  private async queuedMessages(key: Key, except?: Priority): Promise<Queued[]> {
    const found = await Promise.all(priorities.filter((p) => p !== except).map((p) => this.lastMessage(this.n.topology.workSubject(p, key))));
    return found.filter((m) => m !== undefined);
  }

  private async publish(item: WorkItem): Promise<boolean> {
    try {
      await this.pipe.publish(this.n.topology.workSubject(item.priority, item.key), encodeMessage(item), traceHeaders());
      return true;
    } catch (err) {
      if ((err as { code?: number }).code === SUBJECT_BUSY) return false;
      throw err;
    }
  }

  private async lastMessage(subject: string): Promise<Queued | undefined> {
    const m = await this.pipe.lastBySubject(this.stream, subject);
    return m ? { seq: m.seq, item: decodeMessage(workItemSchema, m.data) } : undefined;
  }


  private deleteMessage(seq: number): Promise<boolean> {
    return this.deleteFrom(this.stream, seq);
  }

  /** Acks `msg` and waits until the server has taken the ack (the subject is free after it). */
  private async ackConfirmed(msg: JsMsg): Promise<void> {
    // The message's reply subject is its ack subject; JsMsg's type does not show it, its class does.
    const reply = (msg as JsMsg & { reply?: string }).reply;
    if (reply) await this.pipe.ackAck(reply);
    else await msg.ackAck();
  }

  /** Deletes message `seq` of `stream`; false when it is gone already. */
  private async deleteFrom(stream: string, seq: number): Promise<boolean> {
    try {
      return (await this.pipe.api<{ success: boolean }>(`$JS.API.STREAM.MSG.DELETE.${stream}`, { seq, no_erase: true })).success;
    } catch (err) {
      const code = (err as { code?: number }).code;
      if (code === NO_MESSAGE || code === NOT_FOUND || code === SEQUENCE_NOT_FOUND) return false;
      throw err;
    }
  }

  /** Writes a run record only if its last revision is `expected` (0: only if there is none); its new revision, or undefined. */
  private async writeIf(recordKey: string, value: RunRecord, expected: number): Promise<number | undefined> {
    const h = headers();
    h.set("Nats-Expected-Last-Subject-Sequence", String(expected));
    try {
      return (await this.pipe.publish(`$KV.${this.n.topology.bucket("runs")}.${recordKey}`, JSON.stringify(value), h)).seq;
    } catch (err) {
      if ((err as { code?: number }).code === WRONG_LAST_SEQUENCE) return undefined;
      throw err;
    }
  }

  private async record(recordKey: string): Promise<Versioned | undefined> {
    const m = await this.pipe.lastBySubject(this.runsStream, `$KV.${this.n.topology.bucket("runs")}.${recordKey}`);
    // A KV delete or purge leaves a marker; this queue erases records instead, but others may not.
    if (!m || m.headers?.get("KV-Operation")) return undefined;
    return { revision: m.seq, value: JSON.parse(new TextDecoder().decode(m.data)) as RunRecord };
  }


  private async markRerun(recordKey: string, rec: Versioned, item: WorkItem): Promise<boolean> {
    const rerun = rec.value.rerun ? mergeItems(rec.value.rerun, item) : item;
    // undefined: the record changed (renewed, ended, marked): look again
    return (await this.writeIf(recordKey, { ...rec.value, rerun }, rec.revision)) !== undefined;
  }

  /** Erases a record if it is still at `revision`: a compare-and-delete that leaves no tombstone. */
  private eraseRecord(revision: number): Promise<boolean> {
    return this.deleteFrom(this.runsStream, revision);
  }

  /** Runs `reconcile` on queued keys, at most `concurrency` at once, until `signal` aborts. */
  async run(o: { concurrency: number; signal: AbortSignal; reconcile: Reconcile }): Promise<void> {
    const t = this.n.topology;
    const sources = await Promise.all(
      priorities.map(async (p) => {
        const consumer = await this.n.js.consumers.get(this.stream, t.workConsumer(p));
        // Small batches: a message waiting in this buffer gets no renewals, and one that outlives
        // its ack wait there is delivered again elsewhere (a stale copy the records absorb).
        const messages = await consumer.consume({ max_messages: Math.max(4, o.concurrency) });
        return { messages, iterator: messages[Symbol.asyncIterator](), head: undefined as JsMsg | undefined, pulling: false, ended: false };
      }),
    );
    const inFlight = new Map<Promise<void>, Running>();
    let wake: () => void = () => {};
    let woken = new Promise<void>((r) => (wake = r));
    const poke = () => {
      wake();
    };
    const stop = () => {
      for (const s of sources) void s.messages.close();
      poke();
    };
    if (o.signal.aborted) stop();
    else o.signal.addEventListener("abort", stop, { once: true });

    const pull = (s: (typeof sources)[number]) => {
      if (s.head || s.pulling || s.ended || o.signal.aborted) return;
      s.pulling = true;
      s.iterator.next().then(
        (r) => {
          s.pulling = false;
          if (r.done) s.ended = true;
          else if (o.signal.aborted) r.value.nak(0); // taken while stopping: hand it straight back
          else s.head = r.value;
          poke();
        },
        () => {
          s.pulling = false;
          s.ended = true;
          poke();
        },
      );
    };

    while (!o.signal.aborted) {
      for (const s of sources) pull(s);
      while (inFlight.size < o.concurrency) {
        const s = sources.find((x) => x.head); // most urgent class first
        if (!s) break;
        const msg = s.head!;
        s.head = undefined;
        pull(s);
        const running: Running = { msg, abort: new AbortController() };
        const p = this.handle(msg, o.reconcile, running).finally(() => {
          inFlight.delete(p);
          poke();
        });
        inFlight.set(p, running);
      }
      if (sources.every((s) => s.ended) && inFlight.size === 0) break;
      await woken;
      woken = new Promise<void>((r) => (wake = r));
    }

    // Drain: a head not yet started goes back untouched; runs get `drainMs` to finish, then the
    // rest are handed back without spending an attempt.
    for (const s of sources) if (s.head) s.head.nak(0);
    for (const r of inFlight.values()) r.abort.abort(new Error("draining"));
    const drained = Promise.allSettled(inFlight.keys());
    const timedOut = await Promise.race([drained.then(() => false), sleep(this.o.drainMs).then(() => true)]);
    if (timedOut) await Promise.allSettled([...inFlight.values()].map((r) => r.handBack?.()));
  }

  private async handle(msg: JsMsg, reconcile: Reconcile, running: Running): Promise<void> {
    let item: WorkItem;
    try {
      item = decodeMessage(workItemSchema, msg.data);
    } catch (err) {
      this.o.log.error("dropped a malformed work message", { subject: msg.subject, reason: errorMessage(err) });
      // term() alone would leave it in the WorkQueue stream, blocking its subject.
      await this.deleteMessage(msg.info.streamSequence);
      msg.term(errorMessage(err));
      return;
    }
    const now = Date.now();
    if (item.notBefore > now) {
      msg.nak(item.notBefore - now); // not due: comes back when it is, without a record
      return;
    }
    const claim = await this.claim(msg, item);
    if (!claim) return;
    const recordKey = this.n.topology.runRecordKey(item.key);
    const lease: Lease = { revision: claim.revision, value: claim.record, lost: false };
    const attempt = claim.attempts + 1;
    running.handBack = async () => {
      lease.lost = true; // whatever the run still does, this worker no longer answers for it
      await this.retryLater(recordKey, lease, { ...lease.value, phase: "retrying", retryAt: Date.now(), leaseUntil: 0 }, msg, 0);
    };
    const renew = setInterval(() => void this.renew(recordKey, lease, msg), Math.max(50, Math.floor(this.o.leaseMs / 3)));

    const started = Date.now();
    this.metrics.wait.record(started - Math.max(item.enqueuedAt, item.notBefore), { priority: item.priority });
    this.metrics.inFlight.add(1);
    let result: ReconcileResult | Error;
    try {
      result = await inSpan(
        `reconcile ${item.key}`,
        { parent: contextFromHeaders(msg.headers), kind: SpanKind.CONSUMER, attributes: { "homeostat.key": item.key, "homeostat.attempt": attempt, "homeostat.priority": item.priority } },
        () => reconcile(item, { attempt, signal: running.abort.signal }),
      );
    } catch (err) {
      result = err instanceof Error ? err : new Error(String(err));
    } finally {
      clearInterval(renew);
      this.metrics.inFlight.add(-1);
      this.metrics.process.record(Date.now() - started, { priority: item.priority });
    }
    if (lease.lost) {
      this.o.log.warn("the run ended after its lease was lost or handed back; its result is dropped and the key runs again", { key: item.key });
      return;
    }
    running.handBack = undefined;
    try {
      await this.finish(msg, item, recordKey, lease, result);
    } catch (err) {
      // The message stays unacked: after the lease it comes back and the key runs again.
      this.o.log.error("could not record the end of a run; it will run again", { key: item.key, reason: errorMessage(err) });
    }
  }

  /** Takes the key's lease for `msg`, or hands the message back when the key is held. */
  private async claim(msg: JsMsg, item: WorkItem): Promise<{ revision: number; attempts: number; record: RunRecord } | undefined> {
    const recordKey = this.n.topology.runRecordKey(item.key);
    const seq = msg.info.streamSequence;
    const now = Date.now();
    const fresh: RunRecord = { phase: "running", owner: this.o.owner, seq, priority: item.priority, leaseUntil: now + this.o.leaseMs, attempts: item.attempts };
    const created = await this.writeIf(recordKey, fresh, 0);
    if (created !== undefined) return { revision: created, attempts: item.attempts, record: fresh };
    // A record exists: running elsewhere, retrying, waiting for a floor, or dead. Decide from it.
    const rec = await this.record(recordKey);
    if (!rec) {
      msg.nak(0);
      return undefined;
    }
    const r = rec.value;
    let next: RunRecord | undefined;
    if (r.phase === "dead") next = { ...fresh, dead: r.dead };
    else if (r.phase === "waiting") {
      if ((r.floor ?? 0) > now) {
        msg.nak((r.floor ?? now) - now); // a floor holds for every message of the key
        return undefined;
      }
      next = fresh;
    } else if (r.phase === "retrying" && r.seq === seq) {
      if ((r.retryAt ?? 0) > now) {
        msg.nak((r.retryAt ?? now) - now);
        return undefined;
      }
      next = { ...fresh, attempts: r.attempts, rerun: r.rerun, dead: r.dead };
    } else if (r.leaseUntil <= now) {
      // Its holder stopped renewing. A crash during this very message counts as an attempt.
      const attempts = r.seq === seq ? r.attempts + 1 : item.attempts;
      next = { ...fresh, attempts, rerun: mergeOptional(r.rerun, r.pending), dead: r.dead };
      this.o.log.warn("took over an expired lease", { key: item.key, from: r.owner, attempts });
      if (attempts >= this.o.maxAttempts) {
        await this.toDeadLetters(recordKey, { revision: rec.revision, value: rec.value, lost: false }, next, item, msg, "the worker running it stopped (lease expired) on every attempt", false);
        return undefined;
      }
    } else {
      msg.nak(Math.min(Math.max(50, r.leaseUntil - now), 200 + Math.floor(Math.random() * 300)));
      return undefined;
    }
    const revision = await this.writeIf(recordKey, next, rec.revision);
    if (revision !== undefined) return { revision, attempts: next.attempts, record: next };
    msg.nak(50 + Math.floor(Math.random() * 100)); // changed meanwhile: try again shortly
    return undefined;
  }

  private async renew(recordKey: string, lease: Lease, msg: JsMsg): Promise<void> {
    msg.working();
    for (let i = 0; i < 5 && !lease.lost; i++) {
      const rec = await this.record(recordKey).catch(() => undefined);
      if (!rec || rec.value.owner !== this.o.owner || rec.value.seq !== msg.info.streamSequence) {
        lease.lost = true;
        return;
      }
      const value = { ...rec.value, leaseUntil: Date.now() + this.o.leaseMs };
      const revision = await this.writeIf(recordKey, value, rec.revision);
      if (revision !== undefined) {
        lease.revision = revision;
        lease.value = value;
        return;
      }
      // marked for a rerun between the read and the write: read again
    }
  }

  private async finish(msg: JsMsg, item: WorkItem, recordKey: string, lease: Lease, result: ReconcileResult | Error): Promise<void> {
    const now = Date.now();
    if (result instanceof Error) {
      const attempts = lease.value.attempts + 1;
      this.metrics.retries.add(1, { priority: item.priority });
      if (attempts >= this.o.maxAttempts) {
        await this.toDeadLetters(recordKey, lease, { ...lease.value, attempts }, item, msg, result.message, false);
        return;
      }
      const delay = this.o.backoff(attempts);
      this.o.log.warn("reconcile failed; retrying", { key: item.key, attempts, delayMs: delay, reason: result.message });
      await this.retryLater(recordKey, lease, { ...lease.value, phase: "retrying", attempts, retryAt: now + delay, error: result.message, leaseUntil: 0 }, msg, delay);
      return;
    }
    if (result.type === "nonRetriable") {
      await this.toDeadLetters(recordKey, lease, { ...lease.value, attempts: lease.value.attempts + 1 }, item, msg, result.reason, true);
      return;
    }

    // Children first: durable in the stream before the parent's message goes.
    await Promise.all((result.children ?? []).map((child) => this.enqueue(child)));
    let pending: WorkItem | undefined;
    if (result.type === "requeueAfter") pending = { ...item, attempts: 0, notBefore: now + Math.max(0, result.ms), floor: 0, enqueuedAt: now };
    if (result.type === "notBefore") {
      const floor = now + Math.min(Math.max(0, result.ms), this.o.maxFloorMs);
      pending = { ...item, attempts: 0, notBefore: floor, floor, enqueuedAt: now };
    }
    if (pending) {
      // Written before the ack, so that a crash between the ack and the requeue cannot lose it.
      const withPending = pending;
      await this.updateRecord(recordKey, lease, (r) => ({ ...r, pending: r.rerun ? mergeItems(withPending, r.rerun) : withPending, rerun: undefined }));
    }
    await this.ackConfirmed(msg);
    // Release: erase the record at the revision we know (or, for a floor, leave it waiting).
    // A rerun mark that slipped in makes that fail; then queue the mark and try again.
    const floor = pending?.floor ?? 0;
    let follow = lease.value.pending ?? lease.value.rerun;
    let revision = lease.revision;
    for (let turn = 0; turn < 100; turn++) {
      if (follow) await this.place({ ...follow, attempts: 0, enqueuedAt: follow.enqueuedAt || now }, msg.info.streamSequence);
      const waiting: RunRecord = { phase: "waiting", owner: this.o.owner, seq: 0, priority: item.priority, leaseUntil: 0, attempts: 0, floor };
      const released = floor > Date.now() ? (await this.writeIf(recordKey, waiting, revision)) !== undefined : await this.eraseRecord(revision);
      if (released) return;
      const rec = await this.record(recordKey);
      // Gone, or taken over after this worker's lease ran out: its new holder answers for it.
      if (!rec || !heldBy(rec.value, lease.value)) return;
      revision = rec.revision;
      follow = rec.value.rerun;
    }
    throw new Error(`the run record of ${item.key} kept changing`);
  }

  /** Compare-and-set from the lease's known value; on a conflict (a rerun mark) re-reads and re-applies. */
  private async updateRecord(recordKey: string, lease: Lease, change: (r: RunRecord) => RunRecord): Promise<void> {
    let current: Versioned | undefined = { revision: lease.revision, value: lease.value };
    for (let turn = 0; turn < 100; turn++) {
      if (!current) throw new Error(`run record ${recordKey} vanished`);
      if (!heldBy(current.value, lease.value)) throw new Error(`run record ${recordKey} was taken over by ${current.value.owner}`);
      const value = change(current.value);
      const revision = await this.writeIf(recordKey, value, current.revision);
      if (revision !== undefined) {
        lease.revision = revision;
        lease.value = value;
        return;
      }
      current = await this.record(recordKey);
    }
    throw new Error(`run record ${recordKey} kept changing`);
  }

  private async retryLater(recordKey: string, lease: Lease, next: RunRecord, msg: JsMsg, delayMs: number): Promise<void> {
    await this.updateRecord(recordKey, lease, (r) => ({ ...next, rerun: r.rerun }));
    msg.nak(delayMs);
  }

  private async toDeadLetters(recordKey: string, lease: Lease, base: RunRecord, item: WorkItem, msg: JsMsg, reason: string, isNonRetriable: boolean): Promise<void> {
    const dead = { reason, nonRetriable: isNonRetriable, at: Date.now(), item: { ...item, attempts: 0 } };
    let rerun: WorkItem | undefined;
    await this.updateRecord(recordKey, lease, (r) => {
      rerun = r.rerun;
      return { ...base, phase: "dead", dead, leaseUntil: 0, error: reason, pending: undefined, rerun: undefined };
    });
    await this.ackConfirmed(msg);
    this.metrics.deadLettered.add(1, { priority: item.priority, non_retriable: isNonRetriable });
    this.o.log.error(isNonRetriable ? "reconcile gave up (non-retriable)" : "moved to the dead letters", { key: item.key, attempts: base.attempts, reason });
    await this.o.onDeadLetter?.({ key: item.key, reason, nonRetriable: isNonRetriable, attempts: base.attempts, at: dead.at, item: dead.item }).catch((err: unknown) => {
      this.o.log.warn("could not report a dead letter", { key: item.key, reason: errorMessage(err) });
    });
    // An enqueue during the failing run is new information: it runs once more, with fresh attempts.
    if (rerun) await this.place({ ...rerun, attempts: 0 });
  }

  /**
   * Repairs what no message will: queues what a crashed worker had promised (its record's rerun
   * or requeue) once the message it ran is gone and its lease has expired, queues a retry whose
   * message is gone, and clears floors long past. Safe to run anywhere, any number of times.
   */
  async sweep(): Promise<number> {
    let queued = 0;
    const now = Date.now();
    for (const recordKey of await this.recordKeys()) {
      const rec = await this.record(recordKey);
      if (!rec) continue;
      const r = rec.value;
      if (r.phase === "waiting" && (r.floor ?? 0) + this.o.leaseMs < now) {
        // A floor long past whose message is gone (merged away or run elsewhere) guards nothing.
        const key = keyOfRecord(recordKey);
        if ((await this.queuedMessages(key)).length === 0) await this.eraseRecord(rec.revision);
        continue;
      }
      if (r.phase === "retrying" && (r.retryAt ?? 0) + this.o.leaseMs < now) {
        // A stale second delivery of an already acked message can fail and leave a retry whose
        // message is gone (a consumer redelivers what waited in a client's buffer past its ack
        // wait). The retry is still owed: queue it, attempts kept.
        if (await this.n.jsm.streams.getMessage(this.stream, { seq: r.seq }).catch(() => null)) continue;
        const key = keyOfRecord(recordKey);
        await this.place({ v: 1, key, priority: r.priority, cause: { type: "manual", detail: "retry whose message was gone" }, notBefore: 0, floor: 0, attempts: r.attempts, enqueuedAt: now });
        await this.eraseRecord(rec.revision);
        queued++;
        continue;
      }
      if (r.phase !== "running" || r.leaseUntil > now) continue;
      const stillQueued = await this.n.jsm.streams.getMessage(this.stream, { seq: r.seq }).catch(() => null);
      if (stillQueued) continue; // its message comes back by itself; the next claim takes over
      const follow = mergeOptional(r.pending, r.rerun);
      if (follow) {
        await this.place({ ...follow, attempts: 0 }, r.seq);
        queued++;
      }
      await this.eraseRecord(rec.revision);
    }
    return queued;
  }

  /**
   * Reports depth per class, running, retrying and dead letters as OpenTelemetry gauges, read
   * at each metrics export. Called once, by the queue service: the figures are the region's.
   */
  observeStats(): void {
    const meter = metrics.getMeter("homeostat.workqueue");
    const depth = meter.createObservableGauge("homeostat.queue.depth", { description: "Queued keys per priority class" });
    const keys = meter.createObservableGauge("homeostat.queue.keys", { description: "Keys running, waiting for a retry, or dead-lettered" });
    meter.addBatchObservableCallback(async (result) => {
      const s = await this.stats();
      for (const p of priorities) result.observe(depth, s.depth[p], { priority: p });
      result.observe(keys, s.running, { state: "running" });
      result.observe(keys, s.retrying, { state: "retrying" });
      result.observe(keys, s.deadLetters, { state: "dead" });
    }, [depth, keys]);
  }

  async stats(): Promise<QueueStats> {
    const depth = {} as Record<Priority, number>;
    await Promise.all(
      priorities.map(async (p) => {
        const info = await this.n.jsm.consumers.info(this.stream, this.n.topology.workConsumer(p));
        depth[p] = info.num_pending + info.num_ack_pending;
      }),
    );
    let running = 0;
    let retrying = 0;
    let deadLetters = 0;
    for (const r of await this.records()) {
      if (r.phase === "running") running++;
      else if (r.phase === "retrying") retrying++;
      else deadLetters++;
    }
    return { depth, running, retrying, deadLetters };
  }

  async deadLetters(): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for (const r of await this.records()) {
      if (r.phase === "dead" && r.dead) out.push({ key: r.dead.item.key, reason: r.dead.reason, nonRetriable: r.dead.nonRetriable, attempts: r.attempts, at: r.dead.at, item: r.dead.item });
    }
    return out.sort((a, b) => a.at - b.at || a.key.localeCompare(b.key));
  }

  /** Queues a dead-lettered key again with fresh attempts; false when it is not in the dead letters. */
  async retryDeadLetter(key: Key): Promise<boolean> {
    const recordKey = this.n.topology.runRecordKey(key);
    const rec = await this.record(recordKey);
    if (!rec || rec.value.phase !== "dead" || !rec.value.dead) return false;
    const item = rec.value.dead.item;
    await this.place({ ...item, attempts: 0, notBefore: 0, floor: 0, enqueuedAt: Date.now() });
    return true;
  }

  private async records(): Promise<RunRecord[]> {
    const recs = await Promise.all((await this.recordKeys()).map((k) => this.record(k)));
    return recs.filter((r) => r !== undefined).map((r) => r.value);
  }

  /**
   * This region's record keys, from the bucket stream's per-subject state. (Records are erased
   * by revision, without tombstones, which KV's key listing does not expect.)
   */
  private async recordKeys(): Promise<string[]> {
    const subjectPrefix = `$KV.${this.n.topology.bucket("runs")}.`;
    const info = await this.n.jsm.streams.info(this.runsStream, { subjects_filter: `${subjectPrefix}${this.n.topology.region}.>` });
    return Object.keys(info.state.subjects ?? {}).map((s) => s.slice(subjectPrefix.length));
  }
}

type Queued = { seq: number; item: WorkItem };
type Versioned = { revision: number; value: RunRecord };
/** The run record as this worker last wrote it: compare-and-set starts from here without a read. */
type Lease = { revision: number; value: RunRecord; lost: boolean };
type Running = { msg: JsMsg; abort: AbortController; handBack?: () => Promise<void> };

/** Whether `current` is still the lease `mine` describes: the same holder, for the same message. */
function heldBy(current: RunRecord, mine: RunRecord): boolean {
  return current.owner === mine.owner && current.seq === mine.seq;
}

/** `<region>.<kind>.<name>` -> the key. */
function keyOfRecord(recordKey: string): Key {
  return keyFromToken(recordKey.slice(recordKey.indexOf(".") + 1));
}

function mergeOptional(a: WorkItem | undefined, b: WorkItem | undefined): WorkItem | undefined {
  return a && b ? mergeItems(a, b) : (a ?? b);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}

/** The queue's OpenTelemetry instruments (a no-op unless a MeterProvider is registered). */
function queueMetrics() {
  const meter = metrics.getMeter("homeostat.workqueue");
  return {
    enqueued: meter.createCounter("homeostat.queue.enqueued", { description: "Enqueues by outcome: added, deduped, rerun" }),
    retries: meter.createCounter("homeostat.queue.retries", { description: "Runs that failed and will be retried" }),
    deadLettered: meter.createCounter("homeostat.queue.dead_lettered", { description: "Keys moved to the dead letters" }),
    inFlight: meter.createUpDownCounter("homeostat.queue.in_flight", { description: "Runs in progress in this process" }),
    wait: meter.createHistogram("homeostat.queue.wait", { unit: "ms", description: "From due (enqueued or not-before) to run start" }),
    process: meter.createHistogram("homeostat.queue.process", { unit: "ms", description: "Run duration" }),
  };
}
