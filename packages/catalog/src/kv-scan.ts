/**
 * The live entries of a JetStream KV bucket under a key filter, read with gets that each return
 * the next message matching the filter (`next_by_subj`, nats-server 2.9; direct gets or the
 * leader's, as the bucket was bound: core state.ts bucketReader): one request per stored message
 * plus one, and no consumer.
 *
 * `CachedScan` keeps what it parsed and reads only what changed since.
 *
 * Why not `kv.keys()` and a get per key: `keys()` creates an ordered consumer per call, which the
 * server stores and only forgets after its inactivity threshold. The reconciler and the builder
 * list a package's releases and advisories on every run; at catalog scale (bench:storm, 550 keys,
 * 3,100 runs) that left 30,000 consumers on the releases and advisories buckets, with nats-server
 * at 2.7 GB RSS and half a core.
 */
import type { KV } from "@nats-io/kv";
import { bucketReader, bucketRevision, type BucketReader } from "@homeostat/core/state";

export type ScannedEntry = { key: string; value: Uint8Array };

/**
 * A list function that answers as of the bucket revision its reader took (`revision`) or later
 * (CachedScan.reader). `seen(filter)`: the revision up to which it has every entry under
 * `filter`, once it listed it: an entry stored there at or before it is in what it listed (a
 * run reports it, core FactRevisions).
 */
export type ScanReader<T> = ((filter: string) => Promise<readonly T[]>) & { readonly revision: number; seen(filter: string): number | undefined };

/** The entries whose key matches `filter` (KV wildcards), deleted and purged ones left out, in stream order. */
export async function scanEntries(kv: KV, filter: string): Promise<ScannedEntry[]> {
  const latest = new Map<string, ScannedEntry | undefined>();
  await scanFrom(bucketReader(kv), filter, 1, (key, value) => void latest.set(key, value && { key, value }));
  return [...latest.values()].filter((e): e is ScannedEntry => e !== undefined);
}

/**
 * Calls `see` for each message under `filter` from stream sequence `from` on, in stream order
 * (value undefined: a delete or purge marker), with one get per message plus one, until there
 * is none or `see` returns false; returns the sequence of the last message seen (`from - 1`
 * when there was none).
 */
async function scanFrom(
  bucket: BucketReader,
  filter: string,
  from: number,
  see: (key: string, value: Uint8Array | undefined, seq: number) => boolean | void,
): Promise<number> {
  const subjects = `${bucket.prefix}.${filter}`;
  let last = from - 1;
  for (let seq = from; ;) {
    const m = await bucket.get({ seq, next_by_subj: subjects });
    if (!m) return last;
    // A later message of the key (history > 1, a delete or purge marker) replaces the earlier.
    const more = see(m.subject.slice(bucket.prefix.length + 1), m.header?.get("KV-Operation") ? undefined : m.data, m.seq);
    last = m.seq;
    if (more === false) return last;
    seq = m.seq + 1;
  }
}

/**
 * Reads the messages of sequences `from` to `to` (any key) and calls `see` for each in stream
 * order (value undefined: a delete or purge marker), until `see` returns false. A sequence with
 * no message (a key's older revision, removed by its newer one) is skipped. The gets name their
 * sequences, so they need not wait for each other's answers as `scanFrom`'s do: they go in
 * chunks of RANGE_READ_CHUNK, each chunk issued at once (the client sends it in one socket
 * write), the next one out while the answers to the last are handled.
 */
async function scanRange(
  bucket: BucketReader,
  from: number,
  to: number,
  see: (key: string, value: Uint8Array | undefined, seq: number) => boolean | void,
): Promise<void> {
  const chunk = (first: number) =>
    Promise.all(Array.from({ length: Math.max(0, Math.min(RANGE_READ_CHUNK, to - first + 1)) }, (_, i) => bucket.get({ seq: first + i })));
  let next = chunk(from);
  try {
    for (let first = from; first <= to; first += RANGE_READ_CHUNK) {
      const answers = await next;
      next = chunk(first + RANGE_READ_CHUNK);
      for (const m of answers)
        if (m && see(m.subject.slice(bucket.prefix.length + 1), m.header?.get("KV-Operation") ? undefined : m.data, m.seq) === false) return;
    }
  } finally {
    // The chunk still out when a get failed or `see` threw: waited for, its own failure left to that one.
    await next.catch(() => undefined);
  }
}

