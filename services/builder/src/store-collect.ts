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
 * file gone is no error. The statuses must be all of them (StatusMirror.all).
 */
import { lstat, open, readdir, readFile, unlink } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";
import path from "node:path";
import { errorMessage, type Logger } from "@homeostat/core/log";
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

/** The names in a JSON blob, by its digest: blobs never change, so each is read once per process. */
export type NamesRead = Map<string, readonly string[]>;

const hexName = /(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])/g;
/** Larger files are not read for names (archives; the JSON blobs a build writes are far smaller). */
const maxScannedBytes = 64 * 1024 * 1024;

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
  const blobs = path.join(root, "blobs", "sha256");
  const records = path.join(root, "results");
  const namesRead = o.namesRead ?? new Map();

  const live = new Set<string>();
  const pending: string[] = [];
  const mark = (names: Iterable<string>) => {
    for (const n of names)
      if (!live.has(n)) {
        live.add(n);
        pending.push(n);
      }
  };
  for (const { builds: _, ...status } of statuses) mark(namesIn(JSON.stringify(status)));
  while (pending.length) {
    const hex = pending.pop() as string;
    mark(await namesOfBlob(path.join(blobs, hex), hex, namesRead));
    // A cache record is not a blob (its name is its inputs' digest, not its own): never remembered.
    mark(await namesOfFile(path.join(records, `${hex}.json`)));
  }

  const collected: StoreCollected = { live: 0, removed: 0, removedBytes: 0, young: 0 };
  const before = (o.now ?? Date.now()) - o.graceMs;
  const sweep = async (dir: string, liveName: (file: string) => string | undefined) => {
    for (const file of await namesInDir(dir)) {
      const name = liveName(file);
      if (name !== undefined && live.has(name)) {
        collected.live++;
        continue;
      }
      const p = path.join(dir, file);
      const st = await lstat(p).catch(ifGone(undefined));
      if (!st?.isFile()) continue;
      if (st.mtimeMs >= before) {
        collected.young++;
        continue;
      }
      if (await unlink(p).then(() => true, ifGone(false))) {
        collected.removed++;
        collected.removedBytes += st.size;
      }
    }
  };
  await sweep(blobs, (file) => file);
  await sweep(records, (file) => (file.endsWith(".json") ? file.slice(0, -".json".length) : undefined));
  await sweep(path.join(root, "tmp"), () => undefined);
  for (const hex of namesRead.keys()) if (!live.has(hex)) namesRead.delete(hex);
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
      const statuses = await o.statuses();
      if (!statuses) {
        o.log.warn("store collection skipped: the statuses are not all in hand (the state bucket's watch lags)");
        continue;
      }
      const c = await collectStore(o.dataDir, statuses, { graceMs: o.graceMs, namesRead });
      freed.add(c.removedBytes);
      o.log.info("store collected", { ...c, keys: statuses.length, ms: Date.now() - started });
    } catch (err) {
      o.log.warn("store collection failed; trying again at the next turn", { error: errorMessage(err) });
    }
  }
}

/** The names in a blob that is a JSON document (read once, then remembered); none for any other. */
async function namesOfBlob(file: string, hex: string, namesRead: NamesRead): Promise<readonly string[]> {
  const known = namesRead.get(hex);
  if (known) return known;
  const fh = await open(file).catch(ifGone(undefined));
  if (!fh) return [];
  let names: string[] = [];
  try {
    const { size } = await fh.stat();
    const first = Buffer.alloc(1);
    if (size <= maxScannedBytes && (await fh.read(first, 0, 1, 0)).bytesRead === 1 && (first[0] === 0x7b || first[0] === 0x5b))
      names = namesIn(await fh.readFile("utf8"));
  } finally {
    await fh.close();
  }
  namesRead.set(hex, names);
  return names;
}

async function namesOfFile(file: string): Promise<string[]> {
  const text = await readFile(file, "utf8").catch(ifGone(undefined));
  return text === undefined ? [] : namesIn(text);
}

async function namesInDir(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(ifGone(undefined))) ?? [];
}

/** A handler that answers `value` for a file or directory that is not there, and rethrows anything else. */
function ifGone<T>(value: T): (err: unknown) => T {
  return (err) => {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return value;
    throw err;
  };
}
