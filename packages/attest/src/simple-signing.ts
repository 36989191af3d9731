/**
 * Simple signing: cosign-compatible image signatures stored next to the image.
 *
 * The payload is the cosign "simple signing" JSON naming the image's manifest digest; it is
 * signed (ECDSA P-256 / SHA-256, DER) and stored in the image's OCI layout the way cosign
 * stores it in a registry: an OCI image manifest whose one layer is the payload (media type
 * `application/vnd.dev.cosign.simplesigning.v1+json`) carrying the base64 signature in the
 * annotation `dev.cosignproject.cosign/signature`, tagged `sha256-<hex>.sig` where `<hex>` is
 * the signed manifest's digest. Pushing the layout's tags to a registry therefore gives
 * `cosign verify --key cosign.pub` what it looks for.
 */
import { canonicalJson, digestHex, digestSchema, sha256Digest, type Digest } from "@homeostat/core/digest";
import { z } from "zod";
import { blobDescriptor, imageManifestSchema, linkedContentSchema, manifestBytes, mediaTypes, OciJsonError, OciLayout, parseOciJson } from "./oci.ts";
import { parsePublicKey, verifyDer, type Signer } from "./keys.ts";

export const SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json";
export const SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature";
export const SIMPLE_SIGNING_TYPE = "cosign container image signature";
/** What cosign writes as `created` in signature configs: the zero time, so configs are stable. */
const ZERO_TIME = "0001-01-01T00:00:00Z";

export class SignatureError extends Error {}
/** A blob is absent from the layout. */
export class MissingBlobError extends SignatureError {}
/** A blob's bytes no longer hash to its digest. */
export class CorruptBlobError extends SignatureError {}

export type SimpleSigningPayload = {
  critical: {
    identity: { "docker-reference": string };
    image: { "docker-manifest-digest": Digest };
    type: typeof SIMPLE_SIGNING_TYPE;
  };
  optional: Record<string, string>;
};

/** The cosign signature tag of a manifest: `sha256:<hex>` -> `sha256-<hex>.sig`. */
export function signatureTag(manifest: string): string {
  const hex = digestHex(manifest);
  if (hex === undefined) throw new SignatureError(`not a sha256 manifest digest: ${JSON.stringify(manifest)}`);
  return `sha256-${hex}.sig`;
}

/**
 * The payload bytes. Canonical JSON, so the same image, reference and key always give the
 * same payload (and the field order matches cosign's own: critical{identity,image,type}, optional).
 */
export function simpleSigningPayload(opts: {
  reference: string;
  manifest: Digest;
  keyId: string;
  /** The Homeostat key this image belongs to, e.g. `image/nginx`. */
  key?: string | undefined;
  /** More `homeostat.*` entries for the optional section (e.g. a development build's `homeostat.isolation`). */
  annotations?: Record<string, string> | undefined;
}): string {
  if (digestHex(opts.manifest) === undefined) throw new SignatureError(`not a sha256 manifest digest: ${JSON.stringify(opts.manifest)}`);
  if (!/^[^\s]{1,4096}$/.test(opts.reference)) throw new SignatureError(`bad image reference: ${JSON.stringify(opts.reference)}`);
  const optional: Record<string, string> = { creator: "homeostat", "homeostat.keyId": opts.keyId };
  if (opts.key !== undefined) optional["homeostat.key"] = opts.key;
  for (const [k, v] of Object.entries(opts.annotations ?? {})) {
    if (!k.startsWith("homeostat.") || k in optional) throw new SignatureError(`annotation ${JSON.stringify(k)}: only new homeostat.* entries may be added`);
    optional[k] = v;
  }
  const payload: SimpleSigningPayload = {
    critical: {
      identity: { "docker-reference": opts.reference },
      image: { "docker-manifest-digest": opts.manifest },
      type: SIMPLE_SIGNING_TYPE,
    },
    optional,
  };
  return canonicalJson(payload);
}

/**
 * A simple-signing payload as read. cosign puts free-form values in `optional`; only strings
 * are kept (the key id among them), anything else there is ignored rather than trusted.
 */
const simpleSigningPayloadSchema = z.object({
  critical: z.object({
    identity: z.object({ "docker-reference": z.string() }),
    image: z.object({ "docker-manifest-digest": digestSchema }),
    type: z.literal(SIMPLE_SIGNING_TYPE),
  }),
  optional: z
    .record(z.string(), z.unknown())
    .nullish()
    .transform((o) => Object.fromEntries(Object.entries(o ?? {}).filter((e): e is [string, string] => typeof e[1] === "string"))),
});

/** Parses and shape-checks payload bytes; throws SignatureError naming what is wrong. */
export function parseSimpleSigningPayload(bytes: Uint8Array | string): SimpleSigningPayload {
  let json: unknown;
  try {
    json = JSON.parse(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("utf8"));
  } catch {
    throw new SignatureError("signature payload is not JSON");
  }
  const parsed = simpleSigningPayloadSchema.safeParse(json);
  if (!parsed.success)
    throw new SignatureError(`signature payload: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}`);
  return parsed.data;
}

/** Strict base64 (what cosign writes); undefined for anything else. */
export function decodeBase64(s: string): Buffer | undefined {
  if (s.length === 0 || s.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(s)) return undefined;
  return Buffer.from(s, "base64");
}

/** Reads a layout blob and checks its bytes still hash to its digest. */
export async function readVerifiedBlob(layout: OciLayout, digest: string, what: string): Promise<Buffer> {
  let data: Buffer;
  try {
    data = await layout.readBlob(digest as Digest);
  } catch (e) {
    throw new MissingBlobError(`${what} ${digest} is missing from ${layout.dir} (${(e as Error).message})`);
  }
  const actual = sha256Digest(data);
  if (actual !== digest) throw new CorruptBlobError(`${what} ${digest} in ${layout.dir} is corrupt: its content hashes to ${actual}`);
  return data;
}

