/**
 * Provenance: the SLSA v1 provenance predicate of a build. The builder writes it beside the
 * artifact; the signer wraps it in an in-toto Statement and signs it.
 *
 * - buildDefinition.buildType: one Homeostat URI per kind of build (package, image);
 * - externalParameters: the request's recipe. For a package: name, version, source, patches
 *   (when it has any), steps, test command (when it has one), build dependency names, runtime
 *   dependency names. For an image: name, version, packages (`name@version`), config;
 * - internalParameters: SOURCE_DATE_EPOCH, the input digest, the catalog revision (its git
 *   commit, or a directory catalog's content digest) and, for a package, how its steps
 *   were isolated (`bubblewrap` or `none`, see the builder's isolation.ts);
 * - resolvedDependencies: every input's bytes by digest. For a package: the source (uri = its
 *   url; a git source's commit is added as `gitCommit`), each patch in the order applied
 *   (uri = its url) and each build dependency's archive.
 *   For an image: each package archive (its layer).
 *   Packages are named by `pkg:generic/<name>@<version>`;
 * - runDetails: the builder (id, BUILDER_VERSION), a random invocation id with the real
 *   start and finish times, and byproducts: for a package, each patch's, step's and the
 *   test's log (blobs in the builder's artifact store).
 *
 * Unlike the SBOM it is NOT reproducible: two builds of the same inputs give different
 * invocation ids and times, so it must stay out of everything whose digest must be
 * reproducible (archives, package metadata, image manifests and configs). Objects are built
 * with a fixed field order and maps sorted by key, so `JSON.stringify` always writes the same
 * layout.
 */
import { randomUUID } from "node:crypto";
import { BUILDER_VERSION } from "@homeostat/core/contracts";
import type { BuildPlan, ImageBuildPlan, PackageBuildPlan } from "@homeostat/catalog";
import { sortedRecord } from "@homeostat/core/digest";
import { SLSA_PROVENANCE_PREDICATE_TYPE } from "@homeostat/attest";
import { genericPurl } from "./sbom.ts";

export { SLSA_PROVENANCE_PREDICATE_TYPE };
/** A bare predicate, not an in-toto statement (the signer wraps it), so plain JSON. */
export const PROVENANCE_MEDIA_TYPE = "application/json";

export const PACKAGE_BUILD_TYPE = "https://homeostat.dev/build/package/v1";
export const IMAGE_BUILD_TYPE = "https://homeostat.dev/build/image/v1";
export const BUILDER_ID = "https://homeostat.dev/builder";

/** An in-toto ResourceDescriptor: an input, identified by uri or name, with its digest. */
export type ResourceDescriptor = {
  uri?: string;
  name?: string;
  digest: { sha256: string; gitCommit?: string };
  mediaType?: string;
  annotations?: Record<string, string>;
};

/** How a package's steps were sandboxed. */
export type BuildIsolation = "bubblewrap" | "none";

export type PackageExternalParameters = {
  name: string;
  version: string;
  source: { url: string; sha256: string };
  /** Applied in this order before the steps. */
  patches?: { url: string; sha256: string }[];
  steps: string[];
  /** Run after the steps; the build fails when it fails. */
  test?: string;
  /** Names of the build dependencies (their archives are in resolvedDependencies). */
  dependencies: string[];
  runtimeDependencies: string[];
};

export type ImageExternalParameters = {
  name: string;
  version: string;
  /** `name@version` of each package, in layer order. */
  packages: string[];
  config: {
    entrypoint: string[];
    cmd: string[];
    env: Record<string, string>;
    user: string;
    workdir: string;
    annotations: Record<string, string>;
  };
};

/** The SLSA v1 provenance predicate as Homeostat writes it. */
export type SlsaProvenance = {
  buildDefinition: {
    buildType: typeof PACKAGE_BUILD_TYPE | typeof IMAGE_BUILD_TYPE;
    externalParameters: PackageExternalParameters | ImageExternalParameters;
    internalParameters: { sourceDateEpoch: number; inputDigest: string; catalogRevision: string; isolation?: BuildIsolation };
    resolvedDependencies: ResourceDescriptor[];
  };
  runDetails: {
    builder: { id: typeof BUILDER_ID; version: { "homeostat-builder": string } };
    metadata: { invocationId: string; startedOn: string; finishedOn: string };
    byproducts?: ResourceDescriptor[];
  };
};

