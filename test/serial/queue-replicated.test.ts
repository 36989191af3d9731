/**
 * The work queue on a replicated work stream (three nats-server nodes, every stream at R3, as
 * the regions run it): after thousands of enqueues of a few hot keys, run by workers on two
 * nodes, every replica holds the same stream. Each replica in turn is made the stream's leader
 * and must report the same last sequence and an empty stream, and no node may have reset its
 * copy of the stream. nats-server 2.9 checks the one-message-per-subject limit on each replica
 * against its own store, and an ack removes a message on each replica in its own time; a queue
 * that let acks alone remove finished messages had replicas that disagreed about which of the
 * key's next messages they stored (Worker.remove says how the queue keeps them in step).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { loadConfig, type Config } from "@homeostat/core/config";
import type { Key } from "@homeostat/core/key";
import type { Logger } from "@homeostat/core/log";
import { ensureTopology, type Nats } from "@homeostat/core/topology";
import { done, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { startCluster, type Cluster } from "../../scripts/cluster.ts";
import { waitFor } from "../../scripts/factory.ts";

const nodes = ["a", "b", "c"] as const;
const enqueues = 3_000;
const hotKeys = 20;
const quiet: Logger = { info() {}, warn() {}, error() {} };

let dir: string;
let cluster: Cluster;
let config: Config;
const connections: Nats[] = [];

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-queue-replicated-"));
  const prefix = `q${randomBytes(4).toString("hex")}`;
  cluster = await startCluster({ dir, prefix, fabric: "fab", regions: nodes });
  const env = { HOMEOSTAT_JS_REPLICAS: "3" };
  config = loadConfig({
    NATS_URL: cluster.nodes.get("a")!.url,
    NATS_NKEY_SEED_FILE: cluster.adminSeed,
    HOMEOSTAT_PREFIX: prefix,
    HOMEOSTAT_FABRIC: "fab",
    ...env,
  });
  for (const node of nodes) connections.push(await cluster.admin(node, env));
  await ensureTopology(connections[0]!, config);
});

after(async () => {
  await Promise.all(connections.map((n) => n.nc.close()));
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("every replica of the work stream holds the same messages after a burst on a few hot keys", { timeout: 300_000 }, async () => {
  const [producerNats, ...workerNats] = connections as [Nats, Nats, Nats];
  const stop = new AbortController();
  const runs = workerNats.map((n, i) =>
    new WorkQueue(n, workQueueOptions(config, { log: quiet, owner: `worker-${i}` })).run({
      concurrency: 8,
      signal: stop.signal,
      // A short, varying run: enqueues meet queued and running keys, and finished keys come back at once.
      reconcile: async () => {
        await new Promise((r) => setTimeout(r, Math.random() * 5));
        return done;
      },
    }),
  );
  const producer = new WorkQueue(producerNats, workQueueOptions(config, { log: quiet, owner: "producer" }));
  try {
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < enqueues) {
          const key = `package/hot${next++ % hotKeys}` as Key;
          await producer.enqueue({ key, priority: "release", cause: { type: "release" } });
        }
      }),
    );
    await waitFor(
      "the queue to drain",
      async () => {
        const s = await producer.stats();
        return s.running === 0 && s.retrying === 0 && Object.values(s.depth).every((d) => d === 0);
      },
      120_000,
      200,
    );
  } finally {
    stop.abort();
    await Promise.allSettled(runs);
  }

  // Each replica in turn answers as the leader: what it holds, not what the first leader holds.
  // A step-down elects one of the others at random, and on a loaded machine an election can take
  // longer than a turn (a CI run saw only two of the three lead in 12 turns): up to 30 turns.
  const stream = producerNats.topology.stream("work");
  const views = new Map<string, { lastSeq: number; messages: number }>();
  for (let turn = 0; turn < 30 && views.size < nodes.length; turn++) {
    const info = await producerNats.jsm.streams.info(stream).catch(() => undefined);
    const leader = info?.cluster?.leader;
    if (info && leader && !views.has(leader)) views.set(leader, { lastSeq: info.state.last_seq, messages: info.state.messages });
    // The JetStream API's leader step-down (the client has no call for it).
    if (info && leader) await producerNats.nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 5_000 }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 1_500));
  }
  assert.equal(views.size, nodes.length, `every replica led once: ${JSON.stringify([...views])}`);
  const [first] = views.values();
  for (const [leader, view] of views) {
    assert.deepEqual(
      view,
      { lastSeq: first!.lastSeq, messages: 0 },
      `replica ${leader} holds what the others hold, and nothing queued: ${JSON.stringify([...views])}`,
    );
  }
  for (const node of nodes) {
    const log = readFileSync(path.join(dir, `nats-${node}.log`), "utf8");
    assert.doesNotMatch(log, /Resetting stream cluster state for '[^']*_WORK'/, `node ${node} never reset its copy of the work stream`);
  }
});
