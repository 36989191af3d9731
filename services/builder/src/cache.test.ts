/**
 * The build cache and the concurrency limit, through `Builder`: whether the steps ran is seen
 * from their own side effect (a line appended to a file outside the workspace, so these
 * builds run unisolated).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readFile, rm, stat, unlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { type ImageBuildPlan, type PackageBuildPlan } from "@homeostat/catalog";
import { sha256Digest, type Digest } from "@homeostat/core/digest";
import { OciLayout } from "@homeostat/attest";
import { Builder, type BuildContext } from "./build.ts";
import { ArtifactStore } from "./store.ts";
import { collectStore } from "./store-collect.ts";
import { buildContext, CATALOG_REVISION, packagePlan, unsandboxed } from "./test-support.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-cache-"));
// The steps count their runs in a file outside the workspace: unsandboxed, explicitly.
const isolation = await unsandboxed();
after(() => rm(tmp, { recursive: true, force: true }));

const srcDir = path.join(tmp, "sources");
await mkdir(path.join(srcDir, "data-1.0"), { recursive: true });
await writeFile(path.join(srcDir, "data-1.0", "data.txt"), "data\n");
const tarball = path.join(srcDir, "data-1.0.tar.gz");
execFileSync("tar", ["-czf", tarball, "-C", srcDir, "data-1.0"]);
const sha256 = createHash("sha256")
  .update(await readFile(tarball))
  .digest("hex");

function ctx(dataDir: string): BuildContext {
  return buildContext(
    { dataDir: path.join(tmp, dataDir), timeoutMs: 30_000, isolation, sourceBaseDir: srcDir },
    { unpackLimits: { maxBytes: 1 << 20, maxEntries: 100 } },
  );
}

/** A package whose first step appends a line to `runs` (outside the workspace). */
function pkg(name: string, runs: string, extraStep = "true"): PackageBuildPlan {
  return packagePlan(name, {
    inputDigest: sha256Digest(`${name}:${extraStep}`),
    sourceDateEpoch: 0,
    source: { url: path.basename(tarball), sha256 },
    steps: [`echo ran >> ${runs}`, extraStep, "mkdir -p $DESTDIR/usr/share && cp data.txt $DESTDIR/usr/share/"],
  });
}

const lines = async (f: string): Promise<string[]> => (await readFile(f, "utf8").catch(() => "")).split("\n").filter((l) => l !== "");

test("the same inputs are built once: later requests, a restarted builder and concurrent requests get the stored result", async () => {
  const runs = path.join(tmp, "runs-same");
  const c = ctx("data-same");
  const builder = new Builder(c, { concurrency: 2 });
  const req = pkg("data", runs);

  const first = await builder.build(req);
  assert.equal(first.cached, false);
  assert.equal((await lines(runs)).length, 1);

  const second = await builder.build(req);
  assert.equal(second.cached, true);
  assert.deepEqual(second.outputs, first.outputs);
  const restarted = await new Builder(c, { concurrency: 1 }).build(req);
  assert.equal(restarted.cached, true);
  assert.deepEqual(restarted.outputs, first.outputs);
  assert.equal((await lines(runs)).length, 1, "the steps ran again");

  // Different inputs (another step) build; two concurrent requests for them build once.
  const changed = pkg("data", runs, "echo changed");
  const [a, b] = await Promise.all([builder.build(changed), builder.build(changed)]);
  assert.deepEqual([a.cached, b.cached], [false, true]);
  assert.deepEqual(a.outputs, b.outputs);
  assert.equal((await lines(runs)).length, 2);

  // A result whose artifacts are gone is not trusted: it is rebuilt (to the same bytes).
  await unlink(new ArtifactStore(c.dataDir).path(first.outputs.archive as Digest));
  const rebuilt = await builder.build(req);
  assert.equal(rebuilt.cached, false);
  assert.equal(rebuilt.outputs.archive, first.outputs.archive);
  assert.equal((await lines(runs)).length, 3);

  // The same digest under another key is not that key's result.
  const other = await builder.build({ ...req, key: "package/other", name: "other" });
  assert.equal(other.cached, false);
  assert.equal((await lines(runs)).length, 4);
});

test("a cached result that answers is young again, so that the store's collection keeps what a build took from the cache", async () => {
  const c = ctx("data-touch");
  const builder = new Builder(c, { concurrency: 1 });
  const req = pkg("data", path.join(tmp, "runs-touch"));
  const { outputs } = await builder.build(req);
  const store = new ArtifactStore(c.dataDir);
  const files = [
    path.join(store.root, "results", `${req.inputDigest.slice("sha256:".length)}.json`),
    ...[outputs.archive, outputs.metadata, outputs.provenance].map((d) => store.path(d as Digest)),
  ];
  const dayAgo = new Date(Date.now() - 86_400_000);
  for (const f of files) await utimes(f, dayAgo, dayAgo);
  assert.equal((await builder.build(req)).cached, true);
  for (const f of files) assert.ok((await stat(f)).mtimeMs > Date.now() - 60_000, `${path.basename(f)} touched`);
  assert.equal((await collectStore(c.dataDir, [], { graceMs: 3_600_000 })).removed, 0);
});

test("an image is cached too, and rebuilt when its tag no longer points at the stored manifest", async () => {
  const c = ctx("data-image");
  const builder = new Builder(c, { concurrency: 1 });
  // An image must be able to start its entrypoint: a static program (libc6-dev's libc.a).
  const program = 'printf "int main(void) { return 0; }\\n" > true.c && mkdir -p $DESTDIR/usr/bin && cc -O2 -static -o $DESTDIR/usr/bin/true true.c';
  const p = (await builder.build(pkg("data", path.join(tmp, "runs-image"), program))).outputs;
  const image: ImageBuildPlan = {
    catalogRevision: CATALOG_REVISION,
    kind: "image",
    key: "image/img",
    name: "img",
    version: "1.0",
    inputDigest: sha256Digest("img"),
    sourceDateEpoch: 0,
    packages: [{ name: "data", version: "1.0", archive: p.archive!, diffId: p.diffId!, size: p.size! }],
    config: { entrypoint: ["/usr/bin/true"], cmd: [], env: {}, user: "65532", workdir: "", annotations: {} },
  };
  const first = await builder.build(image);
  assert.equal(first.cached, false);
  const second = await builder.build(image);
  assert.equal(second.cached, true);
  assert.equal(second.outputs.manifest, first.outputs.manifest);
  assert.ok(await (await OciLayout.open(path.join(c.dataDir, "oci", "img"))).untag("1.0"));
  const third = await builder.build(image);
  assert.equal(third.cached, false);
  assert.equal(third.outputs.manifest, first.outputs.manifest);
});

test("at most `concurrency` builds run at once", async () => {
  const running = path.join(tmp, "running");
  const peaks = path.join(tmp, "peaks");
  await mkdir(running);
  // Each build marks itself running, records how many are, holds a while, and unmarks.
  const step = `touch ${running}/$$; ls ${running} | wc -l >> ${peaks}; sleep 0.4; rm ${running}/$$`;
  const builder = new Builder(ctx("data-limit"), { concurrency: 2 });
  const results = await Promise.all(Array.from({ length: 5 }, (_, i) => builder.build(pkg(`p${i}`, path.join(tmp, "runs-limit"), step))));
  assert.ok(results.every((r) => !r.cached));
  const seen = (await lines(peaks)).map(Number);
  assert.equal(seen.length, 5);
  assert.equal(Math.max(...seen), 2, `concurrent builds seen: ${seen.join(",")}`);
  assert.throws(() => new Builder(ctx("data-limit"), { concurrency: 0 }), /positive integer/);
});
