/**
 * Package builds: source archive in, deterministic package archive out.
 *
 * In a fresh workspace (`<workRoot>/pkg-<name>-XXXXXX`, removed afterwards whatever happens):
 * fetch the source into the store and verify its sha256, unpack it into `src/`, unpack each
 * build dependency's archive (from the store, re-verified) into `sysroot/`, run the steps in
 * `src/` (see pipeline.ts), then archive `dest/` (DESTDIR) as a deterministic tar.gz whose
 * paths are relative (`usr/bin/greet`): that archive IS the package's OCI layer. The archive
 * and a metadata JSON (canonical; name, version, licence, runtime dependencies, every file
 * with its sha256, mode and size) go into the artifact store. So does the build's SLSA v1
 * provenance (core/provenance), which alone differs from build to build (real times, an
 * invocation id) and is therefore referenced by nothing else.
 */
import { mkdir, mkdtemp, readdir, rm, chmod, lstat } from "node:fs/promises";
import path from "node:path";
import { PassThrough } from "node:stream";
import { BUILDER_VERSION, type BuildOutputs, type PackageBuildRequest } from "@homeostat/core/contracts";
import { canonicalJson, type Digest } from "@homeostat/core/digest";
import { slsaProvenance } from "@homeostat/core/provenance";
import { TarError, writeTarGzFromDirectory, type TarEntry } from "@homeostat/core/tar";
import type { BuildContext } from "./build.ts";
import { BuildFailure, MissingArtifactError } from "./errors.ts";
import { runSteps, workspaceLayout } from "./pipeline.ts";
import { fetchSource, unpackArchive } from "./source.ts";
import { ArtifactStore } from "./store.ts";

/** What the metadata blob of a package holds. */
export type PackageMetadata = {
  v: 1;
  name: string;
  version: string;
  license?: string;
  runtimeDependencies: string[];
  buildDependencies: { name: string; version: string; archive: Digest }[];
  source: { sha256: string };
  sourceDateEpoch: number;
  builder: string;
  archive: Digest;
  diffId: Digest;
  size: number;
  files: TarEntry[];
};

export const PACKAGE_METADATA_MEDIA_TYPE = "application/vnd.homeostat.package.metadata.v1+json";

/** Removes a tree even when a build left read-only directories in it. */
export async function removeTree(dir: string): Promise<void> {
  try {
    await rm(dir, { recursive: true, force: true });
  } catch {
    const fix = async (p: string): Promise<void> => {
      const st = await lstat(p).catch(() => undefined);
      if (!st?.isDirectory()) return;
      await chmod(p, 0o700).catch(() => {});
      for (const name of await readdir(p).catch(() => [] as string[])) await fix(path.join(p, name));
    };
    await fix(dir);
    await rm(dir, { recursive: true, force: true });
  }
}

/** Creates a fresh workspace directory under the context's work root. */
export async function makeWorkspaceDir(ctx: BuildContext, label: string): Promise<string> {
  const workRoot = ctx.workRoot ?? path.join(path.resolve(ctx.dataDir), "work");
  await mkdir(workRoot, { recursive: true });
  return mkdtemp(path.join(workRoot, `${label}-`));
}

export async function buildPackage(req: PackageBuildRequest, ctx: BuildContext): Promise<BuildOutputs> {
  const startedOn = new Date();
  const store = new ArtifactStore(ctx.dataDir);
  const log = ctx.log ?? (() => {});
  const root = await makeWorkspaceDir(ctx, `pkg-${req.name}`);
  try {
    const ws = workspaceLayout(root);
    const srcDir = path.join(root, "src");
    await Promise.all([ws.home, ws.dest, ws.sysroot, srcDir].map((d) => mkdir(d, { recursive: true })));

    const source = await fetchSource(req.source, store, {
      baseDir: ctx.sourceBaseDir,
      maxBytes: ctx.maxSourceBytes,
      ...(ctx.allowRemoteSources !== undefined ? { allowRemote: ctx.allowRemoteSources } : {}),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });
    log(`source ${req.source.url} verified (${source.digest}, ${source.size} bytes)`);
    await unpackArchive(source.path, srcDir, `source ${req.source.url}`);

    for (const dep of req.dependencies) {
      const archive = dep.archive as Digest;
      if (!(await store.has(archive))) throw new MissingArtifactError(`build dependency ${dep.name}@${dep.version}: archive ${archive} is not in the store`);
      if (!(await store.verify(archive))) throw new Error(`build dependency ${dep.name}@${dep.version}: stored archive ${archive} is corrupt`);
      await unpackArchive(store.path(archive), ws.sysroot, `build dependency ${dep.name}@${dep.version}`, { stripTopDir: false });
      log(`build dependency ${dep.name}@${dep.version} unpacked into the sysroot`);
    }

    await runSteps(req.steps, {
      cwd: srcDir,
      workspace: ws,
      sourceDateEpoch: req.sourceDateEpoch,
      timeoutMs: ctx.timeoutMs,
      log,
      ...(ctx.signal ? { signal: ctx.signal } : {}),
    });

    const pass = new PassThrough();
    const [tarRes, stored] = await Promise.all([writeTarGzFromDirectory(ws.dest, pass, { epoch: req.sourceDateEpoch }), store.put(pass)]).catch((e: unknown) => {
      // What the steps installed cannot be archived (e.g. a fifo or socket in DESTDIR): final.
      if (e instanceof TarError) throw new BuildFailure(`package ${req.name}@${req.version}: DESTDIR cannot be archived: ${e.message}`, { cause: e });
      throw e;
    });
    if (stored.digest !== tarRes.digest || stored.size !== tarRes.size) throw new Error(`archive digest disagreement: ${stored.digest} stored, ${tarRes.digest} written`);
    log(`package ${req.name}@${req.version}: ${tarRes.entries.length} entries, archive ${tarRes.digest}, diff_id ${tarRes.diffId}`);

    const metadata: PackageMetadata = {
      v: 1,
      name: req.name,
      version: req.version,
      ...(req.license !== undefined ? { license: req.license } : {}),
      runtimeDependencies: [...req.runtimeDependencies],
      buildDependencies: req.dependencies.map((d) => ({ name: d.name, version: d.version, archive: d.archive as Digest })),
      source: { sha256: req.source.sha256 },
      sourceDateEpoch: req.sourceDateEpoch,
      builder: BUILDER_VERSION,
      archive: tarRes.digest,
      diffId: tarRes.diffId,
      size: tarRes.size,
      files: tarRes.entries,
    };
    const meta = await store.putBytes(canonicalJson(metadata));
    const provenance = await store.putBytes(JSON.stringify(slsaProvenance(req, { startedOn, finishedOn: new Date() })));
    return { archive: tarRes.digest, diffId: tarRes.diffId, size: tarRes.size, metadata: meta.digest, provenance: provenance.digest, location: stored.path };
  } finally {
    if (!ctx.keepWorkspace) await removeTree(root);
  }
}
