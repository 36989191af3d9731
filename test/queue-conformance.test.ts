/**
 * Work-queue conformance: the named scenarios every queue backend must pass (in the spirit of
 * DriftlessAF's conformance suite), run here against the JetStream backend on a real NATS.
 *
 * Time is shrunk, not faked: leases of 1.5 s, backoff from 100 ms, three attempts. Every
 * scenario gets a fresh queue (its own prefix: streams, consumers and buckets of its own), so
 * what it counts is exactly what it did, and stops its workers before it ends.
 */
import { afterEach, beforeEach, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import {
  done,
  doneWith,
  nonRetriable,
  notBefore,
  type EnqueueOutcome,
  type QueueRequest,
  type Reconcile,
  type ReconcileResult,
  requeueAfter,
  type Settle,
  settleSlackMs,
  WorkQueue,
  type WorkQueueOptions,
} from "@homeostat/workqueue";
import { exponentialBackoff, priorities, workItemSchema, type Key, type Logger, type Priority, type WorkItem } from "@homeostat/core";
import { waitFor } from "../scripts/factory.ts";
import { queueIdle, testEnv, type TestEnv } from "./harness.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const req = (key: Key, priority: Priority = "release", extra: Partial<QueueRequest> = {}): QueueRequest => ({
  key,
  priority,
  cause: { type: "manual" },
  ...extra,
});
const quiet: Logger = { info() {}, warn() {}, error() {} };

/** A backend under test: how to make a queue for one owner. */
type Backend = { name: string; setup(): Promise<{ make(owner: string, o?: Partial<WorkQueueOptions>): WorkQueue; env: TestEnv; teardown(): Promise<void> }> };

const jetStreamBackend: Backend = {
  name: "JetStream",
  async setup() {
    const env = await testEnv({ HOMEOSTAT_LEASE_MS: "1500" });
    return {
      env,
      make: (owner, o = {}) =>
        new WorkQueue(env.nats, {
          leaseMs: 1500,
          log: quiet,
          owner,
          maxAttempts: 3,
          backoff: exponentialBackoff(100, 1_000),
          maxFloorMs: 2_000,
          drainMs: 500,
          ...o,
        }),
      teardown: () => env.cleanup(),
    };
  },
};

/** Worker sets still running: stopped after each scenario, so a failed one cannot disturb the next. */
const live = new Set<() => Promise<void>>();

type Run = { key: Key; attempt: number; start: number; end: number; item: WorkItem };

/** Workers over one or more queues that record every run and detect overlapping runs of a key. */
function workers(queues: WorkQueue[], reconcile: (item: WorkItem, attempt: number, signal: AbortSignal) => Promise<ReconcileResult>, concurrency = 4) {
  const runs: Run[] = [];
  const active = new Map<Key, number>();
  let overlaps = 0;
  const ac = new AbortController();
  const wrapped: Reconcile = async (item, run) => {
    const n = (active.get(item.key) ?? 0) + 1;
    active.set(item.key, n);
    if (n > 1) overlaps++;
    const start = Date.now();
    try {
      return await reconcile(item, run.attempt, run.signal);
    } finally {
      active.set(item.key, (active.get(item.key) ?? 1) - 1);
      runs.push({ key: item.key, attempt: run.attempt, start, end: Date.now(), item });
    }
  };
  const loops = queues.map((q) => q.run({ concurrency, signal: ac.signal, reconcile: wrapped }));
  const stop = async () => {
    live.delete(stop);
    ac.abort();
    await Promise.all(loops);
  };
  live.add(stop);
  return {
    runs,
    get overlaps() {
      return overlaps;
    },
    of: (key: Key) => runs.filter((r) => r.key === key),
    stop,
  };
}

