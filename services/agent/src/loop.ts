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
 *
 * A tool may ask a person (ask_human): the loop answers the turn's other calls and stops
 * (`asked`) with the conversation as it stands; the caller parks it and, once answered,
 * continues it (`resume`, withAnswer) with the turns, tokens and time it had used counted.
 */
import Anthropic from "@anthropic-ai/sdk";
import type { MessageParam, Tool, ToolResultBlockParam, ToolUseBlock, Usage } from "@anthropic-ai/sdk/resources/messages";
import { z } from "zod";
import { canonicalJson, sha256Digest } from "@homeostat/core";
import { agentMetrics, chatSpan, toolSpan } from "./telemetry.ts";

export type ToolOutcome<R> = {
  content: string;
  isError?: boolean;
  result?: R;
  /** Set: the run stops to ask a person this (ask_human); the answer becomes this call's tool_result. */
  ask?: string;
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

export type LoopStop = "submitted" | "end_turn" | "max_turns" | "token_budget" | "time_budget" | "api_error" | "aborted" | "asked";

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
  /** stop `asked`: the question and the call it answers (its tool_result is the one missing from `messages`). */
  asked?: { question: string; toolUseId: string };
  /** Wall time used, the resumed run's earlier part included. */
  elapsedMs: number;
  /** Milliseconds per turn spent outside the model call and the trial builds: the loop's own cost. */
  overheadMs: number[];
};

export type LoopOptions<R> = {
  client: Anthropic;
  model: string;
  system: string;
  tools: AgentTool<R>[];
  prompt: string;
  /** A parked conversation to continue instead of starting from `prompt` (withAnswer), with what it had used of the budget. */
  resume?: { messages: MessageParam[]; turns: number; usage: TokenUsage; elapsedMs: number };
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

/** The tools as the Messages API is given them. */
export function toolDefinitions(tools: readonly AgentTool<unknown>[]): Tool[] {
  // Cached prefix: tools come before the system prompt, so one breakpoint on the last tool and one on the system cover both.
  return tools.map((t, i) => ({
    name: t.name,
    description: t.description,
    input_schema: z.toJSONSchema(t.input, { io: "input" }) as Tool["input_schema"],
    ...(i === tools.length - 1 ? { cache_control: { type: "ephemeral" as const } } : {}),
  }));
}

/** What a parked conversation was made under: the model, the system prompt, the tool definitions and the limits. A change starts over. */
export function loopConfigDigest(o: Pick<LoopOptions<unknown>, "model" | "system" | "tools" | "limits">): string {
  const { maxTurns, maxTokens, maxWallMs, turnOutputTokens } = o.limits;
  return sha256Digest(
    canonicalJson({ model: o.model, system: o.system, tools: toolDefinitions(o.tools), limits: { maxTurns, maxTokens, maxWallMs, turnOutputTokens } }),
  );
}

/** The parked conversation with the person's answer as the tool_result of the asking call (beside the turn's other results, if any). */
export function withAnswer(messages: readonly MessageParam[], toolUseId: string, answer: string): MessageParam[] {
  const result: ToolResultBlockParam = { type: "tool_result", tool_use_id: toolUseId, content: answer };
  const last = messages.at(-1);
  if (last?.role === "user" && Array.isArray(last.content)) return [...messages.slice(0, -1), { role: "user", content: [...last.content, result] }];
  return [...messages, { role: "user", content: [result] }];
}

export async function runLoop<R>(o: LoopOptions<R>): Promise<LoopResult<R>> {
  const started = Date.now() - (o.resume?.elapsedMs ?? 0);
  const sleep = o.sleep ?? defaultSleep;
  const byName = new Map(o.tools.map((t) => [t.name, t]));
  const metrics = agentMetrics();
  const tools = toolDefinitions(o.tools);
  const system = [{ type: "text" as const, text: o.system, cache_control: { type: "ephemeral" as const } }];
  const messages: MessageParam[] = o.resume ? [...o.resume.messages] : [{ role: "user", content: o.prompt }];
  const usage: TokenUsage = o.resume ? { ...o.resume.usage } : { input: 0, output: 0, cacheWrite: 0, cacheRead: 0 };
  const overheadMs: number[] = [];
  let turns = o.resume?.turns ?? 0;
  let asked: LoopResult<R>["asked"];
  const end = (stop: LoopStop, detail: string, result?: R): LoopResult<R> => ({
    stop,
    detail,
    ...(result !== undefined ? { result } : {}),
    ...(asked ? { asked } : {}),
    elapsedMs: Date.now() - started,
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
      if (outcome.ask !== undefined && !outcome.isError && !asked) {
        // Its tool_result is the answer, given when the conversation resumes.
        asked = { question: outcome.ask, toolUseId: use.id };
        continue;
      }
      results.push({ type: "tool_result", tool_use_id: use.id, content: outcome.content, ...(outcome.isError ? { is_error: true } : {}) });
      if (outcome.result !== undefined && !outcome.isError) submitted = outcome.result;
    }
    if (results.length > 0) messages.push({ role: "user", content: results });
    overheadMs.push(performance.now() - turnStarted - outside);
    if (asked) return end("asked", `the model asked a person: ${asked.question}`);
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
