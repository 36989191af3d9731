/**
 * Admission: "key may have drifted" requests enter the work queue here, which merges them per
 * key. Two ways in:
 * - event records (core events.ts): ingest's one write per event is its record in the events
 *   stream, which carries the event's keys, priority and cause type; a durable consumer of that
 *   stream enqueues every key (cause id = the event id, detail = its summary) and then acks.
 *   A crash between the enqueues and the ack redelivers the record and enqueues again, which
 *   the queue merges, so admission is at least once and its effect once. The records handled
 *   at once (up to EVENT_ADMISSION_BATCH) enqueue each distinct key once (key-coalescer.ts):
 *   the repeats of a burst reach the queue before the key's run starts, not each as a rerun.
 *   An advisory's keys settle (config HOMEOSTAT_ADVISORY_SETTLE_MS, workqueue Settle): a feed
 *   import's thousands of advisories for one package run it once they stop coming.
 * - the intake stream, for the other producers (ingest's resync, the signer), where repeated
 *   deliveries of one request are dropped by Nats-Msg-Id. A request that reports a completion
 *   (`completes`) withdraws the key's requeue-after that watched for it instead, when that is
 *   all the key has queued.
 */
import { enqueueRequestSchema, eventRecordSchema, runConsumer, type EventLedger, type Logger, type Nats } from "@homeostat/core";
import { currentTraceparent } from "@homeostat/core/telemetry";
import type { EnqueueOutcome, Settle, WorkQueue } from "@homeostat/workqueue";
import { KeyCoalescer } from "./key-coalescer.ts";

export type AdmissionCounts = Record<EnqueueOutcome, number>;

/**
 * Event records admitted at once (the consumer's pull batch and records in hand): a batch of
 * ingest's advisories (up to 10,000 documents, one record each) comes in a few turns, each
 * key once per turn. Well under the admission consumer's max_ack_pending.
 */
export const EVENT_ADMISSION_BATCH = 1_000;

export type AdmissionOptions = {
  log: Logger;
  signal: AbortSignal;
  concurrency: number;
  counts: AdmissionCounts;
  /** How an advisory's keys settle in the queue (config HOMEOSTAT_ADVISORY_SETTLE_MS); none: they run at once. */
  advisorySettle?: Settle;
};

/** Admits the intake stream's requests until `signal` aborts. */
export function runAdmission(n: Nats, queue: WorkQueue, o: AdmissionOptions): Promise<void> {
  return runConsumer(n, {
    stage: "intake",
    schema: enqueueRequestSchema,
    spanName: "queue.admit",
    concurrency: o.concurrency,
    log: o.log,
    signal: o.signal,
    handle: async (req) => {
      // A completion whose key has nothing queued but the look that watched for it: that look
      // goes, and nothing runs (the signer's report of a build that tells no dependent).
      if (req.completes && (await queue.withdraw(req.key, req.completes))) return;
      o.counts[await queue.enqueue(req)]++;
    },
  });
}

/**
 * Admits the keys of every event record until `signal` aborts (a malformed record is logged and
 * dropped), `o.concurrency` records at a time: the records in hand together enqueue each of
 * their keys once.
 */
export async function runEventAdmission(n: Nats, ledger: EventLedger, queue: WorkQueue, o: AdmissionOptions): Promise<void> {
  const coalescer = new KeyCoalescer((req) => queue.enqueue(req));
  return runConsumer(n, {
    stage: await ledger.admissionConsumer(),
    schema: eventRecordSchema,
    spanName: "queue.admit-event",
    concurrency: o.concurrency,
    log: o.log,
    signal: o.signal,
    handle: async (record) => {
      const cause = { type: record.causeType, id: record.id, detail: record.summary };
      const link = currentTraceparent();
      const facts = record.facts ? { facts: record.facts } : {};
      const settle = record.causeType === "advisory" && o.advisorySettle ? { settle: o.advisorySettle } : {};
      const outcomes = await Promise.all(record.keys.map((key) => coalescer.enqueue({ key, priority: record.priority, cause, ...facts, ...settle }, link)));
      for (const outcome of outcomes) o.counts[outcome]++;
    },
  });
}
