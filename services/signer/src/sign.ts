/**
 * Sign: turns one admitted build (admit.ts: verified, and located by the signer itself) into
 * signatures stored next to its artifacts.
 *
 * - image:   outputs.location is `<layout dir>:<tag>`, outputs.manifest the image manifest
 *            digest; the manifest is signed cosign-style with reference
 *            `<imageRepository>/<name>:<version>` and the signature tagged `sha256-<hex>.sig`
 *            in the same layout. Role `image` -> the signature manifest digest. Then the SBOM
 *            (outputs.sbom) and the SLSA provenance (outputs.provenance), blobs of the layout,
 *            are attested (attestation.ts): roles `sbom` and `provenance` -> the attestation
 *            manifests listed under the referrers tag `sha256-<hex>`. With a registry
 *            configured, everything goes up by digest as it is made, and then the image tag,
 *            the signature tag and the referrers tag.
 * - package: outputs.archive (a blob in `<dataDir>/store/blobs/sha256/`) is signed
 *            sign-blob style. Role `archive` -> the signature blob digest in the store.
 *
 * A build whose steps ran unsandboxed (only admitted with HOMEOSTAT_SIGN_UNSANDBOXED=true)
 * says so in what is signed: an image signature's optional section carries
 * `homeostat.isolation: none` (and its provenance attestation records the same).
 *
 * Recording the result in the key's status is the caller's job (handle.ts).
 */
import path from "node:path";
import type { BuildIsolationKind, BuildOutputs } from "@homeostat/core/contracts";
import type { Key } from "@homeostat/core/key";
import type { Digest } from "@homeostat/core/digest";
import {
  type Attestation,
  attestImage,
  CYCLONEDX_PREDICATE_TYPE,
  type Collected,
  OciLayout,
  readVerifiedBlob,
  recordSigned,
  referrersTag,
  Registry,
  registryRepository,
  SignatureError,
  signBlob,
  type Signer,
  signImage,
  SLSA_PROVENANCE_PREDICATE_TYPE,
  type StartedUploads,
} from "@homeostat/attest";

/** The request itself cannot be signed as it stands (retrying will not help). */
export class SignRequestError extends Error {}

/** A build to sign, as admission found it: never taken from a message as it stands. */
export type VerifiedBuild = {
  key: Key;
  kind: "package" | "image";
  name: string;
  version: string;
  inputDigest: Digest;
  /** `location`: the layout and tag, or the archive's store path, derived by the signer. */
  outputs: BuildOutputs;
  /** How the steps ran; absent is taken as sandboxed (bubblewrap). */
  isolation?: BuildIsolationKind;
  /** The builder key that vouched for the build. */
  builderKeyId?: string;
};

export type SignContext = {
  dataDir: string;
  /** e.g. `registry.example/homeostat` (config HOMEOSTAT_IMAGE_REPOSITORY). */
  imageRepository: string;
  signer: Signer;
  /** When set, the image, its signature and its attestations are pushed there once all are made. */
  registry?: Registry | undefined;
  /** The uploads `startSignUploads` opened for this sign during its admission; opened here otherwise. */
  uploads?: StartedUploads | undefined;
};

export type SignResult = {
  /** Signature digests by role: `image` (signature manifest) or `archive` (signature blob). */
  signatures: Record<string, Digest>;
  keyId: string;
};

/**
 * Splits `<layout dir>:<tag>` at the last colon (registry tags never contain one, so a
 * directory may). A relative directory is taken relative to the data directory.
 */
export function parseImageLocation(location: string, dataDir: string): { layoutDir: string; tag: string } {
  const i = location.lastIndexOf(":");
  if (i <= 0 || i === location.length - 1) throw new SignRequestError(`image location ${JSON.stringify(location)} is not <layout dir>:<tag>`);
  return { layoutDir: path.resolve(dataDir, location.slice(0, i)), tag: location.slice(i + 1) };
}

/** `<imageRepository>/<name>:<version>`, the docker-reference written into image signatures. */
export function imageReference(imageRepository: string, name: string, version: string): string {
  return `${imageRepositoryName(imageRepository, name)}:${version}`;
}

/** `<imageRepository>/<name>`, the subject name of an image's attestations. */
export function imageRepositoryName(imageRepository: string, name: string): string {
  return `${imageRepository.replace(/\/+$/, "")}/${name}`;
}

/** A JSON document the build left in the layout; one that is missing or corrupt cannot be attested. */
async function readJsonBlob(layout: OciLayout, digest: string, what: string): Promise<unknown> {
  try {
    return JSON.parse((await readVerifiedBlob(layout, digest, what)).toString("utf8"));
  } catch (e) {
    if (e instanceof SignatureError || e instanceof SyntaxError) throw new SignRequestError(e.message);
    throw e;
  }
}

export async function sign(req: VerifiedBuild, ctx: SignContext): Promise<SignResult> {
  if (req.kind === "image") return signImageBuild(req, ctx);
  const archive = req.outputs.archive as Digest | undefined;
  if (archive === undefined) throw new SignRequestError(`${req.key}: package build outputs carry no archive digest`);
  const r = await signBlob({ dataDir: ctx.dataDir, digest: archive, signer: ctx.signer });
  return { signatures: { archive: r.signature }, keyId: ctx.signer.keyId };
}

/**
 * The blob uploads an image's sign needs besides the image's own: its signature's payload and
 * config, and a bundle per attestation (their config is the empty one). Opened without any bytes,
 * so before the blobs exist; none without a registry. What no blob takes, `sign` cancels.
 */
