/**
 * Under a parent-based sampler, a trace sampled out costs its hot paths no span: a publish and a
 * run in it make none and pass the parent's context on (still not sampled, so every child decides
 * as it would have), nor build the links and attributes such a span would have, while a sampled
 * trace gets its PRODUCER and run spans as before. Its own
 * process: the SDK registers itself globally once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ROOT_CONTEXT, trace, TraceFlags } from "@opentelemetry/api";
import { loadConfig } from "./config.ts";
import { context, contextFromTraceparent, inSpan, producerSpan, propagatedTraceparent, recordedUnder, startTelemetry } from "./telemetry.ts";

test("in a trace sampled out, a publish and a run make no span and pass the parent's context on; a sampled trace gets its spans", async () => {
  // As a service configures it, exporting nowhere; every root kept: only a parent's decision can leave a span out.
  const settings = loadConfig({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "1" }).telemetry;
  const telemetry = startTelemetry("telemetry-sampled-out-test", { ...settings, traces: undefined, metrics: undefined });
  try {
    const [traceId, spanId] = ["1".repeat(32), "2".repeat(16)];
    const sampledOut = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: TraceFlags.NONE, isRemote: true });
    const sent = await context.with(sampledOut, () => producerSpan("work", "subject", {}, async (ctx) => propagatedTraceparent(ctx)));
    assert.equal(sent, `00-${traceId}-${spanId}-00`, "the message carries the caller's own context, still not sampled");
    assert.equal(recordedUnder(sent), false, "its run would not be recorded: a link to it would reach no backend");
    assert.equal(recordedUnder(`00-${traceId}-${spanId}-01`), true);
    // What a run would link to and record is asked for only when it makes a span.
    const asked: string[] = [];
    const lazy = {
      links: () => (asked.push("links"), []),
      attributes: () => (asked.push("attributes"), { "homeostat.key": "package/zlib" }),
    };
    const ran = await inSpan("run", { parent: contextFromTraceparent(sent), ...lazy }, async (span) => ({
      recording: span.isRecording(),
      ids: span.spanContext(),
      active: trace.getSpanContext(context.active()),
    }));
    assert.equal(ran.recording, false, "the run records nothing");
    assert.deepEqual(asked, [], "nor parses links or builds attributes for a span it does not make");
    assert.deepEqual([ran.ids.traceId, ran.ids.spanId, ran.active?.spanId], [traceId, spanId, spanId], "the run is in the sender's trace, its context active");

    const traced = await inSpan("caller", {}, async (caller) => ({
      caller: caller.spanContext(),
      sent: await producerSpan("work", "subject", {}, async (ctx) => propagatedTraceparent(ctx)),
    }));
    const [, sentTrace, sentSpan, flags] = traced.sent!.split("-");
    assert.equal(sentTrace, traced.caller.traceId, "a sampled caller's publish is in its trace");
    assert.notEqual(sentSpan, traced.caller.spanId, "a PRODUCER span of its own");
    assert.equal(flags, "01", "sampled");
    const child = await inSpan("run", { parent: contextFromTraceparent(traced.sent), ...lazy }, async (span) => ({
      recording: span.isRecording(),
      ids: span.spanContext(),
    }));
    assert.equal(child.recording, true);
    assert.deepEqual(asked, ["links", "attributes"], "a sampled run's links and attributes are made for its span");
    assert.notEqual(child.ids.spanId, sentSpan, "the run has a span of its own, the PRODUCER span's child");
  } finally {
    await telemetry.shutdown();
  }
});
