/**
 * The read model heals, against a redis-server of this test's own (the shared one is never
 * flushed): FLUSHALL is noticed and the projection rebuilt from the state bucket without a
 * restart; with Redis SIGKILLed, GetKey and ListKeys still answer, from the state bucket, flagged
 * degraded (and the CLI says so, exit 0); Redis restarted empty is rebuilt, changes made during
 * the outage included. The CLI tells a server it cannot reach (exit 2) from a server that is up
 * but whose stores are not (exit 3).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { Redis } from "ioredis";
import { keyToken, type Key } from "@homeostat/core/key";
import { connectNats } from "@homeostat/core";
import type { Logger } from "@homeostat/core/log";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import type { KeyStatus } from "@homeostat/core/status";
import { listKeyStatuses, readKeyStatus, statusClient, type StatusClient } from "@homeostat/status-api";
import { freePort, portAnswers, repoRoot, stopChild, waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";
import { KeyFeed } from "../services/queue/src/key-feed.ts";
import { HealingReadModel, StatusReadModel } from "../services/queue/src/read-model.ts";
import { followState } from "@homeostat/core/state-follower";
import { startStatusApi, type StatusApi } from "../services/queue/src/status-api.ts";

const checkMs = 200;
const keys: Key[] = Array.from({ length: 30 }, (_, i) => `package/p${String(i).padStart(2, "0")}` as Key);
const status = (key: Key, version: string): KeyStatus => ({ key, phase: "Ready", desiredVersion: version, attempts: 0, updatedAt: new Date().toISOString() });
const cli = path.join(repoRoot, "packages", "cli", "bin", "homeostat");
/** The CLI, run without blocking this process (which serves the API it calls). */
const homeostat = (args: string[]) =>
  new Promise<{ status: number; stdout: string; stderr: string }>((resolve) => {
    execFile(cli, args, { encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ status: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
const security = { tls: undefined, tokens: [], readAuth: "none" as const, insecure: false };

let t: TestEnv;
let redisPort: number;
let redisServer: ChildProcess | undefined;
let redis: Redis;
let model: HealingReadModel;
let queue: WorkQueue;
let api: StatusApi;
let client: StatusClient;
const stop = new AbortController();
const warnings: string[] = [];
const log: Logger = { info() {}, warn: (msg) => void warnings.push(msg), error() {} };

async function startRedis(): Promise<void> {
  redisServer = spawn("/usr/bin/redis-server", ["--bind", "127.0.0.1", "--port", String(redisPort), "--save", "", "--appendonly", "no", "--dir", t.dir], {
    stdio: "ignore",
  });
  await waitFor("redis-server", () => portAnswers(redisPort), 10_000, 50);
}

before(async () => {
  t = await testEnv();
  redisPort = await freePort();
  await startRedis();
  for (const key of keys) await t.buckets.state.put(keyToken(key), JSON.stringify(status(key, "1.0")));
  // As the queue service connects (main.ts): fail fast, never queue.
  redis = new Redis(`redis://127.0.0.1:${redisPort}`, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: checkMs,
    retryStrategy: () => 100,
  });
  const feed = new KeyFeed();
  model = new HealingReadModel({ store: new StatusReadModel(redis, t.nats.topology), state: t.buckets.state, source: feed, topology: t.nats.topology, log });
  await followState(t.buckets.state, stop.signal, (entry) => {
    feed.apply(entry);
    model.apply(entry);
  });
  model.start(checkMs, stop.signal);
  queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log, owner: "heal-test" }));
  api = await startStatusApi({
    addr: "127.0.0.1:0",
    security,
    readModel: model,
    queue,
    releases: { list: async () => [] },
    advisories: { list: async () => [] },
    inCatalog: () => true,
    feed,
    onError: () => {},
  });
  client = statusClient(`127.0.0.1:${api.port}`);
});

after(async () => {
  stop.abort();
  client?.close();
  await api?.close();
  redis?.disconnect();
  if (redisServer) await stopChild(redisServer);
  await t?.cleanup();
});

const healed = (what: string, timeoutMs = 5_000) =>
  waitFor(
    what,
    async () => {
      const page = await listKeyStatuses(client, { pageSize: 1000 });
      return page.degraded === undefined && page.items.length === keys.length ? page : undefined;
    },
    timeoutMs,
    50,
  );

