/**
 * The reconciler against real JetStream (test/harness.ts): state, releases and advisories in
 * real KV buckets, build requests on the real build stream, enqueues through the real work
 * queue. A build "completes" by writing the actual state exactly as the signer does.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { AdvisoryStore, buildRequestOf, type Catalog, CatalogSource, DesiredState, loadCatalog, osvSchema, ReleaseStore } from "@homeostat/catalog";
import {
  bucketRevision,
  buildRequestSchema,
  publish,
  settleBuild,
  StateStore,
  type BuildRequest,
  type Key,
  type Logger,
  type Stage,
  type WorkItem,
} from "@homeostat/core";
import { WorkQueue, workQueueOptions, type ReconcileResult } from "@homeostat/workqueue";
import { releaseItem } from "./test-support.ts";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { catalogChangeRequests, onCatalogReload } from "./catalog-watch.ts";
import { buildMessageId, createReconciler, storeInputs, type ReconcilerDeps } from "./reconcile.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const PATCH = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n";

/** A package recipe of the test catalogs: version 1.0, one step, its build dependencies. */
const packageYaml = (name: string, deps: string[], extra = "") =>
  `name: ${name}\nversion: "1.0"\nsource: { url: "https://example.org/${name}-\${version}.tar.gz", sha256: "${sha(name)}" }\nbuild: { steps: [make] }\ndependencies: { build: [${deps.join(", ")}] }\n${extra}`;

/** A catalog with a diamond: base <- left, right <- top, image app = [top]; plus a lone package. */
function writeCatalog(dir: string, over: Record<string, string> = {}): void {
  rmSync(dir, { recursive: true, force: true });
  const files: Record<string, string> = {
    "packages/base.yaml": packageYaml("base", []),
    "packages/left.yaml": packageYaml("left", ["base"]),
    "packages/right.yaml": packageYaml("right", ["base"]),
    "packages/top.yaml": packageYaml("top", ["left", "right"]),
    "packages/minimist.yaml": packageYaml(
      "minimist",
      [],
      `upstream: { url: "https://example.org/m-\${version}", policy: { semver: "^1.2" } }\npatches:\n  - { path: patches/cve-2021-44906.patch, sha256: ${sha(PATCH)}, fixes: [CVE-2021-44906] }\n`,
    ),
    "packages/lodash.yaml": packageYaml("lodash", []).replace('version: "1.0"', 'version: "4.17.15"'),
    "images/app.yaml": "name: app\npackages: [top]\n",
    "patches/cve-2021-44906.patch": PATCH,
    ...over,
  };
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    writeFileSync(path.join(dir, f), text);
  }
}

const fixture = (id: string) => osvSchema.parse(JSON.parse(readFileSync(new URL(`../../../test/fixtures/osv/${id}.json`, import.meta.url), "utf8")));

