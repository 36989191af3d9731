/**
 * Deterministic tar (and tar.gz) of a directory, streamed: the same tree always gives the same
 * bytes, whoever built it, wherever, whenever.
 *
 * Format: POSIX ustar headers; a pax extended header (`x`) carries what ustar cannot hold
 * (paths over 100 bytes or not ASCII, link targets over 100 bytes, sizes of 8 GiB and more).
 * Normalisation:
 * - entries sorted by the byte order (UTF-8) of their path; directories end with `/`;
 * - mtime = the given SOURCE_DATE_EPOCH, uid/gid 0, uname/gname empty, no devmajor/devminor;
 * - modes: directories 0755, files 0755 if any execute bit is set else 0644, symlinks 0777
 *   (setuid, setgid and sticky bits are dropped);
 * - regular files, directories and symlinks only; a hard link is stored as a regular file with
 *   its content; sockets, fifos and devices are refused;
 * - the archive ends with two zero blocks (no padding to a 10 KiB record).
 *
 * File contents are streamed with back-pressure (never the whole archive in memory), and one
 * pass computes the per-entry sha256, the sha256 and size of the tar (the OCI diff_id) and, for
 * tar.gz, the sha256 and size of the compressed stream (the OCI layer digest).
 *
 * Gzip: one gzip member compressed in parallel 1 MiB blocks (parallel-gzip.ts: pigz's layout,
 * bytes independent of scheduling; a block of random-looking bytes stored), level 6, memLevel 8,
 * windowBits 15, default strategy, all pinned (GZIP_OPTIONS). Level 6 is zlib's own default (also `gzip`'s and Go compress/gzip's
 * default compression): typically only a few percent larger than level 9 and several times
 * faster, so rebuilds stay cheap while layers stay small. The gzip header has mtime 0, no file
 * name and OS byte 3 (Unix), so it carries nothing of the build.
 * Caveat: compressed bytes are a function of the zlib implementation; the diff_id is the
 * implementation-independent identity of a layer's content.
 */
