/**
 * The worker: takes messages from the class consumers (most urgent first, invariant 7), claims
 * the key's lease (invariant 2), renews it while the reconcile runs, and finishes the run by its
 * result (invariants 3 to 5): acked only once whatever must follow is durable, then the record
 * released. On abort it drains (invariant 8).
 */
import type { JsMsg } from "@nats-io/jetstream";
import { decodeMessage, priorities, workItemSchema, type Priority, type WorkItem } from "@homeostat/core/contracts";
import type { JetStreamPipe } from "@homeostat/core/jetstream-pipe";
import { errorMessage } from "@homeostat/core/log";
import { pullExpiresMs } from "@homeostat/core/messaging";
import {
  context,
  contextFromTraceparent,
  inSpan,
  linksToTraceparents,
  markFailed,
  messagingAttributes,
  secondsSince,
  SpanKind,
} from "@homeostat/core/telemetry";
import type { Nats } from "@homeostat/core/topology";
import { answeredBy, dueAt, mergeItems, mergeOptional } from "./merge.ts";
import type { QueueMetrics } from "./metrics.ts";
import type { WorkQueueOptions } from "./options.ts";
import type { Placement } from "./placement.ts";
import { heldBy, type Lease, type RunRecord, type RunRecordStore } from "./run-records.ts";
import type { Reconcile, ReconcileResult } from "./types.ts";
import type { WorkStream } from "./work-stream.ts";

type Running = { msg: JsMsg; abort: AbortController; handBack?: () => Promise<void> };
type Claim = { revision: number; attempts: number; record: RunRecord };

export class Worker {
  private readonly n: Nats;
  private readonly o: WorkQueueOptions;
  private readonly stream: WorkStream;
  private readonly records: RunRecordStore;
  private readonly placement: Placement;
  private readonly metrics: QueueMetrics;
  private readonly pipe: JetStreamPipe;

  constructor(
    n: Nats,
    o: WorkQueueOptions,
    parts: { pipe: JetStreamPipe; stream: WorkStream; records: RunRecordStore; placement: Placement; metrics: QueueMetrics },
  ) {
    this.n = n;
    this.o = o;
    this.pipe = parts.pipe;
    this.stream = parts.stream;
    this.records = parts.records;
    this.placement = parts.placement;
    this.metrics = parts.metrics;
  }

