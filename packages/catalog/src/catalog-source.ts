/**
 * Catalog source: where the catalog comes from — a directory, or a git repository (a local
 * path or a URL) at a commit or a ref — and the watcher that keeps the last good catalog
 * serving while edits come and go.
 *
 * A git catalog is read exactly as committed: the tree at the commit is extracted with
 * `git archive` into a cache directory named after the commit (never a checkout of the user's
 * repository, whose working tree and metadata stay untouched), and the commit is on the
 * Catalog, so that what a build came from names it. A URL is mirrored into the cache first.
 *
 * Reloads are all-or-nothing: a catalog that fails to load (or a git fetch that fails) is
 * reported and the previous catalog keeps serving; a catalog that loads is compared with the
 * previous one (catalog.ts diffCatalogs) so that exactly the changed keys and their dependents
 * are reconciled.
 */
import { execFile, spawn } from "node:child_process";
import { statSync } from "node:fs";
import { cp, mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { CatalogError, diffCatalogs, loadCatalog, type Catalog, type CatalogDiff } from "./catalog.ts";
import { sha256Hex } from "@homeostat/core/digest";

const run = promisify(execFile);

/** A directory, or `git` (a repository path or URL) at `ref` (a commit, branch or tag), catalog under `path` in its tree. */
export type CatalogLocation = { dir: string } | { git: string; ref: string; path: string };

/**
 * `git+<repository>#<ref>[:<path>]` (`git+https://example.org/catalog.git#main:catalog`,
 * `git+/srv/catalog#4f2a9c…`) is a git location — a ref never contains a colon — and anything
 * else a directory.
 */
export function parseCatalogLocation(s: string): CatalogLocation {
  if (!s.startsWith("git+")) return { dir: path.resolve(s) };
  const hash = s.lastIndexOf("#");
  if (hash < 0) throw new Error(`catalog location "${s}": a git location needs #<ref> (a commit, branch or tag)`);
  const [ref, sub = ""] = s.slice(hash + 1).split(/:(.*)/s);
  const repo = s.slice("git+".length, hash);
  if (!repo || !ref) throw new Error(`catalog location "${s}": expected git+<repository>#<ref>[:<path>]`);
  const normalized = path.posix.normalize(sub || ".");
  if (normalized.startsWith("..") || normalized.startsWith("/")) throw new Error(`catalog location "${s}": the path must stay inside the repository`);
  return { git: repo, ref, path: normalized };
}

export type ReloadResult =
  | { status: "unchanged"; catalog: Catalog }
  | { status: "changed"; catalog: Catalog; previous: Catalog; diff: CatalogDiff }
  /** The new catalog (or fetching it) failed; `catalog` is the previous one, still serving. */
  | { status: "rejected"; catalog: Catalog; error: Error };

export type CatalogSourceOptions = {
  /** Where git mirrors and extracted trees are kept (e.g. under HOMEOSTAT_DATA). */
  cacheDir: string;
};

export class CatalogSource {
  readonly location: CatalogLocation;
  private readonly cacheDir: string;
  private catalog: Catalog;
  private fingerprint: string;
  /** The last state that failed to load, so that polling does not load it again and again. */
  private rejected: { fingerprint: string; error: Error } | undefined;
  /** Reloads run one at a time, in call order. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Older commits opened by `at` (a git catalog), newest use last; their trees are kept. */
  private readonly pinned = new Map<string, Catalog>();

  private constructor(location: CatalogLocation, cacheDir: string, catalog: Catalog, fingerprint: string) {
    this.location = location;
    this.cacheDir = cacheDir;
    this.catalog = catalog;
    this.fingerprint = fingerprint;
  }

  /** Loads the catalog; throws (CatalogError with every problem) when there is no good one to serve. */
  static async open(location: CatalogLocation, opts: CatalogSourceOptions): Promise<CatalogSource> {
    const snapshot = await readSnapshot(location, opts.cacheDir);
    const catalog = await snapshot.load();
    return new CatalogSource(location, opts.cacheDir, catalog, snapshot.fingerprint);
  }

  /** The last catalog that loaded. */
  current(): Catalog {
    return this.catalog;
  }

  /**
   * The catalog at `revision` (Catalog.revision), or undefined when this source cannot have
   * it: the serving catalog; else the source read again (the request may come from a newer
   * one); else, for a git catalog, that commit when it is in the history of the configured
   * ref (an older revision, e.g. a request made just before a push). A directory only ever
   * has its current content. Throws only when the git repository cannot be read.
   */
  async at(revision: string): Promise<Catalog | undefined> {
    if (this.catalog.revision === revision) return this.catalog;
    const reloaded = await this.reload();
    if (reloaded.catalog.revision === revision) return reloaded.catalog;
    if ("dir" in this.location || !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(revision)) return undefined;
    const hit = this.pinned.get(revision);
    if (hit) {
      this.pinned.delete(revision);
      this.pinned.set(revision, hit);
      return hit;
    }
    const gitDir = await repository(this.location.git, this.cacheDir);
    const head = this.catalog.commit;
    if (!head || !(await isAncestor(gitDir, revision, head))) return undefined;
    const catalog = await loadCommit(this.location, gitDir, revision, this.cacheDir);
    this.pinned.set(revision, catalog);
    // Maps iterate in insertion order: the first key is the oldest pin.
    const [oldest] = this.pinned.keys();
    if (this.pinned.size > PINNED_CATALOGS && oldest !== undefined) this.pinned.delete(oldest);
    return catalog;
  }

  /** Reads the source again; never throws (a failure is a "rejected" result, the old catalog kept). */
  reload(): Promise<ReloadResult> {
    const next = this.queue.then(() => this.reloadNow());
    this.queue = next;
    return next;
  }

  /** Reloads every `intervalMs` until `signal` aborts, reporting each change and each new rejection once. */
  async watch(opts: { intervalMs: number; signal: AbortSignal; onReload: (r: Exclude<ReloadResult, { status: "unchanged" }>) => void }): Promise<void> {
    let lastError: Error | undefined;
    while (!opts.signal.aborted) {
      try {
        await sleep(opts.intervalMs, undefined, { signal: opts.signal });
      } catch {
        return; // aborted while waiting
      }
      const r = await this.reload();
      if (r.status === "unchanged" || (r.status === "rejected" && r.error === lastError)) continue;
      lastError = r.status === "rejected" ? r.error : undefined;
      opts.onReload(r);
    }
  }

  private async reloadNow(): Promise<ReloadResult> {
    const previous = this.catalog;
    try {
      const snapshot = await readSnapshot(this.location, this.cacheDir);
      if (snapshot.fingerprint === this.fingerprint) return { status: "unchanged", catalog: previous };
      if (snapshot.fingerprint === this.rejected?.fingerprint) return { status: "rejected", catalog: previous, error: this.rejected.error };
      let catalog: Catalog;
      try {
        catalog = await snapshot.load();
      } catch (err) {
        this.rejected = { fingerprint: snapshot.fingerprint, error: asError(err) };
        throw err;
      }
      this.rejected = undefined;
      this.catalog = catalog;
      this.fingerprint = snapshot.fingerprint;
      await this.pruneTrees([catalog.commit, previous.commit, ...this.pinned.keys()]);
      return { status: "changed", catalog, previous, diff: diffCatalogs(previous, catalog) };
    } catch (err) {
      return { status: "rejected", catalog: previous, error: asError(err) };
    }
  }

  /** Extracted trees other than the serving and the previous catalog's (builds may still read that one). */
  private async pruneTrees(keep: (string | undefined)[]): Promise<void> {
    if ("dir" in this.location) return;
    const trees = path.join(this.cacheDir, "trees");
    for (const name of await readdir(trees)) {
      if (!keep.includes(name)) await rm(path.join(trees, name), { recursive: true, force: true });
    }
  }
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/** How many older commits `at` keeps loaded. */
const PINNED_CATALOGS = 4;

/** Whether `commit` is `head` or one of its ancestors; false for a commit the repository lacks. */
async function isAncestor(gitDir: string, commit: string, head: string): Promise<boolean> {
  try {
    await run("git", ["-C", gitDir, "merge-base", "--is-ancestor", commit, head]);
    return true;
  } catch {
    return false;
  }
}

/** The catalog as committed at `commit`, from its extracted tree. */
async function loadCommit(location: Extract<CatalogLocation, { git: string }>, gitDir: string, commit: string, cacheDir: string): Promise<Catalog> {
  const tree = await extractTree(gitDir, commit, path.join(cacheDir, "trees"));
  const dir = path.join(tree, location.path);
  try {
    await stat(dir);
  } catch {
    throw new CatalogError([`${location.git}@${commit}: no directory "${location.path}" in that commit`]);
  }
  return loadCatalog(dir, { commit });
}

/** What is at the location now: a cheap fingerprint, and the full load if it differs. */
type Snapshot = { fingerprint: string; load: () => Promise<Catalog> };

async function readSnapshot(location: CatalogLocation, cacheDir: string): Promise<Snapshot> {
  if ("dir" in location) return { fingerprint: await directoryFingerprint(location.dir), load: () => loadCatalog(location.dir) };
  const gitDir = await repository(location.git, cacheDir);
  const commit = await resolveCommit(gitDir, location.ref, location.git !== gitDir);
  return { fingerprint: commit, load: () => loadCommit(location, gitDir, commit, cacheDir) };
}

/**
 * Names, sizes and modification times of every file under the directory: a change to any
 * catalog file (or patch) changes it, without reading the files.
 *
 * Ingest, queue and reconciler each poll it (every 30 s by default): with one awaited stat per
 * file (a promise and a thread-pool round trip each) a poll of bench:storm's 29,000 files cost
 * 1.2-1.8 s of CPU, now 0.2 s.
 * The stats are synchronous instead, `STATS_PER_TURN` at a time between turns of the event loop,
 * and each directory's relative path is worked out once.
 */
export async function directoryFingerprint(dir: string): Promise<string> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const relativeDirs = new Map<string, string>();
  const lines: string[] = [];
  for (const e of entries) {
    if (!e.isFile()) continue;
    let relativeDir = relativeDirs.get(e.parentPath);
    if (relativeDir === undefined) relativeDirs.set(e.parentPath, (relativeDir = path.relative(dir, e.parentPath)));
    const s = statSync(path.join(e.parentPath, e.name));
    lines.push(`${path.join(relativeDir, e.name)}\0${s.size}\0${s.mtimeMs}`);
    if (lines.length % STATS_PER_TURN === 0) await new Promise(setImmediate);
  }
  return sha256Hex(lines.sort().join("\n"));
}

/** Files a fingerprint stats between turns of the event loop (a few milliseconds' worth: about 7 µs each). */
const STATS_PER_TURN = 500;

async function git(gitDir: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run("git", ["-C", gitDir, ...args], { maxBuffer: 16 << 20 });
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`git ${args.join(" ")} in ${gitDir}: ${(e.stderr ?? "").trim() || e.message}`);
  }
}

