/**
 * A SERVER span per gRPC call of the status API (nice-grpc middleware): named
 * `<package.Service>/<Method>` as the RPC conventions say, a child of the caller's traceparent
 * metadata, with rpc.system=grpc, rpc.service, rpc.method and rpc.grpc.status_code, and ERROR
 * for the codes that mean the server failed (a refused or invalid request is the caller's and
 * stays unset). The handler runs in the span's context, so what it publishes (an Enqueue) joins
 * the caller's trace. The health service is registered without it: probes make no traces.
 */
import { Status, ServerError, type CallContext, type ServerMiddleware } from "@homeostat/status-api";
import { context, contextFromHttpHeaders, durationHistogram, markFailed, meter, secondsSince, SpanKind, tracer, withSpan } from "@homeostat/core/telemetry";

/** Codes that are the server's failure (OpenTelemetry's gRPC conventions for server spans). */
const serverFailures = new Set([Status.UNKNOWN, Status.DEADLINE_EXCEEDED, Status.UNIMPLEMENTED, Status.INTERNAL, Status.UNAVAILABLE, Status.DATA_LOSS]);

export function tracingMiddleware(): ServerMiddleware {
  // rpc.server.call.duration (the current RPC conventions' name for rpc.server.duration, in seconds), by service, method and status code.
  const duration = durationHistogram(meter(), "rpc.server.call.duration", "Duration of the status API's calls, by method and status code");
  return async function* (call, callContext: CallContext) {
    const started = Date.now();
    let code: Status = Status.OK;
    const path = call.method.path; // "/homeostat.v1.StatusService/Enqueue"
    const slash = path.lastIndexOf("/");
    const rpc = { "rpc.system": "grpc", "rpc.service": path.slice(1, slash), "rpc.method": path.slice(slash + 1) };
    const parent = contextFromHttpHeaders({ traceparent: callContext.metadata.get("traceparent"), tracestate: callContext.metadata.get("tracestate") });
    const span = tracer().startSpan(
      path.slice(1),
      {
        kind: SpanKind.SERVER,
        attributes: rpc,
      },
      parent,
    );
    const active = withSpan(parent, span);
    const inner = call.next(call.request, callContext);
    try {
      // Step the handler inside the span's context: a generator resumes in the context of whoever calls next().
      for (;;) {
        const step = await context.with(active, () => inner.next());
        if (step.done) {
          span.setAttribute("rpc.grpc.status_code", Status.OK);
          return step.value;
        }
        yield step.value;
      }
    } catch (err) {
      code = err instanceof ServerError ? err.code : Status.UNKNOWN;
      span.setAttribute("rpc.grpc.status_code", code);
      if (serverFailures.has(code)) markFailed(span, err);
      throw err;
    } finally {
      span.end();
      duration.record(secondsSince(started), { ...rpc, "rpc.grpc.status_code": code });
    }
  };
}
