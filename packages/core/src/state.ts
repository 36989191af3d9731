/**
 * State: the durable per-key status (JetStream KV, the source of truth). Its query-side read
 * model (Redis) belongs to the queue service (services/queue/src/read-model.ts).
 *
 * Writers change a key's status only through `StateStore.update`, a compare-and-set loop on
 * the KV revision, so concurrent writers (reconciler, builder, signer) never lose each
 * other's fields. Readers that serve users (gRPC, CLI) read Redis, which the queue service
 * rebuilds from KV at every start: losing Redis loses nothing.
 */
import { Bucket, type KV } from "@nats-io/kv";
import { isRevisionConflict } from "./jetstream-errors.ts";
import { keyToken, type Key } from "./key.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";

/**
 * The bucket as @nats-io/kv's `Bucket` (the class its `Kvm` makes; its stream, subject prefix
 * and JetStream manager are public members the `KV` interface leaves out), when it answers
 * direct gets; undefined for a bucket configured without them (its readers fall back to the
 * consumer-based API).
 */
export function directBucket(kv: KV): Bucket | undefined {
  if (!(kv instanceof Bucket)) throw new TypeError("a KV bucket made by @nats-io/kv is needed");
  return kv.direct ? kv : undefined;
}

/**
 * The newest revision of any key of the bucket (its stream's last sequence; 0 when empty), in
 * one direct get of the last message on all its subjects. Every put, delete and purge of a key
 * is a new message, so an unchanged revision means nothing in the bucket changed in between.
 */
export async function bucketRevision(kv: KV): Promise<number> {
  const bucket = directBucket(kv);
  if (!bucket) return (await kv.status()).streamInfo.state.last_seq;
  return (await bucket.jsm.direct.getMessage(bucket.stream, { last_by_subj: `${bucket.prefix}.>` }))?.seq ?? 0;
}

/** Statuses kept for readers (StateStore.reader), the least recently read going first beyond this. */
const maxRemembered = 100_000;

export class StateStore {
  readonly kv: KV;
  /** Each key's status as read, with the bucket revision a reader had when it was read. */
  readonly #remembered = new Map<string, { at: number; status: KeyStatus | undefined }>();
  constructor(kv: KV) {
    this.kv = kv;
  }

  async get(key: Key): Promise<KeyStatus | undefined> {
    const e = await this.kv.get(keyToken(key));
    if (!e || e.operation !== "PUT") return undefined;
    return keyStatusSchema.parse(e.json());
  }

  /**
   * A reader of statuses as of this call or later, for code that reads many keys (the
   * reconciler reads those of every dependency): it takes the bucket's revision now, and a
   * status read earlier by a reader that had that same revision is still the key's status
   * (nothing was written in between), so it comes from memory; anything else is read. A
   * reconcile that changes nothing reads no dependency twice while nothing changes.
   * The statuses are shared: callers must not change them.
   */
  async reader(): Promise<(key: Key) => Promise<KeyStatus | undefined>> {
    const at = await bucketRevision(this.kv);
    return async (key) => {
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
  }

  /**
   * Applies `change` to the current status and writes the result if nobody wrote in between;
   * otherwise re-reads and applies again. `change` returning undefined writes nothing.
   */
  async update(key: Key, change: (current: KeyStatus | undefined) => KeyStatus | undefined): Promise<KeyStatus | undefined> {
    const token = keyToken(key);
    for (let attempt = 0; ; attempt++) {
      const e = await this.kv.get(token);
      const current = e && e.operation === "PUT" ? keyStatusSchema.parse(e.json()) : undefined;
      const next = change(current);
      if (!next) return current;
      const body = JSON.stringify({ ...next, key, updatedAt: new Date().toISOString() });
      try {
        if (e) await this.kv.update(token, body, e.revision);
        else await this.kv.create(token, body);
        return keyStatusSchema.parse(JSON.parse(body));
      } catch (err) {
        if (attempt >= 50 || !isRevisionConflict(err)) throw err;
      }
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
