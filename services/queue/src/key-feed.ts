/**
 * The key feed: every change of the state bucket, as the queue service's one follower of it
 * (read-model.ts) sees it, fanned out to any number of WatchKeys streams. No watcher opens a
 * KV watch of its own, so a thousand watchers cost JetStream nothing more than one.
 *
 * It holds the latest entry of every key, deletions included (with the bucket's revision of
 * each), which is all it needs for both ways a watch starts: with the current state (the
 * entries that match, in key order) or resumed after a revision (the entries changed since,
 * in revision order: each key once, at its latest state). Everything a watcher is sent is
 * decided synchronously, in the order changes are applied, so a watch that starts between two
 * changes gets the first in its initial state and the second as a change: never both, never
 * neither.
 */
import type { Key } from "@homeostat/core/key";
import { phases, type KeyStatus, type Phase } from "@homeostat/core/status";
import { meter } from "@homeostat/core/telemetry";
import { matchesWatch, maxWatchBacklog, type WatchEvent, type WatchFilter } from "@homeostat/status-api";
import type { StateChange } from "@homeostat/core/state-follower";

/** The latest state of one key: its status, or none once it was removed, at the bucket's revision. */
/** A change of the state bucket as the follower hands it on. */
export type FeedEntry = StateChange;

/** Why a watch ended early: its client fell behind, or the feed closed (the server stops). */
export class WatchEnded extends Error {
  readonly reason: "behind" | "closed";
  constructor(reason: "behind" | "closed", message: string) {
    super(message);
    this.reason = reason;
  }
}

/** One watcher's stream of events: iterate it; it ends when `signal` aborts, and throws WatchEnded. */
export type Watch = AsyncIterable<WatchEvent> & { close(): void };

export class KeyFeed {
  readonly #latest = new Map<Key, FeedEntry>();
  readonly #watchers = new Set<Watcher>();
  #revision = 0;
  #closed = false;

  /** The revision of the last change applied. */
  get revision(): number {
    return this.#revision;
  }

  get watchers(): number {
    return this.#watchers.size;
  }

