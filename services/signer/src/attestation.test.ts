/**
 * Attestations end to end: real OCI layouts signed through `sign`, every bundle checked
 * independently with `@sigstore/verify` given only the public key, then tampered with in each
 * way that must fail, and keys rotated and revoked.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createPublicKey, generateKeyPairSync } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { bundleFromJSON } from "@sigstore/bundle";
import { toSignedEntity, Verifier } from "@sigstore/verify";
import { sha256Digest, type Digest } from "@homeostat/core/digest";
import {
  CYCLONEDX_PREDICATE_TYPE,
  type Descriptor,
  indexBytes,
  manifestBytes,
  mediaTypes,
  OciLayout,
  PREDICATE_TYPE_ANNOTATION,
  readTrustedKeys,
  referrers,
  referrersTag,
  type Signer,
  SigningKeyError,
  signStatement,
  SLSA_PROVENANCE_PREDICATE_TYPE,
  type Statement,
  statementBytes,
  VerificationError,
  verifyAttestations,
  type VerifyFailure,
  verifyLayoutImages,
} from "@homeostat/attest";
import { imageToSign, newSigner } from "../../../test/fixtures/images.ts";
import { sign } from "./sign.ts";

const REPO = "registry.example/homeostat";
const required = [CYCLONEDX_PREDICATE_TYPE, SLSA_PROVENANCE_PREDICATE_TYPE];

async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "hs-attest-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function signed(dir: string, tag: string, content: string, signer: Signer) {
  const req = await imageToSign(path.join(dir, content), tag, content);
  const result = await sign(req, { dataDir: dir, imageRepository: REPO, signer });
  return { req, result, layoutDir: path.join(dir, content), manifest: req.outputs.manifest as Digest };
}

async function rejects(p: Promise<unknown>, reason: VerifyFailure, message: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof VerificationError, `a VerificationError, not ${String(e)}`);
    assert.equal(e.reason, reason, e.message);
    assert.match(e.message, message);
    return true;
  });
}

/** Replaces the attestation of `predicateType` with a bundle made by `makeBundle`, keeping the layout consistent. */
async function replaceAttestation(layoutDir: string, subject: Digest, predicateType: string, bundleJson: unknown): Promise<void> {
  const layout = await OciLayout.open(layoutDir);
  const subjectSize = (await layout.readBlob(subject)).length;
  const bundle = await layout.writeBlob(JSON.stringify(bundleJson), mediaTypes.sigstoreBundle);
  const config = await layout.writeBlob("{}", mediaTypes.empty);
  const annotations = { [PREDICATE_TYPE_ANNOTATION]: predicateType };
  const manifest = await layout.writeBlob(
    manifestBytes({
      artifactType: mediaTypes.sigstoreBundle,
      config,
      layers: [bundle],
      subject: { mediaType: mediaTypes.manifest, digest: subject, size: subjectSize },
      annotations,
    }),
    mediaTypes.manifest,
  );
  const others = (await referrers(layout, subject)).filter((d) => d.annotations?.[PREDICATE_TYPE_ANNOTATION] !== predicateType);
  const entry: Descriptor = { ...manifest, artifactType: mediaTypes.sigstoreBundle, annotations };
  await layout.tag(referrersTag(subject), await layout.writeBlob(indexBytes({ manifests: [...others, entry] }), mediaTypes.index));
}

async function bundleOf(layoutDir: string, subject: Digest, predicateType: string): Promise<{ json: Record<string, unknown>; manifest: Descriptor }> {
  const layout = await OciLayout.open(layoutDir);
  const entry = (await referrers(layout, subject)).find((d) => d.annotations?.[PREDICATE_TYPE_ANNOTATION] === predicateType)!;
  const m = JSON.parse((await layout.readBlob(entry.digest)).toString()) as { layers: Descriptor[]; subject: Descriptor; artifactType: string };
  return { json: JSON.parse((await layout.readBlob(m.layers[0]!.digest)).toString()) as Record<string, unknown>, manifest: entry };
}

