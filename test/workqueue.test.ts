/**
 * The work queue's per-key guarantees on a real JetStream: dedup, exclusivity, exactly one
 * rerun after re-adds during a run, and nothing lost when a worker dies.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { createLogger, WorkQueue, done, type Key, type WorkItem } from "@homeostat/core";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const log = createLogger("queue");
const item = (key: Key): WorkItem => ({ v: 1, key, priority: "release", cause: { type: "manual" } });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("work queue", { timeout: 120_000 }, () => {
  let t: TestEnv;
  before(async () => {
    t = await testEnv({ HOMEOSTAT_LEASE_MS: "1500" });
  });
  after(async () => t?.cleanup());

  const queue = (owner: string) => new WorkQueue(t.nats, { leases: t.buckets.leases, leaseMs: t.config.leaseMs, log, owner });

  test("a key enqueued many times while queued is queued once", async () => {
    const q = queue("a");
    const outcomes = await Promise.all(Array.from({ length: 50 }, () => q.enqueue(item("package/dedup"))));
    assert.equal(outcomes.filter((o) => o === "added").length, 1);
    assert.equal(outcomes.filter((o) => o === "deduped").length, 49);

    const runs: string[] = [];
    const ac = new AbortController();
    const running = q.run({ concurrency: 4, signal: ac.signal, reconcile: async (w) => (runs.push(w.key), done) });
    await waitFor("the run", async () => runs.length === 1, 10_000);
    await sleep(500);
    ac.abort();
    await running;
    assert.deepEqual(runs, ["package/dedup"]);
  });

  test("re-adds during a run cause exactly one more run, never overlapping, across workers", async () => {
    const key: Key = "package/rerun";
    const a = queue("a");
    const b = queue("b");
    let active = 0;
    let overlaps = 0;
    let runs = 0;
    const ac = new AbortController();
    let release!: () => void;
    const firstRunMayEnd = new Promise<void>((r) => (release = r));
    const reconcile = async () => {
      active++;
      if (active > 1) overlaps++;
      runs++;
      if (runs === 1) await firstRunMayEnd;
      else await sleep(50);
      active--;
      return done;
    };
    const workers = [a.run({ concurrency: 4, signal: ac.signal, reconcile }), b.run({ concurrency: 4, signal: ac.signal, reconcile })];
    assert.equal(await a.enqueue(item(key)), "added");
    await waitFor("the first run to start", async () => runs === 1, 10_000);
    const outcomes = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).enqueue(item(key))));
    assert.ok(outcomes.every((o) => o === "rerun"), `outcomes: ${outcomes.join(",")}`);
    release();
    await waitFor("the rerun", async () => runs === 2, 10_000);
    await sleep(1_000);
    ac.abort();
    await Promise.all(workers);
    assert.equal(runs, 2, "exactly one rerun");
    assert.equal(overlaps, 0, "never two runs of the key at once");
  });

  test("a worker killed with SIGKILL loses its lease and the key runs again", async () => {
    const key: Key = "package/killed";
    const child = spawn(process.execPath, [path.join(import.meta.dirname, "fixtures", "hanging-worker.ts")], {
      env: { ...process.env, ...t.env },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const started = new Promise<void>((resolve) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("running") && resolve()));
    await waitFor("the worker to connect", async () => child.stdout!.readable, 5_000);
    await queue("a").enqueue(item(key));
    await started;
    child.kill("SIGKILL");

    const runs: string[] = [];
    const ac = new AbortController();
    const running = queue("b").run({ concurrency: 1, signal: ac.signal, reconcile: async (w) => (runs.push(w.key), done) });
    await waitFor("the key to run again after the lease expired", async () => runs.length === 1, 20_000);
    ac.abort();
    await running;
    assert.deepEqual(runs, [key]);
  });
});
