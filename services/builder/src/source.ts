/**
 * Sources: fetch an upstream archive, verify its sha256 BEFORE anything reads its content, and
 * unpack it safely.
 *
 * Fetching: `file://` URLs, plain paths (relative ones resolved against a base directory, the
 * catalog directory) and `http(s)://` URLs on loopback (127.0.0.0/8, ::1, localhost; other hosts
 * only when `allowRemote` is set). At most `maxBytes` are read. The archive lands in the
 * artifact store under its sha256 only if it matches the pinned digest, so a verified source is
 * fetched once and a mismatching one leaves nothing behind.
 *
 * Unpacking (node-tar): every entry is checked first, and the archive is refused with a clear
 * error when an entry has an absolute path, a `..` component, a link whose target leaves the
 * tree (absolute, or climbing out once resolved from the link's directory), or is a device or
 * fifo. The single top directory (`name-1.0/`) is stripped when there is one. Extraction runs in
 * node-tar's strict mode without owner preservation; node-tar also refuses to write through a
 * symlink, so a link inside the tree cannot redirect a later entry outside it.
 */
import { isIP } from "node:net";
import path from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { createReadStream } from "node:fs";
import { mkdir, stat } from "node:fs/promises";
import * as tar from "tar";
import type { Digest } from "@homeostat/core/digest";
import type { Source } from "@homeostat/core/contracts";
import { BuildFailure } from "./errors.ts";
import { ArtifactStore, DigestMismatchError, TooLargeError, type StoredBlob } from "./store.ts";

export type FetchOptions = {
  /** Directory that relative source paths are resolved against (the catalog directory). */
  baseDir: string;
  /** Largest archive accepted, in bytes. */
  maxBytes: number;
  /** Allow http(s) hosts other than loopback. Default false. */
  allowRemote?: boolean;
  /** Time limit of an HTTP download. Default 5 minutes. */
  timeoutMs?: number;
  signal?: AbortSignal;
};

/** Where a source URL points: a local file or an HTTP URL. */
export function resolveSourceLocation(url: string, baseDir: string): { kind: "file"; path: string } | { kind: "http"; url: URL } {
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(url) && !/^[a-zA-Z]:[\\/]/.test(url)) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new BuildFailure(`source URL ${JSON.stringify(url)} is not a valid URL`);
    }
    if (u.protocol === "file:") return { kind: "file", path: fileURLToPath(u) };
    if (u.protocol === "http:" || u.protocol === "https:") return { kind: "http", url: u };
    throw new BuildFailure(`source URL scheme ${u.protocol} is not supported (file://, http://, https:// or a path)`);
  }
  return { kind: "file", path: path.resolve(baseDir, url) };
}

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || h === "0:0:0:0:0:0:0:1" || /^::ffff:127\./.test(h);
  return false;
}

/**
 * Fetches `source` into the store, verified: returns the stored blob. A mismatching digest, an
 * archive over the limit, a missing file or an HTTP 4xx is a BuildFailure (nothing is stored);
 * network errors and HTTP 5xx are plain (retriable) errors.
 */
