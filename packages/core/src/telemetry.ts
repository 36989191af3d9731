/**
 * Telemetry: OpenTelemetry set-up for a service, and W3C trace context carried in NATS
 * message headers, so that one rebuild is one trace across all five processes.
 *
 * Spans and metrics go over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT (the collector;
 * OTEL_EXPORTER_OTLP_PROTOCOL http/json by default (config.ts says why), http/protobuf or grpc), each process
 * identified by the standard resource: service.name (OTEL_SERVICE_NAME, default the service's
 * own name) in service.namespace homeostat, service.version from its package.json, a
 * service.instance.id unique to the process (replicas never merge), host, OS and process
 * attributes, the container id when it runs in one, and OTEL_RESOURCE_ATTRIBUTES (Kubernetes
 * manifests pass the pod's names there). NATS spans are made here by hand (no official NATS
 * instrumentation exists); Redis commands (ioredis) and HTTP client calls (fetch, i.e. undici) are
 * CLIENT spans from the official instrumentations, made only inside a span that is already there.
 * Without an endpoint every span is still real and sampled, only not exported: a key's status
 * records a trace id either way.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import {
  context,
  INVALID_SPANID,
  isSpanContextValid,
  ROOT_CONTEXT,
  metrics,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  TraceFlags,
  type Attributes,
  type Context,
  type Link,
  type Meter,
  type Span,
  type SpanContext,
} from "@opentelemetry/api";
import { NodeSDK } from "@opentelemetry/sdk-node";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  NoopSpanProcessor,
  ParentBasedSampler,
  RandomIdGenerator,
  SamplingDecision,
  TraceIdRatioBasedSampler,
  type IdGenerator,
  type Sampler,
  type SpanExporter,
} from "@opentelemetry/sdk-trace";
import { OTLPTraceExporter as HttpJsonTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtobufTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { OTLPTraceExporter as GrpcTraceExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPMetricExporter as HttpJsonMetricExporter } from "@opentelemetry/exporter-metrics-otlp-http";
import { OTLPMetricExporter as ProtobufMetricExporter } from "@opentelemetry/exporter-metrics-otlp-proto";
import { OTLPMetricExporter as GrpcMetricExporter } from "@opentelemetry/exporter-metrics-otlp-grpc";
import { PeriodicExportingMetricReader, type PushMetricExporter } from "@opentelemetry/sdk-metrics";
import { detectResources, hostDetector, osDetector, processDetector, resourceFromAttributes, type Resource } from "@opentelemetry/resources";
import { containerDetector } from "@opentelemetry/resource-detector-container";
import { IORedisInstrumentation } from "@opentelemetry/instrumentation-ioredis";
import { UndiciInstrumentation } from "@opentelemetry/instrumentation-undici";
import { isTracingSuppressed, parseTraceParent, W3CTraceContextPropagator } from "@opentelemetry/core";
import { ATTR_URL_FULL, ATTR_URL_QUERY } from "@opentelemetry/semantic-conventions";
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
  return detectResources({ detectors: [hostDetector, osDetector, processDetector, containerDetector] })
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

/**
 * `url` with the value of every query parameter replaced by REDACTED (a source or registry URL may
 * carry a token there); the parameter names stay, for reading the trace. Credentials never reach
 * it: fetch refuses a URL with a user or password.
 */
export function redactedUrl(url: URL): URL {
  const redacted = new URL(url);
  for (const name of new Set(redacted.searchParams.keys())) redacted.searchParams.set(name, "REDACTED");
  return redacted;
}

/**
 * The official instrumentations. Both make spans only under one that is already there (a message
 * being processed, a request being served): the read model's background writes and the pollers'
 * fetches would otherwise be a root trace each.
 */
function clientInstrumentations() {
  return [
    new IORedisInstrumentation({ requireParentSpan: true }),
    new UndiciInstrumentation({
      requireParentforSpans: true,
      requestHook: (span, request) => {
        const url = redactedUrl(new URL(request.path, request.origin));
        span.setAttributes({ [ATTR_URL_FULL]: url.href, [ATTR_URL_QUERY]: url.search });
      },
    }),
  ];
}

/**
 * Hands the libraries an instrumentation patches (ioredis) to its require hook. The hook sees a
 * CommonJS module only when it is required after the SDK has started, but a service imports its
 * libraries (ESM static imports, evaluated before any code runs) before runService starts
 * telemetry, and an ESM import never goes through require: so each one the main script can
 * resolve (a dependency of that service) is required once more here, which returns the loaded
 * module to the hook, and the hook patches its prototype for every client already made or to come.
 */
