/**
 * Attestation: signed statements about an image (its SBOM, its SLSA provenance) in the formats
 * that cosign, Sigstore and in-toto tooling verify without Homeostat.
 *
 * - Statement: in-toto Statement v1 whose subject is the image (repository name, manifest
 *   sha256) and whose predicate is the SBOM or the provenance document.
 * - Envelope: DSSE over the statement (PAE signing, payloadType application/vnd.in-toto+json),
 *   packed as a Sigstore bundle v0.3 with public-key verification material (hint = key id),
 *   made by `@sigstore/sign`'s DSSEBundleBuilder with no witnesses: offline, no Rekor, no TSA.
 * - Attachment: an OCI 1.1 artifact manifest (artifactType = the bundle media type, the empty
 *   config, one layer = the bundle, `subject` = the image manifest, annotation
 *   `dev.sigstore.bundle.predicateType`) — cosign's layout for bundles. OCI layouts and
 *   Distribution 2.8 have no referrers API, so the referrers fallback tag `sha256-<hex>` holds
 *   an image index listing the image's referrers.
 *
 * One attestation per predicate type per image: attesting again replaces the entry of that
 * type, unless it already carries exactly this statement signed by this key (idempotent, so a
 * redelivered sign request writes nothing new).
 */
import { bundleFromJSON, bundleToJSON, type SerializedBundle } from "@sigstore/bundle";
import { DSSEBundleBuilder } from "@sigstore/sign";
import { sha256HexSchema, type Digest } from "@homeostat/core/digest";
import { z } from "zod";
import { dsse } from "@sigstore/core";
import {
  blobDescriptor,
  imageIndexSchema,
  imageManifestSchema,
  indexBytes,
  manifestBytes,
  mediaTypes,
  OciJsonError,
  OciLayout,
  parseOciJson,
  type Descriptor,
} from "./oci.ts";
import { parsePublicKey, verifyDer, type Signer } from "./keys.ts";
import { readVerifiedBlob } from "./simple-signing.ts";

export const IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1";
export const CYCLONEDX_PREDICATE_TYPE = "https://cyclonedx.org/bom";
/** Re-exported so that callers find both predicate types where attestations are made. */
/** The in-toto predicate type of SLSA v1 provenance. */
export const SLSA_PROVENANCE_PREDICATE_TYPE = "https://slsa.dev/provenance/v1";
/** The annotation cosign puts on a bundle's artifact manifest to say what it attests. */
export const PREDICATE_TYPE_ANNOTATION = "dev.sigstore.bundle.predicateType";
/** The OCI empty descriptor's content, `{}`. */
const EMPTY_JSON = "{}";

/** An in-toto Statement v1 as read from a signed payload: the fields verification relies on. */
export const statementSchema = z.object({
  _type: z.literal(IN_TOTO_STATEMENT_TYPE, { error: "not an in-toto Statement v1" }),
  subject: z.array(z.object({ name: z.string(), digest: z.object({ sha256: sha256HexSchema }) })),
  predicateType: z.string(),
  predicate: z.unknown(),
});
export type Statement = z.infer<typeof statementSchema>;

export type Attestation = { predicateType: string; predicate: unknown };

export type AttachedAttestation = {
  predicateType: string;
  /** The artifact manifest that carries the bundle (listed under the referrers tag). */
  manifest: Digest;
  bundle: Digest;
  /** False when an identical attestation by this key was already attached. */
  signed: boolean;
};

export class AttestationError extends Error {}

/** The referrers fallback tag of a manifest: `sha256-<hex>` (OCI distribution-spec 1.1). */
export function referrersTag(subject: Digest): string {
  return subject.replace(":", "-");
}

/** The statement's canonical text: fixed field order, so equal statements are equal bytes. */
export function statementBytes(subject: { name: string; digest: Digest }, a: Attestation): Buffer {
  const statement: Statement = {
    _type: IN_TOTO_STATEMENT_TYPE,
    subject: [{ name: subject.name, digest: { sha256: subject.digest.slice("sha256:".length) } }],
    predicateType: a.predicateType,
    predicate: a.predicate,
  };
  return Buffer.from(JSON.stringify(statement), "utf8");
}

/** DSSE-signs `statement` and packs it as a Sigstore bundle v0.3 (JSON form). */
export async function signStatement(statement: Buffer, signer: Signer): Promise<SerializedBundle> {
  const builder = new DSSEBundleBuilder({
    witnesses: [],
    signer: {
      sign: async (pae: Buffer) => ({ signature: await signer.sign(pae), key: { $case: "publicKey", publicKey: signer.publicKeyPem, hint: signer.keyId } }),
    },
  });
  return bundleToJSON(await builder.create({ data: statement, type: mediaTypes.inToto }));
}

/**
 * Signs each attestation about the image `subject` in the layout and lists it under the
 * image's referrers fallback tag. `name` is the statement subject's name (the repository).
 * Returns one result per attestation, in the order given.
 */
