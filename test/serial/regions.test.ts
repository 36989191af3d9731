/**
 * Three regions on one JetStream fabric (deploy/README.md, "Regions"): a real three-node NATS
 * cluster on loopback, one node per region, every stream and bucket at R3 with one replica per
 * region, and in each region the five services as separate processes against their region's
 * node and their region's read model. What it shows:
 *  - a release posted to one region is built once, by one builder anywhere, and every region's
 *    status API reports the same digests;
 *  - a region partitioned from the others (its node restarted without routes) runs nothing while
 *    the majority builds, and converges when the partition heals;
 *  - losing a whole region (its node, its services and their children SIGKILLed at once) during a
 *    burst of events loses no accepted event, the keys it held are taken over within two lease
 *    intervals, the survivors converge every key, and back, the region agrees;
 *  - losing the region whose builder is in the middle of a build: a survivor builds it again.
 * Exclusivity is observed by the build steps themselves, outside the queue: every build of the
 * test catalog runs exclusive.sh, which under flock(1) records its run and any run of the same key
 * still alive at that moment (steps run unsandboxed here, HOMEOSTAT_BUILD_ISOLATION=none, so
 * that they reach that shared directory: the sandbox is the isolation suite's matter).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { listKeyStatuses, statusClient } from "@homeostat/status-api";
import { bindBuckets, loadConfig, StateStore, type KeyStatus } from "@homeostat/core";
import { AdvisoryStore, CatalogSource, DesiredState, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { Builder } from "../../services/builder/src/build.ts";
import { configuredBuildContext } from "../../services/builder/src/context.ts";
import { resolveIsolation } from "../../services/builder/src/isolation.ts";
import { exclusiveRegionsEnv, writeExclusiveCatalog, type ExclusiveCatalog } from "../../scripts/exclusive-builds.ts";
import { repoRoot, waitFor } from "../../scripts/factory.ts";
import { startRegions, type Regions } from "../../scripts/regions.ts";
import { redisUrl } from "../harness.ts";

const regions = ["a", "b", "c"] as const;
type Region = (typeof regions)[number];
const fabric = "fab";
// Longer than nats-server 2.9's leader elections (several seconds), so that two leases bound a takeover that waits for one.
const leaseMs = 10_000;
const packages = Array.from({ length: 8 }, (_, i) => `p${i}`);
/**
 * One small image of some of the packages, with the examples' static BusyBox for the /bin/sh their
 * programs run with. Its tag is its inputs (the packages' archives): a release whose archive is
 * the same bytes (these packages install the same program at every version) signs no new tag.
 */
const image = { name: "tools", packages: packages.slice(0, packages.length / 2) };
const imageKey = `image/${image.name}`;
const keys = [...packages.map((p) => `package/${p}`), "package/busybox", imageKey].sort();
/** Bounds that hold on a loaded 2-core machine (three nodes, fifteen services, other suites beside). */
const startMs = 180_000;
const convergeMs = 150_000;

