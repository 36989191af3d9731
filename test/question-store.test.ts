/**
 * The agent's parked questions (@homeostat/proposals/questions) on real JetStream KV with the
 * services' own NATS identities: the agent parks, the queue service answers; of concurrent
 * answers exactly one wins and the others are told who answered; an answer to a key with no
 * question is refused; the entries never show up as proposals; removal takes only the revision
 * read, so a newer question stays; an envelope that does not fit a NATS message is refused.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ProposalStore } from "@homeostat/proposals";
import { QuestionNotWaiting, QuestionStore, type QuestionEnvelope } from "@homeostat/proposals/questions";
import type { Nats } from "@homeostat/core";
import { testEnv } from "./harness.ts";

const bucket = (n: Nats) => n.kvm.open(n.topology.bucket("proposals"), { allow_direct: true });

function envelope(question: string): QuestionEnvelope {
  return {
    v: 1,
    key: "package/hello",
    question,
    toolUseId: "toolu_1",
    trigger: "the build of 1.1 failed",
    previousPhase: "Failed",
    model: "claude-test",
    configDigest: `sha256:${"a".repeat(64)}`,
    remaining: { turns: 18, tokens: 1000, wallMs: 60_000 },
    usage: { input: 10, output: 5, cacheWrite: 0, cacheRead: 0 },
    turns: 2,
    messages: [{ role: "user", content: "Key package/hello: …" }],
    files: [{ path: "recipe.yaml", text: "name: hello\n" }],
    askedAt: new Date().toISOString(),
  };
}

test("questions: parked by the agent, answered once by compare-and-set, never listed as proposals", { timeout: 60_000 }, async () => {
  const t = await testEnv();
  try {
    const agent = new QuestionStore(await bucket(await t.connectAs("agent")));
    const queues = await Promise.all([1, 2, 3].map(async () => new QuestionStore(await bucket(await t.connectAs("queue")))));
    await assert.rejects(queues[0]!.answer("package/hello", "yes", "token:a"), QuestionNotWaiting, "no question, no answer");

    await agent.park(envelope("Which fix? Q1"));
    const outcomes = await Promise.allSettled(queues.map((q, i) => q.answer("package/hello", `answer ${i}`, `token:person${i}`)));
    const won = outcomes.filter((o) => o.status === "fulfilled");
    assert.equal(won.length, 1, "exactly one answer wins");
    for (const o of outcomes.filter((o) => o.status === "rejected")) {
      assert.ok(o.reason instanceof QuestionNotWaiting);
      assert.match((o.reason as Error).message, /answered (already|meanwhile) \(by token:person\d/);
    }
    const parked = (await agent.get("package/hello"))!;
    assert.equal(parked.envelope.answer?.text, (won[0] as PromiseFulfilledResult<QuestionEnvelope>).value.answer?.text);
    assert.deepEqual(await new ProposalStore(await bucket(t.nats)).list(), [], "a question is not a proposal");

    // A newer question (a later run asked again) survives the removal of the one read before it.
    await agent.park(envelope("Which fix now? Q2"));
    await agent.remove("package/hello", parked.revision);
    assert.equal((await agent.get("package/hello"))?.envelope.question, "Which fix now? Q2");
    await agent.remove("package/hello", (await agent.get("package/hello"))!.revision);
    assert.equal(await agent.get("package/hello"), undefined);

    await assert.rejects(agent.park({ ...envelope("big"), messages: [{ role: "user", content: "x".repeat(1024 * 1024) }] }), /too large to park/);
    await assert.rejects(queues[0]!.answer("package/hello", "yes", "token:a"), /not waiting for an answer/);
  } finally {
    await t.cleanup();
  }
});
