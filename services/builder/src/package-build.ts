/**
 * Package builds: source archive in, deterministic package archive out.
 *
 * In a fresh workspace (`<workRoot>/pkg-<name>-XXXXXX`, removed afterwards whatever happens):
 * fetch the source and every patch into the store, each verified against its sha256 before
 * anything reads it, unpack the source into `src/` (a tarball's single top directory stripped;
 * a git tree as it is; a Debian binary package's file tree, deb.ts), unpack each build dependency's archive (from the store, re-verified)
 * into `sysroot/`, then, sandboxed as the context says and within one time limit (see
 * pipeline.ts): apply the patches in order in `src/` (`patch -p1`, copies under `patches/`,
 * since the sandbox sees only the workspace), run the steps, and run the test command if there
 * is one. `dest/` (DESTDIR) is then archived as a deterministic tar.gz whose paths are relative
 * (`usr/bin/greet`): that archive IS the package's OCI layer. The archive and a metadata JSON
 * (canonical; name, version, licence, runtime dependencies, source and patch digests, every
 * file with its sha256, mode and size) go into the artifact store. So does the build's SLSA v1
 * provenance (core/provenance), which alone differs from build to build (real times, an
 * invocation id) and is therefore referenced by nothing else.
 *
 * Fetching, unpacking, the steps and archiving are each an INTERNAL span of the build's
 * (`builder.fetch`, `.unpack`, `.steps`, `.archive`): where a slow build spent its time.
 *
 * Every patch's, step's and the test's log (size-capped, see pipeline.ts) is stored as a blob
 * too (`patch-<n>.log`, `step-<n>.log`, `test.log`): a successful build lists them as
 * byproducts of its provenance (so they are found from the key's status, via
 * `actual.outputs.provenance`); a failing build names their digests in its error, which the
 * builder records as the key's `lastError` beside the failing command's log tail.
 */
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { PassThrough } from "node:stream";
import { BUILDER_VERSION, type BuildOutputs } from "@homeostat/core/contracts";
import { type PackageBuildPlan } from "@homeostat/catalog";
import { canonicalJson, type Digest } from "@homeostat/core/digest";
import { slsaProvenance, type ResourceDescriptor } from "./provenance.ts";
import { TarError, writeTarGzFromDirectory, type TarEntry } from "./tar.ts";
import type { BuildContext } from "./context.ts";
import { BuildFailure, MissingArtifactError } from "./errors.ts";
import { extractDebData, isDebianPackage } from "./deb.ts";
import { inSpan } from "@homeostat/core/telemetry";
import { isGitSourceUrl } from "@homeostat/source";
import { runSteps, workspaceLayout, type StepLog } from "./pipeline.ts";
import { fetchPatch, fetchSource, unpackArchive, type FetchOptions } from "./source.ts";
import { ArtifactStore, type StoredBlob } from "./store.ts";