/** A local repository is read in place; a URL through a mirror in the cache, created on first use. */
async function repository(repo: string, cacheDir: string): Promise<string> {
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(repo) && !/^[^/]+@[^/]+:/.test(repo)) return path.resolve(repo);
  const mirror = path.join(cacheDir, "mirrors", `${sha256Hex(repo).slice(0, 16)}.git`);
  try {
    await stat(mirror);
  } catch {
    await mkdir(path.dirname(mirror), { recursive: true });
    const tmp = await mkdtemp(`${mirror}.tmp-`);
    try {
      await run("git", ["clone", "--quiet", "--mirror", repo, tmp], { maxBuffer: 16 << 20 });
    } catch (err) {
      await rm(tmp, { recursive: true, force: true });
      throw new Error(`git clone ${repo}: ${((err as { stderr?: string }).stderr ?? "").trim() || (err as Error).message}`);
    }
    await rename(tmp, mirror);
  }
  return mirror;
}

/** The commit `ref` names; a mirror is fetched first unless `ref` is a commit it already has (pinned commits never move). */
async function resolveCommit(gitDir: string, ref: string, mirrored: boolean): Promise<string> {
  const verify = () => git(gitDir, ["rev-parse", "--verify", "--quiet", "--end-of-options", `${ref}^{commit}`]);
  if (mirrored) {
    const pinned = /^[0-9a-f]{40}$/.test(ref) && (await verify().catch(() => "")) === ref;
    if (!pinned) await git(gitDir, ["fetch", "--quiet", "--prune", "origin"]);
  }
  try {
    return await verify();
  } catch {
    throw new CatalogError([`${gitDir}: no commit "${ref}"`]);
  }
}

