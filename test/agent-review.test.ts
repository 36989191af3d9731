/**
 * Reviewing the agent's proposals end to end, through the running services (ingest, queue,
 * reconciler, builder, signer and agent as processes, each with its own NATS identity) with the
 * real @anthropic-ai/sdk against the fake Messages server (test/agent-fake-messages.ts) and the
 * real `homeostat` command line:
 *
 * - a release whose build fails (hello 1.1 moved code into a file its Makefile misses) is
 *   handed to the agent, which proposes a fix; `homeostat approve` has the agent apply it to the
 *   catalog, the factory rebuilds and signs it, `homeostat verify` passes on the image holding
 *   it, and `homeostat why` names the proposal; a second approval is a clear error;
 * - another package's proposal rejected with a reason: the agent's next attempt is told the
 *   reason, and resubmitting the very same change is refused by the validators;
 * - with HOMEOSTAT_AGENT_APPLY=validated a proposal that passed every validator is applied
 *   without anyone approving it.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import type { KeyStatus } from "@homeostat/core";
import type { Proposal } from "@homeostat/proposals";
import { getKeyStatus } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { startFakeMessagesServer, type FakeMessagesServer, type ScriptedStep } from "./agent-fake-messages.ts";
import { helloCatalog, helloFix, helloRepairScript, runHomeostat, startAgentFactory, toolTurn, type AgentFactory } from "./agent-rig.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const apiKey = "sk-ant-test-review-0123456789";

const finalText = (text: string): ScriptedStep => ({
  content: [{ type: "text", text }],
  stop_reason: "end_turn",
  usage: { input_tokens: 900, output_tokens: 60 },
  repeat: 1,
});

describe("reviewing the agent's proposals end to end", { timeout: 900_000 }, () => {
  let t: TestEnv;
  let factory: AgentFactory;
  let fake: FakeMessagesServer;
  let catalogDir: string;
  let sha: Record<string, string>;

  const status = (key: string) => getKeyStatus(factory.client, key);
  const run = async (args: string[]) => runHomeostat(args, factory.cli);
  const json = <T>(args: string[]) => factory.homeostatJson<T>(args);
  const postRelease = (pkg: string) => factory.postHelloRelease(pkg);
  const proposalOf = (key: string, wanted: Proposal["status"]) =>
    waitFor(
      `a proposal of ${key} in status ${wanted}`,
      async () => (await json<Proposal[]>(["proposals", "--key", key])).find((p) => p.status === wanted),
      300_000,
      500,
    );
  const readyAt = (key: string, version: string, extra: (s: KeyStatus) => boolean = () => true) =>
    waitFor(
      `${key} Ready at ${version}`,
      async () => {
        const s = await status(key);
        return s.phase === "Ready" && s.actual?.version === version && extra(s) ? s : undefined;
      },
      300_000,
      500,
    );

  before(async () => {
    t = await testEnv();
    fake = await startFakeMessagesServer();
    ({ catalogDir, sha } = helloCatalog(path.join(t.dir, "factory"), ["hello", "hola"]));
    mkdirSync(path.join(catalogDir, "images"), { recursive: true });
    writeFileSync(
      path.join(catalogDir, "images", "hello-image.yaml"),
      ["name: hello-image", "packages: [hello]", "entrypoint: [/usr/bin/hello]", 'user: "65532"', ""].join("\n"),
    );
    factory = await startAgentFactory(t, {
      catalogDir,
      sha,
      messagesUrl: fake.url,
      apiKey,
      env: { HOMEOSTAT_AGENT_APPLY: "review" },
      ready: ["package/hello", "package/hola", "image/hello-image"],
    });
  });

  after(async () => {
    await factory?.stop();
    await fake?.close();
    await t?.cleanup();
  });

  test("failing release -> proposal -> homeostat approve -> rebuilt, signed, verified, and why names the proposal", async () => {
    const key = "package/hello";
    fake.play(helloRepairScript(sha["1.1"]!, "main.o util.o"));
    await postRelease("hello");
    const proposal = await proposalOf(key, "open");
    assert.deepEqual(
      proposal.validators.filter((v) => v.status !== "passed"),
      [],
    );
    const shown = await run(["proposal", proposal.id, "--diff"]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /^--- a\/packages\/hello\.yaml\n\+\+\+ b\/packages\/hello\.yaml\n/);
    assert.match(shown.stdout, /^\+ +- "?make hello CC='cc -static' OBJS='main.o util.o'"?$/m);
    assert.match(shown.stdout, /^- {4}- make hello CC='cc -static'$/m);
    assert.match((await status(key)).phase, /Failed|DeadLettered/, "nothing is applied before the review");
    const imageBefore = (await status("image/hello-image")).actual!.inputDigest;

    const approved = await run(["approve", proposal.id]);
    assert.equal(approved.code, 0, approved.stderr);
    assert.match(approved.stdout, /approved by token:launcher/);
    const again = await run(["approve", proposal.id]);
    assert.equal(again.code, 1, "a second approval is refused");
    assert.match(again.stderr, /is (approved|applied) \(by token:launcher/);

    const rebuilt = await readyAt(key, "1.1");
    const why = await run(["why", key]);
    assert.equal(why.code, 0, why.stderr);
    assert.match(why.stdout, new RegExp(`built from the agent's proposal ${proposal.id}`));
    assert.equal(rebuilt.builds?.find((b) => b.inputDigest === rebuilt.actual!.inputDigest)?.proposal, proposal.id);
    assert.match(readFileSync(path.join(catalogDir, "packages", "hello.yaml"), "utf8"), /OBJS='main.o util.o'/, "applied to the catalog in place");
    const applied = await json<Proposal>(["proposal", proposal.id]);
    assert.equal(applied.status, "applied");
    assert.equal(applied.review?.by, "token:launcher");

    // The image holding hello is rebuilt with it, signed, and verifies offline.
    const image = await waitFor(
      "image/hello-image rebuilt with hello 1.1",
      async () => {
        const s = await status("image/hello-image");
        return s.phase === "Ready" && s.actual && s.actual.inputDigest !== imageBefore ? s : undefined;
      },
      300_000,
      500,
    );
    const location = image.actual!.outputs.location;
    const verified = await runHomeostat(["verify", location], { HOMEOSTAT_DATA: t.env.HOMEOSTAT_DATA!, HOMEOSTAT_TRUSTED_KEYS: "" });
    assert.equal(verified.code, 0, verified.stderr);
  });

  test("a rejected proposal's reason reaches the next attempt, which may not propose the same change", async () => {
    const key = "package/hola";
    const reason = "do not pass OBJS on the command line: REVIEW-REASON-7f3a";
    fake.play([
      ...helloRepairScript(sha["1.1"]!, "main.o util.o"),
      // The next attempt: the same change again (refused), then an explanation without a proposal.
      toolTurn(["edit_recipe", helloFix(sha["1.1"]!, "main.o util.o")]),
      toolTurn(["submit_result", { rationale: "the same fix" }]),
      finalText("The reviewer refused this change and I have no other fix to offer."),
    ]);
    await postRelease("hola");
    const proposal = await proposalOf(key, "open");
    const before = fake.requests.length;
    const rejected = await run(["reject", proposal.id, "--reason", reason]);
    assert.equal(rejected.code, 0, rejected.stderr);
    const noReason = await run(["reject", proposal.id]);
    assert.equal(noReason.code, 64, "reject without --reason is a usage error");

    const firstOfNext = await waitFor("the agent's next attempt", async () => fake.requests[before], 300_000, 500);
    const prompt = JSON.stringify((firstOfNext as { messages: unknown[] }).messages[0]);
    assert.ok(prompt.includes(reason), `the next attempt's prompt names the rejection's reason: ${prompt.slice(0, 2000)}`);
    assert.ok(prompt.includes(proposal.id));
    const refused = await waitFor(
      "the resubmission's validators",
      async () =>
        fake.requests
          .slice(before)
          .map((r) => JSON.stringify(r))
          .find((r) => r.includes("a person already rejected exactly this change")),
      300_000,
      500,
    );
    assert.ok(refused);
    await waitFor("the agent to give up", async () => /no proposal/.test((await status(key)).agent ?? "") || undefined, 300_000, 500);
    assert.equal((await json<Proposal[]>(["proposals", "--key", key, "--status", "open"])).length, 0);
    assert.equal((await json<Proposal>(["proposal", proposal.id])).review?.reason, reason);
  });

  test("HOMEOSTAT_AGENT_APPLY=validated applies a proposal that passed every validator without approval", async () => {
    const key = "package/hola";
    factory.env.HOMEOSTAT_AGENT_APPLY = "validated";
    await factory.restart("agent");
    fake.play(helloRepairScript(sha["1.1"]!, "util.o main.o"));
    const queued = await run(["enqueue", key, "--priority", "repair"]);
    assert.equal(queued.code, 0, queued.stderr);
    const applied = await proposalOf(key, "applied");
    assert.equal(applied.review?.by, "policy:validated");
    const rebuilt = await readyAt(key, "1.1");
    assert.equal(rebuilt.builds?.find((b) => b.inputDigest === rebuilt.actual!.inputDigest)?.proposal, applied.id);
    const why = await run(["why", key]);
    assert.match(why.stdout, new RegExp(`built from the agent's proposal ${applied.id}`));
  });
});
