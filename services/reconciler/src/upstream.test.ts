/**
 * The upstream resolver against real upstreams on loopback: a local HTTP server for release
 * tarballs (with 429/503 and Retry-After on demand), local git repositories with tags, and the
 * release facts in real JetStream KV (test/harness.ts).
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import path from "node:path";
import { loadCatalog, ReleaseStore, UpstreamLedger, type Catalog } from "@homeostat/catalog";
import { StateStore, type BuildRequest, type Logger } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { createReconciler } from "./reconcile.ts";
import { releaseItem } from "./test-support.ts";
import { UpstreamResolver, type UpstreamLimits } from "./upstream.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
const sha = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");
const limits: UpstreamLimits = { maxBytes: 1 << 20, allowRemote: false, timeoutMs: 10_000, perHostConcurrency: 2, tries: 3, backoffMs: 50, maxWaitMs: 2_000 };

/** Serves `files` by path; `script` answers a path's first requests with other statuses. */
function upstreamServer(
  files: Map<string, Buffer>,
  script: Map<string, { status: number; retryAfter?: string }[]>,
): Promise<{ server: Server; base: string; hits: Map<string, number> }> {
  const hits = new Map<string, number>();
  const server = createServer((req, res) => {
    const p = req.url ?? "/";
    hits.set(p, (hits.get(p) ?? 0) + 1);
    const next = script.get(p)?.shift();
    if (next) {
      res.writeHead(next.status, next.retryAfter ? { "retry-after": next.retryAfter } : {}).end();
      return;
    }
    const body = files.get(p);
    if (!body) res.writeHead(404).end();
    else res.writeHead(200, { "content-length": body.length }).end(body);
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ server, base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits })),
  );
}

const git = (cwd: string, ...args: string[]) =>
  execFileSync("git", ["-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "tag.gpgSign=false", "-c", "commit.gpgSign=false", ...args], {
    cwd,
    encoding: "utf8",
  }).trim();

