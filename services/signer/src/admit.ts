/**
 * Admission: what the signer checks before it signs anything, so that a Homeostat signature
 * means "built by the factory, in its sandbox, from exactly the inputs the catalog declares".
 *
 * A sign request names a key, an input digest and a build result by digest; it locates
 * nothing. The signer:
 * 1. reads the build result from its own content-addressed store under HOMEOSTAT_DATA (by
 *    digest, re-hashed): a result that is not there was not made by this factory's builder;
 * 2. checks its DSSE signature against the trusted builder keys (not the release key), and
 *    parses the statement's predicate strictly;
 * 3. checks that the result is about this key and input digest, and that the key's desired
 *    input digest in the state KV (written by the reconciler alone) is that input digest: the
 *    factory asked for exactly this build;
 * 4. refuses a build whose steps ran unsandboxed (the result's or the provenance's isolation
 *    `none`) unless HOMEOSTAT_SIGN_UNSANDBOXED=true, a development setting that is then marked
 *    in what is signed;
 * 5. re-hashes every blob it will sign or attest, and every blob an image manifest names,
 *    where the signer itself finds them: package blobs in the store, an image in
 *    `<data>/oci/<image name>` under the tag the result names, which must point at the
 *    manifest the result names; the provenance must name the same input digest.
 * What it returns (with the location derived from the data directory and the key) is what
 * gets signed and recorded. Any failure is a SignRefusedError with a reason.
 */
import path from "node:path";
import {
  BUILD_RESULT_PREDICATE_TYPE,
  CorruptBlobError,
  CorruptStoreBlobError,
  imageManifestSchema,
  MissingBlobError,
  MissingStoreBlobError,
  OciLayout,
  OciJsonError,
  openDsse,
  parseOciJson,
  readStoreBlob,
  readVerifiedBlob,
  storeBlobPath,
  VerificationError,
} from "@homeostat/attest";
import { buildResultPredicateSchema, parseKey, type BuildResultPredicate, type KeyStatus, type SignRequest } from "@homeostat/core";
import type { Digest } from "@homeostat/core/digest";
import type { VerifiedBuild } from "./sign.ts";

/** Why a sign request was refused (the `reason` attribute of homeostat.signer.refused). */
export const signRefusals = [
  /** The build result, or a blob it names, is not in the factory's store (or the image layout). */
  "not-in-store",
  /** A blob's bytes do not hash to its digest, or a document is malformed. */
  "corrupt",
  /** The build result is signed by a key that is not a trusted builder key. */
  "untrusted-builder",
  /** The build result's signature does not verify with the builder key it names. */
  "bad-builder-signature",
  /** The build result (or its provenance, or the image tag) is about another key, input or manifest. */
  "result-mismatch",
  /** The key's desired input digest in the state KV is not this one. */
  "not-desired",
  /** The build's steps ran unsandboxed and HOMEOSTAT_SIGN_UNSANDBOXED is not set. */
  "unsandboxed",
] as const;
export type SignRefusal = (typeof signRefusals)[number];

export class SignRefusedError extends Error {
  readonly reason: SignRefusal;
  constructor(reason: SignRefusal, message: string) {
    super(`sign refused (${reason}): ${message}`);
    this.reason = reason;
  }
}

export type AdmitContext = {
  dataDir: string;
  /** SPKI PEM public keys of the builders whose results are signed. */
  trustedBuilderKeys: readonly string[];
  /** HOMEOSTAT_SIGN_UNSANDBOXED: sign builds whose steps ran without the sandbox (development). */
  allowUnsandboxed: boolean;
  /** The key's status (state KV). */
  status: (key: SignRequest["key"]) => Promise<KeyStatus | undefined>;
  /**
   * Told once the build result is a trusted builder's and about this key and input: what the
   * caller prepares for signing then (registry uploads) overlaps the checks still to come, and is
   * undone by the caller when one refuses.
   */
  vouched?: (result: BuildResultPredicate) => void;
};

/** The build to sign, once every check passed; otherwise throws SignRefusedError. */
export async function admit(req: SignRequest, ctx: AdmitContext): Promise<VerifiedBuild> {
  const envelope = await storeBlob(ctx.dataDir, req.buildResult, "the build result");
  let opened;
  try {
    opened = openDsse(envelope, ctx.trustedBuilderKeys, BUILD_RESULT_PREDICATE_TYPE);
  } catch (e) {
    if (!(e instanceof VerificationError)) throw e;
    const reason = e.reason === "untrusted-key" ? "untrusted-builder" : e.reason === "bad-signature" ? "bad-builder-signature" : "corrupt";
    throw new SignRefusedError(reason, `build result ${req.buildResult}: ${e.message}`);
  }
  const parsed = buildResultPredicateSchema.safeParse(opened.statement.predicate);
  if (!parsed.success)
    throw new SignRefusedError("corrupt", `build result ${req.buildResult}: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`);
  const result = parsed.data;
  const { kind, name } = parseKey(req.key);
  if (result.key !== req.key || result.kind !== kind || result.name !== name || result.inputDigest !== req.inputDigest) {
    throw new SignRefusedError(
      "result-mismatch",
      `build result ${req.buildResult} is about ${result.key} with inputs ${result.inputDigest}, not ${req.key} with ${req.inputDigest}`,
    );
  }
  ctx.vouched?.(result);
  // The outputs are re-hashed while the key's status is read; a refusal for the status comes first.
  const checking = kind === "package" ? checkPackage(result, ctx.dataDir) : checkImage(result, ctx.dataDir);
  checking.catch(() => {});
  const desired = (await ctx.status(req.key))?.desiredInputDigest;
  if (desired !== req.inputDigest) {
    throw new SignRefusedError("not-desired", `${req.key} should be built from ${desired ?? "nothing yet"}, not ${req.inputDigest}`);
  }
  const { provenance, location } = await checking;
  const provenanceIsolation = provenance.buildDefinition?.internalParameters?.isolation;
  if (provenance.buildDefinition?.internalParameters?.inputDigest !== req.inputDigest) {
    throw new SignRefusedError(
      "result-mismatch",
      `the provenance of ${req.key} names inputs ${String(provenance.buildDefinition?.internalParameters?.inputDigest)}, not ${req.inputDigest}`,
    );
  }
  const unsandboxed = result.isolation === "none" || provenanceIsolation === "none";
  if (unsandboxed && !ctx.allowUnsandboxed) {
    throw new SignRefusedError(
      "unsandboxed",
      `${req.key}: the build's steps ran without the sandbox (isolation none); set HOMEOSTAT_SIGN_UNSANDBOXED=true to sign such builds in development`,
    );
  }
  return {
    key: req.key,
    kind,
    name,
    version: result.version,
    inputDigest: req.inputDigest as Digest,
    outputs: { ...result.outputs, location },
    isolation: unsandboxed ? "none" : result.isolation,
    builderKeyId: opened.keyId,
  };
}