/** What a CachedScan keeps of a filter (see its `cache`). */
type Kept<T> = { last: number; entries: Map<string, T>; at?: number | undefined; listed?: readonly T[] };

/** The kept filter's entries as one frozen list, made once until they change (a change clears `listed`). */
const listOf = <T>(kept: Kept<T>): readonly T[] => (kept.listed ??= Object.freeze([...kept.entries.values()]));

/**
 * `scanEntries` with the parsed entries of each filter kept between calls: a list asks only for
 * the last message under its filter (one get, `last_by_subj`), and reads and parses just
 * the messages stored after the ones it has (none, usually). Every write under a filter (a put,
 * a delete or purge marker) is a new last message there, so an unchanged last sequence means
 * unchanged entries. That holds for buckets whose messages leave only by a newer one of their
 * key (no max age, no stream purge without a marker): the releases and advisories buckets.
 *
 * Each reader first catches up with the messages stored since the last one (`catchUp`: their
 * sequences known, read `scanRange`'s way) and brings every kept filter they fall under up to
 * date with them, so a filter that changed needs no request of its own either. Before, each
 * changed filter read its new messages one get after another: in bench:storm's burst (60,000
 * advisories on 20 packages) the reconciler made 82,000 gets, each its own socket write, its
 * largest CPU cost.
 *
 * Why: the reconciler lists a package's releases and advisories on every run and the builder on
 * every request; read and parsed in full each time, a package with a few dozen advisories cost
 * 6-22 ms of CPU per reconcile that changes nothing (bench:storm's resync), and a round trip per
 * entry.
 *
 * The parsed values are shared between calls, and so is each filter's list while its entries do
 * not change (frozen): callers must not change the values, and so a caller may remember what it
 * worked out from a list by the list (a package's decision from its advisories: decision.ts).
 * At most `maxFilters` filters are kept (the least recently listed go first).
 */
export class CachedScan<T> {
  private readonly kv: KV;
  private readonly parse: (value: Uint8Array) => T;
  private readonly maxFilters: number;
  /**
   * Per filter: the last message under it, its entries, the bucket revision up to which they are
   * complete (the reader that last listed it, or the catch-up that last brought it up to date),
   * and the list of its entries once listed, until they change.
   */
  private readonly cache = new Map<string, Kept<T>>();
  /** The keys written since `from` (see catchUp), up to `synced`. */
  private changes: Changes | undefined;
  private catchingUp: Promise<void> | undefined;

  constructor(kv: KV, parse: (value: Uint8Array) => T, maxFilters = 50_000) {
    this.kv = kv;
    this.parse = parse;
    this.maxFilters = maxFilters;
  }

  /**
   * `list` for reads as of this call or later (one reconcile's): it takes the bucket's revision
   * now, and a filter listed by a reader that had that same revision needs no request at all
   * (nothing in the bucket changed in between); nor does one that none of the keys written since
   * matches (catchUp reads them). A reconcile that changes nothing so lists each package's
   * entries once per change under its filter, not once per run or per change of the bucket.
   *
   * While writes go on (a burst of advisories), a catch-up that read any is followed by more, each
   * up to the revision then, until one finds nothing new or MAX_FOLLOW_UPS have run, and the
   * reader lists as of the last: about as fresh as a read of each filter to its end at listing
   * time was, so that a run answers the facts stored meanwhile too instead of leaving them to
   * another run.
   */
  async reader(): Promise<ScanReader<T>> {
    const synced = this.changes?.synced;
    let at = await bucketRevision(this.kv);
    await this.catchUp(at);
    let moved = synced !== undefined && at > synced;
    for (let round = 0; moved && round < MAX_FOLLOW_UPS; round++) {
      const later = await bucketRevision(this.kv);
      moved = later > at;
      if (moved) await this.catchUp((at = later));
    }
    const seen = new Map<string, number>();
    const list = async (filter: string) => {
      const { entries, upTo } = await this.read(filter, at);
      seen.set(filter, Math.max(seen.get(filter) ?? 0, upTo));
      return entries;
    };
    return Object.assign(list, { revision: at, seen: (filter: string) => seen.get(filter) });
  }

