/**
 * Trace ids exist whether or not they are exported: with no OTLP endpoint a span is still
 * sampled and carries a real trace id, which travels in the message headers.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ROOT_CONTEXT, trace, TraceFlags } from "@opentelemetry/api";
import { loadConfig } from "./config.ts";
import {
  context,
  contextFromHeaders,
  currentTraceId,
  currentTraceparent,
  inSpan,
  mainPackageVersion,
  redactedUrl,
  serviceResource,
  startTelemetry,
  traceHeaders,
} from "./telemetry.ts";

test("without an OTLP endpoint, spans still have a real trace id, carried across a message", async () => {
  assert.equal(currentTraceId(), undefined, "outside a span there is no trace id");
  const telemetry = startTelemetry("telemetry-test", {
    serviceName: undefined,
    resourceAttributes: {},
    traces: undefined,
    metrics: undefined,
    metricExportIntervalMs: 10_000,
    spanBatchDelayMs: 500,
  });
  try {
    const sent = await inSpan("send", {}, async () => ({ id: currentTraceId(), headers: traceHeaders() }));
    assert.match(sent.id ?? "", /^[0-9a-f]{32}$/);
    assert.notEqual(sent.id, "0".repeat(32));
    const received = await inSpan("receive", { parent: contextFromHeaders(sent.headers) }, async () => currentTraceId());
    assert.equal(received, sent.id, "the receiver's span joins the sender's trace");

    // What a run links to: the active span's traceparent, only when it is sampled.
    const linked = await inSpan("enqueue", {}, async (span) => ({ traceparent: currentTraceparent(), ids: span.spanContext() }));
    assert.equal(linked.traceparent, `00-${linked.ids.traceId}-${linked.ids.spanId}-01`);
    assert.equal(currentTraceparent(), undefined, "outside a span, nothing to link to");
    const unsampled = trace.setSpanContext(ROOT_CONTEXT, { traceId: "1".repeat(32), spanId: "2".repeat(16), traceFlags: TraceFlags.NONE, isRemote: true });
    assert.equal(
      context.with(unsampled, () => currentTraceparent()),
      undefined,
      "a caller's trace that is not sampled reaches no backend: no link to it",
    );
  } finally {
    await telemetry.shutdown();
  }
});

test("the resource: the service's name unless OTEL_SERVICE_NAME says otherwise, namespace, version, a fresh instance id, host and OTEL_RESOURCE_ATTRIBUTES", async () => {
  const env = {
    OTEL_RESOURCE_ATTRIBUTES: "k8s.pod.name=builder-7d9f,service.name=from-attributes,team=supply%20chain",
    OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/",
  };
  const settings = loadConfig(env).telemetry;
  assert.deepEqual(settings.traces, { url: "http://collector:4318/v1/traces", protocol: "http/protobuf" });
  assert.deepEqual(loadConfig({ ...env, OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }).telemetry.metrics, { url: "http://collector:4318/", protocol: "grpc" });
  assert.equal(loadConfig({ OTEL_EXPORTER_OTLP_ENDPOINT: "" }).telemetry.traces, undefined, "blank is unset");
  assert.throws(() => loadConfig({ OTEL_RESOURCE_ATTRIBUTES: "novalue" }), /OTEL_RESOURCE_ATTRIBUTES/);

  const a = serviceResource("builder", settings, "1.2.3");
  await a.waitForAsyncAttributes?.();
  assert.equal(a.attributes["service.name"], "from-attributes", "OTEL_RESOURCE_ATTRIBUTES may name the service");
  assert.equal(a.attributes["k8s.pod.name"], "builder-7d9f");
  assert.equal(a.attributes["team"], "supply chain", "values are percent-decoded");
  assert.equal(a.attributes["service.namespace"], "homeostat");
  assert.equal(a.attributes["service.version"], "1.2.3");
  assert.ok(a.attributes["host.name"] && a.attributes["process.pid"]);
  const b = serviceResource("builder", { ...settings, serviceName: "builder-eu" }, "1.2.3");
  assert.equal(b.attributes["service.name"], "builder-eu", "OTEL_SERVICE_NAME wins");
  assert.notEqual(a.attributes["service.instance.id"], b.attributes["service.instance.id"], "one instance id per process");
  assert.equal(
    serviceResource("queue", { serviceName: undefined, resourceAttributes: {} }).attributes["service.name"],
    "queue",
    "default: the service's own name",
  );
  assert.match(
    mainPackageVersion(new URL("./telemetry.ts", import.meta.url).pathname) ?? "",
    /^\d+\.\d+\.\d+$/,
    "the version of the package holding the script",
  );
});

test("a URL recorded on a CLIENT span keeps its query's names and loses every value", () => {
  const url = new URL("https://registry.example:5000/v2/app/blobs/uploads/abc?_state=s3cr3t&digest=sha256%3A12&digest=x#frag");
  const redacted = redactedUrl(url);
  assert.equal(redacted.href, "https://registry.example:5000/v2/app/blobs/uploads/abc?_state=REDACTED&digest=REDACTED#frag");
  assert.equal(url.search, "?_state=s3cr3t&digest=sha256%3A12&digest=x", "the URL itself is left as it was");
  assert.equal(redactedUrl(new URL("http://127.0.0.1/a.tar.gz")).href, "http://127.0.0.1/a.tar.gz", "no query: unchanged");
});
