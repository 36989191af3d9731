/**
 * The hand-over on the real work queue: a key the traditional reconciler returns as a `repair`
 * child of itself runs next in the agent (connected with the agent's own NATS identity), never in
 * both at once; a disabled agent notes it on the key and leaves it in NeedsAttention.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { reconcilerPriorities, StateStore, type Logger, type WorkItem } from "@homeostat/core";
import { doneWith, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { testEnv } from "./harness.ts";
import { disabledRepair } from "../services/agent/src/repair.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };

test("a key handed over runs in the agent's class alone; a disabled agent leaves it in NeedsAttention and says so", { timeout: 60_000 }, async () => {
  const t = await testEnv();
  const abort = new AbortController();
  try {
    const key = "package/lodash" as const;
    const state = new StateStore(t.buckets.state);
    await state.update(key, () => ({ ...StateStore.initial(key), phase: "NeedsAttention", advisories: ["GHSA-x"] }));
    const ran: string[] = [];
    let running = 0;
    const reconcilerQueue = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "reconciler-test" }));
    const agentNats = await t.connectAs("agent");
    const agentQueue = new WorkQueue(agentNats, workQueueOptions(t.config, { log: quiet, owner: "agent-test" }));
    const disabled = disabledRepair(new StateStore(await agentNats.kvm.open(agentNats.topology.bucket("state"), { allow_direct: true })));
    const track = (who: string, f: (item: WorkItem) => Promise<ReturnType<typeof doneWith>>) => async (item: WorkItem) => {
      assert.equal(running++, 0, "never worked by both at once");
      ran.push(`${who}:${item.priority}`);
      await new Promise((r) => setTimeout(r, 50));
      try {
        return await f(item);
      } finally {
        running--;
      }
    };
    const r1 = reconcilerQueue.run({
      concurrency: 2,
      signal: abort.signal,
      classes: reconcilerPriorities,
      reconcile: track("reconciler", async (item) =>
        doneWith([{ key: item.key, priority: "repair", cause: { type: "advisory", detail: "handed to the agent: needs attention" } }]),
      ),
    });
    const r2 = agentQueue.run({ concurrency: 2, signal: abort.signal, classes: ["repair"], reconcile: track("agent", disabled) });
    await reconcilerQueue.enqueue({ key, priority: "advisory", cause: { type: "advisory", id: "GHSA-x" } });
    const deadline = Date.now() + 20_000;
    while (!(await state.get(key))?.agent && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const s = (await state.get(key))!;
    assert.deepEqual(ran, ["reconciler:advisory", "agent:repair"]);
    assert.equal(s.phase, "NeedsAttention");
    assert.match(s.agent ?? "", /^agent disabled/);
    assert.deepEqual(await reconcilerQueue.stats(), {
      depth: { advisory: 0, release: 0, dependency: 0, resync: 0, repair: 0 },
      running: 0,
      retrying: 0,
      deadLetters: 0,
    });
    abort.abort();
    await Promise.all([r1, r2]);
    await agentNats.nc.close();
  } finally {
    abort.abort();
    await t.cleanup();
  }
});
