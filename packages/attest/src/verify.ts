/**
 * Verify: offline checks of Homeostat (and cosign key-based) signatures, for tests and for
 * `homeostat verify`. Nothing here trusts anything in the layout except through a key the
 * caller passes in; every failure is a VerificationError with a machine-readable `reason`
 * and a plain message.
 */
import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { bundleFromJSON, type Bundle } from "@sigstore/bundle";
import { toSignedEntity, Verifier, type TrustMaterial } from "@sigstore/verify";
import type { Digest } from "@homeostat/core/digest";
import type { z } from "zod";
import { imageManifestSchema, mediaTypes, OciJsonError, OciLayout, parseOciJson, type Descriptor } from "./oci.ts";
import { Registry, RegistryError } from "./registry.ts";
import { AttestationError, PREDICATE_TYPE_ANNOTATION, referrers, referrersTag, statementSchema } from "./attestation.ts";
import { BlobSigningError, CorruptStoreBlobError, readStoreBlob } from "./blob-signing.ts";
import { isVersionTag } from "./image-versions.ts";
import { keyIdOf, parsePublicKey, verifyDer } from "./keys.ts";
import {
  CorruptBlobError,
  decodeBase64,
  parseSimpleSigningPayload,
  readVerifiedBlob,
  SIGNATURE_ANNOTATION,
  SignatureError,
  signatureTag,
  SIMPLE_SIGNING_MEDIA_TYPE,
} from "./simple-signing.ts";

export type VerifyFailure =
  /** The layout, tag or blob asked about does not exist. */
  | "not-found"
  /** The image has no signature (no `sha256-<hex>.sig` tag, or no signature layer in it). */
  | "no-signature"
  /** A blob's bytes no longer match its digest, or a signature document is malformed. */
  | "corrupt"
  /** A validly signed payload names a different image than the one checked. */
  | "digest-mismatch"
  /** The signature is signed by a trusted key's id but does not verify (tampered payload or signature). */
  | "bad-signature"
  /** The signature was made by a key that is not trusted. */
  | "untrusted-key"
  /** The payload's docker-reference is not the one the caller expected. */
  | "reference-mismatch"
  /** The image has no attestation (of the required predicate type). */
  | "no-attestation";

export class VerificationError extends Error {
  readonly reason: VerifyFailure;
  constructor(reason: VerifyFailure, message: string) {
    super(`${reason}: ${message}`);
    this.reason = reason;
  }
}

type TrustedKey = { id: string; key: ReturnType<typeof parsePublicKey> };

function trusted(pems: readonly string[]): TrustedKey[] {
  if (pems.length === 0) throw new VerificationError("untrusted-key", "no trusted public keys were given");
  return pems.map((pem, i) => {
    const key = parsePublicKey(pem, `trusted key #${i + 1}`);
    return { id: keyIdOf(key), key };
  });
}

/** Which trusted key made `sig` over `data`, or why none did. */
function checkSignature(keys: TrustedKey[], data: Uint8Array, sig: Uint8Array, claimedKeyId: string | undefined): { keyId: string } | VerificationError {
  for (const k of keys) if (verifyDer(k.key, data, sig)) return { keyId: k.id };
  if (claimedKeyId !== undefined && !keys.some((k) => k.id === claimedKeyId)) {
    return new VerificationError("untrusted-key", `signed by key ${claimedKeyId}, which is not among the trusted keys (${keys.map((k) => k.id).join(", ")})`);
  }
  return new VerificationError(
    "bad-signature",
    `the signature does not verify with ${keys.length === 1 ? "the trusted key" : `any of the ${keys.length} trusted keys`}`,
  );
}

export type VerifiedImage = {
  /** The image manifest whose signature was verified. */
  manifest: Digest;
  signatureTag: string;
  signatureManifest: Digest;
  payload: Digest;
  /** Id of the trusted key that verified the signature. */
  keyId: string;
  /** The payload's docker-reference. */
  reference: string;
  /** The payload's optional section (creator, homeostat.key, ...). */
  optional: Record<string, string>;
};

/**
 * Verifies the cosign signature of an image in an OCI layout: finds `sha256-<hex>.sig`,
 * checks the blobs are intact, the signature verifies with a trusted key, and the signed
 * payload names this image's digest (and `reference`, when given). Returns what was verified
 * or throws a VerificationError.
 */
