/**
 * OCI image layout (image-spec v1.1 `image-layout.md`): `oci-layout`, `index.json` and
 * content-addressed `blobs/sha256/<hex>`, written so that the builder and the signer (two
 * processes) can share one layout safely:
 *
 * - blobs are content-addressed and written atomically (temporary file + rename), so writing
 *   the same blob twice, or from two processes at once, is harmless;
 * - `index.json` is only changed under an exclusive lock file (`index.json.lock`, created with
 *   O_EXCL) by read-modify-write, and replaced atomically (temporary file + rename), so readers
 *   never see a half-written index and concurrent taggers never lose each other's tags;
 * - manifests, indexes and `index.json` are serialised with a fixed field order (see
 *   `manifestBytes`, `indexBytes`) so the same content always gives the same bytes and digest;
 * - a tag is set only when everything it holds is there (`tag` checks, under the lock), and blobs
 *   are collected under the same lock (`collect`), so a collection never takes a blob that a tag
 *   set at the same time needs.
 */
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  createReadStream,
  fstatSync,
  fsync,
  lstatSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { copyFile, link, mkdir, open, readFile, rename, stat, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { Writable } from "node:stream";
import { promisify } from "node:util";
import { z } from "zod";
import { digestHex, digestSchema, sortedRecord, type Digest } from "@homeostat/core/digest";

const annotationsSchema = z.record(z.string(), z.string());

/** An OCI content descriptor as read from JSON: a digest that names a sha256, a size that fits. */
export const descriptorSchema = z.object({
  mediaType: z.string(),
  digest: digestSchema,
  size: z.number().int().nonnegative(),
  annotations: annotationsSchema.optional(),
  artifactType: z.string().optional(),
});
export type Descriptor = z.infer<typeof descriptorSchema>;

export const mediaTypes = {
  manifest: "application/vnd.oci.image.manifest.v1+json",
  index: "application/vnd.oci.image.index.v1+json",
  config: "application/vnd.oci.image.config.v1+json",
  layer: "application/vnd.oci.image.layer.v1.tar",
  layerGzip: "application/vnd.oci.image.layer.v1.tar+gzip",
  empty: "application/vnd.oci.empty.v1+json",
  cyclonedx: "application/vnd.cyclonedx+json",
  inToto: "application/vnd.in-toto+json",
  sigstoreBundle: "application/vnd.dev.sigstore.bundle.v0.3+json",
} as const;

/** The annotation that names a tag in `index.json`. */
export const REF_NAME = "org.opencontainers.image.ref.name";

/**
 * An `index.json` entry's annotations under this prefix name further blobs the entry holds
 * (`io.homeostat.holds.<role>` = digest), blobs its manifest does not reference: an image
 * version's SBOM and provenance, which only its build result names and the signer reads. A
 * collection keeps them with the entry, and `tag` checks they are there.
 */
export const HOLDS_ANNOTATION_PREFIX = "io.homeostat.holds.";

/** The media types of documents that name other blobs: OCI's, and Docker's that a pull may bring. */
const LINKING_MEDIA_TYPES = new Set<string>([
  mediaTypes.manifest,
  mediaTypes.index,
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
]);

/** What a collection removed: the tags; the blobs no remaining entry held, and the bytes freed with them (and with any temporary files a crashed writer left). */
export type Collected = { tags: string[]; blobs: number; bytes: number };

export class OciLayoutError extends Error {}

function hexOf(digest: string): string {
  const hex = digestHex(digest);
  if (hex === undefined) throw new OciLayoutError(`not a sha256 digest: ${JSON.stringify(digest)}`);
  return hex;
}

/**
 * A descriptor as a plain object with the spec's field order (mediaType, artifactType, digest,
 * size, annotations sorted by key). Empty annotations are left out.
 */
export function descriptorJson(d: Descriptor): Record<string, unknown> {
  const out: Record<string, unknown> = { mediaType: d.mediaType };
  if (d.artifactType !== undefined) out.artifactType = d.artifactType;
  out.digest = d.digest;
  out.size = d.size;
  if (d.annotations && Object.keys(d.annotations).length > 0) out.annotations = sortedRecord(d.annotations);
  return out;
}

/** An OCI image manifest as read (image-spec v1.1, including artifact manifests with `subject`). */
export const imageManifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  artifactType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
  subject: descriptorSchema.optional(),
  annotations: annotationsSchema.optional(),
});
/** What `manifestBytes` writes; `schemaVersion` and `mediaType` are implied. */
export type ImageManifest = Omit<z.infer<typeof imageManifestSchema>, "schemaVersion" | "mediaType">;

