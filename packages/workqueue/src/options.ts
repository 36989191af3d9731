/**
 * A queue's settings, and how they come from the config (packages/core/src/config.ts, the one
 * place defaults live), so that every service builds its queue the same way.
 */
import type { Logger } from "@homeostat/core/log";
import { exponentialBackoff, type Backoff } from "@homeostat/core/messaging";
import type { DeadLetter } from "./types.ts";

export type WorkQueueOptions = {
  leaseMs: number;
  log: Logger;
  /** Who holds a lease (shown in run records): e.g. `reconciler-<pid>`. */
  owner: string;
  maxAttempts: number;
  backoff: Backoff;
  /** The longest floor a `notBefore` result may set. */
  maxFloorMs: number;
  drainMs: number;
  /** Told after a key moved to the dead letters (e.g. to show it in the key's status); errors are logged. */
  onDeadLetter?: (letter: DeadLetter) => Promise<void>;
};

/** Options from the config, the one place defaults live. */
export function workQueueOptions(
  config: { leaseMs: number; queue: { maxAttempts: number; backoffBaseMs: number; backoffMaxMs: number; maxFloorMs: number; drainMs: number } },
  o: { log: Logger; owner: string; onDeadLetter?: (letter: DeadLetter) => Promise<void> },
): WorkQueueOptions {
  return {
    ...o,
    leaseMs: config.leaseMs,
    maxAttempts: config.queue.maxAttempts,
    backoff: exponentialBackoff(config.queue.backoffBaseMs, config.queue.backoffMaxMs),
    maxFloorMs: config.queue.maxFloorMs,
    drainMs: config.queue.drainMs,
  };
}
