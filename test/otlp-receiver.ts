/**
 * An OTLP/HTTP receiver for tests: the services export real spans and metrics over the network
 * exactly as they would to the collector, and the test reads them from memory. It decodes both
 * encodings of OTLP/HTTP: protobuf (the default, decoded from the wire format by the field
 * numbers of opentelemetry-proto's trace/metrics/common .proto files) and JSON.
 */
import { createServer, type Server } from "node:http";

export type Attributes = Record<string, string | number | boolean | undefined>;
/** A span link: the span context it points at, and its attributes. */
export type ReceivedLink = { traceId: string; spanId: string; attributes: Attributes };
export type ReceivedSpan = {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  /** SpanKind as OTLP numbers it: 1 internal, 2 server, 3 client, 4 producer, 5 consumer. */
  kind: number;
  /** 0 unset, 1 ok, 2 error. */
  status: number;
  links: ReceivedLink[];
  /** Names of the span's events (an exception is recorded as "exception"). */
  events: string[];
  /** Start and end, in milliseconds since the epoch (OTLP sends nanoseconds). */
  startMs: number;
  endMs: number;
  service: string;
  attributes: Attributes;
  resource: Attributes;
};
/** A metric's data type as OTLP has it: a counter is a monotonic sum, an up-down counter a non-monotonic one. */
export type MetricType = "gauge" | "sum" | "monotonicSum" | "histogram" | "exponentialHistogram" | "summary";
export type ReceivedMetric = { name: string; unit: string; type: MetricType; service: string; resource: Attributes };

export const SpanKindNumber = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const;

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };
type JsonSpan = {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind?: number;
  attributes?: KeyValue[];
  status?: { code?: number };
  links?: { traceId: string; spanId: string; attributes?: KeyValue[] }[];
  events?: { name: string }[];
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
};

const valueOf = (v: AnyValue): string | number | boolean | undefined =>
  v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : undefined) ?? v.boolValue ?? v.doubleValue;
const attrs = (kvs: KeyValue[] | undefined): Attributes => Object.fromEntries((kvs ?? []).map((a) => [a.key, valueOf(a.value)]));

// --- protobuf wire format: just enough to read the messages above -----------------------------

type Field = { no: number; wire: number; varint?: bigint; bytes?: Uint8Array; fixed?: Uint8Array };

function readVarint(b: Uint8Array, pos: { i: number }): bigint {
  let result = 0n;
  for (let shift = 0n; ; shift += 7n) {
    const byte = b[pos.i++]!;
    result |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return result;
  }
}

function fields(b: Uint8Array): Field[] {
  const out: Field[] = [];
  const pos = { i: 0 };
  while (pos.i < b.length) {
    const tag = Number(readVarint(b, pos));
    const f: Field = { no: tag >>> 3, wire: tag & 7 };
    if (f.wire === 0) f.varint = readVarint(b, pos);
    else if (f.wire === 2) {
      const len = Number(readVarint(b, pos));
      f.bytes = b.subarray(pos.i, pos.i + len);
      pos.i += len;
    } else if (f.wire === 1) ((f.fixed = b.subarray(pos.i, pos.i + 8)), (pos.i += 8));
    else if (f.wire === 5) ((f.fixed = b.subarray(pos.i, pos.i + 4)), (pos.i += 4));
    else throw new Error(`unsupported wire type ${f.wire}`);
    out.push(f);
  }
  return out;
}

const sub = (fs: Field[], no: number) => fs.filter((f) => f.no === no && f.bytes).map((f) => fields(f.bytes!));
const str = (fs: Field[], no: number) => {
  const f = fs.find((x) => x.no === no && x.bytes);
  return f ? Buffer.from(f.bytes!).toString("utf8") : undefined;
};
const hex = (fs: Field[], no: number) => {
  const f = fs.find((x) => x.no === no && x.bytes);
  return f && f.bytes!.length > 0 ? Buffer.from(f.bytes!).toString("hex") : undefined;
};
const num = (fs: Field[], no: number) => Number(fs.find((x) => x.no === no && x.varint !== undefined)?.varint ?? 0n);
/** A fixed64 field of nanoseconds, in milliseconds. */
const nanosAsMs = (fs: Field[], no: number) => {
  const f = fs.find((x) => x.no === no && x.fixed?.length === 8);
  return f ? Number(Buffer.from(f.fixed!).readBigUInt64LE() / 1000n) / 1000 : 0;
};

