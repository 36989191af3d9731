/**
 * Verify: offline checks of Homeostat (and cosign key-based) signatures, for tests and for
 * `homeostat verify`. Nothing here trusts anything in the layout except through a key the
 * caller passes in; every failure is a VerificationError with a machine-readable `reason`
 * and a plain message.
 */
import { access } from "node:fs/promises";
import path from "node:path";
import type { Digest } from "@homeostat/core/digest";
import { OciLayout } from "@homeostat/core/oci";
import { BlobSigningError, CorruptBlobError as CorruptStoreBlob, readStoreBlob } from "./blob-signing.ts";
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
  | "reference-mismatch";

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
  return new VerificationError("bad-signature", `the signature does not verify with ${keys.length === 1 ? "the trusted key" : `any of the ${keys.length} trusted keys`}`);
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
  let layers: { mediaType?: unknown; digest?: unknown; annotations?: Record<string, unknown> }[];
  try {
    const m = JSON.parse(sigManifestBytes.toString("utf8")) as { layers?: unknown };
    if (!Array.isArray(m.layers)) throw new Error("no layers");
    layers = m.layers as typeof layers;
  } catch {
    throw new VerificationError("corrupt", `signature manifest ${sigDesc.digest} is not an OCI manifest with layers`);
  }
  const candidates = layers.filter((l) => l && l.mediaType === SIMPLE_SIGNING_MEDIA_TYPE);
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
  const first = failures[0]!;
  if (failures.length === 1) throw first;
  throw new VerificationError(first.reason, `no signature in ${sigDesc.digest} verified: ${failures.map((f) => f.message).join("; ")}`);
}

async function checkLayer(
  layout: OciLayout,
  layer: { digest?: unknown; annotations?: Record<string, unknown> },
  keys: TrustedKey[],
  manifest: Digest,
  reference: string | undefined,
): Promise<Omit<VerifiedImage, "manifest" | "signatureTag" | "signatureManifest"> | VerificationError> {
  if (typeof layer.digest !== "string" || !/^sha256:[0-9a-f]{64}$/.test(layer.digest)) {
    return new VerificationError("corrupt", "a signature layer has no valid digest");
  }
  const payloadDigest = layer.digest as Digest;
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
export async function verifyStoreBlob(opts: { dataDir: string; blob: Digest; signature: Digest; trustedKeys: readonly string[] }): Promise<{ blob: Digest; signature: Digest; keyId: string }> {
  const read = async (d: Digest, what: string): Promise<Buffer> => {
    try {
      return await readStoreBlob(opts.dataDir, d);
    } catch (e) {
      if (e instanceof BlobSigningError) throw new VerificationError(e instanceof CorruptStoreBlob ? "corrupt" : "not-found", `${what}: ${e.message}`);
      throw e;
    }
  };
  const data = await read(opts.blob, "archive");
  const sig = await read(opts.signature, "signature");
  const { keyId } = verifyBlobSignature({ data, signature: sig, trustedKeys: opts.trustedKeys });
  return { blob: opts.blob, signature: opts.signature, keyId };
}
