import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createLogger, heartbeatKey, instanceId, type Heartbeat } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { markDetail, markOwnerLiveness } from "./liveness.ts";
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

/** Writes the heartbeat of the builder `of` (another host's, so that only its heartbeat tells), naming `marks`. */
async function beat(of: Instance, marks: string | undefined, health: Heartbeat["health"] = "ready"): Promise<void> {
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
    details: marks ? { [markDetail]: marks } : {},
  };
  await services.put(heartbeatKey("builder", instanceId(of.host, of.pid)), JSON.stringify(hb));
}

const me = currentInstance();
const liveness = () => markOwnerLiveness({ services, me, staleAfterMs, log: quiet });
const elsewhere = (pid: number, startMs: number): Instance => ({ id: `other-host_${pid}_${startMs}`, host: "other-host", pid });

test("another host's builder is alive while its fresh heartbeat names the mark's instance", async () => {
  const owner = elsewhere(7, 1_000);
  const check = liveness();
  assert.deepEqual(await check(owner.id), { alive: false, why: "no heartbeat" });
  await beat(owner, owner.id);
  const found = await check(owner.id);
  assert.equal(found.alive, true);
  assert.ok(
    found.alive && found.recheckMs >= 1_000 && found.recheckMs <= staleAfterMs + 1,
    `looks again when the heartbeat would be stale: ${JSON.stringify(found)}`,
  );
  // The same host and pid started again (a container restarted): its heartbeat names its own marks.
  await beat(owner, elsewhere(7, 2_000).id);
  assert.equal((await check(owner.id)).alive, false);
  await beat(owner, owner.id, "stopped");
  assert.deepEqual(await check(owner.id), { alive: false, why: "it stopped" });
  await beat(owner, owner.id);
  await new Promise((r) => setTimeout(r, staleAfterMs + 200));
  const stale = await check(owner.id);
  assert.equal(stale.alive, false);
  assert.match(stale.alive ? "" : stale.why, /last heartbeat is \d+ ms old/);
});

test("on this host a builder whose pid is gone is dead at once, whatever its heartbeat says", async () => {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  const pid = child.pid!;
  await new Promise((r) => child.once("exit", r));
  const dead: Instance = { id: `${me.host}_${pid}_1000`, host: me.host, pid };
  await beat(dead, dead.id);
  assert.deepEqual(await liveness()(dead.id), { alive: false, why: `pid ${pid} no longer runs on this host` });
  // This process's own pid, from an earlier start.
  assert.deepEqual(await liveness()(`${me.host}_${me.pid}_1`), { alive: false, why: "an earlier start of this process's pid" });
  // A live pid on this host still needs its heartbeat (a pid may have been reused).
  const running: Instance = { id: `${me.host}_${process.ppid}_1000`, host: me.host, pid: process.ppid };
  assert.equal((await liveness()(running.id)).alive, false);
  await beat(running, running.id);
  assert.equal((await liveness()(running.id)).alive, true);
});

test("a mark that names no builder instance is nobody's to wait for", async () => {
  assert.deepEqual(await liveness()("not-an-instance"), { alive: false, why: "the mark names no builder instance (not-an-instance)" });
});
