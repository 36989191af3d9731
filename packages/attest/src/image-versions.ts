/**
 * Image versions in a layout, and how many of them it keeps. The builder tags each image it
 * makes with its version (the short input digest); the signer adds, per manifest, the signature
 * tag (`sha256-<hex>.sig`) and the referrers tag (`sha256-<hex>`). Without a limit an image's
 * layout grew by those three tags and their blobs with every rebuild, for ever: disk, and an
 * `index.json` that every tag rewrites whole.
 *
 * `recordSigned` is the signer's step after it signed a version and recorded it as the key's
 * actual state: it marks that version signed now (`SIGNED_AT` on its index entry) and keeps it
 * and the `keep - 1` others signed most recently, dropping the rest with their signature and
 * referrers tags, then the blobs nothing kept holds (OciLayout.collect). A version never marked
 * signed (a build not yet signed, or one a sign refused) is not dropped, but a version signed
 * before versions were marked, with a signature tag and no mark, goes first.
 */
import { HOLDS_ANNOTATION_PREFIX, REF_NAME, type Collected, type Descriptor, type ImageIndex, type OciLayout } from "./oci.ts";
import { referrersTag } from "./attestation.ts";
import { signatureTag } from "./simple-signing.ts";
import type { Digest } from "@homeostat/core/digest";

/** The annotation on a version's `index.json` entry that says when the signer last signed it (ISO 8601, UTC). */
export const SIGNED_AT = "io.homeostat.signed";

/** Whether `tag` names an image version, not a manifest's signature or referrers (`sha256-<hex>[.sig]`). */
export function isVersionTag(tag: string): boolean {
  return !/^sha256-[0-9a-f]{64}(\.sig)?$/.test(tag);
}

/** The annotations that make an image version's entry hold its SBOM and provenance (OciLayout.collect). */
export function versionHolds(o: { sbom: Digest; provenance: Digest }): Record<string, string> {
  return { [`${HOLDS_ANNOTATION_PREFIX}sbom`]: o.sbom, [`${HOLDS_ANNOTATION_PREFIX}provenance`]: o.provenance };
}

/**
 * Marks `version` (tagged at `manifest`) signed at `now`, and keeps it and the `keep - 1`
 * versions signed most recently; see the module's comment. Blobs are collected after `graceMs`
 * (a build's, written before its tag), by a sweep at most every tenth of it: what a sweep could
 * take grows no faster, and an image signed twice a second (bench:storm's latency scenario)
 * swept its thousands of young blobs on every sign (the signer's CPU +45 %). Does nothing when
 * the tag names another manifest by now (a newer build of the same version): that build's sign
 * decides.
 */
export async function recordSigned(layout: OciLayout, o: { version: string; manifest: Digest; keep: number; graceMs: number; now?: Date }): Promise<Collected> {
  if (!Number.isInteger(o.keep) || o.keep < 1) throw new RangeError(`keep must be a positive integer, not ${o.keep}`);
  const now = o.now ?? new Date();
  return layout.collect((ix) => kept(ix, { ...o, signedAt: now.toISOString() }), { graceMs: o.graceMs, sweepEveryMs: o.graceMs / 10, now: now.getTime() });
}

function kept(ix: ImageIndex, o: { version: string; manifest: Digest; keep: number; signedAt: string }): ImageIndex {
  const tagOf = (m: Descriptor) => m.annotations?.[REF_NAME];
  const own = ix.manifests.find((m) => tagOf(m) === o.version);
  if (own?.digest !== o.manifest) return ix;
  const marked: Descriptor = { ...own, annotations: { ...own.annotations, [SIGNED_AT]: o.signedAt } };
  const entries = ix.manifests.map((m) => (m === own ? marked : m));
  const tags = new Set(entries.map(tagOf));
  // The others signed, latest first: marked, or (signed before marks existed) with a signature
  // tag, which sort last. The version just signed is kept whatever another signer's clock said.
  const signedAt = (m: Descriptor) => m.annotations?.[SIGNED_AT] ?? "";
  const others = entries
    .filter((m) => {
      const tag = tagOf(m);
      return m !== marked && tag !== undefined && isVersionTag(tag) && (signedAt(m) !== "" || tags.has(signatureTag(m.digest)));
    })
    .sort((a, b) => (signedAt(a) < signedAt(b) ? 1 : signedAt(a) > signedAt(b) ? -1 : 0));
  const dropped = new Set(others.slice(o.keep - 1));
  // A manifest two versions share stays signed while either is kept.
  const keptManifests = new Set(entries.filter((m) => !dropped.has(m)).map((m) => m.digest));
  const theirTags = new Set([...dropped].filter((m) => !keptManifests.has(m.digest)).flatMap((m) => [signatureTag(m.digest), referrersTag(m.digest)]));
  return { ...ix, manifests: entries.filter((m) => !dropped.has(m) && !theirTags.has(tagOf(m) ?? "")) };
}