/** AnyValue: string 1, bool 2, int 3, double 4. KeyValue: key 1, value 2. */
function protoAttrs(kvs: Field[][]): Attributes {
  return Object.fromEntries(
    kvs.map((kv) => {
      const v = sub(kv, 2)[0] ?? [];
      const s = str(v, 1);
      const b = v.find((x) => x.no === 2);
      const i = v.find((x) => x.no === 3);
      const d = v.find((x) => x.no === 4);
      return [str(kv, 1)!, s ?? (b ? b.varint === 1n : i ? Number(BigInt.asIntN(64, i.varint!)) : d ? Buffer.from(d.fixed!).readDoubleLE() : undefined)];
    }),
  );
}

/** ExportTraceServiceRequest: resource_spans 1 { resource 1 { attributes 1 }, scope_spans 2 { spans 2 } }. */
function protoSpans(body: Uint8Array): Array<Omit<ReceivedSpan, "service">> {
  return sub(fields(body), 1).flatMap((rs) => {
    const resource = protoAttrs(sub(sub(rs, 1)[0] ?? [], 1));
    return sub(rs, 2).flatMap((ss) =>
      // Span: trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start_time_unix_nano 7, end_time_unix_nano 8, attributes 9, events 11 { name 2 }, links 13 { trace_id 1, span_id 2, attributes 4 }, status 15 { code 3 }.
      sub(ss, 2).map((s) => ({
        traceId: hex(s, 1)!,
        spanId: hex(s, 2)!,
        ...(hex(s, 4) ? { parentSpanId: hex(s, 4)! } : {}),
        name: str(s, 5)!,
        kind: num(s, 6),
        status: num(sub(s, 15)[0] ?? [], 3),
        links: sub(s, 13).map((l) => ({ traceId: hex(l, 1)!, spanId: hex(l, 2)!, attributes: protoAttrs(sub(l, 4)) })),
        events: sub(s, 11).map((e) => str(e, 2) ?? ""),
        startMs: nanosAsMs(s, 7),
        endMs: nanosAsMs(s, 8),
        attributes: protoAttrs(sub(s, 9)),
        resource,
      })),
    );
  });
}

/** Metric: gauge 5, sum 7 { is_monotonic 3 }, histogram 9, exponential_histogram 10, summary 11. */
function protoMetricType(m: Field[]): MetricType {
  const sum = sub(m, 7)[0];
  if (sum) return num(sum, 3) === 1 ? "monotonicSum" : "sum";
  const types: [number, MetricType][] = [
    [5, "gauge"],
    [9, "histogram"],
    [10, "exponentialHistogram"],
    [11, "summary"],
  ];
  const found = types.find(([no]) => m.some((f) => f.no === no));
  if (!found) throw new Error(`metric ${str(m, 1)} has no data`);
  return found[1];
}

/** ExportMetricsServiceRequest: resource_metrics 1 { resource 1, scope_metrics 2 { metrics 2 { name 1, unit 3, data } } }. */
function protoMetrics(body: Uint8Array): Array<Omit<ReceivedMetric, "service">> {
  return sub(fields(body), 1).flatMap((rm) => {
    const resource = protoAttrs(sub(sub(rm, 1)[0] ?? [], 1));
    return sub(rm, 2).flatMap((sm) => sub(sm, 2).map((m) => ({ name: str(m, 1)!, unit: str(m, 3) ?? "", type: protoMetricType(m), resource })));
  });
}