test("an image gets SBOM and provenance attestations as OCI 1.1 referrers, listed under the fallback tag", async (t) => {
  const dir = await tempDir(t);
  const signer = newSigner();
  const { result, layoutDir, manifest, req } = await signed(dir, "1.0", "greeter", signer);
  assert.deepEqual(Object.keys(result.signatures).sort(), ["image", "provenance", "sbom"]);

  const layout = await OciLayout.open(layoutDir);
  const listed = await referrers(layout, manifest);
  assert.equal(listed.length, 2);
  for (const entry of listed) {
    assert.equal(entry.artifactType, mediaTypes.sigstoreBundle);
    const m = JSON.parse((await layout.readBlob(entry.digest)).toString()) as {
      artifactType: string;
      config: Descriptor;
      subject: Descriptor;
      layers: Descriptor[];
    };
    assert.equal(m.artifactType, mediaTypes.sigstoreBundle);
    assert.equal(m.config.mediaType, mediaTypes.empty);
    assert.equal(m.subject.digest, manifest, "each attestation names the image as its subject");
    assert.equal(m.layers[0]!.mediaType, mediaTypes.sigstoreBundle);
  }
  assert.equal(result.signatures.sbom, listed.find((d) => d.annotations?.[PREDICATE_TYPE_ANNOTATION] === CYCLONEDX_PREDICATE_TYPE)!.digest);

  // The statement carries the SBOM itself, about exactly this image.
  const { json } = await bundleOf(layoutDir, manifest, CYCLONEDX_PREDICATE_TYPE);
  const statement = JSON.parse(Buffer.from((json.dsseEnvelope as { payload: string }).payload, "base64").toString()) as Statement;
  assert.equal(statement._type, "https://in-toto.io/Statement/v1");
  assert.deepEqual(statement.subject, [{ name: `${REPO}/greeter`, digest: { sha256: manifest.slice(7) } }]);
  assert.deepEqual(statement.predicate, JSON.parse((await layout.readBlob(req.outputs.sbom as Digest)).toString()));

  const verified = await verifyAttestations({ layoutDir, manifest, trustedKeys: [signer.publicKeyPem], require: required });
  assert.deepEqual(verified.map((v) => v.predicateType).sort(), [...required].sort());
  assert.ok(verified.every((v) => v.keyId === signer.keyId));
});

test("@sigstore/verify accepts every bundle given only the public key, offline", async (t) => {
  const dir = await tempDir(t);
  const signer = newSigner();
  const { layoutDir, manifest } = await signed(dir, "1.0", "greeter", signer);
  const publicKey = createPublicKey(signer.publicKeyPem);
  const verifier = new Verifier(
    {
      certificateAuthorities: [],
      timestampAuthorities: [],
      tlogs: [],
      ctlogs: [],
      publicKey: (hint) => (hint === signer.keyId ? { publicKey, validFor: () => true } : assert.fail(`unexpected hint ${hint}`)),
    },
    { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 },
  );
  for (const type of required) {
    const { json } = await bundleOf(layoutDir, manifest, type);
    assert.equal(json.mediaType, "application/vnd.dev.sigstore.bundle.v0.3+json");
    const bundle = bundleFromJSON(json);
    assert.doesNotThrow(() => verifier.verify(toSignedEntity(bundle)), type);
  }
});

test("signing again is idempotent; a new key replaces the attestations", async (t) => {
  const dir = await tempDir(t);
  const signer = newSigner();
  const first = await signed(dir, "1.0", "greeter", signer);
  const again = await sign(first.req, { dataDir: dir, imageRepository: REPO, signer });
  assert.deepEqual(again.signatures, first.result.signatures, "a redelivered request writes nothing new");

  const rotated = newSigner();
  const resigned = await sign(first.req, { dataDir: dir, imageRepository: REPO, signer: rotated });
  assert.notEqual(resigned.signatures.sbom, first.result.signatures.sbom);
  assert.equal((await referrers(await OciLayout.open(first.layoutDir), first.manifest)).length, 2, "one attestation per predicate type");
  const verified = await verifyAttestations({ layoutDir: first.layoutDir, manifest: first.manifest, trustedKeys: [rotated.publicKeyPem], require: required });
  assert.ok(verified.every((v) => v.keyId === rotated.keyId));
});

