/**
 * A requeue-after that watches for something (a build's completion) is withdrawn when told it
 * happened, and only then: never while it stands for an enqueue too, never while the key runs,
 * never for another watch. Real NATS (test/harness.ts), a worker in this process.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { done, requeueAfter, WorkQueue, type ReconcileResult } from "@homeostat/workqueue";
import { exponentialBackoff, priorities, workItemSchema, type Key, type Logger, type WorkItem } from "@homeostat/core";
import { waitFor } from "../scripts/factory.ts";
import { queueIdle, testEnv, type TestEnv } from "./harness.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
let t: TestEnv;
let q: WorkQueue;

before(async () => {
  t = await testEnv({ HOMEOSTAT_LEASE_MS: "1500" });
  q = new WorkQueue(t.nats, {
    leaseMs: 1500,
    log: quiet,
    owner: "withdraw-test",
    maxAttempts: 3,
    backoff: exponentialBackoff(100, 1_000),
    maxFloorMs: 2_000,
    drainMs: 500,
  });
});
after(async () => void (await t?.cleanup()));

/** The key's queued schedules, every class. */
async function queued(key: Key): Promise<WorkItem[]> {
  const out: WorkItem[] = [];
  for (const p of priorities) {
    const m = await t.nats.jsm.streams.getMessage(t.nats.topology.stream("work"), { last_by_subj: t.nats.topology.workSubject(p, key) }).catch(() => null);
    if (m) out.push(workItemSchema.parse(m.json()));
  }
  return out;
}

/** A worker whose reconcile answers from `decide`; the runs it made, by key. */
function worker(decide: (item: WorkItem, n: number) => Promise<ReconcileResult> | ReconcileResult) {
  const runs: WorkItem[] = [];
  const ac = new AbortController();
  const loop = q.run({
    concurrency: 4,
    signal: ac.signal,
    reconcile: async (item) => {
      runs.push(item);
      return decide(item, runs.filter((r) => r.key === item.key).length);
    },
  });
  return { of: (key: Key) => runs.filter((r) => r.key === key), stop: async () => (ac.abort(), await loop) };
}

const enqueue = (key: Key) => q.enqueue({ key, priority: "release", cause: { type: "release", id: "r1" } });

test("a watching requeue-after is withdrawn when what it watches happened, and the key is idle", async () => {
  const key: Key = "package/withdrawn";
  const w = worker((_, n) => (n === 1 ? requeueAfter(60_000, "sha256:b1") : done));
  await enqueue(key);
  await waitFor("the look to be queued", async () => (await queued(key)).some((i) => i.watch === "sha256:b1"), 10_000);
  assert.equal(await q.withdraw(key, "sha256:other"), false, "another watch withdraws nothing");
  assert.equal((await queued(key)).length, 1);
  assert.equal(await q.withdraw(key, "sha256:b1"), true);
  assert.deepEqual(await queued(key), []);
  assert.equal(await q.withdraw(key, "sha256:b1"), false, "withdrawn once");
  await queueIdle(q, 10_000);
  await w.stop();
  assert.equal(w.of(key).length, 1, "the look never ran");
});

test("a look an enqueue merged into is not withdrawn: the enqueue runs", async () => {
  const key: Key = "package/merged";
  const w = worker((_, n) => (n === 1 ? requeueAfter(60_000, "sha256:b2") : done));
  await enqueue(key);
  await waitFor("the look to be queued", async () => (await queued(key)).some((i) => i.watch === "sha256:b2"), 10_000);
  // Held back so that the merged message is still queued when the withdrawal comes.
  await w.stop();
  assert.equal(await q.enqueue({ key, priority: "release", cause: { type: "advisory", id: "a1" }, notBefore: Date.now() + 30_000 }), "deduped");
  assert.deepEqual(
    (await queued(key)).map((i) => i.watch),
    [undefined],
    "rewritten without its watch",
  );
  assert.equal(await q.withdraw(key, "sha256:b2"), false);
  assert.equal((await queued(key)).length, 1, "the enqueue stays queued");
});

test("a key that runs is not withdrawn from: its look is not queued, the run decides", async () => {
  const key: Key = "package/running";
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const w = worker(async (_, n) => {
    if (n === 1) return requeueAfter(60_000, "sha256:b3");
    await held;
    return done;
  });
  await enqueue(key);
  await waitFor("the look to be queued", async () => (await queued(key)).some((i) => i.watch === "sha256:b3"), 10_000);
  await enqueue(key); // pulls the look earlier: the key runs (and holds) with a merged schedule
  await waitFor("the second run", async () => w.of(key).length === 2, 10_000);
  assert.equal(await q.withdraw(key, "sha256:b3"), false);
  release();
  await waitFor("the run to end", async () => (await q.stats()).running === 0, 10_000);
  await w.stop();
});

test("a look that ran and requeued plainly watches nothing: it is never withdrawn", async () => {
  const key: Key = "package/plain";
  // The look comes due and runs (the build outlived it); its run asks for a plain requeue-after.
  const w = worker((_, n) => (n === 1 ? requeueAfter(300, "sha256:b4") : n === 2 ? requeueAfter(60_000) : done));
  await enqueue(key);
  await waitFor("the look to run", async () => w.of(key).length === 2, 10_000);
  assert.equal(w.of(key)[1]?.watch, "sha256:b4", "the look ran with its watch");
  await waitFor("the plain requeue to be queued", async () => (await queued(key)).length === 1 && (await q.stats()).running === 0, 10_000);
  await w.stop();
  assert.equal((await queued(key))[0]?.watch, undefined);
  assert.equal(await q.withdraw(key, "sha256:b4"), false);
});