export async function fetchSource(source: Source, store: ArtifactStore, opts: FetchOptions): Promise<StoredBlob> {
  const expected: Digest = `sha256:${source.sha256}`;
  if (await store.has(expected)) {
    if (await store.verify(expected)) return { digest: expected, size: (await stat(store.path(expected))).size, path: store.path(expected) };
  }
  const where = resolveSourceLocation(source.url, opts.baseDir);
  let body: Readable;
  if (where.kind === "file") {
    let st;
    try {
      st = await stat(where.path);
    } catch (e) {
      throw new BuildFailure(`source ${source.url}: cannot read ${where.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!st.isFile()) throw new BuildFailure(`source ${source.url}: ${where.path} is not a file`);
    if (st.size > opts.maxBytes) throw new BuildFailure(`source ${source.url} is ${st.size} bytes, over the limit of ${opts.maxBytes}`);
    body = createReadStream(where.path);
  } else {
    if (!opts.allowRemote && !isLoopbackHost(where.url.hostname)) {
      throw new BuildFailure(`source ${source.url}: only loopback hosts are allowed (got ${where.url.hostname})`);
    }
    const signals = [AbortSignal.timeout(opts.timeoutMs ?? 5 * 60_000), ...(opts.signal ? [opts.signal] : [])];
    const res = await fetch(where.url, { redirect: "error", signal: AbortSignal.any(signals) });
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      const msg = `source ${source.url}: HTTP ${res.status} ${res.statusText}`;
      if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) throw new BuildFailure(msg);
      throw new Error(msg);
    }
    const declared = Number(res.headers.get("content-length") ?? "NaN");
    if (Number.isFinite(declared) && declared > opts.maxBytes) {
      await res.body?.cancel().catch(() => {});
      throw new BuildFailure(`source ${source.url} is ${declared} bytes, over the limit of ${opts.maxBytes}`);
    }
    if (!res.body) throw new Error(`source ${source.url}: empty HTTP response`);
    body = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
  }
  try {
    return await store.put(body, { expected, maxBytes: opts.maxBytes });
  } catch (e) {
    if (e instanceof DigestMismatchError) {
      throw new BuildFailure(`source ${source.url}: sha256 mismatch: expected ${e.expected}, got ${e.actual}`, { cause: e });
    }
    if (e instanceof TooLargeError) throw new BuildFailure(`source ${source.url} exceeds the limit of ${e.limit} bytes`, { cause: e });
    throw e;
  }
}

export type UnpackOptions = {
  /** Strip the archive's single top directory, if it has one. Default true. */
  stripTopDir?: boolean;
};

type EntryInfo = { path: string; type: string; linkpath: string | undefined };

const allowedTypes = new Set(["File", "OldFile", "ContiguousFile", "Directory", "SymbolicLink", "Link"]);

function components(p: string): string[] {
  return p.split("/").filter((c) => c !== "" && c !== ".");
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
    const top = entries.length > 0 && tops.size === 1 ? [...tops][0] : undefined;
    if (top !== undefined && entries.every((e) => components(e.path).length > 1 || e.type === "Directory")) strip = 1;
  }
  for (const e of entries) {
    if (e.type !== "SymbolicLink" && e.type !== "Link") continue;
    const target = e.linkpath ?? "";
    const rel = components(e.path).slice(strip);
    if (target === "") throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} has an empty target`);
    if (target.startsWith("/")) throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} points outside the tree (absolute target ${JSON.stringify(target)})`);
    // A symlink target is relative to the link's directory; a hard link's to the archive root.
    const base = e.type === "SymbolicLink" ? rel.slice(0, -1).join("/") : "";
    const targetParts = e.type === "Link" ? components(target).slice(strip) : components(target);
    if (e.type === "Link" && target.split("/").includes("..")) throw new BuildFailure(`${what}: hard link ${JSON.stringify(e.path)} target contains '..'`);
    const resolved = path.posix.normalize(`${base === "" ? "." : base}/${targetParts.join("/")}`);
    if (resolved === ".." || resolved.startsWith("../")) {
      throw new BuildFailure(`${what}: link ${JSON.stringify(e.path)} -> ${JSON.stringify(target)} points outside the tree`);
    }
  }
  return strip;
}

/**
 * Unpacks a .tar(.gz) into `destDir` after checking every entry (see the module comment).
 * `what` names the archive in errors.
 */
export async function unpackArchive(file: string, destDir: string, what: string, opts: UnpackOptions = {}): Promise<{ stripped: boolean; entries: number }> {
  const entries: EntryInfo[] = [];
  try {
    await tar.list({
      file,
      strict: true,
      onReadEntry: (e) => {
        if (e.meta || e.type === "GlobalExtendedHeader" || e.type === "ExtendedHeader") return;
        entries.push({ path: e.path, type: e.type, linkpath: e.linkpath });
      },
    });
  } catch (e) {
    throw new BuildFailure(`${what}: not a readable tar archive: ${(e as Error).message}`, { cause: e });
  }
  const strip = checkEntries(entries, what, opts.stripTopDir ?? true);
  await mkdir(destDir, { recursive: true });
  try {
    await tar.extract({
      file,
      cwd: destDir,
      strip,
      strict: true,
      preserveOwner: false,
      preservePaths: false,
      // Defence in depth: node-tar's own checks (absolute paths, '..', writing through symlinks)
      // stay on, and anything the scan did not see is refused.
      filter: (p) => !p.split("/").includes("..") && !p.startsWith("/"),
    });
  } catch (e) {
    throw new BuildFailure(`${what}: unpacking failed: ${(e as Error).message}`, { cause: e });
  }
  return { stripped: strip === 1, entries: entries.length };
}