describe("three regions on one JetStream fabric", { timeout: 900_000 }, () => {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  let dir: string;
  let builds: ExclusiveCatalog;
  let fabricRegions: Regions;
  const factory = (region: Region) => fabricRegions.factories.get(region)!;
  const clients = new Map<Region, ReturnType<typeof statusClient>>();

  const statuses = async (region: Region): Promise<KeyStatus[]> => (await listKeyStatuses(clients.get(region)!, { pageSize: 100 })).items;
  /** Every key Ready in `region`'s read model, each at the version `want` names (default: any); the statuses, or undefined. */
  const converged = async (region: Region, want: (key: string) => string | undefined = () => undefined) => {
    const items = await statuses(region);
    const ok =
      items.length === keys.length && items.every((s) => s.phase === "Ready" && s.actual && (want(s.key) === undefined || s.actual.version === want(s.key)));
    return ok ? items : undefined;
  };
  /** Waits for `region` to converge, and says which keys are not there when it does not. */
  const awaitConverged = (region: Region, want: (key: string) => string | undefined, what: string) =>
    waitFor(what, () => converged(region, want), convergeMs, 250).catch(async (err: unknown) => {
      const behind = (await statuses(region).catch(() => [])).filter((s) => s.phase !== "Ready" || (want(s.key) && s.actual?.version !== want(s.key)));
      const groups = await cluster()
        .replicaGroups(region)
        .then((g) => g.lines.join("\n  "))
        .catch((e: unknown) => `(not read: ${(e as Error).message})`);
      throw new Error(
        `${(err as Error).message}; not there: ${JSON.stringify(behind.map((s) => ({ key: s.key, phase: s.phase, desired: s.desiredVersion, lastError: s.lastError, version: s.actual?.version, want: want(s.key) })))}\n${logsAbout(behind.map((s) => s.key))}\nreplica groups through ${region}:\n  ${groups}`,
      );
    });
  /** The last lines each region's services logged about `keys` (a failure's story: the run's directory goes with the suite). */
  const logsAbout = (keys: readonly string[]): string =>
    regions
      .flatMap((region) =>
        ["reconciler", "builder", "signer"].map((service) => {
          const file = path.join(dir, `logs-${region}`, `${service}.log`);
          const lines = existsSync(file)
            ? readFileSync(file, "utf8")
                .split("\n")
                .filter((l) => keys.some((k) => l.includes(`"${k}"`) || l.includes(k.replace("/", "."))))
            : [];
          return lines.length ? `${region}/${service}:\n  ${lines.slice(-6).join("\n  ")}` : "";
        }),
      )
      .filter(Boolean)
      .join("\n");
  const post = (region: Region, pkg: string, version: string) =>
    fetch(`${factory(region).ingestUrl}/v1/releases`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ package: pkg, version, url: builds.source.url, sha256: builds.source.sha256 }),
    });
  /** Posts until accepted: a refusal ("send it again", while leaders move) is sent again, a bounded number of times. */
  const postAccepted = async (region: Region, pkg: string, version: string) => {
    for (let attempt = 0; attempt < 120; attempt++) {
      const res = await post(region, pkg, version).catch(() => undefined);
      if (res?.status === 202) return true;
      await res?.body?.cancel();
      await new Promise((r) => setTimeout(r, 250));
    }
    return false;
  };
  const stepRuns = () => builds.runs();
  const doubleRuns = () => builds.doubleRuns();
  /** The region whose builder (by pid, this run of the suite) started a step. */
  const builderPids = new Map<number, Region>();
  const regionOfRun = (run: { builder: number }) => builderPids.get(run.builder);
  /** Starts a region's services (again), and knows its builder by its pid and its status API by a client. */
  const startRegion = async (region: Region) => {
    const f = await fabricRegions.startRegion(region);
    builderPids.set(f.processes.get("builder")!.pid!, region);
    clients.get(region)?.close();
    clients.set(region, statusClient(f.grpcAddr));
  };
  const killRegion = (region: Region) => fabricRegions.kill(region);
  /** The tags of the image `region`'s signer signed, from its log ("signed" lines; a line cut short by a SIGKILL is no signature). */
  const imageTagsSignedBy = (region: Region): string[] => {
    const log = path.join(dir, `logs-${region}`, "signer.log");
    if (!existsSync(log)) return [];
    return readFileSync(log, "utf8")
      .split("\n")
      .flatMap((line) => {
        try {
          const entry = JSON.parse(line) as { msg?: string; key?: string; version?: string };
          return entry.msg === "signed" && entry.key === imageKey && entry.version ? [entry.version] : [];
        } catch {
          return [];
        }
      });
  };
  /** `homeostat verify --json` (bin/homeostat, a child process, as an operator runs it) of every tag of an OCI layout against one public key. */
  const verifyLayout = (layoutDir: string, publicKey: string) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        path.join(repoRoot, "packages", "cli", "bin", "homeostat"),
        ["verify", `oci:${layoutDir}`, "--key", publicKey, "--json"],
        { env: { PATH: process.env.PATH } },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
  /**
   * A package built again apart from the regions: a fresh builder in this process (its own store,
   * cache and workspaces, nothing shared with the regions but the catalog and the facts on the
   * fabric) builds what the catalog and the facts call for now; its input digest and outputs.
   */
  const buildAfresh = async (name: string) => {
    const freshDir = path.join(dir, "fresh-builder");
    const workRoot = path.join(freshDir, "work");
    mkdirSync(workRoot, { recursive: true });
    const config = loadConfig({ ...fabricRegions.envOf("a"), HOMEOSTAT_DATA: freshDir });
    const nats = await admin();
    try {
      const buckets = await bindBuckets(nats);
      const releases = new ReleaseStore(buckets.releases);
      const advisories = await AdvisoryStore.open(nats);
      const state = new StateStore(buckets.state);
      const catalogs = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(freshDir, "catalog") });
      const desired = await new DesiredState({
        catalog: catalogs.current(),
        releases: (pkg) => releases.list(pkg),
        advisories: (pkg) => advisories.list(pkg),
        status: (k) => state.get(k),
        sourceDateEpoch: config.sourceDateEpoch,
      }).package(name);
      assert.equal(desired.state, "build", `the catalog and the facts call for a build of ${name}: ${JSON.stringify(desired)}`);
      if (desired.state !== "build") throw new Error("unreachable");
      const isolation = await resolveIsolation(config.buildSandbox, { workRoot });
      const builder = new Builder(configuredBuildContext(config, { dataDir: freshDir, workRoot, isolation, remoteSources: true }), { concurrency: 1 });
      const built = await builder.build(desired.plan);
      assert.equal(built.cached, false, "the fresh builder built it (its cache was empty)");
      return { inputDigest: desired.inputDigest, outputs: built.outputs };
    } finally {
      await nats.nc.close();
    }
  };
  const cluster = () => fabricRegions.cluster;
  const admin = async () => cluster().admin(regions.find((r) => cluster().running(r)) ?? "a");

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-regions-"));
    // Searchable by the build sandbox's uid when the builder runs as root (as test/harness.ts).
    chmodSync(dir, 0o711);
    builds = writeExclusiveCatalog(dir, packages);
    // The examples' BusyBox recipe as it is, its source where its relative URL points from this catalog.
    const examples = path.join(repoRoot, "examples");
    const busyboxDeb = readdirSync(path.join(examples, "sources", "debian")).find((f) => f.startsWith("busybox-static_"))!;
    mkdirSync(path.join(dir, "sources", "debian"), { recursive: true });
    copyFileSync(path.join(examples, "sources", "debian", busyboxDeb), path.join(dir, "sources", "debian", busyboxDeb));
    copyFileSync(path.join(examples, "catalog", "packages", "busybox.yaml"), path.join(builds.catalog, "packages", "busybox.yaml"));
    mkdirSync(path.join(builds.catalog, "images"));
    writeFileSync(
      path.join(builds.catalog, "images", `${image.name}.yaml`),
      `name: ${image.name}\npackages: [busybox, ${image.packages.join(", ")}]\nentrypoint: [/usr/bin/${image.packages[0]}]\nuser: "65532"\n`,
    );
    // One Redis server for the three read models (each region's keys carry its name), the shared one of the tests.
    fabricRegions = await startRegions({
      dir,
      prefix,
      fabric,
      regions,
      redisUrl,
      readyTimeoutMs: startMs,
      env: exclusiveRegionsEnv(dir, builds, leaseMs),
    });
    for (const region of regions) {
      builderPids.set(factory(region).processes.get("builder")!.pid!, region);
      clients.set(region, statusClient(factory(region).grpcAddr));
    }
  });

  after(async () => {
    for (const c of clients.values()) c.close();
    await fabricRegions?.stop();
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
    const stale = await redis.keys(`${prefix}:*`);
    if (stale.length) await redis.del(...stale);
    redis.disconnect();
    if (dir && !process.env.KEEP_REGIONS_DIR) rmSync(dir, { recursive: true, force: true });
  });

  test("every region converges on the catalog; a release posted to one region is built once and reported alike everywhere", async () => {
    for (const region of regions) await awaitConverged(region, () => undefined, `region ${region} to report the catalog Ready`);
    const before = stepRuns().filter((r) => r.name === "p0").length;
    assert.ok(await postAccepted("a", "p0", "2.0.0"), "region a's ingest accepts the release");
    const want = (key: string) => (key === "package/p0" ? "2.0.0" : undefined);
    const views = await Promise.all(regions.map((region) => awaitConverged(region, want, `region ${region} to report p0 2.0.0 Ready`)));
    const p0 = views.map((items) => items.find((s) => s.key === "package/p0")!.actual!);
    for (const actual of p0.slice(1)) assert.deepEqual(actual.outputs, p0[0]!.outputs, "every region reports the same digests");
    assert.equal(stepRuns().filter((r) => r.name === "p0").length, before + 1, "p0 2.0.0 built once over the three regions");
    assert.deepEqual(doubleRuns(), [], "no key's steps ran twice at once");
  });

  test("a region partitioned from the others runs nothing the majority runs, and converges when the partition heals", async () => {
    const runsBefore = stepRuns().length;
    const want = (key: string) => (key === "package/p1" || key === "package/p2" ? "4.0.0" : key === "package/p0" ? "2.0.0" : undefined);
    await cluster().isolate("c");
    const isolatedAt = Date.now();
    /** The majority's revision during the partition: region c must get there once healed. */
    let cutRevision = 0;
    let healed = false;
    try {
      assert.ok(await postAccepted("a", "p1", "4.0.0"), "the majority's ingest accepts a release");
      assert.ok(await postAccepted("b", "p2", "4.0.0"), "the majority's ingest accepts a release");
      // The minority has no JetStream quorum: its ingest must not accept what it cannot keep.
      const minority = await post("c", "p3", "4.0.0").catch(() => undefined);
      assert.notEqual(minority?.status, 202, "the minority's ingest refuses events it cannot store");
      await minority?.body?.cancel();
      for (const region of ["a", "b"] as const) await awaitConverged(region, want, `region ${region} to build p1 and p2 during the partition`);
      const during = stepRuns().slice(runsBefore);
      assert.deepEqual(
        during.filter((r) => regionOfRun(r) === "c"),
        [],
        "the partitioned region ran no build",
      );
      assert.deepEqual(during.map((r) => r.name).sort(), ["p1", "p2"], "the majority built each released key once");
      console.log(`# partition: the majority converged ${Date.now() - isolatedAt} ms after region c was cut off`);
      // The minority still answers from its read model, and says how stale that is: no newer than the cut.
      const asked = Date.now();
      const [cut, majority] = await Promise.all([listKeyStatuses(clients.get("c")!, { pageSize: 100 }), listKeyStatuses(clients.get("a")!, { pageSize: 100 })]);
      assert.equal(cut.freshness?.region, "c");
      assert.ok((cut.freshness?.ageMs ?? Infinity) >= asked - isolatedAt, `region c's answer is older than the partition: ${JSON.stringify(cut.freshness)}`);
      assert.ok(cut.freshness!.observedRevision < majority.freshness!.observedRevision, "region c has not seen the majority's changes, and says so");
      assert.ok(majority.freshness!.ageMs! < cut.freshness!.ageMs!, `the majority is fresher: ${JSON.stringify(majority.freshness)}`);
      cutRevision = majority.freshness!.observedRevision;
      await cluster().heal("c");
      healed = true;
    } finally {
      // A failure above must not leave the later tests a region short.
      if (!healed) await cluster().heal("c");
    }
    const healedAt = Date.now();
    const back = await awaitConverged("c", want, "region c to catch up after the partition healed");
    const reference = new Map((await statuses("a")).map((s) => [s.key, s.actual]));
    for (const s of back) assert.deepEqual(s.actual!.outputs, reference.get(s.key)!.outputs, `${s.key}: region c agrees with region a`);
    console.log(`# partition healed: region c agreed ${Date.now() - healedAt} ms later`);
    await waitFor(
      "region c's read model to be confirmed current again",
      async () => {
        const f = (await listKeyStatuses(clients.get("c")!, { pageSize: 1 })).freshness;
        return f?.ageMs !== undefined && f.ageMs < 10_000 && f.observedRevision >= cutRevision;
      },
      convergeMs,
      250,
    );
    assert.deepEqual(doubleRuns(), [], "no key's steps ran twice at once");
  });

  test("losing a region during a burst loses no accepted event; the survivors take over its keys and converge; back, it agrees", async () => {
    const accepted = new Map<string, string>();
    const burst = (pkgs: readonly string[], from: readonly Region[], version: string) =>
      Promise.all(
        pkgs.map(async (pkg, i) => {
          if (await postAccepted(from[i % from.length]!, pkg, version)) accepted.set(pkg, version);
        }),
      );
    // One release per key (a second release of a key racing its first build is another test's matter).
    await burst(packages.slice(0, packages.length / 2), regions, "5.0.0");
    // The keys region b holds when it goes: leased by its reconciler (the run records).
    const b = factory("b");
    const bOwner = `reconciler-${b.processes.get("reconciler")!.pid}`;
    const nats = await admin();
    const runsStream = `KV_${prefix}_runs`;
    const runRecords = async () => {
      const info = await nats.jsm.streams.info(runsStream, { subjects_filter: `$KV.${prefix}_runs.>` });
      const records = await Promise.all(
        Object.keys(info.state.subjects ?? {}).map(async (subject) => {
          const m = await nats.jsm.streams.getMessage(runsStream, { last_by_subj: subject }).catch(() => undefined);
          // Erased meanwhile, or a delete marker: no holder.
          return m && m.data.length > 0 ? { subject, owner: (m.json() as { owner: string }).owner } : undefined;
        }),
      );
      return records.filter((r) => r !== undefined);
    };
    const heldByB = (await runRecords()).filter((r) => r.owner === bOwner).map((r) => r.subject);
    const killedAt = killRegion("b");
    await burst(packages.slice(packages.length / 2), ["a", "c"], "5.0.0");
    assert.equal(accepted.size, packages.length, "every event of the burst was accepted, before the kill and after");

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
    await nats.nc.close();
    console.log(`# region b held ${heldByB.length} run record(s) when it was lost; taken over within ${Date.now() - killedAt} ms`);

    // Every accepted release reaches its key: what the survivors converge to is what was accepted.
    const newest = (key: string) => accepted.get(key.slice("package/".length));
    for (const region of ["a", "c"] as const) await awaitConverged(region, newest, `region ${region} to converge after losing b`);
    console.log(`# survivors converged ${Date.now() - killedAt} ms after the kill (lease ${leaseMs} ms)`);
    assert.deepEqual(doubleRuns(), [], "no key's steps ran twice at once");

    // With b gone, region a serves and verifies every tag of the image ever signed, in any region:
    // the layout is in the store every region reads, checked against the one signing key.
    const signedBy = new Map(regions.map((region) => [region, imageTagsSignedBy(region)]));
    const current = (await statuses("a")).find((s) => s.key === imageKey)!.actual!;
    const layoutDir = current.outputs.location.slice(0, current.outputs.location.lastIndexOf(":"));
    const verified = await verifyLayout(layoutDir, path.join(dir, "data", "signer", "cosign.pub"));
    assert.equal(verified.code, 0, `homeostat verify: ${verified.stderr}`);
    const tags = (JSON.parse(verified.stdout) as { tag: string; signature: { manifest: string }; attestations: { predicateType: string }[] }[]).map((v) => {
      assert.deepEqual(
        v.attestations.map((a) => a.predicateType).sort(),
        ["https://cyclonedx.org/bom", "https://slsa.dev/provenance/v1"],
        `${v.tag}: SBOM and provenance verify`,
      );
      return v.tag;
    });
    assert.deepEqual(tags.sort(), [...new Set([...signedBy.values()].flat())].sort(), "every tag signed in any region verifies, and nothing else is there");
    assert.ok(tags.includes(current.outputs.location.slice(layoutDir.length + 1)), "the tag region a reports is among them");
    console.log(
      `# after losing b, region a verified ${tags.length} tag(s) of ${imageKey}: ${regions.map((r) => `${signedBy.get(r)!.length} signed in ${r}`).join(", ")}`,
    );

    // b comes back: its node catches up from its peers, its services from the fabric.
    await cluster().restart("b");
    await startRegion("b");
    const back = await awaitConverged("b", newest, "region b to catch up");
    const reference = new Map((await statuses("a")).map((s) => [s.key, s.actual]));
    for (const s of back) assert.deepEqual(s.actual!.outputs, reference.get(s.key)!.outputs, `${s.key}: region b agrees with region a`);
  });

  test("losing the region whose builder is building a key: a survivor builds it again, and every region reports that build", async () => {
    const hold = builds.holdFile("p7");
    writeFileSync(hold, "");
    const runsBefore = stepRuns().length;
    assert.ok(await postAccepted("a", "p7", "6.0.0"), "the release is accepted");
    const inFlight = await waitFor(
      "a builder to start building p7 6.0.0",
      async () =>
        stepRuns()
          .slice(runsBefore)
          .find((r) => r.name === "p7"),
      convergeMs,
      100,
    ).catch(async (err: unknown) => {
      // What each region says of the key: a refused or failed build names itself in its phase and lastError.
      const seen = await Promise.all(
        regions.map(async (region) => ({ region, p7: (await statuses(region).catch(() => [])).find((s) => s.key === "package/p7") })),
      );
      throw new Error(
        `${(err as Error).message}; p7: ${JSON.stringify(seen.map(({ region, p7 }) => ({ region, phase: p7?.phase, desired: p7?.desiredVersion, lastError: p7?.lastError })))}`,
      );
    });
    const dying = regionOfRun(inFlight);
    assert.ok(dying, `the build runs in a builder of this suite (pid ${inFlight.builder})`);
    const killedAt = killRegion(dying);
    rmSync(hold);
    const survivors = regions.filter((r) => r !== dying);
    const want = (key: string) => (key === "package/p7" ? "6.0.0" : undefined);
    const views = await Promise.all(survivors.map((region) => awaitConverged(region, want, `region ${region} to build p7 6.0.0 after losing ${dying}`)));
    console.log(`# the build in flight in region ${dying} was built again by a survivor ${Date.now() - killedAt} ms after the kill`);
    const rebuilds = stepRuns()
      .slice(runsBefore)
      .filter((r) => r.name === "p7");
    assert.equal(rebuilds.length, 2, `p7 6.0.0 started twice: in the lost region, then once in a survivor (${JSON.stringify(rebuilds)})`);
    assert.ok(survivors.includes(regionOfRun(rebuilds[1]!)!), "the second build ran in a survivor");
    const p7 = views.map((items) => items.find((s) => s.key === "package/p7")!.actual!);
    assert.deepEqual(p7[1]!.outputs, p7[0]!.outputs, "the survivors report the same digests");
    assert.deepEqual(doubleRuns(), [], "no key's steps ran twice at once");
    // Reproduced independently: a fresh builder with a store of its own gets the same archive.
    const reproduced = await buildAfresh("p7");
    assert.equal(reproduced.inputDigest, p7[0]!.inputDigest, "the fresh builder builds the same inputs");
    assert.equal(reproduced.outputs.archive, p7[0]!.outputs.archive, "the survivor's archive is the one a fresh builder makes");
  });
});
