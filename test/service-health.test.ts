/**
 * Services that do not crash on their environment (issue 13): a start-up that meets an
 * unreachable NATS or an unwritable key directory keeps the process up and retrying, says why
 * on /readyz and in its heartbeat, and is ready once the environment is fixed; `homeostat status`
 * lists every instance from the heartbeats and exits 4 while a required service has no ready one.
 *
 * Services run as processes (scripts/factory.ts's spawnSupervised), each with its own NATS
 * identity and health port; on this busy 2-core machine a start can take a minute, hence the
 * long waits (each ends as soon as its condition holds).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile, type ChildProcess } from "node:child_process";
import { chmodSync, copyFileSync, createWriteStream, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect as tcpConnect, type Server, type Socket } from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { heartbeatKey, heartbeatSchema, instanceId, readHeartbeats, seedFile, type Heartbeat, type ServiceName } from "@homeostat/core";
import { freePort, repoRoot, spawnSupervised, stopChild, waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const bin = fileURLToPath(new URL("../packages/cli/bin/homeostat", import.meta.url));
const catalogDir = path.join(repoRoot, "examples", "catalog");

let t: TestEnv;
before(async () => {
  t = await testEnv();
});
after(async () => {
  await t?.cleanup();
});

/** One service as a process of its own (its own environment: a health port, a broken directory…). */
async function startService(name: ServiceName, env: Record<string, string>): Promise<{ child: ChildProcess; log: () => string; healthPort: number }> {
  const healthPort = await freePort();
  const logFile = path.join(t.dir, `${name}-${healthPort}.log`);
  const out = createWriteStream(logFile);
  const child = spawnSupervised(process.execPath, [path.join(repoRoot, "services", name, "src", "main.ts")], {
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: process.env.HOME ?? "/tmp",
      ...t.env,
      HOMEOSTAT_CATALOG: catalogDir,
      NATS_NKEY_SEED_FILE: seedFile(await t.natsCredentials(), name),
      HOMEOSTAT_HEALTH_PORT: String(healthPort),
      HOMEOSTAT_HEARTBEAT_MS: "500",
      // Tries come at most a second apart, so that a fixed environment is noticed quickly.
      HOMEOSTAT_STARTUP_BACKOFF_MAX_MS: "1000",
      NODE_COMPILE_CACHE: path.join(repoRoot, "node_modules", ".cache", "node-compile-cache"),
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
    cwd: repoRoot,
  });
  child.stdout!.pipe(out, { end: false });
  child.stderr!.pipe(out, { end: false });
  return { child, healthPort, log: () => readFileSync(logFile, "utf8") };
}

type ReadyBody = { ready: boolean; reasons: string[]; lastError?: { message: string; at: string } };

async function readyz(port: number): Promise<{ status: number; body: ReadyBody } | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    return { status: res.status, body: (await res.json()) as ReadyBody };
  } catch {
    return undefined; // not listening yet
  }
}

async function heartbeatOf(service: ServiceName, child: ChildProcess): Promise<Heartbeat | undefined> {
  const kv = await t.nats.kvm.open(t.nats.topology.bucket("services"));
  const entry = await kv.get(heartbeatKey(service, instanceId(undefined, child.pid)));
  return entry?.operation === "PUT" ? heartbeatSchema.parse(entry.json()) : undefined;
}

/** `homeostat status --json` against the factory: its exit code and answer. */
function status(addr: string, json = true): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, ["status", "--addr", addr, ...(json ? ["--json"] : [])], { env: process.env }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

type StatusAnswer = {
  ready: boolean;
  notReady: { service: string; why: string }[];
  instances: (Heartbeat & { ageMs: number; stale: boolean })[];
};

