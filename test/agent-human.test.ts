/**
 * The agent asking a person, running out of budget, and killed mid-run, end to end through the
 * running services (ingest, queue, reconciler, builder, signer and agent as processes, each with
 * its own NATS identity), the real @anthropic-ai/sdk against the fake Messages server
 * (test/agent-fake-messages.ts) and the real `homeostat` command line:
 *
 * - ask_human parks the conversation and the key waits in WaitingForAnswer with the question;
 *   `homeostat answer` resumes it (the model gets the answer as the tool_result of its call) and
 *   the run ends in a proposal; a second answer is refused;
 * - a question answered after the agent's configuration changed starts over instead;
 * - a run that spends its turns is retried later, the status saying why, and after the queue's
 *   attempts the key is dead-lettered, the agent never restarting;
 * - an agent SIGKILLed mid-run: the key is picked up again after its lease by the restarted
 *   agent, and exactly one proposal is recorded; killed while resuming an answered question, the
 *   restarted agent resumes it again.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import type { Proposal } from "@homeostat/proposals";
import { getKeyStatus } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { startFakeMessagesServer, type FakeMessagesServer, type ScriptedStep } from "./agent-fake-messages.ts";
import { helloCatalog, helloRepairScript, runHomeostat, startAgentFactory, toolTurn, type AgentFactory } from "./agent-rig.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const apiKey = "sk-ant-test-human-0123456789";
const packages = ["hello", "hola", "ciao", "salut", "privet"] as const;

type Sent = { messages: { role: string; content: string | { type: string; id?: string; tool_use_id?: string; content?: string; name?: string }[] }[] };

describe("the agent asks a person, runs out of budget, is killed mid-run", { timeout: 1_200_000 }, () => {
  let t: TestEnv;
  let factory: AgentFactory;
  let fake: FakeMessagesServer;
  let sha: Record<string, string>;
  let cli: Record<string, string>;

  const status = (key: string) => getKeyStatus(factory.client, key);
  const proposals = (key: string) => factory.homeostatJson<Proposal[]>(["proposals", "--key", key]);
  const postRelease = (pkg: string) => factory.postHelloRelease(pkg);
  const waitingFor = (key: string) =>
    waitFor(
      `${key} WaitingForAnswer`,
      async () => {
        const s = await status(key);
        return s.phase === "WaitingForAnswer" ? s : undefined;
      },
      300_000,
      500,
    );
  const proposalOf = (key: string) => waitFor(`a proposal of ${key}`, async () => (await proposals(key)).find((p) => p.status === "open"), 300_000, 500);
  /** The requests the fake server got from `from` on. */
  const sentSince = (from: number) => fake.requests.slice(from) as Sent[];

  before(async () => {
    t = await testEnv();
    fake = await startFakeMessagesServer();
    const catalog = helloCatalog(path.join(t.dir, "factory"), packages);
    sha = catalog.sha;
    factory = await startAgentFactory(t, {
      ...catalog,
      messagesUrl: fake.url,
      apiKey,
      env: { HOMEOSTAT_AGENT_MAX_TURNS: "20" },
      ready: packages.map((p) => `package/${p}`),
    });
    cli = factory.cli;
  });

  after(async () => {
    await factory?.stop();
    await fake?.close();
    await t?.cleanup();
  });

  test("ask_human -> WaitingForAnswer -> homeostat answer -> resumed with the answer as the tool_result -> proposal", async () => {
    const key = "package/hello";
    const question = "Should the fix name util.o in OBJS, or change the Makefile with a patch? QUESTION-5c1e";
    const answer = "Name util.o in OBJS; no patches. ANSWER-9d2b";
    const from = fake.requests.length;
    fake.play([toolTurn(["read_build_log", {}]), toolTurn(["ask_human", { question }]), ...helloRepairScript(sha["1.1"]!, "main.o util.o").slice(1)]);
    await postRelease("hello");
    const waiting = await waitingFor(key);
    assert.match(waiting.agent ?? "", /QUESTION-5c1e/, "the status carries the question");
    const shown = await runHomeostat(["get", key], cli);
    assert.match(shown.stdout, /WaitingForAnswer/);
    assert.match(shown.stdout, /QUESTION-5c1e/);
    assert.equal(sentSince(from).length, 2, "the run stopped at the question");
    // The reconciler leaves a waiting key alone.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal((await status(key)).phase, "WaitingForAnswer");

    const notWaiting = await runHomeostat(["answer", "package/hola", "anything"], cli);
    assert.equal(notWaiting.code, 1, "an answer to a key that is not waiting is refused");
    assert.match(notWaiting.stderr, /package\/hola is not waiting for an answer \(FAILED_PRECONDITION\)/);
    assert.equal((await runHomeostat(["answer", key, "   "], cli)).code, 64, "an empty answer is a usage error");

    const answered = await runHomeostat(["answer", key, answer], cli);
    assert.equal(answered.code, 0, answered.stderr);
    assert.match(answered.stdout, /answered by token:launcher/);
    const proposal = await proposalOf(key);
    assert.deepEqual(
      proposal.validators.filter((v) => v.status !== "passed"),
      [],
    );
    const again = await runHomeostat(["answer", key, answer], cli);
    assert.equal(again.code, 1, "a second answer is refused");

    const sent = sentSince(from);
    const asked = sent[1]!;
    const resumed = sent[2]!;
    // The resumed conversation is the parked one, with the answer as the ask_human call's result.
    assert.deepEqual(resumed.messages[0], asked.messages[0], "resumed, not started over");
    const askCall = (resumed.messages.at(-2)!.content as { type: string; id?: string; name?: string }[]).find((c) => c.name === "ask_human")!;
    const results = resumed.messages.at(-1)!.content as { type: string; tool_use_id?: string; content?: string }[];
    assert.deepEqual(
      results.map((r) => [r.type, r.tool_use_id, r.content]),
      [["tool_result", askCall.id, answer]],
    );
    assert.equal(proposal.turns, 5, "the turns before the question count");
    assert.equal((await status(key)).phase !== "WaitingForAnswer", true);
  });

  test("a question answered after the agent's configuration changed starts over", async () => {
    const key = "package/hola";
    fake.play([toolTurn(["ask_human", { question: "Which compiler flags does the project want? QUESTION-77aa" }])]);
    await postRelease("hola");
    await waitingFor(key);
    // Another turn budget: the parked conversation was made under other limits.
    factory.env.HOMEOSTAT_AGENT_MAX_TURNS = "19";
    await factory.restart("agent");
    const from = fake.requests.length;
    fake.play(helloRepairScript(sha["1.1"]!, "main.o util.o"));
    const answered = await runHomeostat(["answer", key, "Whatever works. ANSWER-3f0c"], cli);
    assert.equal(answered.code, 0, answered.stderr);
    await proposalOf(key);
    const first = sentSince(from)[0]!;
    assert.equal(first.messages.length, 1, "a new conversation");
    assert.ok(!JSON.stringify(first).includes("ANSWER-3f0c"), "the parked conversation is not resumed");
    const log = readFileSync(path.join(t.dir, "logs", "agent.log"), "utf8");
    assert.match(log, /starting over instead of resuming: the model or the configuration changed since the question/);
  });

  test("a run that spends its turns is retried later with the reason in the status, then dead-lettered; the agent never restarts", async () => {
    const key = "package/ciao";
    factory.env.HOMEOSTAT_AGENT_MAX_TURNS = "2";
    factory.env.HOMEOSTAT_QUEUE_MAX_ATTEMPTS = "2";
    factory.env.HOMEOSTAT_QUEUE_BACKOFF_BASE_MS = "2000";
    await factory.restart("agent");
    const agent = factory.processes.get("agent")!;
    const from = fake.requests.length;
    const reading: ScriptedStep = { ...toolTurn(["read_build_log", {}]), repeat: 100 };
    fake.play([reading]);
    await postRelease("ciao");
    const retrying = await waitFor(
      "the budget's exhaustion in the status",
      async () => {
        const s = await status(key);
        return /no proposal yet: stopped after 2 turns \(HOMEOSTAT_AGENT_MAX_TURNS\).*tries again later/.test(s.agent ?? "") ? s : undefined;
      },
      300_000,
      250,
    );
    assert.ok(retrying);
    const dead = await waitFor(
      `${key} DeadLettered`,
      async () => {
        const s = await status(key);
        return s.phase === "DeadLettered" ? s : undefined;
      },
      300_000,
      500,
    );
    assert.match(dead.lastError ?? "", /budget ran out/);
    const runs = sentSince(from).filter((r) => r.messages.length === 1).length;
    assert.equal(runs, 2, "one run per attempt, then no more");
    assert.equal(sentSince(from).length, 4, "two turns per run");
    assert.equal(agent.exitCode, null, "the agent did not exit");
    assert.equal(agent.signalCode, null);
    assert.equal(factory.processes.get("agent"), agent, "the same process throughout");
  });

  test("an agent SIGKILLed mid-run: the key is picked up after its lease, and one proposal is recorded", async () => {
    const key = "package/salut";
    factory.env.HOMEOSTAT_AGENT_MAX_TURNS = "20";
    delete factory.env.HOMEOSTAT_QUEUE_MAX_ATTEMPTS;
    delete factory.env.HOMEOSTAT_QUEUE_BACKOFF_BASE_MS;
    // The killed agent's lease on the key ends after this.
    factory.env.HOMEOSTAT_LEASE_MS = "5000";
    await factory.restart("agent");
    const from = fake.requests.length;
    // The first run is kept busy by an overloaded API asking to come back in a minute; it is killed meanwhile.
    fake.play([
      toolTurn(["read_build_log", {}]),
      { error: { status: 529, type: "overloaded_error", message: "Overloaded", retryAfter: "60" }, repeat: 1 },
      ...helloRepairScript(sha["1.1"]!, "main.o util.o"),
    ]);
    await postRelease("salut");
    await waitFor("the first run waiting on the overloaded API", async () => sentSince(from).length >= 2 || undefined, 300_000, 100);
    factory.processes.get("agent")!.kill("SIGKILL");
    await waitFor("the killed agent gone", async () => factory.processes.get("agent")!.signalCode === "SIGKILL" || undefined, 30_000, 50);
    await factory.restart("agent");
    const proposal = await proposalOf(key);
    const sent = sentSince(from);
    assert.equal(sent.filter((r) => r.messages.length === 1).length, 2, "the killed run and the one after it");
    // Settled: the run ended, nothing else queued for the key makes another.
    await waitFor("the agent's note on the proposal", async () => /waits for review/.test((await status(key)).agent ?? "") || undefined, 120_000, 500);
    await new Promise((r) => setTimeout(r, 5000));
    const all = await proposals(key);
    assert.deepEqual(
      all.map((p) => p.id),
      [proposal.id],
      "exactly one proposal",
    );
  });

  test("an agent SIGKILLed while resuming an answered question resumes it again after the lease", async () => {
    const key = "package/privet";
    const answer = "Name util.o in OBJS. ANSWER-4e1d";
    const from = fake.requests.length;
    fake.play([
      toolTurn(["ask_human", { question: "OBJS or a patch? QUESTION-b8c0" }]),
      // The resumed run is kept busy by an overloaded API; it is killed meanwhile.
      { error: { status: 529, type: "overloaded_error", message: "Overloaded", retryAfter: "60" }, repeat: 1 },
      ...helloRepairScript(sha["1.1"]!, "main.o util.o").slice(1),
    ]);
    await postRelease("privet");
    await waitingFor(key);
    const answered = await runHomeostat(["answer", key, answer], cli);
    assert.equal(answered.code, 0, answered.stderr);
    await waitFor("the resumed run waiting on the overloaded API", async () => sentSince(from).length >= 2 || undefined, 300_000, 100);
    assert.equal((await status(key)).phase, "WaitingForAnswer", "the key waits until the answered run ends");
    factory.processes.get("agent")!.kill("SIGKILL");
    await waitFor("the killed agent gone", async () => factory.processes.get("agent")!.signalCode === "SIGKILL" || undefined, 30_000, 50);
    await factory.restart("agent");
    const proposal = await proposalOf(key);
    const again = sentSince(from)[2]!;
    const results = again.messages.at(-1)!.content as { type: string; content?: string }[];
    assert.deepEqual(
      results.map((r) => [r.type, r.content]),
      [["tool_result", answer]],
      "the restarted agent resumed the answered conversation",
    );
    assert.equal(again.messages.length, 3);
    assert.notEqual((await status(key)).phase, "WaitingForAnswer");
    assert.deepEqual(
      (await proposals(key)).map((p) => p.id),
      [proposal.id],
    );
  });
});