export async function attestImage(opts: {
  layoutDir: string;
  subject: Digest;
  name: string;
  attestations: Attestation[];
  signer: Signer;
}): Promise<AttachedAttestation[]> {
  const layout = await OciLayout.open(opts.layoutDir);
  const subjectBytes = await readVerifiedBlob(layout, opts.subject, "image manifest");
  const subject: Descriptor = { mediaType: mediaTypes.manifest, digest: opts.subject, size: subjectBytes.length };
  const existing = await referrers(layout, opts.subject);
  const out: AttachedAttestation[] = [];
  const added: Descriptor[] = [];
  // The new blobs are written together once all are made, so that their fsyncs overlap; nothing
  // names them until the referrers tag does.
  const writes: [data: string, mediaType: string][] = [];
  const config = blobDescriptor(EMPTY_JSON, mediaTypes.empty);
  for (const a of opts.attestations) {
    const statement = statementBytes({ name: opts.name, digest: opts.subject }, a);
    const kept = await findOwnAttestation(layout, existing, a.predicateType, statement, opts.signer);
    if (kept) {
      out.push({ ...kept, predicateType: a.predicateType, signed: false });
      continue;
    }
    const bundleText = JSON.stringify(await signStatement(statement, opts.signer));
    const bundle = blobDescriptor(bundleText, mediaTypes.sigstoreBundle);
    const annotations = { [PREDICATE_TYPE_ANNOTATION]: a.predicateType };
    const manifestText = manifestBytes({ artifactType: mediaTypes.sigstoreBundle, config, layers: [bundle], subject, annotations });
    const manifest = blobDescriptor(manifestText, mediaTypes.manifest);
    writes.push([bundleText, bundle.mediaType], [manifestText, manifest.mediaType]);
    added.push({ ...manifest, artifactType: mediaTypes.sigstoreBundle, annotations });
    out.push({ predicateType: a.predicateType, manifest: manifest.digest, bundle: bundle.digest, signed: true });
  }
  if (writes.length > 0) writes.push([EMPTY_JSON, config.mediaType]);
  await Promise.all(writes.map(([data, mediaType]) => layout.writeBlob(data, mediaType)));
  if (added.length > 0) await addReferrers(layout, opts.subject, added);
  return out;
}

/** The referrers listed under the subject's fallback tag (empty when there is none). */
export async function referrers(layout: OciLayout, subject: Digest): Promise<Descriptor[]> {
  const tagged = await layout.resolve(referrersTag(subject));
  if (!tagged) return [];
  const bytes = await readVerifiedBlob(layout, tagged.digest, "referrers index");
  try {
    return parseOciJson(imageIndexSchema, bytes, `referrers index ${tagged.digest}`).manifests;
  } catch (e) {
    throw e instanceof OciJsonError ? new AttestationError(e.message) : e;
  }
}

/**
 * Lists `entries` under the fallback tag in one update of the index, each replacing the entry
 * for its predicate type (of two entries with one type, the later).
 */
async function addReferrers(layout: OciLayout, subject: Digest, entries: Descriptor[]): Promise<void> {
  const byType = new Map(entries.map((e) => [e.annotations?.[PREDICATE_TYPE_ANNOTATION], e]));
  await layout.updateTag(referrersTag(subject), async () => {
    // Re-read under the lock: another signer may have added a referrer meanwhile.
    const others = (await referrers(layout, subject)).filter((d) => !byType.has(d.annotations?.[PREDICATE_TYPE_ANNOTATION]));
    const manifests = [...others, ...byType.values()].sort((a, b) => (a.digest < b.digest ? -1 : a.digest > b.digest ? 1 : 0));
    return layout.writeBlob(indexBytes({ manifests }), mediaTypes.index);
  });
}

/** An attached attestation of this type holding exactly `statement`, validly signed by `signer`. */
async function findOwnAttestation(
  layout: OciLayout,
  existing: Descriptor[],
  predicateType: string,
  statement: Buffer,
  signer: Signer,
): Promise<{ manifest: Digest; bundle: Digest } | undefined> {
  const entry = existing.find((d) => d.annotations?.[PREDICATE_TYPE_ANNOTATION] === predicateType);
  if (!entry) return undefined;
  try {
    const m = parseOciJson(imageManifestSchema, await readVerifiedBlob(layout, entry.digest, "attestation manifest"), "attestation manifest");
    const layer = m.layers[0];
    if (!layer || layer.mediaType !== mediaTypes.sigstoreBundle) return undefined;
    const bundle = bundleFromJSON(JSON.parse((await readVerifiedBlob(layout, layer.digest, "attestation bundle")).toString("utf8")));
    if (bundle.content.$case !== "dsseEnvelope") return undefined;
    const envelope = bundle.content.dsseEnvelope;
    if (!envelope.payload.equals(statement) || envelope.payloadType !== mediaTypes.inToto) return undefined;
    const sig = envelope.signatures[0]?.sig;
    const pae = dsse.preAuthEncoding(envelope.payloadType, envelope.payload);
    return sig && verifyDer(parsePublicKey(signer.publicKeyPem), pae, sig) ? { manifest: entry.digest, bundle: layer.digest } : undefined;
  } catch {
    return undefined; // anything odd about the old attestation: replace it
  }
}