/** What the metadata blob of a package holds. */
export type PackageMetadata = {
  v: 1;
  name: string;
  version: string;
  license?: string;
  runtimeDependencies: string[];
  buildDependencies: { name: string; version: string; archive: Digest }[];
  source: { sha256: string };
  /** In the order applied; absent when there are none. */
  patches?: { sha256: string }[];
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

export const STEP_LOG_MEDIA_TYPE = "text/plain; charset=utf-8";

/** A command's log with the name it is stored and listed under (`step-2.log`). */
type NamedLog = { name: string; log: StepLog };

/** Stores each log as a blob; returns them as provenance byproducts. */
async function storeLogs(store: ArtifactStore, logs: readonly NamedLog[]): Promise<ResourceDescriptor[]> {
  return Promise.all(
    logs.map(async ({ name, log: l }) => {
      const blob = await store.putBytes(l.log);
      return {
        name,
        digest: { sha256: blob.digest.slice("sha256:".length) },
        mediaType: STEP_LOG_MEDIA_TYPE,
        annotations: { step: l.step, exitCode: String(l.exitCode), durationMs: String(l.durationMs) },
      };
    }),
  );
}

/**
 * How a patch is applied. `--forward` refuses a patch that looks already applied instead of
 * reversing it; `--batch` never asks; `--no-backup-if-mismatch` keeps `.orig` files (written
 * when a hunk applies with an offset) out of the tree the steps may install from.
 */
const PATCH_COMMAND = "patch -p1 --forward --batch --no-backup-if-mismatch";

/** Creates a fresh workspace directory under the context's work root. */
export async function makeWorkspaceDir(ctx: BuildContext, label: string): Promise<string> {
  const workRoot = ctx.workRoot ?? path.join(path.resolve(ctx.dataDir), "work");
  await mkdir(workRoot, { recursive: true });
  return mkdtemp(path.join(workRoot, `${label}-`));
}

export async function buildPackage(req: PackageBuildPlan, ctx: BuildContext): Promise<BuildOutputs> {
  const startedOn = new Date();
  const store = new ArtifactStore(ctx.dataDir);
  const log = ctx.log ?? (() => {});
  const root = await makeWorkspaceDir(ctx, `pkg-${req.name}`);
  try {
    const ws = workspaceLayout(root);
    const srcDir = path.join(root, "src");
    await Promise.all([ws.home, ws.dest, ws.sysroot, srcDir].map((d) => mkdir(d, { recursive: true })));

    // The store of what the build reads of other builds (a trial's: the factory's), where the
    // sources and patches those fetched are taken from too.
    const inputs = ctx.inputsDataDir === undefined ? store : new ArtifactStore(ctx.inputsDataDir);
    const fetchOpts: FetchOptions = {
      baseDir: ctx.sourceBaseDir,
      maxBytes: ctx.maxSourceBytes,
      ...(ctx.allowRemoteSources !== undefined ? { allowRemote: ctx.allowRemoteSources } : {}),
      ...(ctx.signal ? { signal: ctx.signal } : {}),
      ...(inputs !== store ? { pinnedFrom: inputs } : {}),
    };
    const patches = req.patches ?? [];
    const { source, patchBlobs } = await inSpan("builder.fetch", {}, async () => {
      const source = await fetchSource(req.source, store, fetchOpts);
      log(`source ${req.source.url} verified (${source.digest}, ${source.size} bytes)`);
      const patchBlobs: StoredBlob[] = [];
      for (const p of patches) {
        const blob = await fetchPatch(p, store, fetchOpts);
        log(`patch ${p.url} verified (${blob.digest}, ${blob.size} bytes)`);
        patchBlobs.push(blob);
      }
      return { source, patchBlobs };
    });
    await inSpan("builder.unpack", {}, () => unpackInputs(req, ctx, inputs, { root, srcDir, sysroot: ws.sysroot, source, patchBlobs }));

    // Patches, steps and test run as three pipelines sharing the build's time limit; every log
    // so far is stored when one fails, and named in its error.
    const startedAt = Date.now();
    const logs: NamedLog[] = [];
    const runStage = async (commands: readonly string[], logName: (i: number) => string, describe?: (i: number, command: string) => string): Promise<void> => {
      try {
        const { steps } = await runSteps(commands, {
          cwd: srcDir,
          workspace: ws,
          sourceDateEpoch: req.sourceDateEpoch,
          timeoutMs: ctx.timeoutMs,
          startedAt,
          isolation: ctx.isolation,
          log,
          ...(describe ? { describe } : {}),
          ...(ctx.signal ? { signal: ctx.signal } : {}),
        });
        logs.push(...steps.map((l, i) => ({ name: logName(i), log: l })));
      } catch (e) {
        if (!(e instanceof BuildFailure) || !e.stepLogs) throw e;
        logs.push(...e.stepLogs.map((l, i) => ({ name: logName(i), log: l })));
        const stored = await storeLogs(store, logs);
        const where = stored.map((d) => `${d.name} sha256:${d.digest.sha256}`).join(", ");
        throw new BuildFailure(`${e.message}\nfull step logs in the artifact store: ${where}`, {
          ...(e.step !== undefined ? { step: e.step } : {}),
          ...(e.exitCode !== undefined ? { exitCode: e.exitCode } : {}),
          ...(e.logTail !== undefined ? { logTail: e.logTail } : {}),
          stepLogs: logs.map((l) => l.log),
          cause: metFullDisk(e),
        });
      }
    };
    await inSpan("builder.steps", {}, async () => {
      await runStage(
        patches.map((_, i) => `${PATCH_COMMAND} -i ../patches/${i + 1}.patch`),
        (i) => `patch-${i + 1}.log`,
        (i) => `patch ${i + 1} of ${patches.length} (${patches[i]?.url ?? "unknown source"}) does not apply to ${req.name}@${req.version}: patch`,
      );
      await runStage(req.steps, (i) => `step-${i + 1}.log`);
      if (req.test !== undefined)
        await runStage(
          [req.test],
          () => "test.log",
          (_, command) => `test (${command})`,
        );
    });
    // Stored while the outputs are archived; the provenance names them.
    const byproducts = storeLogs(store, logs);
    byproducts.catch(() => {});

    const [tarRes, stored] = await inSpan("builder.archive", {}, () => {
      const pass = new PassThrough();
      return Promise.all([writeTarGzFromDirectory(ws.dest, pass, { epoch: req.sourceDateEpoch }), store.put(pass)]).catch((e: unknown) => {
        // What the steps installed cannot be archived (e.g. a fifo or socket in DESTDIR): final.
        if (e instanceof TarError) throw new BuildFailure(`package ${req.name}@${req.version}: DESTDIR cannot be archived: ${e.message}`, { cause: e });
        throw e;
      });
    });
    if (stored.digest !== tarRes.digest || stored.size !== tarRes.size)
      throw new Error(`archive digest disagreement: ${stored.digest} stored, ${tarRes.digest} written`);
    log(`package ${req.name}@${req.version}: ${tarRes.entries.length} entries, archive ${tarRes.digest}, diff_id ${tarRes.diffId}`);

    const metadata: PackageMetadata = {
      v: 1,
      name: req.name,
      version: req.version,
      ...(req.license !== undefined ? { license: req.license } : {}),
      runtimeDependencies: [...req.runtimeDependencies],
      buildDependencies: req.dependencies.map((d) => ({ name: d.name, version: d.version, archive: d.archive as Digest })),
      source: { sha256: req.source.sha256 },
      ...(patches.length > 0 ? { patches: patches.map((p) => ({ sha256: p.sha256 })) } : {}),
      sourceDateEpoch: req.sourceDateEpoch,
      builder: BUILDER_VERSION,
      archive: tarRes.digest,
      diffId: tarRes.diffId,
      size: tarRes.size,
      files: tarRes.entries,
    };
    const [meta, provenance] = await Promise.all([
      store.putBytes(canonicalJson(metadata)),
      byproducts.then((logged) =>
        store.putBytes(JSON.stringify(slsaProvenance(req, { startedOn, finishedOn: new Date(), isolation: ctx.isolation.kind, byproducts: logged }))),
      ),
    ]);
    return { archive: tarRes.digest, diffId: tarRes.diffId, size: tarRes.size, metadata: meta.digest, provenance: provenance.digest, location: stored.path };
  } finally {
    if (!ctx.keepWorkspace) await removeTree(root);
  }
}

/** Where a package build's inputs are unpacked, and what was fetched for it. */
/** `source`: the source as fetchSource stored and verified it. */
type UnpackTargets = { root: string; srcDir: string; sysroot: string; source: StoredBlob; patchBlobs: readonly StoredBlob[] };

/**
 * The source into `src/` (a Debian binary package's file tree, a git tree as it is, a tarball's
 * single top directory stripped), the patches into `patches/`, and every build dependency's
 * archive, re-verified in the store of `inputs` (the context's inputsDataDir), into the sysroot
 * in the plan's order (a later one's file wins). The dependencies are all re-hashed at once
 * first: the reads overlap.
 */
async function unpackInputs(req: PackageBuildPlan, ctx: BuildContext, inputs: ArtifactStore, to: UnpackTargets): Promise<void> {
  const log = ctx.log ?? (() => {});
  await Promise.all(
    req.dependencies.map(async (dep) => {
      const archive = dep.archive as Digest;
      if (!(await inputs.has(archive)))
        throw new MissingArtifactError(`package/${dep.name}`, archive, `build dependency ${dep.name}@${dep.version}: archive ${archive} is not in the store`);
      if (!(await inputs.verify(archive)))
        throw new MissingArtifactError(`package/${dep.name}`, archive, `build dependency ${dep.name}@${dep.version}: stored archive ${archive} is corrupt`, {
          corrupt: true,
        });
    }),
  );
  if (await isDebianPackage(to.source.path)) {
    // A pinned Debian binary package: its file tree is the source, checked like any archive.
    const dataTar = path.join(to.root, "deb-data.tar");
    await extractDebData(to.source.path, dataTar, `source ${req.source.url}`, ctx.unpackLimits.maxBytes);
    await unpackArchive(dataTar, to.srcDir, `source ${req.source.url} (data.tar)`, { stripTopDir: false, limits: ctx.unpackLimits });
    await rm(dataTar);
  } else {
    await unpackArchive(to.source.path, to.srcDir, `source ${req.source.url}`, {
      stripTopDir: !isGitSourceUrl(req.source.url),
      limits: ctx.unpackLimits,
      digest: to.source.digest,
    });
  }
  if (to.patchBlobs.length > 0) await mkdir(path.join(to.root, "patches"));
  for (const [i, blob] of to.patchBlobs.entries()) await copyFile(blob.path, path.join(to.root, "patches", `${i + 1}.patch`));
  for (const dep of req.dependencies) {
    await unpackArchive(inputs.path(dep.archive as Digest), to.sysroot, `build dependency ${dep.name}@${dep.version}`, {
      stripTopDir: false,
      limits: ctx.unpackLimits,
      digest: dep.archive as Digest,
    });
    log(`build dependency ${dep.name}@${dep.version} unpacked into the sysroot`);
  }
}

/**
 * A step that failed because a write met a full disk (its log says strerror(ENOSPC); steps run
 * with LC_ALL=C) failed for the machine, not for its inputs: the failure's cause then carries
 * the errno, so that the taxonomy (failure.ts) retries it with backoff instead of failing the key.
 */
function metFullDisk(e: BuildFailure): Error {
  if (!/No space left on device/.test(e.logTail ?? "")) return e;
  return Object.assign(new Error(`ENOSPC: ${e.step ?? "a step"} met a full disk`, { cause: e }), { code: "ENOSPC" });
}
