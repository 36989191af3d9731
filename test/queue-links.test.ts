/**
 * Every enqueue a run answers is linked to it. With the real SDK exporting to an OTLP receiver, a
 * work queue on a private NATS server is driven into each way an enqueue is absorbed:
 *  - deduplicated: two enqueues of a key before any worker runs; the run links to the first (its
 *    message's), and the second's span links to that message, whose run answers it (rewriting the
 *    message to carry the link cost a delete, a publish and often a run: merge.ts);
 *  - folded into a rerun: an enqueue while the key runs; the rerun links to it;
 *  - into a retry: an enqueue while the key waits for its retry; its span links to the message
 *    that will be retried.
 * Each enqueue happens inside its own root span (as an event's CONSUMER span in the queue
 * service), so a link can only come from the work item or the enqueue, never from a shared trace.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { exponentialBackoff, type Logger } from "@homeostat/core";
import { inSpan, SpanKind, startTelemetry, type Telemetry } from "@homeostat/core/telemetry";
import { done, WorkQueue, type EnqueueOutcome } from "@homeostat/workqueue";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";
import { SpanKindNumber, startOtlpReceiver, type ReceivedSpan } from "./otlp-receiver.ts";
import { ROOT_CONTEXT } from "@opentelemetry/api";

const quiet: Logger = { info() {}, warn() {}, error() {} };

let t: TestEnv;
let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
let telemetry: Telemetry;
let q: WorkQueue;

before(async () => {
  otlp = await startOtlpReceiver();
  telemetry = startTelemetry("queue-links-test", {
    serviceName: undefined,
    resourceAttributes: {},
    traces: { url: `${otlp.url}/v1/traces`, protocol: "http/protobuf" },
    metrics: undefined,
    metricExportIntervalMs: 60_000,
    spanBatchDelayMs: 100,
    sampler: { name: "always_on", ratio: 1 },
  });
  t = await testEnv({ HOMEOSTAT_LEASE_MS: "5000" });
  q = new WorkQueue(t.nats, {
    leaseMs: 5_000,
    log: quiet,
    owner: "links-test",
    maxAttempts: 3,
    backoff: exponentialBackoff(10, 100),
    maxFloorMs: 1_000,
    drainMs: 1_000,
  });
});

after(async () => {
  await telemetry?.shutdown();
  await otlp?.close();
  await t?.cleanup();
});

/** Enqueues `key` inside a new root span named `name`; that span's ids and the outcome. */
async function enqueueTraced(name: string, key: `package/${string}`): Promise<{ traceId: string; spanId: string; outcome: EnqueueOutcome }> {
  return inSpan(name, { parent: ROOT_CONTEXT, kind: SpanKind.CONSUMER }, async (span) => {
    const outcome = await q.enqueue({ key, priority: "release", cause: { type: "manual", id: name } });
    return { ...span.spanContext(), outcome };
  });
}

const runsOf = (key: string): ReceivedSpan[] =>
  otlp.spans.filter((s) => s.kind === SpanKindNumber.consumer && s.name.startsWith("reconcile ") && s.attributes["homeostat.key"] === key);
/** The attribute on a link from an absorbed enqueue to the message that answers it. */
const answeredBy = { "homeostat.link": "answered_by" };
const linksTo = (run: ReceivedSpan, e: { traceId: string; spanId: string }) => run.links.some((l) => l.traceId === e.traceId && l.spanId === e.spanId);

