/**
 * Resync: every catalog key enqueued at the lowest priority, once at start and then once
 * per interval, so that anything no event reported (or a lost event) is still reconciled.
 */
import type { Catalog, EnqueueRequest, Logger } from "@homeostat/core";

export function startResync(o: {
  catalog: () => Catalog;
  enqueue: (req: EnqueueRequest, msgId: string) => Promise<void>;
  intervalMs: number;
  log: Logger;
  signal: AbortSignal;
}): Promise<void> {
  const round = async () => {
    const keys = o.catalog().keys();
    const at = Date.now();
    for (const key of keys) {
      if (o.signal.aborted) return;
      await o.enqueue({ v: 1, key, priority: "resync", cause: { type: "resync" } }, `resync:${key}:${at}`);
    }
    o.log.info("resync enqueued", { keys: keys.length });
  };
  const timer = setInterval(() => void round().catch((err) => o.log.error("resync failed", { reason: String(err) })), o.intervalMs);
  o.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
  return round();
}