function conformance(backend: Backend) {
  describe(`work queue conformance: ${backend.name}`, { timeout: 240_000 }, () => {
    let b: Awaited<ReturnType<Backend["setup"]>>;
    let q: WorkQueue;
    beforeEach(async () => {
      b = await backend.setup();
      q = b.make("client");
    });
    afterEach(async () => {
      await Promise.all([...live].map((stop) => stop()));
      await b?.teardown();
    });

    const queued = async (key: Key): Promise<WorkItem[]> => {
      const out: WorkItem[] = [];
      for (const p of priorities) {
        const m = await b.env.nats.jsm.streams
          .getMessage(b.env.nats.topology.stream("work"), { last_by_subj: b.env.nats.topology.workSubject(p, key) })
          .catch(() => null);
        if (m) out.push(workItemSchema.parse(m.json()));
      }
      return out;
    };

    /** Puts `key` into the dead letters (three failed attempts) and stops the failing worker. */
    const deadLetter = async (key: Key): Promise<void> => {
      const failing = workers([b.make("failing")], async () => {
        throw new Error("broken upstream");
      });
      await q.enqueue(req(key));
      await waitFor("the dead letter", async () => (await q.deadLetters()).some((d) => d.key === key), 15_000);
      await failing.stop();
    };

    test("simple dedup: a key enqueued 50 times while queued is queued once and runs once", async () => {
      const key: Key = "package/dedup";
      const outcomes = await Promise.all(Array.from({ length: 50 }, () => q.enqueue(req(key))));
      assert.equal(outcomes.filter((o) => o === "added").length, 1);
      assert.equal(outcomes.filter((o) => o === "deduped").length, 49);
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await sleep(400);
      await w.stop();
      assert.equal(w.of(key).length, 1);
    });

    test("distinct keys each run once", async () => {
      const keys = Array.from({ length: 40 }, (_, i): Key => `package/distinct-${i}`);
      for (const k of keys) assert.equal(await q.enqueue(req(k)), "added");
      const w = workers([b.make("w")], async () => done, 8);
      await waitFor("all runs", async () => keys.every((k) => w.of(k).length === 1), 15_000);
      await sleep(300);
      await w.stop();
      assert.equal(w.runs.length, 40);
    });

    test("priority merge: a queued resync key enqueued as advisory becomes one advisory entry", async () => {
      const key: Key = "package/prio-up";
      assert.equal(await q.enqueue(req(key, "resync")), "added");
      assert.equal(await q.enqueue(req(key, "advisory")), "deduped");
      const entries = await queued(key);
      assert.deepEqual(
        entries.map((e) => e.priority),
        ["advisory"],
      );
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await sleep(300);
      await w.stop();
      assert.equal(w.of(key).length, 1);
      assert.equal(w.of(key)[0]!.item.priority, "advisory");
    });

    test("priority merge: a lower class never lowers a queued key", async () => {
      const key: Key = "package/prio-keep";
      await q.enqueue(req(key, "advisory"));
      assert.equal(await q.enqueue(req(key, "resync")), "deduped");
      assert.equal(await q.enqueue(req(key, "dependency")), "deduped");
      assert.deepEqual(
        (await queued(key)).map((e) => e.priority),
        ["advisory"],
      );
    });

    test("not-before merge without a floor: the earlier not-before wins", async () => {
      const key: Key = "package/nb-earlier";
      await q.enqueue(req(key, "release", { notBefore: Date.now() + 60_000 }));
      const t0 = Date.now();
      assert.equal(await q.enqueue(req(key)), "deduped");
      const [entry] = await queued(key);
      assert.ok(entry!.notBefore <= Date.now(), "pulled to now");
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      assert.ok(w.of(key)[0]!.start - t0 < 5_000);
    });

    test("not-before merge with a floor: an enqueue cannot pull it earlier", async () => {
      const key: Key = "package/nb-floor";
      const floor = Date.now() + 1_500;
      await q.enqueue(req(key, "release", { floor }));
      assert.equal(await q.enqueue(req(key)), "deduped");
      assert.equal((await queued(key))[0]!.notBefore, floor);
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      assert.ok(w.of(key)[0]!.start >= floor, "not before the floor");
    });

    test("a not-before in the future is honoured", async () => {
      const key: Key = "package/nb-wait";
      const due = Date.now() + 800;
      await q.enqueue(req(key, "release", { notBefore: due }));
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      assert.ok(w.of(key)[0]!.start >= due);
    });

    /**
     * Enqueues `key` every `everyMs` for `forMs`, each asking `settle`; the time the last enqueue was
     * issued (its window starts no sooner: a bound taken after it returned could be late by the
     * enqueue's own round trips).
     */
    const enqueueSettling = async (key: Key, settle: Settle, everyMs: number, forMs: number): Promise<number> => {
      const end = Date.now() + forMs;
      let last = 0;
      while (Date.now() < end) {
        last = Date.now();
        await q.enqueue(req(key, "advisory", { settle }));
        await sleep(everyMs);
      }
      return last;
    };

    test("settle: a key enqueued again and again runs once, no sooner than the quiet period after the last enqueue", async () => {
      const key: Key = "package/settle";
      const w = workers([b.make("w")], async () => done);
      const last = await enqueueSettling(key, { quietMs: 700, maxMs: 20_000 }, 50, 2_000);
      assert.equal(w.of(key).length, 0, "no run while the enqueues keep coming");
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await sleep(800);
      await w.stop();
      assert.equal(w.of(key).length, 1);
      assert.ok(w.of(key)[0]!.start >= last + 700 - settleSlackMs, `ran ${w.of(key)[0]!.start - last} ms after the last enqueue`);
    });

    test("settle: a key enqueued without pause still runs within the longest wait of its first enqueue", async () => {
      const key: Key = "package/settle-bound";
      const w = workers([b.make("w")], async () => done);
      const first = Date.now();
      await enqueueSettling(key, { quietMs: 700, maxMs: 1_200 }, 50, 3_500);
      await w.stop();
      assert.ok(w.of(key).length >= 2, `${w.of(key).length} runs in 3.5 s of enqueues with a longest wait of 1.2 s`);
      assert.ok(
        w.of(key)[0]!.start >= first + 1_200 - settleSlackMs && w.of(key)[0]!.start < first + 1_200 + 1_500,
        `first run ${w.of(key)[0]!.start - first} ms after the first enqueue`,
      );
    });

    test("settle: an enqueue that does not ask to settle makes a settling key due at once; a rerun settles like its enqueues", async () => {
      const key: Key = "package/settle-now";
      assert.equal(await q.enqueue(req(key, "advisory", { settle: { quietMs: 60_000, maxMs: 120_000 } })), "added");
      const t0 = Date.now();
      assert.equal(await q.enqueue(req(key, "release")), "deduped");
      assert.equal((await queued(key))[0]!.settle, undefined);
      const gate = Promise.withResolvers<void>();
      const w = workers([b.make("w")], async () => {
        if (w.of(key).length === 0) await gate.promise;
        return done;
      });
      await waitFor("the run to start", async () => (await q.stats()).running === 1, 5_000);
      assert.ok(Date.now() - t0 < 5_000);
      // Taken before the enqueue, whose window starts no sooner.
      const marked = Date.now();
      assert.equal(await q.enqueue(req(key, "advisory", { settle: { quietMs: 1_000, maxMs: 20_000 } })), "rerun");
      gate.resolve();
      await waitFor("the rerun", async () => w.of(key).length === 2, 10_000);
      await w.stop();
      assert.ok(w.of(key)[1]!.start >= marked + 1_000, `rerun ${w.of(key)[1]!.start - marked} ms after its enqueue`);
    });

    /**
     * Enqueues `first` on workers named `names` and holds its first run while `during` enqueues
     * the same key, each enqueue answered "rerun"; returns the workers, stopped a while after
     * the rerun started.
     */
    const rerunDuringRun = async (first: QueueRequest, names: string[], during: () => Promise<EnqueueOutcome[]>) => {
      const gate = Promise.withResolvers<void>();
      const w = workers(
        names.map((n) => b.make(n)),
        async () => {
          if (w.of(first.key).length === 0) await gate.promise;
          return done;
        },
      );
      await q.enqueue(first);
      await waitFor("the first run to start", async () => (await q.stats()).running === 1, 10_000);
      const outcomes = await during();
      assert.ok(
        outcomes.every((o) => o === "rerun"),
        outcomes.join(","),
      );
      gate.resolve();
      await waitFor("the rerun", async () => w.of(first.key).length === 2, 10_000);
      await sleep(800);
      await w.stop();
      return w;
    };

    test("rerun after re-add: many enqueues during a run cause exactly one more run", async () => {
      const key: Key = "package/rerun";
      const w = await rerunDuringRun(req(key), ["a", "b"], () => Promise.all(Array.from({ length: 20 }, () => q.enqueue(req(key)))));
      assert.equal(w.of(key).length, 2);
      assert.equal(w.overlaps, 0);
    });

    test("rerun after re-add in another class: once more, in the more urgent class", async () => {
      const key: Key = "package/rerun-class";
      const w = await rerunDuringRun(req(key, "resync"), ["a"], async () => [
        await q.enqueue(req(key, "advisory")),
        await q.enqueue(req(key, "resync")),
        await q.enqueue(req(key, "advisory")),
      ]);
      assert.equal(w.of(key).length, 2);
      assert.equal(w.of(key)[1]!.item.priority, "advisory");
    });

    test("rerun asked for by facts: answered by a run that had read them; facts read too late, another store, or an enqueue stating none rerun once", async () => {
      const keys = { answered: "package/facts-read", later: "package/facts-later", plain: "package/facts-plain", store: "package/facts-store" } as const;
      const gate = Promise.withResolvers<void>();
      // Every run reports that it read the advisories up to revision 10 (and no releases).
      const w = workers([b.make("a")], async (item) => {
        if (w.of(item.key).length === 0) await gate.promise;
        return { type: "done", read: { advisories: 10 } };
      });
      for (const key of Object.values(keys)) await q.enqueue(req(key, "advisory"));
      await waitFor("the first runs to start", async () => (await q.stats()).running === 4, 10_000);
      const outcomes = [
        await q.enqueue(req(keys.answered, "advisory", { facts: { advisories: 4 } })),
        await q.enqueue(req(keys.answered, "advisory", { facts: { advisories: 10 } })),
        await q.enqueue(req(keys.later, "advisory", { facts: { advisories: 4 } })),
        await q.enqueue(req(keys.later, "advisory", { facts: { advisories: 11 } })),
        await q.enqueue(req(keys.plain, "advisory", { facts: { advisories: 4 } })),
        await q.enqueue(req(keys.plain, "advisory")),
        await q.enqueue(req(keys.store, "advisory", { facts: { releases: 1 } })),
      ];
      assert.ok(
        outcomes.every((o) => o === "rerun"),
        outcomes.join(","),
      );
      gate.resolve();
      await waitFor("the reruns", async () => [keys.later, keys.plain, keys.store].every((k) => w.of(k).length === 2), 10_000);
      await queueIdle(q, 10_000);
      await sleep(800);
      await w.stop();
      assert.equal(w.of(keys.answered).length, 1, "answered: no rerun");
      for (const key of [keys.later, keys.plain, keys.store]) assert.equal(w.of(key).length, 2, `${key}: exactly one rerun`);
      assert.equal(w.overlaps, 0);
    });

    test("exclusivity under 8 concurrent workers: no key ever runs twice at once", async () => {
      const keys = Array.from({ length: 10 }, (_, i): Key => `package/excl-${i}`);
      const w = workers(
        Array.from({ length: 8 }, (_, i) => b.make(`w${i}`)),
        async () => (await sleep(5 + Math.random() * 20), done),
        4,
      );
      const deadline = Date.now() + 3_000;
      let n = 0;
      while (Date.now() < deadline && n < 2_000) {
        await Promise.all(keys.map((k) => q.enqueue(req(k, (["advisory", "release", "resync"] as const)[n % 3]))));
        n += keys.length;
        await sleep(10);
      }
      await queueIdle(q, 20_000);
      await w.stop();
      assert.equal(w.overlaps, 0);
      // Each key ran at least once: how often depends on how its enqueues met its runs.
      for (const k of keys) assert.ok(w.of(k).length >= 1);
      assert.deepEqual(await q.stats(), { depth: { advisory: 0, release: 0, dependency: 0, resync: 0, repair: 0 }, running: 0, retrying: 0, deadLetters: 0 });
    });

    test("lease loss on SIGKILL: the key runs again elsewhere and the crash counts as an attempt", async () => {
      const key: Key = "package/killed";
      const child = spawn(process.execPath, [path.join(import.meta.dirname, "fixtures", "hanging-worker.ts")], {
        env: { ...process.env, ...b.env.env },
        stdio: ["ignore", "pipe", "inherit"],
      });
      try {
        const started = new Promise<void>((resolve) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("running") && resolve()));
        await q.enqueue(req(key));
        await started;
        child.kill("SIGKILL");
        const w = workers([b.make("survivor")], async () => done, 1);
        await waitFor("the key to run again after the lease expired", async () => w.of(key).length === 1, 20_000);
        await w.stop();
        assert.equal(w.of(key)[0]!.attempt, 2);
      } finally {
        child.kill("SIGKILL");
      }
    });

    test("requeue-after: the key runs again after the delay, attempts reset", async () => {
      const key: Key = "package/requeue";
      const w = workers([b.make("w")], async () => {
        if (w.of(key).length === 0) throw new Error("first attempt fails");
        return w.of(key).length === 1 ? requeueAfter(700) : done;
      });
      await q.enqueue(req(key));
      await waitFor("three runs", async () => w.of(key).length === 3, 15_000);
      await w.stop();
      const [, second, third] = w.of(key);
      assert.equal(second!.attempt, 2);
      assert.equal(third!.attempt, 1, "requeue-after resets attempts");
      assert.ok(third!.start - second!.end >= 650, `waited ${third!.start - second!.end} ms`);
    });

    test("requeue-after can be pulled earlier by an enqueue", async () => {
      const key: Key = "package/requeue-pull";
      const w = workers([b.make("w")], async () => (w.of(key).length === 0 ? requeueAfter(60_000) : done));
      await q.enqueue(req(key));
      await waitFor("the first run", async () => w.of(key).length === 1 && (await q.stats()).running === 0, 10_000);
      await waitFor("the requeue to be queued", async () => (await queued(key)).length === 1, 5_000);
      const t0 = Date.now();
      assert.equal(await q.enqueue(req(key)), "deduped");
      await waitFor("the second run, early", async () => w.of(key).length === 2, 10_000);
      await w.stop();
      assert.ok(w.of(key)[1]!.start - t0 < 5_000);
    });

    test("a not-before floor from a reconcile is not pulled earlier by an enqueue", async () => {
      const key: Key = "package/floor-result";
      const w = workers([b.make("w")], async () => (w.of(key).length === 0 ? notBefore(1_500) : done));
      await q.enqueue(req(key));
      await waitFor("the first run", async () => w.of(key).length === 1, 10_000);
      const firstEnd = w.of(key)[0]!.end;
      await waitFor("the floor to be queued", async () => (await queued(key)).length === 1, 5_000);
      await q.enqueue(req(key, "advisory"));
      await waitFor("the second run", async () => w.of(key).length === 2, 10_000);
      await w.stop();
      assert.ok(w.of(key)[1]!.start - firstEnd >= 1_400, `ran after ${w.of(key)[1]!.start - firstEnd} ms`);
    });

    test("a not-before floor is capped at the configured maximum", async () => {
      const key: Key = "package/floor-cap";
      const w = workers([b.make("w", { maxFloorMs: 500 })], async () => (w.of(key).length === 0 ? notBefore(3_600_000) : done));
      await q.enqueue(req(key));
      await waitFor("the second run, after the cap", async () => w.of(key).length === 2, 10_000);
      await w.stop();
    });

    test("child keys are durable in the queue before the parent completes", async () => {
      const parent: Key = "image/parent";
      const children: Key[] = ["package/child-a", "package/child-b"];
      const w = workers(
        [b.make("w")],
        async (item) =>
          item.key === parent
            ? doneWith(children.map((k) => req(k, "dependency", { cause: { type: "dependency", id: parent } })))
            : sleep(60_000).then(() => done),
        1,
      );
      await q.enqueue(req(parent));
      await waitFor("the parent's run", async () => w.of(parent).length === 1, 10_000);
      await w.stop();
      for (const c of children) {
        const entries = await queued(c);
        assert.equal(entries.length, 1, `${c} is queued`);
        assert.equal(entries[0]!.cause.id, parent);
      }
      assert.deepEqual(await queued(parent), [], "the parent's message is gone");
    });

    test("backoff grows exponentially between failed attempts", async () => {
      const key: Key = "package/backoff";
      const w = workers([b.make("w", { maxAttempts: 4, backoff: exponentialBackoff(200, 10_000) })], async () => {
        throw new Error("always fails");
      });
      await q.enqueue(req(key));
      await waitFor("four attempts", async () => w.of(key).length === 4, 15_000);
      await w.stop();
      const r = w.of(key);
      assert.deepEqual(
        r.map((x) => x.attempt),
        [1, 2, 3, 4],
      );
      const gaps = [1, 2, 3].map((i) => r[i]!.start - r[i - 1]!.end);
      // 200, 400, 800 ms each within ±20 % jitter (plus delivery time)
      assert.ok(gaps[0]! >= 150 && gaps[1]! >= 310 && gaps[2]! >= 630, `gaps ${gaps.join(",")}`);
      assert.ok(gaps[2]! > gaps[0]!, `gaps ${gaps.join(",")}`);
    });

    test("max attempts: the key moves to the dead letters with its reason and attempts", async () => {
      const key: Key = "package/dead";
      const w = workers([b.make("w")], async () => {
        throw new Error("broken upstream");
      });
      await q.enqueue(req(key));
      await waitFor("the dead letter", async () => (await q.deadLetters()).some((d) => d.key === key), 15_000);
      await sleep(500);
      await w.stop();
      assert.equal(w.of(key).length, 3);
      const d = (await q.deadLetters()).find((x) => x.key === key)!;
      assert.equal(d.reason, "broken upstream");
      assert.equal(d.attempts, 3);
      assert.equal(d.nonRetriable, false);
      assert.deepEqual(await queued(key), [], "nothing left blocking the subject");
    });

    test("a dead-lettered key's subject is not blocked: a new enqueue is added (nats-server #5564)", async () => {
      const key: Key = "package/dead";
      await deadLetter(key);
      assert.equal(await q.enqueue(req(key)), "added");
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      assert.equal(w.of(key)[0]!.attempt, 1, "fresh attempts");
    });

    test("a later success clears the dead letter", async () => {
      const key: Key = "package/dead";
      await deadLetter(key);
      assert.deepEqual(
        (await q.deadLetters()).map((d) => d.key),
        [key],
      );
      await q.enqueue(req(key));
      const w = workers([b.make("w")], async () => done);
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await waitFor("the dead letter to clear", async () => (await q.deadLetters()).length === 0, 5_000);
      await w.stop();
      assert.equal((await q.stats()).deadLetters, 0);
    });

    test("retry from the dead letters: re-enqueued with fresh attempts, cleared by success", async () => {
      const key: Key = "package/dead-retry";
      let healthy = false;
      const w = workers([b.make("w")], async () => {
        if (!healthy) throw new Error("not yet");
        return done;
      });
      await q.enqueue(req(key));
      await waitFor("the dead letter", async () => (await q.deadLetters()).some((d) => d.key === key), 15_000);
      healthy = true;
      assert.equal(await q.retryDeadLetter(key), true);
      await waitFor("the retried run", async () => w.of(key).length === 4, 10_000);
      await waitFor("the dead letter to clear", async () => !(await q.deadLetters()).some((d) => d.key === key), 5_000);
      await w.stop();
      assert.equal(w.of(key)[3]!.attempt, 1);
      assert.equal(await q.retryDeadLetter(key), false, "no longer a dead letter");
    });

    test("non-retriable: dropped at once with its reason recorded, never retried", async () => {
      const key: Key = "package/nonretriable";
      const w = workers([b.make("w")], async () => nonRetriable("not in the catalog"));
      await q.enqueue(req(key));
      await waitFor("the record", async () => (await q.deadLetters()).some((d) => d.key === key), 10_000);
      await sleep(500);
      await w.stop();
      assert.equal(w.of(key).length, 1);
      const d = (await q.deadLetters()).find((x) => x.key === key)!;
      assert.equal(d.nonRetriable, true);
      assert.equal(d.reason, "not in the catalog");
    });

    test("the dead-letter hook is told the key, reason and attempts", async () => {
      const key: Key = "package/dead-hook";
      const letters: { key: Key; reason: string; attempts: number }[] = [];
      const w = workers([b.make("w", { onDeadLetter: async (l) => void letters.push(l) })], async () => {
        throw new Error("still broken");
      });
      await q.enqueue(req(key));
      await waitFor("the hook", async () => letters.length === 1, 15_000);
      await w.stop();
      assert.deepEqual(
        letters.map((l) => [l.key, l.reason, l.attempts]),
        [[key, "still broken", 3]],
      );
    });

    test("an enqueue while a key waits for its retry is deduplicated", async () => {
      const key: Key = "package/retry-dedup";
      const w = workers([b.make("w", { backoff: () => 1_500 })], async () => {
        if (w.of(key).length === 0) throw new Error("once");
        return done;
      });
      await q.enqueue(req(key));
      await waitFor("the failure", async () => (await q.stats()).retrying === 1, 10_000);
      assert.equal(await q.enqueue(req(key)), "deduped");
      await waitFor("the retry", async () => w.of(key).length === 2, 10_000);
      await sleep(500);
      await w.stop();
      assert.equal(w.of(key).length, 2);
    });

    test("drain: a run that outlasts the drain time is handed back without spending an attempt", async () => {
      const key: Key = "package/drain";
      const slow = workers([b.make("slow", { drainMs: 300 })], () => new Promise((r) => setTimeout(() => r(done), 30_000).unref()), 1);
      await q.enqueue(req(key));
      await waitFor("the run to start", async () => (await q.stats()).running === 1, 10_000);
      const t0 = Date.now();
      await slow.stop();
      assert.ok(Date.now() - t0 < 2_000, `stopped in ${Date.now() - t0} ms`);
      const w = workers([b.make("next")], async () => done, 1);
      await waitFor("the key to run again", async () => w.runs.some((r) => r.key === key), 10_000);
      await w.stop();
      assert.equal(w.runs.find((r) => r.key === key)!.attempt, 1, "the handed-back run spent no attempt");
    });

    test("drain: a run that ends within the drain time completes normally", async () => {
      const key: Key = "package/drain-ok";
      let aborted = false;
      const w = workers(
        [b.make("w", { drainMs: 3_000 })],
        async (_i, _a, signal) => {
          await new Promise((r) => signal.addEventListener("abort", r, { once: true }));
          aborted = true;
          return done;
        },
        1,
      );
      await q.enqueue(req(key));
      await waitFor("the run to start", async () => (await q.stats()).running === 1, 10_000);
      await w.stop();
      assert.equal(aborted, true, "the run was told to stop");
      assert.deepEqual(await queued(key), [], "acked, not handed back");
      assert.equal((await q.stats()).running, 0);
    });

    test("ordering by priority: advisory before release before resync", async () => {
      const keys = { advisory: ["package/o-a1", "package/o-a2"], release: ["package/o-r1"], resync: ["package/o-s1", "package/o-s2"] } as const;
      for (const k of keys.resync) await q.enqueue(req(k, "resync"));
      for (const k of keys.release) await q.enqueue(req(k, "release"));
      for (const k of keys.advisory) await q.enqueue(req(k, "advisory"));
      const w = workers([b.make("w")], async () => done, 1);
      await waitFor("all five", async () => w.runs.length === 5, 10_000);
      await w.stop();
      const order = w.runs.map((r) => r.item.priority);
      assert.deepEqual(order, ["advisory", "advisory", "release", "resync", "resync"]);
    });

    test("a malformed message is dropped and does not block the queue", async () => {
      const key: Key = "package/after-garbage";
      await b.env.nats.js.publish(`${b.env.nats.topology.prefix}.${b.env.nats.topology.region}.work.release.package.garbage`, "not json");
      await q.enqueue(req(key));
      const w = workers([b.make("w")], async () => done, 1);
      await waitFor("the good key", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      const m = await b.env.nats.jsm.streams
        .getMessage(b.env.nats.topology.stream("work"), {
          last_by_subj: `${b.env.nats.topology.prefix}.${b.env.nats.topology.region}.work.release.package.garbage`,
        })
        .catch(() => null);
      assert.equal(m, null);
    });

    test("stats: depth per class, running, retrying and dead letters, exactly", async () => {
      assert.deepEqual(await q.stats(), { depth: { advisory: 0, release: 0, dependency: 0, resync: 0, repair: 0 }, running: 0, retrying: 0, deadLetters: 0 });
      await q.enqueue(req("package/stats-a", "advisory"));
      await q.enqueue(req("package/stats-b", "resync"));
      await q.enqueue(req("package/stats-c", "resync"));
      await q.enqueue(req("package/stats-dead", "dependency"));
      await q.enqueue(req("package/stats-retry", "release"));
      assert.deepEqual(await q.stats(), { depth: { advisory: 1, release: 1, dependency: 1, resync: 2, repair: 0 }, running: 0, retrying: 0, deadLetters: 0 });
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const w = workers(
        [b.make("w", { backoff: () => 60_000 })],
        async (item) => {
          if (item.key === "package/stats-dead") return nonRetriable("no recipe");
          if (item.key === "package/stats-retry") throw new Error("later");
          if (item.key === "package/stats-a") await gate;
          return done;
        },
        8,
      );
      await waitFor(
        "one running, one retrying, one dead, the rest done",
        async () => {
          const s = await q.stats();
          return s.running === 1 && s.retrying === 1 && s.deadLetters === 1 && s.depth.resync === 0;
        },
        10_000,
      );
      // The running key's and the retrying key's messages stay queued (unacked) until they end.
      assert.deepEqual(await q.stats(), { depth: { advisory: 1, release: 1, dependency: 0, resync: 0, repair: 0 }, running: 1, retrying: 1, deadLetters: 1 });
      release();
      await waitFor("the gated run to end", async () => (await q.stats()).running === 0, 10_000);
      await w.stop();
      assert.deepEqual(await q.stats(), { depth: { advisory: 0, release: 1, dependency: 0, resync: 0, repair: 0 }, running: 0, retrying: 1, deadLetters: 1 });
    });

    test("stats: a key waiting for its floor is queued, not a dead letter", async () => {
      const key: Key = "package/stats-floor";
      const w = workers([b.make("w")], async () => notBefore(60_000));
      await q.enqueue(req(key));
      await waitFor("the run", async () => w.of(key).length === 1, 10_000);
      await waitFor("the floor to be queued", async () => (await queued(key)).length === 1, 5_000);
      await w.stop();
      assert.deepEqual(await q.stats(), { depth: { advisory: 0, release: 1, dependency: 0, resync: 0, repair: 0 }, running: 0, retrying: 0, deadLetters: 0 });
      assert.deepEqual(await q.deadLetters(), []);
    });

    test("sweep: a follow-up promised by a worker that died after its ack is queued", async () => {
      const key: Key = "package/swept";
      const recordKey = b.env.nats.topology.runRecordKey(key);
      const promised: WorkItem = {
        v: 1,
        key,
        priority: "release",
        cause: { type: "manual", id: "promised" },
        notBefore: 0,
        floor: 0,
        attempts: 0,
        enqueuedAt: Date.now(),
      };
      // What a worker leaves behind when it dies between acking and queueing its requeue.
      await b.env.buckets.runs.put(
        recordKey,
        JSON.stringify({ phase: "running", owner: "dead", seq: 999_999_999, priority: "release", leaseUntil: Date.now() - 1, attempts: 0, pending: promised }),
      );
      assert.equal(await q.sweep(), 1);
      assert.equal((await queued(key))[0]?.cause.id, "promised");
      assert.equal(await b.env.buckets.runs.get(recordKey).then((e) => (e?.operation === "PUT" ? e : null)), null);
    });

    test("sweep: a retry whose message is gone (a stale second delivery failed) is queued again, attempts kept", async () => {
      const key: Key = "package/swept-retry";
      const recordKey = b.env.nats.topology.runRecordKey(key);
      await b.env.buckets.runs.put(
        recordKey,
        JSON.stringify({
          phase: "retrying",
          owner: "gone",
          seq: 999_999_998,
          priority: "resync",
          leaseUntil: 0,
          attempts: 2,
          retryAt: Date.now() - 10_000,
          error: "x",
        }),
      );
      assert.equal(await q.sweep(), 1);
      const w = workers([b.make("w")], async () => done, 1);
      await waitFor("the retry", async () => w.of(key).length === 1, 10_000);
      await w.stop();
      assert.equal(w.of(key)[0]!.attempt, 3);
      assert.equal(w.of(key)[0]!.item.priority, "resync");
      assert.equal((await q.stats()).retrying, 0);
    });
  });
}

conformance(jetStreamBackend);
