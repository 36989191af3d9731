/**
 * End-to-end signing tests: real OCI layouts and store blobs, signed through `sign`, checked
 * independently with openssl and by verify.ts, then tampered with in each way that must fail.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { canonicalJson, sha256Digest, type Digest } from "@homeostat/core/digest";
import {
  mediaTypes,
  OciLayout,
  referrersTag,
  SIGNATURE_ANNOTATION,
  signatureTag,
  signImage,
  SIMPLE_SIGNING_MEDIA_TYPE,
  storeBlobPath,
  VerificationError,
  verifyBlobSignature,
  type VerifyFailure,
  verifyImage,
  verifyLayoutImages,
  verifyStoreBlob,
  versionHolds,
  writeStoreBlob,
} from "@homeostat/attest";
import { type ManagedKeyProvider, managedKeyProvider } from "@homeostat/key-custody";
import { keepRecentVersions, sign, SignRequestError, type VerifiedBuild } from "./sign.ts";

const REPO = "registry.example/homeostat";
const INPUT = `sha256:${"ab".repeat(32)}` as const;

async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "hs-signer-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(args: string[], cwd: string): { status: number | null; out: string } {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** `openssl dgst -sha256 -verify <pub> -signature <sig.der> <data>`, the base64 decoded by openssl too. */
async function opensslVerify(dir: string, pubPath: string, sigBase64: string, data: Uint8Array): Promise<{ status: number | null; out: string }> {
  await writeFile(path.join(dir, "sig.b64"), sigBase64);
  const dec = openssl(["base64", "-d", "-A", "-in", "sig.b64", "-out", "sig.der"], dir);
  assert.equal(dec.status, 0, dec.out);
  await writeFile(path.join(dir, "payload.json"), data);
  return openssl(["dgst", "-sha256", "-verify", pubPath, "-signature", "sig.der", "payload.json"], dir);
}

/** A small but real image: config + one gzip layer + manifest, tagged. */
async function makeImage(layoutDir: string, tag: string, content: string): Promise<Digest> {
  const layout = await OciLayout.open(layoutDir);
  const layerBytes = Buffer.from(`layer ${content}`);
  const layer = await layout.writeBlob(layerBytes, mediaTypes.layerGzip);
  const config = await layout.writeBlob(
    canonicalJson({ architecture: "amd64", os: "linux", config: {}, rootfs: { type: "layers", diff_ids: [sha256Digest(layerBytes)] } }),
    mediaTypes.config,
  );
  const manifest = await layout.writeBlob(
    canonicalJson({
      schemaVersion: 2,
      mediaType: mediaTypes.manifest,
      config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
      layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size }],
    }),
    mediaTypes.manifest,
  );
  await layout.tag(tag, manifest);
  return manifest.digest;
}

function imageRequest(location: string, manifest: Digest | undefined, version = "1.0"): VerifiedBuild {
  return {
    key: "image/demo",
    kind: "image",
    name: "demo",
    version,
    inputDigest: INPUT,
    outputs: manifest === undefined ? { location } : { manifest, location },
  };
}

type SigManifest = { config: { digest: Digest }; layers: { mediaType: string; digest: Digest; annotations: Record<string, string> }[] };

async function readSignature(layoutDir: string, manifest: Digest): Promise<{ digest: Digest; m: SigManifest; payload: Buffer; sig: string }> {
  const layout = await OciLayout.open(layoutDir);
  const d = await layout.resolve(signatureTag(manifest));
  assert.ok(d, "signature tag present");
  const m = JSON.parse((await layout.readBlob(d.digest)).toString("utf8")) as SigManifest;
  const layer = m.layers[0]!;
  return { digest: d.digest, m, payload: await layout.readBlob(layer.digest), sig: layer.annotations[SIGNATURE_ANNOTATION]! };
}