import { createHash, type Hash } from "node:crypto";
import { closeSync, fstatSync, openSync, readdirSync, readlinkSync, readSync, type Dirent } from "node:fs";
import { lstat } from "node:fs/promises";
import path from "node:path";
import { Readable, Transform, type TransformCallback, type Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { availableParallelism } from "node:os";
import { constants as zc } from "node:zlib";
import type { Digest } from "@homeostat/core/digest";
import { BLOCK_BYTES, ParallelGzip } from "./parallel-gzip.ts";

export type TarEntryType = "file" | "directory" | "symlink";

/** One entry as written into the archive. */
export type TarEntry = {
  /** Path inside the archive, without leading `./`; directories end with `/`. */
  path: string;
  type: TarEntryType;
  /** Normalised permission bits (0o755, 0o644, 0o777). */
  mode: number;
  /** Content size in bytes (0 for directories and symlinks). */
  size: number;
  /** sha256 (hex) of the content; files only. */
  sha256?: string;
  /** Target of a symlink, verbatim. */
  linkname?: string;
  /** Owner, when not root (only in archives written from entries, see writeTarGzFromEntries). */
  uid?: number;
  gid?: number;
};

export type TarOptions = {
  /** SOURCE_DATE_EPOCH: the mtime of every entry, in seconds. */
  epoch: number;
  /** Path prefix for every entry, e.g. `usr/local` (its directories are emitted too). */
  prefix?: string;
};

export type TarResult = {
  entries: TarEntry[];
  /** sha256 of the uncompressed tar: the OCI diff_id. */
  diffId: Digest;
  /** Size of the uncompressed tar in bytes. */
  tarSize: number;
};

export type TarGzResult = TarResult & {
  /** sha256 of the gzip stream: the OCI layer digest. */
  digest: Digest;
  /** Size of the gzip stream in bytes. */
  size: number;
};

/**
 * The pinned zlib parameters of every layer's blocks (windowBits 15; block size and layout in
 * parallel-gzip.ts). Changing any of them changes layer digests (bump BUILDER_VERSION).
 */
export const GZIP_OPTIONS = Object.freeze({
  level: 6,
  memLevel: 8,
  strategy: zc.Z_DEFAULT_STRATEGY,
});

export class TarError extends Error {}

const BLOCK = 512;
const MAX_OCTAL_SIZE = 0o77777777777; // 11 octal digits: 8 GiB - 1

type Planned = { entry: TarEntry; abs?: string; content?: Buffer };

/** Normalised mode: 0755 for directories and executables, 0644 for other files, 0777 for symlinks. */
export function normaliseMode(type: TarEntryType, mode: number): number {
  if (type === "directory") return 0o755;
  if (type === "symlink") return 0o777;
  return mode & 0o111 ? 0o755 : 0o644;
}

function cleanPrefix(prefix: string | undefined): string[] {
  if (!prefix) return [];
  const parts = prefix.split("/").filter((p) => p !== "" && p !== ".");
  for (const p of parts) if (p === "..") throw new TarError(`bad prefix ${JSON.stringify(prefix)}`);
  return parts;
}

/**
 * A string that compares like `s`'s UTF-8 bytes: one character per byte, made once per name, so
 * that sorting is plain string comparisons (encoding both sides in every comparison took about a
 * second for the 15,000 paths of bench:build's tree, as long as archiving a fifth of it).
 */
function byteOrderKey(s: string): string {
  return Buffer.from(s, "utf8").toString("latin1");
}

/** Orders by `key` (a byteOrderKey). */
function byKey(a: { key: string }, b: { key: string }): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/** Sorts by the byte order (UTF-8) of the archived path (a made layer's entries; a walked tree comes in that order: walk). */
function sortByArchivePath(planned: Planned[]): Planned[] {
  return planned
    .map((p) => ({ p, key: byteOrderKey(p.entry.path) }))
    .sort(byKey)
    .map(({ p }) => p);
}

/** `rootDir` resolved, once it is known to be a directory. */
async function archiveRoot(rootDir: string): Promise<string> {
  const root = path.resolve(rootDir);
  if (!(await lstat(root)).isDirectory()) throw new TarError(`${root} is not a directory`);
  return root;
}

/** An entry's place among its siblings: its name's UTF-8 bytes, a directory's with its `/`. */
function siblingKey(d: Dirent): string {
  return byteOrderKey(d.isDirectory() ? `${d.name}/` : d.name);
}

/**
 * The entries under `root` (not following symlinks) in archive order, walked while they are
 * archived: each directory is read when the archive reaches it, synchronously like the files
 * (tarChunks), its entries sorted by siblingKey. That order is the byte order of the whole
 * paths: everything under `a/` sorts right after `a/` and before any sibling after `a/` (a
 * sibling cannot start with `a/`), and `a-b` before `a/` as `-` comes before `/`. So a layer's
 * first blocks compress while the rest of the tree is walked, not after a walk of all of it
 * (40-60 ms for bench:build's 15,000 entries). `tar tf x.tar | LC_ALL=C sort -c` holds.
 *
 * One readdir per directory, its entries' types from the directory itself (Node lstats the ones
 * a file system leaves unknown); a file's mode and size are read when it is archived.
 */
function* walk(root: string, prefixParts: readonly string[]): Generator<Planned> {
  for (let i = 1; i <= prefixParts.length; i++) {
    yield { entry: { path: `${prefixParts.slice(0, i).join("/")}/`, type: "directory", mode: 0o755, size: 0 } };
  }
  const base = prefixParts.length > 0 ? `${prefixParts.join("/")}/` : "";
  function* directory(dir: string, rel: string): Generator<Planned> {
    const sorted = readdirSync(dir, { withFileTypes: true })
      .map((d) => ({ d, key: siblingKey(d) }))
      .sort(byKey);
    for (const { d } of sorted) {
      const abs = path.join(dir, d.name);
      const relPath = `${rel}${d.name}`;
      if (d.isDirectory()) {
        yield { entry: { path: `${base}${relPath}/`, type: "directory", mode: 0o755, size: 0 } };
        yield* directory(abs, `${relPath}/`);
      } else if (d.isFile()) {
        yield { entry: { path: `${base}${relPath}`, type: "file", mode: 0o644, size: 0 }, abs };
      } else if (d.isSymbolicLink()) {
        yield { entry: { path: `${base}${relPath}`, type: "symlink", mode: 0o777, size: 0, linkname: readlinkSync(abs) } };
      } else {
        throw new TarError(`${abs}: unsupported file type (only files, directories and symlinks are archived)`);
      }
    }
  }
  yield* directory(root, "");
}

function writeString(buf: Buffer, offset: number, length: number, value: string): void {
  const b = Buffer.from(value, "utf8");
  if (b.length > length) throw new TarError(`header field too long: ${JSON.stringify(value)}`);
  b.copy(buf, offset);
}

/** Octal, zero-padded to length-1 digits, NUL-terminated. */
function writeOctal(buf: Buffer, offset: number, length: number, value: number): void {
  const s = value.toString(8).padStart(length - 1, "0");
  if (s.length > length - 1) throw new TarError(`value ${value} does not fit a ${length}-byte tar field`);
  buf.write(`${s}\0`, offset, length, "ascii");
}

function fitsUstar(s: string, max: number): boolean {
  // Plain printable ASCII only in ustar fields; anything else goes into a pax record (UTF-8).
  return Buffer.byteLength(s, "utf8") <= max && /^[\x20-\x7e]*$/.test(s);
}

function header(fields: { name: string; mode: number; size: number; mtime: number; typeflag: string; linkname?: string; uid?: number; gid?: number }): Buffer {
  // From Buffer's shared pool (16 headers a slab), not an ArrayBuffer each: 15,000 of them for a
  // large tree added to the external memory that starts V8's full marking.
  const h = Buffer.allocUnsafe(BLOCK).fill(0);
  writeString(h, 0, 100, fields.name);
  writeOctal(h, 100, 8, fields.mode);
  writeOctal(h, 108, 8, fields.uid ?? 0);
  writeOctal(h, 116, 8, fields.gid ?? 0);
  writeOctal(h, 124, 12, fields.size);
  writeOctal(h, 136, 12, fields.mtime);
  h.fill(0x20, 148, 156); // checksum field counts as spaces
  h.write(fields.typeflag, 156, 1, "ascii");
  if (fields.linkname) writeString(h, 157, 100, fields.linkname);
  h.write("ustar\0", 257, 6, "ascii");
  h.write("00", 263, 2, "ascii");
  // uname, gname: empty. devmajor/devminor: zero-filled (numeric fields, unused for these types).
  writeOctal(h, 329, 8, 0);
  writeOctal(h, 337, 8, 0);
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "ascii");
  return h;
}