export async function verifyImage(opts: {
  layoutDir: string;
  tag?: string | undefined;
  manifest?: Digest | undefined;
  trustedKeys: readonly string[];
  reference?: string | undefined;
}): Promise<VerifiedImage> {
  const keys = trusted(opts.trustedKeys);
  const layout = await openExisting(opts.layoutDir);

  let manifest = opts.manifest;
  if (opts.tag !== undefined) {
    const d = await layout.resolve(opts.tag);
    if (!d) throw new VerificationError("not-found", `tag ${JSON.stringify(opts.tag)} is not in ${layout.dir}`);
    if (manifest !== undefined && d.digest !== manifest) {
      throw new VerificationError("digest-mismatch", `tag ${JSON.stringify(opts.tag)} points at ${d.digest}, not ${manifest}`);
    }
    manifest = d.digest;
  }
  if (manifest === undefined) throw new VerificationError("not-found", "verifyImage needs a tag or a manifest digest");

  let tag: string;
  try {
    tag = signatureTag(manifest);
  } catch (e) {
    throw new VerificationError("not-found", (e as Error).message);
  }
  await blob(layout, manifest, "image manifest");

  const sigDesc = await layout.resolve(tag);
  if (!sigDesc) throw new VerificationError("no-signature", `${manifest} has no signature (no tag ${tag} in ${layout.dir})`);
  const sigManifestBytes = await blob(layout, sigDesc.digest, "signature manifest");
  const { layers } = parseOrCorrupt(imageManifestSchema, sigManifestBytes, `signature manifest ${sigDesc.digest}`);
  const candidates = layers.filter((l) => l.mediaType === SIMPLE_SIGNING_MEDIA_TYPE);
  if (candidates.length === 0) throw new VerificationError("no-signature", `signature manifest ${sigDesc.digest} holds no ${SIMPLE_SIGNING_MEDIA_TYPE} layer`);

  // cosign may stack several signatures (several keys) in one manifest: any one that passes will do.
  const failures: VerificationError[] = [];
  for (const layer of candidates) {
    const result = await checkLayer(layout, layer, keys, manifest, opts.reference);
    if (result instanceof VerificationError) {
      failures.push(result);
      continue;
    }
    return { manifest, signatureTag: tag, signatureManifest: sigDesc.digest, ...result };
  }
  const [first, ...rest] = failures;
  if (first === undefined) throw new VerificationError("no-signature", `signature manifest ${sigDesc.digest} holds no signature layer`);
  if (rest.length === 0) throw first;
  throw new VerificationError(first.reason, `no signature in ${sigDesc.digest} verified: ${failures.map((f) => f.message).join("; ")}`);
}

async function checkLayer(
  layout: OciLayout,
  layer: Descriptor,
  keys: TrustedKey[],
  manifest: Digest,
  reference: string | undefined,
): Promise<Omit<VerifiedImage, "manifest" | "signatureTag" | "signatureManifest"> | VerificationError> {
  const payloadDigest = layer.digest;
  let payload: Buffer;
  try {
    payload = await blob(layout, payloadDigest, "signature payload");
  } catch (e) {
    if (e instanceof VerificationError) return e;
    throw e;
  }
  const annotation = layer.annotations?.[SIGNATURE_ANNOTATION];
  const sig = typeof annotation === "string" ? decodeBase64(annotation) : undefined;
  if (!sig) return new VerificationError("corrupt", `signature layer ${payloadDigest} has no base64 ${SIGNATURE_ANNOTATION} annotation`);

  // The payload is untrusted until the signature checks; its claimed key id only sharpens the error.
  let claimedKeyId: string | undefined;
  try {
    claimedKeyId = (JSON.parse(payload.toString("utf8")) as { optional?: Record<string, unknown> }).optional?.["homeostat.keyId"] as string | undefined;
    if (typeof claimedKeyId !== "string") claimedKeyId = undefined;
  } catch {
    claimedKeyId = undefined;
  }
  const checked = checkSignature(keys, payload, sig, claimedKeyId);
  if (checked instanceof VerificationError) return checked;

  let parsed;
  try {
    parsed = parseSimpleSigningPayload(payload);
  } catch (e) {
    return new VerificationError("corrupt", (e as SignatureError).message);
  }
  const signedDigest = parsed.critical.image["docker-manifest-digest"];
  if (signedDigest !== manifest) {
    return new VerificationError("digest-mismatch", `the signature is for ${signedDigest}, not ${manifest}`);
  }
  const signedRef = parsed.critical.identity["docker-reference"];
  if (reference !== undefined && signedRef !== reference) {
    return new VerificationError("reference-mismatch", `the signature names ${JSON.stringify(signedRef)}, not ${JSON.stringify(reference)}`);
  }
  return { payload: payloadDigest, keyId: checked.keyId, reference: signedRef, optional: parsed.optional };
}

