/**
 * The status API against a real Redis read model and a real WorkQueue on NATS (own random
 * prefix, streams, buckets and Redis keys, removed at the end): GetKey round-trips a full
 * KeyStatus, ListKeys pages and filters, the queue RPCs reach the queue, KnownFacts answers from
 * the real release and advisory stores, errors carry the right codes, the health service
 * answers SERVING, and bad input leaves the server up.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { service as healthService } from "grpc-health-check";
import { AdvisoryStore, type Osv, ReleaseStore } from "@homeostat/catalog";
import { connectNats, type Logger } from "@homeostat/core";
import { done, nonRetriable, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import type { StatusApiSecurity } from "@homeostat/core/config";
import {
  enqueueKey,
  getKeyStatus,
  getQueueStats,
  grpc,
  knownFacts,
  listDeadLetters,
  listKeyStatuses,
  retryDeadLetter,
  Status,
  statusClient,
  type StatusClient,
  statusServiceName,
  tokenDigest,
} from "@homeostat/status-api";
import { StatusReadModel } from "./read-model.ts";
import type { KeyStatus } from "@homeostat/core/status";
import { Topology } from "@homeostat/core/topology";
import { waitFor } from "../../../scripts/factory.ts";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { startStatusApi, type StatusApi } from "./status-api.ts";
import { KeyFeed } from "./key-feed.ts";
import { grpcError } from "./test-support.ts";

// ioredis is a dependency of core, not of this service: load it from core's side.
type RedisClient = ConstructorParameters<typeof StatusReadModel>[0];
const coreRequire = createRequire(import.meta.resolve("@homeostat/core/state"));
const { Redis } = coreRequire("ioredis") as { Redis: new (url: string, opts?: object) => RedisClient };

const digest = (c: string): `sha256:${string}` => `sha256:${c.repeat(64)}`;
const quiet: Logger = { info() {}, warn() {}, error() {} };

let t: TestEnv;
let prefix: string;
let redis: RedisClient;
let queue: WorkQueue;
let releases: ReleaseStore;
let advisories: AdvisoryStore;
let api: StatusApi;
let client: StatusClient;

// Authentication has its own tests (status-auth.test.ts); here a write token opens every method.
const writeToken = "status-api-test-write-token";
const security: StatusApiSecurity = {
  tls: undefined,
  tokens: [{ name: "test", role: "write", sha256: tokenDigest(writeToken) }],
  readAuth: "none",
  insecure: false,
};
const clientFor = (port: number) => statusClient(`127.0.0.1:${port}`, { token: writeToken });

const full: KeyStatus = {
  key: "package/openssl",
  phase: "Ready",
  desiredVersion: "3.2.1",
  desiredInputDigest: digest("a"),
  actual: {
    version: "3.2.1",
    inputDigest: digest("a"),
    outputs: {
      archive: digest("b"),
      diffId: digest("c"),
      size: 123456789012,
      metadata: digest("d"),
      sbom: digest("e"),
      provenance: digest("f"),
      location: "store/package/openssl/3.2.1",
    },
    signatures: { archive: digest("f") },
    keyId: "homeostat-test-key",
    builtAt: "2026-11-22T07:00:00.000Z",
    traceId: "0af7651916cd43dd8448eb211c80319c",
  },
  attempts: 0,
  lastError: "",
  cause: { type: "release", id: "3.2.1", detail: "upstream released 3.2.1" },
  traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  fannedOut: digest("a"),
  updatedAt: "2026-11-22T07:01:00.000Z",
};

function minimal(key: KeyStatus["key"], phase: KeyStatus["phase"] = "Pending"): KeyStatus {
  return { key, phase, attempts: 0, updatedAt: "2026-11-22T08:00:00.000Z" };
}

const others = ["image/nginx", "image/redis", "package/openssl-fips", "package/zlib", "package/a.b+c_d-e"].map((k) => minimal(k as KeyStatus["key"]));

/** The catalog the server checks enqueues against: the keys above, and package/x. */
const catalogKeys = new Set<string>([full.key, ...others.map((s) => s.key), "package/x"]);
const feed = new KeyFeed();
const served = { inCatalog: (key: string) => catalogKeys.has(key), feed };

