import { spawn } from "node:child_process";
import { mkdtemp, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { sha256Digest } from "@homeostat/core/digest";
import { blobDescriptor, HOLDS_ANNOTATION_PREFIX, indexBytes, manifestBytes, mediaTypes, OciLayout, REF_NAME } from "./oci.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-oci-"));
after(() => rm(tmp, { recursive: true, force: true }));

test("open creates the layout; blobs are content-addressed and idempotent", async () => {
  const dir = path.join(tmp, "basic");
  const layout = await OciLayout.open(dir);
  assert.deepEqual(JSON.parse(await readFile(path.join(dir, "oci-layout"), "utf8")), { imageLayoutVersion: "1.0.0" });
  assert.deepEqual(JSON.parse(await readFile(path.join(dir, "index.json"), "utf8")), { schemaVersion: 2, mediaType: mediaTypes.index, manifests: [] });
  const d1 = await layout.writeBlob("hello", "text/plain", { a: "b" });
  const d2 = await layout.writeBlob(Buffer.from("hello"), "text/plain");
  assert.equal(d1.digest, sha256Digest("hello"));
  assert.equal(d1.size, 5);
  assert.deepEqual(d1.annotations, { a: "b" });
  assert.equal(d2.digest, d1.digest);
  // What a blob's descriptor will be is known before it is written.
  assert.deepEqual(blobDescriptor("hello", "text/plain", { a: "b" }), d1);
  assert.deepEqual(blobDescriptor(Buffer.from("hello"), "text/plain", {}), d2);
  assert.equal((await layout.readBlob(d1.digest)).toString(), "hello");
  // A corrupted copy of the same size is replaced by the next write of the blob.
  await writeFile(layout.blobPath(d1.digest), "jello");
  await layout.writeBlob("hello", "text/plain");
  assert.equal((await layout.readBlob(d1.digest)).toString(), "hello");
  assert.deepEqual(await readdir(path.join(dir, "blobs", "sha256")), [d1.digest.slice(7)]);
  assert.throws(() => layout.blobPath("sha256:../../etc/passwd" as `sha256:${string}`), /not a sha256 digest/);
  // reopening keeps what is there
  await OciLayout.open(dir);
  assert.equal((await (await OciLayout.open(dir)).readBlob(d1.digest)).toString(), "hello");
});

test("importBlob verifies the digest, then links or copies; a blob the layout holds is not read again", async () => {
  const layout = await OciLayout.open(path.join(tmp, "import"));
  const file = path.join(tmp, "blob.bin");
  await writeFile(file, "layer bytes");
  const d = await layout.importBlob(file, sha256Digest("layer bytes"), mediaTypes.layerGzip);
  assert.equal(d.size, 11);
  assert.equal((await layout.readBlob(d.digest)).toString(), "layer bytes");
  await assert.rejects(layout.importBlob(file, sha256Digest("something else"), mediaTypes.layerGzip), /hashes to/);
  // Already there at that size: the source is not hashed (the caller verified it), nothing is linked again.
  const other = path.join(tmp, "blob-again.bin");
  await writeFile(other, "LAYER BYTES");
  assert.deepEqual(await layout.importBlob(other, d.digest, mediaTypes.layerGzip), d);
  assert.equal((await layout.readBlob(d.digest)).toString(), "layer bytes");
});

test("tag replaces, resolves, keeps a content-determined order; manifests are canonical", async () => {
  const layout = await OciLayout.open(path.join(tmp, "tags"));
  const config = await layout.writeBlob("{}", mediaTypes.config);
  const m1 = await layout.writeBlob(manifestBytes({ config, layers: [], annotations: { z: "1", a: "2" } }), mediaTypes.manifest);
  const m2 = await layout.writeBlob(manifestBytes({ config, layers: [config] }), mediaTypes.manifest);
  assert.equal(
    (await layout.readBlob(m1.digest)).toString(),
    `{"schemaVersion":2,"mediaType":"${mediaTypes.manifest}","config":{"mediaType":"${mediaTypes.config}","digest":"${config.digest}","size":2},"layers":[],"annotations":{"a":"2","z":"1"}}`,
  );
  await layout.tag("2.0", m2);
  await layout.tag("1.0", m1);
  await layout.tag("1.0", m2);
  assert.equal((await layout.resolve("1.0"))?.digest, m2.digest);
  assert.equal((await layout.resolve("1.0"))?.annotations?.[REF_NAME], "1.0");
  assert.equal(await layout.resolve("3.0"), undefined);
  assert.deepEqual(await layout.tags(), ["1.0", "2.0"]);
  assert.equal(await layout.untag("2.0"), true);
  assert.deepEqual(await layout.tags(), ["1.0"]);
  const other = await OciLayout.open(path.join(tmp, "tags2"));
  await other.writeBlob("{}", mediaTypes.config);
  await other.writeBlob(manifestBytes({ config, layers: [config] }), mediaTypes.manifest);
  await other.tag("1.0", m2);
  assert.equal(await readFile(path.join(tmp, "tags2", "index.json"), "utf8"), await readFile(path.join(tmp, "tags", "index.json"), "utf8"));
});

