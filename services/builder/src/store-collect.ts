/**
 * Store collection: what the builder's artifact store (store.ts) keeps. Every build writes its
 * archive, metadata, provenance, step logs and result envelope there, and the signer writes each
 * archive's signature beside them; without collection the store grows by a build's outputs with
 * every build, for ever. It keeps:
 *
 * - every blob a key's status names (its signed outputs and their signatures, the logs a failure
 *   points at, the inputs it is building), and what those name in turn: a package's metadata
 *   names its source and patches, its provenance the step logs. A name is any run of 64 hex
 *   digits, in the status or in a JSON blob it keeps: a hex string that names nothing keeps
 *   nothing, and a field added later keeps what it names without this file knowing of it. A
 *   status's build history (`builds`) keeps nothing: an older build's outputs go, and building
 *   those inputs again makes the same bytes;
 * - the build cache's record of inputs a status names (cache.ts: a record's file is named by its
 *   input digest), with what it names, so that the inputs a key is building or asked for again
 *   stay a cache hit;
 * - anything younger than the grace (HOMEOSTAT_STORE_GRACE_MS, at least the build timeout): a
 *   build's blobs are named by no status until its result is signed. A record the cache answers
 *   from is touched as it answers (cache.ts), so what a build took from the cache is young again.
 *
 * Everything else goes: older builds' outputs and records, and temporary files a crash left.
 * What went in error is rebuilt, never lost: a build that needs an archive no longer there
 * rebuilds it (request.ts restoreLost), and the cache does not answer with a record whose blobs
 * are gone. Several builders may share a store and collect it at once; a removal that finds the
 * file gone is no error. The statuses must be all of them (StatusMirror.all), and the store no
 * other factory's: the first collection writes the state bucket's name into `store/collector`,
 * and a builder whose bucket is another does not collect (its statuses do not name the other's
 * outputs, and a signature is not made twice alike). The agent's trial
 * builds have a store of their own that no status names (their answers carry what they found):
 * all of it goes once past the grace, and so do their image layouts (`collectUnnamedLayouts`).
 */
