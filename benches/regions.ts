/**
 * `pnpm bench:regions` — three regions on one JetStream fabric (scripts/regions.ts), on this
 * machine, and what they cost. Prints one JSON object:
 *
 *   {"events": N, "converge_after_region_loss_s": …, "double_runs": 0, "lost_events": 0,
 *    "enqueue_per_s_3_regions": …, "enqueue_per_s_1_region": …, …}
 *
 *  - The regions start on a generated catalog of `--packages` independent packages (default 60)
 *    whose builds record themselves (scripts/exclusive-builds.ts) and converge.
 *  - Enqueue rate, side by side in the same run and machine state (the regions idle): `--enqueues`
 *    distinct keys (default 2,000, 64 in flight) through WorkQueue.enqueue, once into the fabric
 *    (three nodes, R3, through region a's node) and once into a single nats-server (R1), each under
 *    a prefix of its own with no worker: the price of R3 replication on the queue.
 *  - Region loss: a release of every package (N events) is posted round robin to the regions'
 *    ingest; when half are accepted, region b (its node, services and build steps) is SIGKILLed and
 *    the rest go to a and c. converge_after_region_loss_s: from the kill until both survivors
 *    report every key Ready at the version accepted for it; lost_events: accepted (202) releases
 *    whose key never got there (within --timeout); double_runs: builds that saw another live
 *    build of their key (the steps' own flock'd records).
 *
 *   pnpm bench:regions [--packages N] [--enqueues M] [--timeout S]
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { connectNats, ensureTopology, loadConfig, type Nats } from "@homeostat/core";
import { seedFile } from "@homeostat/core/nats-access";
import type { Logger } from "@homeostat/core/log";
import { mapLimit } from "@homeostat/core/map-limit";
import { listKeyStatuses, statusClient } from "@homeostat/status-api";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { exclusiveRegionsEnv, writeExclusiveCatalog } from "../scripts/exclusive-builds.ts";
import { startLocalServers, waitFor } from "../scripts/factory.ts";
import { ofRegion } from "../scripts/cluster.ts";
import { startRegions } from "../scripts/regions.ts";

const usage = "Usage: pnpm bench:regions [--packages N (default 60)] [--enqueues M (default 2000)] [--timeout S (default 600)]\n";
let values;
try {
  ({ values } = parseArgs({
    options: { packages: { type: "string", default: "60" }, enqueues: { type: "string", default: "2000" }, timeout: { type: "string", default: "600" } },
  }));
} catch (err) {
  process.stderr.write(`bench:regions: ${(err as Error).message}\n${usage}`);
  process.exit(64);
}
const count = (raw: string, what: string, max: number) => {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 2 || n > max) {
    process.stderr.write(`bench:regions: ${what} must be an integer from 2 to ${max}\n${usage}`);
    process.exit(64);
  }
  return n;
};
const packages = Array.from({ length: count(values.packages, "--packages", 2_000) }, (_, i) => `p${i}`);
const enqueues = count(values.enqueues, "--enqueues", 100_000);
const timeoutMs = count(values.timeout, "--timeout", 7_200) * 1000;
const leaseMs = 10_000;
const regions = ["a", "b", "c"] as const;
const quiet: Logger = { info() {}, warn() {}, error() {} };
const progress = (line: string) => process.stderr.write(`bench:regions: ${line}\n`);

/** Enqueues of `enqueues` distinct keys, 64 in flight, into the queue `n` reaches; per second. */
async function enqueueRate(n: Nats, config: ReturnType<typeof loadConfig>): Promise<number> {
  await ensureTopology(n, config);
  const queue = new WorkQueue(n, workQueueOptions(config, { log: quiet, owner: `bench-regions-${process.pid}` }));
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      for (let i = next++; i < enqueues; i = next++)
        await queue.enqueue({ key: `package/e${i}`, priority: "release", cause: { type: "manual", id: String(i) } });
    }),
  );
  return Math.round(enqueues / ((performance.now() - started) / 1000));
}

