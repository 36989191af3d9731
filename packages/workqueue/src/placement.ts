/**
 * Placement: putting a key's schedule into the work stream under invariants 1 (one queued
 * message per key, merged) and 3 (a key enqueued while it runs runs exactly once more). Used by
 * `enqueue`, and by workers and the admin for what must follow a run (a rerun, a requeue, a
 * retry from the dead letters). The merge rules themselves are pure, in merge.ts.
 */
import type { WorkItem } from "@homeostat/core/contracts";
import type { Key } from "@homeostat/core/key";
import { currentTraceparent, linkActiveSpan, recordedUnder } from "@homeostat/core/telemetry";
import { planMerge, workItemFor } from "./merge.ts";
import type { QueueMetrics } from "./metrics.ts";
import type { RunRecordStore, Versioned } from "./run-records.ts";
import type { EnqueueOutcome, QueueRequest } from "./types.ts";
import type { Queued, WorkStream } from "./work-stream.ts";

export class Placement {
  private readonly stream: WorkStream;
  private readonly records: RunRecordStore;
  private readonly leaseMs: number;
  private readonly metrics: QueueMetrics;

  constructor(stream: WorkStream, records: RunRecordStore, leaseMs: number, metrics: QueueMetrics) {
    this.stream = stream;
    this.records = records;
    this.leaseMs = leaseMs;
    this.metrics = metrics;
  }

  /** Queues the key, merges it into its queued message, or marks its run for exactly one rerun. */
  async enqueue(req: QueueRequest): Promise<EnqueueOutcome> {
    // The caller's span context goes with the schedule: the run that answers it links back to it
    // (or, when the key is queued already, the caller's span links to the message that answers it).
    const own = currentTraceparent();
    const outcome = await this.place(workItemFor(req, Date.now(), own), undefined, own);
    this.metrics.enqueued(outcome, req.priority, req.cause.type);
    return outcome;
  }

  /**
   * Puts `item` into the stream. `self` is the sequence of the message the caller itself is
   * running: its own record does not count as "running" for this item. `own` is the enqueue's own
   * traceparent (the caller's span): absorbed into a queued message, the enqueue links that span
   * to the message instead of rewriting it to carry the link (merge.ts linksWorthARewrite).
   *
   * The common case costs one publish: the server refuses a second message in a class (10077),
   * and only then are the queued message and the run record read, to merge. A message added in
   * one class is then checked against the others and merged into one. A worker may take the new
   * message before that merge; the key then runs (never twice at once: the record) and what was
   * queued in the other class folds into one rerun. Floors are safe in that window because a
   * reconcile's floor is kept in the run record and enforced at claim; a floor that an enqueue
   * asks for has no record, so such an enqueue reads every class before it writes.
   */
  async place(item: WorkItem, self?: number, own?: string): Promise<EnqueueOutcome> {
    const recordKey = this.records.keyOf(item.key);
    // Each turn follows a change made by someone else; none lasts longer than a lease.
    const deadline = Date.now() + this.leaseMs * 4;
    for (let turn = 0; ; turn++) {
      if (turn > 0 && Date.now() > deadline) throw new Error(`enqueue of ${item.key} did not settle within ${this.leaseMs * 4} ms`);
      let next: EnqueueOutcome | WorkItem;
      if (item.floor > Date.now()) {
        const { rec, queued } = await this.snapshot(item.key, recordKey);
        if (queued.length === 0) {
          if (!(await this.stream.publish(item))) continue;
          next = await this.mergeAcrossClasses(item, recordKey, self, own);
        } else next = await this.merge(item, queued, rec, recordKey, self, own);
      } else if (await this.stream.publish(item)) {
        next = await this.mergeAcrossClasses(item, recordKey, self, own);
      } else {
        // This class already holds the key: queued, waiting for a retry, or running.
        const rec = await this.records.read(recordKey); // before the message: see snapshot()
        const mine = await this.stream.queuedIn(item.priority, item.key);
        if (!mine) continue; // acked meanwhile: the subject is free again
        next = await this.merge(item, [mine], rec, recordKey, self, own);
      }
      if (typeof next === "string") return next;
      item = next; // what was merged so far, whatever moved meanwhile
    }
  }

