/**
 * The builder's content-addressed artifact store: `<dataDir>/store/blobs/sha256/<hex>`.
 *
 * Every write goes to a temporary file under `<dataDir>/store/tmp` (same file system), is
 * hashed while it is written, fsynced, and renamed to its digest: a blob either exists whole
 * under its true digest or not at all, and writing the same content twice (two builds, two
 * workers) is harmless. Blobs are never modified after the rename.
 */
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, readFile, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import type { Digest } from "@homeostat/core/digest";

export type StoredBlob = { digest: Digest; size: number; path: string };

export type PutOptions = {
  /** When given, content that does not hash to this digest is refused and nothing is stored. */
  expected?: Digest;
  /** Refuse content larger than this many bytes (nothing is stored). */
  maxBytes?: number;
};

/** Content did not match the expected digest; nothing was stored. */
export class DigestMismatchError extends Error {
  override name = "DigestMismatchError";
  readonly expected: Digest;
  readonly actual: Digest;
  constructor(expected: Digest, actual: Digest) {
    super(`sha256 mismatch: expected ${expected}, got ${actual}`);
    this.expected = expected;
    this.actual = actual;
  }
}

/** Content was larger than allowed; nothing was stored. */
export class TooLargeError extends Error {
  override name = "TooLargeError";
  readonly limit: number;
  constructor(limit: number) {
    super(`content exceeds the limit of ${limit} bytes`);
    this.limit = limit;
  }
}

const digestRe = /^sha256:([0-9a-f]{64})$/;

export function hexOfDigest(digest: string): string {
  const [, hex] = digestRe.exec(digest) ?? [];
  if (hex === undefined) throw new Error(`not a sha256 digest: ${JSON.stringify(digest)}`);
  return hex;
}

export class ArtifactStore {
  /** `<dataDir>/store` */
  readonly root: string;

  constructor(dataDir: string) {
    this.root = path.join(path.resolve(dataDir), "store");
  }

  /** The file of a blob (whether or not it exists). */
  path(digest: Digest): string {
    return path.join(this.root, "blobs", "sha256", hexOfDigest(digest));
  }

  async has(digest: Digest): Promise<boolean> {
    try {
      return (await stat(this.path(digest))).isFile();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw e;
    }
  }

  /** Reads a whole blob (for small blobs: metadata, manifests). */
  async read(digest: Digest): Promise<Buffer> {
    return readFile(this.path(digest));
  }

  /** Streams a blob. */
  open(digest: Digest): Readable {
    return createReadStream(this.path(digest));
  }

  /** Re-hashes a stored blob: true when present and intact. */
  async verify(digest: Digest): Promise<boolean> {
    if (!(await this.has(digest))) return false;
    const h = createHash("sha256");
    for await (const chunk of createReadStream(this.path(digest))) h.update(chunk as Buffer);
    return `sha256:${h.digest("hex")}` === digest;
  }

  async putBytes(data: Uint8Array | string, opts: PutOptions = {}): Promise<StoredBlob> {
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    return this.put([bytes], opts);
  }

  /**
   * Stores a stream (consumed to its end) under its sha256. With `expected`, a mismatch throws
   * DigestMismatchError; with `maxBytes`, too much content throws TooLargeError. In both cases,
   * and on any stream error, nothing is stored and the temporary file is removed.
   */
  async put(source: Readable | AsyncIterable<Uint8Array> | Iterable<Uint8Array>, opts: PutOptions = {}): Promise<StoredBlob> {
    const tmpDir = path.join(this.root, "tmp");
    await mkdir(tmpDir, { recursive: true });
    await mkdir(path.join(this.root, "blobs", "sha256"), { recursive: true });
    const tmp = path.join(tmpDir, `${process.pid}.${randomBytes(8).toString("hex")}`);
    const fh = await open(tmp, "wx", 0o644);
    let committed = false;
    try {
      const h = createHash("sha256");
      let size = 0;
      try {
        for await (const chunk of source as AsyncIterable<Uint8Array | string> | Iterable<Uint8Array>) {
          const buf = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
          size += buf.length;
          if (opts.maxBytes !== undefined && size > opts.maxBytes) throw new TooLargeError(opts.maxBytes);
          h.update(buf);
          await fh.write(buf);
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      const digest: Digest = `sha256:${h.digest("hex")}`;
      if (opts.expected !== undefined && opts.expected !== digest) throw new DigestMismatchError(opts.expected, digest);
      const file = this.path(digest);
      await rename(tmp, file);
      committed = true;
      return { digest, size, path: file };
    } catch (e) {
      // Stop a stream we did not finish reading, so its producer sees the failure too.
      if (typeof (source as Readable).destroy === "function") (source as Readable).destroy();
      throw e;
    } finally {
      if (!committed) await unlink(tmp).catch(() => {});
    }
  }
}
