/**
 * A run links to every enqueue it answers. With the real SDK exporting to an OTLP receiver, a
 * work queue on a private NATS server is driven into both ways an enqueue is absorbed:
 *  - deduplicated: two enqueues of a key before any worker runs; the one run links to both;
 *  - folded into a rerun: an enqueue while the key runs; the rerun links to it.
 * Each enqueue happens inside its own root span (as an event's CONSUMER span in the queue
 * service), so a link can only come from the work item, never from a shared trace.
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
    assert.ok(linksTo(dedupRun!, first) && linksTo(dedupRun!, second), "the one run links to both enqueues it answered");
    assert.equal(dedupRun!.attributes["homeostat.enqueues"], 2);
    for (const l of dedupRun!.links) assert.ok([first.traceId, second.traceId].includes(l.traceId), "no other links");
    // Its messages: the first enqueue's, and the one rewritten to link the second. The second's
    // publish was refused first (the key was queued): it sent nothing, so no span of it is exported.
    const sends = otlp.spans.filter((s) => s.kind === SpanKindNumber.producer && s.attributes["homeostat.key"] === dedupKey);
    assert.deepEqual(
      sends.map((s) => s.traceId),
      [first.traceId, second.traceId],
      "one PRODUCER span per message stored, none for the refused publish",
    );
    assert.equal(dedupRun!.parentSpanId, sends[1]!.spanId, "the run continues the message it took");

    const [firstRun, rerun] = runsOf(rerunKey);
    assert.ok(linksTo(firstRun!, original) && !linksTo(firstRun!, during), "the first run links to its own enqueue only");
    assert.ok(linksTo(rerun!, during), "the rerun links to the enqueue that found the key running");
  } finally {
    release();
    stop.abort();
    await worker;
  }
});
