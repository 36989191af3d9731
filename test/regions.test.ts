/**
 * Three regions on one JetStream fabric (deploy/README.md, "Regions"): a real three-node NATS
 * cluster on loopback, one node per region, every stream and bucket at R3 with one replica per
 * region, and in each region the five services as separate processes against their region's
 * node and their region's read model. What it shows:
 *  - a release posted to one region is built once, by one builder anywhere, and every region's
 *    status API reports the same digests;
 *  - losing a whole region (its node and its services SIGKILLed at once) during a burst of
 *    events loses no accepted event, the keys it held are taken over within two lease
 *    intervals, the survivors converge every key, and no key was built twice at once;
 *  - the lost region, started again, catches up and agrees.
 * Exclusivity is checked outside the queue, from the builders' own log lines ("building" …
 * "built" of one key and version): no two builders' intervals for the same build overlap.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { listKeyStatuses, statusClient } from "@homeostat/status-api";
import type { KeyStatus } from "@homeostat/core";
import { packAppTarball } from "../scripts/app-tarball.ts";
import { startFactory, waitFor, type Factory } from "../scripts/factory.ts";
import { startCluster, type Cluster } from "./fixtures/cluster.ts";
import { redisUrl } from "./harness.ts";

const regions = ["a", "b", "c"] as const;
type Region = (typeof regions)[number];
const fabric = "fab";
// Longer than nats-server 2.9's leader elections (several seconds), so that two leases bound a takeover that waits for one.
const leaseMs = 10_000;
const services = ["ingest", "queue", "reconciler", "builder", "signer"] as const;
const packages = Array.from({ length: 8 }, (_, i) => `p${i}`);
const keys = packages.map((p) => `package/${p}`).sort();

/** The packages' one source: a shell program in app/, packed reproducibly (sorted, mtime 0, numeric owners, gzip -n). */
function writeSource(dir: string): { url: string; sha256: string } {
  return packAppTarball(path.join(dir, "sources", "app.tar.gz"), { "run.sh": { content: '#!/bin/sh\necho "$(basename "$0"): $*"\n', mode: 0o755 } });
}

/** Independent packages (no dependencies): a build of one key is one build request, so two at once would be a double run. */
function writeCatalog(dir: string, sha256: string): void {
  mkdirSync(path.join(dir, "packages"), { recursive: true });
  for (const name of packages) {
    writeFileSync(
      path.join(dir, "packages", `${name}.yaml`),
      `name: ${name}\nversion: "1.0.0"\nlicense: MIT\ndescription: package ${name} of the regions test\nsource:\n  url: sources/app.tar.gz\n  sha256: "${sha256}"\nbuild:\n  steps:\n    - install -D -m 755 run.sh $DESTDIR/usr/bin/${name}\ndependencies:\n  build: []\n  runtime: []\n`,
    );
  }
}

type BuildInterval = { region: Region; build: string; start: number; end: number | undefined };

/** The builds each region's builder logged: `building` opens an interval of key@version, `built` closes it. */
function buildIntervals(logDirs: Record<Region, string>): BuildInterval[] {
  const intervals: BuildInterval[] = [];
  for (const region of regions) {
    let text = "";
    try {
      text = readFileSync(path.join(logDirs[region], "builder.log"), "utf8");
    } catch {
      continue;
    }
    // One builder may log "building" twice for the same inputs (a redelivered request joins the
    // build already running in that process): each "built" ends the oldest open one.
    const open = new Map<string, BuildInterval[]>();
    for (const line of text.split("\n")) {
      if (!line.startsWith("{")) continue;
      const e = JSON.parse(line) as { t: string; msg: string; key?: string; version?: string; subject?: string };
      // A build that fails ends with the stage consumer's "retrying message" or "dropped
      // message" for its subject (<prefix>.<fabric>.build.<kind>.<name>), not with "built".
      if ((e.msg === "retrying message" || e.msg === "dropped message") && e.subject?.includes(".build.")) {
        const [kind, name] = e.subject.split(".").slice(-2);
        for (const [build, intervals] of open) {
          if (!build.startsWith(`${kind}/${name}@`) || intervals.length === 0) continue;
          const [oldest, ...rest] = intervals;
          if (oldest) oldest.end = Date.parse(e.t);
          open.set(build, rest);
          break;
        }
        continue;
      }
      if (e.msg !== "building" && e.msg !== "built") continue;
      const build = `${e.key}@${e.version}`;
      if (e.msg === "building") {
        const interval = { region, build, start: Date.parse(e.t), end: undefined };
        open.set(build, [...(open.get(build) ?? []), interval]);
        intervals.push(interval);
      } else {
        const [oldest, ...rest] = open.get(build) ?? [];
        if (oldest) oldest.end = Date.parse(e.t);
        open.set(build, rest);
      }
    }
  }
  return intervals;
}

