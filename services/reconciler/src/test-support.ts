/** What the reconciler's unit tests share. */
import type { Cause, Key, WorkItem } from "@homeostat/core";

/** A work item as the queue hands a reconciler a key enqueued just now: in the release class, first attempt unless told. */
export function releaseItem(key: Key, o: { cause?: Cause; attempts?: number } = {}): WorkItem {
  return { v: 1, key, priority: "release", cause: o.cause ?? { type: "release" }, notBefore: 0, floor: 0, attempts: o.attempts ?? 0, enqueuedAt: Date.now() };
}