/** One pax record: `<len> <key>=<value>\n`, where len counts the whole record including itself. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  const bodyLen = Buffer.byteLength(body, "utf8");
  let len = bodyLen + 1;
  while (String(len).length + bodyLen !== len) len = String(len).length + bodyLen;
  return `${len}${body}`;
}

/** Zero bytes after `size` bytes of content, up to the next 512-byte boundary. */
function paddingBytes(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

/** The header block(s) of an entry: an optional pax header + its data, then the ustar header. */
function entryHeaders(e: TarEntry, mtime: number): Buffer[] {
  const pax: string[] = [];
  let name = e.path;
  if (!fitsUstar(e.path, 100)) {
    pax.push(paxRecord("path", e.path));
    name = asciiTruncate(e.path, 100);
  }
  let linkname = e.linkname;
  if (linkname !== undefined && !fitsUstar(linkname, 100)) {
    pax.push(paxRecord("linkpath", linkname));
    linkname = asciiTruncate(linkname, 100);
  }
  let size = e.size;
  if (size > MAX_OCTAL_SIZE) {
    pax.push(paxRecord("size", String(size)));
    size = 0;
  }
  const typeflag = e.type === "file" ? "0" : e.type === "directory" ? "5" : "2";
  const out: Buffer[] = [];
  if (pax.length > 0) {
    const data = Buffer.from(pax.join(""), "utf8");
    // Deterministic pax header name, in the style of Go's archive/tar.
    const base = e.path.endsWith("/") ? e.path.slice(0, -1) : e.path;
    const paxName = asciiTruncate(`PaxHeaders.0/${path.posix.basename(base)}`, 100);
    out.push(header({ name: paxName, mode: 0o644, size: data.length, mtime, typeflag: "x" }), data, Buffer.alloc(paddingBytes(data.length)));
  }
  out.push(
    header({
      name,
      mode: e.mode,
      size,
      mtime,
      typeflag,
      ...(linkname !== undefined ? { linkname } : {}),
      ...(e.uid !== undefined ? { uid: e.uid } : {}),
      ...(e.gid !== undefined ? { gid: e.gid } : {}),
    }),
  );
  return out;
}

function asciiTruncate(s: string, max: number): string {
  return s.replace(/[^\x20-\x7e]/g, "_").slice(0, max);
}

/** The first chunk of an archive; a power of two, so that doubling reaches BLOCK_BYTES exactly. */
const FIRST_CHUNK_BYTES = 64 * 1024;

/**
 * The archive is cut into chunks of BLOCK_BYTES, the size of parallel-gzip's blocks, so that each
 * chunk is one block (no copying to re-cut it) and a layer flows through the streams as a few
 * hundred chunks rather than several per file: per chunk, the streams cost more than hashing it.
 * Headers, padding and file contents are written (files read) straight into the chunk.
 *
 * The first chunk starts at FIRST_CHUNK_BYTES and doubles as it fills: most packages' archives
 * are a few kilobytes, and a megabyte of external memory for each started V8's full marking
 * after most builds (with parallel-gzip's output buffers; bench:storm's latency scenario).
 */
class ChunkPacker {
  private chunk: Buffer = Buffer.allocUnsafe(FIRST_CHUNK_BYTES);
  private used = 0;

  /** Full-size chunks the consumer is done with (ParallelGzip's recycle), used before allocating. */
  private readonly spare: Buffer[];

  constructor(spare: Buffer[] = []) {
    this.spare = spare;
  }

  /** Hands the next `n` bytes of the archive to `fill`, piece by piece; yields each chunk it fills. */
  *put(n: number, fill: (piece: Buffer) => void): Generator<Buffer> {
    for (let left = n; left > 0;) {
      if (this.used === this.chunk.length) this.grow();
      const piece = this.chunk.subarray(this.used, this.used + Math.min(left, this.chunk.length - this.used));
      fill(piece);
      this.used += piece.length;
      left -= piece.length;
      if (this.used === BLOCK_BYTES) {
        yield this.chunk;
        // The next block's chunk is made when a byte comes for it, a whole block at once.
        this.chunk = Buffer.alloc(0);
        this.used = 0;
      }
    }
  }

  /** A full chunk: twice the room (what it holds copied over), or after a block, a block's. */
  private grow(): void {
    const bigger =
      this.chunk.length === 0 ? (this.spare.pop() ?? Buffer.allocUnsafe(BLOCK_BYTES)) : Buffer.allocUnsafe(Math.min(BLOCK_BYTES, this.chunk.length * 2));
    this.chunk.copy(bigger, 0, 0, this.used);
    this.chunk = bigger;
  }

  *append(bytes: Buffer): Generator<Buffer> {
    let at = 0;
    yield* this.put(bytes.length, (piece) => {
      at += bytes.copy(piece, 0, at, at + piece.length);
    });
  }

  *zeros(n: number): Generator<Buffer> {
    yield* this.put(n, (piece) => piece.fill(0));
  }

  /** The last, partial chunk. */
  *end(): Generator<Buffer> {
    if (this.used > 0) yield this.chunk.subarray(0, this.used);
  }
}

/**
 * The whole archive of `planned` in chunks of BLOCK_BYTES (the last shorter); fills in each file
 * entry's mode, size and sha256 as it goes, and appends each entry to `archived`.
 *
 * Files are read with synchronous calls, straight into the chunk; the stream pulls one chunk at
 * a time, so other work runs while chunks are compressed or written. Read asynchronously, every
 * open, stat, read and close was a trip through libuv's thread pool, which while a layer is
 * written is busy deflating blocks (parallel-gzip.ts): each trip waited for a block to finish
 * and the deflate threads then waited for input, and on a loaded machine each trip also waited
 * to be scheduled. From the page cache (a build's outputs were just written) a chunk of small
 * files takes a few milliseconds.
 */
function* tarChunks(planned: Iterable<Planned>, mtime: number, archived: TarEntry[], spare?: Buffer[]): Generator<Buffer> {
  const out = new ChunkPacker(spare);
  for (const p of planned) {
    const e = p.entry;
    archived.push(e);
    if (e.type !== "file") {
      for (const h of entryHeaders(e, mtime)) yield* out.append(h);
      continue;
    }
    if (p.content) {
      e.sha256 = createHash("sha256").update(p.content).digest("hex");
      for (const h of entryHeaders(e, mtime)) yield* out.append(h);
      yield* out.append(p.content);
      yield* out.zeros(paddingBytes(e.size));
      continue;
    }
    if (p.abs === undefined) throw new Error(`internal: tar entry ${e.path} has neither content nor a source file`);
    const file = p.abs;
    const fd = openSync(file, "r");
    try {
      // The size written in the header is the size now; a file that changes meanwhile is an error.
      const st = fstatSync(fd);
      if (!st.isFile()) throw new TarError(`${file} changed type while being archived`);
      e.size = st.size;
      e.mode = normaliseMode("file", st.mode);
      for (const h of entryHeaders(e, mtime)) yield* out.append(h);
      const hash = createHash("sha256");
      yield* out.put(e.size, (piece) => {
        if (readFully(fd, piece) < piece.length) throw new TarError(`${file} shrank while being archived`);
        hash.update(piece);
      });
      if (readFully(fd, endProbe) !== 0) throw new TarError(`${file} grew while being archived`);
      e.sha256 = hash.digest("hex");
      yield* out.zeros(paddingBytes(e.size));
    } finally {
      closeSync(fd);
    }
  }
  yield* out.zeros(2 * BLOCK);
  yield* out.end();
}

/** One byte read past a file's end, to find that it grew; its content is never used. */
const endProbe = Buffer.alloc(1);

/** Reads into `buf` until it is full or the file ends; returns the bytes read. */
function readFully(fd: number, buf: Buffer): number {
  let n = 0;
  while (n < buf.length) {
    const read = readSync(fd, buf, n, buf.length - n, null);
    if (read === 0) break;
    n += read;
  }
  return n;
}

/** A pass-through that hashes and counts what flows through it. */
class HashTap extends Transform {
  readonly hash: Hash = createHash("sha256");
  bytes = 0;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }
}

