/**
 * The query-side read model of key statuses: a Redis hash of status JSON by key and a
 * lexicographic index for paging, copied from the state KV (the source of truth) at every
 * start and kept current by following the bucket. Only the queue service reads and writes
 * it, to answer GetKey/ListKeys without touching JetStream; losing Redis loses nothing.
 */
import type { KV } from "@nats-io/kv";
import type { Redis } from "ioredis";
import { keyFromToken, type Key } from "@homeostat/core/key";
import { keyStatusSchema, type KeyStatus } from "@homeostat/core/status";
import type { Topology } from "@homeostat/core/topology";
import type { FeedEntry } from "./key-feed.ts";

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
 * `onChange` sees every entry first, deletions included, with its revision: the one follower
 * of the bucket is also what WatchKeys streams are fed from (key-feed.ts).
 */
export async function projectStatusToRedis(state: KV, model: StatusReadModel, signal: AbortSignal, onChange: (entry: FeedEntry) => void): Promise<void> {
  const watch = await state.watch({});
  signal.addEventListener("abort", () => watch.stop(), { once: true });
  let caughtUp: () => void = () => {};
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  void (async () => {
    for await (const e of watch) {
      const key = keyFromToken(e.key);
      const status = e.operation === "PUT" ? keyStatusSchema.parse(e.json()) : undefined;
      onChange({ key, revision: e.revision, status });
      if (status) await model.put(status);
      else await model.remove(key);
      if (e.delta === 0) caughtUp();
    }
  })();
  // An empty bucket delivers nothing: treat "no pending entries" as caught up.
  const status = await state.status();
  if (status.values === 0) caughtUp();
  await ready;
}
