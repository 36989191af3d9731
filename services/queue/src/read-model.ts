/**
 * The query-side read model of key statuses: a Redis hash of status JSON by key and a
 * lexicographic index for paging, copied from the state KV (the source of truth) and kept
 * current by following the bucket. Only the queue service reads and writes it, to answer
 * GetKey/ListKeys without touching JetStream; losing Redis loses nothing.
 *
 * HealingReadModel is what the service serves from: it notices a Redis that lost the
 * projection (flushed, restarted empty, or a write that failed) by a generation marker written
 * before the projection, checked when the connection becomes ready and every `checkMs`, and
 * rebuilds it without a restart. While Redis is unavailable or being rebuilt, reads go to the
 * state bucket itself: slower, current, and flagged as degraded in the answer.
 */
import type { KV } from "@nats-io/kv";
import type { Redis } from "ioredis";
import { errorMessage } from "@homeostat/core";
import { keyFromToken, keyToken, type Key } from "@homeostat/core/key";
import type { Logger } from "@homeostat/core/log";
import { mapLimit } from "@homeostat/core/map-limit";
import { keyStatusSchema, type KeyStatus } from "@homeostat/core/status";
import type { Topology } from "@homeostat/core/topology";
import type { FeedEntry } from "./key-feed.ts";

/** How long answers may go unconfirmed before the reason is logged: a few missed checks are routine. */
const unconfirmedLogAfterMs = 10_000;

export type ListOptions = { prefix?: string; limit?: number; after?: string };
/** `degraded`: why the answer came from the state bucket rather than the read model. */
export type ListPage = { items: KeyStatus[]; next?: string; degraded?: string };
export type Lookup = { status: KeyStatus | undefined; degraded?: string };

/**
 * How current a read model is: the last state revision it applied, and the last instant it was
 * known to hold every change of the state bucket (undefined until the first check succeeds).
 */
export type Freshness = { region: string; observedRevision: number; currentAsOf: number | undefined };

/** What the status API reads statuses through. */
export interface StatusReads {
  lookup(key: Key): Promise<Lookup>;
  list(opts?: ListOptions): Promise<ListPage>;
}

/** The page size a listing asks for: at least 1, at most 1000. */
function pageLimit(opts: ListOptions): number {
  return Math.min(Math.max(opts.limit ?? 100, 1), 1000);
}

/** Redis read model: a hash of status JSON by key and a lexicographic index for paging. */
export class StatusReadModel implements StatusReads {
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

