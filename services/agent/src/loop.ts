/**
 * The agent loop: one conversation with a tool-using model through the Messages API, until the
 * model submits a result (a tool that ends the run), stops on its own, or a budget ends it.
 *
 * Budgets: turns (model calls), tokens (input, cache and output together) and wall time; a
 * call that fails with 429 or 5xx (529: overloaded) or loses its connection is tried again after
 * the server's retry-after (retry-after-ms, else retry-after in seconds or as a date), else an
 * exponential backoff, never past the wall-time budget. The SDK's own retries are off, so that
 * every wait is counted here. The system prompt and the tool definitions are marked for prompt
 * caching (they are the same on every turn). Tool input is validated against the tool's schema
 * and every failure (bad input, unknown tool, a tool that throws) goes back to the model as a
 * tool error: nothing the model says can crash the run.
 *
 * Every model call and every tool call is a span (telemetry.ts), a child of the active one: the
 * key's reconcile span, in the trace of the build whose failure handed the key over.
 */
import Anthropic from "@anthropic-ai/sdk";
import type { MessageParam, Tool, ToolResultBlockParam, ToolUseBlock, Usage } from "@anthropic-ai/sdk/resources/messages";
import { z } from "zod";
import { agentMetrics, chatSpan, toolSpan } from "./telemetry.ts";

export type ToolOutcome<R> = {
  content: string;
  isError?: boolean;
  result?: R;
  /** Milliseconds of the call spent in trial builds: left out of the loop's own overhead (a build takes as long as the build). */
  buildMs?: number;
};

/** One tool: a name, what it is for, its input schema, and what it does (confined by whoever made it). */
export type AgentTool<R = unknown> = {
  name: string;
  description: string;
  input: z.ZodType;
  /** `result` set: the run ends with it (submit_result). */
  run: (input: never, signal: AbortSignal) => Promise<ToolOutcome<R>>;
};

export type LoopLimits = { maxTurns: number; maxTokens: number; maxWallMs: number; turnOutputTokens: number; apiTries: number };
export type Prices = { input: number; output: number; cacheWrite: number; cacheRead: number };

export type TokenUsage = { input: number; output: number; cacheWrite: number; cacheRead: number };

export type LoopStop = "submitted" | "end_turn" | "max_turns" | "token_budget" | "time_budget" | "api_error" | "aborted";

export type LoopResult<R> = {
  stop: LoopStop;
  /** Why, in words (the model's last text, or the limit reached, or the API's error). */
  detail: string;
  result?: R;
  turns: number;
  usage: TokenUsage;
  costUsd: number;
  /** The whole conversation, for the transcript blob. */
  messages: MessageParam[];
  /** Milliseconds per turn spent outside the model call and the trial builds: the loop's own cost. */
  overheadMs: number[];
};

export type LoopOptions<R> = {
  client: Anthropic;
  model: string;
  system: string;
  tools: AgentTool<R>[];
  prompt: string;
  limits: LoopLimits;
  prices: Prices;
  signal: AbortSignal;
  /** Waits (tests shorten nothing: the fake server's retry-after is real). */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
};

/** The Messages API client: the SDK's own retries off, since the loop counts every wait itself. */
export function messagesClient(apiKey: string, baseUrl?: string): Anthropic {
  return new Anthropic({ apiKey, ...(baseUrl ? { baseURL: baseUrl } : {}), maxRetries: 0 });
}

/** Errors worth another try: rate limits, server errors (529 overloaded), lost connections. */
function retriable(err: unknown): boolean {
  if (err instanceof Anthropic.APIConnectionError) return !(err instanceof Anthropic.APIUserAbortError);
  return err instanceof Anthropic.APIError && typeof err.status === "number" && (err.status === 429 || err.status === 408 || err.status >= 500);
}

/** The server's retry-after in milliseconds, if it sent one. */
export function retryAfterMs(headers: Headers | undefined, now = Date.now()): number | undefined {
  const ms = headers?.get("retry-after-ms");
  if (ms && /^\d+(\.\d+)?$/.test(ms)) return Number(ms);
  const after = headers?.get("retry-after");
  if (!after) return undefined;
  if (/^\d+(\.\d+)?$/.test(after)) return Number(after) * 1000;
  const at = Date.parse(after);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

const defaultSleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), reject(signal.reason)), { once: true });
  });

export function costOf(u: TokenUsage, p: Prices): number {
  return (u.input * p.input + u.output * p.output + u.cacheWrite * p.cacheWrite + u.cacheRead * p.cacheRead) / 1_000_000;
}

const totalTokens = (u: TokenUsage) => u.input + u.output + u.cacheWrite + u.cacheRead;