import { closeSync, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { link, lstat, mkdir, readdir, readFile, unlink, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import path from "node:path";
import { OciLayout } from "@homeostat/attest";
import { errorMessage, type Logger } from "@homeostat/core/log";
import { mapLimit } from "@homeostat/core/map-limit";
import type { KeyStatus } from "@homeostat/core/status";
import { meter } from "@homeostat/core/telemetry";

export type StoreCollected = {
  /** Blobs and cache records kept because something live names them. */
  live: number;
  /** Files removed (blobs, cache records, temporary files) and their bytes. */
  removed: number;
  removedBytes: number;
  /** Files nothing names that were kept for being younger than the grace. */
  young: number;
};

/**
 * What each JSON blob read names of the store's files (when it was read), by the blob's digest:
 * blobs never change, so each is read once per process. Only names of files are kept: a
 * package's metadata also names the digest of every file it installs.
 */
export type NamesRead = Map<string, readonly string[]>;

const hexName = /(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])/g;
/** Larger files are not read for names (archives; the JSON blobs a build writes are far smaller). */
const maxScannedBytes = 64 * 1024 * 1024;
/**
 * The JSON blobs and cache records are read with synchronous calls, the event loop handed back
 * after every `readsPerTurn` of them: through the thread pool, opening, reading and closing a
 * small file cost several times the calls themselves (29,000 keys read again after a restart:
 * 57 s of CPU).
 */
const readsPerTurn = 64;
/** Statuses searched for names between two turns of the event loop. */
const statusesPerTurn = 512;
/** Where a blob's first bytes are read: one buffer, as the reads are synchronous. */
const head = Buffer.alloc(64 * 1024);
/** Files stated or removed at once: libuv's thread pool overlaps them. */
const ioConcurrency = 16;

function namesIn(text: string): string[] {
  return text.match(hexName) ?? [];
}

/**
 * Removes from the store under `dataDir` every blob and cache record that `statuses` do not keep
 * and that is older than `graceMs`. `namesRead` carries what JSON blobs name from one collection
 * to the next.
 */
export async function collectStore(
  dataDir: string,
  statuses: Iterable<KeyStatus>,
  o: { graceMs: number; now?: number; namesRead?: NamesRead },
): Promise<StoreCollected> {
  const root = path.join(path.resolve(dataDir), "store");
  const blobDir = path.join(root, "blobs", "sha256");
  const recordDir = path.join(root, "results");
  const tmpDir = path.join(root, "tmp");
  const namesRead = o.namesRead ?? new Map();
  // Listed first: a name is looked for only where a file has it (a metadata blob names every
  // file's digest, which names no blob, and a failed open costs more than a listing).
  const [blobs, records, temporary] = await Promise.all([filesIn(blobDir), filesIn(recordDir), filesIn(tmpDir)]);
  const blobNames = new Set(blobs);
  const recordNames = new Set(records);
  const inStore = (name: string) => blobNames.has(name) || recordNames.has(`${name}.json`);

  const live = new Set<string>();
  const mark = (names: Iterable<string>, next: string[]) => {
    for (const n of names)
      if (!live.has(n)) {
        live.add(n);
        next.push(n);
      }
  };
  let wave: string[] = [];
  let steps = 0;
  for (const { builds: _, ...status } of statuses) {
    mark(namesIn(JSON.stringify(status)), wave);
    if (++steps % statusesPerTurn === 0) await new Promise(setImmediate);
  }
  while (wave.length) {
    const next: string[] = [];
    for (const hex of wave) {
      if (blobNames.has(hex)) mark(namesOfBlob(path.join(blobDir, hex), hex, namesRead, inStore), next);
      // A cache record is named by its inputs' digest, not its content's: read each time.
      if (recordNames.has(`${hex}.json`)) mark(namesOfRecord(path.join(recordDir, `${hex}.json`)), next);
      if (++steps % readsPerTurn === 0) await new Promise(setImmediate);
    }
    wave = next;
  }
  for (const hex of namesRead.keys()) if (!live.has(hex)) namesRead.delete(hex);

  const before = (o.now ?? Date.now()) - o.graceMs;
  const swept = async (dir: string, file: string): Promise<"young" | number | undefined> => {
    const p = path.join(dir, file);
    const st = await lstat(p).catch(ifGone(undefined));
    if (!st?.isFile()) return undefined;
    if (st.mtimeMs >= before) return "young";
    return (await unlink(p).then(() => true, ifGone(false))) ? st.size : undefined;
  };
  const unnamed = [
    ...blobs.filter((f) => !live.has(f)).map((f) => [blobDir, f] as const),
    ...records.filter((f) => !(f.endsWith(".json") && live.has(f.slice(0, -".json".length)))).map((f) => [recordDir, f] as const),
    ...temporary.map((f) => [tmpDir, f] as const),
  ];
  const outcomes = await mapLimit(unnamed, ioConcurrency, ([dir, file]) => swept(dir, file));
  const collected: StoreCollected = { live: blobs.length + records.length + temporary.length - unnamed.length, removed: 0, removedBytes: 0, young: 0 };
  for (const outcome of outcomes)
    if (outcome === "young") collected.young++;
    else if (outcome !== undefined) {
      collected.removed++;
      collected.removedBytes += outcome;
    }
  return collected;
}

/**
 * Collects the store every `intervalMs` (the first time after a random part of it, so that
 * builders started together do not collect together) until `signal` aborts. A turn whose
 * statuses are not all in hand (`statuses` answers undefined) removes nothing; a turn that fails
 * is logged, and the next one tries again.
 */
export async function collectStoreEvery(o: {
  dataDir: string;
  /** The state bucket whose statuses say what the store keeps (claimStore). */
  stateBucket: string;
  /** Data directories whose stores no status names (the agent's trial builds): all of theirs goes once past the grace. */
  unnamedDataDirs: readonly string[];
  graceMs: number;
  intervalMs: number;
  statuses: () => Promise<KeyStatus[] | undefined>;
  log: Logger;
  signal: AbortSignal;
}): Promise<void> {
  const freed = meter().createCounter("homeostat.builder.store.freed", {
    unit: "By",
    description: "Bytes of the artifact store removed by its collection: blobs and cache records no status keeps, older than HOMEOSTAT_STORE_GRACE_MS",
  });
  const namesRead: NamesRead = new Map();
  let wait = Math.random() * o.intervalMs;
  for (;;) {
    try {
      await sleep(wait, undefined, { signal: o.signal });
    } catch {
      return;
    }
    wait = o.intervalMs;
    const started = Date.now();
    try {
      const claimed = await claimStore(o.dataDir, o.stateBucket);
      if (claimed !== o.stateBucket) {
        o.log.warn("store collection skipped: the store is collected by another factory's builders", {
          store: o.dataDir,
          collector: claimed,
          ours: o.stateBucket,
        });
        continue;
      }
      const statuses = await o.statuses();
      if (!statuses) {
        o.log.warn("store collection skipped: the statuses are not all in hand (the state bucket's watch lags)");
        continue;
      }
      const c = await collectStore(o.dataDir, statuses, { graceMs: o.graceMs, namesRead });
      freed.add(c.removedBytes);
      o.log.info("store collected", { ...c, keys: statuses.length, ms: Date.now() - started });
      for (const dataDir of o.unnamedDataDirs) {
        const u = await collectStore(dataDir, [], { graceMs: o.graceMs });
        const images = await collectUnnamedLayouts(dataDir, { graceMs: o.graceMs });
        freed.add(u.removedBytes + images.bytes);
        if (u.removed || images.blobs) o.log.info("store collected", { ...u, dataDir, images });
      }
    } catch (err) {
      o.log.warn("store collection failed; trying again at the next turn", { error: errorMessage(err) });
    }
  }
}

/**
 * Collects the image layouts under `<dataDir>/oci` that no status names (the agent's trial
 * images, which nothing reads once their trial answered): a layout no trial has tagged in for the
 * grace (its index.json is older) loses its tags, and its blobs older than the grace go
 * (OciLayout.collect). A trial building in it meanwhile writes younger blobs, and its tag, taken
 * under the layout's lock after the collection, finds every one it holds or fails saying which.
 */
export async function collectUnnamedLayouts(
  dataDir: string,
  o: { graceMs: number; now?: number },
): Promise<{ layouts: number; tags: number; blobs: number; bytes: number }> {
  const now = o.now ?? Date.now();
  const root = path.join(path.resolve(dataDir), "oci");
  const collected = { layouts: 0, tags: 0, blobs: 0, bytes: 0 };
  for (const name of await filesIn(root)) {
    const dir = path.join(root, name);
    const index = await lstat(path.join(dir, "index.json")).catch(ifGone(undefined));
    if (!index?.isFile() || Math.max(index.mtimeMs, index.ctimeMs) > now - o.graceMs) continue;
    const c = await (await OciLayout.open(dir)).collect(() => ({ manifests: [] }), { graceMs: o.graceMs, now });
    collected.layouts++;
    collected.tags += c.tags.length;
    collected.blobs += c.blobs;
    collected.bytes += c.bytes;
  }
  return collected;
}

/**
 * Who collects the store under `dataDir`: the state bucket named in `store/collector`, which
 * names `bucket` when there was none yet. Written whole and then linked into place, which fails
 * when the file exists: two builders claiming a new store at once agree on the first.
 */
export async function claimStore(dataDir: string, bucket: string): Promise<string> {
  const file = path.join(path.resolve(dataDir), "store", "collector");
  const written = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(written, `${bucket}\n`);
  try {
    await link(written, file);
    return bucket;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    return (await readFile(file, "utf8")).trim();
  } finally {
    await unlink(written);
  }
}

/** The names in a blob that is a JSON document (read once, then remembered); none for any other. */
function namesOfBlob(file: string, hex: string, namesRead: NamesRead, inStore: (name: string) => boolean): readonly string[] {
  const known = namesRead.get(hex);
  if (known) return known;
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch (err) {
    return ifGone([])(err);
  }
  let text: string | undefined;
  try {
    // Most JSON blobs fit in the first read; an archive is known by its first byte.
    const bytesRead = readSync(fd, head, 0, head.length, 0);
    if (bytesRead > 0 && (head[0] === 0x7b || head[0] === 0x5b)) {
      if (bytesRead < head.length) text = head.toString("utf8", 0, bytesRead);
      else if (fstatSync(fd).size <= maxScannedBytes) text = readFileSync(fd, "utf8");
    }
  } finally {
    closeSync(fd);
  }
  const names = text === undefined ? [] : namesIn(text).filter(inStore);
  namesRead.set(hex, names);
  return names;
}

function namesOfRecord(file: string): string[] {
  try {
    return namesIn(readFileSync(file, "utf8"));
  } catch (err) {
    return ifGone([])(err);
  }
}

async function filesIn(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(ifGone(undefined))) ?? [];
}

/** A handler that answers `value` for a file or directory that is not there, and rethrows anything else. */
function ifGone<T>(value: T): (err: unknown) => T {
  return (err) => {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return value;
    throw err;
  };
}
