/**
 * Image builds: package archives in, OCI image layout out, at `<dataDir>/oci/<image name>`.
 *
 * - layers: one per package, in request order; the layer IS the package archive (gzip tar),
 *   imported from the artifact store (re-hashed on the way in), its diff_id from the request;
 *   then the image's own layer, made here: /etc/passwd and /etc/group with root and the
 *   image's default user (`nonroot`, the config's uid[:gid], never root; its shell /bin/sh when
 *   the image has one), /home/nonroot (0700, theirs), /root (0700) and /tmp (1777). A package
 *   shipping /etc/passwd or /etc/group is refused: one place writes the accounts;
 * - runtime closure (runtime-closure.ts): the layers are read as the image's filesystem and an
 *   image whose entrypoint, or any other program in it, lacks its loader, a library or its
 *   `#!` interpreter is refused with a BuildFailure naming each missing file and the package
 *   that needs it, before anything is written;
 * - config: architecture amd64, os linux, created = SOURCE_DATE_EPOCH (RFC 3339),
 *   config{User, Env (K=V sorted by byte order), Entrypoint, Cmd, WorkingDir, Labels =
 *   the manifest's annotations} (empty fields left out), rootfs{type: layers, diff_ids}, one
 *   history entry per layer;
 * - manifest: canonical bytes; annotations = the image annotations plus
 *   org.opencontainers.image.version, .created (SOURCE_DATE_EPOCH), .revision (the input
 *   digest: exactly what was assembled) and .licenses (the packages' licences joined with AND,
 *   unless the catalog declares them);
 * - SBOM: CycloneDX 1.6 JSON (core/sbom) naming the manifest digest, stored as a blob of the
 *   layout (for the signer to attest); a package imported from a distribution keeps its purl;
 * - provenance: the SLSA v1 predicate (core/provenance), also a blob of the layout for the
 *   signer to attest; written after the manifest and referenced by nothing in the image, as it
 *   holds real times and an invocation id;
 * - tag = version, set last (atomically): a layout never shows a half-written image.
 *
 * All JSON is written with a fixed field order, so the same request gives the same digests
 * (all but the provenance's, which differs by design from build to build).
 */
import path from "node:path";
import { Writable } from "node:stream";
import { type BuildOutputs } from "@homeostat/core/contracts";
import { type ImageBuildPlan } from "@homeostat/catalog";
import { byteOrder, sortedRecord, type Digest } from "@homeostat/core/digest";
import { blobDescriptor, type Descriptor, manifestBytes, mediaTypes, OciLayout, versionHolds } from "@homeostat/attest";
import { PROVENANCE_MEDIA_TYPE, slsaProvenance } from "./provenance.ts";
import { imageSbom, SBOM_MEDIA_TYPE } from "./sbom.ts";
import type { BuildContext } from "./context.ts";
import { BuildFailure, MissingArtifactError } from "./errors.ts";
import { Rootfs, runtimeProblems } from "./runtime-closure.ts";
import { ArtifactStore } from "./store.ts";
import { inSpan } from "@homeostat/core/telemetry";
import { writeTarGzFromEntries, type MadeEntry, type TarGzResult } from "./tar.ts";

export const ANNOTATION_VERSION = "org.opencontainers.image.version";
export const ANNOTATION_CREATED = "org.opencontainers.image.created";
export const ANNOTATION_REVISION = "org.opencontainers.image.revision";
export const ANNOTATION_LICENSES = "org.opencontainers.image.licenses";

/** The name of an image's default user in its /etc/passwd (distroless's convention). */
export const IMAGE_USER_NAME = "nonroot";
/** What the image's own layer says it holds, in the config's history. */
const IMAGE_LAYER_HISTORY = "homeostat: image accounts and directories (/etc/passwd, /etc/group, /home/nonroot, /root, /tmp)";