/**
 * Blocks handed to the thread pool at once: twice the cores, so that a thread never waits for
 * the next block to be read, between 4 and 8 (libuv's pool has 4 threads by default; more only
 * holds memory, about 2 MiB a block). It does not change the output.
 */
const GZIP_BLOCKS_IN_FLIGHT = Math.min(8, Math.max(4, 2 * availableParallelism()));

function checkEpoch(epoch: number): void {
  if (!Number.isInteger(epoch) || epoch < 0 || epoch > MAX_OCTAL_SIZE) throw new TarError(`bad epoch ${epoch}`);
}

/**
 * The checked root of an archive and the parts of its prefix; on failure `out` is destroyed, as
 * `pipeline` would, so no descriptor leaks.
 */
async function rootOrDestroy(rootDir: string, opts: TarOptions, out: Writable): Promise<{ root: string; prefixParts: string[] }> {
  try {
    checkEpoch(opts.epoch);
    const prefixParts = cleanPrefix(opts.prefix);
    return { root: await archiveRoot(rootDir), prefixParts };
  } catch (e) {
    out.destroy();
    throw e;
  }
}

/**
 * Writes a deterministic (uncompressed) tar of `rootDir` to `out` (ended on success,
 * destroyed on failure) and returns its entries (in archive order, files with their sha256), diff_id and size.
 */