  /**
   * The parsed live entries under `filter`, in the order their keys were first written. `at`:
   * the bucket revision the caller saw before this call (reader()); undefined asks the bucket.
   */
  async list(filter: string, at?: number): Promise<readonly T[]> {
    return (await this.read(filter, at)).entries;
  }

  /**
   * `list`, and `upTo`: the revision up to which the entries under `filter` are complete. That
   * is the revision a reader or a catch-up last brought them to when they are known unchanged
   * since, and else at least the last message under the filter when it was read (every earlier
   * one was stored by then, so it is in the list).
   */
  private async read(filter: string, at?: number): Promise<{ entries: readonly T[]; upTo: number }> {
    const bucket = bucketReader(this.kv);
    // Before any request: what is stored under the filter from here on is recorded (Changes).
    this.changes?.watch(filter);
    const known = this.cache.get(filter);
    if (at !== undefined && known?.at !== undefined && (known.at >= at || this.changes?.unchanged(filter, known.at, at))) {
      known.at = Math.max(known.at, at);
      return { entries: listOf(known), upTo: known.at };
    }
    const newest = await bucket.get({ last_by_subj: `${bucket.prefix}.${filter}` });
    this.cache.delete(filter);
    // No message under the filter is an empty list, kept too: most packages have no advisories.
    const fresh: Kept<T> = !newest
      ? { last: 0, entries: new Map<string, T>(), at }
      : known?.last === newest.seq
        ? { ...known, at }
        : await this.readAfter(bucket, filter, known?.last ?? 0, known?.entries, at);
    this.cache.set(filter, fresh);
    if (this.cache.size > this.maxFilters) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
    return { entries: listOf(fresh), upTo: Math.max(at ?? 0, fresh.last) };
  }

  /**
   * Reads the messages stored since the last catch-up, up to `at`: a filter that none of them
   * matches is then known unchanged without asking (`Changes`), and a kept filter complete up to
   * the last catch-up gets those under it, complete up to `at` then. One catch-up at a time; a gap
   * of more than MAX_CATCH_UP messages starts the record afresh, and the filters then ask once
   * each, as they did without it.
   */
  private async catchUp(at: number): Promise<void> {
    while (!this.changes || this.changes.synced < at) {
      this.catchingUp ??= this.readChanges(at).finally(() => (this.catchingUp = undefined));
      await this.catchingUp;
    }
  }

  private async readChanges(at: number): Promise<void> {
    const changes = this.changes;
    if (!changes || at - changes.synced > MAX_CATCH_UP || changes.size > MAX_WATCHED_FILTERS) {
      this.changes = new Changes(at);
      return;
    }
    const from = changes.synced;
    // The kept filters complete up to where this catch-up starts: the messages read complete them up to `at`.
    const current = new Map([...this.cache].filter(([, kept]) => kept.at !== undefined && kept.at >= from));
    let complete = true;
    // Up to `at` (every message up to it was stored before the scan began), so that writes that go
    // on meanwhile do not keep it going.
    await scanRange(bucketReader(this.kv), from + 1, at, (key, value, seq) => {
      const patterns = patternsOf(key);
      // A key the record cannot index ends the scan: the record starts afresh below.
      if (!patterns) return (complete = false);
      changes.record(patterns, seq);
      const under = patterns.flatMap((pattern) => current.get(pattern) ?? []);
      if (under.length === 0) return;
      let parsed: { value: T } | undefined;
      try {
        if (value) parsed = { value: this.parse(value) };
      } catch {
        // A value that does not parse fails the lists of its filters only, as their own reads do
        // (readAfter): those filters are dropped, to be read afresh when listed.
        for (const pattern of patterns) if (current.delete(pattern)) this.cache.delete(pattern);
        return;
      }
      for (const kept of under) {
        kept.entries.delete(key);
        if (parsed) kept.entries.set(key, parsed.value);
        kept.last = seq;
        kept.listed = undefined;
      }
    });
    if (!complete) {
      this.changes = new Changes(at);
      return;
    }
    changes.synced = at;
    for (const kept of current.values()) kept.at = at;
  }