export type ImageSignature = {
  /** The signed image manifest (or index). */
  manifest: Digest;
  /** The signature manifest, tagged `sha256-<hex>.sig`. */
  signatureManifest: Digest;
  /** The simple-signing payload blob (the signature manifest's layer). */
  payload: Digest;
  signatureTag: string;
  reference: string;
  keyId: string;
  /** False when an existing valid signature by the same key over the same payload was kept. */
  signed: boolean;
};

/**
 * Signs an image in an OCI layout and tags the signature `sha256-<hex>.sig` in the same
 * layout. The image is named by `manifest` (signed as given; it must be in the layout) or,
 * when that is absent, by `tag`. Idempotent: if the signature tag already holds a valid
 * signature by this key over this exact payload it is kept (so a redelivered request gives
 * the same digests); otherwise the tag is replaced by the new signature.
 */
export async function signImage(opts: {
  layoutDir: string;
  tag?: string | undefined;
  manifest?: Digest | undefined;
  /** docker-reference written into the payload, e.g. `registry.example/homeostat/nginx:1.27.0`. */
  reference: string;
  signer: Signer;
  /** The Homeostat key, recorded in the payload's optional section. */
  key?: string | undefined;
  /** More `homeostat.*` entries for the payload's optional section. */
  annotations?: Record<string, string> | undefined;
}): Promise<ImageSignature> {
  const layout = await OciLayout.open(opts.layoutDir);
  let manifest = opts.manifest;
  if (manifest === undefined) {
    if (opts.tag === undefined) throw new SignatureError("signImage needs a manifest digest or a tag");
    const d = await layout.resolve(opts.tag);
    if (!d) throw new SignatureError(`tag ${JSON.stringify(opts.tag)} is not in ${layout.dir}`);
    manifest = d.digest;
  }
  const tag = signatureTag(manifest);

  // Sign only what is really there: the manifest blob must exist, hash right and be a manifest.
  const imageManifestBytes = await readVerifiedBlob(layout, manifest, "image manifest");
  assertManifestJson(imageManifestBytes, manifest);

  const payloadText = simpleSigningPayload({ reference: opts.reference, manifest, keyId: opts.signer.keyId, key: opts.key, annotations: opts.annotations });
  const payloadBytes = Buffer.from(payloadText, "utf8");
  const payloadDigest = sha256Digest(payloadBytes);

  const existing = await findOwnSignature(layout, tag, payloadDigest, payloadBytes, opts.signer);
  if (existing) {
    return {
      manifest,
      signatureManifest: existing,
      payload: payloadDigest,
      signatureTag: tag,
      reference: opts.reference,
      keyId: opts.signer.keyId,
      signed: false,
    };
  }

  const signature = (await opts.signer.sign(payloadBytes)).toString("base64");
  const layer = blobDescriptor(payloadBytes, SIMPLE_SIGNING_MEDIA_TYPE, { [SIGNATURE_ANNOTATION]: signature });
  const configBytes = canonicalJson({
    architecture: "",
    os: "",
    created: ZERO_TIME,
    config: {},
    history: [{ created: ZERO_TIME }],
    rootfs: { type: "layers", diff_ids: [layer.digest] },
  });
  const config = blobDescriptor(configBytes, mediaTypes.config);
  const sigManifestBytes = manifestBytes({ config, layers: [layer] });
  // All three at once: their fsyncs overlap. Nothing names them until the tag below.
  const [, , sigDesc] = await Promise.all([
    layout.writeBlob(payloadBytes, layer.mediaType, layer.annotations),
    layout.writeBlob(configBytes, config.mediaType),
    layout.writeBlob(sigManifestBytes, mediaTypes.manifest),
  ]);
  await layout.tag(tag, sigDesc);
  return {
    manifest,
    signatureManifest: sigDesc.digest,
    payload: layer.digest,
    signatureTag: tag,
    reference: opts.reference,
    keyId: opts.signer.keyId,
    signed: true,
  };
}

function assertManifestJson(bytes: Buffer, digest: string): void {
  try {
    parseOciJson(linkedContentSchema, bytes, `blob ${digest}, to be signed as an image manifest,`);
  } catch (e) {
    throw e instanceof OciJsonError ? new SignatureError(e.message) : e;
  }
}

/** The current signature manifest, if it already holds this payload validly signed by this key. */
async function findOwnSignature(layout: OciLayout, tag: string, payloadDigest: Digest, payload: Buffer, signer: Signer): Promise<Digest | undefined> {
  const d = await layout.resolve(tag);
  if (!d) return undefined;
  try {
    const { layers } = parseOciJson(imageManifestSchema, await readVerifiedBlob(layout, d.digest, "signature manifest"), "signature manifest");
    const [l, ...more] = layers;
    if (l === undefined || more.length > 0) return undefined;
    if (l.mediaType !== SIMPLE_SIGNING_MEDIA_TYPE || l.digest !== payloadDigest) return undefined;
    await readVerifiedBlob(layout, payloadDigest, "signature payload");
    const sig = decodeBase64(l.annotations?.[SIGNATURE_ANNOTATION] ?? "");
    if (!sig) return undefined;
    return verifyDer(parsePublicKey(signer.publicKeyPem), payload, sig) ? d.digest : undefined;
  } catch {
    return undefined; // anything odd about the old signature: replace it
  }
}
