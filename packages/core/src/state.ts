/**
 * State: the durable per-key status (JetStream KV, the source of truth). Its query-side read
 * model (Redis) belongs to the queue service (services/queue/src/read-model.ts).
 *
 * Writers change a key's status only through `StateStore.update`, a compare-and-set loop on
 * the KV revision (compare-and-set.ts: one that holds on a replicated bucket too), so
 * concurrent writers (reconciler, builder, signer) never lose each other's fields. Readers that
 * serve users (gRPC, CLI) read Redis, which the queue service rebuilds from KV at every start:
 * losing Redis loses nothing.
 */
import type { DirectMsgRequest, MsgRequest, StoredMsg } from "@nats-io/jetstream";
import { Bucket, type KV, type KvEntry } from "@nats-io/kv";
import { kvCompareAndSet } from "./compare-and-set.ts";
import { keyToken, type Key } from "./key.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";

/**
 * Reads of a bucket's stored messages by sequence or subject, as its `Bucket` reads its keys:
 * direct gets when it was bound with them (one replica: the only copy is the leader's), else
 * the stream leader's message API (topology.ts openBucket says why). The stream, subject prefix
 * and JetStream manager are public members of @nats-io/kv's `Bucket` that the `KV` interface
 * leaves out.
 */
export type BucketReader = {
  stream: string;
  /** `$KV.<bucket>`: a key's subject is `<prefix>.<key>`. */
  prefix: string;
  /** The message a query names (null: none), with `next_by_subj` too (nats-server 2.9 answers it on both paths). */
  get(query: DirectMsgRequest): Promise<StoredMsg | null>;
  /** The stream's last sequence (0 when empty), from the stream leader's info. */
  lastSequence(): Promise<number>;
};

export function bucketReader(kv: KV): BucketReader {
  if (!(kv instanceof Bucket)) throw new TypeError("a KV bucket made by @nats-io/kv is needed");
  const { jsm, stream } = kv;
  return {
    stream,
    prefix: kv.prefix,
    // The client types the message API's query without next_by_subj, which the server reads all the same.
    get: kv.direct ? (query) => jsm.direct.getMessage(stream, query) : (query) => jsm.streams.getMessage(stream, query as MsgRequest),
    lastSequence: async () => (await jsm.streams.info(stream)).state.last_seq,
  };
}

/**
 * The newest revision of any key of the bucket (its stream's last sequence; 0 when empty), from
 * the stream's info, as of this call or later. Every put, delete and purge of a key is a new
 * message, so an unchanged revision means nothing in the bucket changed in between. Not the last
 * message on `<prefix>.>`: nats-server 2.9 finds that by scanning the subjects, about 9 ms of its
 * CPU at 29,000 keys (bench:storm), against 1 ms for the info.
 *
 * Every reconcile asks four times (releases, advisories, statuses, and its dependents' statuses
 * after its own write), so concurrent callers share queries (`SharedQuery`): in a resync of
 * 2,200 keys the infos took more of the reconciler's request time than any other (profiled).
 */
export function bucketRevision(kv: KV): Promise<number> {
  let shared = revisionQueries.get(kv);
  if (!shared) {
    const reader = bucketReader(kv);
    shared = new SharedQuery(() => reader.lastSequence());
    revisionQueries.set(kv, shared);
  }
  return shared.ask();
}

const revisionQueries = new WeakMap<KV, SharedQuery<number>>();

/**
 * A query whose concurrent callers share answers, each answer still sent after its caller asked:
 * a caller with no query out sends one; callers who ask while one is out all wait for the next,
 * sent once that one returns. So at most two are out per query at any time, and a caller never
 * gets an answer the server made before it asked (a write it saw done is in it).
 */
class SharedQuery<T> {
  readonly #query: () => Promise<T>;
  #out: Promise<T> | undefined;
  #next: Promise<T> | undefined;
  constructor(query: () => Promise<T>) {
    this.#query = query;
  }

  ask(): Promise<T> {
    if (!this.#out) {
      const out = this.#query().finally(() => {
        if (this.#out === out) this.#out = undefined;
      });
      this.#out = out;
      return out;
    }
    this.#next ??= this.#out.then(
      () => this.#sendNext(),
      () => this.#sendNext(),
    );
    return this.#next;
  }

  #sendNext(): Promise<T> {
    this.#next = undefined;
    return this.ask();
  }
}

/** Statuses as of a revision of the state bucket or later (StateStore.reader). */
export type StatusReader = ((key: Key) => Promise<KeyStatus | undefined>) & {
  readonly revision: number;
  /**
   * The keys whose status is marked waiting (`waitingFor`), as of `revision` or later, when the
   * reader knows them all at once (a mirror's); a reader of the bucket leaves it out.
   */
  readonly waiting?: ReadonlySet<Key>;
};

