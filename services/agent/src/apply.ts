/**
 * A proposal's change to the catalog: its unified diff for the reviewer, its commit on a
 * review branch (a git catalog), and its application once approved.
 *
 * Applying is the agent's alone: it is the one service holding the catalog's location with
 * write intent, so the queue service (which faces the network with gRPC) only records the
 * review and hands the key back to the agent. What is applied is checked first exactly as
 * the catalog loads it (a snapshot of the current catalog with the change must load: schema,
 * patch digests, dependencies), and only onto the recipe it was made against:
 *
 * - a directory catalog is written in place, each file to a temporary name beside it and
 *   renamed over the old one (patches first, the recipe last, so the catalog watchers see
 *   the old recipe or the new one, and at worst one reload rejected in between);
 * - a git catalog (a local repository) gets a commit on the configured branch's current head
 *   with the change, and the branch is moved to it by compare-and-set (`git update-ref new
 *   old`): a fast-forward, never a rewrite, refused if someone moved it in between. The
 *   repository's working tree and index are never touched: commits are made with plumbing
 *   (hash-object, a private index, write-tree, commit-tree).
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { parse as parseYaml } from "yaml";
import { packageSpecSchema, writeSnapshot, type Catalog, type CatalogLocation } from "@homeostat/catalog";
import { canonicalJson, type Key } from "@homeostat/core";
import { unifiedDiff } from "./unified-diff.ts";

const run = promisify(execFile);

/** What a proposal changes: whole files, relative to the catalog directory (the recipe's, then its patches). */
export type CatalogChange = { files: { path: string; text: string }[] };

/** The recipe file and the patch files of a proposal, recipe last (see the module comment). */
export function changeOf(p: { file: string; recipe: string; patches: { path: string; text: string }[] }): CatalogChange {
  return { files: [...p.patches, { path: p.file, text: p.recipe }] };
}

/** Whether the catalog's recipe of the key already is the proposal's (an application the agent did not live to record). */
export function alreadyApplied(current: Catalog, p: { key: Key; recipe: string }): boolean {
  const spec = packageSpecSchema.safeParse(parseYaml(p.recipe));
  if (!spec.success) return false;
  const { description: _, ...recipe } = spec.data;
  return current.recipe(p.key) === canonicalJson(recipe);
}

/** A catalog file path must stay inside the catalog. */
function inside(rel: string): string {
  const n = path.posix.normalize(rel);
  if (n.startsWith("..") || path.posix.isAbsolute(n) || n === ".") throw new Error(`${rel}: a proposal's files stay inside the catalog directory`);
  return n;
}

/** Unified diff of the change against `base` (unified-diff.ts): a file the catalog lacks shows as added. */
export async function changeDiff(base: Catalog, change: CatalogChange): Promise<string> {
  const parts: string[] = [];
  for (const f of change.files) {
    const rel = inside(f.path);
    parts.push(unifiedDiff(rel, await readIfExists(path.join(base.dir, rel)), f.text));
  }
  return parts.join("");
}

async function readIfExists(file: string): Promise<string | undefined> {
  return readFile(file, "utf8").catch((err: NodeJS.ErrnoException) => {
    if (err.code === "ENOENT") return undefined;
    throw err;
  });
}

/** The revision of the current catalog with the change, which must load (a CatalogError otherwise); `scratch` holds the snapshot. */
async function revisionWith(scratch: string, current: Catalog, change: CatalogChange): Promise<string> {
  return (await writeSnapshot(scratch, current, change.files)).revision;
}

const AUTHOR = {
  GIT_AUTHOR_NAME: "Homeostat agent",
  GIT_AUTHOR_EMAIL: "agent@homeostat.invalid",
  GIT_COMMITTER_NAME: "Homeostat agent",
  GIT_COMMITTER_EMAIL: "agent@homeostat.invalid",
};

type GitLocation = Extract<CatalogLocation, { git: string }>;

function localRepository(location: GitLocation): string {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location.git) || /^[^/]+@[^/]+:/.test(location.git))
    throw new Error(`${location.git}: proposals are committed to a local git repository only (a remote catalog is reviewed and pushed by a person)`);
  return path.resolve(location.git);
}