test("the projection is built at start; FLUSHALL is noticed and rebuilt within seconds, without a restart", async () => {
  await healed("the first build");
  assert.equal(await redis.hlen(`${t.prefix}:status`), keys.length);
  const rebuilds = model.rebuilds;
  await redis.flushall();
  const flushed = Date.now();
  await healed("the rebuild after FLUSHALL");
  const ms = Date.now() - flushed;
  assert.ok(ms < 5_000, `healed in ${ms} ms`);
  assert.equal(model.rebuilds, rebuilds + 1);
  assert.equal(await redis.hlen(`${t.prefix}:status`), keys.length, "Redis holds every status again");
  console.log(`# FLUSHALL healed in ${ms} ms`);
});

test("with Redis killed, GetKey and ListKeys answer from the state bucket, flagged; the CLI says so and exits 0", async () => {
  redisServer!.kill("SIGKILL");
  await new Promise((r) => redisServer!.once("exit", r));
  // A change while Redis is down: it must be in the degraded answers and in the healed model.
  await t.buckets.state.put(keyToken("package/p03"), JSON.stringify(status("package/p03", "2.0")));
  const read = await waitFor(
    "a degraded GetKey with the new version",
    async () => {
      const r = await readKeyStatus(client, "package/p03");
      return r.degraded && r.status.desiredVersion === "2.0" ? r : undefined;
    },
    5_000,
    50,
  );
  assert.match(read.degraded!, /Redis|write/);
  const page = await listKeyStatuses(client, { prefix: "package/p1", pageSize: 4 });
  assert.ok(page.degraded);
  assert.deepEqual(
    page.items.map((s) => s.key),
    ["package/p10", "package/p11", "package/p12", "package/p13"],
  );
  const next = await listKeyStatuses(client, { prefix: "package/p1", pageSize: 100, pageToken: page.nextPageToken! });
  assert.deepEqual(
    next.items.map((s) => s.key),
    ["package/p14", "package/p15", "package/p16", "package/p17", "package/p18", "package/p19"],
  );
  assert.equal(next.nextPageToken, undefined);

  const get = await homeostat(["get", "package/p03", "--json", "--addr", `127.0.0.1:${api.port}`]);
  assert.equal(get.status, 0, get.stderr);
  assert.equal((JSON.parse(get.stdout) as KeyStatus).desiredVersion, "2.0");
  assert.match(get.stderr, /read model .* is degraded .*answered from the state store/);
  const list = await homeostat(["list", "--addr", `127.0.0.1:${api.port}`]);
  assert.equal(list.status, 0, list.stderr);
  assert.equal(list.stdout.trim().split("\n").length, keys.length + 1, "a header and every key");
  assert.match(list.stderr, /degraded/);
  assert.ok(
    warnings.some((w) => w.includes("degraded")),
    "the service logged that it is degraded",
  );
});

test("Redis restarted empty: the projection is rebuilt, with what changed during the outage", async () => {
  await startRedis();
  const page = await healed("the rebuild after the restart", 10_000);
  assert.equal(page.items.find((s) => s.key === "package/p03")?.desiredVersion, "2.0");
  assert.equal(JSON.parse((await redis.hget(`${t.prefix}:status`, "package/p03"))!).desiredVersion, "2.0");
  // And it follows changes again.
  await t.buckets.state.put(keyToken("package/p04"), JSON.stringify(status("package/p04", "3.0")));
  await waitFor(
    "the change in Redis",
    async () => JSON.parse((await redis.hget(`${t.prefix}:status`, "package/p04")) ?? "{}").desiredVersion === "3.0",
    5_000,
    50,
  );
});

test("the CLI tells a server it cannot reach (exit 2) from one that is up but whose stores are not (exit 3)", async () => {
  const nobody = await freePort();
  const unreachable = await homeostat(["get", "package/p03", "--addr", `127.0.0.1:${nobody}`]);
  assert.equal(unreachable.status, 2, unreachable.stderr);
  assert.match(unreachable.stderr, /cannot reach homeostat/);
  // The queue RPCs need JetStream: a queue whose NATS connection is gone is the server failing to answer.
  const nats = await connectNats(t.config, "heal-test-closed");
  await nats.nc.close();
  const closed = new WorkQueue(nats, workQueueOptions(t.config, { log, owner: "closed" }));
  const broken = await startStatusApi({
    addr: "127.0.0.1:0",
    security,
    readModel: model,
    queue: closed,
    releases: { list: async () => [] },
    advisories: { list: async () => [] },
    inCatalog: () => true,
    feed: new KeyFeed(),
    onError: () => {},
  });
  try {
    const stats = await homeostat(["queue", "stats", "--addr", `127.0.0.1:${broken.port}`]);
    assert.equal(stats.status, 3, stats.stderr);
    assert.match(stats.stderr, /is up but cannot answer now: QueueStats: /);
  } finally {
    await broken.close();
  }
});