const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-bench-regions-"));
const builds = writeExclusiveCatalog(dir, packages);
progress(`starting three regions on ${packages.length} packages in ${dir}`);
const fabric = await startRegions({
  dir: path.join(dir, "regions"),
  prefix: "hs",
  fabric: "fab",
  regions,
  env: exclusiveRegionsEnv(dir, builds, leaseMs),
});
const clients = new Map(regions.map((r) => [r, statusClient(ofRegion(fabric.factories, r).grpcAddr)]));
let single: Awaited<ReturnType<typeof startLocalServers>> | undefined;
try {
  /** `region` reports every key Ready, at the version `want` names for it (any when none). */
  const converged = async (region: (typeof regions)[number], want: (key: string) => string | undefined) => {
    const items = (await listKeyStatuses(ofRegion(clients, region), { pageSize: 1000 })).items;
    return items.length === packages.length && items.every((s) => s.phase === "Ready" && (want(s.key) === undefined || s.actual?.version === want(s.key)));
  };
  const started = Date.now();
  for (const region of regions) await waitFor(`region ${region} to converge on the catalog`, () => converged(region, () => undefined), timeoutMs, 500);
  const firstConvergeS = (Date.now() - started) / 1000;
  progress(`converged in ${firstConvergeS} s; measuring enqueues`);

  const fabricConfig = loadConfig({
    NATS_URL: ofRegion(fabric.cluster.nodes, "a").url,
    NATS_NKEY_SEED_FILE: fabric.cluster.adminSeed,
    HOMEOSTAT_PREFIX: "bq3",
    HOMEOSTAT_REGION: "a",
    HOMEOSTAT_FABRIC: "fab",
    HOMEOSTAT_JS_REPLICAS: "3",
  });
  const n3 = await connectNats(fabricConfig, "bench-regions-fabric");
  const enqueuePerS3 = await enqueueRate(n3, fabricConfig);
  await n3.nc.close();
  single = await startLocalServers(path.join(dir, "single"), { prefix: "bq1", region: "one" });
  const singleConfig = loadConfig({
    NATS_URL: single.natsUrl,
    NATS_NKEY_SEED_FILE: seedFile(single.natsCredentials, "queue"),
    HOMEOSTAT_PREFIX: "bq1",
    HOMEOSTAT_REGION: "one",
  });
  const n1 = await connectNats(singleConfig, "bench-regions-single", { identity: "queue" });
  const enqueuePerS1 = await enqueueRate(n1, singleConfig);
  await n1.nc.close();
  await single.stop();
  single = undefined;

  progress(`${enqueuePerS3}/s into the fabric, ${enqueuePerS1}/s into one server; posting ${packages.length} releases, region b lost half way`);
  const accepted = new Map<string, string>();
  let killedAt: number | undefined;
  const post = async (pkg: string, i: number) => {
    for (let attempt = 0; attempt < 120; attempt++) {
      // Round-robin over the live regions: all three, then a and c once b is lost.
      const live = killedAt === undefined ? regions : (["a", "c"] as const);
      const from = live[i % live.length];
      if (from === undefined) throw new Error("no live region to post to");
      const res = await fetch(`${ofRegion(fabric.factories, from).ingestUrl}/v1/releases`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ package: pkg, version: "2.0.0", url: builds.source.url, sha256: builds.source.sha256 }),
      }).catch(() => undefined);
      if (res?.status === 202) {
        accepted.set(`package/${pkg}`, "2.0.0");
        if (killedAt === undefined && accepted.size >= packages.length / 2) killedAt = fabric.kill("b");
        return;
      }
      await res?.body?.cancel();
      await new Promise((r) => setTimeout(r, 250));
    }
  };
  await mapLimit([...packages.entries()], 8, ([i, pkg]) => post(pkg, i));
  const want = (key: string) => accepted.get(key);
  let convergeS: number | undefined;
  try {
    for (const region of ["a", "c"] as const) await waitFor(`region ${region} to converge after losing b`, () => converged(region, want), timeoutMs, 500);
    if (killedAt !== undefined) convergeS = (Date.now() - killedAt) / 1000;
  } catch (err) {
    progress((err as Error).message);
  }
  const final = (await listKeyStatuses(ofRegion(clients, "a"), { pageSize: 1000 })).items;
  const lost = [...accepted].filter(([key, version]) => final.find((s) => s.key === key)?.actual?.version !== version).length;
  const [load1] = os.loadavg();
  const load = load1?.toFixed(1);
  process.stdout.write(
    `${JSON.stringify({
      events: packages.length,
      accepted_events: accepted.size,
      converge_after_region_loss_s: convergeS ?? null,
      double_runs: builds.doubleRuns().length,
      lost_events: lost,
      enqueue_per_s_3_regions: enqueuePerS3,
      enqueue_per_s_1_region: enqueuePerS1,
      first_converge_s: firstConvergeS,
      lease_ms: leaseMs,
      load_average_1m: Number(load),
      cores: os.availableParallelism(),
    })}\n`,
  );
} finally {
  for (const c of clients.values()) c.close();
  await single?.stop();
  await fabric.stop();
  rmSync(dir, { recursive: true, force: true });
}