async function git(repo: string, args: string[], opts: { env?: Record<string, string>; input?: string } = {}): Promise<string> {
  try {
    const child = run("git", ["-C", repo, ...args], { maxBuffer: 16 << 20, env: { ...process.env, ...opts.env } });
    if (opts.input !== undefined) {
      const { stdin } = child.child;
      if (!stdin) throw new Error("internal: git was started without a pipe to its stdin");
      stdin.end(opts.input);
    }
    const { stdout } = await child;
    return stdout.trim();
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`git ${args[0]} in ${repo}: ${(e.stderr ?? "").trim() || e.message}`);
  }
}

/** A commit whose parent is `parent` and whose tree is parent's with the change under the catalog's path. */
async function commitOnto(repo: string, location: GitLocation, parent: string, change: CatalogChange, message: string): Promise<string> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), "homeostat-index-"));
  const env = { ...AUTHOR, GIT_INDEX_FILE: path.join(tmp, "index") };
  try {
    await git(repo, ["read-tree", parent], { env });
    for (const f of change.files) {
      const blob = await git(repo, ["hash-object", "-w", "--stdin"], { input: f.text });
      await git(repo, ["update-index", "--add", "--cacheinfo", `100644,${blob},${path.posix.join(location.path, inside(f.path))}`], { env });
    }
    const tree = await git(repo, ["write-tree"], { env });
    return await git(repo, ["commit-tree", tree, "-p", parent, "-m", message], { env });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The review branch of a proposal: `homeostat/<key>/<short digest>`. */
export function reviewBranch(key: Key, candidateDigest: string): string {
  return `homeostat/${key}/${candidateDigest.slice("sha256:".length, "sha256:".length + 12)}`;
}

/** Commits the change onto `base` (the catalog's commit) on the proposal's review branch; returns the branch and commit. */
export async function commitProposal(
  location: GitLocation,
  base: string,
  branch: string,
  change: CatalogChange,
  message: string,
): Promise<{ name: string; commit: string }> {
  const repo = localRepository(location);
  const commit = await commitOnto(repo, location, base, change, message);
  // Created, or moved to the same change made again: a review branch names one candidate.
  await git(repo, ["update-ref", `refs/heads/${branch}`, commit]);
  return { name: branch, commit };
}

/**
 * Applies the change to the catalog at `location`, whose current content is `current`;
 * returns the catalog revision it made (a commit, or the directory's content digest).
 */
export async function applyChange(
  location: CatalogLocation,
  current: Catalog,
  change: CatalogChange,
  opts: { scratch: string; message: string },
): Promise<string> {
  const revision = await revisionWith(opts.scratch, current, change);
  if ("dir" in location) {
    for (const f of change.files) await replaceFile(path.join(location.dir, inside(f.path)), f.text);
    return revision;
  }
  const repo = localRepository(location);
  const ref = await branchRef(repo, location.ref);
  const head = await git(repo, ["rev-parse", "--verify", `${ref}^{commit}`]);
  if (current.commit && head !== current.commit)
    throw new Error(`${location.ref} moved to ${head.slice(0, 12)} while the change was checked against ${current.commit.slice(0, 12)}: try again`);
  const commit = await commitOnto(repo, location, head, change, opts.message);
  await git(repo, ["update-ref", ref, commit, head]);
  return commit;
}

/** The full name of a branch `ref` names; a tag or a commit cannot be moved forward. */
async function branchRef(repo: string, ref: string): Promise<string> {
  const full = ref.startsWith("refs/heads/") ? ref : `refs/heads/${ref}`;
  try {
    await git(repo, ["show-ref", "--verify", "--quiet", full]);
  } catch {
    throw new Error(`the catalog's ref "${ref}" is not a branch of ${repo}: only a branch can be fast-forwarded to an approved proposal`);
  }
  return full;
}

/** Writes `file` to a temporary name in its directory and renames it over the old one. */
async function replaceFile(file: string, text: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    await writeFile(tmp, text, { mode: 0o644 });
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