before(async () => {
  t = await testEnv();
  prefix = t.prefix;
  redis = t.redis;
  const model = new StatusReadModel(redis, t.nats.topology);
  for (const s of [full, ...others]) await model.put(s);
  queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "status-api-test" }));
  releases = new ReleaseStore(t.buckets.releases);
  advisories = await AdvisoryStore.open(t.nats);
  api = await startStatusApi({ addr: "127.0.0.1:0", security, readModel: model, queue, releases, advisories, ...served, onError: () => {} });
  client = clientFor(api.port);
});

after(async () => {
  client?.close();
  await api?.close();
  await t?.cleanup();
});

test("GetKey returns the stored status unchanged", async () => {
  assert.deepEqual(await getKeyStatus(client, "package/openssl"), full);
  assert.deepEqual(await getKeyStatus(client, "package/a.b+c_d-e"), others[4]);
});

test("GetKey of a malformed key is INVALID_ARGUMENT with a message", async () => {
  for (const bad of ["", "openssl", "package/", "package/../etc", "volume/x", "package/x y", "image/" + "x".repeat(200)]) {
    const err = await grpcError(getKeyStatus(client, bad));
    assert.equal(err.code, Status.INVALID_ARGUMENT, bad);
    assert.match(err.details, /invalid key .*must be package\/<name> or image\/<name>/);
  }
});

test("GetKey of an unknown key is NOT_FOUND", async () => {
  const err = await grpcError(getKeyStatus(client, "image/unknown"));
  assert.equal(err.code, Status.NOT_FOUND);
  assert.equal(err.details, "no status for image/unknown");
});

test("ListKeys lists in key order, filters by prefix and pages", async () => {
  const all = await listKeyStatuses(client);
  assert.deepEqual(
    all.items.map((s) => s.key),
    ["image/nginx", "image/redis", "package/a.b+c_d-e", "package/openssl", "package/openssl-fips", "package/zlib"],
  );
  assert.equal(all.nextPageToken, undefined);
  assert.deepEqual(all.items[3], full);

  const images = await listKeyStatuses(client, { prefix: "image/" });
  assert.deepEqual(
    images.items.map((s) => s.key),
    ["image/nginx", "image/redis"],
  );

  const seen: string[] = [];
  let token: string | undefined;
  let pages = 0;
  do {
    const page = await listKeyStatuses(client, { prefix: "package/", pageSize: 2, ...(token ? { pageToken: token } : {}) });
    assert.ok(page.items.length <= 2);
    seen.push(...page.items.map((s) => s.key));
    token = page.nextPageToken;
    pages++;
  } while (token);
  assert.deepEqual(seen, ["package/a.b+c_d-e", "package/openssl", "package/openssl-fips", "package/zlib"]);
  assert.equal(pages, 2);

  const none = await listKeyStatuses(client, { prefix: "package/nothing" });
  assert.deepEqual(none, { items: [] });
});

test("ListKeys rejects bad page sizes, tokens and prefixes", async () => {
  let err = await grpcError(listKeyStatuses(client, { pageSize: -1 }));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  err = await grpcError(listKeyStatuses(client, { pageToken: "not a token!" }));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  // A token from another prefix would leak keys outside the requested one.
  const first = await listKeyStatuses(client, { prefix: "image/", pageSize: 1 });
  assert.ok(first.nextPageToken);
  err = await grpcError(listKeyStatuses(client, { prefix: "package/", pageToken: first.nextPageToken }));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  err = await grpcError(listKeyStatuses(client, { prefix: "x".repeat(300) }));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  // Still serving.
  assert.equal((await getKeyStatus(client, "package/openssl")).phase, "Ready");
});

test("a page size above the maximum is capped, not refused", async () => {
  const page = await listKeyStatuses(client, { pageSize: 1_000_000 });
  assert.equal(page.items.length, 6);
});

test("garbage bytes on the wire do not take the server down", async () => {
  const raw = new grpc.Client(`127.0.0.1:${api.port}`, grpc.credentials.createInsecure());
  try {
    const code = await new Promise<number>((resolve) => {
      raw.makeUnaryRequest(
        "/homeostat.v1.StatusService/GetKey",
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]),
        (err) => resolve(err?.code ?? grpc.status.OK),
      );
    });
    assert.notEqual(code, grpc.status.OK);
  } finally {
    raw.close();
  }
  assert.equal((await getKeyStatus(client, "image/nginx")).key, "image/nginx");
});

