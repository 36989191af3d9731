/**
 * A fake Anthropic Messages API for tests and the scripted evals: plain HTTP on a free loopback
 * port, `POST /v1/messages` answered with the next scripted turn of a fixture file, in the real
 * response shapes (content blocks with tool_use, stop_reason, usage, error bodies with their
 * status and retry-after). The real @anthropic-ai/sdk talks to it (ANTHROPIC_BASE_URL).
 *
 * It checks what a real server would refuse (an API key, the version header, model, max_tokens,
 * messages, a tool_result for every tool_use of the turn before) and answers 400 in the API's
 * error shape, so a loop that breaks the protocol fails its test. Every request body is kept
 * for the tests to look into (prompt caching, secrets).
 */
import { createServer, type IncomingMessage } from "node:http";
import { readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";

type Usage = { input_tokens: number; output_tokens: number; cache_creation_input_tokens?: number; cache_read_input_tokens?: number };
/** A scripted model turn, or a scripted API error; `repeat` plays it that many times. */
export type ScriptedStep =
  | { content: Record<string, unknown>[]; stop_reason: string; usage: Usage; repeat: number }
  | { error: { status: number; type: string; message: string; retryAfter?: string }; repeat: number };

/** A fixture file of steps (defaults: stop_reason tool_use, 100 input and 20 output tokens, played once); a malformed one throws naming the step. */
export function readScript(file: string | URL): ScriptedStep[] {
  const steps = JSON.parse(readFileSync(file, "utf8")) as unknown;
  if (!Array.isArray(steps) || steps.length === 0) throw new Error(`${String(file)}: a script is a non-empty array of steps`);
  return steps.map((raw: unknown, i): ScriptedStep => {
    const s = raw as Record<string, unknown>;
    const repeat = typeof s.repeat === "number" && s.repeat >= 1 ? s.repeat : 1;
    const error = s.error as (ScriptedStep & { status?: unknown }) | undefined;
    if (error && typeof (error as { status?: unknown }).status === "number")
      return { error: s.error as Extract<ScriptedStep, { error: unknown }>["error"], repeat };
    if (!Array.isArray(s.content) || s.content.length === 0) throw new Error(`${String(file)}: step ${i} has neither content blocks nor an error`);
    return {
      content: s.content as Record<string, unknown>[],
      stop_reason: typeof s.stop_reason === "string" ? s.stop_reason : "tool_use",
      usage: (s.usage as Usage | undefined) ?? { input_tokens: 100, output_tokens: 20 },
      repeat,
    };
  });
}

export type FakeMessagesServer = {
  url: string;
  /** Every request body received, in order. */
  requests: Record<string, unknown>[];
  /** Every raw request (headers and body as text), for looking for secrets. */
  raw: string[];
  /** Replaces the script (and starts it from its first step). */
  play(script: ScriptedStep[]): void;
  close(): Promise<void>;
};

const body = async (req: IncomingMessage): Promise<string> => {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
};

type Msg = { role: string; content: string | { type: string; id?: string; tool_use_id?: string }[] };

/** What a real server refuses, in words, or undefined. */
function protocolError(headers: IncomingMessage["headers"], b: Record<string, unknown>): string | undefined {
  if (!headers["x-api-key"] && !headers.authorization) return "missing x-api-key";
  if (!headers["anthropic-version"]) return "missing anthropic-version";
  if (typeof b.model !== "string" || !b.model) return "model: required";
  if (typeof b.max_tokens !== "number") return "max_tokens: required";
  const messages = b.messages as Msg[] | undefined;
  if (!Array.isArray(messages) || messages.length === 0 || messages[0]!.role !== "user") return "messages: must start with a user message";
  for (let i = 1; i < messages.length; i++) {
    const prev = messages[i - 1]!;
    if (prev.role === messages[i]!.role) return `messages.${i}: roles must alternate`;
    if (prev.role !== "assistant" || typeof prev.content === "string") continue;
    const uses = prev.content.filter((c) => c.type === "tool_use").map((c) => c.id);
    const cur = messages[i]!.content;
    const answered = typeof cur === "string" ? [] : cur.filter((c) => c.type === "tool_result").map((c) => c.tool_use_id);
    const missing = uses.filter((id) => !answered.includes(id));
    if (missing.length) return `messages.${i}: tool_use ids ${missing.join(", ")} were found without tool_result blocks immediately after`;
  }
  return undefined;
}

export async function startFakeMessagesServer(script: ScriptedStep[] = []): Promise<FakeMessagesServer> {
  let steps: ScriptedStep[] = [];
  let next = 0;
  let played = 0;
  const requests: Record<string, unknown>[] = [];
  const raw: string[] = [];
  let serial = 0;
  const play = (s: ScriptedStep[]) => {
    steps = s;
    next = 0;
    played = 0;
  };
  play(script);
  const server = createServer((req, res) => {
    void (async () => {
      const text = await body(req);
      raw.push(`${JSON.stringify(req.headers)}\n${text}`);
      const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
        res.writeHead(status, { "content-type": "application/json", "request-id": `req_fake_${++serial}`, ...headers });
        res.end(JSON.stringify(payload));
      };
      const fail = (status: number, type: string, message: string, headers: Record<string, string> = {}) =>
        send(status, { type: "error", error: { type, message } }, headers);
      if (req.method !== "POST" || !req.url?.startsWith("/v1/messages")) return fail(404, "not_found_error", `${req.method} ${req.url}`);
      let b: Record<string, unknown>;
      try {
        b = JSON.parse(text) as Record<string, unknown>;
      } catch {
        return fail(400, "invalid_request_error", "body is not JSON");
      }
      requests.push(b);
      const wrong = protocolError(req.headers, b);
      if (wrong) return fail(400, "invalid_request_error", wrong);
      const step = steps[next];
      if (!step) return fail(500, "api_error", `the script has no turn ${requests.length}`);
      if (++played >= step.repeat) {
        next++;
        played = 0;
      }
      if ("error" in step)
        return fail(step.error.status, step.error.type, step.error.message, step.error.retryAfter ? { "retry-after": step.error.retryAfter } : {});
      // Tool-use ids are unique per response, as the real API's are.
      const content = step.content.map((c) => (c.type === "tool_use" ? { ...c, id: `toolu_${serial + 1}_${String(c.id ?? "x")}` } : c));
      send(200, {
        id: `msg_fake_${serial + 1}`,
        type: "message",
        role: "assistant",
        model: b.model,
        content,
        stop_reason: step.stop_reason,
        stop_sequence: null,
        usage: { cache_creation_input_tokens: 0, cache_read_input_tokens: 0, ...step.usage },
      });
    })().catch((err: unknown) => {
      res.writeHead(500);
      res.end(String(err));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    raw,
    play,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