function patchLoadedModules(instrumentations: ReturnType<typeof clientInstrumentations>, script = process.argv[1]): void {
  if (!script) return;
  const requireFromMain = createRequire(path.resolve(script));
  for (const definition of instrumentations.flatMap((i) => i.getModuleDefinitions())) {
    try {
      requireFromMain(definition.name);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "MODULE_NOT_FOUND") throw err;
    }
  }
}

/**
 * Whether the configured sampler never records a child of an unsampled span (the parent-based
 * samplers, and always_off). A hot path may then skip making such a child and pass its parent's
 * context on: nothing of that trace is exported, and its children decide as they would have.
 */
let unsampledParentsDecide = false;

/** The span context of `parent` when a span started in it would surely not be recorded (see `unsampledParentsDecide`). */
function sampledOutParent(parent: Context): SpanContext | undefined {
  const sc = trace.getSpanContext(parent);
  return unsampledParentsDecide && sc && sc.spanId !== INVALID_SPANID && (sc.traceFlags & TraceFlags.SAMPLED) === 0 ? sc : undefined;
}

/**
 * The ids the next span started gets, when set (`producerSpan`: a span made after its publish,
 * under the ids the message already carries); random otherwise. Each preset id is used once:
 * set just before a synchronous startSpan, so no other span can take it.
 */
class PresetIds implements IdGenerator {
  next: { traceId?: string; spanId?: string } = {};
  private readonly random = new RandomIdGenerator();
  generateTraceId(): string {
    const id = this.next.traceId ?? this.random.generateTraceId();
    this.next.traceId = undefined;
    return id;
  }
  generateSpanId(): string {
    const id = this.next.spanId ?? this.random.generateSpanId();
    this.next.spanId = undefined;
    return id;
  }
}

/** Every tracer provider's ids: the API keeps the first provider a process registers, whichever start made it. */
const presetIds = new PresetIds();

/**
 * The sampler of the tracer provider this process registered (the API keeps the first; a later
 * start's provider is refused), for `producerSpan`'s decision before its span is made; none
 * without the SDK.
 */
let registeredSampler: Sampler | undefined;

export function startTelemetry(serviceName: string, settings: TelemetrySettings): Telemetry {
  unsampledParentsDecide = settings.sampler.name.startsWith("parentbased_") || settings.sampler.name === "always_off";
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
  const instrumentations = clientInstrumentations();
  const sampler = traceSampler(settings.sampler);
  const sdk = new NodeSDK({
    resource,
    spanProcessors,
    sampler,
    idGenerator: presetIds,
    metricReaders,
    instrumentations,
    textMapPropagator: new W3CTraceContextPropagator(),
    autoDetectResources: false,
  });
  sdk.start();
  registeredSampler ??= sampler;
  patchLoadedModules(instrumentations);
  return { resource, shutdown: () => sdk.shutdown() };
}

/** The sampler OTEL_TRACES_SAMPLER names: its root decision, behind the parent's when `parentbased_*`. */
export function traceSampler({ name, ratio }: TelemetrySettings["sampler"]): Sampler {
  const kind = name.replace(/^parentbased_/, "");
  const root = kind === "always_off" ? new AlwaysOffSampler() : kind === "traceidratio" ? new TraceIdRatioBasedSampler(ratio) : new AlwaysOnSampler();
  return name.startsWith("parentbased_") ? new ParentBasedSampler({ root }) : root;
}

/** Whether the sampler OTEL_TRACES_SAMPLER names keeps a trace begun at its root (no parent): a traced caller's decision. */
export function keptAtRoot(settings: TelemetrySettings["sampler"]): (traceId: string) => boolean {
  const sampler = traceSampler(settings);
  return (traceId) => sampler.shouldSample(ROOT_CONTEXT, traceId, "root", SpanKind.INTERNAL, {}, []).decision === SamplingDecision.RECORD_AND_SAMPLED;
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
 * raw subject, which would make names unbounded): `publish` receives that span's context, to
 * send along (`traceHeaders`, or `propagatedTraceparent` in the body), so that the consumer's span
 * is its child. `o.sent`, given, tells from the answer whether a message was stored; when it was
 * not (a refusal the caller expects), there is no span: a dedup that tries a publish first would
 * otherwise make one empty span per enqueue.
 *
 * The span is made once the answer is in, under the ids and sampling decision the message was
 * sent with, from the time the publish began: a refused publish, the common answer to an enqueue
 * of a queued key, then costs an id and a sampling decision instead of a whole span (its start,
 * attributes, end and discard were a large part of what tracing every trace cost the work queue;
 * bench:telemetry).
 */
