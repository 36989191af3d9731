import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { RequestError } from "@nats-io/transport-node";
import { loadConfig } from "./config.ts";
import { EventLedger, type EventRecord } from "./events.ts";
import { bucketReader, bucketRevision, StateStore } from "./state.ts";
import { bindBuckets, connectNats, ensureTopology, openBucket, type Nats } from "./topology.ts";
import { startTestNatsServer, type TestNatsServer } from "./test-nats-server.ts";

let server: TestNatsServer;
let nats: Nats;
const env = (heartbeatMs: string) => ({ NATS_URL: server.url, HOMEOSTAT_PREFIX: "topo", HOMEOSTAT_HEARTBEAT_MS: heartbeatMs });

before(async () => {
  server = await startTestNatsServer();
  nats = await connectNats(loadConfig(env("5000")), "topology-test");
});
after(async () => {
  await nats?.nc.close();
  await server?.stop();
});

test("the heartbeat bucket's TTL follows HOMEOSTAT_HEARTBEAT_MS when the bucket exists already", async () => {
  const services = () => nats.kvm.open(nats.topology.bucket("services")).then((kv) => kv.status());
  await ensureTopology(nats, loadConfig(env("5000")));
  assert.equal((await services()).ttl, 30_000, "six intervals");
  // A restart of the factory with another interval: the bucket is there, with the old TTL.
  // Shorter than the stream's duplicate window (the server refuses a window longer than the TTL)…
  await ensureTopology(nats, loadConfig(env("500")));
  assert.equal((await services()).ttl, 3_000);
  // … and longer again.
  await ensureTopology(nats, loadConfig(env("2500")));
  assert.equal((await services()).ttl, 15_000);
  assert.equal((await services()).history, 1, "the rest of its configuration as it was");
});

test("a work stream made with another retention keeps it, and the topology owner says so instead of failing", async () => {
  const config = loadConfig({ ...env("5000"), HOMEOSTAT_PREFIX: "retained" });
  const other = await connectNats(config, "topology-test-retention");
  try {
    const stream = other.topology.stream("work");
    // As a replicated topology makes it (limits retention), then opened by a single-server one.
    await other.jsm.streams.add({ name: stream, subjects: [other.topology.subjects("work")], retention: RetentionPolicy.Limits, storage: StorageType.File });
    const warnings: unknown[] = [];
    await ensureTopology(other, config, { warn: (msg, fields) => void warnings.push({ msg, ...fields }) });
    assert.equal((await other.jsm.streams.info(stream)).config.retention, RetentionPolicy.Limits);
    assert.deepEqual(warnings, [
      { msg: "a stream keeps the retention it was made with", stream, retention: RetentionPolicy.Limits, wanted: RetentionPolicy.Workqueue },
    ]);
    assert.equal((await other.jsm.streams.info(stream)).config.max_msgs_per_subject, 1, "the rest of its configuration is applied");
  } finally {
    await other.nc.close();
  }
});

test("an answered request builds no error (patches/@nats-io__nats-core: the client made one, with its stack, per request)", async () => {
  const sub = nats.nc.subscribe("topology-test.echo", { callback: (_err, msg) => void msg.respond(msg.data) });
  let made = 0;
  // RequestError's constructor sets `name`: an accessor on the prototype counts each one made.
  Object.defineProperty(RequestError.prototype, "name", {
    configurable: true,
    set(this: Error, value: string) {
      made++;
      Object.defineProperty(this, "name", { value, writable: true, configurable: true });
    },
  });
  try {
    for (let i = 0; i < 50; i++) await nats.nc.request("topology-test.echo", "ping", { timeout: 5_000 });
    assert.equal(made, 0, `${made} errors made for 50 answered requests`);
    await assert.rejects(nats.nc.request("topology-test.nobody", "ping", { timeout: 5_000 }), RequestError, "an unanswered one still fails as before");
  } finally {
    delete (RequestError.prototype as { name?: string }).name;
    sub.unsubscribe();
  }
});

test("a replicated topology reads its buckets and event records from the stream's leader, a single server's with direct gets", async () => {
  // The JetStream API requests each read makes, by kind (a plain subscriber sees every request).
  const asked = { direct: 0, leader: 0 };
  const spies = [
    nats.nc.subscribe("$JS.API.DIRECT.GET.>", { callback: () => void asked.direct++ }),
    nats.nc.subscribe("$JS.API.STREAM.MSG.GET.>", { callback: () => void asked.leader++ }),
  ];
  const config = loadConfig({ ...env("5000"), HOMEOSTAT_PREFIX: "reads" });
  const one = await connectNats(config, "topology-test-single");
  await ensureTopology(one, config);
  await EventLedger.open(one, 600_000);
  // The same buckets bound by a replicated topology (their streams are single-replica here:
  // binding asks the server nothing, so only the configuration decides).
  const replicated = await connectNats(loadConfig({ ...env("5000"), HOMEOSTAT_PREFIX: "reads", HOMEOSTAT_JS_REPLICAS: "3" }), "topology-test-replicated");
  try {
    const id = `release-${"0".repeat(31)}1`;
    const record: EventRecord = {
      id,
      source: "release",
      ref: "zlib@1.3",
      summary: "zlib 1.3",
      keys: ["package/zlib"],
      priority: "release",
      causeType: "release",
      receivedAt: new Date().toISOString(),
    };
    await EventLedger.bind(one).record(record);
    const readAll = async (n: Nats) => {
      const { state } = await bindBuckets(n);
      const store = new StateStore(state);
      await store.update("package/zlib", () => ({ ...StateStore.initial("package/zlib"), desiredVersion: "1.3" }));
      await nats.nc.flush();
      const before = { ...asked };
      const status = await store.get("package/zlib");
      const revision = await bucketRevision(state);
      const reader = bucketReader(state);
      const next = await reader.get({ seq: 1, next_by_subj: `${reader.prefix}.>` });
      const proposals = await (await openBucket(n, "proposals")).get("none");
      const event = await EventLedger.bind(n).get(id);
      await nats.nc.flush();
      return {
        read: { version: status?.desiredVersion, revision, next: next?.seq, proposals, event: event?.ref },
        direct: asked.direct - before.direct,
        leader: asked.leader - before.leader,
      };
    };
    const single = await readAll(one);
    const leader = await readAll(replicated);
    assert.deepEqual(single.read, { version: "1.3", revision: single.read.revision, next: single.read.next, proposals: null, event: "zlib@1.3" });
    // Four reads of messages (the bucket's revision is the stream's info, which the leader answers).
    assert.deepEqual({ direct: single.direct, leader: single.leader }, { direct: 4, leader: 0 }, "one replica: direct gets");
    assert.deepEqual(leader.read, { ...single.read, revision: leader.read.revision }, "the leader answers the same");
    assert.ok(leader.read.revision > single.read.revision, "a revision read after a later write is later");
    assert.deepEqual({ direct: leader.direct, leader: leader.leader }, { direct: 0, leader: 4 }, "replicas: every read asks the leader");
  } finally {
    for (const s of spies) s.unsubscribe();
    await replicated.nc.close();
    await one.nc.close();
  }
});
