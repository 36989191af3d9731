/**
 * A PRODUCER span is made once its publish is answered, under the ids its message was sent with:
 * a publish the server refuses (an enqueue of a key already queued, the common case) makes no span
 * at all, while a stored or failed one is exported as before, covering the publish, the parent of
 * whatever consumes the message. Its own process: the SDK registers itself globally once.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ROOT_CONTEXT, trace } from "@opentelemetry/api";
import { context, inSpan, producerSpan, propagatedTraceparent, startTelemetry, type Telemetry } from "@homeostat/core/telemetry";
import { waitFor } from "../scripts/factory.ts";
import { SpanKindNumber, startOtlpReceiver, type ReceivedSpan } from "./otlp-receiver.ts";

let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
let telemetry: Telemetry;

before(async () => {
  otlp = await startOtlpReceiver();
  telemetry = startTelemetry("telemetry-producer-test", {
    serviceName: undefined,
    resourceAttributes: {},
    traces: { url: `${otlp.url}/v1/traces`, protocol: "http/protobuf" },
    metrics: undefined,
    metricExportIntervalMs: 60_000,
    spanBatchDelayMs: 50,
    sampler: { name: "always_on", ratio: 1 },
  });
});

after(async () => {
  await telemetry?.shutdown();
  await otlp?.close();
});

/** What a publish saw: the traceparent it sent, whether a span was being recorded then, and when it ran. */
type Seen = { traceparent: string; recording: boolean; fromMs: number; toMs: number };

/** Publishes through `producerSpan` with `answer` as the server's; resolves with what the publish saw. */
async function send(destination: string, answer: "stored" | "refused" | "failed"): Promise<Seen> {
  let seen: Seen | undefined;
  await producerSpan(destination, `test.${destination}.subject`, { key: "package/zlib", sent: (a: string) => a === "stored" }, async (sent) => {
    const fromMs = Date.now();
    const recording = trace.getSpan(sent)?.isRecording() ?? false;
    await new Promise((r) => setTimeout(r, 20)); // the server's answer takes a while
    seen = { traceparent: propagatedTraceparent(sent) ?? "", recording, fromMs, toMs: Date.now() };
    if (answer === "failed") throw new Error("no responders");
    return answer;
  }).catch((err: unknown) => {
    if (answer !== "failed") throw err;
  });
  return seen!;
}

const exported = (spanId: string): ReceivedSpan[] => otlp.spans.filter((s) => s.spanId === spanId);

test("a publish runs before its PRODUCER span exists; a stored one exports it under the ids it sent, a refused one none", async () => {
  const caller = await inSpan("caller", { parent: ROOT_CONTEXT }, async (span) => ({
    ids: span.spanContext(),
    stored: await send("stored", "stored"),
    refused: await send("refused", "refused"),
    failed: await send("failed", "failed"),
  }));
  const root = await context.with(ROOT_CONTEXT, () => send("root", "stored"));
  const ids = (s: Seen) => {
    const [, traceId, spanId, flags] = s.traceparent.split("-");
    return { traceId: traceId!, spanId: spanId!, flags };
  };
  for (const s of [caller.stored, caller.refused, caller.failed, root]) {
    assert.equal(s.recording, false, "no span is made before the server answers (a refusal then costs none)");
    assert.equal(ids(s).flags, "01", "the message says sampled, as the span will be");
  }
  for (const s of [caller.stored, caller.refused, caller.failed]) assert.equal(ids(s).traceId, caller.ids.traceId, "in the caller's trace");

  await waitFor("the spans exported", async () => (exported(ids(caller.stored).spanId).length && exported(ids(root).spanId).length) || undefined, 10_000, 50);
  await telemetry.shutdown(); // flushes what is left: a refused publish's span would be among it

  const [stored] = exported(ids(caller.stored).spanId);
  assert.ok(stored, "the stored publish's span has the span id its message carried");
  assert.equal(stored.traceId, caller.ids.traceId);
  assert.equal(stored.parentSpanId, caller.ids.spanId, "a child of the caller's span");
  assert.deepEqual([stored.kind, stored.name, stored.status], [SpanKindNumber.producer, "send stored", 0]);
  assert.equal(stored.attributes["homeostat.key"], "package/zlib");
  assert.equal(stored.attributes["messaging.destination.name"], "test.stored.subject");
  assert.equal(stored.attributes["messaging.operation.type"], "send");
  // Whole milliseconds on the test's side: allow for their rounding.
  assert.ok(stored.startMs <= caller.stored.fromMs + 1 && stored.endMs >= caller.stored.toMs - 1, "the span covers the publish");

  assert.deepEqual(exported(ids(caller.refused).spanId), [], "a refused publish exports no span");
  assert.equal(otlp.spans.filter((s) => s.name === "send refused").length, 0);

  const [failed] = exported(ids(caller.failed).spanId);
  assert.ok(failed, "a failed publish's span is exported under the ids it sent");
  assert.equal(failed.status, 2, "ERROR");
  assert.deepEqual(failed.events, ["exception"]);
  assert.equal(failed.attributes["homeostat.key"], "package/zlib");

  const [rootSpan] = exported(ids(root).spanId);
  assert.ok(rootSpan, "a publish with no caller starts its own trace");
  assert.equal(rootSpan.traceId, ids(root).traceId);
  assert.equal(rootSpan.parentSpanId, undefined);
});
