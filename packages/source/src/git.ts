/**
 * Git sources: a repository pinned to one commit, exported as a deterministic tree.
 *
 * URL form: `git+<transport>#<commit>`, where transport is `file:///path/to/repo`,
 * `http://host/repo.git` or `https://host/repo.git`, and commit is the full object id (40 hex
 * for SHA-1 repositories, 64 hex for SHA-256 ones). Branches, tags and abbreviated ids are
 * refused: they move or can become ambiguous, and a build must name exactly one tree.
 *
 * The source's `sha256` is verified ALONGSIDE the commit pin, and is the sha256 of the
 * uncompressed tar that `git archive --format=tar <commit>` writes with git's default
 * configuration (so `git archive --format=tar <commit> | sha256sum` computes it). Why both:
 * SHA-1 object ids are not collision-resistant enough to be the only check on what we build;
 * the sha256 makes a git source exactly as strong as a pinned tarball, and keeps the artifact
 * store and the source cache uniformly keyed by sha256 (a second build of the same commit
 * does not touch git at all). `git archive` of a commit is deterministic: entries in tree
 * order, mtime = the commit time, uid/gid 0, modes normalised from the tree; a repository
 * whose `.gitattributes` asks for `export-subst` of ref names could vary, and then fails the
 * sha256 check rather than building something else.
 *
 * git runs with no system or global configuration, no prompts, only the file/http/https
 * protocols, a HOME inside the scratch repository, a time limit, and `--` before the URL.
 * Only the pinned commit is fetched (`--depth=1`), and the fetch is stopped once the scratch
 * repository grows past the source size limit (a hostile server can send any amount of pack
 * data, and git has no limit of its own); the exported tar is size-limited by the store, and
 * unpacked with the same checks as any archive.
 *
 * A new release names a tag, not a commit: `resolveGitTag` asks the repository (`git ls-remote`,
 * the same environment and limits) which commit the tag points at, peeling an annotated tag, and
 * `listGitTags` lists every tag so; the upstream resolver then pins that commit.
 */
import { spawn } from "node:child_process";
import { readdir, stat } from "node:fs/promises";
import path from "node:path";
import { PassThrough, type Readable } from "node:stream";
import { SourceError, SourceUnavailableError } from "./errors.ts";

export type GitSource = { transport: URL; commit: string };

const commitRe = /^(?:[0-9a-f]{40}|[0-9a-f]{64})$/;

export function isGitSourceUrl(url: string): boolean {
  return url.startsWith("git+");
}

/** Parses `git+<transport>#<commit>`; a SourceError says what is wrong. */
export function parseGitSource(url: string): GitSource {
  const hash = url.indexOf("#");
  const commit = hash < 0 ? "" : url.slice(hash + 1);
  const bare = hash < 0 ? url.slice(4) : url.slice(4, hash);
  if (!commitRe.test(commit)) {
    throw new SourceError(
      `git source ${JSON.stringify(url)} must end in #<full commit id> (40 or 64 lower-case hex); branches, tags and short ids are not pinned`,
    );
  }
  let transport: URL;
  try {
    transport = new URL(bare);
  } catch {
    throw new SourceError(`git source ${JSON.stringify(url)}: ${JSON.stringify(bare)} is not a valid URL`);
  }
  if (!["file:", "http:", "https:"].includes(transport.protocol)) {
    throw new SourceError(`git source ${JSON.stringify(url)}: transport ${transport.protocol} is not supported (git+file://, git+http://, git+https://)`);
  }
  if (transport.username || transport.password) throw new SourceError(`git source ${JSON.stringify(url)}: credentials in the URL are not allowed`);
  return { transport, commit };
}

/** The repository of a git source URL (`git+<transport>[#<anything>]`), checked as parseGitSource checks it. */
export function gitTransport(url: string): URL {
  const hash = url.indexOf("#");
  return parseGitSource(`${hash < 0 ? url : url.slice(0, hash)}#${"0".repeat(40)}`).transport;
}

/** The pinned URL of `commit` in the repository `transport`. */
export function gitSourceUrl(transport: URL, commit: string): string {
  return `git+${transport.href}#${commit}`;
}

/** Every tag of the repository with the commit it points at (annotated tags peeled). */
export async function listGitTags(transport: URL, scratch: string, signal: AbortSignal): Promise<Map<string, string>> {
  let out: string;
  try {
    out = await git(["ls-remote", "--tags", "--", transport.href], scratch, signal);
  } catch (e) {
    // An unreachable repository may come back; git refusing the URL will not.
    if (e instanceof GitError) throw new SourceUnavailableError(`git repository ${transport.href}: ${e.message}`, { cause: e });
    throw e;
  }
  const tags = new Map<string, string>();
  const peeled = new Map<string, string>();
  for (const line of out.split("\n")) {
    const [, commit, tag, peel] = /^([0-9a-f]{40}|[0-9a-f]{64})\trefs\/tags\/(.+?)(\^\{\})?$/.exec(line) ?? [];
    if (commit === undefined || tag === undefined) continue;
    (peel ? peeled : tags).set(tag, commit);
  }
  for (const [tag, commit] of peeled) tags.set(tag, commit);
  return tags;
}

/** The commit `tag` points at in `transport`; a SourceError when the repository has no such tag. */
export async function resolveGitTag(transport: URL, tag: string, scratch: string, signal: AbortSignal): Promise<string> {
  const commit = (await listGitTags(transport, scratch, signal)).get(tag);
  if (!commit) throw new SourceError(`git repository ${transport.href} has no tag ${JSON.stringify(tag)}`);
  return commit;
}

