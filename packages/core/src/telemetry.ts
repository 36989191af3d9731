/**
 * Telemetry: OpenTelemetry set-up for a service, and W3C trace context carried in NATS
 * message headers, so that one rebuild is one trace across all five processes.
 *
 * Spans and metrics (the work queue's depth, enqueues, retries, dead letters, wait and run
 * times) are exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (the compose
 * file's collector). Without it every span is still real and sampled, only not exported: a
 * key's status records a trace id either way, so the id the CLI prints can later be found in
 * an exporter's logs or matched across services' logs.
 */
import { context, isSpanContextValid, metrics, propagation, trace, SpanKind, SpanStatusCode, type Context, type Link, type Span } from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";
import { AlwaysOnSampler, BatchSpanProcessor, NoopSpanProcessor } from "@opentelemetry/sdk-trace";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { PeriodicExportingMetricReader } from "@opentelemetry/sdk-metrics";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { headers as natsHeaders, type MsgHdrs } from "@nats-io/transport-node";
import type { Config } from "./config.ts";

export type Telemetry = { shutdown(): Promise<void> };

export function startTelemetry(serviceName: string, config: Pick<Config, "otlpEndpoint">): Telemetry {
  const spanProcessors = config.otlpEndpoint
    ? [
        new BatchSpanProcessor({
          exporter: new OTLPTraceExporter({ url: `${config.otlpEndpoint.replace(/\/$/, "")}/v1/traces` }),
          scheduledDelayMillis: 500,
        }),
      ]
    : // The SDK installs a tracer provider only when it has a span processor: without one every
      // span would be a non-recording one with the all-zero trace id.
      [new NoopSpanProcessor()];
  const metricReaders = config.otlpEndpoint
    ? [
        new PeriodicExportingMetricReader({
          exporter: new OTLPMetricExporter({ url: `${config.otlpEndpoint.replace(/\/$/, "")}/v1/metrics` }),
          exportIntervalMillis: 10_000,
        }),
      ]
    : [];
  const sdk = new NodeSDK({
    serviceName,
    spanProcessors,
    sampler: new AlwaysOnSampler(),
    metricReaders,
    instrumentations: [],
    textMapPropagator: new W3CTraceContextPropagator(),
    autoDetectResources: false,
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}

export const tracer = () => trace.getTracer("homeostat");

/** The meter services count with (exported over OTLP with the traces). */
export const meter = () => metrics.getMeter("homeostat");

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

/** The trace context encoded in a stored traceparent string (e.g. kept in a key's status). */
export function contextFromTraceparent(traceparent: string | undefined): Context | undefined {
  if (!traceparent) return undefined;
  return propagation.extract(context.active(), { traceparent }, { get: (c, k) => c[k as "traceparent"], keys: (c) => Object.keys(c) });
}

export function currentTraceparent(): string | undefined {
  const carrier: Record<string, string> = {};
  propagation.inject(context.active(), carrier);
  return carrier.traceparent;
}

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
  opts: { parent?: Context; kind?: SpanKind; attributes?: Record<string, string | number | boolean>; links?: Link[] },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = opts.parent ?? context.active();
  return tracer().startActiveSpan(name, { kind: opts.kind ?? SpanKind.INTERNAL, attributes: opts.attributes, links: opts.links }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (err) {
      span.recordException(err as Error);
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message });
      throw err;
    } finally {
      span.end();
    }
  });
}

export { SpanKind, context };
