/**
 * WatchKeys end to end: the real queue service (its own process, started by the factory
 * launcher on the harness's NATS and Redis) serving many concurrent watchers and the real
 * `homeostat list --watch --json`, while statuses change in the state bucket. In the middle the
 * queue service restarts, and changes are made while it is down: every watcher resumes from
 * its last revision and ends holding exactly the bucket's state, having seen no revision twice;
 * before the restart, each saw every change. `buf curl --list-methods` (npm's buf) lists the
 * service through reflection.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { keyToken, StateStore, type Key, type Phase } from "@homeostat/core";
import { statusClient, type StatusClient, watchKeysResuming, type WatchEvent } from "@homeostat/status-api";
import { repoRoot, startFactory, waitFor, type Factory } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const bin = fileURLToPath(new URL("../packages/cli/bin/homeostat", import.meta.url));
const watchers = 40;
const keys: Key[] = ["package/libgreet", "package/greet", "package/motd", "image/greeter", "image/devkit"];
const cycle: Phase[] = ["Pending", "Building", "Signing", "Ready"];

let t: TestEnv;
let factory: Factory;
let state: StateStore;

before(async () => {
  t = await testEnv();
  state = new StateStore(t.buckets.state);
  factory = await startFactory({ env: t.env, natsCredentials: await t.natsCredentials(), logDir: path.join(t.dir, "logs"), only: ["queue"] });
});

after(async () => {
  await factory?.stop();
  await t?.cleanup();
});

/** What one watcher saw: every event, and the state it holds (key -> revision of its status). */
type Seen = { events: WatchEvent[]; held: Map<Key, number>; synced: boolean; interruptions: number };

function follow(client: StatusClient, signal: AbortSignal): { seen: Seen; done: Promise<void> } {
  const seen: Seen = { events: [], held: new Map(), synced: false, interruptions: 0 };
  const done = (async () => {
    for await (const e of watchKeysResuming(client, {}, { signal, delayMs: 100, maxDelayMs: 500, onInterruption: () => void seen.interruptions++ })) {
      seen.events.push(e);
      if (e.type === "reset") seen.held.clear();
      else if (e.type === "synced") seen.synced = true;
      else if (e.type === "delete") seen.held.delete(e.key);
      else seen.held.set(e.key, e.revision);
    }
  })();
  return { seen, done };
}

/** The bucket's state: key -> revision of its current status. */
async function bucketState(): Promise<Map<Key, number>> {
  const out = new Map<Key, number>();
  for (const key of keys) {
    const e = await t.buckets.state.get(keyToken(key));
    if (e && e.operation === "PUT") out.set(key, e.revision);
  }
  return out;
}

let step = 0;
/** Moves each key to its next phase (or removes it, now and then): one change each. */
async function changeAll(): Promise<void> {
  for (const key of keys) {
    step++;
    if (step % 7 === 0) await state.remove(key);
    else await state.update(key, (cur) => ({ ...(cur ?? StateStore.initial(key)), phase: cycle[step % cycle.length]! }));
  }
}

const changeRevisions = (s: Seen) => s.events.filter((e) => e.type === "put" || e.type === "delete").map((e) => e.revision);

test(
  "many watchers and the CLI follow every change, and resume across a restart of the queue service without gaps or duplicates",
  { timeout: 120_000 },
  async () => {
    for (const key of keys) await state.update(key, () => StateStore.initial(key));
    const ac = new AbortController();
    const clients = Array.from({ length: 4 }, () => statusClient(factory.grpcAddr));
    const followers = Array.from({ length: watchers }, (_, i) => follow(clients[i % clients.length]!, ac.signal));
    const cli = spawn(bin, ["list", "--watch", "--json", "--addr", factory.grpcAddr], { stdio: ["ignore", "pipe", "pipe"] });
    let cliOut = "";
    let cliErr = "";
    cli.stdout!.on("data", (b: Buffer) => (cliOut += b));
    cli.stderr!.on("data", (b: Buffer) => (cliErr += b));
    const cliExit = new Promise<number | null>((resolve) => cli.once("exit", (code) => resolve(code)));
    try {
      await waitFor("every watcher to be synced", async () => followers.every((f) => f.seen.synced) && cliOut.includes('"type":"synced"'), 20_000);
      const synced = followers.map((f) => f.seen.events.length);

      // Live: each watcher sees every change, in revision order.
      const firstRevision = (await t.buckets.state.status()).streamInfo.state.last_seq;
      for (let round = 0; round < 4; round++) await changeAll();
      const lastLive = (await t.buckets.state.status()).streamInfo.state.last_seq;
      const expected = Array.from({ length: lastLive - firstRevision }, (_, i) => firstRevision + 1 + i);
      await waitFor("every live change at every watcher", async () => followers.every((f) => changeRevisions(f.seen).at(-1) === lastLive), 20_000);
      for (const [i, f] of followers.entries()) {
        assert.deepEqual(changeRevisions(f.seen), expected, `watcher ${i} saw every change once, in order`);
        assert.ok(f.seen.events.length > synced[i]!);
      }

      // The queue service goes away, changes happen meanwhile, it comes back, more changes.
      await factory.processes.get("queue")!.kill("SIGKILL");
      await changeAll();
      await changeAll();
      await factory.restart("queue");
      await changeAll();

      const final = await bucketState();
      const lastRevision = (await t.buckets.state.status()).streamInfo.state.last_seq;
      await waitFor("every watcher to hold the bucket's state", async () => followers.every((f) => sameState(f.seen.held, final)), 30_000);
      for (const [i, f] of followers.entries()) {
        const revisions = changeRevisions(f.seen);
        assert.equal(new Set(revisions).size, revisions.length, `watcher ${i} saw no change twice`);
        assert.deepEqual(
          revisions,
          [...revisions].sort((a, b) => a - b),
          `watcher ${i} saw changes in revision order`,
        );
        assert.equal(revisions.at(-1), lastRevision);
        assert.ok(f.seen.interruptions >= 1, `watcher ${i} noticed the restart`);
        assert.ok(!f.seen.events.some((e) => e.type === "reset"), `watcher ${i} resumed rather than starting over`);
      }

      // The CLI: the same, as JSON lines, with the interruption said on stderr.
      await waitFor("the CLI to print the last change", async () => cliOut.includes(`"revision":${lastRevision}`), 20_000);
      const lines = cliOut
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as WatchEvent);
      const cliRevisions = lines.filter((e) => e.type === "put" || e.type === "delete").map((e) => e.revision);
      assert.equal(new Set(cliRevisions).size, cliRevisions.length);
      assert.match(cliErr, /the watch broke \(.*\); resuming after revision \d+ in \d+ ms/);
      cli.kill("SIGINT");
      assert.equal(await cliExit, 0, cliErr);
    } finally {
      ac.abort();
      await Promise.all(followers.map((f) => f.done));
      for (const c of clients) c.close();
      if (cli.exitCode === null) cli.kill("SIGKILL");
    }
  },
);