export async function producerSpan<T>(
  destination: string,
  subject: string,
  o: { key?: string; msgId?: string; sent?: (answer: T) => boolean },
  publish: (sent: Context) => Promise<T>,
): Promise<T> {
  // A publish is the hottest path there is (every enqueue of a storm): in a trace sampled out no
  // span is made at all, and otherwise it is not made the active span (only the message carries it).
  const active = context.active();
  if (sampledOutParent(active)) return publish(active);
  const name = `send ${destination}`;
  const sampler = registeredSampler;
  // Without the SDK (or with tracing suppressed) the API's own non-recording span stands in: it
  // records nothing, so there is nothing to set, end or leave out.
  if (!sampler || isTracingSuppressed(active)) return publish(trace.setSpan(active, tracer().startSpan(name, { kind: SpanKind.PRODUCER }, active)));
  // What the SDK's tracer decides for a span: the parent's trace (or a new one), a new span id,
  // and the configured sampler's decision, which depends on nothing known only later.
  const parent = trace.getSpanContext(active);
  const inParent = parent !== undefined && isSpanContextValid(parent);
  const traceId = inParent ? parent.traceId : presetIds.generateTraceId();
  const spanId = presetIds.generateSpanId();
  const decision = sampler.shouldSample(active, traceId, name, SpanKind.PRODUCER, {}, []);
  const traceState = decision.traceState ?? (inParent ? parent.traceState : undefined);
  const traceFlags = decision.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE;
  const sent = trace.setSpan(active, trace.wrapSpanContext({ traceId, spanId, traceFlags, ...(traceState ? { traceState } : {}) }));
  if (decision.decision === SamplingDecision.NOT_RECORD) return publish(sent);
  const startTime = performance.now();
  const made = (): Span => {
    presetIds.next = { traceId: inParent ? undefined : traceId, spanId };
    let span: Span;
    try {
      span = tracer().startSpan(name, { kind: SpanKind.PRODUCER, startTime }, active);
    } finally {
      presetIds.next = {};
    }
    if (span.isRecording()) span.setAttributes(producerAttributes(subject, o));
    return span;
  };
  let answer: T;
  try {
    answer = await publish(sent);
  } catch (err) {
    const span = made();
    markFailed(span, err);
    span.end(performance.now());
    throw err;
  }
  if (!o.sent || o.sent(answer)) made().end(performance.now());
  return answer;
}

/** The attributes of a PRODUCER span. */
function producerAttributes(subject: string, o: { key?: string; msgId?: string }): Attributes {
  return messagingAttributes(subject, "send", { ...(o.msgId ? { [ATTR_MESSAGING_MESSAGE_ID]: o.msgId } : {}), ...(o.key ? { "homeostat.key": o.key } : {}) });
}

/** Headers for an outgoing message, carrying the active trace context (traceparent). */
export function traceHeaders(ctx: Context = context.active()): MsgHdrs {
  const h = natsHeaders();
  propagation.inject(ctx, h, { set: (carrier, k, v) => carrier.set(k, v) });
  return h;
}

/**
 * The W3C traceparent of the span in `ctx`, sampled or not (what a propagator sends, for a
 * message that carries its trace context in its body); undefined without a valid span context.
 */
