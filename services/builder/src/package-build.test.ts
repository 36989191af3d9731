/**
 * Patches and test commands of package builds, with the real GNU patch and the steps sandboxed
 * by bubblewrap when it works here: a source whose one file the patches rewrite, built with
 * and without them, and with passing, failing and missing-patch variations.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type { BuildOutputs } from "@homeostat/core/contracts";
import { type PackageBuildPlan } from "@homeostat/catalog";
import { sha256Digest, type Digest } from "@homeostat/core/digest";
import type { PackageExternalParameters, SlsaProvenance } from "./provenance.ts";
import { build, BuildFailure, type BuildContext } from "./build.ts";
import { loadConfig } from "@homeostat/core/config";
import { classifyFailure } from "@homeostat/core/failure";
import { resolveIsolation } from "./isolation.ts";
import type { PackageMetadata } from "./package-build.ts";
import { ArtifactStore } from "./store.ts";
import { buildContext, packagePlan } from "./test-support.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-package-build-"));
after(() => rm(tmp, { recursive: true, force: true }));

// The sandbox is required, as in the builder; as root it runs as the build uid, which must be
// able to walk down to the workspaces under tmp.
await chmod(tmp, 0o711);
const isolation = await resolveIsolation(loadConfig({}).buildSandbox);
const sources = path.join(tmp, "sources");
await mkdir(path.join(sources, "greet-1.0"), { recursive: true });

const sha256Hex = (data: string | Buffer) => createHash("sha256").update(data).digest("hex");

await writeFile(path.join(sources, "greet-1.0", "greeting.txt"), "hello\nfrom greet\n");
execFileSync("tar", ["-czf", path.join(sources, "greet-1.0.tar.gz"), "-C", sources, "greet-1.0"]);
const source = { url: "greet-1.0.tar.gz", sha256: sha256Hex(await readFile(path.join(sources, "greet-1.0.tar.gz"))) };

/** Writes a patch file next to the sources; returns its reference as the reconciler sends it. */
async function patchFile(name: string, text: string): Promise<{ url: string; sha256: string }> {
  await writeFile(path.join(sources, name), text);
  return { url: name, sha256: sha256Hex(text) };
}

const first = await patchFile("1-patched.patch", "--- a/greeting.txt\n+++ b/greeting.txt\n@@ -1,2 +1,2 @@\n-hello\n+hello, patched\n from greet\n");
// Applies only on top of the first: the order matters.
const second = await patchFile("2-twice.patch", "--- a/greeting.txt\n+++ b/greeting.txt\n@@ -1,2 +1,2 @@\n hello, patched\n-from greet\n+from greet, twice\n");
const stale = await patchFile("stale.patch", "--- a/greeting.txt\n+++ b/greeting.txt\n@@ -1,2 +1,2 @@\n-good morning\n+good evening\n from greet\n");

const INSTALL = "install -D -m 0644 greeting.txt $DESTDIR/usr/share/greet/greeting.txt";

function request(label: string, extra: Partial<PackageBuildPlan> = {}): PackageBuildPlan {
  return packagePlan("greet", {
    // A distinct input digest per distinct request (the build cache keys on it).
    inputDigest: sha256Digest(`test-input:${label}`),
    sourceDateEpoch: 1_700_000_000,
    source,
    steps: [INSTALL],
    ...extra,
  });
}

function ctxFor(name: string): BuildContext {
  return buildContext({ dataDir: path.join(tmp, name), timeoutMs: 60_000, isolation, sourceBaseDir: sources });
}

async function installed(ctx: BuildContext, o: BuildOutputs): Promise<string> {
  return execFileSync("tar", ["-xzOf", new ArtifactStore(ctx.dataDir).path(o.archive as Digest), "usr/share/greet/greeting.txt"], { encoding: "utf8" });
}

async function failure(p: Promise<unknown>): Promise<BuildFailure> {
  const e = await p.then(
    () => assert.fail("the build should fail"),
    (err: unknown) => err,
  );
  assert.ok(e instanceof BuildFailure, String(e));
  return e;
}