/** Where the builder writes an image's layout, by the signer's own reckoning. */
export function imageLayoutDir(dataDir: string, name: string): string {
  return path.join(path.resolve(dataDir), "oci", name);
}

type Provenance = { buildDefinition?: { internalParameters?: { inputDigest?: unknown; isolation?: unknown } } };
/** What a check of a result's outputs found: its provenance and where its signed artifact is. */
type Checked = { provenance: Provenance; location: string };

/** The archive, metadata and provenance are intact in the store; returns the provenance and where the archive is. */
async function checkPackage(result: BuildResultPredicate, dataDir: string): Promise<Checked> {
  const { archive, metadata, provenance } = result.outputs;
  if (!archive || !metadata || !provenance) throw new SignRefusedError("corrupt", `${result.key}: a package result names its archive, metadata and provenance`);
  const [, , provenanceBytes] = await Promise.all([
    storeBlob(dataDir, archive, "the package archive"),
    storeBlob(dataDir, metadata, "the package metadata"),
    storeBlob(dataDir, provenance, "the provenance"),
  ]);
  return { provenance: json(provenanceBytes, "the provenance"), location: storeBlobPath(dataDir, archive) };
}

/**
 * The layout's tag `version` names the result's manifest, and the manifest, its config and
 * layers, the SBOM and the provenance are intact in the layout; returns the provenance and
 * the image's layout reference.
 */
async function checkImage(result: BuildResultPredicate, dataDir: string): Promise<Checked> {
  const { manifest, sbom, provenance } = result.outputs;
  if (!manifest || !sbom || !provenance) throw new SignRefusedError("corrupt", `${result.key}: an image result names its manifest, SBOM and provenance`);
  const layout = await OciLayout.open(imageLayoutDir(dataDir, result.name));
  const tagged = await layout.resolve(result.version);
  if (tagged?.digest !== manifest)
    throw new SignRefusedError(
      "result-mismatch",
      `${result.key}: tag ${result.version} in ${layout.dir} names ${tagged?.digest ?? "nothing"}, not ${manifest}`,
    );
  let m;
  try {
    m = parseOciJson(imageManifestSchema, await layoutBlob(layout, manifest, "the image manifest"), "image manifest");
  } catch (e) {
    if (e instanceof OciJsonError) throw new SignRefusedError("corrupt", e.message);
    throw e;
  }
  // Re-hashed all at once: the reads overlap in the thread pool.
  const [provenanceBytes] = await Promise.all([
    layoutBlob(layout, provenance, "the provenance"),
    layoutBlob(layout, sbom, "the SBOM"),
    ...[m.config, ...m.layers].map((d) => layoutBlob(layout, d.digest, "a blob of the image")),
  ]);
  return {
    provenance: json(provenanceBytes, "the provenance"),
    location: `${imageLayoutDir(dataDir, result.name)}:${result.version}`,
  };
}

async function storeBlob(dataDir: string, digest: string, what: string): Promise<Buffer> {
  try {
    return await readStoreBlob(dataDir, digest);
  } catch (e) {
    if (e instanceof MissingStoreBlobError) throw new SignRefusedError("not-in-store", `${what} ${digest} is not in the factory's store`);
    if (e instanceof CorruptStoreBlobError) throw new SignRefusedError("corrupt", e.message);
    throw e;
  }
}

async function layoutBlob(layout: OciLayout, digest: string, what: string): Promise<Buffer> {
  try {
    return await readVerifiedBlob(layout, digest, what);
  } catch (e) {
    if (e instanceof MissingBlobError) throw new SignRefusedError("not-in-store", e.message);
    if (e instanceof CorruptBlobError) throw new SignRefusedError("corrupt", e.message);
    throw e;
  }
}

function json(bytes: Buffer, what: string): Provenance {
  try {
    return JSON.parse(bytes.toString("utf8")) as Provenance;
  } catch {
    throw new SignRefusedError("corrupt", `${what} is not JSON`);
  }
}