test("index: a replaced index.json is read again, even at the same size; what it returns cannot be changed", async () => {
  const dir = path.join(tmp, "replaced");
  const layout = await OciLayout.open(dir);
  const d = await layout.writeBlob(manifestBytes({ config: await layout.writeBlob("{}", mediaTypes.config), layers: [] }), mediaTypes.manifest);
  await layout.tag("v1", d);
  assert.deepEqual(await layout.tags(), ["v1"]);
  // Another process's write, as every writer makes it: a whole new file renamed over the old one.
  const text = await readFile(path.join(dir, "index.json"), "utf8");
  for (const next of ["v2", "v3"]) {
    await writeFile(path.join(dir, "index.json.new"), text.replace('"v1"', `"${next}"`));
    await rename(path.join(dir, "index.json.new"), path.join(dir, "index.json"));
    assert.deepEqual(await layout.tags(), [next]);
    assert.deepEqual(await (await OciLayout.open(dir)).tags(), [next]);
  }
  const ix = await layout.index();
  assert.throws(() => ix.manifests.push(d), TypeError);
  assert.throws(() => {
    ix.manifests[0]!.annotations![REF_NAME] = "changed";
  }, TypeError);
  await layout.tag("v4", d);
  assert.deepEqual(await layout.tags(), ["v3", "v4"]);
});

test("two processes tagging the same layout at once lose no tag", async () => {
  const dir = path.join(tmp, "race");
  const layout = await OciLayout.open(dir);
  const d = await layout.writeBlob("{}", mediaTypes.config);
  const script = path.join(path.dirname(fileURLToPath(import.meta.url)), "oci.ts");
  const child = (who: string) =>
    new Promise<void>((resolve, reject) => {
      const code = `const { OciLayout } = await import(${JSON.stringify(script)}); const l = await OciLayout.open(${JSON.stringify(dir)});
        await Promise.all(Array.from({ length: 25 }, (_, i) => l.tag("${who}-" + i, ${JSON.stringify(d)})));`;
      const p = spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: "inherit" });
      p.on("exit", (c) => (c === 0 ? resolve() : reject(new Error(`${who} exited ${c}`))));
    });
  await Promise.all([child("builder"), child("signer")]);
  const tags = await layout.tags();
  assert.equal(tags.length, 50);
  assert.deepEqual(tags, [...tags].sort());
  assert.deepEqual(await readdir(dir), ["blobs", "index.json", "oci-layout"]);
});

test("tag refuses an entry that holds a missing blob; tagged again at the same digest, an entry keeps its annotations", async () => {
  const layout = await OciLayout.open(path.join(tmp, "holds"));
  const config = await layout.writeBlob("{}", mediaTypes.config);
  const layer = blobDescriptor("never written", mediaTypes.layerGzip);
  const m = await layout.writeBlob(manifestBytes({ config, layers: [layer] }), mediaTypes.manifest);
  await assert.rejects(layout.tag("1.0", m), new RegExp(`cannot tag 1.0 in .*: it holds ${layer.digest}, which the layout does not`));
  await layout.writeBlob("never written", mediaTypes.layerGzip);
  const sbom = blobDescriptor("an SBOM", mediaTypes.cyclonedx);
  const holdsSbom = { ...m, annotations: { [`${HOLDS_ANNOTATION_PREFIX}sbom`]: sbom.digest } };
  await assert.rejects(layout.tag("1.0", holdsSbom), /it holds sha256:/);
  assert.deepEqual(await layout.tags(), []);
  await layout.writeBlob("an SBOM", mediaTypes.cyclonedx);
  await layout.tag("1.0", holdsSbom);
  await layout.tag("1.0", m);
  assert.equal((await layout.resolve("1.0"))?.annotations?.[`${HOLDS_ANNOTATION_PREFIX}sbom`], sbom.digest);
  // At another digest the entry is the new descriptor alone.
  const m2 = await layout.writeBlob(manifestBytes({ config, layers: [] }), mediaTypes.manifest);
  await layout.tag("1.0", m2);
  assert.deepEqual((await layout.resolve("1.0"))?.annotations, { [REF_NAME]: "1.0" });
});

