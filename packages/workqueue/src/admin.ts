/**
 * Administration of a region's queue, for the queue service and its status API: figures (stats
 * and their gauges), the dead letters (list, retry), and the sweep that repairs what no message
 * will (invariant 4: a crashed worker's promises, a retry whose message is gone, stale floors).
 */
import { metrics } from "@opentelemetry/api";
import { priorities, type Priority } from "@homeostat/core/contracts";
import type { Key } from "@homeostat/core/key";
import { errorMessage, type Logger } from "@homeostat/core/log";
import type { Nats } from "@homeostat/core/topology";
import { dueAt, mergeOptional } from "./merge.ts";
import { meterName } from "./metrics.ts";
import type { Placement } from "./placement.ts";
import { keyOfRecord, type RunPhase, type RunRecordStore, type Versioned } from "./run-records.ts";
import type { DeadLetter, QueueStats } from "./types.ts";
import type { WorkStream } from "./work-stream.ts";

export class QueueAdmin {
  private readonly n: Nats;
  private readonly leaseMs: number;
  private readonly log: Logger;
  private readonly stream: WorkStream;
  private readonly records: RunRecordStore;
  private readonly placement: Placement;

  constructor(n: Nats, o: { leaseMs: number; log: Logger }, parts: { stream: WorkStream; records: RunRecordStore; placement: Placement }) {
    this.n = n;
    this.leaseMs = o.leaseMs;
    this.log = o.log;
    this.stream = parts.stream;
    this.records = parts.records;
    this.placement = parts.placement;
  }

  /** Queued messages per class; run records by phase (a key waiting for its floor is queued, not a dead letter). */
  async stats(): Promise<QueueStats> {
    const depth = {} as Record<Priority, number>;
    await Promise.all(
      priorities.map(async (p) => {
        const info = await this.n.jsm.consumers.info(this.stream.name, this.n.topology.workConsumer(p));
        depth[p] = info.num_pending + info.num_ack_pending;
      }),
    );
    const phases: Record<RunPhase, number> = { running: 0, retrying: 0, waiting: 0, dead: 0 };
    for (const r of await this.records.all()) phases[r.phase]++;
    return { depth, running: phases.running, retrying: phases.retrying, deadLetters: phases.dead };
  }

  /**
   * Per class, seconds since its first queued message became due (0: none, or not due yet). The
   * stream keeps publication order, so a class that stopped moving shows here first.
   */
  async oldestDueS(): Promise<Record<Priority, number>> {
    const now = Date.now();
    const ages = await Promise.all(
      priorities.map(async (p) => {
        const first = await this.stream.firstOf(this.n.topology.workClassSubjects(p));
        return [p, first ? Math.max(0, now - Math.max(first.enqueuedAt, dueAt(first))) / 1000 : 0] as const;
      }),
    );
    return Object.fromEntries(ages) as Record<Priority, number>;
  }

  /**
   * Reports depth per class, running, retrying and dead letters as OpenTelemetry gauges, read
   * at each metrics export. Called once, by the queue service: the figures are the region's.
   */
  observeStats(): void {
    const meter = metrics.getMeter(meterName);
    const depth = meter.createObservableGauge("homeostat.queue.depth", { unit: "{key}", description: "Queued keys per priority class" });
    const keys = meter.createObservableGauge("homeostat.queue.keys", { unit: "{key}", description: "Keys running, waiting for a retry, or dead-lettered" });
    const oldest = meter.createObservableGauge("homeostat.queue.oldest_age", {
      unit: "s",
      description: "Per priority class, how long its first queued message has been due (0 when not due yet)",
    });
    meter.addBatchObservableCallback(
      async (result) => {
        const [s, ages] = await Promise.all([this.stats(), this.oldestDueS()]);
        for (const p of priorities) {
          result.observe(depth, s.depth[p], { priority: p });
          result.observe(oldest, ages[p], { priority: p });
        }
        result.observe(keys, s.running, { state: "running" });
        result.observe(keys, s.retrying, { state: "retrying" });
        result.observe(keys, s.deadLetters, { state: "dead" });
      },
      [depth, keys, oldest],
    );
  }

  /** The dead letters, oldest first. */
  async deadLetters(): Promise<DeadLetter[]> {
    const out: DeadLetter[] = [];
    for (const r of await this.records.all()) {
      if (r.phase === "dead" && r.dead)
        out.push({ key: r.dead.item.key, reason: r.dead.reason, nonRetriable: r.dead.nonRetriable, attempts: r.attempts, at: r.dead.at, item: r.dead.item });
    }
    return out.sort((a, b) => a.at - b.at || a.key.localeCompare(b.key));
  }

  /**
   * Queues a dead-lettered key again with fresh attempts, as an operator's request (cause
   * "manual", which tells a reconciler to forget the failures that put it there); false when
   * it is not in the dead letters.
   */
  async retryDeadLetter(key: Key): Promise<boolean> {
    const rec = await this.records.read(this.records.keyOf(key));
    if (!rec || rec.value.phase !== "dead" || !rec.value.dead) return false;
    // An operator's request: due now, however the failed schedule was to settle.
    const { settle: _settle, ...item } = rec.value.dead.item;
    const cause = { type: "manual" as const, detail: `retried from the dead letters (${rec.value.dead.reason})`.slice(0, 2048) };
    await this.placement.place({ ...item, cause, attempts: 0, notBefore: 0, floor: 0, enqueuedAt: Date.now() });
    return true;
  }

  /**
   * Repairs what no message will: queues what a crashed worker had promised (its record's rerun
   * or requeue) once the message it ran is gone and its lease has expired, queues a retry whose
   * message is gone, and clears floors long past. Safe to run anywhere, any number of times.
   * A record it cannot read is logged and left for an operator; the others are still swept.
   */
  async sweep(): Promise<number> {
    let queued = 0;
    const now = Date.now();
    for (const recordKey of await this.records.keys()) {
      let rec: Versioned | undefined;
      try {
        rec = await this.records.read(recordKey);
      } catch (err) {
        this.log.error("sweep skipped a run record it cannot read", { record: recordKey, reason: errorMessage(err) });
        continue;
      }
      if (!rec) continue;
      const r = rec.value;
      if (r.phase === "waiting" && (r.floor ?? 0) + this.leaseMs < now) {
        // A floor long past whose message is gone (merged away or run elsewhere) guards nothing.
        if ((await this.stream.queued(keyOfRecord(recordKey))).length === 0) await this.records.erase(rec.revision);
        continue;
      }
      if (r.phase === "retrying" && (r.retryAt ?? 0) + this.leaseMs < now) {
        // A stale second delivery of an already acked message can fail and leave a retry whose
        // message is gone (a consumer redelivers what waited in a client's buffer past its ack
        // wait). The retry is still owed: queue it, attempts kept.
        if (await this.stream.holds(r.seq)) continue;
        const key = keyOfRecord(recordKey);
        await this.placement.place({
          v: 1,
          key,
          priority: r.priority,
          cause: { type: "manual", detail: "retry whose message was gone" },
          notBefore: 0,
          floor: 0,
          attempts: r.attempts,
          enqueuedAt: now,
        });
        await this.records.erase(rec.revision);
        queued++;
        continue;
      }
      if (r.phase !== "running" || r.leaseUntil > now) continue;
      if (await this.stream.holds(r.seq)) continue; // its message comes back by itself; the next claim takes over
      const follow = mergeOptional(r.pending, r.rerun);
      if (follow) {
        await this.placement.place({ ...follow, attempts: 0 }, r.seq);
        queued++;
      }
      await this.records.erase(rec.revision);
    }
    return queued;
  }
}