/** SOURCE_DATE_EPOCH as RFC 3339 UTC without fractional seconds, e.g. 1970-01-01T00:00:00Z. */
export function epochToRfc3339(epoch: number): string {
  return new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** The config's User as uid and gid; BuildFailure unless numeric and not root (the catalog checks the same). */
export function imageUser(req: ImageBuildPlan): { uid: number; gid: number } {
  const m = /^(\d{1,10})(?::(\d{1,10}))?$/.exec(req.config.user);
  if (!m)
    throw new BuildFailure(
      `image ${req.name}: user ${JSON.stringify(req.config.user)} must be a numeric uid or uid:gid (the builder writes its /etc/passwd entry)`,
    );
  const uid = Number(m[1]);
  if (uid === 0) throw new BuildFailure(`image ${req.name}: user ${JSON.stringify(req.config.user)} is root; images run as an unprivileged user (e.g. 65532)`);
  return { uid, gid: m[2] === undefined ? uid : Number(m[2]) };
}

/** The files and directories of the image's own layer (see the module comment). */
export function imageLayerEntries(user: { uid: number; gid: number }, shell: string): MadeEntry[] {
  const name = IMAGE_USER_NAME;
  const home = `/home/${name}`;
  const passwd = `root:x:0:0:root:/root:/sbin/nologin\n${name}:x:${user.uid}:${user.gid}:${name}:${home}:${shell}\n`;
  const group = user.gid === 0 ? "root:x:0:\n" : `root:x:0:\n${name}:x:${user.gid}:\n`;
  return [
    { path: "etc", type: "directory", mode: 0o755 },
    { path: "etc/passwd", type: "file", mode: 0o644, content: Buffer.from(passwd) },
    { path: "etc/group", type: "file", mode: 0o644, content: Buffer.from(group) },
    { path: "home", type: "directory", mode: 0o755 },
    { path: `home/${name}`, type: "directory", mode: 0o700, uid: user.uid, gid: user.gid },
    { path: "root", type: "directory", mode: 0o700 },
    { path: "tmp", type: "directory", mode: 0o1777 },
  ];
}

/** The SPDX expression of all the packages' licences: each distinct one once, sorted, joined by AND. */
export function combinedLicenses(licenses: readonly (string | undefined)[]): string | undefined {
  const distinct = [...new Set(licenses.filter((l): l is string => !!l))].sort();
  if (distinct.length === 0) return undefined;
  return distinct.map((l) => (distinct.length > 1 && /\sOR\s/.test(l) ? `(${l})` : l)).join(" AND ");
}

/** The manifest's annotations (also the config's Labels). */
export function imageAnnotations(req: ImageBuildPlan): Record<string, string> {
  const licenses = combinedLicenses(req.packages.map((p) => p.license));
  return sortedRecord({
    ...(licenses ? { [ANNOTATION_LICENSES]: licenses } : {}),
    ...req.config.annotations,
    [ANNOTATION_VERSION]: req.version,
    [ANNOTATION_CREATED]: epochToRfc3339(req.sourceDateEpoch),
    [ANNOTATION_REVISION]: req.inputDigest,
  });
}

/** The image config JSON (OCI image-spec config.md), fields in a fixed order; the last diff_id is the image's own layer. */
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
  config.Labels = imageAnnotations(req);
  return JSON.stringify({
    created,
    architecture: "amd64",
    os: "linux",
    config,
    rootfs: { type: "layers", diff_ids: diffIds },
    history: [
      ...req.packages.map((p) => ({ created, created_by: `homeostat: package ${p.name}@${p.version}`, comment: p.archive })),
      { created, created_by: IMAGE_LAYER_HISTORY },
    ],
  });
}

/** Writes a builder-made layer into memory (it is a few hundred bytes). */
async function madeLayer(entries: readonly MadeEntry[], epoch: number): Promise<{ bytes: Buffer; tar: TarGzResult }> {
  const chunks: Buffer[] = [];
  const sink = new Writable({ write: (c: Buffer, _e, cb) => (chunks.push(c), cb()) });
  const tar = await writeTarGzFromEntries(entries, sink, { epoch });
  return { bytes: Buffer.concat(chunks), tar };
}

/**
 * The entries of the image's own layer, once the packages' layers, with them, make a filesystem
 * that can run: every archive read from the store in request order (a later layer's file wins)
 * and re-verified by what was read; a package shipping the accounts, or a missing runtime need,
 * is a BuildFailure.
 */
async function checkedImageLayer(req: ImageBuildPlan, store: ArtifactStore, user: { uid: number; gid: number }): Promise<MadeEntry[]> {
  const rootfs = new Rootfs();
  for (const p of req.packages) {
    const archive = p.archive as Digest;
    const corrupt = () =>
      new MissingArtifactError(`package/${p.name}`, archive, `package ${p.name}@${p.version}: stored archive ${archive} is corrupt`, { corrupt: true });
    const read = await rootfs.addLayer(store.path(archive), `${p.name}@${p.version}`).catch(async (e: unknown) => {
      if (!(await store.has(archive)))
        throw new MissingArtifactError(`package/${p.name}`, archive, `package ${p.name}@${p.version}: archive ${archive} is not in the store`);
      // An archive that no longer reads is corrupt, if its bytes say so; otherwise the error is the reader's.
      throw (await store.verify(archive)) ? e : corrupt();
    });
    if (read !== archive) throw corrupt();
  }
  for (const account of ["etc/passwd", "etc/group"]) {
    const e = rootfs.entries.get(account);
    if (e)
      throw new BuildFailure(`image ${req.name}: package ${e.from} ships /${account}, which the image builder writes (accounts come from the image's user)`);
  }
  const shell = "entry" in rootfs.resolve("/bin/sh") ? "/bin/sh" : "/sbin/nologin";
  const own = imageLayerEntries(user, shell);
  for (const e of own) rootfs.add(e.path, { type: e.type, mode: e.mode, ...(e.content ? { content: e.content } : {}), from: "(the image's own layer)" });
  const problems = runtimeProblems(rootfs, req.config);
  if (problems.length > 0) {
    throw new BuildFailure(
      `image ${req.name}: refused, it could not run: ${problems.length} missing runtime need${problems.length > 1 ? "s" : ""}:\n  ${problems.join("\n  ")}`,
    );
  }
  return own;
}