function jsonSpans(body: Buffer): Array<Omit<ReceivedSpan, "service">> {
  const parsed = JSON.parse(body.toString("utf8")) as { resourceSpans?: { resource?: { attributes?: KeyValue[] }; scopeSpans?: { spans?: JsonSpan[] }[] }[] };
  return (parsed.resourceSpans ?? []).flatMap((rs) =>
    (rs.scopeSpans ?? []).flatMap((ss) =>
      (ss.spans ?? []).map((s) => ({
        traceId: s.traceId,
        spanId: s.spanId,
        ...(s.parentSpanId ? { parentSpanId: s.parentSpanId } : {}),
        name: s.name,
        kind: s.kind ?? 0,
        status: s.status?.code ?? 0,
        links: (s.links ?? []).map((l) => ({ traceId: l.traceId, spanId: l.spanId, attributes: attrs(l.attributes) })),
        events: (s.events ?? []).map((e) => e.name),
        startMs: Number(BigInt(s.startTimeUnixNano ?? 0) / 1000n) / 1000,
        endMs: Number(BigInt(s.endTimeUnixNano ?? 0) / 1000n) / 1000,
        attributes: attrs(s.attributes),
        resource: attrs(rs.resource?.attributes),
      })),
    ),
  );
}

type JsonMetric = {
  name: string;
  unit?: string;
  gauge?: unknown;
  sum?: { isMonotonic?: boolean };
  histogram?: unknown;
  exponentialHistogram?: unknown;
  summary?: unknown;
};

function jsonMetricType(m: JsonMetric): MetricType {
  if (m.sum) return m.sum.isMonotonic ? "monotonicSum" : "sum";
  const found = (["gauge", "histogram", "exponentialHistogram", "summary"] as const).find((t) => m[t] !== undefined);
  if (!found) throw new Error(`metric ${m.name} has no data`);
  return found;
}

function jsonMetrics(body: Buffer): Array<Omit<ReceivedMetric, "service">> {
  const parsed = JSON.parse(body.toString("utf8")) as {
    resourceMetrics?: { resource?: { attributes?: KeyValue[] }; scopeMetrics?: { metrics?: JsonMetric[] }[] }[];
  };
  return (parsed.resourceMetrics ?? []).flatMap((rm) =>
    (rm.scopeMetrics ?? []).flatMap((sm) =>
      (sm.metrics ?? []).map((m) => ({ name: m.name, unit: m.unit ?? "", type: jsonMetricType(m), resource: attrs(rm.resource?.attributes) })),
    ),
  );
}

/**
 * The names Prometheus stores a metric under once the collector's prometheus exporter
 * (add_metric_suffixes) has translated it: dots to underscores, the unit as a suffix (`s`:
 * `_seconds`; an annotation like `{key}`: none), `_total` for a counter, and a histogram's
 * `_bucket`, `_count` and `_sum` series.
 */
export function prometheusNames(m: Pick<ReceivedMetric, "name" | "unit" | "type">): string[] {
  const units: Record<string, string> = { s: "seconds", ms: "milliseconds", By: "bytes" };
  const unit = m.unit.startsWith("{") || m.unit === "" ? undefined : (units[m.unit] ?? m.unit);
  const base = m.name.replace(/[^a-zA-Z0-9_:]/g, "_") + (unit && !m.name.endsWith(`.${unit}`) ? `_${unit}` : "");
  if (m.type === "monotonicSum") return [`${base}_total`];
  if (m.type === "histogram") return [`${base}_bucket`, `${base}_count`, `${base}_sum`];
  return [base];
}

const withService = <T extends { resource: Attributes }>(x: T) => ({ ...x, service: String(x.resource["service.name"] ?? "?") });

export async function startOtlpReceiver(): Promise<{
  url: string;
  spans: ReceivedSpan[];
  metrics: ReceivedMetric[];
  requests: { path: string; contentType: string }[];
  close(): Promise<void>;
}> {
  const spans: ReceivedSpan[] = [];
  const metrics: ReceivedMetric[] = [];
  const requests: { path: string; contentType: string }[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const contentType = req.headers["content-type"] ?? "";
      const json = contentType.startsWith("application/json");
      requests.push({ path: req.url ?? "", contentType });
      try {
        if (req.url === "/v1/traces") spans.push(...(json ? jsonSpans(body) : protoSpans(body)).map(withService));
        else if (req.url === "/v1/metrics") metrics.push(...(json ? jsonMetrics(body) : protoMetrics(body)).map(withService));
        else return void res.writeHead(404).end();
        // An empty ExportServiceResponse, in the encoding asked for.
        res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" }).end(json ? "{}" : Buffer.alloc(0));
      } catch {
        res.writeHead(400).end();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, spans, metrics, requests, close: () => new Promise((r) => server.close(() => r())) };
}
