/**
 * Sources: fetch an upstream archive, verify its sha256 BEFORE anything reads its content, and
 * unpack it safely.
 *
 * Fetching follows the source path rules of @homeostat/source (shared with the reconciler's
 * upstream resolver): paths relative to the catalog directory, `file://`, `http(s)://` on
 * loopback only unless `allowRemote` is set, no credentials, at most `maxBytes`, a time limit;
 * git repositories pinned to a commit, `git+file:///repo#<commit>` (the sha256 is then that of
 * the commit's `git archive` tar, verified alongside the commit id). The archive lands in the
 * artifact store under its sha256 only if it matches the pinned digest, so a verified source is
 * fetched once and a mismatching one leaves nothing behind. What the rules refuse is a
 * BuildFailure. Patches are fetched the same way (`fetchPatch`; any of these but git, a patch
 * being one file).
 *
 * Unpacking (node-tar): the archive is first read to its end without writing anything, and is
 * refused with a clear error when an entry has an absolute path, a `..` component, a link whose
 * target leaves the tree (absolute, or climbing out once resolved from the link's directory
 * through the archive's own symlinks), or is a device or fifo; when it has more than
 * `maxEntries` entries or more than `maxBytes` uncompressed bytes (counted while streaming,
 * from each header's declared size and from the inflated bytes); or when it is a decompression
 * bomb (it expands more than MAX_EXPANSION_RATIO times). The single top directory (`name-1.0/`)
 * is stripped when there is one. Extraction runs in node-tar's strict mode without owner
 * preservation; node-tar also refuses to write through a symlink, so a link inside the tree
 * cannot redirect a later entry outside it.
 */
import path from "node:path";
import type { Readable } from "node:stream";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, open, rm, stat } from "node:fs/promises";
import { createGunzip } from "node:zlib";
import * as tar from "tar";
import type { Digest } from "@homeostat/core/digest";
import type { PatchRef, Source } from "@homeostat/core/contracts";
import { checkHost, exportGitTree, isGitSourceUrl, openSource, parseGitSource, SourceError, timeoutSignal, type OpenOptions } from "@homeostat/source";
import { BuildFailure } from "./errors.ts";
import { ArtifactStore, DigestMismatchError, TooLargeError, type StoredBlob } from "./store.ts";

export { isLoopbackHost, resolveSourceLocation } from "@homeostat/source";

/** The source path rules (@homeostat/source): base directory, size limit, hosts, time limit. */
export type FetchOptions = OpenOptions & {
  /**
   * Another store a pinned blob is taken from when it holds it, verified, before anything is
   * fetched: a trial build (own store, no remote hosts) takes the sources and patches the
   * factory's builds fetched already.
   */
  pinnedFrom?: ArtifactStore;
};

/** What a fetched blob is, as errors name it (`patch <url>: ...`). */
export type FetchedKind = "source" | "patch";

/**
 * Fetches `source` into the store, verified: returns the stored blob. A mismatching digest, an
 * archive over the limit, a missing file, an unknown commit or an HTTP 4xx is a BuildFailure
 * (nothing is stored); network errors and HTTP 5xx are plain (retriable) errors.
 */
export async function fetchSource(source: Source, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  return fetchPinned("source", source, store, opts);
}

/** Fetches a patch into the store exactly as fetchSource does a source (git URLs excepted). */
export async function fetchPatch(patch: PatchRef, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  if (isGitSourceUrl(patch.url))
    throw new BuildFailure(`patch ${patch.url}: a patch is one file (a path, file://, http:// or https:// URL), not a git repository`);
  return fetchPinned("patch", patch, store, opts);
}

async function fetchPinned(kind: FetchedKind, source: Source, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  const what = `${kind} ${source.url}`;
  const expected: Digest = `sha256:${source.sha256}`;
  for (const held of opts.pinnedFrom ? [store, opts.pinnedFrom] : [store])
    if ((await held.has(expected)) && (await held.verify(expected)))
      return { digest: expected, size: (await stat(held.path(expected))).size, path: held.path(expected) };
  try {
    if (isGitSourceUrl(source.url)) return await fetchGitSource(source, store, opts);
    return await storeVerified(source, what, await openSource(source.url, what, opts), store, opts);
  } catch (e) {
    // What the source path rules refuse cannot succeed with these inputs: the build fails.
    if (e instanceof SourceError) throw new BuildFailure(e.message, { cause: e });
    throw e;
  }
}