/** The tree at `commit`, extracted once into `treesDir/<commit>` (a temporary name until complete). */
async function extractTree(gitDir: string, commit: string, treesDir: string): Promise<string> {
  const dest = path.join(treesDir, commit);
  try {
    await stat(dest);
    return dest;
  } catch {
    // not extracted yet
  }
  await mkdir(treesDir, { recursive: true });
  const tmp = await mkdtemp(path.join(treesDir, `.${commit}.tmp-`));
  try {
    await pipeArchive(gitDir, commit, tmp);
    await rename(tmp, dest);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
  return dest;
}

function pipeArchive(gitDir: string, commit: string, into: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const archive = spawn("git", ["-C", gitDir, "archive", "--format=tar", commit], { stdio: ["ignore", "pipe", "pipe"] });
    const tar = spawn("tar", ["-x", "-C", into], { stdio: ["pipe", "ignore", "pipe"] });
    archive.stdout.pipe(tar.stdin);
    let stderr = "";
    archive.stderr.on("data", (d) => (stderr += d));
    tar.stderr.on("data", (d) => (stderr += d));
    let pending = 2;
    let failed = false;
    const done = (what: string) => (code: number | null) => {
      if (code !== 0 && !failed) {
        failed = true;
        reject(new Error(`${what} of ${commit} from ${gitDir} failed (exit ${code}): ${stderr.trim()}`));
      }
      if (--pending === 0 && !failed) resolve();
    };
    archive.on("error", reject);
    tar.on("error", reject);
    archive.on("close", done("git archive"));
    tar.on("close", done("tar -x"));
  });
}