/**
 * A copy of the bucket kept current (state-follower.ts StatusMirror) that a store's readers read
 * instead, or, when it lags, `fallback` at the revision it took.
 */
export interface MirroredStatuses {
  reader(kv: KV, fallback: (at: number) => Promise<StatusReader>): Promise<StatusReader>;
  /**
   * The key's status as the write at `revision` left it, when that is the one the mirror holds
   * (parsed once already: a store's read of that write need not parse it again); else undefined.
   */
  written(key: Key, revision: number): KeyStatus | undefined;
}

/** Statuses kept for readers (StateStore.reader), the least recently read going first beyond this. */
const maxRemembered = 100_000;

export class StateStore {
  readonly kv: KV;
  /** Each key's status as read, with the bucket revision a reader had when it was read. */
  readonly #remembered = new Map<string, { at: number; status: KeyStatus | undefined }>();
  readonly #mirror: MirroredStatuses | undefined;
  /** `mirror`: readers read it instead of the bucket (a process that reads whole closures: the reconciler, the builder). */
  constructor(kv: KV, opts: { mirror?: MirroredStatuses } = {}) {
    this.kv = kv;
    this.#mirror = opts.mirror;
  }

  async get(key: Key): Promise<KeyStatus | undefined> {
    const e = await this.kv.get(keyToken(key));
    return e && e.operation === "PUT" ? this.#statusIn(key, e) : undefined;
  }

  /**
   * The status a stored write holds: the mirror's copy when it holds that very write (in a resync
   * every run read its key's status twice, and parsing it through the schema each time was about
   * 8 % of the reconciler's CPU, profiled at 2,200 keys), else parsed here.
   */
  #statusIn(key: Key, e: KvEntry): KeyStatus {
    return this.#mirror?.written(key, e.revision) ?? keyStatusSchema.parse(e.json());
  }

  /**
   * A reader of statuses as of this call or later, for code that reads many keys (the
   * reconciler reads those of every dependency): it takes the bucket's revision now, and a
   * status read earlier by a reader that had that same revision is still the key's status
   * (nothing was written in between), so it comes from memory; anything else is read. A
   * reconcile that changes nothing reads no dependency twice while nothing changes. With a
   * mirror, every status comes from it once it has reached that revision (state-follower.ts).
   * The statuses are shared: callers must not change them. `revision`: the bucket's revision it
   * took (two readers at the same one answer alike).
   */
  reader(): Promise<StatusReader> {
    return this.#mirror ? this.#mirror.reader(this.kv, (at) => this.#bucketReader(at)) : this.#bucketReader();
  }

  /** A reader of the bucket itself, at revision `known` when the caller took it already. */
  async #bucketReader(known?: number): Promise<StatusReader> {
    const at = known ?? (await bucketRevision(this.kv));
    const read = async (key: Key): Promise<KeyStatus | undefined> => {
      const token = keyToken(key);
      const known = this.#remembered.get(token);
      if (known?.at === at) return known.status;
      // Read after `at` was taken: as of `at` or later, which is what every reader at `at` needs.
      const status = await this.get(key);
      this.#remembered.delete(token);
      this.#remembered.set(token, { at, status });
      if (this.#remembered.size > maxRemembered) {
        const oldest = this.#remembered.keys().next();
        if (!oldest.done) this.#remembered.delete(oldest.value);
      }
      return status;
    };
    return Object.assign(read, { revision: at });
  }

  /**
   * Applies `change` to the current status and writes the result if nobody wrote in between;
   * otherwise re-reads and applies again. `change` returning undefined writes nothing.
   */
  async update(key: Key, change: (current: KeyStatus | undefined) => KeyStatus | undefined): Promise<KeyStatus | undefined> {
    const token = keyToken(key);
    for (let attempt = 0; ; attempt++) {
      const e = await this.kv.get(token);
      const current = e && e.operation === "PUT" ? this.#statusIn(key, e) : undefined;
      const next = change(current);
      if (!next) return current;
      const body = JSON.stringify({ ...next, key, updatedAt: new Date().toISOString() });
      if ((await kvCompareAndSet(this.kv, token, body, e?.revision ?? 0)) !== undefined) return keyStatusSchema.parse(JSON.parse(body));
      if (attempt >= 50) throw new Error(`state of ${key}: still changing after ${attempt + 1} compare-and-set attempts`);
    }
  }

  /**
   * Deletes the key's status (a key that left the catalog); false when it had none. The delete
   * is a KV tombstone, so the read model drops the key too.
   */
  async remove(key: Key): Promise<boolean> {
    const e = await this.kv.get(keyToken(key));
    if (!e || e.operation !== "PUT") return false;
    await this.kv.delete(keyToken(key));
    return true;
  }

  /** A fresh status for a key that has none yet. */
  static initial(key: Key): KeyStatus {
    return { key, phase: "Pending", attempts: 0, updatedAt: new Date().toISOString() };
  }
}
