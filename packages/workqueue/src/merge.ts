/**
 * The merge rules (invariant 1 in workqueue.ts), as pure functions so that every rule and tie
 * is unit-tested without a server (merge.test.ts): how a request becomes a schedule, how two
 * schedules of one key become one, and what an enqueue that finds its key queued or running
 * must do with the messages it found. placement.ts carries the plan out against the stream.
 */
import { factStores, maxLinkedEnqueues, mergeFacts, priorities, type FactRevisions, type Priority, type WorkItem } from "@homeostat/core/contracts";
import { recordedUnder } from "@homeostat/core/telemetry";
import type { RunPhase } from "./run-records.ts";
import type { QueueRequest } from "./types.ts";
import type { Queued } from "./work-stream.ts";

/** 0 for the most urgent class. */
export const rank = (p: Priority): number => priorities.indexOf(p);

/**
 * The schedule an enqueue asks for: due now or at its not-before, never before its floor, fresh
 * attempts; `traceparent` is the enqueue's own span context, which the run will link to, and
 * then the request's own links (at most `maxLinkedEnqueues` in all).
 */
export function workItemFor(req: QueueRequest, now: number, traceparent?: string): WorkItem {
  const floor = req.floor ?? 0;
  const enqueues = [...new Set([...(traceparent ? [traceparent] : []), ...(req.links ?? [])])].slice(0, maxLinkedEnqueues);
  return {
    v: 1,
    key: req.key,
    priority: req.priority,
    cause: req.cause,
    floor,
    notBefore: Math.max(req.notBefore ?? 0, floor),
    attempts: 0,
    enqueuedAt: now,
    ...(enqueues.length > 0 ? { enqueues } : {}),
    ...(req.facts ? { facts: req.facts } : {}),
    ...(req.settle ? { settle: { until: now + Math.min(req.settle.quietMs, req.settle.maxMs), latest: now + req.settle.maxMs } } : {}),
  };
}

/**
 * When a schedule's key may run: at its not-before, and not before its settle window (WorkItem
 * `settle`) has passed.
 */
export function dueAt(item: WorkItem): number {
  return Math.max(item.notBefore, item.settle?.until ?? 0);
}

/**
 * The merge of two schedules of one key: the more urgent class (and its cause; on a tie, `a`'s),
 * the earlier not-before, never before the stronger floor, the fewer attempts (a new enqueue is
 * new information), the earlier enqueue time, the enqueues of both, the facts of both
 * (mergeFacts), and the settle window of both (mergeSettle). No watch (WorkItem.watch): the merge
 * stands for more than a look that can be withdrawn.
 */
export function mergeItems(a: WorkItem, b: WorkItem): WorkItem {
  const floor = Math.max(a.floor, b.floor);
  const urgent = rank(b.priority) < rank(a.priority) ? b : a;
  const enqueues = mergeEnqueues(a, b);
  const facts = mergeFacts(a.facts, b.facts);
  const notBefore = Math.max(Math.min(a.notBefore, b.notBefore), floor);
  const settle = mergeSettle(a, b, notBefore);
  return {
    v: 1,
    key: a.key,
    priority: urgent.priority,
    cause: urgent.cause,
    floor,
    notBefore,
    attempts: Math.min(a.attempts, b.attempts),
    enqueuedAt: Math.min(a.enqueuedAt, b.enqueuedAt),
    ...(enqueues.length > 0 ? { enqueues } : {}),
    ...(facts ? { facts } : {}),
    ...(settle ? { settle } : {}),
  };
}

type SettleWindow = NonNullable<WorkItem["settle"]>;

/**
 * The settle window of two merged schedules, whose not-before is `notBefore`: until the later
 * quiet end, but never past the earlier latest, so that a key enqueued again and again still runs
 * within the longest wait of its first enqueue. A schedule without a window is due at its own
 * time (dueAt) and caps the window there: a request for a run now ends it (nothing is left of
 * it: undefined), while a requeue-after's look in an hour lets the key settle as asked, and
 * one due meanwhile still runs it then.
 */
function mergeSettle(a: WorkItem, b: WorkItem, notBefore: number): SettleWindow | undefined {
  if (!a.settle && !b.settle) return undefined;
  const latest = Math.min(a.settle?.latest ?? dueAt(a), b.settle?.latest ?? dueAt(b));
  const until = Math.min(Math.max(a.settle?.until ?? 0, b.settle?.until ?? 0), latest);
  // A window that ends by the not-before adds nothing, now or to any later merge.
  return latest > notBefore ? { until, latest } : undefined;
}

/**
 * A queued message is not rewritten to move its settle window's end by less than this: in a burst
 * of a key's events, the message is rewritten at most a few times a second, and the key runs at
 * most this much before its quiet period is over.
 */
export const settleSlackMs = 250;

/** Whether queued window `a` already says what `b` (its merge with a newer request) says, within settleSlackMs. */
function sameSettle(a: SettleWindow | undefined, b: SettleWindow | undefined): boolean {
  if (!a || !b) return a === b;
  return a.latest === b.latest && b.until - a.until < settleSlackMs;
}

/**
 * Whether a run that read the fact stores up to `read` has answered a schedule asking for
 * `facts`: it states at least one fact, and the run read every store it names at or past it.
 */
