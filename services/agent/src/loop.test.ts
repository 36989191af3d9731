/**
 * The loop with the real @anthropic-ai/sdk against the fake Messages server
 * (test/agent-fake-messages.ts) replaying scripted turns from test/fixtures/agent/loop.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { z } from "zod";
import { readScript, startFakeMessagesServer, type FakeMessagesServer } from "../../../test/agent-fake-messages.ts";
import { runLoop, retryAfterMs, type AgentTool, type LoopLimits } from "./loop.ts";

const fixture = (name: string) => readScript(new URL(`../../../test/fixtures/agent/loop/${name}.json`, import.meta.url));
const limits: LoopLimits = { maxTurns: 40, maxTokens: 1_000_000, maxWallMs: 60_000, turnOutputTokens: 1024, apiTries: 5 };
const prices = { input: 3, output: 15, cacheWrite: 3.75, cacheRead: 0.3 };

let server: FakeMessagesServer;
before(async () => (server = await startFakeMessagesServer()));
after(() => server.close());

/** Two tools: a file read confined to one made-up file, and a submit that ends the run. */
function tools(): AgentTool<string>[] {
  return [
    {
      name: "read_file",
      description: "Reads a file of the workspace.",
      input: z.strictObject({ path: z.string() }),
      run: async ({ path }: { path: string }) =>
        path === "Makefile" ? { content: "all:\n\tcc -o hello main.c\n" } : { content: `no such file: ${path}`, isError: true },
    },
    {
      name: "submit_result",
      description: "Submits the result.",
      input: z.strictObject({ rationale: z.string().min(1) }),
      run: async ({ rationale }: { rationale: string }) => ({ content: "accepted", result: rationale }),
    },
  ];
}

function run(script: string, o: Partial<LoopLimits> = {}) {
  server.play(fixture(script));
  const client = new Anthropic({ apiKey: "test-key", baseURL: server.url });
  const from = server.requests.length;
  return runLoop({
    client,
    model: "claude-test",
    system: "You repair recipes.",
    tools: tools(),
    prompt: "Repair package/hello.",
    limits: { ...limits, ...o },
    prices,
    signal: new AbortController().signal,
  }).then((r) => ({ ...r, requests: server.requests.slice(from) }));
}

test("a scripted run: tool use, tool results, a submitted result, usage, cost, and prompt caching", async () => {
  const r = await run("submit-after-read");
  assert.equal(r.stop, "submitted");
  assert.equal(r.result, "the Makefile misses util.c");
  assert.equal(r.turns, 2);
  assert.deepEqual(r.usage, { input: 1260, output: 70, cacheWrite: 900, cacheRead: 900 });
  assert.equal(r.costUsd.toFixed(6), ((1260 * 3 + 70 * 15 + 900 * 3.75 + 900 * 0.3) / 1e6).toFixed(6));
  const second = r.requests[1] as {
    system: { cache_control?: unknown }[];
    tools: { name: string; cache_control?: unknown }[];
    messages: { role: string; content: { type: string; content?: string }[] }[];
  };
  assert.deepEqual(second.system[0]!.cache_control, { type: "ephemeral" }, "the system prompt is cached");
  assert.deepEqual(
    second.tools.map((t) => [t.name, t.cache_control ?? null]),
    [
      ["read_file", null],
      ["submit_result", { type: "ephemeral" }],
    ],
    "the tool definitions are cached",
  );
  const toolResult = second.messages[2]!.content[0]!;
  assert.equal(toolResult.type, "tool_result");
  assert.match(toolResult.content ?? "", /cc -o hello/);
  assert.equal(r.overheadMs.length, 2);
});

test("malformed input, an unknown tool and a refused path come back as tool errors, and the run goes on", async () => {
  const r = await run("bad-input");
  assert.equal(r.stop, "submitted");
  const results = (i: number) => (r.requests[i] as { messages: { content: { is_error?: boolean; content?: string }[] }[] }).messages.at(-1)!.content;
  assert.deepEqual(
    results(1).map((c) => c.is_error),
    [true, true],
  );
  assert.match(results(1)[0]!.content!, /invalid input for read_file: path: /);
  assert.match(results(1)[1]!.content!, /unknown tool "rm_rf"/);
  assert.match(results(2)[0]!.content!, /no such file/);
});

test("429 and 529 are tried again after the server's retry-after", async () => {
  const t0 = Date.now();
  const r = await run("rate-limited");
  assert.equal(r.stop, "submitted");
  assert.equal(r.requests.length, 3);
  assert.ok(Date.now() - t0 >= 1000, "waited the second retry-after asked for");
});

test("a 400 is not tried again: the run stops with the API's reason", async () => {
  const r = await run("bad-request");
  assert.equal(r.stop, "api_error");
  assert.match(r.detail, /prompt is too long/);
  assert.equal(r.requests.length, 1);
});

test("a model that never submits is stopped at max turns; a 200-turn script ends at the budget", async () => {
  const r = await run("never-submits");
  assert.equal(r.stop, "max_turns");
  assert.equal(r.turns, 40);
  const tokens = await run("never-submits", { maxTokens: 500 });
  assert.equal(tokens.stop, "token_budget");
  assert.equal(tokens.turns, 5, "120 tokens a turn: the fifth passes 500");
});

test("a retry-after longer than the wall-time budget is waited only until the budget ends, then the run stops cleanly", async () => {
  const t0 = Date.now();
  const r = await run("overloaded-long", { maxWallMs: 3000 });
  assert.equal(r.stop, "time_budget");
  assert.match(r.detail, /HOMEOSTAT_AGENT_MAX_WALL_MS/);
  assert.equal(r.turns, 0);
  assert.equal(r.requests.length, 1);
  assert.ok(Date.now() - t0 < 30_000, "did not wait the 60 s asked for");
});

test("a model that gives up ends the run with its words", async () => {
  const r = await run("gives-up");
  assert.equal(r.stop, "end_turn");
  assert.match(r.detail, /No release fixes this/);
});

test("retry-after: milliseconds, seconds, a date", () => {
  assert.equal(retryAfterMs(new Headers({ "retry-after-ms": "250" })), 250);
  assert.equal(retryAfterMs(new Headers({ "retry-after": "2" })), 2000);
  assert.equal(retryAfterMs(new Headers({ "retry-after": new Date(10_000).toUTCString() }), 7_000), 3_000);
  assert.equal(retryAfterMs(new Headers({})), undefined);
});