export async function writeTarFromDirectory(rootDir: string, out: Writable, opts: TarOptions): Promise<TarResult> {
  const { root, prefixParts } = await rootOrDestroy(rootDir, opts, out);
  const tap = new HashTap();
  const entries: TarEntry[] = [];
  await pipeline(Readable.from(tarChunks(walk(root, prefixParts), opts.epoch, entries), { objectMode: false }), tap, out);
  return { entries, diffId: `sha256:${tap.hash.digest("hex")}`, tarSize: tap.bytes };
}

/**
 * Writes a deterministic tar.gz of `rootDir` to `out` (ended on success, destroyed
 * on failure) and returns, from the same single pass: entries, diff_id and size of the tar, digest and size of the gzip stream.
 */
export async function writeTarGzFromDirectory(rootDir: string, out: Writable, opts: TarOptions): Promise<TarGzResult> {
  const { root, prefixParts } = await rootOrDestroy(rootDir, opts, out);
  return writeTarGz(walk(root, prefixParts), out, opts);
}

/** An entry given in full: what a builder-made layer holds (image-build.ts's /etc/passwd, /tmp). */
export type MadeEntry = { path: string; type: "file" | "directory"; mode: number; uid?: number; gid?: number; content?: Buffer };

/**
 * A deterministic tar.gz of exactly these entries (sorted like any archive), with their modes
 * as given (the sticky bit of /tmp included) and their owners: the one way to write what a
 * directory walk normalises away.
 */