async function rejectsWith(p: Promise<unknown> | (() => unknown), reason: VerifyFailure, message?: RegExp): Promise<void> {
  await assert.rejects(
    async () => (typeof p === "function" ? p() : p),
    (e: unknown) => {
      assert.ok(e instanceof VerificationError, `expected VerificationError, got ${String(e)}`);
      assert.equal(e.reason, reason, e.message);
      if (message) assert.match(e.message, message);
      return true;
    },
  );
}

async function setup(t: {
  after(fn: () => Promise<void>): void;
}): Promise<{ dir: string; dataDir: string; layoutDir: string; key: ManagedKeyProvider; pubPath: string }> {
  const dir = await tempDir(t);
  const dataDir = path.join(dir, "data");
  const key = await managedKeyProvider({ dir: path.join(dataDir, "signer"), name: "cosign" });
  return { dir, dataDir, layoutDir: path.join(dataDir, "images", "demo"), key, pubPath: key.publicKeyPath! };
}

test("an image is signed cosign-style in its layout, and openssl and verifyImage both accept it", async (t) => {
  const { dir, dataDir, layoutDir, key, pubPath } = await setup(t);
  const manifest = await makeImage(layoutDir, "1.0", "one");

  const res = await sign(imageRequest(`${layoutDir}:1.0`, manifest), { dataDir, imageRepository: `${REPO}/`, signer: key });
  assert.equal(res.keyId, key.keyId);
  assert.deepEqual(Object.keys(res.signatures), ["image"]);

  const s = await readSignature(layoutDir, manifest);
  assert.equal(res.signatures.image, s.digest);
  assert.equal(s.m.layers.length, 1);
  assert.equal(s.m.layers[0]!.mediaType, SIMPLE_SIGNING_MEDIA_TYPE);
  const raw = JSON.parse(await readFile(path.join(layoutDir, "blobs", "sha256", s.digest.slice(7)), "utf8")) as Record<string, unknown>;
  assert.equal(raw.schemaVersion, 2);
  assert.equal(raw.mediaType, "application/vnd.oci.image.manifest.v1+json");
  const cfg = JSON.parse((await (await OciLayout.open(layoutDir)).readBlob(s.m.config.digest)).toString("utf8")) as { rootfs: { diff_ids: string[] } };
  assert.deepEqual(cfg.rootfs.diff_ids, [s.m.layers[0]!.digest]);

  // The payload, byte for byte: cosign's shape, naming the manifest digest that openssl computes too.
  const manifestFileHash = openssl(["dgst", "-sha256", "-r", path.join(layoutDir, "blobs", "sha256", manifest.slice(7))], dir).out.split(" ")[0];
  assert.equal(`sha256:${manifestFileHash}`, manifest);
  assert.equal(
    s.payload.toString("utf8"),
    `{"critical":{"identity":{"docker-reference":"${REPO}/demo:1.0"},"image":{"docker-manifest-digest":"${manifest}"},` +
      `"type":"cosign container image signature"},"optional":{"creator":"homeostat","homeostat.key":"image/demo","homeostat.keyId":"${key.keyId}"}}`,
  );

  // Independent check: openssl, the public key file, the payload and the base64 DER signature.
  const ok = await opensslVerify(dir, pubPath, s.sig, s.payload);
  assert.equal(ok.status, 0, ok.out);
  assert.match(ok.out, /Verified OK/);

  const v = await verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem], reference: `${REPO}/demo:1.0` });
  assert.deepEqual(v, {
    manifest,
    signatureTag: signatureTag(manifest),
    signatureManifest: s.digest,
    payload: s.m.layers[0]!.digest,
    keyId: key.keyId,
    reference: `${REPO}/demo:1.0`,
    optional: { creator: "homeostat", "homeostat.key": "image/demo", "homeostat.keyId": key.keyId },
  });
  await rejectsWith(verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem], reference: `${REPO}/other:1.0` }), "reference-mismatch");

  // Idempotent: signing again keeps the valid signature (same digests, one tag).
  const again = await sign(imageRequest(`${layoutDir}:1.0`, manifest), { dataDir, imageRepository: REPO, signer: key });
  assert.deepEqual(again, res);
  const index = JSON.parse(await readFile(path.join(layoutDir, "index.json"), "utf8")) as { manifests: { annotations?: Record<string, string> }[] };
  const sigTags = index.manifests.filter((m) => m.annotations?.["org.opencontainers.image.ref.name"] === signatureTag(manifest));
  assert.equal(sigTags.length, 1);
});

