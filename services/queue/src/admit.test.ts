/**
 * Admission of event records against a real JetStream and a real WorkQueue (own random prefix,
 * removed at the end): a record in the events stream becomes its keys queued in the record's
 * class with the event as cause, a malformed record is dropped without stopping admission, and
 * every record is acked.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { EventLedger, eventId, publish, workItemSchema, type EnqueueRequest, type EventRecord, type Key, type Logger } from "@homeostat/core";
import { done, requeueAfter, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { waitFor } from "../../../scripts/factory.ts";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { runAdmission, runEventAdmission, type AdmissionCounts } from "./admit.ts";

const errors: string[] = [];
const log: Logger = { info() {}, warn() {}, error: (msg) => void errors.push(msg) };

let t: TestEnv;
let ledger: EventLedger;
let queue: WorkQueue;
const abort = new AbortController();
const counts: AdmissionCounts = { added: 0, deduped: 0, rerun: 0 };
const advisorySettle = { quietMs: 60_000, maxMs: 120_000 };
let admitting: Promise<void>;
let admittingIntake: Promise<void>;
const intakeCounts: AdmissionCounts = { added: 0, deduped: 0, rerun: 0 };

before(async () => {
  t = await testEnv();
  ledger = await EventLedger.open(t.nats, 3_600_000);
  queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log, owner: "admit-test" }));
  admitting = runEventAdmission(t.nats, ledger, queue, { log, signal: abort.signal, concurrency: 8, counts, advisorySettle });
  admittingIntake = runAdmission(t.nats, queue, { log, signal: abort.signal, concurrency: 8, counts: intakeCounts });
});

after(async () => {
  abort.abort();
  await Promise.all([admitting, admittingIntake]);
  await t.cleanup();
});

/** The queued work item of `key` in class `priority`, if any. */
async function queued(key: Key, priority: EventRecord["priority"]) {
  const m = await t.nats.jsm.streams.getMessage(t.nats.topology.stream("work"), { last_by_subj: t.nats.topology.workSubject(priority, key) }).catch(() => null);
  return m ? workItemSchema.parse(m.json()) : undefined;
}

/** The record of an event of `source` (its class and cause the source's own), received now. */
function eventRecord(source: "advisory" | "release", ref: string, summary: string, keys: Key[]): EventRecord {
  return { id: eventId(source, ref), source, ref, summary, keys, priority: source, causeType: source, receivedAt: new Date().toISOString() };
}

test("an event record's keys are queued in its class, with the event as their cause, and the record is acked", async () => {
  // A malformed record first: it is logged and dropped, and the good one behind it still goes through.
  await t.nats.js.publish(ledger.subject(eventId("github", "malformed")), JSON.stringify({ id: eventId("github", "malformed"), keys: ["package/x"] }));
  const record = eventRecord("advisory", "OSV-2026-1@2026-11-23T00:00:00Z", "OSV-2026-1: overflow in zlib", ["package/zlib", "image/nginx"]);
  const { id } = record;
  assert.equal(await ledger.record(record), "recorded");

  for (const key of record.keys) {
    const item = await waitFor(`${key} queued`, () => queued(key, "advisory"), 10_000);
    assert.deepEqual([item.key, item.priority, item.cause], [key, "advisory", { type: "advisory", id, detail: "OSV-2026-1: overflow in zlib" }]);
    // An advisory's keys settle as configured, from their enqueue.
    assert.deepEqual(item.settle, { until: item.enqueuedAt + advisorySettle.quietMs, latest: item.enqueuedAt + advisorySettle.maxMs });
  }
  // An item is in the stream a moment before its enqueue returns and is counted.
  await waitFor("both enqueues counted", async () => counts.added + counts.deduped + counts.rerun >= 2 || undefined, 10_000);
  assert.deepEqual(counts, { added: 2, deduped: 0, rerun: 0 });
  assert.equal(errors.filter((e) => e === "rejected malformed message").length, 1);
  const info = await waitFor(
    "both records acked",
    async () => {
      const i = await t.nats.jsm.consumers.info(ledger.stream, "admission");
      return i.num_pending === 0 && i.num_ack_pending === 0 && i;
    },
    10_000,
  );
  assert.equal(info.delivered.stream_seq, 2);
});

test("a release's keys do not settle: they are due at once", async () => {
  const record = eventRecord("release", "zstd@1.5.7", "zstd 1.5.7", ["package/zstd"]);
  const { id } = record;
  assert.equal(await ledger.record(record), "recorded");
  const item = await waitFor("package/zstd queued", () => queued("package/zstd", "release"), 10_000);
  assert.deepEqual([item.cause.id, item.settle, item.notBefore], [id, undefined, 0]);
});

test("an intake request that reports a completion withdraws the look that watched for it, else queues the key", async () => {
  const watched: Key = "package/watched";
  const unwatched: Key = "image/unwatched";
  // A run that asked for a build and watches for it (reconcile.ts: a key with no dependents).
  const stop = new AbortController();
  const running = queue.run({
    concurrency: 2,
    signal: stop.signal,
    reconcile: async (item) => (item.key === watched ? requeueAfter(60_000, "sha256:b") : done),
  });
  await queue.enqueue({ key: watched, priority: "release", cause: { type: "release" } });
  await waitFor("the look to be queued", async () => (await queued(watched, "release"))?.watch === "sha256:b" || undefined, 10_000);
  stop.abort();
  await running;
  const built = (key: Key): EnqueueRequest => ({ v: 1, key, priority: "dependency", cause: { type: "built", id: "sha256:b" }, completes: "sha256:b" });
  await publish(t.nats, "intake", watched, built(watched));
  await waitFor("the look to be withdrawn", async () => (await queued(watched, "release")) === undefined || undefined, 10_000);
  assert.equal(await queued(watched, "dependency"), undefined, "and nothing queued instead");
  // Nothing watches for the build of this one: the key is queued as asked.
  await publish(t.nats, "intake", unwatched, built(unwatched));
  const item = await waitFor("the key to be queued", () => queued(unwatched, "dependency"), 10_000);
  assert.deepEqual(item.cause, { type: "built", id: "sha256:b" });
  assert.equal(intakeCounts.added, 1);
});
