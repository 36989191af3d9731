/**
 * The work queue's OpenTelemetry metrics, read back through an in-memory exporter after real
 * runs on NATS: enqueues by outcome, retries, dead letters, in flight, wait and run times, and
 * the depth gauges the queue service reports.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { metrics } from "@opentelemetry/api";
import { AggregationTemporality, InMemoryMetricExporter, MeterProvider, PeriodicExportingMetricReader, type MetricData } from "@opentelemetry/sdk-metrics";
import { done, nonRetriable, WorkQueue } from "@homeostat/workqueue";
import { exponentialBackoff, type Key, type Logger } from "@homeostat/core";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

// Registered before any queue exists: instruments are bound when the queue is made.
const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 60_000 });
metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));

const quiet: Logger = { info() {}, warn() {}, error() {} };
let t: TestEnv;
before(async () => {
  t = await testEnv();
});
after(async () => t?.cleanup());

function points(all: MetricData[], name: string) {
  return all.filter((m) => m.descriptor.name === name).flatMap((m) => m.dataPoints as { attributes: Record<string, unknown>; value: unknown }[]);
}
const sum = (ps: { value: unknown }[]) => ps.reduce((n, p) => n + (typeof p.value === "number" ? p.value : 0), 0);

test("enqueues, retries, dead letters, in-flight, wait and run times, and depth are reported", { timeout: 60_000 }, async () => {
  const q = new WorkQueue(t.nats, {
    leaseMs: 5_000,
    log: quiet,
    owner: "m",
    maxAttempts: 3,
    backoff: exponentialBackoff(50, 100),
    maxFloorMs: 1_000,
    drainMs: 500,
  });
  q.observeStats();
  const keys: Key[] = ["package/m-ok", "package/m-flaky", "package/m-bad"];
  for (const key of keys) await q.enqueue({ key, priority: "release", cause: { type: "manual" } });
  assert.equal(await q.enqueue({ key: "package/m-ok", priority: "resync", cause: { type: "manual" } }), "deduped");

  let flaky = 0;
  const runs: Key[] = [];
  const ac = new AbortController();
  const running = q.run({
    concurrency: 2,
    signal: ac.signal,
    reconcile: async (item) => {
      runs.push(item.key);
      if (item.key === "package/m-bad") return nonRetriable("no recipe");
      if (item.key === "package/m-flaky" && flaky++ === 0) throw new Error("once");
      return done;
    },
  });
  await waitFor("all runs", async () => runs.length === 4, 20_000);
  await waitFor("the queue to settle", async () => (await q.stats()).running === 0, 10_000);
  ac.abort();
  await running;

  await reader.forceFlush();
  const all = exporter.getMetrics().flatMap((r) => r.scopeMetrics.flatMap((s) => s.metrics));
  const enq = points(all, "homeostat.queue.enqueued");
  assert.equal(sum(enq.filter((p) => p.attributes.outcome === "added")), 3);
  assert.equal(sum(enq.filter((p) => p.attributes.outcome === "deduped")), 1);
  assert.equal(sum(points(all, "homeostat.queue.retries")), 1);
  assert.equal(sum(points(all, "homeostat.queue.dead_lettered")), 1);
  assert.equal(sum(points(all, "homeostat.queue.in_flight")), 0, "every run that started ended");
  const processed = points(all, "homeostat.queue.process") as unknown as { value: { count: number } }[];
  assert.equal(
    processed.reduce((n, p) => n + p.value.count, 0),
    4,
  );
  const waits = points(all, "homeostat.queue.wait") as unknown as { value: { count: number } }[];
  assert.equal(
    waits.reduce((n, p) => n + p.value.count, 0),
    4,
  );
  const depth = points(all, "homeostat.queue.depth");
  assert.deepEqual(depth.map((p) => p.attributes.priority).sort(), ["advisory", "dependency", "release", "repair", "resync"]);
  const keyStates = points(all, "homeostat.queue.keys");
  assert.equal(keyStates.find((p) => p.attributes.state === "dead")?.value, 1);
});