test("a flipped payload byte fails openssl and verifyImage", async (t) => {
  const { dir, dataDir, layoutDir, key, pubPath } = await setup(t);
  const manifest = await makeImage(layoutDir, "1.0", "one");
  await sign(imageRequest(`${layoutDir}:1.0`, manifest), { dataDir, imageRepository: REPO, signer: key });
  const s = await readSignature(layoutDir, manifest);

  const flipped = Buffer.from(s.payload);
  const at = flipped.indexOf("docker-reference") + 20;
  flipped[at] = flipped[at]! ^ 0x01;
  const bad = await opensslVerify(dir, pubPath, s.sig, flipped);
  assert.notEqual(bad.status, 0, bad.out);
  assert.match(bad.out, /Verification failure/);

  // Flipped in place, the content-addressed payload no longer matches its digest.
  const payloadFile = path.join(layoutDir, "blobs", "sha256", s.m.layers[0]!.digest.slice(7));
  const original = await readFile(payloadFile);
  await writeFile(payloadFile, flipped);
  await rejectsWith(verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem] }), "corrupt", /hashes to/);
  // Signing again repairs it, although the corrupt blob has the right name and size.
  const repaired = await signImage({ layoutDir, manifest, reference: `${REPO}/demo:1.0`, signer: key, key: "image/demo" });
  assert.equal(repaired.signed, true);
  assert.deepEqual(await readFile(payloadFile), original);
  assert.equal((await verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem] })).signatureManifest, repaired.signatureManifest);

  // Re-packed consistently (new payload blob and signature manifest, old signature): the signature fails.
  const layout = await OciLayout.open(layoutDir);
  const layer = await layout.writeBlob(flipped, SIMPLE_SIGNING_MEDIA_TYPE, { [SIGNATURE_ANNOTATION]: s.sig });
  const repacked = await layout.writeBlob(
    canonicalJson({
      ...s.m,
      schemaVersion: 2,
      mediaType: mediaTypes.manifest,
      layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size, annotations: { [SIGNATURE_ANNOTATION]: s.sig } }],
    }),
    mediaTypes.manifest,
  );
  await layout.tag(signatureTag(manifest), repacked);
  await rejectsWith(verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem] }), "bad-signature");

  // A flipped signature byte fails too.
  const sigBytes = Buffer.from(s.sig, "base64");
  sigBytes[sigBytes.length - 1] = sigBytes[sigBytes.length - 1]! ^ 0x01;
  const badSig = await opensslVerify(dir, pubPath, sigBytes.toString("base64"), s.payload);
  assert.notEqual(badSig.status, 0, badSig.out);

  // Re-signing repairs the tampered tag.
  const fixed = await signImage({ layoutDir, tag: "1.0", reference: `${REPO}/demo:1.0`, signer: key, key: "image/demo" });
  assert.equal(fixed.signed, true);
  assert.equal((await verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem] })).signatureManifest, fixed.signatureManifest);
});