async function openExisting(dir: string): Promise<OciLayout> {
  const abs = path.resolve(dir);
  try {
    await access(path.join(abs, "index.json"));
  } catch {
    throw new VerificationError("not-found", `no OCI layout at ${abs}`);
  }
  return OciLayout.open(abs);
}

/** An OCI or in-toto document that fails its schema is a corrupt one, and the reason says why. */
function parseOrCorrupt<S extends z.ZodType>(schema: S, bytes: Uint8Array, what: string): z.infer<S> {
  try {
    return parseOciJson(schema, bytes, what);
  } catch (e) {
    throw e instanceof OciJsonError ? new VerificationError("corrupt", e.message) : e;
  }
}

async function blob(layout: OciLayout, digest: string, what: string): Promise<Buffer> {
  try {
    return await readVerifiedBlob(layout, digest, what);
  } catch (e) {
    if (e instanceof SignatureError) {
      throw new VerificationError(e instanceof CorruptBlobError ? "corrupt" : "not-found", e.message);
    }
    throw e;
  }
}

/**
 * Checks a cosign sign-blob style signature (base64 DER, as text or bytes) over `data`.
 * Returns the id of the trusted key that made it.
 */
export function verifyBlobSignature(opts: { data: Uint8Array; signature: string | Uint8Array; trustedKeys: readonly string[] }): { keyId: string } {
  const keys = trusted(opts.trustedKeys);
  const text = (typeof opts.signature === "string" ? opts.signature : Buffer.from(opts.signature).toString("utf8")).trim();
  const sig = decodeBase64(text);
  if (!sig) throw new VerificationError("corrupt", "the blob signature is not base64");
  const checked = checkSignature(keys, opts.data, sig, undefined);
  if (checked instanceof VerificationError) throw checked;
  return checked;
}

/** Verifies a package archive's signature where the signer stored both: the data directory's store. */
export async function verifyStoreBlob(opts: {
  dataDir: string;
  blob: Digest;
  signature: Digest;
  trustedKeys: readonly string[];
}): Promise<{ blob: Digest; signature: Digest; keyId: string }> {
  const read = async (d: Digest, what: string): Promise<Buffer> => {
    try {
      return await readStoreBlob(opts.dataDir, d);
    } catch (e) {
      if (e instanceof BlobSigningError) throw new VerificationError(e instanceof CorruptStoreBlobError ? "corrupt" : "not-found", `${what}: ${e.message}`);
      throw e;
    }
  };
  const data = await read(opts.blob, "archive");
  const sig = await read(opts.signature, "signature");
  const { keyId } = verifyBlobSignature({ data, signature: sig, trustedKeys: opts.trustedKeys });
  return { blob: opts.blob, signature: opts.signature, keyId };
}

export type VerifiedAttestation = {
  predicateType: string;
  /** Id of the trusted key that signed the bundle. */
  keyId: string;
  /** The artifact manifest carrying the bundle, and the bundle blob. */
  manifest: Digest;
  bundle: Digest;
};

/**
 * Verifies every attestation listed under the image's referrers fallback tag: each bundle is
 * intact, is a Sigstore bundle whose DSSE signature `@sigstore/verify` accepts with a trusted
 * key (offline: no transparency log, no timestamp authority), and holds an in-toto Statement
 * v1 about exactly this manifest with the predicate type its manifest announces. `require`
 * lists predicate types that must be among them.
 */
export async function verifyAttestations(opts: {
  layoutDir: string;
  manifest: Digest;
  trustedKeys: readonly string[];
  require?: readonly string[];
}): Promise<VerifiedAttestation[]> {
  const keys = trusted(opts.trustedKeys);
  const layout = await openExisting(opts.layoutDir);
  let entries;
  try {
    entries = await referrers(layout, opts.manifest);
  } catch (e) {
    if (e instanceof AttestationError || e instanceof SignatureError || e instanceof SyntaxError) throw new VerificationError("corrupt", (e as Error).message);
    throw e;
  }
  const bundles = entries.filter((d) => d.artifactType === mediaTypes.sigstoreBundle);
  const verified: VerifiedAttestation[] = [];
  for (const entry of bundles) verified.push(await verifyAttestation(layout, entry.digest, opts.manifest, keys));
  for (const type of opts.require ?? []) {
    if (!verified.some((v) => v.predicateType === type)) {
      throw new VerificationError(
        "no-attestation",
        `${opts.manifest} has no ${type} attestation${verified.length ? ` (it has ${verified.map((v) => v.predicateType).join(", ")})` : ""}`,
      );
    }
  }
  return verified;
}