test("health service reports SERVING, and NOT_SERVING when told", async () => {
  const Health = grpc.makeGenericClientConstructor(healthService, "Health");
  const health = new Health(`127.0.0.1:${api.port}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
  };
  const check = (service: string) =>
    new Promise<string>((resolve, reject) => health.check({ service }, (err, res) => (err ? reject(err) : resolve(res!.status))));
  try {
    assert.equal(await check(""), "SERVING");
    assert.equal(await check(statusServiceName), "SERVING");
    api.setServing(false);
    assert.equal(await check(""), "NOT_SERVING");
    api.setServing(true);
    assert.equal(await check(""), "SERVING");
    await assert.rejects(check("no.such.Service"), (err: grpc.ServiceError) => err.code === grpc.status.NOT_FOUND);
  } finally {
    health.close();
  }
});

test("a read model that cannot reach Redis gives UNAVAILABLE, a corrupt status INTERNAL", async () => {
  const dead = new Redis("redis://127.0.0.1:1", { lazyConnect: true, enableOfflineQueue: false, maxRetriesPerRequest: 0, retryStrategy: () => null });
  dead.on("error", () => {});
  const deadApi = await startStatusApi({
    addr: "127.0.0.1:0",
    security,
    readModel: new StatusReadModel(dead, new Topology({ prefix, region: "local" })),
    queue,
    releases,
    advisories,
    ...served,
    onError: () => {},
  });
  const deadClient = clientFor(deadApi.port);
  try {
    assert.equal((await grpcError(getKeyStatus(deadClient, "package/openssl"))).code, Status.UNAVAILABLE);
    assert.equal((await grpcError(listKeyStatuses(deadClient))).code, Status.UNAVAILABLE);
  } finally {
    deadClient.close();
    await deadApi.close();
    // retryStrategy null: the client ends itself; disconnecting an ended client only arms a 2 s timer.
    if (dead.status !== "end") dead.disconnect();
  }
  // A foreign value in our hash must not crash the server.
  await redis.hset(`${prefix}:status`, "package/corrupt", "{not json");
  const err = await grpcError(getKeyStatus(client, "package/corrupt"));
  assert.equal(err.code, Status.INTERNAL);
  await redis.hdel(`${prefix}:status`, "package/corrupt");
});

test("QueueStats counts an empty queue as zeros in every class", async () => {
  assert.deepEqual(await getQueueStats(client), {
    depth: { advisory: 0, release: 0, dependency: 0, resync: 0, repair: 0 },
    running: 0,
    retrying: 0,
    deadLetters: 0,
  });
});

test("Enqueue queues a key, deduplicates it, and counts it in its class", async () => {
  assert.equal(await enqueueKey(client, { key: "package/openssl", causeDetail: "operator asked" }), "added");
  assert.equal(await enqueueKey(client, { key: "package/openssl", priority: "release" }), "deduped");
  assert.equal(await enqueueKey(client, { key: "image/nginx", priority: "advisory", notBeforeDelayMs: 3_600_000, floorDelayMs: 60_000 }), "added");
  // The more urgent class wins the merge: the key moves from resync to advisory.
  assert.equal(await enqueueKey(client, { key: "package/zlib", priority: "resync" }), "added");
  assert.equal(await enqueueKey(client, { key: "package/zlib", priority: "advisory", notBeforeDelayMs: 0 }), "deduped");
  const stats = await getQueueStats(client);
  assert.deepEqual(stats.depth, { advisory: 2, release: 1, dependency: 0, resync: 0, repair: 0 });
});

test("Enqueue of a key the catalog does not declare is NOT_FOUND, unless forced", async () => {
  const err = await grpcError(enqueueKey(client, { key: "package/not-declared" }));
  assert.equal(err.code, Status.NOT_FOUND);
  assert.equal(err.details, "package/not-declared is not in the catalog (force the enqueue to retire a key that left it)");
  const before = await getQueueStats(client);
  assert.equal(await enqueueKey(client, { key: "package/not-declared", priority: "dependency", force: true }), "added");
  assert.equal((await getQueueStats(client)).depth.dependency, before.depth.dependency + 1);
});

test("Enqueue rejects a bad key, priority, delay or detail with INVALID_ARGUMENT", async () => {
  const cases: [Parameters<typeof enqueueKey>[1], RegExp][] = [
    [{ key: "openssl" }, /invalid key "openssl": must be package\/<name> or image\/<name>/],
    [{ key: "package/x", priority: "urgent" }, /invalid priority "urgent": must be one of advisory, release, dependency, resync/],
    [{ key: "package/x", priority: "RELEASE" }, /invalid priority/],
    [{ key: "package/x", notBeforeDelayMs: -1 }, /not_before_delay_ms must be between 0 and 2592000000 \(30 days\), got -1/],
    [{ key: "package/x", floorDelayMs: 31 * 24 * 3_600_000 }, /floor_delay_ms must be between 0 and/],
    [{ key: "package/x", causeDetail: "x".repeat(3000) }, /invalid cause_detail/],
  ];
  for (const [args, re] of cases) {
    const err = await grpcError(enqueueKey(client, args));
    assert.equal(err.code, Status.INVALID_ARGUMENT, JSON.stringify(args).slice(0, 80));
    assert.match(err.details, re);
  }
  assert.equal((await getQueueStats(client)).depth.release, 1, "nothing queued by a refused request");
});

test("ListDeadLetters lists a non-retriable key; RetryDeadLetter queues it again", async () => {
  assert.deepEqual(await listDeadLetters(client), { items: [], total: 0 });
  const ac = new AbortController();
  const running = queue.run({
    concurrency: 2,
    signal: ac.signal,
    reconcile: async (item) => (item.key === "package/openssl" ? nonRetriable("not in the catalog") : done),
  });
  try {
    const since = Date.now();
    await waitFor("the dead letter", async () => (await queue.deadLetters()).length === 1, 15_000);
    const [stored] = await queue.deadLetters();
    const page = await listDeadLetters(client);
    assert.deepEqual(page, {
      total: 1,
      items: [
        {
          key: "package/openssl",
          reason: "not in the catalog",
          nonRetriable: true,
          attempts: stored!.attempts,
          at: new Date(stored!.at).toISOString(),
          priority: "release",
          cause: { type: "manual", detail: "operator asked" },
        },
      ],
    });
    assert.ok(stored!.at >= since && stored!.at <= Date.now());
    assert.equal((await getQueueStats(client)).deadLetters, 1);
    assert.deepEqual(await listDeadLetters(client, { limit: 1 }), page);
  } finally {
    ac.abort();
    await running;
  }
  // Stopped workers: the retried key stays queued where the stats can see it.
  await retryDeadLetter(client, "package/openssl");
  assert.equal((await getQueueStats(client)).depth.release, 1);
});

test("RetryDeadLetter of a key not in the dead letters is NOT_FOUND; of a bad key INVALID_ARGUMENT", async () => {
  let err = await grpcError(retryDeadLetter(client, "package/zlib"));
  assert.equal(err.code, Status.NOT_FOUND);
  assert.equal(err.details, "package/zlib is neither in the dead letters nor Failed");
  err = await grpcError(retryDeadLetter(client, "package/../x"));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  assert.match(err.details, /^invalid key/);
});

test("RetryDeadLetter of a Failed key queues it as an operator's request", async () => {
  const model = new StatusReadModel(redis, t.nats.topology);
  await model.put({ ...minimal("package/x", "Failed"), lastError: "build refused (unknown-revision)" });
  const before = (await queue.stats()).depth.release;
  await retryDeadLetter(client, "package/x");
  assert.equal((await queue.stats()).depth.release, before + 1);
  await model.remove("package/x");
});

test("ListDeadLetters rejects a negative limit", async () => {
  const err = await grpcError(listDeadLetters(client, { limit: -1 }));
  assert.equal(err.code, Status.INVALID_ARGUMENT);
  assert.match(err.details, /limit must be 0 \(default\) or positive/);
});

test("a queue and stores whose NATS connection is gone give UNAVAILABLE on every queue RPC and KnownFacts", async () => {
  const nats = await connectNats(t.config, "status-api-test-closed");
  const closedStores = { releases: new ReleaseStore(await nats.kvm.open(nats.topology.bucket("releases"))), advisories: await AdvisoryStore.open(nats) };
  await nats.nc.close();
  const closed = new WorkQueue(nats, workQueueOptions(t.config, { log: quiet, owner: "closed" }));
  const closedApi = await startStatusApi({
    addr: "127.0.0.1:0",
    security,
    readModel: new StatusReadModel(redis, t.nats.topology),
    queue: closed,
    ...closedStores,
    ...served,
    feed: new KeyFeed(),
    onError: () => {},
  });
  const closedClient = clientFor(closedApi.port);
  try {
    for (const call of [
      getQueueStats(closedClient),
      enqueueKey(closedClient, { key: "package/x" }),
      listDeadLetters(closedClient),
      retryDeadLetter(closedClient, "package/x"),
      knownFacts(closedClient, ["openssl"]),
    ]) {
      assert.equal((await grpcError(call)).code, Status.UNAVAILABLE);
    }
  } finally {
    closedClient.close();
    await closedApi.close();
  }
});

/** An advisory about openssl and zlib, as OSV: each package's entry is stored with its own `affected` only. */
const twoPackageAdvisory: Osv = {
  id: "GHSA-test-0000-0001",
  modified: "2026-11-20T00:00:00Z",
  aliases: ["CVE-2026-0001"],
  affected: [
    { package: { ecosystem: "OSS-Fuzz", name: "openssl" }, ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "3.2.1" }] }] },
    {
      package: { ecosystem: "Generic", name: "zlib-upstream", purl: "pkg:generic/zlib" },
      ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "1.2" }, { fixed: "1.3.1" }] }],
    },
  ],
};

test("KnownFacts answers each package's stored releases, oldest first, and its stored advisories", async () => {
  for (const v of ["3.2.1", "3.10.0", "3.2.0"])
    await releases.record({ package: "openssl", version: v, url: `https://example.org/openssl-${v}.tgz`, sha256: "a".repeat(64) });
  // A package whose name extends another's: its releases must not leak into openssl's.
  await releases.record({ package: "openssl-fips", version: "9.9", url: "https://example.org/openssl-fips-9.9.tgz", sha256: "b".repeat(64) });
  assert.equal((await advisories.record(twoPackageAdvisory, ["openssl", "zlib"])).changed, 2);
  const withdrawn: Osv = {
    id: "GHSA-test-0000-0000",
    modified: "2026-11-21T00:00:00Z",
    withdrawn: "2026-11-21T00:00:00Z",
    affected: [twoPackageAdvisory.affected![0]!],
  };
  await advisories.record(withdrawn, ["openssl"]);

  const facts = await knownFacts(client, ["openssl", "zlib", "never-heard-of", "openssl"]);
  assert.deepEqual(facts, [
    {
      package: "openssl",
      releases: ["3.2.0", "3.2.1", "3.10.0"],
      advisories: [withdrawn, { ...twoPackageAdvisory, affected: [twoPackageAdvisory.affected![0]!] }],
    },
    { package: "zlib", releases: [], advisories: [{ ...twoPackageAdvisory, affected: [twoPackageAdvisory.affected![1]!] }] },
    { package: "never-heard-of", releases: [], advisories: [] },
  ]);
  // What the reconciler reads, exactly.
  assert.deepEqual(facts[0]!.advisories, await advisories.list("openssl"));
});

test("KnownFacts answers the largest request it allows", async () => {
  const names = Array.from({ length: 1000 }, (_, i) => `${i}`.padStart(128, "p"));
  const facts = await knownFacts(client, names, { deadlineMs: 60_000 });
  assert.equal(facts.length, 1000);
  assert.deepEqual(facts[999], { package: names[999], releases: [], advisories: [] });
});

test("KnownFacts rejects no names, too many, and names that are not package names with INVALID_ARGUMENT", async () => {
  const cases: [string[], RegExp][] = [
    [[], /^packages must name at least one package$/],
    [Array.from({ length: 1001 }, (_, i) => `p${i}`), /^packages may name at most 1000 packages, got 1001$/],
    [["openssl", "package/openssl"], /^invalid package name "package\/openssl": must start with a letter or digit/],
    [["x y"], /^invalid package name "x y"/],
    [[""], /^invalid package name ""/],
    [["-dash"], /^invalid package name "-dash"/],
    [["p".repeat(129)], /^invalid package name "p{129}"/],
  ];
  for (const [names, re] of cases) {
    const err = await grpcError(knownFacts(client, names));
    assert.equal(err.code, Status.INVALID_ARGUMENT, names.join(",").slice(0, 80));
    assert.match(err.details, re);
  }
  assert.equal((await knownFacts(client, ["openssl"]))[0]!.releases.length, 3, "still serving");
});
