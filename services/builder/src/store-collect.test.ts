/**
 * The store's collection on a real store directory: what a key's status names (and what that
 * names in turn: metadata → source, provenance → logs, the cache record of inputs being built)
 * stays, as does anything younger than the grace; older builds' outputs, their cache records
 * and a crash's temporary files go. The trials' image layouts, which no status names, go once idle
 * for the grace.
 */
import { mkdir, mkdtemp, readdir, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type { Digest } from "@homeostat/core/digest";
import type { KeyStatus } from "@homeostat/core/status";
import { setTimeout as sleep } from "node:timers/promises";
import { manifestBytes, mediaTypes, OciLayout } from "@homeostat/attest";
import { claimStore, collectStore, collectUnnamedLayouts, type NamesRead } from "./store-collect.ts";
import { ArtifactStore, hexOfDigest } from "./store.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-store-collect-"));
after(() => rm(tmp, { recursive: true, force: true }));

const hour = 3_600_000;
const inputs = (n: number): Digest => `sha256:${n.toString(16).padStart(64, "0")}`;

/** A package build's blobs as package-build.ts writes them: the archive, its metadata naming the source (bare hex), its provenance naming the step log. */
async function packageBuild(store: ArtifactStore, version: string) {
  const source = await store.putBytes(`source of ${version}`);
  const log = await store.putBytes(`$ make\nbuilt ${version}\n`);
  const archive = await store.putBytes(gzipSync(`files of ${version}`));
  const metadata = await store.putBytes(JSON.stringify({ v: 1, version, source: { sha256: hexOfDigest(source.digest) }, archive: archive.digest }));
  const provenance = await store.putBytes(
    JSON.stringify({ runDetails: { byproducts: [{ name: "step-1.log", digest: { sha256: hexOfDigest(log.digest) } }] } }),
  );
  return {
    source,
    log,
    archive,
    metadata,
    provenance,
    outputs: { archive: archive.digest, metadata: metadata.digest, provenance: provenance.digest, location: archive.path },
  };
}

async function cacheRecord(dataDir: string, inputDigest: Digest, outputs: object): Promise<string> {
  const dir = path.join(dataDir, "store", "results");
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, `${hexOfDigest(inputDigest)}.json`);
  await writeFile(file, JSON.stringify({ v: 1, key: "package/app", kind: "package", inputDigest, outputs }));
  return file;
}

async function files(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [])).sort();
}

async function ageAll(dataDir: string, by: number): Promise<void> {
  const at = new Date(Date.now() - by);
  for (const dir of ["blobs/sha256", "results", "tmp"].map((d) => path.join(dataDir, "store", d)))
    for (const f of await files(dir)) await utimes(path.join(dir, f), at, at);
}

test("a collection keeps what the statuses name and what that names, and removes older builds, their records and stale temporary files", async () => {
  const dataDir = path.join(tmp, "kept-and-removed");
  const store = new ArtifactStore(dataDir);
  const old = await packageBuild(store, "1.0");
  const current = await packageBuild(store, "1.1");
  const signature = await store.putBytes("MEUCIQ...signature of 1.1");
  const failureLog = await store.putBytes("$ make\nerror: 1.2 does not build\n");
  // Inputs being built for 1.2: their record (answered from the cache on a retry) keeps what it names.
  const pending = await packageBuild(store, "1.2");
  await cacheRecord(dataDir, inputs(1), old.outputs);
  await cacheRecord(dataDir, inputs(2), current.outputs);
  await cacheRecord(dataDir, inputs(3), pending.outputs);
  await mkdir(path.join(store.root, "tmp"), { recursive: true });
  await writeFile(path.join(store.root, "tmp", "4242.0123456789abcdef"), "a put a crash interrupted");
  const status: KeyStatus = {
    key: "package/app",
    phase: "Failed",
    desiredVersion: "1.2",
    desiredInputDigest: inputs(3),
    actual: {
      version: "1.1",
      inputDigest: inputs(2),
      outputs: current.outputs,
      signatures: { archive: signature.digest },
      keyId: "k",
      builtAt: "2026-11-28T00:00:00Z",
    },
    attempts: 1,
    lastError: `step 1 failed\nfull step logs in the artifact store: step-1.log ${failureLog.digest}`,
    // The history names 1.0's inputs: it keeps nothing.
    builds: [{ version: "1.0", inputDigest: inputs(1), outcome: "succeeded", at: "2026-11-27T00:00:00Z" }],
    updatedAt: "2026-11-28T00:00:00Z",
  };
  await ageAll(dataDir, 2 * hour);
  // Written just now and named by nothing yet: a build's blob before its result is signed.
  const young = await store.putBytes("written a moment ago");
  const blobsBefore = await files(path.join(store.root, "blobs", "sha256"));

  const namesRead: NamesRead = new Map();
  const collected = await collectStore(dataDir, [status], { graceMs: hour, namesRead });

  const hex = (d: { digest: Digest }) => hexOfDigest(d.digest);
  const kept = [current, pending].flatMap((b) => [b.source, b.log, b.archive, b.metadata, b.provenance].map(hex));
  assert.deepEqual(await files(path.join(store.root, "blobs", "sha256")), [...kept, hex(signature), hex(failureLog), hex(young)].sort());
  assert.deepEqual(await files(path.join(store.root, "results")), [inputs(2), inputs(3)].map((d) => `${hexOfDigest(d)}.json`).sort());
  assert.deepEqual(await files(path.join(store.root, "tmp")), []);
  const removedBlobs = blobsBefore.length - kept.length - 3;
  assert.equal(removedBlobs, 5, "1.0's source, log, archive, metadata and provenance");
  assert.equal(collected.removed, removedBlobs + 2, "and 1.0's cache record and the temporary file");
  assert.equal(collected.young, 1);
  assert.equal(collected.live, kept.length + 2 + 2);
  assert.ok(collected.removedBytes > 0);
  assert.ok(namesRead.has(hex(current.metadata)) && !namesRead.has(hex(old.metadata)), "what JSON blobs name is remembered for the blobs kept only");

  // Nothing names the rest any more: once past the grace, everything goes.
  await ageAll(dataDir, 2 * hour);
  const again = await collectStore(dataDir, [], { graceMs: hour, namesRead });
  assert.equal(again.removed, kept.length + 3 + 2);
  assert.deepEqual(await files(path.join(store.root, "blobs", "sha256")), []);
  assert.deepEqual(await files(path.join(store.root, "results")), []);
});

