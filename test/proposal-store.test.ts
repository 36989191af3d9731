/**
 * The proposals store (@homeostat/proposals) on real JetStream KV with the services' own NATS
 * identities: the agent creates, the queue service reviews; of concurrent approvals exactly one
 * wins and the others get a ProposalConflict naming the reviewer; a reviewed proposal cannot be
 * reviewed again; filters and order; no other service may write the bucket.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ProposalConflict, ProposalNotFound, ProposalStore, type Proposal } from "@homeostat/proposals";
import type { Nats } from "@homeostat/core";
import { testEnv } from "./harness.ts";

const digest = (c: string) => `sha256:${c.repeat(64)}`;
function proposal(id: string, key: Proposal["key"], createdAt: string): Proposal {
  return {
    id,
    key,
    status: "open",
    trigger: "the build of 1.1 failed",
    candidateDigest: digest("a"),
    file: `packages/${key.slice("package/".length)}.yaml`,
    base: { revision: digest("b"), recipeDigest: digest("c") },
    recipe: "name: x\n",
    patches: [],
    diff: "",
    rationale: "because",
    validators: [{ name: "trial-build", status: "passed", detail: "ok" }],
    trialLogDigests: [digest("d")],
    transcriptDigest: digest("e"),
    turns: 3,
    tokens: { input: 1, output: 2, cacheWrite: 0, cacheRead: 0 },
    costUsd: 0.01,
    createdAt,
  };
}

const open = async (n: Nats) => new ProposalStore(await n.kvm.open(n.topology.bucket("proposals"), { allow_direct: true }));

test("proposals: created by the agent, reviewed once by compare-and-set, listed by key and status", { timeout: 60_000 }, async () => {
  const t = await testEnv();
  try {
    const agent = await open(await t.connectAs("agent"));
    const queues = await Promise.all([open(await t.connectAs("queue")), open(await t.connectAs("queue")), open(await t.connectAs("queue"))]);
    await agent.create(proposal("hello-2", "package/hello", "2026-11-26T04:00:02.000Z"));
    await agent.create(proposal("hello-1", "package/hello", "2026-11-26T04:00:01.000Z"));
    await agent.create(proposal("hola-1", "package/hola", "2026-11-26T04:00:00.000Z"));
    await assert.rejects(agent.create(proposal("hello-1", "package/hello", "2026-11-26T04:00:09.000Z")), "create never overwrites");

    assert.deepEqual(
      (await queues[0]!.list()).map((p) => p.id),
      ["hola-1", "hello-1", "hello-2"],
    );
    assert.deepEqual(
      (await queues[0]!.list({ key: "package/hello" })).map((p) => p.id),
      ["hello-1", "hello-2"],
    );

    const outcomes = await Promise.allSettled(
      queues.map((q, i) =>
        q.transition("hello-1", ["open"], (p) => ({ ...p, status: "approved", review: { by: `token:reviewer${i}`, at: new Date().toISOString() } })),
      ),
    );
    const won = outcomes.filter((o) => o.status === "fulfilled");
    assert.equal(won.length, 1, "exactly one approval wins");
    for (const o of outcomes) if (o.status === "rejected") assert.ok(o.reason instanceof ProposalConflict, String(o.reason));
    const winner = (won[0] as PromiseFulfilledResult<Proposal>).value.review!.by;
    const stored = await agent.get("hello-1");
    assert.equal(stored?.status, "approved");
    assert.equal(stored?.review?.by, winner);
    await assert.rejects(
      queues[0]!.transition("hello-1", ["open"], (p) => ({ ...p, status: "rejected" })),
      (err: Error) => err instanceof ProposalConflict && err.message.includes(`approved (by ${winner}`),
    );
    await assert.rejects(
      queues[0]!.transition("nope", ["open"], (p) => p),
      (err: Error) => err instanceof ProposalNotFound,
    );
    assert.deepEqual(
      (await agent.list({ status: "open" })).map((p) => p.id),
      ["hola-1", "hello-2"],
    );

    // Nobody else writes proposals.
    const ingest = await t.connectAs("ingest");
    await assert.rejects(async () => (await open(ingest)).create(proposal("x-1", "package/x", "2026-11-26T04:00:00.000Z")));
  } finally {
    await t.cleanup();
  }
});