export async function runLoop<R>(o: LoopOptions<R>): Promise<LoopResult<R>> {
  const started = Date.now();
  const sleep = o.sleep ?? defaultSleep;
  const byName = new Map(o.tools.map((t) => [t.name, t]));
  const metrics = agentMetrics();
  // Cached prefix: tools come before the system prompt, so one breakpoint on the last tool and one on the system cover both.
  const tools: Tool[] = o.tools.map((t, i) => ({
    name: t.name,
    description: t.description,
    input_schema: z.toJSONSchema(t.input, { io: "input" }) as Tool["input_schema"],
    ...(i === o.tools.length - 1 ? { cache_control: { type: "ephemeral" as const } } : {}),
  }));
  const system = [{ type: "text" as const, text: o.system, cache_control: { type: "ephemeral" as const } }];
  const messages: MessageParam[] = [{ role: "user", content: o.prompt }];
  const usage: TokenUsage = { input: 0, output: 0, cacheWrite: 0, cacheRead: 0 };
  const overheadMs: number[] = [];
  let turns = 0;
  const end = (stop: LoopStop, detail: string, result?: R): LoopResult<R> => ({
    stop,
    detail,
    ...(result !== undefined ? { result } : {}),
    turns,
    usage,
    costUsd: costOf(usage, o.prices),
    messages,
    overheadMs,
  });

  while (true) {
    if (o.signal.aborted) return end("aborted", "stopped");
    if (turns >= o.limits.maxTurns) return end("max_turns", `stopped after ${turns} turns (HOMEOSTAT_AGENT_MAX_TURNS) without a result`);
    if (totalTokens(usage) >= o.limits.maxTokens)
      return end("token_budget", `stopped after ${totalTokens(usage)} tokens (HOMEOSTAT_AGENT_MAX_TOKENS) without a result`);
    const turnStarted = performance.now();
    let outside = 0;
    const call = await callModel();
    if ("stop" in call) return call;
    const response = call.message;
    outside += call.ms;
    turns++;
    addUsage(response.usage);
    messages.push({ role: "assistant", content: response.content });
    const uses = response.content.filter((b): b is ToolUseBlock => b.type === "tool_use");
    if (uses.length === 0) {
      const text = response.content
        .flatMap((b) => (b.type === "text" ? [b.text] : []))
        .join("\n")
        .trim();
      overheadMs.push(performance.now() - turnStarted - outside);
      return end("end_turn", `the model stopped (${response.stop_reason}) without submitting a result${text ? `: ${text.slice(0, 2000)}` : ""}`);
    }
    const results: ToolResultBlockParam[] = [];
    let submitted: R | undefined;
    for (const use of uses) {
      const outcome = await runTool(use);
      outside += outcome.buildMs ?? 0;
      results.push({ type: "tool_result", tool_use_id: use.id, content: outcome.content, ...(outcome.isError ? { is_error: true } : {}) });
      if (outcome.result !== undefined && !outcome.isError) submitted = outcome.result;
    }
    messages.push({ role: "user", content: results });
    overheadMs.push(performance.now() - turnStarted - outside);
    if (submitted !== undefined) return end("submitted", "the model submitted a result that passed its validators", submitted);
  }

  function addUsage(u: Usage): void {
    usage.input += u.input_tokens;
    usage.output += u.output_tokens;
    usage.cacheWrite += u.cache_creation_input_tokens ?? 0;
    usage.cacheRead += u.cache_read_input_tokens ?? 0;
  }

  async function callModel(): Promise<{ message: Anthropic.Message; ms: number } | LoopResult<R>> {
    for (let attempt = 1; ; attempt++) {
      const left = o.limits.maxWallMs - (Date.now() - started);
      if (left <= 0) return end("time_budget", `stopped after ${Date.now() - started} ms (HOMEOSTAT_AGENT_MAX_WALL_MS) without a result`);
      const t0 = performance.now();
      try {
        const timeout = AbortSignal.any([o.signal, AbortSignal.timeout(left)]);
        const message = await chatSpan(metrics, o.model, () =>
          o.client.messages.create({ model: o.model, max_tokens: o.limits.turnOutputTokens, system, tools, messages }, { signal: timeout, maxRetries: 0 }),
        );
        return { message, ms: performance.now() - t0 };
      } catch (err) {
        if (o.signal.aborted) return end("aborted", "stopped");
        if (Date.now() - started >= o.limits.maxWallMs)
          return end("time_budget", `stopped after ${Date.now() - started} ms (HOMEOSTAT_AGENT_MAX_WALL_MS) without a result`);
        const reason = err instanceof Error ? err.message : String(err);
        if (!retriable(err) || attempt >= o.limits.apiTries)
          return end("api_error", `the Messages API failed${attempt > 1 ? ` ${attempt} times` : ""}: ${reason}`.slice(0, 4096));
        const asked = retryAfterMs(err instanceof Anthropic.APIError ? err.headers : undefined);
        const backoff = Math.min(30_000, 500 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        const wait = Math.min(asked ?? backoff, o.limits.maxWallMs - (Date.now() - started));
        try {
          await sleep(Math.max(0, wait), o.signal);
        } catch {
          return end("aborted", "stopped");
        }
      }
    }
  }

  function runTool(use: ToolUseBlock): Promise<ToolOutcome<R>> {
    return toolSpan(use.name, byName.has(use.name), use.id, () => runToolUnspanned(use));
  }

  async function runToolUnspanned(use: ToolUseBlock): Promise<ToolOutcome<R>> {
    const tool = byName.get(use.name);
    if (!tool) return { content: `unknown tool ${JSON.stringify(use.name)}; the tools are ${[...byName.keys()].join(", ")}`, isError: true };
    const parsed = tool.input.safeParse(use.input);
    if (!parsed.success) {
      return {
        content: `invalid input for ${tool.name}: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(input)"}: ${i.message}`).join("; ")}`,
        isError: true,
      };
    }
    try {
      return await tool.run(parsed.data as never, o.signal);
    } catch (err) {
      return { content: `${tool.name} failed: ${err instanceof Error ? err.message : String(err)}`.slice(0, 8192), isError: true };
    }
  }
}
