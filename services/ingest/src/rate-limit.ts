/**
 * Rate limits: fixed one-minute windows counted per key, in memory (see server.ts for where
 * each limit applies and why in memory).
 *
 * The keys are bounded by what a client cannot forge: a peer address (one per TCP peer) or an
 * authenticated principal (one per configured token). Even so the table is capped: past
 * `maxKeys` expired windows are swept, and if every window is still live the oldest key is
 * forgotten (it starts a fresh window next time — a limit briefly too generous, never a
 * memory leak).
 */
export type Window = { count: number; resetAt: number };

export class RateLimiter {
  readonly limit: number;
  private readonly windowMs: number;
  private readonly maxKeys: number;
  private readonly windows = new Map<string, Window>();

  constructor(limit: number, opts: { windowMs?: number; maxKeys?: number } = {}) {
    this.limit = limit;
    this.windowMs = opts.windowMs ?? 60_000;
    this.maxKeys = opts.maxKeys ?? 100_000;
  }

  /** Counts one request for `key`; its window afterwards (over the limit when count > limit). */
  hit(key: string, now = Date.now()): Window {
    const w = this.current(key, now) ?? this.open(key, now);
    w.count++;
    return w;
  }

  /** The live window of `key` without counting, or undefined. */
  peek(key: string, now = Date.now()): Window | undefined {
    return this.current(key, now);
  }

  /** Seconds until `w` resets, at least 1 (for Retry-After). */
  retryAfterS(w: Window, now = Date.now()): number {
    return Math.max(1, Math.ceil((w.resetAt - now) / 1000));
  }

  private current(key: string, now: number): Window | undefined {
    const w = this.windows.get(key);
    return w && w.resetAt > now ? w : undefined;
  }

  private open(key: string, now: number): Window {
    this.windows.delete(key);
    if (this.windows.size >= this.maxKeys) {
      for (const [k, w] of this.windows) if (w.resetAt <= now) this.windows.delete(k);
      // Still full: the oldest window goes (a Map iterates in insertion order).
      const [oldest] = this.windows.keys();
      if (this.windows.size >= this.maxKeys && oldest !== undefined) this.windows.delete(oldest);
    }
    const w = { count: 0, resetAt: now + this.windowMs };
    this.windows.set(key, w);
    return w;
  }
}