test("a deduplicated enqueue and an enqueue folded into a rerun are linked from the runs that answer them", { timeout: 120_000 }, async () => {
  const dedupKey = `package/dedup-${t.prefix}` as const;
  const rerunKey = `package/rerun-${t.prefix}` as const;

  // Deduplicated: both enqueues before any worker runs; the second merges into the first's message.
  const first = await enqueueTraced("first enqueue", dedupKey);
  const second = await enqueueTraced("second enqueue", dedupKey);
  assert.deepEqual([first.outcome, second.outcome], ["added", "deduped"]);

  // Folded into a rerun: the key's first run waits until an enqueue has found it running.
  let release!: () => void;
  const enqueuedWhileRunning = new Promise<void>((r) => (release = r));
  let started!: () => void;
  const rerunKeyRunning = new Promise<void>((r) => (started = r));
  const runs = new Map<string, number>();
  const stop = new AbortController();
  const worker = q.run({
    concurrency: 4,
    signal: stop.signal,
    reconcile: async (item) => {
      runs.set(item.key, (runs.get(item.key) ?? 0) + 1);
      if (item.key === rerunKey && runs.get(item.key) === 1) {
        started();
        await enqueuedWhileRunning;
      }
      return done;
    },
  });
  try {
    const original = await enqueueTraced("original enqueue", rerunKey);
    await rerunKeyRunning;
    const during = await enqueueTraced("enqueue during the run", rerunKey);
    release();
    assert.deepEqual([original.outcome, during.outcome], ["added", "rerun"]);

    await waitFor("both keys' runs exported", async () => (runsOf(dedupKey).length >= 1 && runsOf(rerunKey).length >= 2) || undefined, 60_000, 100);
    const [dedupRun] = runsOf(dedupKey);
    assert.equal(runsOf(dedupKey).length, 1, "the deduplicated key ran once");
    // One message: the first enqueue's. The second's publish was refused (the key was queued): it
    // sent nothing, so no span of it is exported, and the message was not rewritten for it.
    const sends = otlp.spans.filter((s) => s.kind === SpanKindNumber.producer && s.attributes["homeostat.key"] === dedupKey);
    assert.deepEqual(
      sends.map((s) => s.traceId),
      [first.traceId],
      "one PRODUCER span per message stored, none for the refused publish",
    );
    assert.equal(dedupRun!.parentSpanId, sends[0]!.spanId, "the run continues the message it took");
    assert.deepEqual(
      dedupRun!.links,
      [{ traceId: first.traceId, spanId: first.spanId, attributes: { "homeostat.link": "enqueue" } }],
      "the run links to the enqueue of its message",
    );
    assert.equal(dedupRun!.attributes["homeostat.enqueues"], 1);
    const secondSpan = await waitFor("the second enqueue's span", async () => otlp.spans.find((s) => s.spanId === second.spanId), 30_000);
    assert.deepEqual(
      secondSpan.links,
      [{ traceId: dedupRun!.traceId, spanId: sends[0]!.spanId, attributes: answeredBy }],
      "the second enqueue links to the message its run answers",
    );

    const [firstRun, rerun] = runsOf(rerunKey);
    assert.ok(linksTo(firstRun!, original) && !linksTo(firstRun!, during), "the first run links to its own enqueue only");
    assert.ok(linksTo(rerun!, during), "the rerun links to the enqueue that found the key running");
  } finally {
    release();
    stop.abort();
    await worker;
  }
});

test("an enqueue while its key waits for a retry links to the message that will be retried", { timeout: 60_000 }, async () => {
  const key = `package/retry-${t.prefix}` as const;
  // Its own queue on the same stream, with a retry far enough off for the enqueue to find it waiting.
  const waiting = new WorkQueue(t.nats, {
    leaseMs: 5_000,
    log: quiet,
    owner: "links-retry",
    maxAttempts: 3,
    backoff: () => 60_000,
    maxFloorMs: 1_000,
    drainMs: 1_000,
  });
  const stop = new AbortController();
  const worker = waiting.run({
    concurrency: 1,
    signal: stop.signal,
    reconcile: async () => {
      throw new Error("fails, to be retried");
    },
  });
  try {
    const original = await enqueueTraced("enqueue that fails", key);
    await waitFor("the failure", async () => (await waiting.stats()).retrying === 1, 30_000);
    const during = await enqueueTraced("enqueue during the wait", key);
    assert.deepEqual([original.outcome, during.outcome], ["added", "deduped"]);
    const send = await waitFor(
      "the message's PRODUCER span",
      async () => otlp.spans.find((s) => s.kind === SpanKindNumber.producer && s.attributes["homeostat.key"] === key),
      30_000,
    );
    assert.equal(send.traceId, original.traceId, "the message the retry will run is the first enqueue's");
    const duringSpan = await waitFor("the enqueue's span", async () => otlp.spans.find((s) => s.spanId === during.spanId), 30_000);
    assert.deepEqual(duringSpan.links, [{ traceId: original.traceId, spanId: send.spanId, attributes: answeredBy }]);
  } finally {
    stop.abort();
    await worker;
  }
});