/** Canonical bytes of an OCI image manifest (schemaVersion, mediaType, artifactType, config, layers, subject, annotations). */
export function manifestBytes(m: ImageManifest): string {
  const out: Record<string, unknown> = { schemaVersion: 2, mediaType: mediaTypes.manifest };
  if (m.artifactType !== undefined) out.artifactType = m.artifactType;
  out.config = descriptorJson(m.config);
  out.layers = m.layers.map(descriptorJson);
  if (m.subject) out.subject = descriptorJson(m.subject);
  if (m.annotations && Object.keys(m.annotations).length > 0) out.annotations = sortedRecord(m.annotations);
  return JSON.stringify(out);
}

/** An OCI image index as read (also the form of a layout's `index.json`). */
export const imageIndexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  artifactType: z.string().optional(),
  manifests: z.array(descriptorSchema),
  subject: descriptorSchema.optional(),
  annotations: annotationsSchema.optional(),
});
/** What `indexBytes` writes; `schemaVersion` and `mediaType` are implied. */
export type ImageIndex = Omit<z.infer<typeof imageIndexSchema>, "schemaVersion" | "mediaType">;

/** A manifest or an index, as far as a copy needs to know: the blobs and manifests it links. */
export const linkedContentSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: descriptorSchema.optional(),
  layers: z.array(descriptorSchema).optional(),
  manifests: z.array(descriptorSchema).optional(),
});

export class OciJsonError extends Error {}

/** Parses an OCI JSON document against `schema`; an OciJsonError says what it was and what is wrong. */
export function parseOciJson<S extends z.ZodType>(schema: S, bytes: Uint8Array | string, what: string): z.infer<S> {
  let json: unknown;
  try {
    json = JSON.parse(typeof bytes === "string" ? bytes : Buffer.from(bytes).toString("utf8"));
  } catch {
    throw new OciJsonError(`${what} is not JSON`);
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success)
    throw new OciJsonError(`${what} is malformed: ${parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ")}`);
  return parsed.data;
}

/** Canonical bytes of an OCI image index (also the form of the layout's `index.json`). */
export function indexBytes(ix: ImageIndex): string {
  const out: Record<string, unknown> = { schemaVersion: 2, mediaType: mediaTypes.index };
  if (ix.artifactType !== undefined) out.artifactType = ix.artifactType;
  out.manifests = ix.manifests.map(descriptorJson);
  if (ix.subject) out.subject = descriptorJson(ix.subject);
  if (ix.annotations && Object.keys(ix.annotations).length > 0) out.annotations = sortedRecord(ix.annotations);
  return JSON.stringify(out);
}

/** How long a lock file may exist before it is presumed left by a crashed process. */
const STALE_LOCK_MS = 30_000;
/** How long `tag` waits for the lock before giving up. */
const LOCK_WAIT_MS = 60_000;

