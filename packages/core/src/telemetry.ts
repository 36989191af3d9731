/**
 * Telemetry: OpenTelemetry set-up for a service, and W3C trace context carried in NATS
 * message headers, so that one rebuild is one trace across all five processes.
 *
 * Spans and metrics go over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (the collector;
 * OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf by default, http/json or grpc), each process
 * identified by the standard resource: service.name (OTEL_SERVICE_NAME, default the service's
 * own name) in service.namespace homeostat, service.version from its package.json, a
 * service.instance.id unique to the process (replicas never merge), host, OS and process
 * attributes, and OTEL_RESOURCE_ATTRIBUTES (Kubernetes manifests pass the pod's names there).
 * Without an endpoint every span is still real and sampled, only not exported: a key's status
 * records a trace id either way.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import {
  context,
  isSpanContextValid,
  ROOT_CONTEXT,
  metrics,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Context,
  type Link,
  type Meter,
  type Span,
} from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { AlwaysOnSampler, BatchSpanProcessor, NoopSpanProcessor, type SpanExporter } from "@opentelemetry/sdk-trace";
import { OTLPTraceExporter as HttpJsonTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtobufTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as GrpcTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPMetricExporter as HttpJsonMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { OTLPMetricExporter as ProtobufMetricExporter } from "@opentelemetry/exporter-metrics-otlp-proto";
import { OTLPMetricExporter as GrpcMetricExporter } from "@opentelemetry/exporter-metrics-otlp-grpc";
import { PeriodicExportingMetricReader, type PushMetricExporter } from "@opentelemetry/sdk-metrics";
import { detectResources, hostDetector, osDetector, processDetector, resourceFromAttributes, type Resource } from "@opentelemetry/resources";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from "@opentelemetry/semantic-conventions";
import {
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
  ATTR_SERVICE_INSTANCE_ID,
  ATTR_SERVICE_NAMESPACE,
} from "@opentelemetry/semantic-conventions/incubating";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import type { OtlpTarget, TelemetrySettings } from "./config.ts";

export type Telemetry = { resource: Resource; shutdown(): Promise<void> };

/** service.namespace of every Homeostat service: dashboards select the factory by it. */
export const serviceNamespace = "homeostat";

/**
 * The resource that names this process: defaults, then detected host/OS/process attributes,
 * then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME (the specification's precedence).
 */
export function serviceResource(
  serviceName: string,
  settings: Pick<TelemetrySettings, "serviceName" | "resourceAttributes">,
  version = mainPackageVersion(),
): Resource {
  const own = resourceFromAttributes({
    [ATTR_SERVICE_NAME]: serviceName,
    [ATTR_SERVICE_NAMESPACE]: serviceNamespace,
    [ATTR_SERVICE_INSTANCE_ID]: randomUUID(),
    ...(version ? { [ATTR_SERVICE_VERSION]: version } : {}),
  });
  return detectResources({ detectors: [hostDetector, osDetector, processDetector] })
    .merge(own)
    .merge(resourceFromAttributes(settings.resourceAttributes))
    .merge(settings.serviceName ? resourceFromAttributes({ [ATTR_SERVICE_NAME]: settings.serviceName }) : null);
}

/** The version in the package.json nearest the main script (services/<name>/package.json for a service). */
export function mainPackageVersion(script = process.argv[1]): string | undefined {
  if (!script) return undefined;
  for (let dir = path.dirname(path.resolve(script)); ; dir = path.dirname(dir)) {
    try {
      const version = (JSON.parse(readFileSync(path.join(dir, "package.json"), "utf8")) as { version?: unknown }).version;
      return typeof version === "string" ? version : undefined;
    } catch {
      if (path.dirname(dir) === dir) return undefined;
    }
  }
}

function traceExporter(target: NonNullable<OtlpTarget>): SpanExporter {
  if (target.protocol === "grpc") return new GrpcTraceExporter({ url: target.url });
  return target.protocol === "http/json" ? new HttpJsonTraceExporter({ url: target.url }) : new ProtobufTraceExporter({ url: target.url });
}

