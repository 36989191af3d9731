/**
 * The agent's telemetry, after OpenTelemetry's GenAI semantic conventions: a CLIENT span
 * `chat <model>` per Messages API call and an INTERNAL span `execute_tool <tool>` per tool call,
 * both children of the active span (the key's `reconcile repair` span, whose trace is the one of
 * the failed build that handed the key over); the histograms `gen_ai.client.token.usage` and
 * `gen_ai.client.operation.duration`; and `homeostat.agent.proposals`, the runs by outcome.
 */
import type { Message } from "@anthropic-ai/sdk/resources/messages";
import { inSpan, markFailed, meter, SpanKind, SpanStatusCode } from "@homeostat/core/telemetry";

export const GEN_AI_PROVIDER = "anthropic";

// The conventions' advised bucket boundaries for these two histograms.
const TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864];
const OPERATION_BUCKETS_S = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];

/** Made per run: instruments bind to the MeterProvider registered when they are made (none: no-ops). */
export function agentMetrics() {
  const m = meter();
  return {
    tokenUsage: m.createHistogram("gen_ai.client.token.usage", {
      unit: "{token}",
      description: "Tokens per model call, by gen_ai.token.type (input: every input token, cached ones included; output)",
      advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
    }),
    operationDuration: m.createHistogram("gen_ai.client.operation.duration", {
      unit: "s",
      description: "Duration of a model call, failed ones included (with error.type)",
      advice: { explicitBucketBoundaries: OPERATION_BUCKETS_S },
    }),
    proposals: m.createCounter("homeostat.agent.proposals", {
      unit: "{run}",
      description: "Agent runs by outcome: proposed (a proposal was recorded) or none (with the loop's stop reason)",
    }),
  };
}
export type AgentMetrics = ReturnType<typeof agentMetrics>;

/**
 * One model call in a `chat <model>` span; its duration and token counts recorded. A failed call
 * (an error thrown) marks the span ERROR with error.type (the HTTP status, or the error's class).
 */
export async function chatSpan(metrics: AgentMetrics, requestModel: string, call: () => Promise<Message>): Promise<Message> {
  const base = { "gen_ai.operation.name": "chat", "gen_ai.provider.name": GEN_AI_PROVIDER, "gen_ai.request.model": requestModel };
  const started = performance.now();
  // The error leaves the span as a value: inSpan would otherwise mark it again with the error's class as error.type.
  const outcome = await inSpan(
    `chat ${requestModel}`,
    { kind: SpanKind.CLIENT, attributes: { ...base, "gen_ai.system": GEN_AI_PROVIDER } },
    async (span): Promise<{ message: Message } | { error: unknown }> => {
      try {
        const message = await call();
        const u = message.usage;
        // The conventions count cached input tokens in input_tokens (the API reports them apart).
        const input = u.input_tokens + (u.cache_creation_input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0);
        span.setAttributes({
          "gen_ai.response.model": message.model,
          "gen_ai.response.id": message.id,
          "gen_ai.response.finish_reasons": [message.stop_reason ?? "unknown"],
          "gen_ai.usage.input_tokens": input,
          "gen_ai.usage.output_tokens": u.output_tokens,
          "gen_ai.usage.cache_read.input_tokens": u.cache_read_input_tokens ?? 0,
          "gen_ai.usage.cache_creation.input_tokens": u.cache_creation_input_tokens ?? 0,
        });
        const attrs = { ...base, "gen_ai.response.model": message.model };
        metrics.tokenUsage.record(input, { ...attrs, "gen_ai.token.type": "input" });
        metrics.tokenUsage.record(u.output_tokens, { ...attrs, "gen_ai.token.type": "output" });
        metrics.operationDuration.record((performance.now() - started) / 1000, attrs);
        return { message };
      } catch (error) {
        const status = (error as { status?: unknown }).status;
        const errorType = typeof status === "number" ? String(status) : error instanceof Error ? error.constructor.name : "_OTHER";
        metrics.operationDuration.record((performance.now() - started) / 1000, { ...base, "error.type": errorType });
        markFailed(span, error);
        span.setAttribute("error.type", errorType);
        return { error };
      }
    },
  );
  if ("error" in outcome) throw outcome.error;
  return outcome.message;
}

/**
 * One tool call in an `execute_tool <tool>` span. A tool the model made up is not named in the
 * span's name (names stay a bounded set); an outcome that is a tool error marks the span ERROR.
 */
export function toolSpan<T extends { isError?: boolean; content: string }>(name: string, known: boolean, callId: string, run: () => Promise<T>): Promise<T> {
  const attributes = {
    "gen_ai.operation.name": "execute_tool",
    "gen_ai.tool.name": known ? name : name.slice(0, 128),
    "gen_ai.tool.call.id": callId,
    "gen_ai.tool.type": "function",
  };
  return inSpan(known ? `execute_tool ${name}` : "execute_tool", { kind: SpanKind.INTERNAL, attributes }, async (span) => {
    const outcome = await run();
    if (outcome.isError) {
      span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.content.slice(0, 256) });
      span.setAttribute("error.type", known ? "tool_error" : "unknown_tool");
    }
    return outcome;
  });
}