async function verifyAttestation(layout: OciLayout, manifestDigest: Digest, subject: Digest, keys: TrustedKey[]): Promise<VerifiedAttestation> {
  const what = `attestation ${manifestDigest}`;
  const m = parseOrCorrupt(imageManifestSchema, await blob(layout, manifestDigest, "attestation manifest"), `${what}'s manifest`);
  if (m.subject?.digest !== subject) throw new VerificationError("digest-mismatch", `${what} is about ${String(m.subject?.digest)}, not ${subject}`);
  const layer = m.layers[0];
  if (!layer || layer.mediaType !== mediaTypes.sigstoreBundle) {
    throw new VerificationError("corrupt", `${what} holds no ${mediaTypes.sigstoreBundle} layer`);
  }
  const announced = m.annotations?.[PREDICATE_TYPE_ANNOTATION];

  let bundle: Bundle;
  try {
    bundle = bundleFromJSON(JSON.parse((await blob(layout, layer.digest, "attestation bundle")).toString("utf8")));
  } catch (e) {
    if (e instanceof VerificationError) throw e;
    throw new VerificationError("corrupt", `${what}: not a Sigstore bundle (${(e as Error).message})`);
  }
  if (bundle.content.$case !== "dsseEnvelope") throw new VerificationError("corrupt", `${what}: the bundle holds no DSSE envelope`);
  const material = bundle.verificationMaterial.content;
  const hint = material.$case === "publicKey" ? material.publicKey.hint : undefined;
  if (hint === undefined) throw new VerificationError("untrusted-key", `${what}: the bundle is not signed with a public key (no key hint)`);
  // The hint is untrusted input: it only picks the key; an unknown one is refused outright.
  const key = keys.find((k) => k.id === hint);
  if (!key)
    throw new VerificationError("untrusted-key", `${what} is signed by key ${hint}, which is not among the trusted keys (${keys.map((k) => k.id).join(", ")})`);
  try {
    offlineVerifier(key).verify(toSignedEntity(bundle));
  } catch (e) {
    throw new VerificationError("bad-signature", `${what}: ${(e as Error).message}`);
  }

  const envelope = bundle.content.dsseEnvelope;
  if (envelope.payloadType !== mediaTypes.inToto)
    throw new VerificationError("corrupt", `${what}: payload type ${envelope.payloadType} is not ${mediaTypes.inToto}`);
  const statement = parseOrCorrupt(statementSchema, envelope.payload, `${what}: the signed payload`);
  const hex = subject.slice("sha256:".length);
  if (!statement.subject.some((s) => s.digest.sha256 === hex)) {
    const named = statement.subject.map((s) => `sha256:${s.digest.sha256}`).join(", ") || "nothing";
    throw new VerificationError("digest-mismatch", `${what}: the signed statement is about ${named}, not ${subject}`);
  }
  if (announced !== undefined && announced !== statement.predicateType) {
    throw new VerificationError("corrupt", `${what}: the manifest announces ${String(announced)} but the statement is ${statement.predicateType}`);
  }
  return { predicateType: statement.predicateType, keyId: key.id, manifest: manifestDigest, bundle: layer.digest };
}

/** A Sigstore verifier that trusts exactly one public key and needs no log or timestamp. */
function offlineVerifier(key: TrustedKey): Verifier {
  const trust: TrustMaterial = {
    certificateAuthorities: [],
    timestampAuthorities: [],
    tlogs: [],
    ctlogs: [],
    publicKey: (hint) => {
      if (hint !== key.id) throw new Error(`key ${hint} is not trusted`);
      return { publicKey: key.key, validFor: () => true };
    },
  };
  return new Verifier(trust, { tlogThreshold: 0, ctlogThreshold: 0, timestampThreshold: 0 });
}

export type ImageVerification = {
  /** The layout's tag that named the image. */
  tag: string;
  signature: VerifiedImage;
  attestations: VerifiedAttestation[];
};