function metricExporter(target: NonNullable<OtlpTarget>): PushMetricExporter {
  if (target.protocol === "grpc") return new GrpcMetricExporter({ url: target.url });
  return target.protocol === "http/json" ? new HttpJsonMetricExporter({ url: target.url }) : new ProtobufMetricExporter({ url: target.url });
}

export function startTelemetry(serviceName: string, settings: TelemetrySettings): Telemetry {
  const resource = serviceResource(serviceName, settings);
  const spanProcessors = settings.traces
    ? [new BatchSpanProcessor({ exporter: traceExporter(settings.traces), scheduledDelayMillis: settings.spanBatchDelayMs })]
    : // The SDK installs a tracer provider only when it has a span processor: without one every
      // span would be a non-recording one with the all-zero trace id.
      [new NoopSpanProcessor()];
  const metricReaders = settings.metrics
    ? [
        new PeriodicExportingMetricReader({
          exporter: metricExporter(settings.metrics),
          exportIntervalMillis: settings.metricExportIntervalMs,
          exportTimeoutMillis: Math.min(30_000, settings.metricExportIntervalMs),
        }),
      ]
    : [];
  const sdk = new NodeSDK({
    resource,
    spanProcessors,
    sampler: new AlwaysOnSampler(),
    metricReaders,
    instrumentations: [],
    textMapPropagator: new W3CTraceContextPropagator(),
    autoDetectResources: false,
  });
  sdk.start();
  return { resource, shutdown: () => sdk.shutdown() };
}

export const tracer = () => trace.getTracer("homeostat");

/** The meter services count with (exported over OTLP with the traces). */
export const meter = (): Meter => metrics.getMeter("homeostat");

/**
 * Bucket bounds, in seconds, of every duration histogram: from a cached answer (5 ms) to a long
 * build (30 min); the SDK's default bounds (0 to 10,000) would put every build in a few buckets.
 */
export const durationBucketsS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800];

/** A histogram of durations in seconds (unit `s`, OpenTelemetry's convention), with `durationBucketsS`. */
export function durationHistogram(m: Meter, name: string, description: string) {
  return m.createHistogram(name, { unit: "s", description, advice: { explicitBucketBoundaries: durationBucketsS } });
}

/** Seconds since `startedMs` (a Date.now()), for a duration histogram. */
export const secondsSince = (startedMs: number): number => (Date.now() - startedMs) / 1000;