  /**
   * Withdraws the key's queued requeue-after that looks whether `watch` happened (WorkItem.watch),
   * told that it did; true when it was withdrawn. Only a message that stands for that look alone
   * carries the watch (a merge drops it), so no enqueue goes with it. The record is read before
   * the messages (as in snapshot()): without one the key neither runs nor waits for a retry or a
   * floor, and a message due no sooner than a lease from now cannot be claimed before the delete.
   * A message rewritten meanwhile has another sequence and stays. Counted as outcome "withdrawn".
   */
  async withdraw(key: Key, watch: string): Promise<boolean> {
    if (await this.records.read(this.records.keyOf(key))) return false;
    const now = Date.now();
    for (const m of await this.stream.queued(key)) {
      if (m.item.watch !== watch || m.item.notBefore <= now + this.leaseMs) continue;
      if (!(await this.stream.delete(m.seq))) return false;
      this.metrics.enqueued("withdrawn", m.item.priority, m.item.cause.type);
      return true;
    }
    return false;
  }

  /** After adding `item` in its class: if the key is queued in another class too, merge into one. */
  private async mergeAcrossClasses(item: WorkItem, recordKey: string, self: number | undefined, own: string | undefined): Promise<EnqueueOutcome | WorkItem> {
    const others = await this.stream.queued(item.key, item.priority);
    if (others.length === 0) return "added";
    const { rec, queued } = await this.snapshot(item.key, recordKey);
    return this.merge(item, queued, rec, recordKey, self, own);
  }

  /**
   * The key's run record, then its queued messages, in that order. A message seen after a record
   * that shows no run of it had not begun running when the record was read, so merging into it
   * is safe. Read the other way round (or at once), a run could end between the two reads: its
   * acked message would look queued, its record absent, and the enqueue would merge into a run
   * that began before it and is already over, and be lost.
   */
  private async snapshot(key: Key, recordKey: string): Promise<{ rec: Versioned | undefined; queued: Queued[] }> {
    const rec = await this.records.read(recordKey);
    return { rec, queued: await this.stream.queued(key) };
  }

  /** Carries out the merge plan; returns the merge to place again when something moved meanwhile. */
  private async merge(
    item: WorkItem,
    queued: Queued[],
    rec: Versioned | undefined,
    recordKey: string,
    self?: number,
    own?: string,
  ): Promise<EnqueueOutcome | WorkItem> {
    const held = rec && rec.value.phase !== "dead" && rec.value.seq !== self ? rec.value : undefined;
    const plan = planMerge(item, queued, held, own);
    switch (plan.type) {
      case "intoRetry":
        for (const m of plan.drop) await this.stream.delete(m.seq);
        if (own) linkToAnswer(plan.retry, own);
        return "deduped";
      case "intoRun":
        for (const m of plan.drop) await this.stream.delete(m.seq);
        // Planned only for a running record; false: it changed (renewed, ended, marked), look again.
        return rec && (await this.records.markRerun(recordKey, rec, plan.rerun)) ? "rerun" : plan.rerun;
      case "intoQueued":
        // A message of the merged class that vanished meanwhile was taken by a run: start over.
        for (const m of plan.drop) if (!(await this.stream.delete(m.seq)) && m.item.priority === plan.merged.priority) return plan.merged;
        if (!plan.keep && !(await this.stream.publish(plan.merged))) return plan.merged;
        if (plan.keep && own) linkToAnswer(plan.keep, own);
        return "deduped";
    }
  }
}

/**
 * Links the enqueue's span (`own`, the active span) to the queued message `answer` that will run
 * for it, unless that message's run links to the enqueue already or will not be recorded (no
 * backend would have what the link points at). Every enqueue absorbed into a queued message or a
 * waiting retry is so linked, at no cost to the stream.
 */
function linkToAnswer(answer: Queued, own: string): void {
  const { trace, enqueues } = answer.item;
  if (trace && !enqueues?.includes(own) && recordedUnder(trace)) linkActiveSpan(trace, { "homeostat.link": "answered_by" });
}