/** Streams `body` into the store, refusing it unless it hashes to the pinned sha256. */
async function storeVerified(source: Source, what: string, body: Readable, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  try {
    return await store.put(body, { expected: `sha256:${source.sha256}`, maxBytes: opts.maxBytes });
  } catch (e) {
    if (e instanceof DigestMismatchError) {
      throw new BuildFailure(`${what}: sha256 mismatch: expected ${e.expected}, got ${e.actual}`, { cause: e });
    }
    if (e instanceof TooLargeError) throw new BuildFailure(`${what} exceeds the limit of ${e.limit} bytes`, { cause: e });
    throw e;
  }
}

/** A git source (@homeostat/source git.ts): fetched into a scratch repository, its tree exported as a tar. */
async function fetchGitSource(source: Source, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  const src = parseGitSource(source.url);
  if (src.transport.protocol !== "file:") checkHost(`source ${source.url}`, src.transport, opts.allowRemote);
  await mkdir(path.join(store.root, "tmp"), { recursive: true });
  const scratch = await mkdtemp(path.join(store.root, "tmp", "git-"));
  try {
    const { tar: body, done } = await exportGitTree(src, scratch, timeoutSignal(opts), opts.maxBytes);
    const stored = await storeVerified(source, `source ${source.url}`, body, store, opts).catch(async (e: unknown) => {
      // When git failed, its error says more than the digest of a truncated export.
      await done;
      throw e;
    });
    await done;
    return stored;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

export type UnpackLimits = {
  /** Largest total of uncompressed bytes (tar headers and contents). */
  maxBytes: number;
  /** Most entries (files, directories, links). */
  maxEntries: number;
};

export type UnpackOptions = {
  /** Strip the archive's single top directory, if it has one. Default true. */
  stripTopDir?: boolean;
  limits: UnpackLimits;
  /**
   * The digest the archive was just verified to have (a blob of the store). Its scan is then
   * remembered: a popular package's archive is unpacked into the sysroot of build after build,
   * and scanning it again (a second decompression and parse) was 30-50 % of the CPU of unpacking
   * a 12 KB package archive (timed alone, 300 unpacks).
   */
  digest?: Digest;
};

/**
 * A compressed archive that expands more than this many times is a decompression bomb, once it
 * has expanded past BOMB_FLOOR_BYTES (so a small archive of zeros is not flagged). Source code
 * compresses 3 to 10 times with gzip; gzip cannot exceed about 1032.
 */
export const MAX_EXPANSION_RATIO = 200;
export const BOMB_FLOOR_BYTES = 64 * 1024 * 1024;

type EntryInfo = { path: string; type: string; linkpath: string | undefined };
/** What a scan found: the entries, and the bytes their headers declare (contents, not tar blocks). */
type Scan = { entries: EntryInfo[]; declaredBytes: number };

const allowedTypes = new Set(["File", "OldFile", "ContiguousFile", "Directory", "SymbolicLink", "Link"]);

function components(p: string): string[] {
  return p.split("/").filter((c) => c !== "" && c !== ".");
}

/** Most symlinks followed while resolving one link target (as the kernel's ELOOP limit). */
const MAX_LINK_HOPS = 40;

/**
 * Resolves `target` from directory `from` (components relative to the tree root) the way the
 * kernel would once the tree is unpacked, following the archive's own symlinks (`links`: path
 * -> target). Returns undefined when the path leaves the tree (or loops).
 */
function resolveInTree(from: string[], target: string, links: Map<string, string>, hops = { n: 0 }): string[] | undefined {
  const at = target.startsWith("/") ? undefined : [...from];
  if (!at) return undefined;
  for (const c of components(target)) {
    if (c === "..") {
      if (at.length === 0) return undefined;
      at.pop();
      continue;
    }
    at.push(c);
    const link = links.get(at.join("/"));
    if (link === undefined) continue;
    if (++hops.n > MAX_LINK_HOPS) return undefined;
    const resolved = resolveInTree(at.slice(0, -1), link, links, hops);
    if (!resolved) return undefined;
    at.splice(0, at.length, ...resolved);
  }
  return at;
}

/** Checks every entry and decides whether to strip; throws BuildFailure naming the bad entry. */
function checkEntries(entries: EntryInfo[], what: string, stripTopDir: boolean): number {
  for (const e of entries) {
    if (!allowedTypes.has(e.type)) throw new BuildFailure(`${what}: entry ${JSON.stringify(e.path)} has unsupported type ${e.type}`);
    if (e.path.startsWith("/") || /^[a-zA-Z]:/.test(e.path)) throw new BuildFailure(`${what}: entry ${JSON.stringify(e.path)} has an absolute path`);
    if (e.path.split(/[\\/]/).includes("..")) throw new BuildFailure(`${what}: entry ${JSON.stringify(e.path)} contains '..'`);
  }
  let strip = 0;
  if (stripTopDir && entries.length > 0) {
    const tops = new Set(entries.map((e) => components(e.path)[0]));
    const top = tops.size === 1 ? [...tops][0] : undefined;
    if (top !== undefined && entries.every((e) => components(e.path).length > 1 || e.type === "Directory")) strip = 1;
  }
  const rel = (p: string): string[] => components(p).slice(strip);
  const symlinks = new Map<string, string>();
  for (const e of entries) if (e.type === "SymbolicLink") symlinks.set(rel(e.path).join("/"), e.linkpath ?? "");
  for (const e of entries) {
    if (e.type !== "SymbolicLink" && e.type !== "Link") continue;
    const target = e.linkpath ?? "";
    if (target === "") throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} has an empty target`);
    if (target.startsWith("/"))
      throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} points outside the tree (absolute target ${JSON.stringify(target)})`);
    if (e.type === "Link" && target.split("/").includes("..")) throw new BuildFailure(`${what}: hard link ${JSON.stringify(e.path)} target contains '..'`);
    // A symlink target is relative to the link's directory; a hard link's to the archive root
    // (and is stripped like any entry path). Either is resolved through the archive's symlinks.
    const resolved = e.type === "SymbolicLink" ? resolveInTree(rel(e.path).slice(0, -1), target, symlinks) : resolveInTree([], rel(target).join("/"), symlinks);
    if (!resolved) throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} -> ${JSON.stringify(target)} points outside the tree`);
  }
  return strip;
}

/**
 * Reads the archive's entry list, decompressing it ourselves so that every limit is enforced
 * while streaming: the declared size of each entry counts against `maxBytes` as soon as its
 * header is read (a 1 TB entry fails before any of it is inflated), and so does every
 * decompressed byte (trailing garbage after the end-of-archive marker included).
 */
async function scanArchive(file: string, what: string, limits: UnpackLimits): Promise<Scan> {
  const compressed = Math.max(1, (await stat(file)).size);
  const head = Buffer.alloc(2);
  const fh = await open(file, "r");
  try {
    await fh.read(head, 0, 2, 0);
  } finally {
    await fh.close();
  }
  const gzipped = head[0] === 0x1f && head[1] === 0x8b;
  const raw = createReadStream(file);
  const input: Readable = gzipped ? raw.pipe(createGunzip()) : raw;
  const entries: EntryInfo[] = [];
  let declared = 0;
  let failure: Error | undefined;
  const fail = (msg: string): void => {
    failure ??= new BuildFailure(`${what}: ${msg}`);
  };
  const parser = new tar.Parser({
    strict: true,
    onReadEntry: (e) => {
      e.resume();
      if (e.meta || e.type === "GlobalExtendedHeader" || e.type === "ExtendedHeader") return;
      declared += e.size ?? 0;
      if (entries.length >= limits.maxEntries) fail(`has more than ${limits.maxEntries} entries (the limit)`);
      else if (declared > limits.maxBytes)
        fail(`unpacks to more than ${limits.maxBytes} bytes (the limit; entry ${JSON.stringify(e.path)} declares ${e.size})`);
      else entries.push({ path: e.path, type: e.type, linkpath: e.linkpath });
    },
  });
  parser.on("error", (e: Error) => (failure ??= new BuildFailure(`${what}: not a readable tar archive: ${e.message}`, { cause: e })));
  const ended = new Promise<void>((resolve) => {
    for (const ev of ["end", "error", "abort"]) parser.on(ev, () => resolve());
  });
  let expanded = 0;
  try {
    for await (const chunk of input as AsyncIterable<Buffer>) {
      expanded += chunk.length;
      if (expanded > limits.maxBytes) fail(`unpacks to more than ${limits.maxBytes} bytes (the limit)`);
      else if (gzipped && expanded > BOMB_FLOOR_BYTES && expanded > MAX_EXPANSION_RATIO * compressed) {
        fail(`decompression bomb: ${compressed} compressed bytes expand to more than ${expanded} (over ${MAX_EXPANSION_RATIO}:1)`);
      } else parser.write(chunk);
      if (failure) throw failure;
    }
  } catch (e) {
    if (e instanceof BuildFailure) throw e;
    throw new BuildFailure(`${what}: not a readable tar archive: ${(e as Error).message}`, { cause: e });
  } finally {
    raw.destroy();
    input.destroy();
  }
  parser.end();
  await ended;
  if (failure) throw failure;
  return { entries, declaredBytes: declared };
}

/** Scans of verified archives by digest and limits, least recently used first. */
const rememberedScans = new Map<string, Scan>();
/** Entries held over all remembered scans; a larger scan is not remembered at all. */
const MAX_REMEMBERED_ENTRIES = 100_000;
let rememberedEntries = 0;

/**
 * The scan of the archive with this digest under these limits, made once and remembered (a
 * failed scan is not: it throws every time). Only what the scan found is kept, never a verdict:
 * `checkEntries` still runs on every unpack, with that unpack's options.
 */
async function rememberedScan(digest: Digest, scan: () => Promise<Scan>, limits: UnpackLimits): Promise<Scan> {
  const key = `${digest} ${limits.maxBytes} ${limits.maxEntries}`;
  const known = rememberedScans.get(key);
  if (known) {
    rememberedScans.delete(key);
    rememberedScans.set(key, known);
    return known;
  }
  const found = await scan();
  if (found.entries.length > MAX_REMEMBERED_ENTRIES / 10) return found;
  rememberedScans.set(key, found);
  rememberedEntries += found.entries.length;
  for (const [oldest, held] of rememberedScans) {
    if (rememberedEntries <= MAX_REMEMBERED_ENTRIES) break;
    rememberedScans.delete(oldest);
    rememberedEntries -= held.entries.length;
  }
  return found;
}

/**
 * Archives of at most this many entries declaring at most this many bytes are unpacked with
 * synchronous file calls: for a package's archive of a few kilobytes that took half the CPU of
 * the asynchronous unpack (one thread-pool round trip per call), and it holds the event loop for
 * a millisecond or two. A larger archive (a source tree) is unpacked asynchronously, so as not to
 * hold it longer.
 */
const SYNC_UNPACK_MAX = { bytes: 1024 * 1024, entries: 256 };

/**
 * Unpacks a .tar(.gz) into `destDir` after checking every entry and the limits (see the module
 * comment). `what` names the archive in errors.
 */
export async function unpackArchive(file: string, destDir: string, what: string, opts: UnpackOptions): Promise<{ stripped: boolean; entries: number }> {
  const { entries, declaredBytes } = opts.digest
    ? await rememberedScan(opts.digest, () => scanArchive(file, what, opts.limits), opts.limits)
    : await scanArchive(file, what, opts.limits);
  const strip = checkEntries(entries, what, opts.stripTopDir ?? true);
  await mkdir(destDir, { recursive: true });
  const extract = {
    file,
    cwd: destDir,
    strip,
    strict: true,
    preserveOwner: false,
    preservePaths: false,
    // Defence in depth: node-tar's own checks (absolute paths, '..', writing through symlinks)
    // stay on, and anything the scan did not see is refused.
    filter: (p: string) => !p.split("/").includes("..") && !p.startsWith("/"),
  };
  try {
    if (declaredBytes <= SYNC_UNPACK_MAX.bytes && entries.length <= SYNC_UNPACK_MAX.entries) tar.extract({ ...extract, sync: true });
    else await tar.extract(extract);
  } catch (e) {
    throw new BuildFailure(`${what}: unpacking failed: ${(e as Error).message}`, { cause: e });
  }
  return { stripped: strip === 1, entries: entries.length };
}