/** Marks `span` failed: status ERROR with the reason, and the exception recorded as an event. */
export function markFailed(span: Span, err: unknown): void {
  const error = err instanceof Error ? err : new Error(String(err));
  span.recordException(error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
  span.setAttribute("error.type", error.constructor.name);
}

/** Sets `attributes` on the active span, if there is one (what a handler learns as it goes: a cache hit, an output digest). */
export function annotateActiveSpan(attributes: Attributes): void {
  trace.getActiveSpan()?.setAttributes(attributes);
}

/**
 * The attributes traces are searched by, from a message body that has them: its key, version
 * and input digest (every stage's request names its key; builds and signatures their inputs).
 */
export function searchAttributes(body: unknown): Attributes {
  if (typeof body !== "object" || body === null) return {};
  const b = body as Record<string, unknown>;
  const pick = (field: string, attribute: string): Attributes => (typeof b[field] === "string" ? { [attribute]: b[field] } : {});
  return { ...pick("key", "homeostat.key"), ...pick("version", "homeostat.version"), ...pick("inputDigest", "homeostat.input_digest") };
}

/** The semantic-convention attributes of a NATS message span. */
export function messagingAttributes(subject: string, operation: "send" | "process" | "receive", extra: Attributes = {}): Attributes {
  return { [ATTR_MESSAGING_SYSTEM]: "nats", [ATTR_MESSAGING_DESTINATION_NAME]: subject, [ATTR_MESSAGING_OPERATION_TYPE]: operation, ...extra };
}

/**
 * Publishes inside a PRODUCER span named `send <destination>` (a template: never a key or a
 * raw subject, which would make names unbounded): `publish` receives the headers carrying that
 * span's context, so the consumer's span is its child.
 */
export async function producerSpan<T>(
  destination: string,
  subject: string,
  o: { key?: string; msgId?: string },
  publish: (headers: MsgHdrs) => Promise<T>,
): Promise<T> {
  const attributes = messagingAttributes(subject, "send", {
    ...(o.msgId ? { [ATTR_MESSAGING_MESSAGE_ID]: o.msgId } : {}),
    ...(o.key ? { "homeostat.key": o.key } : {}),
  });
  return inSpan(`send ${destination}`, { kind: SpanKind.PRODUCER, attributes }, () => publish(traceHeaders()));
}

/** Headers for an outgoing message, carrying the active trace context (traceparent). */
export function traceHeaders(ctx: Context = context.active()): MsgHdrs {
  const h = natsHeaders();
  propagation.inject(ctx, h, { set: (carrier, k, v) => carrier.set(k, v) });
  return h;
}

/** The trace context a message arrived with. */
export function contextFromHeaders(h: MsgHdrs | undefined): Context {
  if (!h) return context.active();
  return propagation.extract(context.active(), h, {
    get: (carrier, k) => carrier.get(k) || undefined,
    keys: (carrier) => carrier.keys(),
  });
}

/** The trace context an incoming HTTP request carries (traceparent, tracestate); none: a new root. */
export function contextFromHttpHeaders(h: Record<string, string | string[] | undefined>): Context {
  return propagation.extract(ROOT_CONTEXT, h, {
    get: (carrier, k) => {
      const v = carrier[k];
      return Array.isArray(v) ? v[0] : v;
    },
    keys: (carrier) => Object.keys(carrier),
  });
}

/** The trace context encoded in a stored traceparent string (e.g. kept in a key's status). */
export function contextFromTraceparent(traceparent: string | undefined): Context | undefined {
  if (!traceparent) return undefined;
  return propagation.extract(context.active(), { traceparent }, { get: (c, k) => c[k as "traceparent"], keys: (c) => Object.keys(c) });
}

/** Links to the span contexts that `traceparents` encode (the invalid ones left out), each with `attributes`. */
export function linksToTraceparents(traceparents: readonly string[], attributes: Attributes = {}): Link[] {
  return traceparents.flatMap((traceparent) => {
    const ctx = trace.getSpanContext(w3c.extract(ROOT_CONTEXT, { traceparent }, traceparentGetter));
    return ctx && isSpanContextValid(ctx) ? [{ context: ctx, attributes }] : [];
  });
}

// The W3C format itself, not the global propagator: a stored traceparent parses the same whatever is installed.
const w3c = new W3CTraceContextPropagator();
const traceparentGetter = { get: (c: { traceparent: string }, k: string) => (k === "traceparent" ? c.traceparent : undefined), keys: () => ["traceparent"] };

export function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

/** `parent` with `span` as its active span (for code that cannot run inside `inSpan`). */
export const withSpan = (parent: Context, span: Span): Context => trace.setSpan(parent, span);

/** The active span's trace id; undefined outside a span (never the all-zero id of a non-recording one). */
export function currentTraceId(): string | undefined {
  const ctx = trace.getActiveSpan()?.spanContext();
  return ctx && isSpanContextValid(ctx) ? ctx.traceId : undefined;
}

/**
 * Runs `fn` in a span that is a child of `parent` (a message's context), with optional links
 * (e.g. to deduplicated events), recording exceptions and ending the span however fn ends.
 */
export async function inSpan<T>(
  name: string,
  opts: { parent?: Context; kind?: SpanKind; attributes?: Attributes; links?: Link[] },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = opts.parent ?? context.active();
  return tracer().startActiveSpan(name, { kind: opts.kind ?? SpanKind.INTERNAL, attributes: opts.attributes, links: opts.links }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      markFailed(span, err);
      throw err;
    } finally {
      span.end();
    }
  });
}

export { SpanKind, SpanStatusCode, context };
export type { Counter, Histogram } from "@opentelemetry/api";