test("get -w prints one line per change of one key; a bad filter is refused, not retried", { timeout: 30_000 }, async () => {
  const key: Key = "package/motd";
  await state.update(key, (cur) => ({ ...(cur ?? StateStore.initial(key)), phase: "Pending", desiredVersion: "1.1" }));
  const cli: ChildProcess = spawn(bin, ["get", "-w", key, "--addr", factory.grpcAddr], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  cli.stdout!.on("data", (b: Buffer) => (out += b));
  const exit = new Promise<number | null>((resolve) => cli.once("exit", (code) => resolve(code)));
  try {
    await waitFor("the initial line", async () => out.includes("package/motd"), 10_000);
    await state.update("package/greet", (cur) => ({ ...(cur ?? StateStore.initial("package/greet")), phase: "Building" }));
    await state.update(key, (cur) => ({ ...cur!, phase: "Building" }));
    await waitFor("the change", async () => /Building/.test(out), 10_000);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 2, out);
    assert.match(lines[0]!, /^\S+Z\s+package\/motd\s+Pending\s+desired 1\.1\s+actual -$/);
    assert.match(lines[1]!, /^\S+Z\s+package\/motd\s+Building\s+desired 1\.1\s+actual -$/);
  } finally {
    cli.kill("SIGTERM");
  }
  assert.equal(await exit, 0);

  const refused = await run(["list", "--watch", "--prefix", "p".repeat(300), "--addr", factory.grpcAddr]);
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /prefix is longer than 256 characters \(INVALID_ARGUMENT\)/);
  const nobody = await run(["list", "--watch", "--addr", "127.0.0.1:1"]);
  assert.equal(nobody.code, 2);
  assert.match(nobody.stderr, /^homeostat: cannot reach homeostat at 127\.0\.0\.1:1/);
});

function run(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => execFile(bin, args, (err, _stdout, stderr) => resolve({ code: err ? Number(err.code) : 0, stderr })));
}

test("the server answers reflection: buf curl --list-methods names WatchKeys", { timeout: 30_000 }, async () => {
  const buf = path.join(repoRoot, "node_modules", ".bin", "buf");
  const out = await new Promise<string>((resolve, reject) =>
    execFile(buf, ["curl", "--list-methods", "--protocol", "grpc", "--http2-prior-knowledge", `http://${factory.grpcAddr}`], (err, stdout, stderr) =>
      err ? reject(new Error(`buf curl failed (npm @bufbuild/buf, installed by pnpm install): ${stderr || err.message}`)) : resolve(stdout),
    ),
  );
  assert.match(out, /^homeostat\.v1\.StatusService\/WatchKeys$/m);
  assert.match(out, /^homeostat\.v1\.StatusService\/Enqueue$/m);
  assert.match(out, /^grpc\.health\.v1\.Health\/Check$/m);
  // The standard health service answers buf curl with no schema files either.
  const health = await new Promise<string>((resolve, reject) =>
    execFile(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", `http://${factory.grpcAddr}/grpc.health.v1.Health/Check`], (err, stdout, stderr) =>
      err ? reject(new Error(`buf curl of the health service failed: ${stderr || err.message}`)) : resolve(stdout),
    ),
  );
  assert.match(health, /"status":\s*"SERVING"/);
});

function sameState(a: Map<Key, number>, b: Map<Key, number>): boolean {
  return a.size === b.size && [...a].every(([k, r]) => b.get(k) === r);
}