function tmpName(dir: string, base: string): string {
  return path.join(dir, `.${base}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
}

async function exists(p: string): Promise<boolean> {
  try {
    await stat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}

/** Writes `data` to `file` atomically: a temporary file in the same directory, fsync, rename. */
async function atomicWrite(file: string, data: Uint8Array | string): Promise<void> {
  const tmp = tmpName(path.dirname(file), path.basename(file));
  if (data.length <= SMALL_FILE_BYTES) return atomicWriteSmall(file, tmp, data);
  const fh = await open(tmp, "wx", 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  try {
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Files up to this size (manifests, configs, signatures, attestations, index.json) are written
 * and read with synchronous calls: five thread-pool round trips for a write (open, write, fsync,
 * close, rename) took longer than the calls themselves, and a sign writes about a dozen and
 * reads more (bench:storm's quick latency scenario, two pairs each: signer stage 77 and 76 -> 72
 * and 64 ms with the writes, 69 and 67 -> 67 and 65 with the reads). All but the fsync: it waits
 * for the disk to commit, which takes tens of milliseconds when other processes write a lot, and
 * the event loop must not wait with it; a sign's writes made at once commit together.
 */
const SMALL_FILE_BYTES = 64 * 1024;

const fsyncInPool = promisify(fsync);

async function atomicWriteSmall(file: string, tmp: string, data: Uint8Array | string): Promise<void> {
  const fd = openSync(tmp, "wx", 0o644);
  try {
    writeFileSync(fd, data);
    await fsyncInPool(fd);
  } finally {
    closeSync(fd);
  }
  try {
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

/**
 * A whole file; one of up to SMALL_FILE_BYTES (what a sign reads: manifests, configs,
 * index.json, its documents) with synchronous calls, as small files are written; a larger one
 * (a layer) asynchronously.
 */
async function readSmallFirst(file: string): Promise<Buffer> {
  const fd = openSync(file, "r");
  let small: Buffer | undefined;
  try {
    if (fstatSync(fd).size <= SMALL_FILE_BYTES) small = readFileSync(fd);
  } finally {
    closeSync(fd);
  }
  return small ?? readFile(file);
}

async function hashFile(file: string): Promise<{ digest: Digest; size: number }> {
  const h = createHash("sha256");
  let size = 0;
  await pipeline(
    createReadStream(file),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        h.update(chunk);
        size += chunk.length;
        cb();
      },
    }),
  );
  return { digest: `sha256:${h.digest("hex")}`, size };
}

/** Parsed `index.json` files by path, with the version of the file they were read from (see `index`). */
const parsedIndexes = new Map<string, { version: string; index: ImageIndex }>();
/** Layouts whose index is kept parsed; beyond this all are forgotten (read again). */
const MAX_PARSED_INDEXES = 512;

/** Per layout directory, when this process last swept its blobs (`collect`); forgotten beyond MAX_PARSED_INDEXES layouts. */
const lastSweeps = new Map<string, number>();

/** Per lock file, the promise the last of this process's callers waiting for it resolves when done. */
const lockersHere = new Map<string, Promise<void>>();

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

/**
 * The descriptor of `data` as a blob (what `writeBlob` returns for it), known before it is
 * written: a document that names it can be made, and both written at once.
 */
export function blobDescriptor(data: Uint8Array | string, mediaType: string, annotations?: Record<string, string>): Descriptor {
  const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const d: Descriptor = { mediaType, digest: `sha256:${createHash("sha256").update(bytes).digest("hex")}`, size: bytes.length };
  if (annotations && Object.keys(annotations).length > 0) d.annotations = { ...annotations };
  return d;
}

export class OciLayout {
  readonly dir: string;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens the layout at `dir`, creating `oci-layout`, `index.json` and `blobs/sha256` if missing. */
  static async open(dir: string): Promise<OciLayout> {
    const abs = path.resolve(dir);
    await mkdir(path.join(abs, "blobs", "sha256"), { recursive: true });
    const layoutFile = path.join(abs, "oci-layout");
    if (!(await exists(layoutFile))) await atomicWrite(layoutFile, JSON.stringify({ imageLayoutVersion: "1.0.0" }));
    const indexFile = path.join(abs, "index.json");
    if (!(await exists(indexFile))) {
      // `wx`: never overwrite an index another process created meanwhile.
      await writeFile(indexFile, indexBytes({ manifests: [] }), { flag: "wx" }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "EEXIST") throw e;
      });
    }
    return new OciLayout(abs);
  }

  /** Where the blob with this digest lives (whether or not it exists). */
  blobPath(digest: Digest): string {
    return path.join(this.dir, "blobs", "sha256", hexOf(digest));
  }

  async hasBlob(digest: Digest): Promise<boolean> {
    return exists(this.blobPath(digest));
  }

  /**
   * Stores `data` under its sha256 (idempotent, atomic) and returns its descriptor. A blob already
   * there is kept only when it holds these very bytes: a corrupted copy (say a flipped byte,
   * same size) is replaced, so writing a blob again repairs it.
   */
  async writeBlob(data: Uint8Array | string, mediaType: string, annotations?: Record<string, string>): Promise<Descriptor> {
    const bytes = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    const d = blobDescriptor(bytes, mediaType, annotations);
    const file = this.blobPath(d.digest);
    const present = await readSmallFirst(file).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return undefined;
      throw e;
    });
    if (!present?.equals(bytes)) await atomicWrite(file, bytes);
    return d;
  }

  /**
   * Adds a blob that is already stored elsewhere under its digest (e.g. the builder's artifact
   * store): unless the layout holds it already (at the file's size), the file is hashed first (a
   * mismatch is an error and nothing is added), then hard linked into the layout, or copied when
   * linking is impossible (another file system). An image's unchanged layers are thus not read.
   */
  async importBlob(filePath: string, digest: Digest, mediaType: string): Promise<Descriptor> {
    const target = this.blobPath(digest);
    const size = (await stat(filePath)).size;
    if (await this.intactBlob(target, size)) return { mediaType, digest, size };
    const actual = await hashFile(filePath);
    if (actual.digest !== digest) throw new OciLayoutError(`${filePath} hashes to ${actual.digest}, not ${digest}`);
    const tmp = tmpName(path.dirname(target), hexOf(digest));
    try {
      await link(filePath, tmp);
    } catch {
      await copyFile(filePath, tmp);
    }
    try {
      await rename(tmp, target);
    } catch (e) {
      await unlink(tmp).catch(() => {});
      throw e;
    }
    return { mediaType, digest, size: actual.size };
  }

  async readBlob(digest: Digest): Promise<Buffer> {
    return readSmallFirst(this.blobPath(digest));
  }

  /**
   * The parsed `index.json` (frozen: it may be shared with other callers). Parsed once per
   * version of the file: every change replaces the file (a new inode), so while its inode, size
   * and times are those of the last read, so are its contents, and a stat is all it costs. A
   * sign asked for it about ten times, and an image's index grows by three tags with each.
   */
  async index(): Promise<ImageIndex> {
    const file = path.join(this.dir, "index.json");
    const st = await stat(file, { bigint: true });
    // Taken before the read: if the file is replaced in between, the next stat differs and reads again.
    const version = `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    const known = parsedIndexes.get(file);
    if (known?.version === version) return known.index;
    const raw = parseOciJson(imageIndexSchema, await readSmallFirst(file), `${this.dir}/index.json`);
    const ix: ImageIndex = { manifests: raw.manifests };
    if (raw.annotations) ix.annotations = raw.annotations;
    if (parsedIndexes.size >= MAX_PARSED_INDEXES) parsedIndexes.clear();
    parsedIndexes.set(file, { version, index: deepFreeze(ix) });
    return ix;
  }

  /** Every tag in the layout, in index order. */
  async tags(): Promise<string[]> {
    return (await this.index()).manifests.map((m) => m.annotations?.[REF_NAME]).filter((t): t is string => t !== undefined);
  }

  /**
   * Points `tag` at `descriptor` in `index.json` (annotation org.opencontainers.image.ref.name),
   * replacing any entry with that tag. Entries without a tag keep their place first; tagged
   * entries follow sorted by tag (byte order), so the index depends only on its content. Tagged
   * again at the same digest (a rebuild of the same version), the entry keeps the annotations it
   * had (when it was signed) under the ones given.
   */
  async tag(tag: string, descriptor: Descriptor): Promise<void> {
    hexOf(descriptor.digest);
    await this.updateTag(tag, async (current) =>
      current?.digest === descriptor.digest ? { ...descriptor, annotations: { ...current.annotations, ...descriptor.annotations } } : descriptor,
    );
  }

  /**
   * Read-modify-write of one tag under the index lock: `next` is given what `tag` points at
   * now and returns its new target, or undefined to leave it as it is. For tags that collect
   * entries (the referrers fallback tag) two writers must not lose each other's work. The new
   * target must hold nothing missing (its blob, what it names, the blobs its annotations hold):
   * a blob written or found before the lock may have been collected since.
   */
  async updateTag(tag: string, next: (current: Descriptor | undefined) => Promise<Descriptor | undefined>): Promise<Descriptor | undefined> {
    if (tag.length === 0 || tag.length > 4096 || /[\s]/.test(tag)) throw new OciLayoutError(`bad tag ${JSON.stringify(tag)}`);
    return this.withIndexLock(async () => {
      const ix = await this.index();
      const descriptor = await next(ix.manifests.find((m) => m.annotations?.[REF_NAME] === tag));
      if (descriptor === undefined) return undefined;
      hexOf(descriptor.digest);
      const entry: Descriptor = { ...descriptor, annotations: { ...(descriptor.annotations ?? {}), [REF_NAME]: tag } };
      const missing = [...this.heldBlobs([entry])].filter((digest) => !this.blobExists(digest));
      if (missing.length > 0) throw new OciLayoutError(`cannot tag ${tag} in ${this.dir}: it holds ${missing.join(", ")}, which the layout does not`);
      const untagged = ix.manifests.filter((m) => m.annotations?.[REF_NAME] === undefined);
      const tagged = ix.manifests.flatMap((m) => {
        const name = m.annotations?.[REF_NAME];
        return name === undefined || name === tag ? [] : [{ name, m }];
      });
      tagged.push({ name: tag, m: entry });
      tagged.sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
      const updated: ImageIndex = { manifests: [...untagged, ...tagged.map((t) => t.m)] };
      if (ix.annotations) updated.annotations = ix.annotations;
      await atomicWrite(path.join(this.dir, "index.json"), indexBytes(updated));
      return descriptor;
    });
  }

  /** Removes `tag` from `index.json` (the blobs stay). Returns whether it was there. */
  async untag(tag: string): Promise<boolean> {
    return this.withIndexLock(async () => {
      const ix = await this.index();
      const kept = ix.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
      if (kept.length === ix.manifests.length) return false;
      await atomicWrite(path.join(this.dir, "index.json"), indexBytes({ ...ix, manifests: kept }));
      return true;
    });
  }

  /** The descriptor `tag` points at (with its annotations), or undefined. */
  async resolve(tag: string): Promise<Descriptor | undefined> {
    const ix = await this.index();
    return ix.manifests.find((m) => m.annotations?.[REF_NAME] === tag);
  }

  /**
   * Rewrites `index.json` as `edit` returns it (given the index as it stands, under the lock;
   * it may drop entries and change their annotations), then, when entries were dropped or none
   * is left, sweeps: removes every blob no remaining entry holds (`heldBlobs`) and every
   * temporary file a crashed writer left, unless it changed within the last `graceMs` (a build or
   * sign writes its blobs before the tag that holds them; a blob it found already there and
   * reuses is `tag`'s check). An empty index is swept every time: what a writer left without a
   * tag goes once past the grace. A sweep reads the whole blobs directory, so it runs at most
   * once every `sweepEveryMs` per layout in this process; what a drop leaves meanwhile goes at a
   * later one.
   */
  async collect(edit: (index: ImageIndex) => ImageIndex, o: { graceMs: number; sweepEveryMs?: number; now?: number }): Promise<Collected> {
    return this.withIndexLock(async () => {
      const before = await this.index();
      const after = edit(before);
      const tags = (ix: ImageIndex) => new Set(ix.manifests.map((m) => m.annotations?.[REF_NAME]));
      const kept = tags(after);
      const dropped = [...tags(before)].filter((t): t is string => t !== undefined && !kept.has(t));
      const text = indexBytes(after);
      if (text !== indexBytes(before)) await atomicWrite(path.join(this.dir, "index.json"), text);
      const now = o.now ?? Date.now();
      const sweptLast = lastSweeps.get(this.dir);
      const unchanged = after.manifests.length === before.manifests.length && after.manifests.length > 0;
      if (unchanged || (sweptLast !== undefined && now - sweptLast < (o.sweepEveryMs ?? 0))) return { tags: dropped, blobs: 0, bytes: 0 };
      if (lastSweeps.size >= MAX_PARSED_INDEXES) lastSweeps.clear();
      lastSweeps.set(this.dir, now);
      return { tags: dropped, ...this.sweep(new Set([...this.heldBlobs(after.manifests)].map(hexOf)), now - o.graceMs) };
    });
  }

  /**
   * Removes from the blobs directory every file not `held` (by hex) that changed last before
   * `oldest` (ms). Synchronous: thousands of stats, each a thread-pool round trip otherwise,
   * while the index lock is held and the builder may wait for it to tag.
   */
  private sweep(held: ReadonlySet<string>, oldest: number): { blobs: number; bytes: number } {
    const blobsDir = path.join(this.dir, "blobs", "sha256");
    let blobs = 0;
    let bytes = 0;
    for (const name of readdirSync(blobsDir)) {
      if (held.has(name)) continue;
      const file = path.join(blobsDir, name);
      const st = lstatSync(file, { throwIfNoEntry: false });
      if (!st?.isFile() || Math.max(st.mtimeMs, st.ctimeMs) > oldest) continue;
      rmSync(file, { force: true });
      if (!name.startsWith(".")) blobs++;
      bytes += st.size;
    }
    return { blobs, bytes };
  }

  /**
   * The digests `entries` hold: each one's blob; for a manifest or an index, what it names
   * (config, layers, listed manifests), read from the layout, recursively; and the blobs their
   * annotations hold (HOLDS_ANNOTATION_PREFIX). A subject is not held: an attestation never keeps
   * its image. A document missing or unreadable holds nothing more.
   */
  private heldBlobs(entries: readonly Descriptor[]): Set<Digest> {
    const held = new Set<Digest>();
    const pending = [...entries];
    for (const e of entries)
      for (const [name, value] of Object.entries(e.annotations ?? {}))
        if (name.startsWith(HOLDS_ANNOTATION_PREFIX) && digestHex(value) !== undefined) held.add(value as Digest);
    for (let d = pending.pop(); d !== undefined; d = pending.pop()) {
      if (held.has(d.digest)) continue;
      held.add(d.digest);
      if (!LINKING_MEDIA_TYPES.has(d.mediaType)) continue;
      const linked = this.linkedIn(d.digest);
      if (linked) pending.push(...(linked.config ? [linked.config] : []), ...(linked.layers ?? []), ...(linked.manifests ?? []));
    }
    return held;
  }

  /** What the manifest or index stored under `digest` links, or undefined when it is missing or not one. */
  private linkedIn(digest: Digest): z.infer<typeof linkedContentSchema> | undefined {
    try {
      const parsed = linkedContentSchema.safeParse(JSON.parse(readFileSync(this.blobPath(digest), "utf8")));
      return parsed.success ? parsed.data : undefined;
    } catch {
      return undefined; // missing, or not JSON
    }
  }

  private blobExists(digest: Digest): boolean {
    return statSync(this.blobPath(digest), { throwIfNoEntry: false }) !== undefined;
  }

  /** True when `file` exists with the expected size (content-addressed: same name, same bytes). */
  private async intactBlob(file: string, size: number): Promise<boolean> {
    try {
      return (await stat(file)).size === size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
      throw e;
    }
  }

  /**
   * Runs `fn` holding `index.json.lock` (O_EXCL create). A lock older than STALE_LOCK_MS is
   * presumed left by a crashed process and removed; the critical section takes milliseconds.
   */
  private async withIndexLock<T>(fn: () => Promise<T>): Promise<T> {
    const lockFile = path.join(this.dir, "index.json.lock");
    // Callers in this process queue here rather than poll the lock file (a sign tags its
    // signature and its attestations at once): each takes the file lock after the one before.
    const before = lockersHere.get(lockFile);
    let done!: () => void;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const last = (before ?? Promise.resolve()).then(() => mine);
    lockersHere.set(lockFile, last);
    await before;
    try {
      return await this.withLockFile(lockFile, fn);
    } finally {
      done();
      if (lockersHere.get(lockFile) === last) lockersHere.delete(lockFile);
    }
  }

  private async withLockFile<T>(lockFile: string, fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + LOCK_WAIT_MS;
    let delay = 2;
    for (;;) {
      try {
        const fh = await open(lockFile, "wx", 0o644);
        try {
          await fh.writeFile(`${process.pid}\n`);
        } finally {
          await fh.close();
        }
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      try {
        const st = await stat(lockFile);
        if (Date.now() - st.mtimeMs > STALE_LOCK_MS) {
          await unlink(lockFile).catch(() => {});
          continue;
        }
      } catch {
        continue; // released meanwhile
      }
      if (Date.now() > deadline) throw new OciLayoutError(`timed out waiting for ${lockFile}`);
      await new Promise((r) => setTimeout(r, delay + Math.random() * delay));
      delay = Math.min(delay * 2, 100);
    }
    try {
      return await fn();
    } finally {
      await unlink(lockFile).catch(() => {});
    }
  }
}