  /** The keys that have a status now (what a rebuild of the read model writes). */
  keys(): Key[] {
    return [...this.#latest.values()].flatMap((e) => (e.status ? [e.key] : []));
  }

  /** How many keys are in each phase now (every phase present, 0 included). */
  phaseCounts(): Record<Phase, number> {
    const counts = Object.fromEntries(phases.map((p) => [p, 0])) as Record<Phase, number>;
    for (const e of this.#latest.values()) if (e.status) counts[e.status.phase]++;
    return counts;
  }

  /** Reports `phaseCounts()` as the gauge homeostat.keys {phase}, read at each metrics export. Called once, by the queue service. */
  observePhases(): void {
    meter()
      .createObservableGauge("homeostat.keys", { unit: "{key}", description: "Keys of the factory by phase (Pending, Building, Ready, Failed, …)" })
      .addCallback((result) => {
        for (const [phase, n] of Object.entries(this.phaseCounts())) result.observe(n, { phase });
      });
  }

  /** The latest status of `key`; undefined once removed or never seen. */
  status(key: Key): KeyStatus | undefined {
    return this.#latest.get(key)?.status;
  }

  /** Records a change of the bucket and tells every watcher whose view it touches. Changes come in revision order. */
  apply(entry: FeedEntry): void {
    const previous = this.#latest.get(entry.key)?.status;
    this.#latest.set(entry.key, entry);
    this.#revision = Math.max(this.#revision, entry.revision);
    for (const w of this.#watchers) w.change(previous, entry);
  }

  /**
   * A watch of the keys `filter` selects: the current state then the changes, or, with
   * `afterRevision`, the changes after it (a `reset` and the current state when this feed
   * cannot resume from there). A watcher more than `backlog` changes behind is ended.
   */
  watch(filter: WatchFilter, opts: { afterRevision?: number; signal?: AbortSignal; backlog?: number } = {}): Watch {
    if (this.#closed) throw new WatchEnded("closed", "the server is shutting down");
    const initial: WatchEvent[] = [];
    const { afterRevision } = opts;
    if (afterRevision !== undefined && afterRevision <= this.#revision) {
      const changed = [...this.#latest.values()].filter((e) => e.revision > afterRevision).sort((a, b) => a.revision - b.revision);
      for (const e of changed)
        initial.push(
          e.status && matchesWatch(filter, e.status)
            ? { type: "put", key: e.key, revision: e.revision, status: e.status }
            : { type: "delete", key: e.key, revision: e.revision },
        );
    } else {
      if (afterRevision !== undefined) {
        initial.push({
          type: "reset",
          revision: this.#revision,
          reason: `revision ${afterRevision} is beyond this server's ${this.#revision} (the state bucket was recreated, or the client watched another factory)`,
        });
      }
      const current = [...this.#latest.values()].filter(
        (e): e is FeedEntry & { status: KeyStatus } => e.status !== undefined && matchesWatch(filter, e.status),
      );
      current.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      for (const e of current) initial.push({ type: "initial", key: e.key, revision: e.revision, status: e.status });
    }
    initial.push({ type: "synced", revision: this.#revision });
    const watcher = new Watcher(filter, initial, opts.backlog ?? maxWatchBacklog, () => this.#watchers.delete(watcher), opts.signal);
    this.#watchers.add(watcher);
    return watcher;
  }

  /** Ends every watch (its client resumes elsewhere or later) and refuses new ones. */
  close(): void {
    this.#closed = true;
    for (const w of this.#watchers) w.end(new WatchEnded("closed", "the server is shutting down"));
  }
}

class Watcher implements Watch {
  readonly #filter: WatchFilter;
  /** Events from #head on are still to send; the slots before it are cleared so their events can be collected. */
  readonly #queue: (WatchEvent | undefined)[];
  readonly #limit: number;
  readonly #detach: () => void;
  #head = 0;
  #ended: WatchEnded | undefined;
  #done = false;
  #wake: (() => void) | undefined;

  constructor(filter: WatchFilter, initial: WatchEvent[], backlog: number, detach: () => void, signal?: AbortSignal) {
    this.#filter = filter;
    this.#queue = initial;
    this.#limit = initial.length + backlog;
    this.#detach = detach;
    if (signal?.aborted) this.close();
    else signal?.addEventListener("abort", () => this.close(), { once: true });
  }

  change(previous: KeyStatus | undefined, e: FeedEntry): void {
    if (e.status && matchesWatch(this.#filter, e.status)) this.#push({ type: "put", key: e.key, revision: e.revision, status: e.status });
    else if (previous && matchesWatch(this.#filter, previous)) this.#push({ type: "delete", key: e.key, revision: e.revision });
  }

  #push(event: WatchEvent): void {
    if (this.#queue.length - this.#head >= this.#limit) {
      this.end(new WatchEnded("behind", `more than ${this.#limit} events waiting to be sent: resume after the last revision received`));
      return;
    }
    this.#queue.push(event);
    this.#wake?.();
  }

  /** Ends the stream with `err` at once: what is still queued is dropped, the client resumes from what it received. */
  end(err: WatchEnded): void {
    this.#ended ??= err;
    this.#detach();
    this.#wake?.();
  }

  close(): void {
    this.#done = true;
    this.#detach();
    this.#wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<WatchEvent> {
    try {
      for (;;) {
        if (this.#done) return;
        if (this.#ended) throw this.#ended;
        const event = this.#queue[this.#head];
        if (event !== undefined) {
          this.#queue[this.#head++] = undefined;
          // Compact now and then so that a long-lived watch does not keep every event it sent.
          if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
            this.#queue.splice(0, this.#head);
            this.#head = 0;
          }
          yield event;
          continue;
        }
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = undefined;
      }
    } finally {
      this.close();
    }
  }
}