  /** Runs `reconcile` on keys queued in `classes` (default: every class), at most `concurrency` at once, until `signal` aborts. */
  async run(o: { concurrency: number; signal: AbortSignal; reconcile: Reconcile; classes?: readonly Priority[] }): Promise<void> {
    const t = this.n.topology;
    const sources = await Promise.all(
      (o.classes ?? priorities).map(async (p) => {
        const consumer = await this.n.js.consumers.get(this.stream.name, t.workConsumer(p));
        // Small batches: a message waiting in this buffer gets no renewals, and one that outlives
        // its ack wait there is delivered again elsewhere (a stale copy the records absorb).
        const messages = await consumer.consume({ max_messages: Math.max(4, o.concurrency), expires: pullExpiresMs });
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
          else if (o.signal.aborted)
            r.value.nak(0); // taken while stopping: hand it straight back
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
        const msg = s?.head;
        if (!s || !msg) break;
        s.head = undefined;
        pull(s);
        const running: Running = { msg, abort: new AbortController() };
        const p = this.handle(msg, o.reconcile, running)
          .catch((err: unknown) => {
            // Left unacked, the message comes back after its ack wait and is handled anew.
            this.o.log.error("could not handle a work message; it comes back after its ack wait", { subject: msg.subject, reason: errorMessage(err) });
          })
          .finally(() => {
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
      await this.stream.delete(msg.info.streamSequence);
      msg.term(errorMessage(err));
      return;
    }
    const now = Date.now();
    const due = dueAt(item);
    if (due > now) {
      msg.nak(due - now); // not due: comes back when it is, without a record
      return;
    }
    const claim = await this.claim(msg, item);
    if (!claim) return;
    const recordKey = this.records.keyOf(item.key);
    const lease: Lease = { revision: claim.revision, value: claim.record, lost: false };
    const attempt = claim.attempts + 1;
    running.handBack = async () => {
      lease.lost = true; // whatever the run still does, this worker no longer answers for it
      await this.retryLater(recordKey, lease, { ...lease.value, phase: "retrying", retryAt: Date.now(), leaseUntil: 0 }, msg, 0);
    };
    const renew = setInterval(() => void this.renew(recordKey, lease, msg), Math.max(50, Math.floor(this.o.leaseMs / 3)));

    const started = Date.now();
    this.metrics.wait.record(secondsSince(Math.max(item.enqueuedAt, due)), { priority: item.priority, cause: item.cause.type });
    this.metrics.running.runs++;
    let result: ReconcileResult | Error;
    // The run's own trace context: what the run asks for at its end (its child keys above all)
    // belongs to the trace that caused it, so a rebuild's dependants stay in the release's trace.
    let runContext = context.active();
    try {
      // Named by the class, never the key: span names stay few, the key is an attribute.
      result = await inSpan(
        `reconcile ${item.priority}`,
        {
          parent: contextFromTraceparent(item.trace) ?? context.active(),
          kind: SpanKind.CONSUMER,
          // Every enqueue this run answers (deduplicated into its message, or folded into a rerun).
          // Both only when the span is made: a run in a trace sampled out parses and builds neither.
          links: () => linksToTraceparents(item.enqueues ?? [], { "homeostat.link": "enqueue" }),
          attributes: () =>
            messagingAttributes(msg.subject, "process", {
              "homeostat.key": item.key,
              "homeostat.attempt": attempt,
              "homeostat.priority": item.priority,
              "homeostat.cause": item.cause.type,
              "homeostat.enqueues": item.enqueues?.length ?? 0,
            }),
        },
        async (span) => {
          runContext = context.active();
          const r = await reconcile(item, { attempt, signal: running.abort.signal });
          if (r.type === "nonRetriable") markFailed(span, new Error(r.reason));
          return r;
        },
      );
    } catch (err) {
      result = err instanceof Error ? err : new Error(String(err));
    } finally {
      clearInterval(renew);
      this.metrics.running.runs--;
      this.metrics.process.record(secondsSince(started), { priority: item.priority, cause: item.cause.type });
    }
    if (lease.lost) {
      this.o.log.warn("the run ended after its lease was lost or handed back; its result is dropped and the key runs again", { key: item.key });
      return;
    }
    running.handBack = undefined;
    try {
      const ended = result;
      await context.with(runContext, () => this.finish(msg, item, recordKey, lease, ended));
    } catch (err) {
      // The message stays unacked: after the lease it comes back and the key runs again.
      this.o.log.error("could not record the end of a run; it will run again", { key: item.key, reason: errorMessage(err) });
    }
  }

  /** Takes the key's lease for `msg`, or hands the message back when the key is held. */
  private async claim(msg: JsMsg, item: WorkItem): Promise<Claim | undefined> {
    const recordKey = this.records.keyOf(item.key);
    const seq = msg.info.streamSequence;
    const now = Date.now();
    const fresh: RunRecord = { phase: "running", owner: this.o.owner, seq, priority: item.priority, leaseUntil: now + this.o.leaseMs, attempts: item.attempts };
    const created = await this.records.create(recordKey, fresh);
    if (created !== undefined) return { revision: created, attempts: item.attempts, record: fresh };
    // A record exists: running elsewhere, retrying, waiting for a floor, or dead. Decide from it.
    const rec = await this.records.read(recordKey);
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
        await this.toDeadLetters(
          recordKey,
          { revision: rec.revision, value: rec.value, lost: false },
          next,
          item,
          msg,
          "the worker running it stopped (lease expired) on every attempt",
          false,
        );
        return undefined;
      }
    } else {
      msg.nak(Math.min(Math.max(50, r.leaseUntil - now), 200 + Math.floor(Math.random() * 300)));
      return undefined;
    }
    const revision = await this.records.writeIf(recordKey, next, rec.revision);
    if (revision !== undefined) return { revision, attempts: next.attempts, record: next };
    msg.nak(50 + Math.floor(Math.random() * 100)); // changed meanwhile: try again shortly
    return undefined;
  }

  private async renew(recordKey: string, lease: Lease, msg: JsMsg): Promise<void> {
    msg.working();
    await this.records.renew(recordKey, lease, this.o.owner, msg.info.streamSequence, Date.now() + this.o.leaseMs);
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
      await this.retryLater(
        recordKey,
        lease,
        { ...lease.value, phase: "retrying", attempts, retryAt: now + delay, error: result.message, leaseUntil: 0 },
        msg,
        delay,
      );
      return;
    }
    if (result.type === "nonRetriable") {
      await this.toDeadLetters(recordKey, lease, { ...lease.value, attempts: lease.value.attempts + 1 }, item, msg, result.reason, true);
      return;
    }

    // Children first: durable in the stream before the parent's message goes.
    await Promise.all((result.children ?? []).map((child) => this.placement.enqueue(child)));
    // A rerun mark that asks only for facts this run had read was answered by it (invariant 3).
    const answers = (rerun: WorkItem | undefined): rerun is WorkItem => rerun !== undefined && answeredBy(rerun.facts, result.read);
    const countAnswered = (rerun: WorkItem) => this.metrics.enqueued("answered", rerun.priority, rerun.cause.type);
    const unanswered = (rerun: WorkItem | undefined): WorkItem | undefined => {
      if (!answers(rerun)) return rerun;
      countAnswered(rerun);
      return undefined;
    };
    let pending: WorkItem | undefined;
    // The run's own watch (if it was one) and settle window are spent; a requeue-after watches
    // what this result says.
    const { watch: _watch, settle: _settle, ...base } = item;
    // Whole milliseconds: schedules are stored as integers.
    if (result.type === "requeueAfter")
      pending = {
        ...base,
        attempts: 0,
        notBefore: now + Math.ceil(Math.max(0, result.ms)),
        floor: 0,
        enqueuedAt: now,
        ...(result.watch ? { watch: result.watch } : {}),
      };
    if (result.type === "notBefore") {
      const floor = now + Math.ceil(Math.min(Math.max(0, result.ms), this.o.maxFloorMs));
      pending = { ...base, attempts: 0, notBefore: floor, floor, enqueuedAt: now };
    }
    if (pending) {
      // Written before the ack, so that a crash between the ack and the requeue cannot lose it.
      const withPending = pending;
      let answeredMark: WorkItem | undefined;
      await this.records.update(recordKey, lease, (r) => {
        answeredMark = answers(r.rerun) ? r.rerun : undefined;
        const rerun = answeredMark ? undefined : r.rerun;
        return { ...r, pending: rerun ? mergeItems(withPending, rerun) : withPending, rerun: undefined };
      });
      if (answeredMark) countAnswered(answeredMark);
    }
    await this.remove(msg);
    // Release: erase the record at the revision we know (or, for a floor, leave it waiting).
    // A rerun mark that slipped in makes that fail; then queue the mark and try again.
    const floor = pending?.floor ?? 0;
    let follow = lease.value.pending ?? unanswered(lease.value.rerun);
    let revision = lease.revision;
    for (let turn = 0; turn < 100; turn++) {
      if (follow) await this.placement.place({ ...follow, attempts: 0, enqueuedAt: follow.enqueuedAt || now }, msg.info.streamSequence);
      const waiting: RunRecord = { phase: "waiting", owner: this.o.owner, seq: 0, priority: item.priority, leaseUntil: 0, attempts: 0, floor };
      const released = floor > Date.now() ? (await this.records.writeIf(recordKey, waiting, revision)) !== undefined : await this.records.erase(revision);
      if (released) return;
      const rec = await this.records.read(recordKey);
      // Gone, or taken over after this worker's lease ran out: its new holder answers for it.
      if (!rec || !heldBy(rec.value, lease.value)) return;
      revision = rec.revision;
      follow = unanswered(rec.value.rerun);
    }
    throw new Error(`the run record of ${item.key} kept changing`);
  }

  /**
   * Takes a finished run's message out of the stream, resolving once the server has. On one
   * server the ack removes it (a WorkQueue stream). A replicated work stream keeps what is acked
   * (limits retention, topology.ts says why): the message is deleted through the stream's own
   * log, so every replica removes it at the same point before any later publish of the key, and
   * only then acked, so that it is not delivered again.
   */
  private async remove(msg: JsMsg): Promise<void> {
    if (this.stream.replicated) await this.stream.delete(msg.info.streamSequence);
    await this.pipe.ackConfirmed(msg);
  }

  private async retryLater(recordKey: string, lease: Lease, next: RunRecord, msg: JsMsg, delayMs: number): Promise<void> {
    await this.records.update(recordKey, lease, (r) => ({ ...next, rerun: r.rerun }));
    msg.nak(delayMs);
  }

  private async toDeadLetters(
    recordKey: string,
    lease: Lease,
    base: RunRecord,
    item: WorkItem,
    msg: JsMsg,
    reason: string,
    isNonRetriable: boolean,
  ): Promise<void> {
    const dead = { reason, nonRetriable: isNonRetriable, at: Date.now(), item: { ...item, attempts: 0 } };
    let rerun: WorkItem | undefined;
    await this.records.update(recordKey, lease, (r) => {
      rerun = r.rerun;
      return { ...base, phase: "dead", dead, leaseUntil: 0, error: reason, pending: undefined, rerun: undefined };
    });
    await this.remove(msg);
    this.metrics.deadLettered.add(1, { priority: item.priority, non_retriable: isNonRetriable });
    this.o.log.error(isNonRetriable ? "reconcile gave up (non-retriable)" : "moved to the dead letters", { key: item.key, attempts: base.attempts, reason });
    await this.o
      .onDeadLetter?.({ key: item.key, reason, nonRetriable: isNonRetriable, attempts: base.attempts, at: dead.at, item: dead.item })
      .catch((err: unknown) => {
        this.o.log.warn("could not report a dead letter", { key: item.key, reason: errorMessage(err) });
      });
    // An enqueue during the failing run is new information: it runs once more, with fresh attempts.
    if (rerun) await this.placement.place({ ...rerun, attempts: 0 });
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms).unref());
}
