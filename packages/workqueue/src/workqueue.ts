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
 *     Requests that all ask to settle (QueueRequest.settle) make the key due once none came for
 *     the quiet period, within the longest wait of the first; one that does not makes it due
 *     at once. The rerun of invariant 3 settles the same way.
 *  2. Exclusivity: a key runs only in the worker that created its record (create fails if it
 *     exists), and only while the record's lease is unexpired. A message delivered while the
 *     record is held waits (nak with delay); it never runs. (A copy of a message delivered
 *     twice, after it outlived its ack wait in a client's buffer, may run the key once more
 *     afterwards: at least once, never at once.)
 *  3. Rerun once: an enqueue that finds the key running marks the record (compare-and-set).
 *     A run ends by acking its message and then erasing the record by its revision; erasing
 *     fails if a mark arrived, and the worker then queues the key once, with the marks merged.
 *     However many enqueues arrived, the key runs exactly once more; unless every one of them
 *     stated the facts it stems from (QueueRequest.facts: fact stores and revisions) and the
 *     run reports it read those stores at or past them (ReconcileResult.read): the run answered
 *     them, and the mark is dropped (counted as outcome "answered").
 *  4. Nothing lost: a message is acked only after its run ended and anything that must follow
 *     (children, a requeue) is durable in the stream or in the record. A worker that dies
 *     stops renewing: after the lease its message comes back, and the next worker takes the
 *     expired record over (the crash counts as an attempt, so a poison key ends in the dead
 *     letters instead of looping). What a dead worker had promised to queue after its ack is
 *     in its record, as is a retry whose message is gone; `sweep()` queues them.
 *  5. Results: done; requeueAfter (attempts reset, an enqueue may pull it earlier; one that
 *     watches for something, e.g. a build's completion, may be withdrawn once told it happened,
 *     while it stands for nothing else); notBefore
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
 *
 * The code, one concern per file: types.ts (requests, results, stats), options.ts, merge.ts
 * (the merge rules, pure), work-stream.ts (queued messages), run-records.ts (the leases),
 * placement.ts (enqueue: invariants 1 and 3), worker.ts (run, claim, renew, finish: 2 to 5, 7,
 * 8), admin.ts (stats, dead letters, sweep), metrics.ts; this file is the public surface.
 */
import { JetStreamPipe } from "@homeostat/core/jetstream-pipe";
import type { Priority } from "@homeostat/core/contracts";
import type { Key } from "@homeostat/core/key";
import type { Nats } from "@homeostat/core/topology";
import { QueueAdmin } from "./admin.ts";
import { queueMetrics } from "./metrics.ts";
import type { WorkQueueOptions } from "./options.ts";
import { Placement } from "./placement.ts";
import { RunRecordStore } from "./run-records.ts";
import type { DeadLetter, EnqueueOutcome, QueueRequest, QueueStats, Reconcile } from "./types.ts";
import { Worker } from "./worker.ts";
import { WorkStream } from "./work-stream.ts";

export { workQueueOptions, type WorkQueueOptions } from "./options.ts";
export { done, doneWith, nonRetriable, notBefore, requeueAfter } from "./types.ts";
export { settleSlackMs } from "./merge.ts";
export type { DeadLetter, EnqueueOutcome, QueueRequest, QueueStats, Reconcile, ReconcileResult, Settle } from "./types.ts";

/**
 * One process's handle on a region's work queue: enqueue (placement.ts), run (worker.ts), and
 * administer (admin.ts), over one lean JetStream pipe for the per-run requests (claim, ack,
 * release, publish) and one set of instruments.
 */
export class WorkQueue {
  private readonly placement: Placement;
  private readonly worker: Worker;
  private readonly admin: QueueAdmin;

  constructor(n: Nats, o: WorkQueueOptions) {
    const pipe = new JetStreamPipe(n.nc);
    const stream = new WorkStream(n, pipe);
    const records = new RunRecordStore(n, pipe);
    const metrics = queueMetrics();
    this.placement = new Placement(stream, records, o.leaseMs, metrics);
    this.worker = new Worker(n, o, { pipe, stream, records, placement: this.placement, metrics });
    this.admin = new QueueAdmin(n, o, { stream, records, placement: this.placement });
  }

  /** Queues the key, merges it into its queued message, or marks its run for exactly one rerun. */
  enqueue(req: QueueRequest): Promise<EnqueueOutcome> {
    return this.placement.enqueue(req);
  }

  /**
   * Told that what the key's queued requeue-after watches for happened (ReconcileResult
   * requeueAfter's `watch`), takes that look out of the queue; false when there is none to take
   * (none queued, merged with an enqueue, due within a lease, or the key runs): then the caller
   * enqueues instead.
   */
  withdraw(key: Key, watch: string): Promise<boolean> {
    return this.placement.withdraw(key, watch);
  }

  /** Runs `reconcile` on keys queued in `classes` (default: every class), at most `concurrency` at once, until `signal` aborts; then drains. */
  run(o: { concurrency: number; signal: AbortSignal; reconcile: Reconcile; classes?: readonly Priority[] }): Promise<void> {
    return this.worker.run(o);
  }

  /** Depth per class, and keys running, waiting for a retry, or in the dead letters. */
  stats(): Promise<QueueStats> {
    return this.admin.stats();
  }

  /** Reports `stats()` as OpenTelemetry gauges; called once, by the queue service. */
  observeStats(): void {
    this.admin.observeStats();
  }

  deadLetters(): Promise<DeadLetter[]> {
    return this.admin.deadLetters();
  }

  /** Queues a dead-lettered key again with fresh attempts; false when it is not in the dead letters. */
  retryDeadLetter(key: Key): Promise<boolean> {
    return this.admin.retryDeadLetter(key);
  }

  /** Queues what crashed workers left promised and clears stale records; the number queued. */
  sweep(): Promise<number> {
    return this.admin.sweep();
  }
}