test("a signature for another manifest digest fails openssl and verifyImage", async (t) => {
  const { dir, dataDir, layoutDir, key, pubPath } = await setup(t);
  const a = await makeImage(layoutDir, "1.0", "one");
  const b = await makeImage(layoutDir, "2.0", "two");
  assert.notEqual(a, b);
  await sign(imageRequest(`${layoutDir}:1.0`, a), { dataDir, imageRepository: REPO, signer: key });

  // B is unsigned.
  await rejectsWith(verifyImage({ layoutDir, tag: "2.0", trustedKeys: [key.publicKeyPem] }), "no-signature", /no tag sha256-/);

  // A's signature does not cover the payload B would need.
  const s = await readSignature(layoutDir, a);
  const forB = Buffer.from(s.payload.toString("utf8").replace(a, b));
  const bad = await opensslVerify(dir, pubPath, s.sig, forB);
  assert.notEqual(bad.status, 0, bad.out);

  // A's (valid) signature copied under B's signature tag is refused: it names A.
  const layout = await OciLayout.open(layoutDir);
  const sigDesc = await layout.resolve(signatureTag(a));
  await layout.tag(signatureTag(b), sigDesc!);
  await rejectsWith(verifyImage({ layoutDir, tag: "2.0", trustedKeys: [key.publicKeyPem] }), "digest-mismatch", new RegExp(`for ${a}, not ${b}`));
  // And a tag that now points elsewhere than the digest asked about.
  await rejectsWith(verifyImage({ layoutDir, tag: "2.0", manifest: a, trustedKeys: [key.publicKeyPem] }), "digest-mismatch");

  // Signing B by tag alone works and verifies.
  const rb = await signImage({ layoutDir, tag: "2.0", reference: `${REPO}/demo:2.0`, signer: key });
  assert.equal(rb.manifest, b);
  assert.equal((await verifyImage({ layoutDir, tag: "2.0", trustedKeys: [key.publicKeyPem] })).manifest, b);
});

test("a different key fails openssl and verifyImage; re-signing with a new key replaces the tag", async (t) => {
  const { dir, dataDir, layoutDir, key, pubPath } = await setup(t);
  const other = await managedKeyProvider({ dir: path.join(dir, "other", "signer"), name: "cosign" });
  assert.notEqual(other.keyId, key.keyId);
  const manifest = await makeImage(layoutDir, "1.0", "one");
  const first = await sign(imageRequest(`${layoutDir}:1.0`, manifest), { dataDir, imageRepository: REPO, signer: key });
  const s = await readSignature(layoutDir, manifest);

  const bad = await opensslVerify(dir, other.publicKeyPath!, s.sig, s.payload);
  assert.notEqual(bad.status, 0, bad.out);
  await rejectsWith(verifyImage({ layoutDir, tag: "1.0", trustedKeys: [other.publicKeyPem] }), "untrusted-key", new RegExp(key.keyId));
  // Trusting several keys, one of them right, is fine.
  assert.equal((await verifyImage({ layoutDir, tag: "1.0", trustedKeys: [other.publicKeyPem, key.publicKeyPem] })).keyId, key.keyId);

  // Key rotation: the other key's signature replaces the tag.
  const second = await sign(imageRequest(`${layoutDir}:1.0`, manifest), { dataDir, imageRepository: REPO, signer: other });
  assert.notEqual(second.signatures.image, first.signatures.image);
  assert.equal(second.keyId, other.keyId);
  assert.equal((await verifyImage({ layoutDir, tag: "1.0", trustedKeys: [other.publicKeyPem] })).keyId, other.keyId);
  await rejectsWith(verifyImage({ layoutDir, tag: "1.0", trustedKeys: [key.publicKeyPem] }), "untrusted-key");
  const s2 = await readSignature(layoutDir, manifest);
  assert.equal((await opensslVerify(dir, other.publicKeyPath!, s2.sig, s2.payload)).status, 0);
  assert.notEqual((await opensslVerify(dir, pubPath, s2.sig, s2.payload)).status, 0);
});

test("image requests that cannot be signed are refused plainly", async (t) => {
  const { dataDir, layoutDir, key } = await setup(t);
  const manifest = await makeImage(layoutDir, "1.0", "one");
  const ctx = { dataDir, imageRepository: REPO, signer: key };
  await assert.rejects(sign(imageRequest(`${layoutDir}:1.0`, undefined), ctx), SignRequestError);
  await assert.rejects(sign(imageRequest(layoutDir.replaceAll(":", ""), manifest), ctx), /not <layout dir>:<tag>/);
  const missing = `sha256:${"cd".repeat(32)}` as const;
  await assert.rejects(sign(imageRequest(`${layoutDir}:1.0`, missing), ctx), /missing/);
  await rejectsWith(verifyImage({ layoutDir, tag: "nope", trustedKeys: [key.publicKeyPem] }), "not-found");
  await rejectsWith(verifyImage({ layoutDir: path.join(dataDir, "nowhere"), tag: "1.0", trustedKeys: [key.publicKeyPem] }), "not-found");
});