/** The real time span of a build; for a package, how its steps ran and their logs. */
export type BuildRun = { startedOn: Date; finishedOn: Date; isolation?: BuildIsolation; byproducts?: ResourceDescriptor[] };

function sha256Of(digest: string): { sha256: string } {
  const [, sha256] = /^sha256:([0-9a-f]{64})$/.exec(digest) ?? [];
  if (sha256 === undefined) throw new Error(`not a sha256 digest: ${JSON.stringify(digest)}`);
  return { sha256 };
}

/** The commit of a `git+<url>#<commit>` source, else undefined. */
function gitCommitField(url: string): { gitCommit?: string } {
  const [, gitCommit] = /^git\+.*#([0-9a-f]{40}|[0-9a-f]{64})$/.exec(url) ?? [];
  return gitCommit === undefined ? {} : { gitCommit };
}

function packageDefinition(req: PackageBuildPlan, run: BuildRun): SlsaProvenance["buildDefinition"] {
  const externalParameters: PackageExternalParameters = {
    name: req.name,
    version: req.version,
    source: { url: req.source.url, sha256: req.source.sha256 },
    ...(req.patches?.length ? { patches: req.patches.map((p) => ({ url: p.url, sha256: p.sha256 })) } : {}),
    steps: [...req.steps],
    ...(req.test !== undefined ? { test: req.test } : {}),
    dependencies: req.dependencies.map((d) => d.name),
    runtimeDependencies: [...req.runtimeDependencies],
  };
  return {
    buildType: PACKAGE_BUILD_TYPE,
    externalParameters,
    internalParameters: {
      sourceDateEpoch: req.sourceDateEpoch,
      inputDigest: req.inputDigest,
      catalogRevision: req.catalogRevision,
      ...(run.isolation ? { isolation: run.isolation } : {}),
    },
    resolvedDependencies: [
      { uri: req.source.url, digest: { sha256: req.source.sha256, ...gitCommitField(req.source.url) } },
      ...(req.patches ?? []).map((p) => ({ uri: p.url, digest: { sha256: p.sha256 } })),
      ...req.dependencies.map((d) => ({ name: genericPurl(d.name, d.version), digest: sha256Of(d.archive) })),
    ],
  };
}

function imageDefinition(req: ImageBuildPlan): SlsaProvenance["buildDefinition"] {
  const c = req.config;
  const externalParameters: ImageExternalParameters = {
    name: req.name,
    version: req.version,
    packages: req.packages.map((p) => `${p.name}@${p.version}`),
    config: {
      entrypoint: [...c.entrypoint],
      cmd: [...c.cmd],
      env: sortedRecord(c.env),
      user: c.user,
      workdir: c.workdir,
      annotations: sortedRecord(c.annotations),
    },
  };
  return {
    buildType: IMAGE_BUILD_TYPE,
    externalParameters,
    internalParameters: { sourceDateEpoch: req.sourceDateEpoch, inputDigest: req.inputDigest, catalogRevision: req.catalogRevision },
    resolvedDependencies: req.packages.map((p) => ({ name: p.purl ?? genericPurl(p.name, p.version), digest: sha256Of(p.archive) })),
  };
}

/** The provenance predicate of one build of `req`; every call gets a fresh invocation id. */
export function slsaProvenance(req: BuildPlan, run: BuildRun): SlsaProvenance {
  return {
    buildDefinition: req.kind === "package" ? packageDefinition(req, run) : imageDefinition(req),
    runDetails: {
      builder: { id: BUILDER_ID, version: { "homeostat-builder": BUILDER_VERSION } },
      metadata: { invocationId: randomUUID(), startedOn: run.startedOn.toISOString(), finishedOn: run.finishedOn.toISOString() },
      ...(run.byproducts ? { byproducts: run.byproducts } : {}),
    },
  };
}