test("collect drops what the edit drops, then every blob and temporary file nothing held that is older than the grace", async () => {
  const dir = path.join(tmp, "collect");
  const layout = await OciLayout.open(dir);
  const config = await layout.writeBlob("{}", mediaTypes.config);
  const shared = await layout.writeBlob("shared layer", mediaTypes.layerGzip);
  const own = await layout.writeBlob("own layer", mediaTypes.layerGzip);
  const kept = await layout.writeBlob(manifestBytes({ config, layers: [shared] }), mediaTypes.manifest);
  const dropped = await layout.writeBlob(manifestBytes({ config, layers: [shared, own] }), mediaTypes.manifest);
  // An index naming the kept manifest holds it too; the dropped one's only holder is its tag.
  const index = await layout.writeBlob(indexBytes({ manifests: [kept] }), mediaTypes.index);
  await layout.tag("kept", index);
  await layout.tag("dropped", dropped);
  const leftover = path.join(dir, "blobs", "sha256", ".abc.123.tmp");
  await writeFile(leftover, "a crashed writer's");
  const untouched = await layout.collect((ix) => ix, { graceMs: 0 });
  assert.deepEqual(untouched, { tags: [], blobs: 0, bytes: 0 }, "nothing dropped, nothing swept");
  const young = await layout.collect((ix) => ({ manifests: ix.manifests.filter((m) => m.annotations?.[REF_NAME] !== "dropped") }), { graceMs: 60_000 });
  assert.deepEqual(young, { tags: ["dropped"], blobs: 0, bytes: 0 }, "every unheld blob is younger than the grace");
  assert.deepEqual(await layout.tags(), ["kept"]);
  await layout.tag("again", dropped);
  const swept = await layout.collect((ix) => ({ manifests: ix.manifests.filter((m) => m.annotations?.[REF_NAME] !== "again") }), { graceMs: 0 });
  assert.equal(swept.blobs, 2);
  assert.equal(swept.bytes, dropped.size + own.size + "a crashed writer's".length);
  const left = await readdir(path.join(dir, "blobs", "sha256"));
  assert.deepEqual(left.sort(), [config, shared, kept, index].map((d) => d.digest.slice(7)).sort());

  // Sweeps at most every sweepEveryMs: a drop before that leaves its blobs to a later one.
  const again = async (now: number) => {
    await layout.writeBlob("own layer", mediaTypes.layerGzip);
    await layout.writeBlob(manifestBytes({ config, layers: [shared, own] }), mediaTypes.manifest);
    await layout.tag("again", dropped);
    return layout.collect((ix) => ({ manifests: ix.manifests.filter((m) => m.annotations?.[REF_NAME] !== "again") }), {
      graceMs: 0,
      sweepEveryMs: 60_000,
      now,
    });
  };
  const t0 = Date.now() + 60_000;
  assert.equal((await again(t0)).blobs, 2, "a minute after the sweep above");
  assert.deepEqual(await again(t0 + 59_000), { tags: ["again"], blobs: 0, bytes: 0 });
  assert.equal((await again(t0 + 60_000)).blobs, 2);
});

test("collect sweeps an empty index every time: blobs a writer left without a tag go once past the grace", async () => {
  const layout = await OciLayout.open(path.join(tmp, "collect-empty"));
  const untagged = await layout.writeBlob("a layer no tag holds", mediaTypes.layerGzip);
  assert.deepEqual(await layout.collect((ix) => ix, { graceMs: 60_000 }), { tags: [], blobs: 0, bytes: 0 }, "younger than the grace");
  assert.deepEqual(await layout.collect((ix) => ix, { graceMs: 0 }), { tags: [], blobs: 1, bytes: untagged.size });
  assert.deepEqual(await readdir(path.join(layout.dir, "blobs", "sha256")), []);
});
