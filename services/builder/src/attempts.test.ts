import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createLogger, NonRetriableError, StateStore, TransientError, type BuildRequest, type EnqueueRequest } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { withFailureHandling } from "./attempts.ts";
import { BuildFailure } from "./errors.ts";
import { BuildRefusedError } from "./request.ts";

const quiet = createLogger("attempts-test");
const digest = (c: string) => `sha256:${c.repeat(64)}` as const;
/** A delivery of a message published just now. */
const delivery = { info: { deliveryCount: 1, timestampNanos: Date.now() * 1e6 } };

describe("build attempts (real NATS KV)", () => {
  let t: TestEnv;
  let state: StateStore;
  let n = 0;
  before(async () => {
    t = await testEnv();
    state = new StateStore(t.buckets.state);
  });
  after(async () => t.cleanup());

  /** A key waiting for a build of its desired inputs, as the reconciler leaves it. */
  async function building(): Promise<BuildRequest> {
    const key = `package/k${++n}` as const;
    await state.update(key, () => ({ ...StateStore.initial(key), phase: "Building", desiredInputDigest: digest("a"), desiredVersion: "1.0" }));
    return { v: 2, key, catalogRevision: digest("c"), inputDigest: digest("a"), version: "1.0" };
  }

  /** The builder instances alive, as liveness.ts would find them; the others are gone. */
  const alive = new Set<string>();
  /** The builder instances alive without the inputs of their marks in hand (liveness.ts: abandoned). */
  const abandonedBy = new Set<string>();
  const recheckMs = 4_321;
  const waitLimitMs = 60_000;

  function wrap(instance: string, handle: (req: BuildRequest) => Promise<void>, told: EnqueueRequest[] = [], o: { crashLimit?: number } = {}) {
    return withFailureHandling(handle, {
      state,
      instance,
      markOwner: async ({ instance: owner }) =>
        alive.has(owner)
          ? { alive: true, recheckMs }
          : abandonedBy.has(owner)
            ? { alive: false, why: "abandoned (test)", abandoned: true }
            : { alive: false, why: "gone (test)" },
      waitLimitMs,
      crashLimit: o.crashLimit ?? 2,
      backoff: () => 1_234,
      enqueue: async (r) => void told.push(r),
      log: quiet,
    }).handle;
  }
  const never = () => new Promise<void>(() => {});
  /** A builder (host_1_1) whose handler refuses every request with `reason`. */
  const refusingBuilder = (reason: ConstructorParameters<typeof BuildRefusedError>[0], detail: string, told: EnqueueRequest[]) =>
    wrap(
      "host_1_1",
      async () => {
        throw new BuildRefusedError(reason, detail);
      },
      told,
    );

  test("a mark its live builder abandoned is taken over without counting a crash", async () => {
    const req = await building();
    void wrap("host_4_4", never)(req, delivery);
    await waitFor(async () => (await state.get(req.key))?.building?.instance === "host_4_4");
    abandonedBy.add("host_4_4");
    void wrap("host_5_5", never)(req, delivery);
    await waitFor(async () => (await state.get(req.key))?.building?.instance === "host_5_5");
    assert.equal((await state.get(req.key))?.building?.crashes, 0);
  });

  test("a build that kills its builder is counted through its mark and given up at the limit", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    // Builder A starts it and dies (its handler never settles: a killed process reports nothing).
    void wrap("host_1_1", never)(req, delivery);
    await waitFor(async () => (await state.get(req.key))?.building?.instance === "host_1_1");
    // Redelivered to B: A is gone, so B takes it over at once, counting A's death.
    void wrap("host_2_2", never)(req, delivery);
    await waitFor(async () => (await state.get(req.key))?.building?.instance === "host_2_2");
    assert.equal((await state.get(req.key))?.building?.crashes, 1);
    let ran = false;
    await wrap("host_3_3", async () => void (ran = true), told)(req, delivery);
    const s = (await state.get(req.key))!;
    assert.equal(ran, false, "the build is not run again");
    assert.equal(s.phase, "Failed");
    assert.equal(s.lastError, "the builder died while building this key (2 times)");
    assert.deepEqual({ kind: s.failure?.kind, count: s.failure?.count }, { kind: "crash", count: 2 });
    assert.equal(s.building, undefined);
    assert.equal(told.length, 1, "the queue is told, so the reconciler dead-letters it now");
  });

  test("a failing step marks the key Failed and counts the failures of these inputs", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    const failing = wrap(
      "host_1_1",
      async () => {
        throw new BuildFailure("step 1/2 (make) exited with code 2");
      },
      told,
    );
    await assert.rejects(failing(req, delivery), NonRetriableError);
    let s = (await state.get(req.key))!;
    assert.deepEqual(
      { phase: s.phase, lastError: s.lastError, kind: s.failure?.kind, count: s.failure?.count, building: s.building },
      { phase: "Failed", lastError: "step 1/2 (make) exited with code 2", kind: "permanent", count: 1, building: undefined },
    );
    // The reconciler's retry sets it Building again, keeping the count.
    await state.update(req.key, (c) => ({ ...c!, phase: "Building" }));
    await assert.rejects(failing(req, delivery), NonRetriableError);
    s = (await state.get(req.key))!;
    assert.equal(s.failure?.count, 2);
    assert.equal(told.length, 2);
    assert.equal(told[0]!.cause.id, req.inputDigest);
  });

  test("a full disk while unpacking is transient: Building, retrying with its time, the mark gone", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    const enospc = Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
    const before = Date.now();
    await assert.rejects(
      wrap(
        "host_1_1",
        async () => {
          throw new BuildFailure("src.tar.gz: unpacking failed: ENOSPC: no space left on device, write", { cause: enospc });
        },
        told,
      )(req, delivery),
      (e: unknown) => e instanceof TransientError && e.retryAfterMs === 1_234,
    );
    const s = (await state.get(req.key))!;
    assert.equal(s.phase, "Building");
    const m = /^retrying: .*ENOSPC.*, next at (\S+)$/.exec(s.lastError ?? "");
    assert.ok(m, s.lastError);
    assert.ok(Math.abs(Date.parse(m[1]!) - (before + 1_234)) < 2_000);
    assert.equal(s.building, undefined);
    assert.equal(s.failure, undefined);
    assert.equal(told.length, 0);
  });

  test("a refused request fails the key it was asked for at once, and leaves a key that moved on alone", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    const refusing = refusingBuilder("unknown-revision", "catalog revision is not one this builder has", told);
    await assert.rejects(refusing(req, delivery), BuildRefusedError);
    const s = (await state.get(req.key))!;
    assert.deepEqual({ phase: s.phase, kind: s.failure?.kind }, { phase: "Failed", kind: "invalid" });
    const other = await building();
    const stale = { ...other, inputDigest: digest("b") };
    const was = await state.get(other.key);
    await assert.rejects(refusing(stale, delivery), BuildRefusedError);
    assert.deepEqual(await state.get(other.key), was, "a request for other inputs changes nothing");
    assert.equal(told.length, 1);
  });

  test("a request that came before a build its inputs wait for is retried, not failed", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    const early = refusingBuilder("waiting", "the catalog and the facts say it waits for package/dep to be built at 1.1", told);
    await assert.rejects(early(req, delivery), (e: unknown) => e instanceof TransientError && e.retryAfterMs === 1_234);
    const s = (await state.get(req.key))!;
    assert.equal(s.phase, "Building");
    assert.match(s.lastError ?? "", /^retrying: .*waits for package\/dep to be built at 1\.1/);
    assert.equal(s.failure, undefined);
    assert.equal(told.length, 0);
  });

  test("a build that succeeds clears its mark and the failures of its inputs", async () => {
    const req = await building();
    await state.update(req.key, (c) => ({
      ...c!,
      failure: { inputDigest: digest("a"), kind: "permanent", reason: "flaky", count: 1, at: new Date().toISOString() },
    }));
    await wrap("host_1_1", async () => {
      assert.equal((await state.get(req.key))?.building?.instance, "host_1_1", "marked while it runs");
    })(req, delivery);
    const s = (await state.get(req.key))!;
    assert.equal(s.building, undefined);
    assert.equal(s.failure, undefined);
  });

  test("a redelivery to the builder running it joins that build: one build, and both deliveries end as it ends", async () => {
    const req = await building();
    let builds = 0;
    let finish: () => void = () => {};
    const handle = wrap("host_1_1", async () => {
      builds++;
      await new Promise<void>((r) => (finish = r));
    });
    const first = handle(req, delivery);
    await waitFor(async () => builds === 1);
    // The same request again (a NATS restart redelivered it, or the reconciler published it again).
    const again = handle(req, { info: { ...delivery.info, deliveryCount: 2 } });
    await sleep(50);
    assert.equal(builds, 1, "the redelivery does not start a second build");
    finish();
    await Promise.all([first, again]);
    assert.equal(builds, 1);
    assert.equal((await state.get(req.key))?.building, undefined);
    // A joined failure fails the redelivery the same way (retried or dropped with it).
    const failing = wrap("host_1_1", async () => {
      builds++;
      await sleep(50);
      throw new BuildFailure("step 1/1 (make) exited with code 2");
    });
    await state.update(req.key, (c) => ({ ...c!, phase: "Building" }));
    const results = await Promise.allSettled([failing(req, delivery), failing(req, delivery)]);
    assert.equal(builds, 2, "one more build for both deliveries");
    assert.ok(results.every((r) => r.status === "rejected" && r.reason instanceof NonRetriableError));
  });

  test("a request for other inputs of a key building in this process waits for that build to end", async () => {
    const req = await building();
    const next = { ...req, inputDigest: digest("b") };
    let active = 0;
    let most = 0;
    const handle = wrap("host_1_1", async () => {
      most = Math.max(most, ++active);
      await sleep(100);
      active--;
    });
    await Promise.all([handle(req, delivery), handle(next, delivery)]);
    assert.equal(most, 1, "never two builds of the key at once");
  });

  test("a request for a build a live builder is running is handed back, never built beside it, and taken over at once when that builder is gone", async () => {
    const req = await building();
    let builds = 0;
    let finishA: () => void = () => {};
    alive.add("host_4_4");
    const a = wrap("host_4_4", async () => {
      builds++;
      await new Promise<void>((r) => (finishA = r));
    });
    const first = a(req, delivery);
    await waitFor(async () => builds === 1);
    // The same request reaches builder B (A's keep-alives missed the ack wait): A is alive, so B
    // builds nothing and looks again when A's heartbeat would turn stale.
    const b = wrap("host_5_5", async () => void builds++);
    await assert.rejects(b(req, delivery), (e: unknown) => e instanceof TransientError && e.retryAfterMs === recheckMs && /host_4_4 is alive/.test(e.message));
    const marked = (await state.get(req.key))?.building;
    assert.deepEqual({ instance: marked?.instance, crashes: marked?.crashes }, { instance: "host_4_4", crashes: 0 }, "A's mark is left alone");
    assert.equal(builds, 1);
    // A dies: B's next look takes it over without waiting, counting A's death once.
    alive.delete("host_4_4");
    await b(req, delivery);
    assert.equal(builds, 2);
    const s = (await state.get(req.key))!;
    assert.equal(s.building, undefined, "B's build settled");
    finishA();
    await first;
  });

  test("a copy of a request whose inputs another builder has built is dropped without a build", async () => {
    const req = await building();
    await state.update(req.key, (c) => ({ ...c!, phase: "Signing" }));
    let ran = false;
    await wrap("host_6_6", async () => void (ran = true))(req, delivery);
    assert.equal(ran, false);
    assert.equal((await state.get(req.key))?.phase, "Signing", "the key as it was");
  });

  test("a request that waits for another build longer than a build may take is given up: Failed with the reason, the queue told", async () => {
    const req = await building();
    const told: EnqueueRequest[] = [];
    const early = refusingBuilder("waiting", "the catalog and the facts say it waits for package/dep to be built at 1.1", told);
    const published = { info: { deliveryCount: 30, timestampNanos: (Date.now() - waitLimitMs - 1_000) * 1e6 } };
    await assert.rejects(early(req, published), NonRetriableError);
    const s = (await state.get(req.key))!;
    assert.equal(s.phase, "Failed");
    assert.match(s.lastError ?? "", /waits for package\/dep to be built at 1\.1 \(still waiting \d+ s after the request/);
    assert.deepEqual(
      { kind: s.failure?.kind, count: s.failure?.count },
      { kind: "transient", count: 1 },
      "the reconciler retries it, or dead-letters it once its retries are spent",
    );
    assert.equal(told.length, 1, "the reconciler decides again now");
    // A copy for inputs the key no longer wants is only dropped.
    const stale = { ...(await building()), inputDigest: digest("b") };
    await assert.rejects(early(stale, published), NonRetriableError);
    assert.equal((await state.get(stale.key))?.phase, "Building");
    assert.equal(told.length, 1);
  });
});

function sleep(ms: number) {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error("condition not reached in time");
    await sleep(10);
  }
}