  /** `known` updated with the messages under `filter` after sequence `last`. */
  private async readAfter(bucket: BucketReader, filter: string, last: number, known: Map<string, T> | undefined, at: number | undefined): Promise<Kept<T>> {
    const entries = new Map(known);
    const newLast = await scanFrom(bucket, filter, last + 1, (key, value) => {
      entries.delete(key);
      if (value) entries.set(key, this.parse(value));
    });
    return { last: newLast, entries, at };
  }
}

/** Messages a catch-up reads at most; a longer gap starts the record afresh (CachedScan.catchUp). */
const MAX_CATCH_UP = 20_000;
/** Gets `scanRange` issues together. */
const RANGE_READ_CHUNK = 128;
/** Catch-ups a reader runs at most after its first, while writes go on (CachedScan.reader). */
const MAX_FOLLOW_UPS = 4;
/** Filters a record watches at most before it starts afresh. */
const MAX_WATCHED_FILTERS = 200_000;
/** Keys of more tokens than this are not indexed: a record that meets one starts afresh. */
const MAX_INDEXED_TOKENS = 6;

/**
 * Every filter that matches `key`: each token literal or `*`, or a prefix of them and `>`
 * (2^(n+1) - 1 patterns for a key of n tokens); undefined for a key of more than
 * MAX_INDEXED_TOKENS tokens.
 */
function patternsOf(key: string): string[] | undefined {
  const tokens = key.split(".");
  if (tokens.length > MAX_INDEXED_TOKENS) return undefined;
  const patterns: string[] = [];
  let prefixes = [""];
  for (const [i, token] of tokens.entries()) {
    for (const p of prefixes) patterns.push(`${p}>`);
    prefixes = prefixes.flatMap((p) => [`${p}${token}`, `${p}*`]).map((p) => (i < tokens.length - 1 ? `${p}.` : p));
  }
  patterns.push(...prefixes);
  return patterns;
}

/**
 * The keys written to a bucket after revision `from`, up to `synced`: for every watched filter
 * that matches one of them (`patternsOf`), the last sequence written under it. A watched filter
 * absent here had no message in (from, synced]; one whose last sequence is at most `checked` had
 * none after `checked` either.
 *
 * Only watched filters are recorded, each from the moment it is watched: a list watches its
 * filter before it asks the bucket (CachedScan.read), so a message stored before then is in what
 * that list read, and any stored later is read by a catch-up that records it. Recording every
 * pattern of every key instead kept two entries per advisory id that no list ever asks about
 * (`<package>.<id>`, `*.<id>`): in bench:storm's burst 120,000 of them, 1.2 s of the reconciler's
 * CPU besides the collections.
 */
class Changes {
  readonly from: number;
  synced: number;
  private readonly watched = new Set<string>();
  private readonly last = new Map<string, number>();
  constructor(from: number) {
    this.from = from;
    this.synced = from;
  }

  get size(): number {
    return this.watched.size;
  }

  /** Records the messages under `filter` from now on. */
  watch(filter: string): void {
    this.watched.add(filter);
  }

  /** Whether no message under `filter` was written in (checked, at]: known only for a watched `filter`, `checked` ≥ from and `at` ≤ synced. */
  unchanged(filter: string, checked: number, at: number): boolean {
    return checked >= this.from && at <= this.synced && this.watched.has(filter) && (this.last.get(filter) ?? 0) <= checked;
  }

  /** Records a message at `seq` of a key that `patterns` match (`patternsOf`). */
  record(patterns: readonly string[], seq: number): void {
    for (const p of patterns) if (this.watched.has(p)) this.last.set(p, seq);
  }
}