describe("upstream resolver", { timeout: 60_000 }, () => {
  let t: TestEnv;
  let http: Awaited<ReturnType<typeof upstreamServer>>;
  const files = new Map<string, Buffer>();
  const script = new Map<string, { status: number; retryAfter?: string }[]>();
  let repo: string;
  let catalog: Catalog;
  let releases: ReleaseStore;
  let ledger: UpstreamLedger;
  let resolver: UpstreamResolver;
  const facts = async (pkg: string) => (await releases.list(pkg)).map((r) => [r.version, r.sha256, r.commit ?? null]).sort();

  before(async () => {
    t = await testEnv();
    http = await upstreamServer(files, script);
    repo = path.join(t.dir, "upstream.git");
    mkdirSync(repo);
    git(repo, "init", "-q", "-b", "main");
    writeFileSync(path.join(repo, "README"), "1.0\n");
    git(repo, "add", "README");
    git(repo, "commit", "-q", "-m", "1.0");
    const first = git(repo, "rev-parse", "HEAD");
    const archive = execFileSync("git", ["archive", "--format=tar", first], { cwd: repo });
    const dir = path.join(t.dir, "catalog");
    const pkg = (name: string, body: string) => {
      mkdirSync(path.join(dir, "packages"), { recursive: true });
      writeFileSync(path.join(dir, "packages", `${name}.yaml`), `name: ${name}\nversion: "1.0"\nbuild: { steps: [make] }\n${body}`);
    };
    pkg("tarball", `upstream: { github: octo/tarball }\nsource: { url: "${http.base}/tarball-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\n`);
    pkg(
      "templated",
      `upstream: { url: "${http.base}/dl/templated-\${version}.tgz", tag: "release-\${version}" }\nsource: { url: "${http.base}/dl/templated-1.0.tgz", sha256: "${"0".repeat(64)}" }\n`,
    );
    pkg("fromgit", `upstream: { github: octo/fromgit, tag: "v\${version}" }\nsource: { url: "git+file://${repo}#${first}", sha256: "${sha(archive)}" }\n`);
    pkg("pinned", `upstream: { github: octo/pinned }\nsource: { url: "${http.base}/pinned.tar.gz", sha256: "${"0".repeat(64)}" }\n`);
    pkg("monitored", `upstream: { releaseMonitoring: { name: monitored } }\nsource: { url: "${http.base}/monitored.tar.gz", sha256: "${"0".repeat(64)}" }\n`);
    catalog = await loadCatalog(dir);
    releases = new ReleaseStore(t.buckets.releases);
    ledger = new UpstreamLedger(t.buckets.releases);
    resolver = new UpstreamResolver({ releases, ledger, githubArchiveUrl: `${http.base}/gh`, limits, scratchDir: path.join(t.dir, "scratch"), log: quiet });
  });

  after(async () => {
    http.server.close();
    await t.cleanup();
  });

  test("an announced version of a templated source is fetched once, hashed and recorded; then immutable", async () => {
    files.set("/tarball-1.1.tar.gz", Buffer.from("tarball 1.1"));
    await ledger.announce({ package: "tarball", version: "1.1", tag: "v1.1", origin: "github" });
    const r = await resolver.resolve(catalog, "tarball", { discover: false });
    assert.deepEqual(
      r.recorded.map((x) => [x.version, x.tag, x.url]),
      [["1.1", "v1.1", `${http.base}/tarball-1.1.tar.gz`]],
    );
    assert.deepEqual(await facts("tarball"), [["1.1", sha("tarball 1.1"), null]]);
    assert.deepEqual(await ledger.announced("tarball"), [], "the announcement is settled");
    assert.equal(http.hits.get("/tarball-1.1.tar.gz"), 1);

    // A resync does not fetch it again; a feed announcing it anew does, and finds the same bytes.
    await resolver.resolve(catalog, "tarball", { discover: true });
    assert.equal(http.hits.get("/tarball-1.1.tar.gz"), 1);
    await ledger.announce({ package: "tarball", version: "1.1", tag: "v1.1", origin: "github" });
    assert.deepEqual((await resolver.resolve(catalog, "tarball", { discover: false })).conflicts, []);

    // The tag moved: other bytes under the same version are a conflict, reported; the fact stays.
    files.set("/tarball-1.1.tar.gz", Buffer.from("tarball 1.1, rebuilt and re-uploaded"));
    await ledger.announce({ package: "tarball", version: "1.1", tag: "v1.1", origin: "github" });
    const moved = await resolver.resolve(catalog, "tarball", { discover: false });
    assert.deepEqual(
      moved.conflicts.map((c) => [c.version, c.recorded.sha256, c.found.sha256]),
      [["1.1", sha("tarball 1.1"), sha("tarball 1.1, rebuilt and re-uploaded")]],
    );
    assert.deepEqual(await facts("tarball"), [["1.1", sha("tarball 1.1"), null]], "the recorded fact is unchanged");
  });

  test("upstream.url and the tag mapping; 429 with Retry-After is waited for, a long one closes the host", async () => {
    files.set("/dl/templated-2.0.tgz", Buffer.from("templated 2.0"));
    script.set("/dl/templated-2.0.tgz", [{ status: 429, retryAfter: "1" }]);
    await ledger.announce({ package: "templated", version: "2.0", tag: "release-2.0", origin: "anitya" });
    const started = Date.now();
    const r = await resolver.resolve(catalog, "templated", { discover: false });
    assert.ok(Date.now() - started >= 1_000, "waited for Retry-After");
    assert.deepEqual(
      r.recorded.map((x) => x.version),
      ["2.0"],
    );

    // 503 asking for two minutes: not waited in place; the version stays announced and the host
    // is closed for every package until then (no request reaches it).
    files.set("/dl/templated-2.1.tgz", Buffer.from("templated 2.1"));
    script.set("/dl/templated-2.1.tgz", [{ status: 503, retryAfter: "120" }]);
    await ledger.announce({ package: "templated", version: "2.1", origin: "anitya" });
    const busy = await resolver.resolve(catalog, "templated", { discover: false });
    assert.ok(busy.unavailable && busy.unavailable.retryAfterMs > 100_000, `told to look again in ~2 min: ${JSON.stringify(busy.unavailable)}`);
    assert.match(busy.unavailable.reason, /HTTP 503/);
    assert.deepEqual(
      (await ledger.announced("templated")).map((a) => a.version),
      ["2.1"],
    );
    files.set("/tarball-1.2.tar.gz", Buffer.from("tarball 1.2"));
    await ledger.announce({ package: "tarball", version: "1.2", origin: "github" });
    const closed = await resolver.resolve(catalog, "tarball", { discover: false });
    assert.match(closed.unavailable?.reason ?? "", /Retry-After/);
    assert.equal(http.hits.get("/tarball-1.2.tar.gz"), undefined, "the closed host was not asked");
  });

  test("a git upstream: the tag's commit and the sha256 of its git archive; discovery on resync; a moved tag is a conflict", async () => {
    writeFileSync(path.join(repo, "README"), "1.1\n");
    git(repo, "commit", "-q", "-am", "1.1");
    git(repo, "tag", "-a", "v1.1", "-m", "1.1");
    const c11 = git(repo, "rev-parse", "HEAD");
    await ledger.announce({ package: "fromgit", version: "1.1", origin: "github" });
    const r = await resolver.resolve(catalog, "fromgit", { discover: false });
    const archive = execFileSync("git", ["archive", "--format=tar", c11], { cwd: repo });
    assert.deepEqual(
      r.recorded.map((x) => [x.version, x.tag, x.commit, x.sha256, x.url]),
      [["1.1", "v1.1", c11, sha(archive), `git+file://${repo}#${c11}`]],
    );

    // Discovery: a resync finds the tags the policy accepts above the pinned version.
    writeFileSync(path.join(repo, "README"), "1.2\n");
    git(repo, "commit", "-q", "-am", "1.2");
    git(repo, "tag", "v1.2");
    git(repo, "tag", "nightly-20240101");
    const c12 = git(repo, "rev-parse", "HEAD");
    const found = await resolver.resolve(catalog, "fromgit", { discover: true });
    assert.deepEqual(
      found.recorded.map((x) => [x.version, x.commit]),
      [["1.2", c12]],
    );

    // v1.1 moved to another commit: a conflict, the fact keeps its commit.
    git(repo, "tag", "-f", "-a", "v1.1", "-m", "moved", c12);
    await ledger.announce({ package: "fromgit", version: "1.1", tag: "v1.1", origin: "github" });
    const moved = await resolver.resolve(catalog, "fromgit", { discover: false });
    assert.deepEqual(
      moved.conflicts.map((c) => [c.version, c.recorded.commit, c.found.commit]),
      [["1.1", c11, c12]],
    );
    assert.equal((await releases.list("fromgit")).find((x) => x.version === "1.1")?.commit, c11);
  });

  test("the reconciler resolves before it decides; an unavailable upstream leaves the key Ready on its last version, with the reason", async () => {
    const state = new StateStore(t.buckets.state);
    const requested: BuildRequest[] = [];
    const own = new UpstreamResolver({
      releases,
      ledger,
      limits: { ...limits, tries: 1 },
      githubArchiveUrl: `${http.base}/gh`,
      scratchDir: path.join(t.dir, "scratch"),
      log: quiet,
    });
    const reconcile = createReconciler({
      catalog: () => catalog,
      state,
      inputs: async () => ({ releases: await releases.reader(), advisories: async () => [], status: await state.reader() }),
      sourceDateEpoch: 0,
      staleBuildMs: 60_000,
      buildFailures: { retries: 2, backoffMs: 1_000, backoffMaxMs: 60_000 },
      log: quiet,
      requestBuild: async (req) => void requested.push(req),
      resolveUpstream: (c, n, o) => own.resolve(c, n, o),
    });
    const item = releaseItem("package/templated");
    // templated is built and signed at 2.0 (the facts above); then 2.2 is announced while its host is down.
    await reconcile(item);
    assert.equal(requested.at(-1)?.version, "2.1", "2.1, announced and now reachable, is resolved and asked for");
    await state.update(
      "package/templated",
      (s) =>
        s && {
          ...s,
          phase: "Ready",
          actual: {
            version: s.desiredVersion!,
            inputDigest: s.desiredInputDigest!,
            outputs: { location: "test" },
            signatures: {},
            keyId: "k",
            builtAt: new Date().toISOString(),
          },
        },
    );
    script.set("/dl/templated-2.2.tgz", [{ status: 503 }]);
    await ledger.announce({ package: "templated", version: "2.2", origin: "anitya" });
    const result = await reconcile(item);
    const s = (await state.get("package/templated"))!;
    assert.equal(s.phase, "Ready");
    assert.equal(s.actual?.version, "2.1");
    assert.match(s.upstream ?? "", /upstream unavailable \(2\.2: .*HTTP 503/);
    assert.equal(result.type, "requeueAfter", "looked at again later");
    files.set("/dl/templated-2.2.tgz", Buffer.from("templated 2.2"));
    await reconcile(item);
    assert.equal((await state.get("package/templated"))!.upstream, undefined, "the reason goes once resolved");
    assert.equal(requested.at(-1)?.version, "2.2");
  });

  test("a GitHub upstream without a source template: the tag's tarball from the GitHub archive host", async () => {
    files.set("/gh/octo/pinned/tar.gz/refs/tags/v2.0", Buffer.from("pinned 2.0"));
    await ledger.announce({ package: "pinned", version: "2.0", tag: "v2.0", origin: "github" });
    // A resolver of its own: an earlier test closed the test server's host for two minutes.
    const own = new UpstreamResolver({ releases, ledger, githubArchiveUrl: `${http.base}/gh`, limits, scratchDir: path.join(t.dir, "scratch"), log: quiet });
    const r = await own.resolve(catalog, "pinned", { discover: false });
    assert.deepEqual(
      r.recorded.map((x) => [x.version, x.tag, x.url, x.sha256]),
      [["2.0", "v2.0", `${http.base}/gh/octo/pinned/tar.gz/refs/tags/v2.0`, sha("pinned 2.0")]],
    );
  });

  test("remote hosts: refused unless allowed; allowed, one is tried (and here unreachable: kept for later)", async () => {
    const dir = path.join(t.dir, "catalog-remote");
    mkdirSync(path.join(dir, "packages"), { recursive: true });
    // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routed, so the attempt times out.
    writeFileSync(
      path.join(dir, "packages", "faraway.yaml"),
      `name: faraway\nversion: "1.0"\nbuild: { steps: [make] }\nupstream: { github: octo/faraway }\nsource: { url: "http://192.0.2.1/faraway-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\n`,
    );
    const remote = await loadCatalog(dir);
    const resolverWith = (allowRemote: UpstreamLimits["allowRemote"]) =>
      new UpstreamResolver({
        releases,
        ledger,
        githubArchiveUrl: `${http.base}/gh`,
        limits: { ...limits, allowRemote, tries: 1, timeoutMs: 300 },
        scratchDir: path.join(t.dir, "scratch"),
        log: quiet,
      });
    await ledger.announce({ package: "faraway", version: "1.1", origin: "github" });
    const off = await resolverWith(false).resolve(remote, "faraway", { discover: false });
    assert.match(off.refused.join("\n"), /only loopback hosts are allowed \(got 192\.0\.2\.1/);
    await ledger.announce({ package: "faraway", version: "1.1", origin: "github" });
    const notListed = await resolverWith(["codeload.github.com"]).resolve(remote, "faraway", { discover: false });
    assert.match(notListed.refused.join("\n"), /host 192\.0\.2\.1 is not one of the allowed source hosts/);
    await ledger.announce({ package: "faraway", version: "1.1", origin: "github" });
    const on = await resolverWith(true).resolve(remote, "faraway", { discover: false });
    assert.deepEqual(on.refused, []);
    assert.match(
      on.unavailable?.reason ?? "",
      /1\.1: source http:\/\/192\.0\.2\.1\/faraway-1\.1\.tar\.gz: (timed out|.*(EHOSTUNREACH|ENETUNREACH|fetch failed))/,
    );
    assert.deepEqual(
      (await ledger.announced("faraway")).map((a) => a.version),
      ["1.1"],
      "kept for the next look",
    );
  });

  test("refusals are final for the version; an unreachable upstream is kept for later", async () => {
    // A resolver of its own: the one above closed the test server's host for two minutes.
    resolver = new UpstreamResolver({ releases, ledger, githubArchiveUrl: `${http.base}/gh`, limits, scratchDir: path.join(t.dir, "scratch"), log: quiet });
    await ledger.announce({ package: "tarball", version: "9.9", origin: "github" });
    const missing = await resolver.resolve(catalog, "tarball", { discover: false });
    assert.match(missing.refused.join("\n"), /9\.9: source .*tarball-9\.9\.tar\.gz: HTTP 404/);
    assert.ok(!(await ledger.announced("tarball")).some((a) => a.version === "9.9"), "a refused version is not asked for again");

    files.set("/tarball-3.0.tar.gz", Buffer.alloc(limits.maxBytes + 1));
    await ledger.announce({ package: "tarball", version: "3.0", origin: "github" });
    assert.match((await resolver.resolve(catalog, "tarball", { discover: false })).refused.join("\n"), /over the limit/);

    await ledger.announce({ package: "monitored", version: "2.0", origin: "anitya" });
    const noTemplate = await resolver.resolve(catalog, "monitored", { discover: false });
    assert.deepEqual([noTemplate.recorded, await ledger.announced("monitored")], [[], []], "no way to know where 2.0 is: logged, nothing recorded");

    const down = new UpstreamResolver({
      releases,
      ledger,
      limits: { ...limits, tries: 2 },
      githubArchiveUrl: `${http.base}/gh`,
      scratchDir: path.join(t.dir, "scratch"),
      log: quiet,
    });
    const closedPort = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const port = (s.address() as AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    const dir = path.join(t.dir, "catalog-down");
    mkdirSync(path.join(dir, "packages"), { recursive: true });
    writeFileSync(
      path.join(dir, "packages", "gone.yaml"),
      `name: gone\nversion: "1.0"\nbuild: { steps: [make] }\nupstream: { github: octo/gone }\nsource: { url: "http://127.0.0.1:${closedPort}/gone-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\n`,
    );
    await ledger.announce({ package: "gone", version: "1.1", origin: "github" });
    const r = await down.resolve(await loadCatalog(dir), "gone", { discover: false });
    assert.ok(r.unavailable, "unavailable, not refused");
    assert.deepEqual(
      (await ledger.announced("gone")).map((a) => a.version),
      ["1.1"],
      "kept for the next look",
    );
  });
});
