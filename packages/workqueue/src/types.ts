/**
 * The queue's vocabulary: what a caller asks of it (a request), what a reconcile answers (a
 * result), and what it reports (outcomes, dead letters, stats). Every other file of the queue
 * speaks these types; workqueue.ts re-exports them as the package's API.
 */
import type { Cause, FactRevisions, Priority, WorkItem } from "@homeostat/core/contracts";
import type { Key } from "@homeostat/core/key";

/**
 * What a reconcile asks the queue to do next with its key. Errors are thrown, not returned.
 * `read`: up to which revision the run read each fact store it decided from (core
 * FactRevisions); a rerun mark that asks only for facts it had read is then answered.
 */
export type ReconcileResult =
  | { type: "done"; children?: readonly QueueRequest[]; read?: FactRevisions }
  /** `watch`: what the look is for (WorkItem.watch), so that it can be withdrawn once that happened. */
  | { type: "requeueAfter"; ms: number; watch?: string; children?: readonly QueueRequest[]; read?: FactRevisions }
  | { type: "notBefore"; ms: number; children?: readonly QueueRequest[]; read?: FactRevisions }
  | { type: "nonRetriable"; reason: string };

export const done: ReconcileResult = { type: "done" };
export const doneWith = (children: readonly QueueRequest[]): ReconcileResult => ({ type: "done", children });
export const requeueAfter = (ms: number, watch?: string): ReconcileResult => ({ type: "requeueAfter", ms, ...(watch ? { watch } : {}) });
export const notBefore = (ms: number): ReconcileResult => ({ type: "notBefore", ms });
export const nonRetriable = (reason: string): ReconcileResult => ({ type: "nonRetriable", reason });

/**
 * "Reconcile this key": a class, optionally not before a time, optionally with a floor.
 * The run that answers it links to the enqueue's own span, or, when the key was queued already,
 * that span links to the queued message (merge.ts linksWorthARewrite). `links`: traceparents of
 * further requests this one stands for (a caller that merged several into one enqueue), linked
 * by the run too. `facts`: where the facts that caused it are stored (core FactRevisions), so
 * that a run that had read them answers it. `settle`: see Settle.
 */
export type QueueRequest = {
  key: Key;
  priority: Priority;
  cause: Cause;
  notBefore?: number;
  floor?: number;
  links?: readonly string[];
  facts?: FactRevisions;
  settle?: Settle;
};

/**
 * A request's wish to let its key settle: run once no request of the key that asks to settle came
 * for `quietMs`, and at the latest `maxMs` after the first (merge.ts, mergeSettle). A request
 * without it, merged with one that has it, makes the key due no later than it asked itself: at
 * once, for a request that names no time.
 */
export type Settle = { quietMs: number; maxMs: number };

/** added: newly queued; deduped: merged into the queued message; rerun: marked to run once more. */
export type EnqueueOutcome = "added" | "deduped" | "rerun";

export type Reconcile = (item: WorkItem, run: { attempt: number; signal: AbortSignal }) => Promise<ReconcileResult>;

export type DeadLetter = { key: Key; reason: string; nonRetriable: boolean; attempts: number; at: number; item: WorkItem };

export type QueueStats = {
  /** Queued messages per class (waiting, delayed or running). */
  depth: Record<Priority, number>;
  running: number;
  retrying: number;
  deadLetters: number;
};
