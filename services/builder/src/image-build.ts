/**
 * Image builds: package archives in, OCI image layout out, at `<dataDir>/oci/<image name>`.
 *
 * - layers: one per package, in request order; the layer IS the package archive (gzip tar),
 *   imported from the artifact store (re-hashed on the way in), its diff_id from the request;
 * - config: architecture amd64, os linux, created = SOURCE_DATE_EPOCH (RFC 3339),
 *   config{User, Env (K=V sorted by byte order), Entrypoint, Cmd, WorkingDir, Labels =
 *   annotations} (empty fields left out), rootfs{type: layers, diff_ids}, one history entry per
 *   layer;
 * - manifest: canonical bytes; annotations = the image annotations plus
 *   org.opencontainers.image.version and org.opencontainers.image.created;
 * - SBOM: CycloneDX 1.6 JSON (core/sbom) naming the manifest digest, stored as a blob of the
 *   layout (for the signer to attest);
 * - provenance: the SLSA v1 predicate (core/provenance), also a blob of the layout for the
 *   signer to attest; written after the manifest and referenced by nothing in the image, as it
 *   holds real times and an invocation id;
 * - tag = version, set last (atomically): a layout never shows a half-written image.
 *
 * All JSON is written with a fixed field order, so the same request gives the same digests
 * (all but the provenance's, which differs by design from build to build).
 */
import path from "node:path";
import { type BuildOutputs } from "@homeostat/core/contracts";
import { type ImageBuildPlan } from "@homeostat/catalog";
import { byteOrder, sortedRecord, type Digest } from "@homeostat/core/digest";
import { type Descriptor, manifestBytes, mediaTypes, OciLayout } from "@homeostat/attest";
import { PROVENANCE_MEDIA_TYPE, slsaProvenance } from "./provenance.ts";
import { imageSbom, SBOM_MEDIA_TYPE } from "./sbom.ts";
import type { BuildContext } from "./context.ts";
import { BuildFailure, MissingArtifactError } from "./errors.ts";
import { ArtifactStore } from "./store.ts";

export const ANNOTATION_VERSION = "org.opencontainers.image.version";
export const ANNOTATION_CREATED = "org.opencontainers.image.created";

/** SOURCE_DATE_EPOCH as RFC 3339 UTC without fractional seconds, e.g. 1970-01-01T00:00:00Z. */
export function epochToRfc3339(epoch: number): string {
  return new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The image config JSON (OCI image-spec config.md), fields in a fixed order. */
export function imageConfigBytes(req: ImageBuildPlan, diffIds: Digest[]): string {
  const created = epochToRfc3339(req.sourceDateEpoch);
  const c = req.config;
  const config: Record<string, unknown> = {};
  if (c.user) config.User = c.user;
  const env = Object.entries(c.env)
    .map(([k, v]) => `${k}=${v}`)
    .sort(byteOrder);
  if (env.length > 0) config.Env = env;
  if (c.entrypoint.length > 0) config.Entrypoint = c.entrypoint;
  if (c.cmd.length > 0) config.Cmd = c.cmd;
  if (c.workdir) config.WorkingDir = c.workdir;
  if (Object.keys(c.annotations).length > 0) config.Labels = sortedRecord(c.annotations);
  return JSON.stringify({
    created,
    architecture: "amd64",
    os: "linux",
    config,
    rootfs: { type: "layers", diff_ids: diffIds },
    history: req.packages.map((p) => ({ created, created_by: `homeostat: package ${p.name}@${p.version}`, comment: p.archive })),
  });
}

export async function buildImage(req: ImageBuildPlan, ctx: BuildContext): Promise<BuildOutputs> {
  const startedOn = new Date();
  const store = new ArtifactStore(ctx.dataDir);
  const log = ctx.log ?? (() => {});
  for (const [k] of Object.entries(req.config.env)) {
    if (k === "" || k.includes("=")) throw new BuildFailure(`image ${req.name}: bad environment variable name ${JSON.stringify(k)}`);
  }
  const layoutDir = path.join(path.resolve(ctx.dataDir), "oci", req.name);
  const layout = await OciLayout.open(layoutDir);

  const layers: Descriptor[] = [];
  for (const p of req.packages) {
    const archive = p.archive as Digest;
    if (!(await store.has(archive))) throw new MissingArtifactError(`package ${p.name}@${p.version}: archive ${archive} is not in the store`);
    const d = await layout.importBlob(store.path(archive), archive, mediaTypes.layerGzip);
    if (d.size !== p.size) log(`package ${p.name}@${p.version}: stored archive is ${d.size} bytes, request says ${p.size}`);
    layers.push({ mediaType: mediaTypes.layerGzip, digest: d.digest, size: d.size });
  }
  const config = await layout.writeBlob(imageConfigBytes(req, req.packages.map((p) => p.diffId as Digest)), mediaTypes.config);
  const annotations: Record<string, string> = {
    ...req.config.annotations,
    [ANNOTATION_VERSION]: req.version,
    [ANNOTATION_CREATED]: epochToRfc3339(req.sourceDateEpoch),
  };
  const manifest = await layout.writeBlob(manifestBytes({ config, layers, annotations }), mediaTypes.manifest);
  const sbom = await layout.writeBlob(
    imageSbom({
      name: req.name,
      version: req.version,
      epoch: req.sourceDateEpoch,
      manifest: manifest.digest,
      packages: req.packages.map((p) => ({ name: p.name, version: p.version, archive: p.archive as Digest, diffId: p.diffId as Digest, ...(p.license ? { license: p.license } : {}) })),
    }),
    SBOM_MEDIA_TYPE,
  );
  const provenance = await layout.writeBlob(JSON.stringify(slsaProvenance(req, { startedOn, finishedOn: new Date() })), PROVENANCE_MEDIA_TYPE);
  await layout.tag(req.version, manifest);
  log(`image ${req.name}:${req.version}: manifest ${manifest.digest}, ${layers.length} layers, sbom ${sbom.digest}, provenance ${provenance.digest}`);
  return { manifest: manifest.digest, config: config.digest, sbom: sbom.digest, provenance: provenance.digest, location: `${layout.dir}:${req.version}` };
}
