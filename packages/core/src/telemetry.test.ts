/**
 * Trace ids exist whether or not they are exported: with no OTLP endpoint a span is still
 * sampled and carries a real trace id, which travels in the message headers.
 */
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import assert from "node:assert/strict";
import { ROOT_CONTEXT, SpanKind, trace, TraceFlags } from "@opentelemetry/api";
import { SamplingDecision } from "@opentelemetry/sdk-trace";
import { loadConfig } from "./config.ts";
import {
  context,
  contextFromHeaders,
  contextFromTraceparent,
  currentTraceId,
  currentTraceparent,
  inSpan,
  mainPackageVersion,
  redactedUrl,
  serviceResource,
  recordedUnder,
  startTelemetry,
  traceHeaders,
  keptAtRoot,
  linksToTraceparents,
  traceSampler,
} from "./telemetry.ts";

test("a stored traceparent gives its remote span context; one that encodes none gives no link and leaves the context as it was", () => {
  const traceId = "0af7651916cd43dd8448eb211c80319c";
  const spanId = "b7ad6b7169203331";
  const encodesNone = [
    `00-${"0".repeat(32)}-${spanId}-01`,
    `00-${traceId}-${"0".repeat(16)}-01`,
    `ff-${traceId}-${spanId}-01`,
    `00-${traceId}-${spanId}-01-extra`,
    `00-${traceId.toUpperCase()}-${spanId}-01`,
    "garbage",
  ];
  const links = linksToTraceparents([`00-${traceId}-${spanId}-01`, ...encodesNone, `01-${traceId}-${spanId}-00-future`], { "homeostat.link": "enqueue" });
  assert.deepEqual(
    links.map((l) => l.context),
    [
      { traceId, spanId, traceFlags: TraceFlags.SAMPLED, isRemote: true },
      { traceId, spanId, traceFlags: TraceFlags.NONE, isRemote: true },
    ],
  );
  assert.deepEqual(links[0]?.attributes, { "homeostat.link": "enqueue" });
  assert.deepEqual(trace.getSpanContext(contextFromTraceparent(`00-${traceId}-${spanId}-01`)!), { traceId, spanId, traceFlags: 1, isRemote: true });
  for (const none of encodesNone) assert.equal(trace.getSpanContext(contextFromTraceparent(none)!), undefined, none);
  assert.equal(contextFromTraceparent(undefined), undefined);
});

test("without an OTLP endpoint, spans still have a real trace id, carried across a message", async () => {
  assert.equal(currentTraceId(), undefined, "outside a span there is no trace id");
  const telemetry = startTelemetry("telemetry-test", {
    serviceName: undefined,
    resourceAttributes: {},
    traces: undefined,
    metrics: undefined,
    metricExportIntervalMs: 10_000,
    spanBatchDelayMs: 500,
    sampler: { name: "always_on", ratio: 1 },
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
    // always_on records a run whatever its parent said: a queued message of a trace a caller
    // sampled out still gets its links (merge.ts asks this before rewriting it).
    assert.equal(recordedUnder(`00-${"1".repeat(32)}-${"2".repeat(16)}-00`), true);
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
  assert.deepEqual(settings.traces, { url: "http://collector:4318/v1/traces", protocol: "http/json" });
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

test("OTEL_TRACES_SAMPLER and its ratio choose which traces are kept; a wrong name or ratio is a configuration error", () => {
  const env = { OTEL_TRACES_SAMPLER_ARG: "" };
  assert.deepEqual(loadConfig(env).telemetry.sampler, { name: "always_on", ratio: 1 }, "default (a blank ratio is unset): every trace");
  const tenth = loadConfig({ ...env, OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" }).telemetry.sampler;
  assert.deepEqual(tenth, { name: "parentbased_traceidratio", ratio: 0.1 });
  assert.throws(() => loadConfig({ ...env, OTEL_TRACES_SAMPLER: "sometimes" }), /OTEL_TRACES_SAMPLER/);
  assert.throws(() => loadConfig({ ...env, OTEL_TRACES_SAMPLER_ARG: "1.5" }), /OTEL_TRACES_SAMPLER_ARG/);

  const keptOf = (sampler: ReturnType<typeof traceSampler>, parent = ROOT_CONTEXT) => {
    let kept = 0;
    for (let i = 0; i < 2_000; i++) {
      const traceId = randomBytes(16).toString("hex");
      if (sampler.shouldSample(parent, traceId, "span", SpanKind.INTERNAL, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED) kept++;
    }
    return kept;
  };
  const kept = keptOf(traceSampler(tenth));
  assert.ok(kept > 100 && kept < 320, `about a tenth of 2,000 root traces kept (${kept})`);
  assert.equal(keptOf(traceSampler({ name: "always_off", ratio: 1 })), 0);
  const sampledParent = trace.setSpanContext(ROOT_CONTEXT, { traceId: "1".repeat(32), spanId: "2".repeat(16), traceFlags: TraceFlags.SAMPLED, isRemote: true });
  assert.equal(keptOf(traceSampler(tenth), sampledParent), 2_000, "parent-based: a sampled parent's trace is always kept");
  assert.equal(keptOf(traceSampler({ name: "always_on", ratio: 1 })), 2_000);
  const keeps = keptAtRoot(tenth);
  const ids = Array.from({ length: 200 }, () => randomBytes(16).toString("hex"));
  assert.deepEqual(
    ids.map(keeps),
    ids.map((id) => traceSampler(tenth).shouldSample(ROOT_CONTEXT, id, "x", SpanKind.INTERNAL, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED),
    "keptAtRoot is the sampler's decision at a root",
  );
});
