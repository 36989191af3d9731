/**
 * Admission: every "key may have drifted" request (from ingest, reconcilers and the signer)
 * enters through the intake stream and is admitted into the work queue here, in one place,
 * so the queue's merge rules are applied by one writer per region.
 */
import { enqueueRequestSchema, runConsumer, type Logger, type Nats, type WorkQueue } from "@homeostat/core";

export type AdmissionCounts = { added: number; deduped: number; rerun: number };

export function runAdmission(n: Nats, queue: WorkQueue, o: { log: Logger; signal: AbortSignal; concurrency: number; counts: AdmissionCounts }): Promise<void> {
  return runConsumer(n, {
    stage: "intake",
    schema: enqueueRequestSchema,
    spanName: "queue.admit",
    concurrency: o.concurrency,
    log: o.log,
    signal: o.signal,
    handle: async (req) => {
      const outcome = await queue.enqueue({ v: 1, key: req.key, priority: req.priority, cause: req.cause });
      o.counts[outcome === "added" ? "added" : outcome === "rerun" ? "rerun" : "deduped"]++;
    },
  });
}
