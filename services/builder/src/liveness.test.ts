import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createLogger, heartbeatKey, instanceId, type Heartbeat } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { inputsDetail, inputsInHand, markDetail, markOwnerLiveness, type Mark } from "./liveness.ts";
import { currentInstance, type Instance } from "./workspaces.ts";

const quiet = createLogger("liveness-test");
const staleAfterMs = 1_500;

let t: TestEnv;
let services: Awaited<ReturnType<TestEnv["nats"]["kvm"]["open"]>>;
before(async () => {
  t = await testEnv();
  services = await t.nats.kvm.open(t.nats.topology.bucket("services"));
});
after(async () => t.cleanup());

/** Writes the heartbeat of the builder `of` (another host's, so that only its heartbeat tells), naming `marks` and, when given, the inputs in hand. */
async function beat(of: Instance, marks: string | undefined, health: Heartbeat["health"] = "ready", inHand?: string[]): Promise<void> {
  const now = new Date().toISOString();
  const hb: Heartbeat = {
    v: 1,
    service: "builder",
    instance: instanceId(of.host, of.pid),
    version: "test",
    region: "local",
    host: of.host,
    pid: of.pid,
    startedAt: now,
    at: now,
    health,
    reasons: [],
    details: { ...(marks ? { [markDetail]: marks } : {}), ...(inHand ? { [inputsDetail]: inputsInHand(inHand) } : {}) },
  };
  await services.put(heartbeatKey("builder", instanceId(of.host, of.pid)), JSON.stringify(hb));
}

const me = currentInstance();
const inputs = `sha256:${"a".repeat(64)}`;
/** A mark of `instance` on `inputs`, made `startedAt` (default: an hour ago, before any heartbeat here). */
const mark = (instance: string, startedAt = new Date(Date.now() - 3_600_000)): Mark => ({ instance, inputDigest: inputs, startedAt: startedAt.toISOString() });
const liveness = () => markOwnerLiveness({ services, me, staleAfterMs, log: quiet });
const elsewhere = (pid: number, startMs: number): Instance => ({ id: `other-host_${pid}_${startMs}`, host: "other-host", pid });

test("another host's builder is alive while its fresh heartbeat names the mark's instance", async () => {
  const owner = elsewhere(7, 1_000);
  const check = liveness();
  assert.deepEqual(await check(mark(owner.id)), { alive: false, why: "no heartbeat" });
  await beat(owner, owner.id);
  const found = await check(mark(owner.id));
  assert.equal(found.alive, true);
  assert.ok(
    found.alive && found.recheckMs >= 1_000 && found.recheckMs <= staleAfterMs + 1,
    `looks again when the heartbeat would be stale: ${JSON.stringify(found)}`,
  );
  // The same host and pid started again (a container restarted): its heartbeat names its own marks.
  await beat(owner, elsewhere(7, 2_000).id);
  assert.equal((await check(mark(owner.id))).alive, false);
  await beat(owner, owner.id, "stopped");
  assert.deepEqual(await check(mark(owner.id)), { alive: false, why: "it stopped" });
  await beat(owner, owner.id);
  await new Promise((r) => setTimeout(r, staleAfterMs + 200));
  const stale = await check(mark(owner.id));
  assert.equal(stale.alive, false);
  assert.match(stale.alive ? "" : stale.why, /last heartbeat is \d+ ms old/);
});

test("on this host a builder whose pid is gone is dead at once, whatever its heartbeat says", async () => {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  const pid = child.pid!;
  await new Promise((r) => child.once("exit", r));
  const dead: Instance = { id: `${me.host}_${pid}_1000`, host: me.host, pid };
  await beat(dead, dead.id);
  assert.deepEqual(await liveness()(mark(dead.id)), { alive: false, why: `pid ${pid} no longer runs on this host` });
  // This process's own pid, from an earlier start.
  assert.deepEqual(await liveness()(mark(`${me.host}_${me.pid}_1`)), { alive: false, why: "an earlier start of this process's pid" });
  // A live pid on this host still needs its heartbeat (a pid may have been reused).
  const running: Instance = { id: `${me.host}_${process.ppid}_1000`, host: me.host, pid: process.ppid };
  assert.equal((await liveness()(mark(running.id))).alive, false);
  await beat(running, running.id);
  assert.equal((await liveness()(mark(running.id))).alive, true);
});

test("a mark that names no builder instance is nobody's to wait for", async () => {
  assert.deepEqual(await liveness()(mark("not-an-instance")), { alive: false, why: "the mark names no builder instance (not-an-instance)" });
});

test("a live builder whose heartbeat, written after its mark, lacks the mark's inputs abandoned it: taken over, not a crash", async () => {
  const owner = elsewhere(8, 1_000);
  const check = liveness();
  await beat(owner, owner.id, "ready", [`sha256:${"b".repeat(64)}`]);
  const abandoned = await check(mark(owner.id));
  assert.equal(abandoned.alive, false);
  assert.equal(!abandoned.alive && abandoned.abandoned, true);
  // The same heartbeat says nothing of a mark made after it: the owner may have just claimed it.
  assert.equal((await check(mark(owner.id, new Date(Date.now() + 60_000)))).alive, true);
  // Inputs in hand, or more of them than the detail holds: alive.
  await beat(owner, owner.id, "ready", [`sha256:${"b".repeat(64)}`, inputs]);
  assert.equal((await check(mark(owner.id))).alive, true);
  await beat(
    owner,
    owner.id,
    "ready",
    Array.from({ length: 40 }, (_, i) => `sha256:${String(i).padStart(64, "c")}`),
  );
  assert.equal((await check(mark(owner.id))).alive, true);
  // A builder that lists nothing (an older version): alive, as before.
  await beat(owner, owner.id);
  assert.equal((await check(mark(owner.id))).alive, true);
});
