/**
 * Resync: every catalog key enqueued at the lowest priority once per interval, so that
 * anything no event reported (or a lost event) is still reconciled.
 *
 * Spread, never a spike: in a round of N keys, key i is enqueued at start + i × interval / N,
 * so the queue sees a steady trickle, not N keys at once. The first round after start is
 * paced at up to 100 keys a second instead, so a fresh factory converges without waiting a
 * whole interval (a catalog of 27,000 keys still takes 4.5 minutes: a ramp, not a spike).
 */
import { setTimeout as delay } from "node:timers/promises";
import type { EnqueueRequest, Key, Logger } from "@homeostat/core";
import { errorMessage } from "@homeostat/core";

const FIRST_ROUND_SPACING_MS = 10;

export type ResyncOptions = {
  /** In the order to enqueue them: the catalog's build order, so a key comes after what it needs. */
  keys: () => readonly Key[];
  enqueue: (req: EnqueueRequest, msgId: string) => Promise<void>;
  intervalMs: number;
  log: Logger;
  signal: AbortSignal;
};

/** Runs rounds until `signal` aborts; resolves when the loop has stopped. */
export async function runResync(o: ResyncOptions): Promise<void> {
  for (let round = 0; !o.signal.aborted; round++) {
    const start = Date.now();
    const keys = o.keys();
    const spacing = keys.length === 0 ? 0 : round === 0 ? Math.min(o.intervalMs / keys.length, FIRST_ROUND_SPACING_MS) : o.intervalMs / keys.length;
    let failed = 0;
    for (const [i, key] of keys.entries()) {
      if (o.signal.aborted) break;
      await sleepUntil(start + i * spacing, o.signal);
      if (o.signal.aborted) break;
      try {
        await o.enqueue({ v: 1, key, priority: "resync", cause: { type: "resync" } }, `resync:${key}:${start}`);
      } catch (err) {
        // One failed enqueue must not stop the round; the next round covers the key again.
        if (failed++ === 0) o.log.warn("resync enqueue failed", { key, reason: errorMessage(err) });
      }
    }
    o.log.info("resync round enqueued", { keys: keys.length, failed, ms: Date.now() - start });
    await sleepUntil(start + o.intervalMs, o.signal);
  }
}

/** Waits until `at`, or less when `signal` aborts (which is not an error here: it is the way out). */
function sleepUntil(at: number, signal: AbortSignal): Promise<void> {
  return delay(Math.max(0, at - Date.now()), undefined, { signal }).catch(() => {});
}