/** The blobs in a store that are gzip files (package archives). */
async function archives(ctx: BuildContext): Promise<string[]> {
  const dir = path.join(new ArtifactStore(ctx.dataDir).root, "blobs", "sha256");
  const out: string[] = [];
  for (const hex of await readdir(dir).catch(() => [] as string[])) {
    if (hex === source.sha256) continue;
    const head = (await readFile(path.join(dir, hex))).subarray(0, 2);
    if (head[0] === 0x1f && head[1] === 0x8b) out.push(hex);
  }
  return out;
}

test("patches are applied in order before the steps: the output changes, reproducibly", async () => {
  // The second patch by file:// URL: the reconciler sends catalog paths that way.
  const patches = [first, { ...second, url: pathToFileURL(path.join(sources, second.url)).href }];
  const plain = await build(request("plain"), ctxFor("plain"));
  const a = await build(request("patched", { patches }), ctxFor("patched-a"));
  const b = await build(request("patched", { patches }), ctxFor("patched-b"));
  assert.equal(await installed(ctxFor("plain"), plain), "hello\nfrom greet\n");
  assert.equal(await installed(ctxFor("patched-a"), a), "hello, patched\nfrom greet, twice\n");
  assert.notEqual(a.archive, plain.archive);
  for (const k of ["archive", "diffId", "size", "metadata"] as const) assert.equal(a[k], b[k], k);

  const store = new ArtifactStore(ctxFor("patched-a").dataDir);
  const meta = JSON.parse((await store.read(a.metadata as Digest)).toString("utf8")) as PackageMetadata;
  assert.deepEqual(meta.patches, [{ sha256: first.sha256 }, { sha256: second.sha256 }]);
  const plainMeta = JSON.parse((await new ArtifactStore(ctxFor("plain").dataDir).read(plain.metadata as Digest)).toString("utf8")) as PackageMetadata;
  assert.equal(plainMeta.patches, undefined);

  const prov = JSON.parse((await store.read(a.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.deepEqual(prov.buildDefinition.resolvedDependencies, [
    { uri: source.url, digest: { sha256: source.sha256 } },
    { uri: first.url, digest: { sha256: first.sha256 } },
    { uri: patches[1]!.url, digest: { sha256: second.sha256 } },
  ]);
  const params = prov.buildDefinition.externalParameters as PackageExternalParameters;
  assert.deepEqual(params.patches, patches);
  assert.equal(params.test, undefined);
  const logs = prov.runDetails.byproducts!;
  assert.deepEqual(
    logs.map((l) => l.name),
    ["patch-1.log", "patch-2.log", "step-1.log"],
  );
  assert.match(logs[0]!.annotations!.step!, /^patch -p1 --forward --batch .*-i \.\.\/patches\/1\.patch$/);
  assert.match((await store.read(`sha256:${logs[1]!.digest.sha256}`)).toString("utf8"), /patching file greeting\.txt/);
});

test("a patch whose sha256 is not the pinned one is refused before anything runs", async () => {
  const ctx = ctxFor("wrong-digest");
  const wrong = "ab".repeat(32);
  const err = await failure(build(request("wrong-digest", { patches: [first, { ...second, sha256: wrong }] }), ctx));
  assert.match(err.message, new RegExp(`^patch ${second.url}: sha256 mismatch: expected sha256:${wrong}, got sha256:${second.sha256}$`));
  assert.equal(err.stepLogs, undefined, "no patch was applied and no step ran");
  // Only the verified source and the verified first patch are stored; the workspace is gone.
  const blobs = await readdir(path.join(new ArtifactStore(ctx.dataDir).root, "blobs", "sha256"));
  assert.deepEqual(blobs.sort(), [source.sha256, first.sha256].sort());
  assert.deepEqual(await readdir(path.join(ctx.dataDir, "work")), []);
});

test("a patch that does not apply fails the build, naming the patch, with patch's output", async () => {
  const ctx = ctxFor("stale");
  const err = await failure(build(request("stale", { patches: [first, stale] }), ctx));
  assert.match(
    err.message,
    /^patch 2 of 2 \(stale\.patch\) does not apply to greet@1\.0: patch exited with code 1\n\$ patch -p1 .*\n[\s\S]*Hunk #1 FAILED at 1\./,
  );
  assert.match(err.message, /\nfull step logs in the artifact store: patch-1\.log sha256:[0-9a-f]{64}, patch-2\.log sha256:[0-9a-f]{64}$/);
  assert.equal(err.exitCode, 1);
  assert.deepEqual(
    err.stepLogs?.map((l) => l.exitCode),
    [0, 1],
    "the steps never ran",
  );
  assert.deepEqual(await archives(ctx), []);

  // --forward: a patch applied twice is refused, not silently reversed.
  const twice = await failure(build(request("twice", { patches: [first, first] }), ctx));
  assert.match(twice.message, /^patch 2 of 2 \(1-patched\.patch\) does not apply[\s\S]*previously applied/);
  assert.deepEqual(await archives(ctx), []);
});

test("the test command runs after the steps in the same workspace; a failing one fails the build with its log", async () => {
  const ctx = ctxFor("tested");
  const check = "grep -qx 'hello, patched' $DESTDIR/usr/share/greet/greeting.txt && test -f greeting.txt";
  const ok = await build(request("test-passes", { patches: [first], test: check }), ctx);
  const store = new ArtifactStore(ctx.dataDir);
  const prov = JSON.parse((await store.read(ok.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.equal((prov.buildDefinition.externalParameters as PackageExternalParameters).test, check);
  const logs = prov.runDetails.byproducts!;
  assert.deepEqual(
    logs.map((l) => [l.name, l.annotations?.step, l.annotations?.exitCode]),
    [
      ["patch-1.log", logs[0]!.annotations?.step, "0"],
      ["step-1.log", INSTALL, "0"],
      ["test.log", check, "0"],
    ],
  );

  // Unpatched, the same check fails.
  const err = await failure(build(request("test-fails", { test: `${check} || { echo 'greeting is not patched' >&2; exit 3; }` }), ctx));
  assert.match(err.message, /^test \(grep .*\) exited with code 3\n\$ grep .*\ngreeting is not patched\n/);
  const m = /\nfull step logs in the artifact store: step-1\.log sha256:[0-9a-f]{64}, test\.log (sha256:[0-9a-f]{64})$/.exec(err.message);
  assert.ok(m, err.message);
  assert.match((await store.read(m[1] as Digest)).toString("utf8"), /greeting is not patched\n$/);
  assert.equal(err.exitCode, 3);
  assert.deepEqual(
    (await archives(ctx)).map((hex) => `sha256:${hex}`),
    [ok.archive],
    "only the passing build's archive",
  );

  // The test runs under the build's time limit.
  const slow = await failure(build(request("test-slow", { test: "sleep 30" }), { ...ctx, timeoutMs: 1500 }));
  assert.match(slow.message, /^test \(sleep 30\) timed out after 1500 ms/);
});

test("a step that fails on a full disk is the machine's failure, retried; any other failing step is the inputs'", async () => {
  const ctx = ctxFor("full-disk");
  const permanent = (e: unknown) => e instanceof BuildFailure;
  // /dev/full answers every write with ENOSPC, as a full file system does.
  const full = await failure(build(request("full-disk", { steps: ["cp greeting.txt /dev/full"] }), ctx));
  assert.match(full.message, /No space left on device/);
  assert.deepEqual(classifyFailure(full, { permanent }).kind, "transient");
  assert.match(classifyFailure(full, { permanent }).reason, /^ENOSPC: /);
  const other = await failure(build(request("step-fails", { steps: ["echo 'no such thing' >&2; exit 1"] }), ctx));
  assert.equal(classifyFailure(other, { permanent }).kind, "permanent");
});
