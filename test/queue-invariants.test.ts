/**
 * The work queue's invariants under load: about 100,000 enqueues of 5,000 keys (one in five on
 * 50 hot keys) in random classes (some not before a moment ahead), run by 8 workers in 2
 * processes with random delays and failures. Afterwards:
 *  - no key ever ran twice at once (checked outside the queue, in Redis);
 *  - every key's last run began after its last enqueue began (nothing enqueued during or after
 *    a run is left unrun), so no key is lost;
 *  - the queue is empty: nothing queued, running, retrying or dead.
 * QUEUE_INVARIANT_ENQUEUES and QUEUE_INVARIANT_KEYS shrink it for a quick local run.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { WorkQueue } from "@homeostat/workqueue";
import { exponentialBackoff, priorities, type Key, type Logger } from "@homeostat/core";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const enqueues = Number(process.env.QUEUE_INVARIANT_ENQUEUES ?? "100000");
const keyCount = Number(process.env.QUEUE_INVARIANT_KEYS ?? "5000");
const hotKeys = 50;
const now = () => performance.timeOrigin + performance.now();
const quiet: Logger = { info() {}, warn() {}, error() {} };

type RunLine = { key: Key; start: number; end: number; overlap: boolean; failed: boolean };

let t: TestEnv;
before(async () => {
  t = await testEnv({ HOMEOSTAT_LEASE_MS: "5000" });
});
after(async () => {
  const keys = await t.redis.keys(`${t.prefix}:running:*`);
  if (keys.length) await t.redis.del(...keys);
  await t?.cleanup();
});

/** What keeps the queue from draining: its stats and a few run records and queued messages. */
async function leftBehind(q: WorkQueue): Promise<string> {
  const bucket = `KV_${t.nats.topology.bucket("runs")}`;
  const info = await t.nats.jsm.streams.info(bucket, { subjects_filter: ">" });
  const records = await Promise.all(
    Object.keys(info.state.subjects ?? {})
      .slice(0, 5)
      .map(async (subject) => {
        const m = await t.nats.jsm.streams.getMessage(bucket, { last_by_subj: subject });
        return `${subject}=${m ? new TextDecoder().decode(m.data) : "?"}`;
      }),
  );
  const work = await t.nats.jsm.streams.info(t.nats.topology.stream("work"), { subjects_filter: ">" });
  return JSON.stringify({ stats: await q.stats(), records, queued: Object.keys(work.state.subjects ?? {}).slice(0, 5) });
}

function startWorker(): { child: ChildProcess; ready: Promise<void>; runs: RunLine[]; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [path.join(import.meta.dirname, "fixtures", "queue-worker.ts")], {
    env: { ...process.env, ...t.env, WORKER_CONCURRENCY: "4" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const runs: RunLine[] = [];
  let ready!: () => void;
  const readyP = new Promise<void>((r) => (ready = r));
  createInterface({ input: child.stdout! }).on("line", (line) => {
    if (line === "ready") return ready();
    runs.push(JSON.parse(line) as RunLine);
  });
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, ready: readyP, runs, exited };
}

test(`randomized: ${enqueues} enqueues over ${keyCount} keys, 8 workers in 2 processes`, { timeout: 600_000 }, async () => {
  const workers = [startWorker(), startWorker()];
  try {
    await Promise.all(workers.map((w) => w.ready));
    const q = new WorkQueue(t.nats, {
      leaseMs: 5_000,
      log: quiet,
      owner: "producer",
      maxAttempts: 1_000,
      backoff: exponentialBackoff(10, 100),
      maxFloorMs: 1_000,
      drainMs: 1_000,
    });
    const lastEnqueue = new Map<Key, number>();
    const outcomes = { added: 0, deduped: 0, rerun: 0 };
    const deadline = Date.now() + 400_000;
    const inFlight = new Set<Promise<void>>();
    for (let i = 0; i < enqueues && Date.now() < deadline; i++) {
      // One enqueue in five goes to a few hot keys, so that many meet their key running or
      // finishing: that is where a merge can race a run's end.
      const hot = Math.random() < 0.2;
      const key: Key = `package/k${Math.floor(Math.random() * (hot ? Math.min(hotKeys, keyCount) : keyCount))}`;
      const priority = priorities[Math.floor(Math.random() * priorities.length)]!;
      const ahead = Math.random() < 0.05 ? Date.now() + Math.floor(Math.random() * 200) : undefined;
      lastEnqueue.set(key, now());
      const p = q.enqueue({ key, priority, cause: { type: "manual" }, ...(ahead ? { notBefore: ahead } : {}) }).then((o) => {
        outcomes[o]++;
      });
      const tracked = p.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
      if (inFlight.size >= 64) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    assert.equal(outcomes.added + outcomes.deduped + outcomes.rerun, enqueues, "every enqueue completed within the time bound");

    try {
      await waitFor(
        "the queue to drain",
        async () => {
          // As the queue service does once per lease: queue what a run that lost its ack left promised.
          await q.sweep();
          const s = await q.stats();
          return s.running === 0 && s.retrying === 0 && Object.values(s.depth).every((d) => d === 0);
        },
        180_000,
        250,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; left behind: ${await leftBehind(q)}`);
    }
    for (const w of workers) w.child.kill("SIGTERM");
    assert.deepEqual(await Promise.all(workers.map((w) => w.exited)), [0, 0], "workers drain and exit cleanly on SIGTERM");

    const runs = workers.flatMap((w) => w.runs);
    assert.equal(runs.filter((r) => r.overlap).length, 0, "no two runs of one key overlapped");
    const lastStart = new Map<Key, number>();
    const lastSuccess = new Map<Key, number>();
    for (const r of runs) {
      lastStart.set(r.key, Math.max(lastStart.get(r.key) ?? 0, r.start));
      if (!r.failed) lastSuccess.set(r.key, Math.max(lastSuccess.get(r.key) ?? 0, r.start));
    }
    const unrun = [...lastEnqueue].filter(([k, at]) => (lastSuccess.get(k) ?? 0) < at).map(([k]) => k);
    assert.deepEqual(unrun.slice(0, 10), [], `${unrun.length} keys were enqueued after their last successful run began and never ran again`);
    assert.equal((await q.deadLetters()).length, 0);
    const failures = runs.filter((r) => r.failed).length;
    process.stdout.write(
      `# ${enqueues} enqueues (${outcomes.added} added, ${outcomes.deduped} deduped, ${outcomes.rerun} rerun), ${runs.length} runs (${failures} failed and retried), ${lastEnqueue.size} keys\n`,
    );
  } finally {
    for (const w of workers) w.child.kill("SIGKILL");
  }
});