describe("reconciler", { timeout: 60_000 }, () => {
  let t: TestEnv;
  let catalog: Catalog;
  let state: StateStore;
  let releases: ReleaseStore;
  let advisories: AdvisoryStore;
  let queue: WorkQueue;
  let reconcile: ReturnType<typeof createReconciler>;
  let catalogDir: string;

  /** Every message on a stage stream, oldest first. */
  const messages = async <T>(stage: Stage): Promise<T[]> => {
    const stream = t.nats.topology.stream(stage);
    const info = await t.nats.jsm.streams.info(stream);
    const out: T[] = [];
    for (let seq = info.state.first_seq; info.state.messages > 0 && seq <= info.state.last_seq; seq++) {
      const m = await t.nats.jsm.streams.getMessage(stream, { seq }).catch(() => null);
      if (m) out.push(m.json() as T);
    }
    return out;
  };
  const builds = async () => (await messages<BuildRequest>("build")).map((r) => `${r.key}@${r.version}`);
  const purge = async (stage: Stage) => void (await t.nats.jsm.streams.purge(t.nats.topology.stream(stage)));
  const run = (key: Key, cause: WorkItem["cause"] = { type: "resync" }) =>
    reconcile({ v: 1, key, priority: "resync", cause, notBefore: 0, floor: 0, attempts: 0, enqueuedAt: Date.now() });
  /** A run of `key` in class dependency (where a dependency's notice runs), by `reconcileWith`. */
  const runAsDependency = (reconcileWith: (item: WorkItem) => Promise<ReconcileResult>) => (key: Key, cause: WorkItem["cause"]) =>
    reconcileWith({ v: 1, key, priority: "dependency", cause, notBefore: 0, floor: 0, attempts: 0, enqueuedAt: Date.now() });
  /** What the signer does once a build is signed. */
  const complete = async (key: Key) => {
    await state.update(key, (s) => {
      assert.ok(s?.desiredInputDigest && s.desiredVersion, `${key} has a build to complete`);
      const archive = `sha256:${sha(`${key}@${s.desiredInputDigest}`)}`;
      const actual = {
        version: s.desiredVersion,
        inputDigest: s.desiredInputDigest,
        outputs: { archive, diffId: archive, size: 1, location: "test" },
        signatures: {},
        keyId: "k",
        builtAt: new Date().toISOString(),
      };
      const next = { ...s, actual, phase: "Ready" as const };
      return settleBuild(next, s.desiredInputDigest, "succeeded", actual.builtAt) ?? next;
    });
  };
  /** Each of `keys` reconciled, built, signed and completed, in order (by `runKey`). */
  const buildAll = async (runKey: (key: Key, cause: WorkItem["cause"]) => Promise<ReconcileResult>, keys: readonly Key[]) => {
    for (const key of keys) {
      await runKey(key, { type: "resync" });
      await complete(key);
      await runKey(key, { type: "built", id: (await state.get(key))!.actual!.inputDigest });
    }
  };
  /** What the signer records for `key`'s desired build when it made the very archive the key had (the same files at a new version). */
  const completeWithTheSameArchive = async (key: Key) => {
    const was = (await state.get(key))!.actual!;
    await state.update(key, (s) => {
      const actual = { ...was, version: s!.desiredVersion!, inputDigest: s!.desiredInputDigest!, builtAt: new Date().toISOString() };
      const next = { ...s!, actual, phase: "Ready" as const };
      return settleBuild(next, actual.inputDigest, "succeeded", actual.builtAt) ?? next;
    });
  };
  const queued = async () => (await messages<WorkItem>("work")).map((w) => w.key).sort();
  const childKeys = (r: ReconcileResult) => ("children" in r ? (r.children ?? []) : []).map((c) => c.key).sort();

  /** The reconciler's dependencies for `catalogOf()` over this test's stores and streams. */
  const reconcilerDepsOf = (catalogOf: () => Catalog): ReconcilerDeps => ({
    catalog: catalogOf,
    state,
    inputs: storeInputs({ releases, advisories, state }),
    requestBuild: async (req, requestId) => void (await publish(t.nats, "build", req.key, req, { msgId: buildMessageId(req, requestId) })),
    sourceDateEpoch: 0,
    staleBuildMs: 60_000,
    buildFailures: { retries: 2, backoffMs: 1_000, backoffMaxMs: 60_000 },
    log: quiet,
  });
  /** A run's decision, without the fact revisions it read (checked on their own below). */
  const decisionOf = (result: ReconcileResult): ReconcileResult => {
    if (result.type === "nonRetriable") return result;
    const { read: _, ...decision } = result;
    return decision;
  };
  const reconcilerOf = (catalogOf: () => Catalog): ReturnType<typeof createReconciler> => {
    const reconcile = createReconciler(reconcilerDepsOf(catalogOf));
    return async (item, run) => decisionOf(await reconcile(item, run));
  };

  /** The diamond catalog plus `packages` (each name with its build dependencies), written under the test's directory as `dirName`, and loaded. */
  const catalogWith = (dirName: string, packages: Record<string, string[]>): Promise<Catalog> => {
    const dir = path.join(t.dir, dirName);
    writeCatalog(dir, Object.fromEntries(Object.entries(packages).map(([name, deps]) => [`packages/${name}.yaml`, packageYaml(name, deps)])));
    return loadCatalog(dir);
  };

  before(async () => {
    t = await testEnv();
    catalogDir = path.join(t.dir, "catalog");
    writeCatalog(catalogDir);
    catalog = await loadCatalog(catalogDir);
    state = new StateStore(t.buckets.state);
    releases = new ReleaseStore(t.buckets.releases);
    advisories = await AdvisoryStore.open(t.nats);
    queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "reconcile-test" }));
    reconcile = reconcilerOf(() => catalog);
  });

  after(async () => {
    await t.cleanup();
  });

  test("a diamond is built once, after both of its branches; then a resync builds nothing", async () => {
    for (const k of catalog.keys()) await run(k);
    assert.deepEqual(
      (await builds()).filter((b) => /base|left|right|top|app/.test(b)),
      ["package/base@1.0"],
      "only the root can start",
    );
    assert.match((await state.get("package/top"))!.waitingFor ?? "", /package\/base to be built at 1\.0/);

    await complete("package/base");
    const fanOut = await run("package/base", { type: "built" });
    assert.deepEqual(childKeys(fanOut), ["package/left", "package/right"], "the fan-out returns both branches as child keys");
    assert.equal(fanOut.type, "done");
    assert.deepEqual(childKeys(await run("package/base")), ["package/left", "package/right"], "a resync tells them again while they wait");
    const baseDigest = (await state.get("package/base"))!.actual!.inputDigest;
    assert.deepEqual(
      childKeys(await run("package/base", { type: "built", id: baseDigest })),
      ["package/left", "package/right"],
      "the signer's own enqueue (or its redelivery) tells them again",
    );
    await run("package/left");
    await run("package/right");
    assert.deepEqual(await run("package/base"), { type: "done" }, "once they no longer wait, a resync does not tell them again");
    await complete("package/left");
    await run("package/top", { type: "dependency", id: "package/left" });
    assert.ok(!(await builds()).includes("package/top@1.0"), "top waits for right");
    await complete("package/right");
    // A queued cause may be older than the build it ends up asking for (merged enqueues keep
    // the first cause): the recorded detail names the version the build uses.
    await run("package/top", { type: "dependency", id: "package/right", detail: "package/right was rebuilt at 0.9" });
    await run("package/top", { type: "dependency", id: "package/left" });
    assert.equal((await builds()).filter((b) => b === "package/top@1.0").length, 1, "the diamond's tip is built once");
    const top = (await state.get("package/top"))!;
    assert.deepEqual(top.cause?.id, "package/right");
    assert.match(top.cause?.detail ?? "", /package\/right was rebuilt at 1\.0/);
    assert.doesNotMatch(top.cause?.detail ?? "", /0\.9/);
    // A build in flight is looked at again when it should have ended (staleBuildMs after it was
    // asked for), so a builder that died with it is noticed without waiting for a resync.
    const inFlight = await run("package/top", { type: "resync" });
    assert.equal(inFlight.type, "requeueAfter");
    assert.ok(inFlight.type === "requeueAfter" && inFlight.ms > 0 && inFlight.ms <= 60_000, "requeued within the stale-build time");
    assert.equal(top.builds?.[0]?.outcome, "requested");
    await complete("package/top");
    await run("package/top", { type: "built" });
    assert.equal((await state.get("package/top"))!.builds?.[0]?.outcome, "succeeded");
    await run("image/app");
    await complete("image/app");

    // Everything is built: a resync of the unchanged catalog requests nothing.
    for (const k of ["package/base", "package/left", "package/right", "package/top", "image/app"] as Key[]) await run(k, { type: "built" });
    await purge("build");
    const before = await Promise.all(catalog.keys().map((k) => state.get(k)));
    for (const k of catalog.keys()) await run(k);
    assert.deepEqual(
      (await builds()).filter((b) => !b.startsWith("package/lodash") && !b.startsWith("package/minimist")),
      [],
    );
    const afterResync = await Promise.all(catalog.keys().map((k) => state.get(k)));
    for (const [i, s] of afterResync.entries()) {
      if (s?.key === "package/lodash" || s?.key === "package/minimist") continue;
      assert.equal(s?.actual?.inputDigest, before[i]?.actual?.inputDigest);
      assert.equal(s?.phase, "Ready", `${s?.key} is Ready`);
    }
  });

  test("runs whose inputs were taken at the same revisions share what was worked out from them; a write to a store ends that", async () => {
    // The diamond above is built and Ready: a resync writes nothing. A release of a package
    // outside the catalog gives the runs facts to report (an empty store reports none).
    await releases.record({ package: "unrelated", version: "1.0", url: "https://example.org/unrelated-1.0.tar.gz", sha256: sha("unrelated-1.0") });
    const listed: string[] = [];
    const inputs = storeInputs({ releases, advisories, state });
    const resync = createReconciler({
      ...reconcilerDepsOf(() => catalog),
      inputs: async () => {
        const i = await inputs();
        return { ...i, releases: (name: string) => (listed.push(name), i.releases(name)) };
      },
    });
    const runOf = (key: Key) =>
      resync({ v: 1, key, priority: "resync", cause: { type: "resync" }, notBefore: 0, floor: 0, attempts: 0, enqueuedAt: Date.now() });
    assert.deepEqual(decisionOf(await runOf("package/top")), { type: "done" });
    assert.deepEqual([...listed].sort(), ["base", "left", "right", "top"], "the first run works out its closure");
    const facts = await runOf("package/left");
    assert.deepEqual(decisionOf(facts), { type: "done" });
    assert.equal(listed.length, 4, "the next, at the same revisions, works out nothing again");
    const alone = await createReconciler(reconcilerDepsOf(() => catalog))({
      v: 1,
      key: "package/left",
      priority: "resync",
      cause: { type: "resync" },
      notBefore: 0,
      floor: 0,
      attempts: 0,
      enqueuedAt: Date.now(),
    });
    assert.ok(facts.type === "done" && alone.type === "done" && facts.read !== undefined);
    assert.deepEqual(facts.read, alone.read, "and reports the facts it decided from, as a run of its own would");
    await state.update("package/unrelated", () => StateStore.initial("package/unrelated"));
    await runOf("package/left");
    assert.deepEqual(listed.slice(4).sort(), ["base", "left"], "after a write, its own closure is worked out afresh");
    await state.remove("package/unrelated");
  });

  test("a key waiting through dependencies for a build that leaves their inputs as they were is woken, through them alone (found by the chaos suite and the storm)", async () => {
    // A chain of its own: deep <- mid <- upper <- tip, and side <- mid, all built first. Only tip
    // is reconciled while deep builds (the storm's case): it marks the keys it waits through.
    const chain = await catalogWith("chain-catalog", {
      deep: [],
      mid: ["deep"],
      upper: ["mid"],
      tip: ["upper"],
      side: ["mid"],
    });
    const runChain = runAsDependency(reconcilerOf(() => chain));
    await buildAll(runChain, ["package/deep", "package/mid", "package/upper", "package/tip", "package/side"]);
    // deep and tip are released at once; tip is reconciled while deep builds, so it waits for deep through upper and mid.
    const source = (name: string) => ({ url: `https://example.org/${name}-1.1.tar.gz`, sha256: sha(`${name}-1.1`) });
    await releases.record({ package: "deep", version: "1.1", ...source("deep") });
    await releases.record({ package: "tip", version: "1.1", ...source("tip") });
    await runChain("package/deep", { type: "release" });
    assert.deepEqual(await runChain("package/tip", { type: "release" }), { type: "done" });
    for (const key of ["package/tip", "package/upper", "package/mid"] as const)
      assert.match((await state.get(key))!.waitingFor ?? "", /package\/deep to be built at 1\.1/, `${key} waits for deep`);
    assert.equal((await state.get("package/side"))!.waitingFor, undefined, "side was not reconciled, and tip does not wait through it");
    // deep 1.1 builds to the very archive 1.0 had (the same files), so mid's inputs do not change.
    await completeWithTheSameArchive("package/deep");
    assert.deepEqual(childKeys(await runChain("package/deep", { type: "built", id: (await state.get("package/deep"))!.actual!.inputDigest })), ["package/mid"]);
    await purge("build");
    const mid = await runChain("package/mid", { type: "dependency", id: "package/deep" });
    assert.deepEqual(await builds(), [], "mid's inputs are as they were: nothing to build");
    assert.deepEqual(childKeys(mid), ["package/upper"], "the notice goes on to upper, which waits, and not to side, which does not");
    assert.equal((await state.get("package/mid"))!.waitingFor, undefined, "mid's wait is over");
    const upper = await runChain("package/upper", { type: "dependency", id: "package/mid" });
    assert.deepEqual(await builds(), [], "nor upper's");
    assert.deepEqual(childKeys(upper), ["package/tip"], "and on again, to tip, which waits");
    await runChain("package/tip", { type: "dependency", id: "package/upper" });
    assert.deepEqual(await builds(), ["package/tip@1.1"], "tip's own release is built");
    assert.equal((await state.get("package/tip"))!.waitingFor, undefined);
    assert.deepEqual(await runChain("package/upper", { type: "resync" }), { type: "done" }, "a resync, with no one waiting, tells no one");
  });

  test("a build that made the archive its dependents were told of tells only those that wait; redelivered, it tells them all again", async () => {
    const same = await catalogWith("same-archive-catalog", {
      sbase: [],
      smid: ["sbase"],
      stop1: ["smid"],
      stop2: ["smid"],
    });
    const runKey = runAsDependency(reconcilerOf(() => same));
    await buildAll(runKey, ["package/sbase", "package/smid", "package/stop1", "package/stop2"]);
    await releases.record({ package: "smid", version: "1.1", url: "https://example.org/smid-1.1.tar.gz", sha256: sha("smid-1.1") });
    await runKey("package/smid", { type: "release" });
    await completeWithTheSameArchive("package/smid");
    await state.update("package/stop2", (s) => s && { ...s, waitingFor: "package/smid to be built at 1.1" });
    const built: WorkItem["cause"] = { type: "built", id: (await state.get("package/smid"))!.actual!.inputDigest };
    assert.deepEqual(childKeys(await runKey("package/smid", built)), ["package/stop2"], "stop1's inputs are as they were: only stop2, which waits, is told");
    assert.deepEqual(childKeys(await runKey("package/smid", built)), ["package/stop1", "package/stop2"], "a redelivery tells every dependent");
  });

  test("a key whose wait ended while it marked the keys it waits through looks again at once", async () => {
    const settled = await catalogWith("settled-catalog", {
      low: [],
      link: ["low"],
      top: ["link"],
    });
    let wakeAfterMarks: (() => Promise<void>) | undefined;
    // The second reader is the one taken after the marks: the wait ends just before it.
    let readers = 0;
    const r = createReconciler({
      ...reconcilerDepsOf(() => settled),
      inputs: async () => {
        if (++readers === 2 && wakeAfterMarks) await wakeAfterMarks();
        return storeInputs({ releases, advisories, state })();
      },
    });
    const runKey = runAsDependency(r);
    await buildAll(runKey, ["package/low", "package/link", "package/top"]);
    await releases.record({ package: "low", version: "1.1", url: "https://example.org/low-1.1.tar.gz", sha256: sha("low-1.1") });
    await runKey("package/low", { type: "release" });
    // low's build leaves link's inputs as they were, and settles while top marks link.
    wakeAfterMarks = () => completeWithTheSameArchive("package/low");
    readers = 0;
    assert.deepEqual(decisionOf(await runKey("package/top", { type: "release" })), { type: "requeueAfter", ms: 0 }, "the wait ended: top looks again");
    assert.match((await state.get("package/link"))!.waitingFor ?? "", /package\/low to be built at 1\.1/, "link was marked before the wait ended");
  });

  test("a dependent told by several keys of one wave runs once, after the last; a mark that lands during a run stays", async () => {
    // root <- a, b; tip = [a, b]; top = [root, a]. A new root is built: a and b rebuild, and tip and top each wait for a sibling.
    const wave = await catalogWith("wave-catalog", {
      wroot: [],
      wa: ["wroot"],
      wb: ["wroot"],
      wtip: ["wa", "wb"],
      wtop: ["wroot", "wa"],
    });
    const runWave = runAsDependency(reconcilerOf(() => wave));
    const built = async (key: Key) => runWave(key, { type: "built", id: (await state.get(key))!.actual!.inputDigest });
    await buildAll(runWave, ["package/wroot", "package/wa", "package/wb", "package/wtip", "package/wtop"]);
    await purge("build");
    await releases.record({ package: "wroot", version: "1.1", url: "https://example.org/wroot-1.1.tar.gz", sha256: sha("wroot-1.1") });
    await runWave("package/wroot", { type: "release" });
    await complete("package/wroot");
    assert.deepEqual(childKeys(await built("package/wroot")), ["package/wa", "package/wb"], "top is left to a, told in the same run");
    assert.match((await state.get("package/wtop"))!.waitingFor ?? "", /package\/wa to settle first/);
    await runWave("package/wa", { type: "dependency", id: "package/wroot" });
    await runWave("package/wb", { type: "dependency", id: "package/wroot" });
    assert.deepEqual((await builds()).sort(), ["package/wa@1.0", "package/wb@1.0", "package/wroot@1.1"]);
    await complete("package/wa");
    assert.deepEqual(childKeys(await built("package/wa")), ["package/wtop"], "tip is left to b, whose build is in flight");
    assert.match((await state.get("package/wtip"))!.waitingFor ?? "", /package\/wb to be built at 1\.0/);
    await complete("package/wb");
    assert.deepEqual(childKeys(await built("package/wb")), ["package/wtip"], "b's completion tells tip, once");
    await runWave("package/wtip", { type: "dependency", id: "package/wb" });
    await runWave("package/wtop", { type: "dependency", id: "package/wa" });
    assert.deepEqual((await builds()).filter((b) => /wtip|wtop/.test(b)).sort(), ["package/wtip@1.0", "package/wtop@1.0"], "each built once");
    assert.equal((await state.get("package/wtip"))!.waitingFor, undefined);

    // A dependency's mark written while a run of the key is under way (after the run read the
    // key's status) may stand for a build the run's inputs do not show yet: the run keeps it.
    await complete("package/wtip");
    await built("package/wtip");
    const marking = createReconciler({
      ...reconcilerDepsOf(() => wave),
      inputs: async () => {
        await state.update("package/wtip", (s) => s && { ...s, waitingFor: "package/wb to be built at 1.1" });
        return storeInputs({ releases, advisories, state })();
      },
    });
    await marking({ v: 1, key: "package/wtip", priority: "resync", cause: { type: "resync" }, notBefore: 0, floor: 0, attempts: 0, enqueuedAt: Date.now() });
    assert.equal((await state.get("package/wtip"))!.waitingFor, "package/wb to be built at 1.1", "kept: it was not there when the run began");
    await runWave("package/wtip", { type: "resync" });
    assert.equal((await state.get("package/wtip"))!.waitingFor, undefined, "a run that read the mark and finds the key up to date clears it");
  });

  test("the catalog revision is in the request, not in the input digest; the request carries no recipe", async () => {
    const inputs = { releases: async () => [], advisories: async () => [], status: (k: Key) => state.get(k), sourceDateEpoch: 0 };
    const plain = await new DesiredState({ ...inputs, catalog }).package("base");
    const committed = await new DesiredState({ ...inputs, catalog: await loadCatalog(catalogDir, { commit: "a".repeat(40) }) }).package("base");
    assert.ok(plain.state === "build" && committed.state === "build");
    assert.equal(committed.inputDigest, plain.inputDigest);
    assert.equal(committed.plan.catalogRevision, "a".repeat(40));
    assert.match(plain.plan.catalogRevision, /^sha256:[0-9a-f]{64}$/, "a directory catalog is named by its content digest");
    const request = buildRequestOf(committed.plan);
    assert.deepEqual(Object.keys(request).sort(), ["catalogRevision", "inputDigest", "key", "v", "version"]);
    assert.deepEqual(buildRequestSchema.parse(request), request);
  });

  test("version policy: the newest release inside the policy", async () => {
    await purge("build");
    for (const v of ["1.2.5", "1.3.0", "2.0.0", "1.4.0-rc1"])
      await releases.record({ package: "minimist", version: v, url: `https://example.org/m-${v}`, sha256: sha(v) });
    // Told of the release 5 s before the run: the build records that as its trigger, where event → signed starts.
    const enqueuedAt = Date.now() - 5_000;
    await reconcile({ v: 1, key: "package/minimist", priority: "release", cause: { type: "release" }, notBefore: 0, floor: 0, attempts: 0, enqueuedAt });
    assert.deepEqual(await builds(), ["package/minimist@1.3.0"]);
    const s = (await state.get("package/minimist"))!;
    assert.equal(s.desiredVersion, "1.3.0");
    const requested = s.builds?.[0];
    assert.equal(requested?.outcome, "requested");
    assert.equal(requested.triggeredAt, new Date(enqueuedAt).toISOString(), "the trigger is the enqueue's time");
    assert.ok(Date.parse(requested.at) >= enqueuedAt + 5_000, "the request's own time is later");
  });

  test("advisories: bump to the lowest fixed release, patch when the fix is out of policy, else NeedsAttention", async () => {
    await purge("build");
    // NeedsAttention: lodash 4.17.15 is affected, 4.17.19 is not a known release.
    await advisories.record(fixture("GHSA-p6mc-m468-83gw"), ["lodash"]);
    const handedOver = await run("package/lodash", { type: "advisory", id: "advisory-event-1" });
    assert.ok(handedOver.type === "done" && handedOver.children?.length === 1, JSON.stringify(handedOver));
    assert.deepEqual(
      { key: handedOver.children[0]!.key, priority: handedOver.children[0]!.priority },
      { key: "package/lodash", priority: "repair" },
      "the agent is asked to answer it",
    );
    const flagged = (await state.get("package/lodash"))!;
    assert.equal(flagged.phase, "NeedsAttention");
    assert.deepEqual(flagged.advisories, ["GHSA-p6mc-m468-83gw"]);
    assert.match(flagged.cause?.detail ?? "", /4\.17\.19/);
    assert.deepEqual(await builds(), [], "nothing is built for a key that needs attention");

    // Bump: the fixed release becomes known and the newest.
    await releases.record({ package: "lodash", version: "4.17.19", url: "https://example.org/lodash-4.17.19", sha256: sha("4.17.19") });
    await run("package/lodash", { type: "release", id: "release-event-1" });
    assert.deepEqual(await builds(), ["package/lodash@4.17.19"]);
    assert.equal((await state.get("package/lodash"))!.phase, "Building");

    // Patch: a policy that stops below 1.2.6 (the fixed release) leaves the backport.
    await purge("build");
    const minimist = readFileSync(path.join(catalogDir, "packages/minimist.yaml"), "utf8").replace("^1.2", "~1.2.0 <1.2.6");
    writeCatalog(catalogDir, { "packages/minimist.yaml": minimist });
    catalog = await loadCatalog(catalogDir);
    await advisories.record(fixture("GHSA-xvch-5gv4-984h"), ["minimist"]);
    await run("package/minimist", { type: "advisory", id: "advisory-event-2" });
    const [req] = await messages<BuildRequest>("build");
    assert.equal(req?.version, "1.2.5");
    // The request names the build; the patches are in the plan the builder recomputes from the catalog.
    const desired = await new DesiredState({
      catalog,
      releases: (p) => releases.list(p),
      advisories: (p) => advisories.list(p),
      status: (k) => state.get(k),
      sourceDateEpoch: 0,
    }).package("minimist");
    assert.equal(desired.state === "build" && desired.inputDigest, req?.inputDigest);
    assert.deepEqual(desired.state === "build" && desired.plan.kind === "package" && desired.plan.patches?.map((p) => p.sha256), [sha(PATCH)]);
    assert.match((await state.get("package/minimist"))!.cause?.detail ?? "", /cve-2021-44906\.patch, fixing GHSA-xvch-5gv4-984h/);
  });

  test("a rollback to inputs asked for minutes ago is asked for again, not dropped as a duplicate", async () => {
    await purge("build");
    const key: Key = "package/right";
    const request = async () => (await messages<BuildRequest>("build")).filter((r) => r.key === key).map((r) => r.version);
    // right is Ready at 1.0; 1.1 is released and asked for, then withdrawn by an advisory that
    // affects 1.1 only and is fixed in 1.0: the key goes back to 1.0's inputs.
    await releases.record({ package: "right", version: "1.1", url: "https://example.org/right-1.1.tar.gz", sha256: sha("right-1.1") });
    // right's 1.0 inputs were asked for seconds ago (the first test), well inside the build
    // stream's duplicate window.
    await run(key, { type: "release" });
    await complete(key);
    await run(key, { type: "built" });
    assert.equal((await state.get(key))!.actual?.version, "1.1");
    const regression = osvSchema.parse({
      id: "HS-TEST-ROLLBACK",
      modified: "2024-01-01T00:00:00Z",
      affected: [
        {
          package: { ecosystem: "Generic", name: "right" },
          versions: ["1.1"],
          ranges: [
            { type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.0" }] },
            { type: "ECOSYSTEM", events: [{ introduced: "1.1" }] },
          ],
        },
      ],
    });
    await advisories.record(regression, ["right"]);
    await run(key, { type: "advisory", id: "HS-TEST-ROLLBACK" });
    const s = (await state.get(key))!;
    assert.equal(s.desiredVersion, "1.0");
    assert.deepEqual(await request(), ["1.1", "1.0"], "the rollback's request is on the build stream");
    await complete(key);
    await run(key, { type: "built" });
    assert.equal((await state.get(key))!.phase, "Ready");
  });

  test("a build asked for and no longer desired is superseded when the key is back at what it has", async () => {
    const key: Key = "package/base";
    await releases.record({ package: "base", version: "1.1", url: "https://example.org/base-1.1.tar.gz", sha256: sha("base-1.1") });
    await run(key, { type: "release" });
    const asked = (await state.get(key))!;
    assert.equal(asked.phase, "Building");
    assert.equal(asked.desiredVersion, "1.1");
    const regression = osvSchema.parse({
      id: "HS-TEST-SUPERSEDE",
      modified: "2024-01-01T00:00:00Z",
      affected: [
        {
          package: { ecosystem: "Generic", name: "base" },
          ranges: [
            { type: "ECOSYSTEM", events: [{ introduced: "1.1" }] },
            { type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.0" }] },
          ],
        },
      ],
    });
    await advisories.record(regression, ["base"]);
    await run(key, { type: "advisory", id: "HS-TEST-SUPERSEDE" });
    const back = (await state.get(key))!;
    assert.equal(back.phase, "Ready");
    assert.equal(back.desiredVersion, "1.0");
    assert.equal(back.desiredInputDigest, back.actual?.inputDigest, "the builder and the signer now skip the 1.1 build");
    assert.equal(back.builds?.find((b) => b.inputDigest === asked.desiredInputDigest)?.outcome, "superseded");
  });

  test("a request recorded but never published (the run died) is published by the next run, once", async () => {
    await purge("build");
    let lose = true;
    const flaky = createReconciler({
      catalog: () => catalog,
      state,
      inputs: storeInputs({ releases, advisories, state }),
      sourceDateEpoch: 0,
      staleBuildMs: 60_000,
      buildFailures: { retries: 2, backoffMs: 1_000, backoffMaxMs: 60_000 },
      log: quiet,
      requestBuild: async (req, requestId) => {
        if (lose) throw new Error("connection lost before the publish");
        await publish(t.nats, "build", req.key, req, { msgId: buildMessageId(req, requestId) });
      },
    });
    const item = (attempts: number): WorkItem => releaseItem("package/left", { cause: { type: "manual" }, attempts });
    await releases.record({ package: "left", version: "1.5", url: "https://example.org/left-1.5.tar.gz", sha256: sha("left-1.5") });
    await assert.rejects(flaky(item(0)), /connection lost/);
    assert.equal((await state.get("package/left"))!.phase, "Building", "the request was recorded");
    assert.deepEqual(await builds(), []);
    lose = false;
    assert.equal((await flaky(item(0))).type, "requeueAfter", "a run that did not fail before waits for the build");
    assert.deepEqual(await builds(), []);
    // A lease taken over from a worker that died (its region lost): the queue's attempt says so.
    await flaky(item(0), { attempt: 2 });
    assert.deepEqual(await builds(), ["package/left@1.5"], "a run after one that died publishes the recorded request");
    await flaky(item(1));
    await flaky(item(2));
    assert.deepEqual(await builds(), ["package/left@1.5"], "later retries publish it again under its id, and the stream drops the duplicates");
  });

  test("a failed build: retried after its backoff, handed to the agent when a new version's retries are spent, dead-lettered when it kills its builder, afresh on an operator's retry", async () => {
    const key = "package/left";
    const digest = (await state.get(key))!.desiredInputDigest!;
    assert.equal((await state.get(key))!.phase, "Building");
    const fail = (kind: "permanent" | "crash" | "invalid", count: number, at = new Date()) =>
      state.update(key, (s) => ({
        ...s!,
        phase: "Failed",
        lastError: "step 2/2 (make) exited with code 2",
        failure: {
          inputDigest: digest,
          kind,
          reason: kind === "crash" ? "the builder died while building this key (3 times)" : "step 2/2 (make) exited with code 2",
          count,
          at: at.toISOString(),
        },
      }));
    const asked = async () => (await builds()).filter((b) => b === "package/left@1.5").length;
    const before = await asked();

    await fail("permanent", 1);
    const wait = await run(key, { type: "built", id: digest });
    assert.ok(wait.type === "requeueAfter" && wait.ms > 0 && wait.ms <= 1_000, JSON.stringify(wait));
    assert.match((await state.get(key))!.lastError ?? "", /^retrying: build failed \(1 of 3\): step 2\/2 \(make\) exited with code 2, next at \d{4}-/);
    assert.equal(await asked(), before, "not before its time");

    await fail("permanent", 1, new Date(Date.now() - 5_000));
    assert.equal((await run(key)).type, "requeueAfter");
    const rebuilt = (await state.get(key))!;
    assert.deepEqual(
      { phase: rebuilt.phase, count: rebuilt.failure?.count, nextAt: rebuilt.failure?.nextAt },
      { phase: "Building", count: 1, nextAt: undefined },
      "asked again, the count kept",
    );
    assert.equal(await asked(), before + 1);

    await fail("permanent", 3);
    const handedOver = {
      type: "done",
      children: [
        { key, priority: "repair", cause: { type: "resync", detail: "handed to the agent: build failed 3 times: step 2/2 (make) exited with code 2" } },
      ],
    };
    assert.deepEqual(await run(key), handedOver, "1.5 is a new version for left: the agent is to repair its recipe");
    await state.update(key, (s) => ({ ...s!, phase: "DeadLettered" }));
    assert.deepEqual(await run(key), handedOver, "a resync of a key the agent gave up on hands it over again and builds nothing");
    assert.equal(await asked(), before + 1);

    await fail("crash", 3);
    assert.deepEqual(await run(key), { type: "nonRetriable", reason: "the builder died while building this key (3 times)" });
    await fail("invalid", 1);
    assert.deepEqual(await run(key), { type: "done" });
    assert.equal((await state.get(key))!.phase, "Failed", "an invalid request stays Failed until an operator retries");

    assert.equal((await run(key, { type: "manual", detail: "retried by an operator" })).type, "requeueAfter");
    const retried = (await state.get(key))!;
    assert.deepEqual({ phase: retried.phase, failure: retried.failure }, { phase: "Building", failure: undefined }, "an operator's retry starts afresh");
    assert.equal(await asked(), before + 2);
  });

  test("a catalog change touching one recipe enqueues exactly that key and its dependents", async () => {
    writeCatalog(catalogDir);
    const source = await CatalogSource.open({ dir: catalogDir }, { cacheDir: path.join(t.dir, "cache") });
    await purge("work");
    writeFileSync(
      path.join(catalogDir, "packages/left.yaml"),
      readFileSync(path.join(catalogDir, "packages/left.yaml"), "utf8").replace("[make]", "[make, make check]"),
    );
    const r = await source.reload();
    assert.equal(r.status, "changed");
    if (r.status !== "changed") return;
    assert.deepEqual(
      catalogChangeRequests(r.catalog, r.diff).map((q) => q.key),
      ["package/left", "package/top", "image/app"],
    );
    await onCatalogReload(r, (req) => queue.enqueue(req), quiet);
    const items = await messages<WorkItem>("work");
    assert.deepEqual(items.map((w) => w.key).sort(), ["image/app", "package/left", "package/top"]);
    assert.ok(items.every((w) => w.priority === "dependency" && w.cause.type === "catalog" && /^sha256:/.test(w.cause.id ?? "")));

    // A bad edit is rejected and the last good catalog keeps serving; nothing is enqueued.
    await purge("work");
    writeFileSync(path.join(catalogDir, "packages/top.yaml"), "name: top\nversion: 7\n");
    const bad = await source.reload();
    assert.equal(bad.status, "rejected");
    if (bad.status === "rejected") await onCatalogReload(bad, (req) => queue.enqueue(req), quiet);
    assert.deepEqual(await queued(), []);
    assert.ok(source.current().packages.has("top"));
  });

  test("a key removed from the catalog is retired: its status goes, nothing is built; an unknown key is done", async () => {
    writeCatalog(catalogDir);
    catalog = await loadCatalog(catalogDir);
    await run("package/lodash");
    assert.ok(await state.get("package/lodash"), "lodash has a status while in the catalog");
    await purge("build");

    rmSync(path.join(catalogDir, "packages/lodash.yaml"));
    const source = await CatalogSource.open({ dir: catalogDir }, { cacheDir: path.join(t.dir, "cache-removal") });
    catalog = source.current();
    assert.deepEqual(await run("package/lodash", { type: "catalog", id: "removal" }), { type: "done" });
    assert.equal(await state.get("package/lodash"), undefined, "the status of a removed key is deleted");
    assert.deepEqual(await run("package/lodash"), { type: "done" }, "running it again changes nothing");
    assert.deepEqual(await run("package/never-was"), { type: "done" });
    assert.equal(await state.get("package/never-was"), undefined);
    assert.deepEqual(await builds(), []);
  });
  test("a build with no dependents to tell is completed by the signer: its look watches for it; a dependent that comes to wait for it makes its completion run", async () => {
    const before = await catalogWith("fold-catalog", {
      solo: [],
      solo2: [],
      hub: [],
      spoke: ["hub"],
    });
    const r = reconcilerOf(() => before);
    const solo = await r(releaseItem("package/solo"));
    const soloStatus = (await state.get("package/solo"))!;
    assert.deepEqual(solo, { type: "requeueAfter", ms: 60_000, watch: soloStatus.desiredInputDigest }, "the look watches for the build");
    assert.equal(soloStatus.builds?.[0]?.signerCompletes, true);
    const hub = await r(releaseItem("package/hub"));
    assert.deepEqual(hub, { type: "requeueAfter", ms: 60_000 }, "a key with a dependent runs its completion: a plain look");
    assert.equal((await state.get("package/hub"))!.builds?.[0]?.signerCompletes, undefined);
    assert.equal(
      (await state.get("package/hub"))!.builds?.[0]?.priority,
      "release",
      "the build names the class of the run that asked for it, where its look waits and its completion goes",
    );
    // A look of the build in flight keeps watching for it.
    const again = await r({ ...releaseItem("package/solo"), cause: { type: "advisory" } });
    assert.ok(again.type === "requeueAfter" && again.watch === soloStatus.desiredInputDigest, "an in-flight look watches too");

    // The catalog gains a package built from solo (and one from solo2) while their builds run.
    const changed = await catalogWith("fold-catalog", {
      solo: [],
      solo2: [],
      hub: [],
      spoke: ["hub"],
      leans: ["solo"],
      leans2: ["solo2"],
    });
    await r(releaseItem("package/solo2"));
    assert.equal((await state.get("package/solo2"))!.builds?.[0]?.signerCompletes, true);
    // leans waits for solo: solo's completion must run to tell it.
    assert.deepEqual(await reconcilerOf(() => changed)(releaseItem("package/leans")), { type: "done" });
    assert.match((await state.get("package/leans"))!.waitingFor ?? "", /package\/solo to be built/);
    const soloNow = (await state.get("package/solo"))!;
    assert.equal(soloNow.builds?.[0]?.outcome, "requested");
    assert.equal(soloNow.builds?.[0]?.signerCompletes, undefined, "its completion now runs and tells leans");
    // leans2 waits for solo2, whose signer completes it between leans2's look and the mark:
    // solo2 told nobody, so leans2 looks again at once.
    const racing = { ...reconcilerDepsOf(() => changed) };
    let raced = false;
    racing.state = new Proxy(state, {
      get(target, prop, receiver) {
        if (prop !== "update") {
          const value: unknown = Reflect.get(target, prop, receiver);
          return typeof value === "function" ? value.bind(target) : value; // its private fields are the target's
        }
        return async (key: Key, change: Parameters<StateStore["update"]>[1]) => {
          if (key === "package/solo2" && !raced) {
            raced = true;
            await complete("package/solo2");
          }
          return target.update(key, change);
        };
      },
    });
    const leans2 = await createReconciler(racing)(releaseItem("package/leans2"));
    assert.ok(raced, "solo2 completed during leans2's run");
    assert.deepEqual(decisionOf(leans2), { type: "requeueAfter", ms: 0 }, "leans2 looks again");
    assert.equal((await reconcilerOf(() => changed)(releaseItem("package/leans2"))).type, "requeueAfter", "and then builds (solo2 is built)");
    assert.ok((await builds()).includes("package/leans2@1.0"));
  });

  test("a run reports up to which revision it read its package's advisories and releases: at or past every entry stored before it ran", async () => {
    const advisory = await advisories.record(fixture("GHSA-p6mc-m468-83gw"), ["lodash"]);
    const release = await releases.record({
      package: "minimist",
      version: "1.9.0",
      url: "https://example.org/minimist-1.9.0.tgz",
      sha256: sha("minimist-1.9.0"),
    });
    const key = catalog.keys().find((k) => k.startsWith("package/"))!;
    const result = await createReconciler(reconcilerDepsOf(() => catalog))(releaseItem(key));
    assert.notEqual(result.type, "nonRetriable");
    const read = result.type === "nonRetriable" ? undefined : result.read;
    // Nothing else writes the buckets meanwhile: the run read each up to its last entry.
    assert.deepEqual(read, { advisories: await bucketRevision(advisories.kv), releases: await bucketRevision(releases.kv) });
    assert.ok(advisory.revision > 0 && read!.advisories! >= advisory.revision, "at or past the advisory's entry");
    assert.ok(release.revision > 0 && read!.releases! >= release.revision, "at or past the release");
  });
});