test("within the grace nothing goes, named or not", async () => {
  const dataDir = path.join(tmp, "young");
  const store = new ArtifactStore(dataDir);
  const build = await packageBuild(store, "2.0");
  await cacheRecord(dataDir, inputs(7), build.outputs);
  const collected = await collectStore(dataDir, [], { graceMs: hour });
  assert.equal(collected.removed, 0);
  assert.equal(collected.young, 6);
  assert.ok((await stat(build.archive.path)).isFile());
});

test("a store that was never written is collected without error", async () => {
  assert.deepEqual(await collectStore(path.join(tmp, "never"), [], { graceMs: hour }), { live: 0, removed: 0, removedBytes: 0, young: 0 });
});

test("a store is collected by one factory's builders: the first to claim it, by its state bucket", async () => {
  const dataDir = path.join(tmp, "claimed");
  const claims = await Promise.all(["a_state", "b_state", "a_state", "b_state"].map((b) => claimStore(dataDir, b)));
  assert.equal(new Set(claims).size, 1, `every claimant agrees on one collector: ${claims.join(", ")}`);
  assert.equal(await claimStore(dataDir, "c_state"), claims[0], "a later claimant is told who collects");
  assert.deepEqual(await files(path.join(dataDir, "store")), ["collector"], "no temporary file left");
});

test("a trial image layout no trial has tagged in for the grace loses its tags and blobs; one tagged since keeps them", async () => {
  const trials = path.join(tmp, "trials-images");
  const image = async (name: string) => {
    const layout = await OciLayout.open(path.join(trials, "oci", name));
    const config = await layout.writeBlob("{}", mediaTypes.config);
    const layer = await layout.writeBlob(gzipSync(`files of ${name}`), mediaTypes.layerGzip);
    await layout.tag("1.0.0", await layout.writeBlob(manifestBytes({ config, layers: [layer] }), mediaTypes.manifest));
    return layout;
  };
  const blobs = (layout: OciLayout) => files(path.join(layout.dir, "blobs", "sha256"));
  const idle = await image("idle");
  const graceMs = 300;
  await sleep(graceMs + 100);
  const busy = await image("busy");
  const c = await collectUnnamedLayouts(trials, { graceMs });
  assert.deepEqual({ layouts: c.layouts, tags: c.tags, blobs: c.blobs }, { layouts: 1, tags: 1, blobs: 3 });
  assert.deepEqual(await idle.tags(), []);
  assert.deepEqual(await blobs(idle), []);
  assert.deepEqual(await busy.tags(), ["1.0.0"]);
  assert.equal((await blobs(busy)).length, 3);
  assert.deepEqual(await collectUnnamedLayouts(path.join(tmp, "no-trials-yet"), { graceMs }), { layouts: 0, tags: 0, blobs: 0, bytes: 0 });
});