export function startSignUploads(ctx: Pick<SignContext, "imageRepository" | "registry">, name: string, outputs: AttestedOutputs): StartedUploads | undefined {
  return ctx.registry?.startUploads(registryRepository(ctx.imageRepository, name), 2 + attestedDocuments(outputs).length);
}

type AttestedOutputs = Pick<BuildOutputs, "sbom" | "provenance">;

/** What an image's sign attests, of what its build made: role, predicate type and blob. */
function attestedDocuments(outputs: AttestedOutputs): [role: string, predicateType: string, blob: string][] {
  const documents: [role: string, predicateType: string, blob: string | undefined][] = [
    ["sbom", CYCLONEDX_PREDICATE_TYPE, outputs.sbom],
    ["provenance", SLSA_PROVENANCE_PREDICATE_TYPE, outputs.provenance],
  ];
  return documents.filter((d): d is [string, string, string] => d[2] !== undefined);
}

/** The cosign signature and the attestations, made at once, then (with a registry) the push. */
async function signImageBuild(req: VerifiedBuild, ctx: SignContext): Promise<SignResult> {
  const manifest = req.outputs.manifest as Digest | undefined;
  if (manifest === undefined) throw new SignRequestError(`${req.key}: image build outputs carry no manifest digest`);
  const { layoutDir, tag } = parseImageLocation(req.outputs.location, ctx.dataDir);
  // The registry gets everything untagged while it is made, and the three tags at the end (see
  // below). The image (admitted, so intact) goes up by digest while it is signed and attested,
  // the uploads of the signature's and the attestations' blobs are opened meanwhile (or during
  // admission: SignContext.uploads), and the signature's blobs go up as soon as it is made.
  // Failures are awaited (and thrown) below.
  const layout = await OciLayout.open(layoutDir);
  const repository = registryRepository(ctx.imageRepository, req.name);
  const present = attestedDocuments(req.outputs);
  const imageUp = ctx.registry?.push(layout, repository, tag, { untagged: true });
  imageUp?.catch(() => {});
  const uploads = ctx.uploads ?? startSignUploads(ctx, req.name, req.outputs);
  try {
    // The signature and the attestations are made at once: their blobs' fsyncs overlap.
    const signing = signImage({
      layoutDir,
      tag,
      manifest,
      reference: imageReference(ctx.imageRepository, req.name, req.version),
      signer: ctx.signer,
      key: req.key,
      ...(req.isolation === "none" ? { annotations: { "homeostat.isolation": "none" } } : {}),
    }).then((r) => {
      const up = ctx.registry?.pushReferenced(layout, repository, r.signatureTag, { uploads });
      up?.catch(() => {});
      return { r, signatureUp: up };
    });
    const attesting = (async () => {
      const attestations: Attestation[] = [];
      for (const [role, predicateType, blob] of present)
        attestations.push({ predicateType, predicate: await readJsonBlob(layout, blob, `${req.key}: the ${role}`) });
      return attestImage({ layoutDir, subject: manifest, name: imageRepositoryName(ctx.imageRepository, req.name), attestations, signer: ctx.signer });
    })();
    const [{ r, signatureUp }, attached] = await Promise.all([signing, attesting]);
    const signatures: Record<string, Digest> = { image: r.signatureManifest };
    for (const [i, [role]] of present.entries()) {
      const signature = attached[i];
      if (!signature) throw new Error(`internal: no signature was attached for the ${role}`);
      signatures[role] = signature.manifest;
    }
    if (ctx.registry) {
      // The attestations' manifests name the image as their subject: their blobs go up at once,
      // the manifests (by digest) once the image is there. Then the image's tag, the signature's
      // and the referrers' at once, each a single manifest: whichever a client sees first, the
      // image it refers to is already there.
      const registry = ctx.registry;
      const attestationBlobsUp = registry.pushBlobsOf(layout, repository, referrersTag(manifest), { uploads });
      attestationBlobsUp.catch(() => {});
      await imageUp;
      await Promise.all([signatureUp, attestationBlobsUp.then(() => registry.pushReferenced(layout, repository, referrersTag(manifest)))]);
      await Promise.all([tag, r.signatureTag, referrersTag(manifest)].map((t) => registry.push(layout, repository, t)));
    }
    return { signatures, keyId: ctx.signer.keyId };
  } finally {
    // A re-sign that kept its signature or attestations leaves uploads no blob took.
    void uploads?.cancel();
  }
}

/**
 * After an image's version is signed and recorded as its key's actual state: its layout keeps
 * that version and the `keep - 1` signed before it (image-versions.ts), and what they alone held
 * goes once older than `graceMs`, the longest a build writes blobs before its tag (the build
 * timeout). Housekeeping: the caller logs a failure and fails nothing for it.
 */
export async function keepRecentVersions(build: VerifiedBuild, o: { dataDir: string; keep: number; graceMs: number }): Promise<Collected> {
  const manifest = build.outputs.manifest as Digest | undefined;
  if (build.kind !== "image" || manifest === undefined) return { tags: [], blobs: 0, bytes: 0 };
  const { layoutDir } = parseImageLocation(build.outputs.location, o.dataDir);
  return recordSigned(await OciLayout.open(layoutDir), { version: build.version, manifest, keep: o.keep, graceMs: o.graceMs });
}