test("an image's layout keeps the versions signed last, with their signatures, attestations and blobs, and nothing else", async (t) => {
  const { dataDir, layoutDir, key } = await setup(t);
  const layout = await OciLayout.open(layoutDir);
  const ctx = { dataDir, imageRepository: REPO, signer: key };
  const blobs = async () => new Set((await readdir(path.join(layoutDir, "blobs", "sha256"))).map((hex) => `sha256:${hex}`));
  // Each version as the builder leaves it: the image, and an SBOM and a provenance its entry holds.
  const build = async (version: string): Promise<{ req: VerifiedBuild; held: Digest[] }> => {
    const manifest = await makeImage(layoutDir, version, version);
    const sbom = (await layout.writeBlob(JSON.stringify({ bomFormat: "CycloneDX", version }), mediaTypes.cyclonedx)).digest;
    const provenance = (await layout.writeBlob(JSON.stringify({ buildType: "homeostat", version }), mediaTypes.inToto)).digest;
    await layout.tag(version, {
      mediaType: mediaTypes.manifest,
      digest: manifest,
      size: (await layout.readBlob(manifest)).length,
      annotations: versionHolds({ sbom, provenance }),
    });
    const req = { ...imageRequest(`${layoutDir}:${version}`, manifest, version), outputs: { manifest, sbom, provenance, location: `${layoutDir}:${version}` } };
    return { req, held: [manifest, sbom, provenance] };
  };
  const signed = async (version: string, keep: number, graceMs = 0) => {
    const b = await build(version);
    await sign(b.req, ctx);
    return { ...b, collected: await keepRecentVersions(b.req, { dataDir, keep, graceMs }) };
  };

  const v1 = await signed("1", 2);
  assert.deepEqual(v1.collected, { tags: [], blobs: 0, bytes: 0 });
  const v2 = await signed("2", 2);
  const v1Blobs = await blobs();
  const inFlight = await build("4"); // built, not signed yet
  const v3 = await signed("3", 2);
  const m1 = v1.req.outputs.manifest as Digest;
  assert.deepEqual(new Set(v3.collected.tags), new Set(["1", signatureTag(m1), referrersTag(m1)]));
  assert.deepEqual(
    await layout.tags(),
    ["2", "3", "4", ...[v2, v3].flatMap((v) => [referrersTag(v.req.outputs.manifest as Digest), signatureTag(v.req.outputs.manifest as Digest)])].sort(),
  );
  const left = await blobs();
  for (const d of v1.held) assert.ok(!left.has(d), `version 1's ${d} went`);
  for (const d of [...v2.held, ...v3.held, ...inFlight.held]) assert.ok(left.has(d), `${d} stayed`);
  assert.ok(
    v3.collected.blobs >= 3 + 2,
    `version 1's manifest, config, layer, SBOM, provenance, and its signature's and attestations' blobs: ${v3.collected.blobs}`,
  );
  assert.ok([...v1Blobs].filter((d) => !left.has(d)).length === v3.collected.blobs);
  // What is left verifies as it did: both signed versions with their attestations; the unsigned one does not.
  for (const tag of ["2", "3"])
    await verifyLayoutImages({ target: `${layoutDir}:${tag}`, trustedKeys: [key.publicKeyPem], require: ["https://cyclonedx.org/bom"] });

  // An unheld blob younger than the grace stays (a build writing before its tag); older, it goes.
  const orphan = (await layout.writeBlob("written by a build still running", mediaTypes.layerGzip)).digest;
  const v5 = await signed("5", 2, 60_000);
  assert.ok((await blobs()).has(orphan));
  assert.ok(v5.collected.tags.includes("2"));
  assert.ok((await blobs()).has(v2.held[0]!), "version 2's tag went, its blobs are younger than the grace");
  await signed("6", 2, 0);
  const last = await blobs();
  for (const d of [orphan, ...v2.held, ...v3.held]) assert.ok(!last.has(d), `${d} went`);
  assert.deepEqual(
    (await layout.tags()).filter((t) => !t.startsWith("sha256-")),
    ["4", "5", "6"],
  );
});