/** Pairs of one build run at the same time by two builders; an interval still open ends at `openUntil(region)`. */
function overlaps(intervals: BuildInterval[], openUntil: (r: Region) => number): string[] {
  const found: string[] = [];
  for (const [i, x] of intervals.entries()) {
    for (const y of intervals.slice(i + 1)) {
      // Two builders at once is what exclusivity forbids; within one builder, requests for the
      // same inputs share one build (services/builder/src/build.ts).
      if (x.build !== y.build || x.region === y.region) continue;
      const xEnd = x.end ?? openUntil(x.region);
      const yEnd = y.end ?? openUntil(y.region);
      if (x.start < yEnd && y.start < xEnd)
        found.push(`${x.build}: ${x.region} ${new Date(x.start).toISOString()} and ${y.region} ${new Date(y.start).toISOString()}`);
    }
  }
  return found;
}

// Three nats-server nodes and fifteen service processes on two cores: the suite is not yet
// reliable enough for every CI run (the catalog's first convergence sometimes outlasts its bound
// there), so it runs on demand: `pnpm test:regions`.
const regionsWanted = process.env.HOMEOSTAT_TEST_REGIONS === "1";

describe(
  "three regions on one JetStream fabric",
  { timeout: 300_000, skip: !regionsWanted && "runs with `pnpm test:regions` (HOMEOSTAT_TEST_REGIONS=1): not yet reliable on a 2-core CI machine" },
  () => {
    const prefix = `t${randomBytes(5).toString("hex")}`;
    let dir: string;
    let cluster: Cluster;
    let tarball: { url: string; sha256: string };
    const factories = new Map<Region, Factory>();
    const clients = new Map<Region, ReturnType<typeof statusClient>>();
    let logDirs: Record<Region, string>;
    let envOf: (region: Region) => Record<string, string>;

    const statuses = async (region: Region): Promise<KeyStatus[]> => (await listKeyStatuses(clients.get(region)!, { pageSize: 100 })).items;
    /** Every key Ready in `region`'s read model, each at the version `want` names (default: any); the statuses, or undefined. */
    const converged = async (region: Region, want: (key: string) => string | undefined = () => undefined) => {
      const items = await statuses(region);
      const ok =
        items.length === keys.length && items.every((s) => s.phase === "Ready" && s.actual && (want(s.key) === undefined || s.actual.version === want(s.key)));
      return ok ? items : undefined;
    };
    const post = (region: Region, pkg: string, version: string) =>
      fetch(`${factories.get(region)!.ingestUrl}/v1/releases`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ package: pkg, version, url: tarball.url, sha256: tarball.sha256 }),
      });
    const startRegion = async (region: Region) => {
      const f = await startFactory({ env: envOf(region), natsCredentials: cluster.credentials, logDir: logDirs[region], only: services });
      factories.set(region, f);
      clients.get(region)?.close();
      clients.set(region, statusClient(f.grpcAddr));
    };

    before(async () => {
      dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-regions-"));
      // Searchable by the build sandbox's uid when the builder runs as root (as test/harness.ts).
      chmodSync(dir, 0o711);
      const catalog = path.join(dir, "catalog");
      tarball = writeSource(catalog);
      writeCatalog(catalog, tarball.sha256);
      logDirs = { a: path.join(dir, "logs-a"), b: path.join(dir, "logs-b"), c: path.join(dir, "logs-c") };
      cluster = await startCluster({ dir: path.join(dir, "nats"), prefix, fabric, regions });
      envOf = (region) => ({
        NATS_URL: cluster.nodes.get(region)!.url,
        REDIS_URL: redisUrl,
        HOMEOSTAT_PREFIX: prefix,
        HOMEOSTAT_REGION: region,
        HOMEOSTAT_FABRIC: fabric,
        HOMEOSTAT_JS_REPLICAS: "3",
        HOMEOSTAT_CATALOG: catalog,
        // One artifact store for the three regions (deploy/README.md says why): a key built in one
        // region is a dependency or a signature away from the others.
        HOMEOSTAT_DATA: path.join(dir, "data"),
        HOMEOSTAT_LEASE_MS: String(leaseMs),
        // A reconcile that timed out while the fabric elected new leaders is retried in seconds, not the default half minute.
        HOMEOSTAT_QUEUE_BACKOFF_BASE_MS: "1000",
      });
      // Region a first: its queue makes the topology and its builder and signer their keys.
      await startRegion("a");
      await Promise.all([startRegion("b"), startRegion("c")]);
    });

    after(async () => {
      for (const c of clients.values()) c.close();
      await Promise.all([...factories.values()].map((f) => f.stop()));
      await cluster?.stop();
      const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
      const stale = await redis.keys(`${prefix}:*`);
      if (stale.length) await redis.del(...stale);
      redis.disconnect();
      if (dir && !process.env.KEEP_REGIONS_DIR) rmSync(dir, { recursive: true, force: true });
    });

    test("every region converges on the catalog; a release posted to one region is built once and reported alike everywhere", async () => {
      for (const region of regions) await waitFor(`region ${region} to report the catalog Ready`, () => converged(region), 120_000, 250);
      const res = await post("a", "p0", "2.0.0");
      assert.equal(res.status, 202, await res.text());
      const want = (key: string) => (key === "package/p0" ? "2.0.0" : undefined);
      const views = await Promise.all(
        regions.map((region) => waitFor(`region ${region} to report p0 2.0.0 Ready`, () => converged(region, want), 60_000, 250)),
      );
      const p0 = views.map((items) => items.find((s) => s.key === "package/p0")!.actual!);
      for (const actual of p0.slice(1)) assert.deepEqual(actual.outputs, p0[0]!.outputs, "every region reports the same digests");
      const builds = buildIntervals(logDirs).filter((b) => b.build === "package/p0@2.0.0");
      assert.equal(builds.length, 1, `built once over the three regions: ${JSON.stringify(builds)}`);
    });

    // Runs in CI and reports, but does not fail it yet: on this 2-core machine it has failed on a
    // key left Building when its region died between recording and publishing the build request
    // (fixed since: reconcile.ts republishes after a taken-over lease), on slow leader elections,
    // and on the double-build check, whose log-based intervals are being made exact.
    test(
      "losing a region during a burst loses no accepted event; the survivors take over its keys and converge; back, it agrees",
      { todo: "not yet passing reliably on a loaded 2-core machine (see above)" },
      async () => {
        const accepted = new Map<string, string[]>();
        /** Posts one release per package, round robin over `from`; a refusal ("send it again", while leaders move) is sent again, a bounded number of times. */
        const burst = async (pkgs: readonly string[], from: readonly Region[], version: string) => {
          await Promise.all(
            pkgs.map(async (pkg, i) => {
              const region = from[i % from.length]!;
              for (let attempt = 0; attempt < 60; attempt++) {
                const res = await post(region, pkg, version).catch(() => undefined);
                if (res?.status === 202) {
                  accepted.set(pkg, [...(accepted.get(pkg) ?? []), version]);
                  return;
                }
                await res?.body?.cancel();
                await new Promise((r) => setTimeout(r, 250));
              }
            }),
          );
        };
        // One release per key (a second release of a key racing its first build is another test's matter).
        await burst(packages.slice(0, packages.length / 2), regions, "3.0.0");
        // The keys region b holds when it goes: leased by its reconciler (the run records) or in its builder.
        const b = factories.get("b")!;
        const bOwner = `reconciler-${b.processes.get("reconciler")!.pid}`;
        const admin = await cluster.admin("a");
        const runsStream = `KV_${prefix}_runs`;
        const runRecords = async () => {
          const info = await admin.jsm.streams.info(runsStream, { subjects_filter: `$KV.${prefix}_runs.>` });
          const records = await Promise.all(
            Object.keys(info.state.subjects ?? {}).map(async (subject) => {
              const m = await admin.jsm.streams.getMessage(runsStream, { last_by_subj: subject }).catch(() => undefined);
              // Erased meanwhile, or a delete marker: no holder.
              return m && m.data.length > 0 ? { subject, owner: (m.json() as { owner: string }).owner } : undefined;
            }),
          );
          return records.filter((r) => r !== undefined);
        };
        const heldByB = (await runRecords()).filter((r) => r.owner === bOwner).map((r) => r.subject);

        cluster.kill("b");
        for (const child of b.processes.values()) child.kill("SIGKILL");
        const killedAt = Date.now();
        await burst(packages.slice(packages.length / 2), ["a", "c"], "3.0.0");

        // What b had leased is run by a survivor (or done) within two lease intervals.
        if (heldByB.length > 0) {
          await waitFor(
            "the keys region b leased to be taken over",
            async () => {
              const owners = new Map((await runRecords()).map((r) => [r.subject, r.owner]));
              return heldByB.every((s) => owners.get(s) !== bOwner);
            },
            2 * leaseMs,
            100,
          );
        }
        console.log(`# region b held ${heldByB.length} run record(s) when it was lost; taken over within ${Date.now() - killedAt} ms`);

        // Every accepted release reaches its key: the newest version accepted for it is what it converges to.
        const newest = (key: string) => {
          const versions = accepted.get(key.slice("package/".length)) ?? [];
          return versions.includes("3.0.0") ? "3.0.0" : undefined;
        };
        const survivors = ["a", "c"] as const;
        for (const region of survivors) {
          await waitFor(`region ${region} to converge after losing b`, () => converged(region, newest), 120_000, 250).catch(async (err: unknown) => {
            const behind = (await statuses(region)).filter((s) => s.phase !== "Ready" || s.actual?.version !== newest(s.key));
            throw new Error(
              `${(err as Error).message}; not there: ${JSON.stringify(behind.map((s) => ({ key: s.key, phase: s.phase, desired: s.desiredVersion, lastError: s.lastError, waitingFor: s.waitingFor, version: s.actual?.version, want: newest(s.key) })))}`,
            );
          });
        }
        console.log(`# survivors converged ${Date.now() - killedAt} ms after the kill; accepted ${[...accepted.values()].flat().length} events`);
        assert.equal([...accepted.values()].flat().length, packages.length, "every event of the burst was accepted, before the kill and after");

        // No build ran in two builders at once (b's open builds end when b was killed).
        assert.deepEqual(
          overlaps(buildIntervals(logDirs), (r) => (r === "b" ? killedAt : Date.now())),
          [],
        );

        // b comes back: its node catches up from its peers, its services from the fabric.
        await cluster.restart("b");
        await startRegion("b");
        const back = await waitFor("region b to catch up", () => converged("b", newest), 60_000, 250);
        const reference = new Map((await statuses("a")).map((s) => [s.key, s.actual]));
        for (const s of back) assert.deepEqual(s.actual!.outputs, reference.get(s.key)!.outputs, `${s.key}: region b agrees with region a`);
        await admin.nc.close();
      },
    );
  },
);