/**
 * Catalog snapshots: a directory catalog with a candidate change in it (the agentic
 * reconciler's proposal, for a trial build), kept whole under `<root>/<hex>`, where
 * `sha256:<hex>` is its revision, the content digest every directory catalog has. So a trial
 * request names a snapshot exactly as a build request names a catalog, and whoever opens it
 * (the builder) checks that the content is what the name says. A snapshot is written to a
 * temporary name and renamed, never changed afterwards; relative source paths keep resolving
 * against the catalog it was made from.
 */
export type CatalogSnapshot = { revision: string; dir: string; catalog: Catalog };

/** Writes `base` with `files` (paths relative to the catalog directory) replaced or added; throws a CatalogError when the result does not load. */
export async function writeSnapshot(root: string, base: Catalog, files: { path: string; text: string }[]): Promise<CatalogSnapshot> {
  await mkdir(root, { recursive: true, mode: 0o755 });
  const tmp = await mkdtemp(path.join(root, ".snapshot-"));
  try {
    await cp(base.dir, tmp, { recursive: true, verbatimSymlinks: true });
    for (const f of files) {
      const rel = path.posix.normalize(f.path);
      if (rel.startsWith("..") || path.isAbsolute(rel)) throw new CatalogError([`${f.path}: a snapshot's files stay inside the catalog directory`]);
      await mkdir(path.dirname(path.join(tmp, rel)), { recursive: true });
      await writeFile(path.join(tmp, rel), f.text);
    }
    const revision = (await loadCatalog(tmp, { sourceBase: base.sourceBase })).revision;
    const dir = path.join(root, revision.slice("sha256:".length));
    try {
      await rename(tmp, dir);
    } catch (err) {
      // The same content was snapshotted before: that one stays.
      if (!["ENOTEMPTY", "EEXIST"].includes((err as NodeJS.ErrnoException).code ?? "")) throw err;
      await rm(tmp, { recursive: true, force: true });
    }
    return { revision, dir, catalog: await loadCatalog(dir, { sourceBase: base.sourceBase }) };
  } catch (err) {
    await rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** The snapshot named `revision` under `root`, or undefined when there is none or its content is not what its name says. */
export async function openSnapshot(root: string, revision: string, sourceBase: string): Promise<Catalog | undefined> {
  const hex = /^sha256:([0-9a-f]{64})$/.exec(revision)?.[1];
  if (!hex) return undefined;
  const dir = path.join(root, hex);
  if (
    !(await stat(dir).then(
      (s) => s.isDirectory(),
      () => false,
    ))
  )
    return undefined;
  const catalog = await loadCatalog(dir, { sourceBase });
  return catalog.revision === revision ? catalog : undefined;
}