test("a package archive is signed sign-blob style into the store and verifies with openssl", async (t) => {
  const { dir, dataDir, key, pubPath } = await setup(t);
  const other = await managedKeyProvider({ dir: path.join(dir, "other", "signer"), name: "cosign" });
  const archiveBytes = Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0]), createHash("sha256").update("pkg").digest()]);
  const archive = await writeStoreBlob(dataDir, archiveBytes);
  const req: VerifiedBuild = {
    key: "package/libdemo",
    kind: "package",
    name: "libdemo",
    version: "2.1",
    inputDigest: INPUT,
    outputs: { archive, location: storeBlobPath(dataDir, archive) },
  };
  const res = await sign(req, { dataDir, imageRepository: REPO, signer: key });
  assert.deepEqual(Object.keys(res.signatures), ["archive"]);
  assert.equal(res.keyId, key.keyId);
  const sigFile = storeBlobPath(dataDir, res.signatures.archive!);
  const sigText = await readFile(sigFile, "utf8");
  assert.match(sigText, /^[A-Za-z0-9+/]+=*$/);
  assert.equal(sha256Digest(sigText), res.signatures.archive);

  // openssl, straight on the store files.
  assert.equal(openssl(["base64", "-d", "-A", "-in", sigFile, "-out", "a.der"], dir).status, 0);
  const ok = openssl(["dgst", "-sha256", "-verify", pubPath, "-signature", "a.der", storeBlobPath(dataDir, archive)], dir);
  assert.equal(ok.status, 0, ok.out);
  assert.deepEqual(await verifyStoreBlob({ dataDir, blob: archive, signature: res.signatures.archive!, trustedKeys: [key.publicKeyPem] }), {
    blob: archive,
    signature: res.signatures.archive,
    keyId: key.keyId,
  });

  // A flipped archive byte.
  const flipped = Buffer.from(archiveBytes);
  flipped[5] = flipped[5]! ^ 0x01;
  await writeFile(path.join(dir, "flipped.tar.gz"), flipped);
  assert.notEqual(openssl(["dgst", "-sha256", "-verify", pubPath, "-signature", "a.der", "flipped.tar.gz"], dir).status, 0);
  await rejectsWith(() => verifyBlobSignature({ data: flipped, signature: sigText, trustedKeys: [key.publicKeyPem] }), "bad-signature");
  // ... and a different key.
  assert.notEqual(openssl(["dgst", "-sha256", "-verify", other.publicKeyPath!, "-signature", "a.der", storeBlobPath(dataDir, archive)], dir).status, 0);
  await rejectsWith(verifyStoreBlob({ dataDir, blob: archive, signature: res.signatures.archive!, trustedKeys: [other.publicKeyPem] }), "bad-signature");
  // ... and a corrupted store blob.
  await copyFile(path.join(dir, "flipped.tar.gz"), storeBlobPath(dataDir, archive));
  await rejectsWith(verifyStoreBlob({ dataDir, blob: archive, signature: res.signatures.archive!, trustedKeys: [key.publicKeyPem] }), "corrupt");
  await assert.rejects(sign(req, { dataDir, imageRepository: REPO, signer: key }), /corrupt/);

  const missing = { ...req, outputs: { location: "x", archive: `sha256:${"ef".repeat(32)}` as const } };
  await assert.rejects(sign(missing, { dataDir, imageRepository: REPO, signer: key }), /not in the store/);
  await assert.rejects(sign({ ...req, outputs: { location: "x" } }, { dataDir, imageRepository: REPO, signer: key }), SignRequestError);
});