test("NATS unreachable at start: the service stays up, retrying, says so on /readyz, and is ready once NATS answers", async (t2) => {
  // NATS is reached through a port where nothing listens yet; the proxy opened there later forwards to the test's server.
  const natsPort = Number(new URL(t.env.NATS_URL!).port);
  const proxyPort = await freePort();
  const s = await startService("reconciler", { NATS_URL: `nats://127.0.0.1:${proxyPort}` });
  let proxy: Server | undefined;
  const sockets = new Set<Socket>();
  t2.after(async () => {
    await stopChild(s.child);
    for (const c of sockets) c.destroy();
    proxy?.close();
  });

  const waiting = await waitFor(
    "the reconciler to report its failing NATS connection",
    async () => {
      const r = await readyz(s.healthPort);
      return r?.status === 503 &&
        r.body.lastError?.message.startsWith("connecting to NATS") &&
        (s.log().match(/connecting to NATS failed; trying again/g) ?? []).length >= 2
        ? r
        : undefined;
    },
    60_000,
    200,
  );
  assert.deepEqual(waiting.body.reasons, ["starting: connecting to NATS"]);
  assert.equal(s.child.exitCode, null, "the process did not exit");
  assert.match(s.log(), /"kind":"transient"/, "each failed try is logged, classified");

  proxy = createServer((client) => {
    const upstream = tcpConnect({ port: natsPort, host: "127.0.0.1" });
    sockets.add(client).add(upstream);
    client.pipe(upstream).pipe(client);
    const end = () => (client.destroy(), upstream.destroy());
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise<void>((resolve) => proxy!.listen(proxyPort, "127.0.0.1", resolve));

  const ready = await waitFor("the reconciler to become ready", async () => ((await readyz(s.healthPort))?.status === 200 ? true : undefined), 90_000, 250);
  assert.ok(ready);
  const beat = await waitFor(
    "its heartbeat to say ready",
    async () => ((await heartbeatOf("reconciler", s.child))?.health === "ready" ? heartbeatOf("reconciler", s.child) : undefined),
    30_000,
    200,
  );
  assert.equal(beat!.region, t.config.region);
  assert.match(beat!.lastError!.message, /^connecting to NATS/, "the heartbeat keeps the last start-up error, with its time");
  assert.ok(Date.parse(beat!.lastError!.at) <= Date.parse(beat!.at));

  // A clean stop leaves a last heartbeat that says so.
  const pid = s.child.pid;
  await stopChild(s.child);
  const kv = await t.nats.kvm.open(t.nats.topology.bucket("services"));
  const last = heartbeatSchema.parse((await kv.get(heartbeatKey("reconciler", instanceId(undefined, pid))))!.json());
  assert.equal(last.health, "stopped");
});

test("a factory: `homeostat status` lists every service; a signer that cannot write its key stays up, says why, and is ready once the disk is fixed", async (t2) => {
  // The signer's key directory lies under a regular file: creating it fails (EEXIST) until the file goes.
  const blocker = path.join(t.dir, "not-a-directory");
  writeFileSync(blocker, "");
  const signerDir = path.join(blocker, "signer");
  const grpcAddr = `127.0.0.1:${await freePort()}`;
  const shared = { HOMEOSTAT_GRPC_ADDR: grpcAddr, HOMEOSTAT_INGEST_PORT: String(await freePort()) };
  const services: Awaited<ReturnType<typeof startService>>[] = [];
  /** The instance id of each service this test started. */
  const started = new Map<string, string>();
  t2.after(() => Promise.all(services.map((s) => stopChild(s.child))));
  for (const name of ["queue", "ingest", "reconciler", "builder", "agent"] as const) {
    const service = await startService(name, shared);
    services.push(service);
    started.set(name, instanceId(undefined, service.child.pid));
  }
  const signer = await startService("signer", { ...shared, HOMEOSTAT_SIGNER_DIR: signerDir });
  services.push(signer);
  started.set("signer", instanceId(undefined, signer.child.pid));
  const signerPort = signer.healthPort;

  const stuck = await waitFor(
    "the signer to report that it cannot write its key",
    async () => {
      const r = await readyz(signerPort);
      return r?.status === 503 && /EEXIST|ENOTDIR/.test(r.body.lastError?.message ?? "") ? r : undefined;
    },
    180_000,
    200,
  );
  assert.deepEqual(stuck.body.reasons, ["starting: loading the signing key"]);
  assert.match(stuck.body.lastError!.message, /^loading the signing key: .*(EEXIST|ENOTDIR)/);

  // Every other service ready, the signer not: status says which and why, and exits 4.
  const notReady = await waitFor(
    "status to show the others ready and the signer not",
    async () => {
      const r = await status(grpcAddr);
      if (r.code !== 4) return undefined;
      const answer = JSON.parse(r.stdout) as StatusAnswer;
      const agentListed = answer.instances.some((i) => i.service === "agent" && i.health === "ready");
      return answer.notReady.length === 1 && answer.notReady[0]!.service === "signer" && agentListed ? answer : undefined;
    },
    180_000,
    500,
  );
  assert.equal(notReady.ready, false);
  assert.match(notReady.notReady[0]!.why, /not ready: starting: loading the signing key/);
  const signerBeat = notReady.instances.find((i) => i.service === "signer")!;
  assert.equal(signerBeat.health, "not ready");
  assert.match(signerBeat.lastError!.message, /EEXIST|ENOTDIR/, "the heartbeat carries the last error");
  assert.equal(signerBeat.instance, instanceId(undefined, signer.child.pid));
  const agent = notReady.instances.find((i) => i.service === "agent")!;
  assert.equal(agent.details.agent, "disabled (no ANTHROPIC_API_KEY)", "the agent is listed, disabled, and optional");
  assert.match(notReady.instances.find((i) => i.service === "builder")!.details.building!, /^\d+$/, "the builder tells its builds in flight");
  const text = await status(grpcAddr, false);
  assert.equal(text.code, 4);
  assert.match(text.stdout, /^SERVICE +INSTANCE +REGION +VERSION +HEALTH +AGE +DETAILS +LAST ERROR$/m);
  assert.match(text.stdout, /^signer +\S+ +local +.+ not ready .*(EEXIST|ENOTDIR)/m);
  assert.match(text.stdout, /^NOT READY: signer: /m);
  assert.equal(signer.child.exitCode, null, "the signer did not exit");

  // The disk is fixed: the signer writes its key and is ready; the factory is.
  rmSync(blocker);
  await waitFor("the signer to become ready", async () => ((await readyz(signerPort))?.status === 200 ? true : undefined), 60_000, 250);
  const healthy = await waitFor(
    "status to say the factory is ready",
    async () => {
      const r = await status(grpcAddr);
      return r.code === 0 ? (JSON.parse(r.stdout) as StatusAnswer) : undefined;
    },
    60_000,
    500,
  );
  assert.equal(healthy.ready, true);
  for (const service of ["ingest", "queue", "reconciler", "builder", "signer"]) {
    // An instance an earlier test in this file stopped stays listed until its heartbeat expires
    // (as stopped, or, when it was killed before it could say so, as it last was): this test's
    // own process is the one that must be ready (a stopped heartbeat under the same id is an
    // earlier process's whose pid came round again).
    const own = healthy.instances.filter((i) => i.service === service && i.instance === started.get(service) && i.health !== "stopped");
    assert.equal(own.length, 1, `one running ${service} instance`);
    assert.equal(own[0]!.health, "ready", `${service} is ready`);
    assert.equal(own[0]!.stale, false);
    assert.equal(own[0]!.region, t.config.region);
    assert.match(own[0]!.version, /^0\.1\.0/);
  }
  const healthyText = await status(grpcAddr, false);
  assert.equal(healthyText.code, 0);
  assert.match(healthyText.stdout, /^ready: every required service/m);
  for (const s of services) assert.equal((await readyz(s.healthPort))?.status, 200, "every instance's /readyz agrees");
  assert.match(readFileSync(path.join(signerDir, "cosign.pub"), "utf8"), /BEGIN PUBLIC KEY/);
});

test("a service writes only its own heartbeats (nats-access.ts); the queue reads every one", async () => {
  const beat = (service: ServiceName): Heartbeat => ({
    v: 1,
    service,
    instance: "permissions-test-1",
    version: "0.1.0",
    region: t.config.region,
    host: "permissions-test",
    pid: 1,
    startedAt: new Date().toISOString(),
    at: new Date().toISOString(),
    health: "ready",
    reasons: [],
    details: {},
  });
  const signer = await t.connectAs("signer");
  const asSigner = await signer.kvm.open(signer.topology.bucket("services"), { allow_direct: true });
  await asSigner.put(heartbeatKey("signer", "permissions-test-1"), JSON.stringify(beat("signer")));
  await assert.rejects(
    asSigner.put(heartbeatKey("builder", "permissions-test-1"), JSON.stringify(beat("builder"))),
    "the signer may not speak for the builder",
  );
  const queue = await t.connectAs("queue");
  const listed = await readHeartbeats(await queue.kvm.open(queue.topology.bucket("services"), { allow_direct: true }), { staleAfterMs: 60_000 });
  const mine = listed.filter((i) => i.instance === "permissions-test-1");
  assert.deepEqual(
    mine.map((i) => [i.service, i.health, i.stale]),
    [["signer", "ready", false]],
  );
});

test("invalid configuration is not retried: a NATS seed that others may read ends the start at once with 78 (EX_CONFIG)", async () => {
  const seed = path.join(t.dir, "readable.nk");
  copyFileSync(seedFile(await t.natsCredentials(), "reconciler"), seed);
  chmodSync(seed, 0o644);
  const s = await startService("reconciler", { NATS_NKEY_SEED_FILE: seed });
  const code = await waitFor("the reconciler to exit", async () => (s.child.exitCode === null ? undefined : { code: s.child.exitCode }), 120_000, 100).then(
    (r) => r.code,
    async (err: unknown) => {
      await stopChild(s.child);
      throw err;
    },
  );
  assert.equal(code, 78, s.log());
  assert.match(s.log(), /is readable by others \(mode 644\): chmod 600 it/);
  assert.doesNotMatch(s.log(), /trying again/);
});
