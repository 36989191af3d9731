/**
 * Trace ids exist whether or not they are exported: with no OTLP endpoint a span is still
 * sampled and carries a real trace id, which travels in the message headers.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { contextFromHeaders, currentTraceId, inSpan, startTelemetry, traceHeaders } from "./telemetry.ts";

test("without an OTLP endpoint, spans still have a real trace id, carried across a message", async () => {
  assert.equal(currentTraceId(), undefined, "outside a span there is no trace id");
  const telemetry = startTelemetry("telemetry-test", { serviceName: undefined, resourceAttributes: {}, traces: undefined, metrics: undefined, metricExportIntervalMs: 10_000, spanBatchDelayMs: 500 });
  try {
    const sent = await inSpan("send", {}, async () => ({ id: currentTraceId(), headers: traceHeaders() }));
    assert.match(sent.id ?? "", /^[0-9a-f]{32}$/);
    assert.notEqual(sent.id, "0".repeat(32));
    const received = await inSpan("receive", { parent: contextFromHeaders(sent.headers) }, async () => currentTraceId());
    assert.equal(received, sent.id, "the receiver's span joins the sender's trace");
  } finally {
    await telemetry.shutdown();
  }
});