test("rejected with a plain reason: changed payload, changed image, wrong key, revoked key, another subject", async (t) => {
  const dir = await tempDir(t);
  const signer = newSigner();
  const a = await signed(dir, "1.0", "alpha", signer);
  const trustedKeys = [signer.publicKeyPem];

  // A changed payload: the statement is edited after signing.
  const { json } = await bundleOf(a.layoutDir, a.manifest, CYCLONEDX_PREDICATE_TYPE);
  const envelope = json.dsseEnvelope as { payload: string };
  const statement = JSON.parse(Buffer.from(envelope.payload, "base64").toString()) as Statement;
  statement.predicate = { bomFormat: "CycloneDX", components: [{ name: "something else" }] };
  await replaceAttestation(a.layoutDir, a.manifest, CYCLONEDX_PREDICATE_TYPE, {
    ...json,
    dsseEnvelope: { ...envelope, payload: Buffer.from(JSON.stringify(statement)).toString("base64") },
  });
  await rejects(verifyAttestations({ layoutDir: a.layoutDir, manifest: a.manifest, trustedKeys }), "bad-signature", /signature/i);

  // A bundle, validly signed by the trusted key, whose statement is about another image.
  const otherSubject = sha256Digest("another image");
  const foreign = await signStatement(
    statementBytes({ name: `${REPO}/alpha`, digest: otherSubject }, { predicateType: CYCLONEDX_PREDICATE_TYPE, predicate: {} }),
    signer,
  );
  await replaceAttestation(a.layoutDir, a.manifest, CYCLONEDX_PREDICATE_TYPE, foreign);
  await rejects(verifyAttestations({ layoutDir: a.layoutDir, manifest: a.manifest, trustedKeys }), "digest-mismatch", new RegExp(`about ${otherSubject}`));

  // A changed image: another image's attestations copied under this image's referrers tag.
  const b = await signed(dir, "1.0", "beta", signer);
  const layoutB = await OciLayout.open(b.layoutDir);
  const alphaIndex = (await (await OciLayout.open(a.layoutDir)).resolve(referrersTag(a.manifest)))!;
  const copied = JSON.parse((await (await OciLayout.open(a.layoutDir)).readBlob(alphaIndex.digest)).toString()) as { manifests: Descriptor[] };
  for (const d of copied.manifests) {
    const m = await (await OciLayout.open(a.layoutDir)).readBlob(d.digest);
    await layoutB.writeBlob(m, mediaTypes.manifest);
    const layer = (JSON.parse(m.toString()) as { layers: Descriptor[] }).layers[0]!;
    await layoutB.writeBlob(await (await OciLayout.open(a.layoutDir)).readBlob(layer.digest), mediaTypes.sigstoreBundle);
  }
  await layoutB.tag(referrersTag(b.manifest), await layoutB.writeBlob(indexBytes(copied), mediaTypes.index));
  await rejects(verifyAttestations({ layoutDir: b.layoutDir, manifest: b.manifest, trustedKeys }), "digest-mismatch", new RegExp(`not ${b.manifest}`));

  // A wrong key, and a revoked one (no longer in the trust set).
  const c = await signed(dir, "1.0", "gamma", signer);
  const stranger = newSigner();
  await rejects(
    verifyLayoutImages({ target: `${c.layoutDir}:1.0`, trustedKeys: [stranger.publicKeyPem], require: required }),
    "untrusted-key",
    /not among the trusted keys/,
  );
  await rejects(
    verifyAttestations({ layoutDir: c.layoutDir, manifest: c.manifest, trustedKeys: [stranger.publicKeyPem] }),
    "untrusted-key",
    new RegExp(signer.keyId),
  );

  // Missing attestations are refused when required.
  const d = await imageToSign(path.join(dir, "delta"), "1.0", "delta");
  await sign({ ...d, outputs: { ...d.outputs, provenance: undefined } }, { dataDir: dir, imageRepository: REPO, signer });
  await rejects(
    verifyLayoutImages({ target: `oci:${path.join(dir, "delta")}:1.0`, trustedKeys, require: required }),
    "no-attestation",
    /no https:\/\/slsa\.dev\/provenance\/v1 attestation/,
  );
});

test("rotation: old images verify while the old key is trusted, new ones use the new key; removing it revokes", async (t) => {
  const dir = await tempDir(t);
  const oldKey = newSigner();
  const newKey = newSigner();
  const before = await signed(dir, "1.0", "old", oldKey);
  const after = await signed(dir, "1.0", "new", newKey);

  const both = [oldKey.publicKeyPem, newKey.publicKeyPem];
  const [v1] = await verifyLayoutImages({ target: before.layoutDir, trustedKeys: both, require: required });
  const [v2] = await verifyLayoutImages({ target: after.layoutDir, trustedKeys: both, require: required });
  assert.equal(v1!.signature.keyId, oldKey.keyId);
  assert.ok(v1!.attestations.every((a) => a.keyId === oldKey.keyId));
  assert.equal(v2!.signature.keyId, newKey.keyId);
  assert.ok(v2!.attestations.every((a) => a.keyId === newKey.keyId));

  await rejects(verifyLayoutImages({ target: before.layoutDir, trustedKeys: [newKey.publicKeyPem] }), "untrusted-key", new RegExp(oldKey.keyId));
});

test("trusted key files: several keys a file, duplicates merged, bad files refused plainly", async (t) => {
  const dir = await tempDir(t);
  const [k1, k2] = [newSigner(), newSigner()];
  await writeFile(path.join(dir, "both.pem"), `${k1.publicKeyPem}\n${k2.publicKeyPem}`);
  await writeFile(path.join(dir, "one.pem"), k1.publicKeyPem);
  await writeFile(path.join(dir, "empty.pem"), "nothing here\n");
  const keys = await readTrustedKeys([path.join(dir, "both.pem"), path.join(dir, "one.pem")]);
  assert.deepEqual(keys, [k1.publicKeyPem, k2.publicKeyPem]);
  // A key removed from a file (or one put in) counts from the next read.
  await writeFile(path.join(dir, "both.pem"), k2.publicKeyPem);
  assert.deepEqual(await readTrustedKeys([path.join(dir, "both.pem")]), [k2.publicKeyPem]);
  await writeFile(path.join(dir, "both.pem"), "nothing here either\n");
  await assert.rejects(readTrustedKeys([path.join(dir, "both.pem")]), /holds no PEM public key/);
  await assert.rejects(
    readTrustedKeys([path.join(dir, "empty.pem")]),
    (e: unknown) => e instanceof SigningKeyError && /holds no PEM public key/.test(e.message),
  );
  await assert.rejects(
    readTrustedKeys([path.join(dir, "missing.pem")]),
    (e: unknown) => e instanceof SigningKeyError && /cannot read \(ENOENT\)/.test(e.message),
  );
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 }).publicKey.export({ type: "spki", format: "pem" }).toString();
  await writeFile(path.join(dir, "rsa.pem"), rsa);
  await assert.rejects(readTrustedKeys([path.join(dir, "rsa.pem")]), (e: unknown) => e instanceof SigningKeyError && /P-256/.test(e.message));
});