export async function writeTarGzFromEntries(entries: readonly MadeEntry[], out: Writable, opts: TarOptions): Promise<TarGzResult> {
  const planned = entries.map((m): Planned => {
    const name = m.type === "directory" ? `${m.path.replace(/\/+$/, "")}/` : m.path;
    if (name.startsWith("/") || name.split("/").includes("..")) throw new TarError(`bad entry path ${JSON.stringify(m.path)}`);
    const entry: TarEntry = {
      path: name,
      type: m.type,
      mode: m.mode & 0o7777,
      size: m.content?.length ?? 0,
      ...(m.uid ? { uid: m.uid } : {}),
      ...(m.gid ? { gid: m.gid } : {}),
    };
    return { entry, ...(m.type === "file" ? { content: m.content ?? Buffer.alloc(0) } : {}) };
  });
  checkEpoch(opts.epoch);
  return writeTarGz(sortByArchivePath(planned), out, opts);
}

async function writeTarGz(planned: Iterable<Planned>, out: Writable, opts: TarOptions): Promise<TarGzResult> {
  const raw = new HashTap();
  const gz = new HashTap();
  // The chunks go only through the tar's hash (synchronous) into the gzip, which hands each back
  // once compressed: a layer reuses a few megabytes instead of allocating one per block.
  const spare: Buffer[] = [];
  const recycle = (block: Buffer) => void (block.length === BLOCK_BYTES && spare.length < GZIP_BLOCKS_IN_FLIGHT && spare.push(block));
  const gzip = new ParallelGzip({ zlib: GZIP_OPTIONS, inFlight: GZIP_BLOCKS_IN_FLIGHT, recycle });
  const entries: TarEntry[] = [];
  await pipeline(Readable.from(tarChunks(planned, opts.epoch, entries, spare), { objectMode: false }), raw, gzip, gz, out);
  return {
    entries,
    diffId: `sha256:${raw.hash.digest("hex")}`,
    tarSize: raw.bytes,
    digest: `sha256:${gz.hash.digest("hex")}`,
    size: gz.bytes,
  };
}