export function propagatedTraceparent(ctx: Context): string | undefined {
  const sc = trace.getSpanContext(ctx);
  // The SDK makes valid ids; only the API's no-op span (no SDK started) has the invalid all-zero one.
  return sc && sc.spanId !== INVALID_SPANID ? `00-${sc.traceId}-${sc.spanId}-0${sc.traceFlags & TraceFlags.SAMPLED}` : undefined;
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

/**
 * The remote span context a W3C traceparent encodes; undefined when it encodes none. The W3C
 * format itself, not the global propagator: a stored traceparent parses the same whatever is
 * installed. Its grammar excludes the all-zero ids, so what it gives is valid without checking
 * the ids' hex again (isSpanContextValid, on a work queue's every run and link, added up).
 */
function remoteSpanContext(traceparent: string): SpanContext | undefined {
  const parsed = parseTraceParent(traceparent);
  return parsed ? { ...parsed, isRemote: true } : undefined;
}

/** The trace context encoded in a stored traceparent string (e.g. kept in a key's status); the active one when it encodes none. */
export function contextFromTraceparent(traceparent: string | undefined): Context | undefined {
  if (!traceparent) return undefined;
  const sc = remoteSpanContext(traceparent);
  return sc ? trace.setSpanContext(context.active(), sc) : context.active();
}

/** Links to the span contexts that `traceparents` encode (the invalid ones left out), each with `attributes`. */
export function linksToTraceparents(traceparents: readonly string[], attributes: Attributes = {}): Link[] {
  return traceparents.flatMap((traceparent) => {
    const sc = remoteSpanContext(traceparent);
    return sc ? [{ context: sc, attributes }] : [];
  });
}

/**
 * Links the active span, when it is recorded, to the span context `traceparent` encodes, with
 * `attributes`: a link learnt after the span began (an enqueue that finds its key queued links to
 * the message whose run will answer it).
 */
export function linkActiveSpan(traceparent: string, attributes: Attributes): void {
  const span = trace.getActiveSpan();
  if (!span?.isRecording()) return;
  const [link] = linksToTraceparents([traceparent], attributes);
  if (link) span.addLink(link);
}

/**
 * Whether a span started under `traceparent` (the run of a message that carries it) would be
 * recorded by this process's sampler, so that a link added to it would reach a backend. A
 * parent-based sampler follows the parent's flag; `always_on` and a plain ratio sampler do not,
 * and are asked. True without the SDK or a valid traceparent: nothing says it would not be.
 */
export function recordedUnder(traceparent: string | undefined): boolean {
  const sampler = registeredSampler;
  if (!sampler || !traceparent) return true;
  // The hot path (every deduplicated enqueue): a parent-based sampler's answer is the flag, and
  // always_on's is yes whatever the parent said; only a plain ratio sampler needs the ids.
  if (unsampledParentsDecide) return (Number.parseInt(traceparent.slice(-2), 16) & TraceFlags.SAMPLED) !== 0;
  if (sampler instanceof AlwaysOnSampler) return true;
  const sc = remoteSpanContext(traceparent);
  if (!sc) return true;
  return sampler.shouldSample(trace.setSpanContext(ROOT_CONTEXT, sc), sc.traceId, "run", SpanKind.CONSUMER, {}, []).decision !== SamplingDecision.NOT_RECORD;
}

/**
 * The active span's W3C traceparent, for a link to it from elsewhere (a run linking the enqueues
 * it answers); undefined outside a span and in one not sampled, whose span no backend receives.
 */
export function currentTraceparent(): string | undefined {
  const ctx = trace.getSpanContext(context.active());
  // The flag first: most traces are sampled out at high rates. Ids are the SDK's or a
  // propagator's, valid hex by construction: only the API's no-op span has the all-zero ones.
  if (!ctx || (ctx.traceFlags & TraceFlags.SAMPLED) === 0 || ctx.spanId === INVALID_SPANID) return undefined;
  return `00-${ctx.traceId}-${ctx.spanId}-0${TraceFlags.SAMPLED}`;
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
 * The attributes are set once the span is known to be recorded: the SDK cleans every attribute
 * it is given at the start, before it samples, which a hot path where most traces are sampled
 * out (a work queue at thousands of runs a second) paid for nothing. Links and attributes may be
 * given as functions, called only for a span that is made (links) or recorded (attributes): a run
 * in a trace sampled out then neither parses the traceparents it would link to nor builds its
 * attributes.
 */
export async function inSpan<T>(
  name: string,
  opts: { parent?: Context; kind?: SpanKind; attributes?: Attributes | (() => Attributes); links?: Link[] | (() => Link[]) },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = opts.parent ?? context.active();
  // In a trace sampled out, the parent's own (non-recording) span stands in for the one not made.
  const sampledOut = sampledOutParent(parent);
  if (sampledOut) return context.with(parent, () => fn(trace.wrapSpanContext(sampledOut)));
  const links = typeof opts.links === "function" ? opts.links() : opts.links;
  return tracer().startActiveSpan(name, { kind: opts.kind ?? SpanKind.INTERNAL, links }, parent, async (span) => {
    if (opts.attributes && span.isRecording()) span.setAttributes(typeof opts.attributes === "function" ? opts.attributes() : opts.attributes);
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