export async function buildImage(req: ImageBuildPlan, ctx: BuildContext): Promise<BuildOutputs> {
  const startedOn = new Date();
  // The packages' archives: a trial's image reads them from the factory's store.
  const inputs = new ArtifactStore(ctx.inputsDataDir ?? ctx.dataDir);
  const log = ctx.log ?? (() => {});
  for (const [k] of Object.entries(req.config.env)) {
    if (k === "" || k.includes("=")) throw new BuildFailure(`image ${req.name}: bad environment variable name ${JSON.stringify(k)}`);
  }
  const user = imageUser(req);
  // The image's filesystem, read before anything is written: what runs must find what it needs.
  const own = await inSpan("builder.check-runtime", {}, () => checkedImageLayer(req, inputs, user));

  const layoutDir = path.join(path.resolve(ctx.dataDir), "oci", req.name);
  const layout = await OciLayout.open(layoutDir);
  // Imported at once (each re-hashed on the way in: the reads overlap), listed in request order.
  const layers: Descriptor[] = await Promise.all(
    req.packages.map(async (p) => {
      const d = await layout.importBlob(inputs.path(p.archive as Digest), p.archive as Digest, mediaTypes.layerGzip);
      if (d.size !== p.size) log(`package ${p.name}@${p.version}: stored archive is ${d.size} bytes, request says ${p.size}`);
      return { mediaType: mediaTypes.layerGzip, digest: d.digest, size: d.size };
    }),
  );
  const ownLayer = await madeLayer(own, req.sourceDateEpoch);
  const ownDescriptor = blobDescriptor(ownLayer.bytes, mediaTypes.layerGzip);
  if (ownDescriptor.digest !== ownLayer.tar.digest)
    throw new Error(`image layer digest disagreement: ${ownDescriptor.digest} hashed, ${ownLayer.tar.digest} written`);
  layers.push(ownDescriptor);
  const configBytes = imageConfigBytes(req, [...req.packages.map((p) => p.diffId as Digest), ownLayer.tar.diffId]);
  const config = blobDescriptor(configBytes, mediaTypes.config);
  const manifestText = manifestBytes({ config, layers, annotations: imageAnnotations(req) });
  const manifest = blobDescriptor(manifestText, mediaTypes.manifest);
  const sbomText = imageSbom({
    name: req.name,
    version: req.version,
    epoch: req.sourceDateEpoch,
    manifest: manifest.digest,
    packages: req.packages.map((p) => ({
      name: p.name,
      version: p.version,
      archive: p.archive as Digest,
      diffId: p.diffId as Digest,
      ...(p.license ? { license: p.license } : {}),
      ...(p.purl ? { purl: p.purl } : {}),
    })),
  });
  const provenanceText = JSON.stringify(slsaProvenance(req, { startedOn, finishedOn: new Date() }));
  // Written together (their fsyncs overlap); the tag, last, is what makes them part of the layout.
  const [, , , sbom, provenance] = await Promise.all([
    layout.writeBlob(ownLayer.bytes, mediaTypes.layerGzip),
    layout.writeBlob(configBytes, mediaTypes.config),
    layout.writeBlob(manifestText, mediaTypes.manifest),
    layout.writeBlob(sbomText, SBOM_MEDIA_TYPE),
    layout.writeBlob(provenanceText, PROVENANCE_MEDIA_TYPE),
  ]);
  // The entry holds the SBOM and provenance too: the signer reads them, and they stay as long as the version.
  await layout.tag(req.version, { ...manifest, annotations: versionHolds({ sbom: sbom.digest, provenance: provenance.digest }) });
  log(`image ${req.name}:${req.version}: manifest ${manifest.digest}, ${layers.length} layers, sbom ${sbom.digest}, provenance ${provenance.digest}`);
  return { manifest: manifest.digest, config: config.digest, sbom: sbom.digest, provenance: provenance.digest, location: `${layout.dir}:${req.version}` };
}
