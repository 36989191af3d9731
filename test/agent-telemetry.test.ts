/**
 * The agent's GenAI telemetry, with the real SDK exporting to an OTLP receiver: a key whose build
 * of a new version failed is handed over by the traditional reconciler's run (inside the failed
 * build's trace) through the work queue to the agent (with its own NATS identity), which repairs
 * it (the makefile-misses-file eval scenario: the real SDK against the fake Messages server, a
 * trial build in the builder's sandbox). Every model call is a CLIENT span `chat <model>` and
 * every tool call an `execute_tool <tool>` span, children of the agent's `reconcile repair` span
 * and in the failed build's trace, with the GenAI attributes; a failed call is an ERROR span; the
 * token, duration and proposal metrics are exported.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { type Logger } from "@homeostat/core";
import { inSpan, SpanKind, startTelemetry, type Telemetry } from "@homeostat/core/telemetry";
import { doneWith, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { ROOT_CONTEXT } from "@opentelemetry/api";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";
import { readScript, startFakeMessagesServer, type FakeMessagesServer } from "./agent-fake-messages.ts";
import { loadScenarios, makeCatalog, scriptFile, seed } from "./agent-eval.ts";
import { startAgentRig, type AgentRig } from "./agent-rig.ts";
import { SpanKindNumber, startOtlpReceiver } from "./otlp-receiver.ts";
import { messagesClient, runLoop } from "../services/agent/src/loop.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
const model = "claude-telemetry-test";

let t: TestEnv;
let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
let telemetry: Telemetry;
let fake: FakeMessagesServer;

before(async () => {
  otlp = await startOtlpReceiver();
  telemetry = startTelemetry("agent", {
    serviceName: undefined,
    resourceAttributes: {},
    traces: { url: `${otlp.url}/v1/traces`, protocol: "http/protobuf" },
    metrics: { url: `${otlp.url}/v1/metrics`, protocol: "http/protobuf" },
    metricExportIntervalMs: 500,
    spanBatchDelayMs: 100,
    sampler: { name: "always_on", ratio: 1 },
  });
  fake = await startFakeMessagesServer();
  t = await testEnv();
});

after(async () => {
  await telemetry?.shutdown();
  await otlp?.close();
  await fake?.close();
  await t?.cleanup();
});

test(
  "a handed-over repair: chat and execute_tool spans under the agent's reconcile span, in the failed build's trace; GenAI metrics",
  { timeout: 300_000 },
  async () => {
    const scenario = loadScenarios().find((s) => s.name === "makefile-misses-file")!;
    const key = `package/${scenario.package}` as const;
    const catalogDir = makeCatalog(path.join(t.dir, "factory"), [scenario]);
    const apiKey = "sk-ant-telemetry-test-0000";
    const rig: AgentRig = await startAgentRig(t, {
      catalogDir,
      client: messagesClient(apiKey, fake.url),
      settings: { ...t.config.agent, apiKey, model },
      apiKey,
    });
    const abort = new AbortController();
    try {
      await seed(rig, t.dir, scenario, key);
      fake.play(readScript(scriptFile(t.dir, scenario)));
      const reconciler = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "reconciler-test" }));
      const agentQueue = new WorkQueue(rig.agent, workQueueOptions(t.config, { log: quiet, owner: "agent-test" }));
      const runs = [
        reconciler.run({
          concurrency: 1,
          signal: abort.signal,
          classes: ["resync"],
          reconcile: async (item) =>
            doneWith([{ key: item.key, priority: "repair", cause: { type: "resync", detail: "handed to the agent: build failed 3 times" } }]),
        }),
        agentQueue.run({
          concurrency: 1,
          signal: abort.signal,
          classes: ["repair"],
          reconcile: (item, run) => rig.repair(item.key, run.signal).then(() => doneWith([])),
        }),
      ];
      // The failed build's result, as the reconciler's consumer sees it: the root of the trace.
      const failedBuild = await inSpan("process build-result", { parent: ROOT_CONTEXT, kind: SpanKind.CONSUMER }, async (span) => {
        await reconciler.enqueue({ key, priority: "resync", cause: { type: "built", detail: "build failed" } });
        return span.spanContext();
      });
      await waitFor("the agent's proposal", async () => ((await rig.state.get(key))?.agent?.startsWith("proposal ") ? true : undefined), 120_000);
      abort.abort();
      await Promise.all(runs);

      // A call the API refuses: an ERROR span with the status as error.type.
      fake.play(readScript(new URL("./fixtures/agent/loop/bad-request.json", import.meta.url)));
      const refused = await inSpan("reconcile repair", { parent: ROOT_CONTEXT, kind: SpanKind.CONSUMER }, async () =>
        runLoop({
          client: messagesClient(apiKey, fake.url),
          model,
          system: "s",
          tools: [],
          prompt: "p",
          limits: { maxTurns: 2, maxTokens: 10_000, maxWallMs: 30_000, turnOutputTokens: 256, apiTries: 1 },
          prices: { input: 0, output: 0, cacheWrite: 0, cacheRead: 0 },
          signal: new AbortController().signal,
        }),
      );
      assert.equal(refused.stop, "api_error");

      await telemetry.shutdown(); // flushes every span and metric
      const inTrace = otlp.spans.filter((s) => s.traceId === failedBuild.traceId);
      const agentRun = inTrace.find((s) => s.name === "reconcile repair");
      assert.ok(agentRun, `the agent's run is in the failed build's trace: ${[...new Set(inTrace.map((s) => s.name))].join(", ")}`);
      const children = inTrace.filter((s) => s.parentSpanId === agentRun.spanId);
      const chats = children.filter((s) => s.name === `chat ${model}`);
      assert.equal(chats.length, 4, "one span per model call (four turns)");
      for (const c of chats) {
        assert.equal(c.kind, SpanKindNumber.client);
        assert.equal(c.status, 0);
        assert.equal(c.attributes["gen_ai.operation.name"], "chat");
        assert.equal(c.attributes["gen_ai.provider.name"], "anthropic");
        assert.equal(c.attributes["gen_ai.request.model"], model);
        assert.equal(c.attributes["gen_ai.response.model"], model);
        assert.ok(Number(c.attributes["gen_ai.usage.input_tokens"]) > 0 && Number(c.attributes["gen_ai.usage.output_tokens"]) > 0);
        assert.ok("gen_ai.response.finish_reasons" in c.attributes);
      }
      const tools = children.filter((s) => s.name.startsWith("execute_tool "));
      assert.deepEqual(
        tools.map((s) => s.name).sort(),
        ["diff_sources", "edit_recipe", "read_build_log", "submit_result", "trial_build"].map((n) => `execute_tool ${n}`),
      );
      for (const s of tools) {
        assert.equal(s.attributes["gen_ai.operation.name"], "execute_tool");
        assert.equal(s.attributes["gen_ai.tool.name"], s.name.slice("execute_tool ".length));
        assert.match(String(s.attributes["gen_ai.tool.call.id"]), /^toolu_/);
      }
      const failed = otlp.spans.find((s) => s.name === `chat ${model}` && s.traceId !== failedBuild.traceId);
      assert.ok(failed);
      assert.equal(failed.status, 2);
      assert.equal(failed.attributes["error.type"], "400");

      const metric = (name: string) => otlp.metrics.find((m) => m.name === name);
      assert.equal(metric("gen_ai.client.token.usage")?.unit, "{token}");
      assert.equal(metric("gen_ai.client.operation.duration")?.unit, "s");
      assert.ok(metric("homeostat.agent.proposals"), "proposals by outcome");
    } finally {
      abort.abort();
      await rig.stop();
    }
  },
);