/** The environment git runs with: nothing of the builder's, no configuration but ours. */
function gitEnvironment(scratch: string): Record<string, string> {
  return {
    PATH: "/usr/local/bin:/usr/bin:/bin",
    HOME: scratch,
    LC_ALL: "C",
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_TERMINAL_PROMPT: "0",
    GIT_ALLOW_PROTOCOL: "file:http:https",
  };
}

/** Runs git to completion; resolves with its stdout, rejects naming the command and stderr. */
function git(args: string[], scratch: string, signal: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn("git", args, { cwd: scratch, env: gitEnvironment(scratch), stdio: ["ignore", "pipe", "pipe"], signal });
    let out = "";
    let err = "";
    child.stdout.on("data", (b: Buffer) => (out += b.toString("utf8")));
    child.stderr.on("data", (b: Buffer) => (err = (err + b.toString("utf8")).slice(-4000)));
    child.on("error", (e) =>
      reject(
        e.name === "AbortError"
          ? new Error(`git ${args[0]} timed out or was aborted`, { cause: e })
          : new Error(`git could not start: ${e.message}`, { cause: e }),
      ),
    );
    child.on("close", (code) => (code === 0 ? resolve(out) : reject(new GitError(`git ${args[0]} exited with ${code}: ${err.trim()}`))));
  });
}

/** git itself refused (unknown commit, unreachable repository): final for these inputs. */
class GitError extends Error {}

/** Bytes of the files under `dir` (a file vanishing meanwhile, as git's temporary ones do, counts 0). */
async function treeBytes(dir: string): Promise<number> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const sizes = await Promise.all(
    entries
      .filter((e) => e.isFile())
      .map((e) =>
        stat(path.join(e.parentPath, e.name)).then(
          (st) => st.size,
          () => 0,
        ),
      ),
  );
  return sizes.reduce((a, b) => a + b, 0);
}

/** How often a running fetch's size is looked at. */
const FETCH_SIZE_POLL_MS = 100;

/**
 * Runs `git fetch` of the pinned commit, stopping it (and failing the build) once the scratch
 * repository holds more than `maxBytes`; checked while git runs and once more when it is done.
 */
async function fetchBounded(src: GitSource, scratch: string, signal: AbortSignal, maxBytes: number): Promise<void> {
  const tooBig = new AbortController();
  let grown: number | undefined;
  const check = async () => {
    const bytes = await treeBytes(scratch).catch(() => 0);
    if (bytes > maxBytes && grown === undefined) {
      grown = bytes;
      tooBig.abort();
    }
  };
  const poll = setInterval(() => void check(), FETCH_SIZE_POLL_MS);
  try {
    await git(["fetch", "--quiet", "--depth=1", "--no-tags", "--", src.transport.href, src.commit], scratch, AbortSignal.any([signal, tooBig.signal]));
  } catch (e) {
    if (grown === undefined) throw e;
  } finally {
    clearInterval(poll);
  }
  await check();
  if (grown !== undefined) throw new GitError(`the fetch grew past ${maxBytes} bytes (${grown} so far; HOMEOSTAT_MAX_SOURCE_BYTES) and was stopped`);
}

/**
 * Fetches exactly `src.commit` into the bare scratch repository `scratch` (an empty directory),
 * at most `maxFetchBytes` of it, and returns the `git archive` tar stream of its tree. The
 * caller consumes the stream (hashing and limiting it) and must wait for `done`, which rejects
 * if git failed.
 */
export async function exportGitTree(
  src: GitSource,
  scratch: string,
  signal: AbortSignal,
  maxFetchBytes: number,
): Promise<{ tar: Readable; done: Promise<void> }> {
  const label = `${src.transport.href}#${src.commit}`;
  try {
    await git(["init", "--quiet", "--bare", `--object-format=${src.commit.length === 64 ? "sha256" : "sha1"}`, "."], scratch, signal);
    await fetchBounded(src, scratch, signal, maxFetchBytes);
    const resolved = (await git(["rev-parse", "--verify", "--end-of-options", `${src.commit}^{commit}`], scratch, signal)).trim();
    if (resolved !== src.commit) throw new GitError(`${src.commit} resolves to ${resolved}`);
  } catch (e) {
    if (e instanceof GitError) throw new SourceError(`git source ${label}: ${e.message}`, { cause: e });
    throw e;
  }
  const child = spawn("git", ["archive", "--format=tar", "--end-of-options", src.commit], {
    cwd: scratch,
    env: gitEnvironment(scratch),
    stdio: ["ignore", "pipe", "pipe"],
    signal,
  });
  let err = "";
  child.stderr.on("data", (b: Buffer) => (err = (err + b.toString("utf8")).slice(-4000)));
  const done = new Promise<void>((resolve, reject) => {
    child.on("error", (e) => reject(new Error(`git archive of ${label} failed: ${e.message}`, { cause: e })));
    child.on("close", (code, sig) =>
      code === 0 ? resolve() : reject(new SourceError(`git source ${label}: git archive exited with ${code ?? sig}: ${err.trim()}`)),
    );
  });
  // The caller may stop reading (limit, mismatch) before git is done: that is reported by the
  // caller, not as an unhandled rejection.
  done.catch(() => {});
  // Take the output now: node discards the unread output of a child that has exited.
  const tar = child.stdout.pipe(new PassThrough());
  tar.on("close", () => child.stdout.destroy());
  return { tar, done };
}