export function answeredBy(facts: FactRevisions | undefined, read: FactRevisions | undefined): boolean {
  if (!facts || !read) return false;
  const named = factStores.filter((store) => facts[store] !== undefined);
  return named.length > 0 && named.every((store) => (read[store] ?? 0) >= (facts[store] ?? Infinity));
}

/**
 * The enqueues of two schedules, the older schedule's first, at most `maxLinkedEnqueues`: once a
 * queued schedule is full, a newer enqueue adds nothing, so its message is not rewritten for it.
 */
function mergeEnqueues(a: WorkItem, b: WorkItem): string[] {
  const [older, newer] = b.enqueuedAt < a.enqueuedAt ? [b, a] : [a, b];
  return [...new Set([...(older.enqueues ?? []), ...(newer.enqueues ?? [])])].slice(0, maxLinkedEnqueues);
}

/** `mergeItems` of whichever of the two exist. */
export function mergeOptional(a: WorkItem | undefined, b: WorkItem | undefined): WorkItem | undefined {
  return a && b ? mergeItems(a, b) : (a ?? b);
}

/**
 * A queued message is rewritten only to link one more enqueue while it links fewer than this
 * many. A rewrite is a delete and a publish, and a worker that takes the message meanwhile runs
 * the key once more: done for every enqueue of a storm, it was most of what tracing cost the work
 * queue (bench:telemetry). So a run surely links its first enqueue, and the first further one
 * that only the message can carry (a coalesced request's, `QueueRequest.links`); later ones when
 * the message is rewritten anyway (a schedule that changes) or folded into a rerun (the run record
 * is written then), up to `maxLinkedEnqueues`. The enqueue being placed needs no rewrite at all:
 * its own span links to the message instead (Placement).
 */
export const linksWorthARewrite = 2;

/**
 * Whether a queued message already says what `b` says (its schedule, and the enqueues its run
 * links to, or `linksWorthARewrite` of them), so that it need not be rewritten. `own` is the
 * placing enqueue's traceparent: when the message has a trace context, that enqueue's span links
 * to it (the other way round), so its run need not link back. A message whose run's span would
 * not be recorded needs no link either (`recorded`: this process's sampler, as the services share
 * one configuration): the link would never reach a backend.
 */
export function sameSchedule(a: WorkItem, b: WorkItem, o: { own?: string; recorded?: (traceparent: string | undefined) => boolean } = {}): boolean {
  const linked = new Set(a.enqueues);
  const enough = linked.size >= linksWorthARewrite || !(o.recorded ?? recordedUnder)(a.trace);
  const linkedElsewhere = (e: string) => e === o.own && a.trace !== undefined;
  return (
    // A watching requeue-after merged with anything is rewritten without its watch: kept as it
    // was, it could be withdrawn with the enqueue it now stands for.
    a.watch === b.watch &&
    a.priority === b.priority &&
    a.notBefore === b.notBefore &&
    a.floor === b.floor &&
    a.attempts === b.attempts &&
    sameSettle(a.settle, b.settle) &&
    (enough || (b.enqueues ?? []).every((e) => linked.has(e) || linkedElsewhere(e)))
  );
}

/** What an enqueue does with the messages it found queued for its key. */
export type MergePlan =
  /** The key waits for a retry in one of them (`retry`): that retry is the run asked for; the others go. */
  | { type: "intoRetry"; retry: Queued; drop: Queued[] }
  /** The key runs: everything queued besides its message goes, and the run is marked to run once more with `rerun`. */
  | { type: "intoRun"; drop: Queued[]; rerun: WorkItem }
  /**
   * One message stays, in the most urgent class, holding `merged`: `keep` when one already says
   * exactly that, else a new one is published; `drop` (the rest, in order) goes.
   */
  | { type: "intoQueued"; merged: WorkItem; keep: Queued | undefined; drop: Queued[] };

/**
 * Plans the merge of `item` into the key's `queued` messages (most urgent class first), given
 * its run record's phase and message (`held`; undefined when there is no record, or it is a dead
 * letter, or it is the caller's own run), and the placing enqueue's own traceparent (`own`,
 * sameSchedule).
 */
export function planMerge(item: WorkItem, queued: readonly Queued[], held: { phase: RunPhase; seq: number } | undefined, own?: string): MergePlan {
  // A message waiting for its retry keeps its schedule: the retry is the run this enqueue asks for.
  const retry = held?.phase === "retrying" ? queued.find((m) => m.seq === held.seq) : undefined;
  if (retry) return { type: "intoRetry", retry, drop: queued.filter((m) => m !== retry) };
  const runningSeq = held?.phase === "running" ? held.seq : undefined;
  const idle = queued.filter((m) => m.seq !== runningSeq);
  const merged = idle.reduce((acc, m) => mergeItems(acc, m.item), item);
  // The key runs: it runs once more afterwards, so whatever else is queued folds into that.
  if (runningSeq !== undefined && queued.some((m) => m.seq === runningSeq)) return { type: "intoRun", drop: idle, rerun: merged };
  const keep = idle.find((m) => m.item.priority === merged.priority && sameSchedule(m.item, merged, { own }));
  return { type: "intoQueued", merged, keep, drop: idle.filter((m) => m !== keep) };
}
