import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig } from "./config.ts";
import { connectNats, ensureTopology, type Nats } from "./topology.ts";
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
