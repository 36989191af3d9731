/**
 * State: the durable per-key status (JetStream KV, the source of truth) and its query-side
 * read model (Redis), kept equal by one projector.
 *
 * Writers change a key's status only through `StateStore.update`, a compare-and-set loop on
 * the KV revision, so concurrent writers (reconciler, builder, signer) never lose each
 * other's fields. Readers that serve users (gRPC, CLI) read Redis, which the queue service
 * rebuilds from KV at every start: losing Redis loses nothing.
 */
import type { KV } from "@nats-io/kv";
import type { Redis } from "ioredis";
import { keyFromToken, keyToken, type Key } from "./key.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";
import type { Topology } from "./topology.ts";

export class StateStore {
  readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  async get(key: Key): Promise<KeyStatus | undefined> {
    const e = await this.kv.get(keyToken(key));
    if (!e || e.operation !== "PUT") return undefined;
    return keyStatusSchema.parse(e.json());
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

function isRevisionConflict(err: unknown): boolean {
  return /wrong last sequence|key exists|10071/i.test(String((err as Error)?.message ?? err));
}

export type ListOptions = { prefix?: string; limit?: number; after?: string };
export type ListPage = { items: KeyStatus[]; next?: string };

/** Redis read model: a hash of status JSON by key and a lexicographic index for paging. */
export class StatusReadModel {
  readonly redis: Redis;
  readonly hash: string;
  readonly index: string;
  constructor(redis: Redis, topology: Topology) {
    this.redis = redis;
    this.hash = topology.redisKey("status");
    this.index = topology.redisKey("keys");
  }

  async get(key: Key): Promise<KeyStatus | undefined> {
    const raw = await this.redis.hget(this.hash, key);
    return raw ? keyStatusSchema.parse(JSON.parse(raw)) : undefined;
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const prefix = opts.prefix ?? "";
    // Start after the page token, but never before the prefix (a token from another listing).
    const min = opts.after && opts.after >= prefix ? `(${opts.after}` : prefix ? `[${prefix}` : "-";
    const max = prefix ? `[${prefix}\xff` : "+";
    const keys = await this.redis.zrangebylex(this.index, min, max, "LIMIT", 0, limit + 1);
    const page = keys.slice(0, limit);
    const raws = page.length ? await this.redis.hmget(this.hash, ...page) : [];
    const items = raws.flatMap((r) => (r ? [keyStatusSchema.parse(JSON.parse(r))] : []));
    return keys.length > limit ? { items, next: page[page.length - 1] } : { items };
  }

  async put(status: KeyStatus): Promise<void> {
    await this.redis.multi().hset(this.hash, status.key, JSON.stringify(status)).zadd(this.index, 0, status.key).exec();
  }

  async remove(key: Key): Promise<void> {
    await this.redis.multi().hdel(this.hash, key).zrem(this.index, key).exec();
  }
}

/**
 * Copies every status from KV into the read model, then follows changes until `signal`
 * aborts. Resolves once the initial copy is complete (the read model is then current).
 */
export async function projectStatusToRedis(state: KV, model: StatusReadModel, signal: AbortSignal): Promise<void> {
  const watch = await state.watch({});
  signal.addEventListener("abort", () => watch.stop(), { once: true });
  let caughtUp: () => void = () => {};
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  void (async () => {
    for await (const e of watch) {
      const key = keyFromToken(e.key);
      if (e.operation === "PUT") await model.put(keyStatusSchema.parse(e.json()));
      else await model.remove(key);
      if (e.delta === 0) caughtUp();
    }
  })();
  // An empty bucket delivers nothing: treat "no pending entries" as caught up.
  const status = await state.status();
  if (status.values === 0) caughtUp();
  await ready;
}