  async lookup(key: Key): Promise<Lookup> {
    return { status: await this.get(key) };
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    const limit = pageLimit(opts);
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

/** Where a rebuild reads the projection from: the follower's latest status of every key (the key feed). */
export type ProjectionSource = { keys(): Key[]; status(key: Key): KeyStatus | undefined };

/** Statuses written to Redis in one round trip during a rebuild. */
const rebuildBatch = 500;
/** State bucket reads one degraded ListKeys makes at once. */
const degradedReadConcurrency = 16;

/**
 * The read model the status API serves from: Redis while it holds the whole projection, the
 * state bucket while it does not. The Redis client must fail fast rather than queue (no offline
 * queue, no retries, a command timeout): a write that fails marks the projection stale, and a
 * read that fails is answered from the state bucket.
 */
export class HealingReadModel implements StatusReads {
  readonly #store: StatusReadModel;
  readonly #state: KV;
  readonly #source: ProjectionSource;
  readonly #log: Pick<Logger, "info" | "warn">;
  readonly #marker: string;
  /** Why Redis is not read now; undefined while it holds the whole, current projection. */
  #degraded: string | undefined = "the read model is being built";
  /** A write was lost, or the projection is not there: it must be rebuilt before Redis is read again. */
  #stale = true;
  #caughtUp = false;
  #checking = false;
  #lastRedisError: string | undefined;
  /** Completed rebuilds, the first one (at start) included. */
  rebuilds = 0;
  readonly #region: string;
  #observedRevision = 0;
  #currentAsOf: number | undefined;
  #confirming = false;
  /**
   * The bucket's last revision when it was last asked and the follower was behind it: reaching
   * it confirms the instant of asking. Without it a bucket written more often than it is asked
   * would never be confirmed current, though the follower keeps up.
   */
  #awaited: { revision: number; asked: number } | undefined;
  /** Why the read model could not be confirmed current, once logged (cleared when it is again). */
  #unconfirmed: string | undefined;

  constructor(o: { store: StatusReadModel; state: KV; source: ProjectionSource; topology: Topology; log: Pick<Logger, "info" | "warn"> }) {
    this.#store = o.store;
    this.#state = o.state;
    this.#source = o.source;
    this.#log = o.log;
    this.#marker = o.topology.redisKey("generation");
    this.#region = o.topology.home;
  }

  /** How current the answers are: what a region cut off from the fabric keeps serving grows old, and says so. */
  get freshness(): Freshness {
    return { region: this.#region, observedRevision: this.#observedRevision, currentAsOf: this.#currentAsOf };
  }

  /** Why reads are answered from the state bucket now, or undefined when they come from Redis. */
  get degraded(): string | undefined {
    return this.#degraded;
  }

  /**
   * Starts healing: checks the projection whenever the Redis connection becomes ready and every
   * `checkMs`, rebuilding it when it is missing or stale. Call once the follower has delivered
   * every key (a rebuild before would be incomplete); stops when `signal` aborts.
   */
  start(checkMs: number, signal: AbortSignal): void {
    this.#caughtUp = true;
    const redis = this.#store.redis;
    const check = () => {
      void this.check();
      void this.#confirmCurrent();
    };
    const lost = () => this.#degrade(`Redis is unreachable${this.#lastRedisError ? ` (${this.#lastRedisError})` : ""}`);
    const remember = (err: Error) => void (this.#lastRedisError = err.message);
    redis.on("ready", check).on("close", lost).on("error", remember);
    const timer = setInterval(check, checkMs);
    signal.addEventListener(
      "abort",
      () => {
        clearInterval(timer);
        redis.off("ready", check).off("close", lost).off("error", remember);
      },
      { once: true },
    );
    check();
  }

  /** Follows one change of the state bucket into Redis; a write that cannot be made marks the projection stale. */
  apply(entry: FeedEntry): void {
    this.#observedRevision = Math.max(this.#observedRevision, entry.revision);
    if (this.#awaited && this.#observedRevision >= this.#awaited.revision) this.#confirmed(this.#awaited.asked);
    if (this.#store.redis.status !== "ready") {
      this.#stale = true;
      return;
    }
    const write = entry.status ? this.#store.put(entry.status) : this.#store.remove(entry.key);
    write.catch((err: unknown) => {
      this.#stale = true;
      this.#degrade(`a write to Redis failed (${errorMessage(err)})`);
    });
  }

  /** Makes sure Redis holds the projection, rebuilding it if not. Resolves when done or failed (never rejects). */
  async check(): Promise<void> {
    if (!this.#caughtUp || this.#checking) return;
    this.#checking = true;
    try {
      const redis = this.#store.redis;
      if (redis.status !== "ready") {
        this.#degrade(`Redis is unreachable${this.#lastRedisError ? ` (${this.#lastRedisError})` : ""}`);
        return;
      }
      if (!this.#stale && (await redis.exists(this.#marker)) === 1) {
        this.#healed();
        return;
      }
      if (!this.#stale) this.#degrade("the read model lost its projection (Redis flushed or restarted empty)");
      await this.#rebuild();
    } catch (err) {
      this.#stale = true;
      this.#degrade(`Redis: ${errorMessage(err)}`);
    } finally {
      this.#checking = false;
    }
  }

  /**
   * Writes every key's latest status, after removing what was there and setting the generation
   * marker first: a flush during the rebuild removes the marker too, so it is noticed. Changes
   * that arrive meanwhile are written by `apply`; each write carries the latest status at the
   * moment it is sent, and one connection keeps the order, so the last write of a key is current.
   */
  async #rebuild(): Promise<void> {
    const started = Date.now();
    const redis = this.#store.redis;
    this.#stale = false;
    await redis
      .multi()
      .del(this.#store.hash, this.#store.index)
      .set(this.#marker, `${process.pid}@${new Date(started).toISOString()}`)
      .exec();
    const keys = this.#source.keys();
    for (let i = 0; i < keys.length; i += rebuildBatch) {
      const batch = redis.pipeline();
      for (const key of keys.slice(i, i + rebuildBatch)) {
        const status = this.#source.status(key);
        if (status) batch.hset(this.#store.hash, key, JSON.stringify(status)).zadd(this.#store.index, 0, key);
      }
      const results = (await batch.exec()) ?? [];
      const [failed] = results.flatMap(([err]) => (err ? [err] : []));
      if (failed) throw failed;
    }
    if ((await redis.exists(this.#marker)) !== 1) this.#stale = true;
    if (this.#stale) throw new Error("the projection changed under the rebuild (a flush or a failed write); rebuilding again");
    this.rebuilds++;
    this.#log.info("read model rebuilt from the state bucket", { keys: keys.length, ms: Date.now() - started, rebuilds: this.rebuilds });
    this.#healed();
  }

  /**
   * Asks the state bucket for its last revision: when everything up to it has been applied, the
   * read model held every change at the moment of asking. Fails quietly (a region without
   * quorum cannot answer): the freshness then grows old, which is what it reports.
   */
  async #confirmCurrent(): Promise<void> {
    if (this.#confirming) return;
    this.#confirming = true;
    const asked = Date.now();
    try {
      const { state, cluster } = (await this.#state.status()).streamInfo;
      // A replica without a leader (its region cut off from the quorum) still answers, after a
      // delay, with its own state, which may be stale: only a leader's answer confirms anything.
      if (cluster && !cluster.leader) return this.#notConfirmed(asked, "the state bucket has no leader (is this region cut off from the quorum?)");
      if (this.#observedRevision >= state.last_seq) return this.#confirmed(asked);
      if (this.#awaited === undefined || this.#awaited.revision > state.last_seq) this.#awaited = { revision: state.last_seq, asked };
      this.#notConfirmed(asked, "the follower is behind the state bucket", { observed: this.#observedRevision, last: state.last_seq });
    } catch (err) {
      this.#notConfirmed(asked, `the state bucket did not answer (${errorMessage(err)})`);
    } finally {
      this.#confirming = false;
    }
  }

  #confirmed(asked: number): void {
    this.#currentAsOf = Math.max(this.#currentAsOf ?? 0, asked);
    if (this.#awaited && this.#awaited.asked <= asked) this.#awaited = undefined;
    if (this.#unconfirmed !== undefined) this.#log.info("read model confirmed current again", { revision: this.#observedRevision });
    this.#unconfirmed = undefined;
  }

  /** Logs why, once per reason, when the answers have been unconfirmed long enough to mislead (the freshness says so meanwhile). */
  #notConfirmed(asked: number, reason: string, revisions?: { observed: number; last: number }): void {
    const ageMs = asked - (this.#currentAsOf ?? asked);
    if (ageMs < unconfirmedLogAfterMs || reason === this.#unconfirmed) return;
    this.#unconfirmed = reason;
    this.#log.warn("read model not confirmed current", { reason, ageMs, ...revisions });
  }

  #degrade(reason: string): void {
    if (this.#degraded === undefined) this.#log.warn("read model degraded: reads are answered from the state bucket", { reason });
    this.#degraded ??= reason;
  }

  #healed(): void {
    if (this.#degraded !== undefined && this.rebuilds > 1) this.#log.info("read model healed: reads come from Redis again");
    this.#degraded = undefined;
  }

  async lookup(key: Key): Promise<Lookup> {
    if (this.#usable()) {
      try {
        return { status: await this.#store.get(key) };
      } catch (err) {
        this.#readFailed(err);
      }
    }
    return { status: await this.#fromState(key), degraded: this.#degraded ?? "the read model failed to answer" };
  }

  async list(opts: ListOptions = {}): Promise<ListPage> {
    if (this.#usable()) {
      try {
        return await this.#store.list(opts);
      } catch (err) {
        this.#readFailed(err);
      }
    }
    const degraded = this.#degraded ?? "the read model failed to answer";
    const limit = pageLimit(opts);
    const prefix = opts.prefix ?? "";
    const keys: Key[] = [];
    for await (const token of await this.#state.keys()) {
      const key = keyFromToken(token);
      if (key.startsWith(prefix) && (!opts.after || key > opts.after)) keys.push(key);
    }
    // Byte order, as Redis's lexicographic index: keys are ASCII (key.ts).
    keys.sort();
    const page = keys.slice(0, limit);
    const items = (await mapLimit(page, degradedReadConcurrency, (key) => this.#fromState(key))).filter((s): s is KeyStatus => s !== undefined);
    return keys.length > limit ? { items, next: page[page.length - 1], degraded } : { items, degraded };
  }

  #usable(): boolean {
    return !this.#stale && this.#degraded === undefined;
  }

  /** A status that does not parse is a bug, not an outage: it is not hidden behind the fallback. */
  #readFailed(err: unknown): void {
    if (err instanceof SyntaxError || (err as Error)?.name === "ZodError") throw err;
    this.#degrade(`a read from Redis failed (${errorMessage(err)})`);
  }

  async #fromState(key: Key): Promise<KeyStatus | undefined> {
    const entry = await this.#state.get(keyToken(key));
    return entry?.operation === "PUT" ? keyStatusSchema.parse(entry.json()) : undefined;
  }
}