/**
 * Verifies images in an OCI layout: `target` is `[oci:]DIR:TAG` for one image or `[oci:]DIR`
 * for every image tagged in it (signature and referrer tags, `sha256-…`, are not images).
 * Each must carry a valid signature and valid attestations of every `require`d type.
 */
export async function verifyLayoutImages(opts: { target: string; trustedKeys: readonly string[]; require?: readonly string[] }): Promise<ImageVerification[]> {
  const { layoutDir, tag } = await splitTarget(opts.target.replace(/^oci:/, ""));
  const layout = await openExisting(layoutDir);
  const tags = tag !== undefined ? [tag] : (await layout.tags()).filter(isVersionTag);
  if (tags.length === 0) throw new VerificationError("not-found", `${layout.dir} holds no tagged image`);
  const out: ImageVerification[] = [];
  for (const t of tags) {
    const signature = await verifyImage({ layoutDir: layout.dir, tag: t, trustedKeys: opts.trustedKeys });
    const attestations = await verifyAttestations({
      layoutDir: layout.dir,
      manifest: signature.manifest,
      trustedKeys: opts.trustedKeys,
      ...(opts.require ? { require: opts.require } : {}),
    });
    out.push({ tag: t, signature, attestations });
  }
  return out;
}

/** `DIR:TAG` when DIR is a layout; otherwise the whole target is the layout directory. */
async function splitTarget(target: string): Promise<{ layoutDir: string; tag: string | undefined }> {
  const i = target.lastIndexOf(":");
  if (i > 0 && !target.slice(i + 1).includes("/")) {
    const dir = target.slice(0, i);
    if (
      await access(path.join(dir, "index.json")).then(
        () => true,
        () => false,
      )
    )
      return { layoutDir: dir, tag: target.slice(i + 1) };
  }
  return { layoutDir: target, tag: undefined };
}

/**
 * Verifies `host[:port]/repository:tag` in a registry: the image, its signature tag and its
 * referrers tag are pulled (each blob checked against its digest) into a scratch layout, which
 * is then verified like any layout. Loopback registries are spoken to over http, others https.
 */
export async function verifyRegistryImage(opts: { ref: string; trustedKeys: readonly string[]; require?: readonly string[] }): Promise<ImageVerification[]> {
  const m = /^(?<host>[^/\s]+)\/(?<repository>[a-z0-9._/-]+?)(?::(?<tag>[\w][\w.-]{0,127}))?$/.exec(opts.ref);
  if (!m?.groups)
    throw new VerificationError("not-found", `${JSON.stringify(opts.ref)} is neither an OCI layout nor an image reference host[:port]/repository:tag`);
  const { host, repository } = m.groups as { host: string; repository: string };
  const tag = m.groups.tag ?? "latest";
  const loopback = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/.test(host);
  const registry = new Registry(`${loopback ? "http" : "https"}://${host}`);
  const scratch = await mkdtemp(path.join(tmpdir(), "homeostat-verify-"));
  try {
    const layout = await OciLayout.open(scratch);
    let image;
    try {
      image = await registry.pull(layout, repository, tag, tag);
      if (image) {
        await registry.pull(layout, repository, signatureTag(image.digest), signatureTag(image.digest));
        await registry.pull(layout, repository, referrersTag(image.digest), referrersTag(image.digest));
      }
    } catch (e) {
      if (e instanceof RegistryError) throw new VerificationError("not-found", e.message);
      throw e;
    }
    if (!image) throw new VerificationError("not-found", `${opts.ref}: no such image in the registry`);
    return await verifyLayoutImages({
      target: `${scratch}:${tag}`,
      trustedKeys: opts.trustedKeys,
      ...(opts.require ? { require: opts.require } : {}),
    });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** An explicit path (`/…`, `./…`, `oci:…`) or one that exists is a layout; anything else an image reference. */
export async function verifyTarget(opts: { target: string; trustedKeys: readonly string[]; require?: readonly string[] }): Promise<ImageVerification[]> {
  const local = opts.target.replace(/^oci:/, "");
  const dir = (await splitTarget(local)).layoutDir;
  const isPath =
    /^(oci:|\/|\.\.?\/)/.test(opts.target) ||
    (await access(dir).then(
      () => true,
      () => false,
    ));
  return isPath
    ? verifyLayoutImages(opts)
    : verifyRegistryImage({ ref: opts.target, trustedKeys: opts.trustedKeys, ...(opts.require ? { require: opts.require } : {}) });
}
