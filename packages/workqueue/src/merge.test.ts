/** The merge rules, every rule and tie, without a server. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { maxLinkedEnqueues, mergeFacts, type Priority, type WorkItem } from "@homeostat/core/contracts";
import { answeredBy, dueAt, linksWorthARewrite, mergeItems, mergeOptional, planMerge, rank, sameSchedule, settleSlackMs, workItemFor } from "./merge.ts";
import type { Queued } from "./work-stream.ts";

const item = (o: Partial<WorkItem> = {}): WorkItem => ({
  v: 1,
  key: "package/k",
  priority: "release",
  cause: { type: "manual" },
  notBefore: 0,
  floor: 0,
  attempts: 0,
  enqueuedAt: 1_000,
  ...o,
});
const queued = (seq: number, o: Partial<WorkItem> = {}): Queued => ({ seq, item: item(o) });

test("classes rank most urgent first: advisory, release, dependency, resync, repair (the agent's)", () => {
  const order: Priority[] = ["resync", "repair", "advisory", "dependency", "release"];
  assert.deepEqual(
    order.sort((a, b) => rank(a) - rank(b)),
    ["advisory", "release", "dependency", "resync", "repair"],
  );
});

test("a request becomes a schedule: due at its not-before, never before its floor, fresh attempts", () => {
  const req = { key: "package/k" as const, priority: "advisory" as const, cause: { type: "advisory" as const, id: "GHSA-1" } };
  assert.deepEqual(workItemFor(req, 5), item({ priority: "advisory", cause: { type: "advisory", id: "GHSA-1" }, enqueuedAt: 5 }));
  assert.equal(workItemFor({ ...req, notBefore: 300 }, 5).notBefore, 300);
  const floored = workItemFor({ ...req, notBefore: 100, floor: 200 }, 5);
  assert.deepEqual([floored.notBefore, floored.floor], [200, 200], "the floor lifts an earlier not-before");
  assert.equal(workItemFor({ ...req, notBefore: 900, floor: 200 }, 5).notBefore, 900, "a later not-before stays");
});

test("the more urgent class wins, with its cause, whichever side it is on", () => {
  const advisory = item({ priority: "advisory", cause: { type: "advisory", id: "A" } });
  const resync = item({ priority: "resync", cause: { type: "resync" } });
  for (const merged of [mergeItems(advisory, resync), mergeItems(resync, advisory)]) {
    assert.equal(merged.priority, "advisory");
    assert.deepEqual(merged.cause, { type: "advisory", id: "A" });
  }
});

test("a tie of classes keeps the first schedule's cause", () => {
  const merged = mergeItems(item({ cause: { type: "manual", id: "first" } }), item({ cause: { type: "release", id: "second" } }));
  assert.deepEqual(merged.cause, { type: "manual", id: "first" });
});

test("the earlier not-before wins, either way round; equal not-befores stay", () => {
  assert.equal(mergeItems(item({ notBefore: 500 }), item({ notBefore: 200 })).notBefore, 200);
  assert.equal(mergeItems(item({ notBefore: 200 }), item({ notBefore: 500 })).notBefore, 200);
  assert.equal(mergeItems(item({ notBefore: 300 }), item({ notBefore: 300 })).notBefore, 300);
});

test("never before the stronger floor: the floor holds against an earlier not-before", () => {
  const floored = item({ notBefore: 800, floor: 800 });
  const early = item({ notBefore: 0 });
  for (const merged of [mergeItems(floored, early), mergeItems(early, floored)]) {
    assert.equal(merged.floor, 800);
    assert.equal(merged.notBefore, 800);
  }
  assert.equal(mergeItems(item({ notBefore: 900, floor: 400 }), item({ notBefore: 1_200, floor: 600 })).floor, 600, "the stronger floor of two");
  assert.equal(mergeItems(item({ notBefore: 900, floor: 400 }), item({ notBefore: 1_200, floor: 600 })).notBefore, 900, "a not-before past every floor stays");
});

test("the fewer attempts and the earlier enqueue time win", () => {
  const merged = mergeItems(item({ attempts: 4, enqueuedAt: 50 }), item({ attempts: 0, enqueuedAt: 90 }));
  assert.equal(merged.attempts, 0);
  assert.equal(merged.enqueuedAt, 50);
});

test("mergeOptional merges what exists", () => {
  const a = item({ notBefore: 10 });
  const b = item({ notBefore: 5, priority: "advisory" });
  assert.equal(mergeOptional(undefined, undefined), undefined);
  assert.equal(mergeOptional(a, undefined), a);
  assert.equal(mergeOptional(undefined, b), b);
  assert.deepEqual(mergeOptional(a, b), mergeItems(a, b));
});

test("sameSchedule compares class, not-before, floor and attempts, not cause or enqueue time", () => {
  assert.equal(sameSchedule(item(), item({ cause: { type: "resync" }, enqueuedAt: 9 })), true);
  for (const differs of [{ priority: "resync" as const }, { notBefore: 1 }, { floor: 1 }, { attempts: 1 }])
    assert.equal(sameSchedule(item(), item(differs)), false);
});

test("plan: nothing held, one queued message that already says it: keep it, publish nothing", () => {
  const m = queued(7);
  assert.deepEqual(planMerge(item({ enqueuedAt: 2_000 }), [m], undefined), { type: "intoQueued", merged: item(), keep: m, drop: [] });
});

test("plan: an enqueue that changes the schedule rewrites the message (drop it, publish the merge)", () => {
  const m = queued(7, { notBefore: 5_000 });
  const plan = planMerge(item(), [m], undefined);
  assert.deepEqual(plan, { type: "intoQueued", merged: item(), keep: undefined, drop: [m] });
});

test("plan: messages in two classes fold into one in the more urgent class", () => {
  const advisory = queued(3, { priority: "advisory" });
  const resync = queued(9, { priority: "resync" });
  const plan = planMerge(item({ priority: "resync" }), [advisory, resync], undefined);
  assert.ok(plan.type === "intoQueued", plan.type);
  assert.equal(plan.merged.priority, "advisory");
  assert.equal(plan.keep, advisory);
  assert.deepEqual(plan.drop, [resync]);
});

test("plan: a key waiting for its retry keeps that message; the other classes go", () => {
  const retry = queued(4, { attempts: 2 });
  const other = queued(8, { priority: "advisory" });
  assert.deepEqual(planMerge(item({ priority: "advisory" }), [other, retry], { phase: "retrying", seq: 4 }), { type: "intoRetry", retry, drop: [other] });
});

test("plan: a retry record whose message is not among those queued does not hold the enqueue", () => {
  const m = queued(5);
  assert.equal(planMerge(item(), [m], { phase: "retrying", seq: 4 }).type, "intoQueued");
});

test("plan: a running key is marked to run once more, with everything else queued folded in", () => {
  const running = queued(6, { priority: "resync" });
  const other = queued(11, { priority: "dependency", notBefore: 50 });
  const plan = planMerge(item({ priority: "release", notBefore: 900 }), [running, other], { phase: "running", seq: 6 });
  assert.ok(plan.type === "intoRun", plan.type);
  assert.deepEqual(plan.drop, [other]);
  assert.equal(plan.rerun.priority, "release");
  assert.equal(plan.rerun.notBefore, 50);
});

test("plan: a running record whose message is gone does not take the enqueue; it is queued anew", () => {
  const plan = planMerge(item(), [], { phase: "running", seq: 6 });
  assert.deepEqual(plan, { type: "intoQueued", merged: item(), keep: undefined, drop: [] });
});

test("plan: a key waiting for its floor is queued as usual (the floor is enforced at claim)", () => {
  const m = queued(2, { notBefore: 7_000, floor: 7_000 });
  const plan = planMerge(item(), [m], { phase: "waiting", seq: 0 });
  assert.ok(plan.type === "intoQueued", plan.type);
  assert.equal(plan.merged.notBefore, 7_000, "an enqueue cannot pull a floor earlier");
  assert.equal(plan.keep, m);
});

const traceparent = (n: number) => `00-${n.toString(16).padStart(32, "0")}-${"1".repeat(16)}-01`;

test("a merge keeps the enqueues of both, the older schedule's first, at most maxLinkedEnqueues", () => {
  const older = item({ enqueuedAt: 100, enqueues: [traceparent(1), traceparent(2)] });
  const newer = item({ enqueuedAt: 200, enqueues: [traceparent(3), traceparent(2)] });
  for (const merged of [mergeItems(older, newer), mergeItems(newer, older)]) assert.deepEqual(merged.enqueues, [1, 2, 3].map(traceparent));
  assert.equal(mergeItems(item(), item()).enqueues, undefined, "no enqueues, no field");
  const full = item({ enqueuedAt: 100, enqueues: Array.from({ length: maxLinkedEnqueues }, (_, i) => traceparent(i + 10)) });
  assert.deepEqual(mergeItems(item({ enqueuedAt: 200, enqueues: [traceparent(1)] }), full).enqueues, full.enqueues, "a full schedule takes no newer enqueue");
  assert.deepEqual(workItemFor({ key: "package/k", priority: "release", cause: { type: "manual" } }, 5, traceparent(7)).enqueues, [traceparent(7)]);
});

test("a request's links follow the enqueue's own traceparent, each once, at most maxLinkedEnqueues", () => {
  const req = { key: "package/k" as const, priority: "advisory" as const, cause: { type: "advisory" as const } };
  assert.deepEqual(workItemFor({ ...req, links: [traceparent(2), traceparent(7), traceparent(3)] }, 5, traceparent(7)).enqueues, [7, 2, 3].map(traceparent));
  assert.deepEqual(workItemFor({ ...req, links: [traceparent(2)] }, 5).enqueues, [traceparent(2)], "links without a span of its own");
  const many = Array.from({ length: maxLinkedEnqueues + 3 }, (_, i) => traceparent(i + 10));
  assert.deepEqual(workItemFor({ ...req, links: many }, 5, traceparent(1)).enqueues, [traceparent(1), ...many.slice(0, maxLinkedEnqueues - 1)]);
});

test("a queued message whose run would not link to a new enqueue is rewritten; a full one is kept", () => {
  const queuedOne = queued(4, { enqueuedAt: 100, enqueues: [traceparent(1)] });
  const plan = planMerge(item({ enqueuedAt: 200, enqueues: [traceparent(2)] }), [queuedOne], undefined);
  assert.equal(plan.type, "intoQueued");
  if (plan.type !== "intoQueued") return;
  assert.equal(plan.keep, undefined);
  assert.deepEqual(plan.merged.enqueues, [traceparent(1), traceparent(2)]);
  const fullOne = queued(5, { enqueuedAt: 100, enqueues: Array.from({ length: maxLinkedEnqueues }, (_, i) => traceparent(i + 10)) });
  const again = planMerge(item({ enqueuedAt: 200, enqueues: [traceparent(2)] }), [fullOne], undefined);
  assert.ok(again.type === "intoQueued" && again.keep === fullOne);
  assert.ok(!sameSchedule(item({ enqueues: [traceparent(1)] }), item({ enqueues: [traceparent(2)] })));
  assert.ok(sameSchedule(item({ enqueues: [traceparent(1), traceparent(2)] }), item({ enqueues: [traceparent(2), traceparent(1)] })));
});

test("a message linking linksWorthARewrite enqueues is not rewritten just for one more; a schedule change rewrites it with the new link", () => {
  const links = Array.from({ length: linksWorthARewrite }, (_, i) => traceparent(i + 1));
  const enough = queued(6, { enqueuedAt: 100, notBefore: 5_000, enqueues: links });
  const same = planMerge(item({ enqueuedAt: 200, notBefore: 5_000, enqueues: [traceparent(9)] }), [enough], undefined);
  assert.ok(same.type === "intoQueued" && same.keep === enough && same.drop.length === 0, "kept as it is");
  const earlier = planMerge(item({ enqueuedAt: 200, notBefore: 1_000, enqueues: [traceparent(9)] }), [enough], undefined);
  assert.ok(earlier.type === "intoQueued" && earlier.keep === undefined, "an earlier not-before rewrites it");
  assert.deepEqual(earlier.merged.enqueues, [...links, traceparent(9)], "carrying the new link");
  assert.ok(sameSchedule(item({ enqueues: links }), item({ enqueues: [...links, traceparent(9)] })));
  assert.ok(!sameSchedule(item({ enqueues: links.slice(1) }), item({ enqueues: links })), "below it, a missing link rewrites");
});

test("the placing enqueue's own link needs no rewrite of a message with a trace context: its span links to the message instead", () => {
  const own = traceparent(9);
  const traced = queued(7, { enqueuedAt: 100, trace: traceparent(1), enqueues: [traceparent(1)] });
  const plan = planMerge(item({ enqueuedAt: 200, enqueues: [own] }), [traced], undefined, own);
  assert.ok(plan.type === "intoQueued" && plan.keep === traced && plan.drop.length === 0, "kept as it is");
  const coalesced = planMerge(item({ enqueuedAt: 200, enqueues: [own, traceparent(5)] }), [traced], undefined, own);
  assert.ok(coalesced.type === "intoQueued" && coalesced.keep === undefined, "a coalesced request's link only the message can carry: rewritten");
  assert.deepEqual(coalesced.merged.enqueues, [traceparent(1), own, traceparent(5)]);
  const untraced = queued(8, { enqueuedAt: 100, enqueues: [traceparent(1)] });
  const noContext = planMerge(item({ enqueuedAt: 200, enqueues: [own] }), [untraced], undefined, own);
  assert.ok(noContext.type === "intoQueued" && noContext.keep === undefined, "a message without a trace context to link to carries the link");
  assert.ok(!sameSchedule(traced.item, item({ enqueues: [traceparent(1), own] })), "without `own`, a missing link rewrites");
});

test("a message whose run's span would not be recorded is not rewritten for a link; the sampler decides which those are", () => {
  const sampledOut = `00-${"a".repeat(32)}-${"b".repeat(16)}-00`;
  const sampled = `00-${"a".repeat(32)}-${"b".repeat(16)}-01`;
  // As recordedUnder answers under a parent-based sampler (the flag), and under always_on (always).
  const parentBased = (t: string | undefined) => !t?.endsWith("-00");
  const alwaysOn = () => true;
  assert.ok(sameSchedule(item({ trace: sampledOut }), item({ enqueues: [traceparent(2)] }), { recorded: parentBased }), "kept as it is");
  assert.ok(!sameSchedule(item({ trace: sampled }), item({ enqueues: [traceparent(2)] }), { recorded: parentBased }), "a sampled one links the enqueue");
  assert.ok(!sameSchedule(item({ trace: sampledOut }), item({ notBefore: 5_000 }), { recorded: parentBased }), "a schedule change still rewrites it");
  assert.ok(
    !sameSchedule(item({ trace: sampledOut }), item({ enqueues: [traceparent(2)] }), { recorded: alwaysOn }),
    "always_on records the run: the link is added",
  );
});

test("a watching requeue-after merged with anything loses its watch, and its message is rewritten, never kept", () => {
  const look = item({ notBefore: 9_000, watch: "sha256:built" });
  // The same schedule asked for again (a delayed enqueue at the very same time): kept as it
  // was, the message would still carry the watch and could be withdrawn with this enqueue.
  const again = item({ notBefore: 9_000 });
  assert.equal(mergeItems(look, again).watch, undefined);
  assert.equal(mergeItems(again, look).watch, undefined);
  assert.equal(sameSchedule(look, mergeItems(again, look)), false);
  const plan = planMerge(again, [{ seq: 7, item: look }], undefined);
  assert.equal(plan.type, "intoQueued");
  if (plan.type !== "intoQueued") return;
  assert.equal(plan.keep, undefined, "rewritten without the watch");
  assert.deepEqual(
    plan.drop.map((m) => m.seq),
    [7],
  );
  assert.equal(plan.merged.watch, undefined);
  // A message that watches, placed alone (the worker's requeue), keeps its watch.
  const alone = planMerge(look, [], undefined);
  assert.ok(alone.type === "intoQueued" && alone.merged.watch === "sha256:built");
});

test("facts: a request's go with its schedule; merged, every store at the later revision; a side that states none voids them", () => {
  const req = { key: "package/k" as const, priority: "advisory" as const, cause: { type: "advisory" as const }, facts: { advisories: 7 } };
  assert.deepEqual(workItemFor(req, 5).facts, { advisories: 7 });
  assert.deepEqual(mergeFacts({ advisories: 7 }, { advisories: 3, releases: 9 }), { advisories: 7, releases: 9 });
  assert.equal(mergeFacts({ advisories: 7 }, undefined), undefined);
  assert.equal(mergeFacts(undefined, { releases: 1 }), undefined);
  assert.deepEqual(mergeItems(item({ facts: { advisories: 2 } }), item({ facts: { advisories: 5 } })).facts, { advisories: 5 });
  assert.equal("facts" in mergeItems(item({ facts: { advisories: 2 } }), item()), false, "merged with an enqueue that states no facts: none");
});

test("facts: answered by a run that read every store they name at or past them, and only then", () => {
  assert.equal(answeredBy({ advisories: 5 }, { advisories: 5, releases: 1 }), true);
  assert.equal(answeredBy({ advisories: 5, releases: 2 }, { advisories: 9, releases: 2 }), true);
  assert.equal(answeredBy({ advisories: 6 }, { advisories: 5 }), false, "stored after the run read");
  assert.equal(answeredBy({ releases: 1 }, { advisories: 5 }), false, "a store the run did not read");
  assert.equal(answeredBy({ advisories: 1, releases: 3 }, { advisories: 5, releases: 2 }), false, "one store read too early");
  assert.equal(answeredBy(undefined, { advisories: 5 }), false, "an enqueue that states no facts");
  assert.equal(answeredBy({}, { advisories: 5 }), false, "facts that name no store");
  assert.equal(answeredBy({ advisories: 1 }, undefined), false, "a run that reports no reads");
});

test("plan: a rerun mark keeps the enqueue's facts only while nothing else queued is folded in", () => {
  const running = queued(4);
  const plain = planMerge(item({ facts: { advisories: 3 } }), [running], { phase: "running", seq: 4 });
  assert.equal(plain.type, "intoRun");
  assert.deepEqual(plain.type === "intoRun" && plain.rerun.facts, { advisories: 3 });
  // A queued message states no facts (work-stream.ts asQueued): it may stand for anything.
  const folded = planMerge(item({ facts: { advisories: 3 } }), [queued(2, { priority: "advisory" }), running], { phase: "running", seq: 4 });
  assert.equal(folded.type === "intoRun" && "facts" in folded.rerun, false);
});

test("settle: a request's window runs from its enqueue for the quiet period, within its longest wait; due at the later of it and the not-before", () => {
  const req = { key: "package/k" as const, priority: "advisory" as const, cause: { type: "advisory" as const } };
  const settling = workItemFor({ ...req, settle: { quietMs: 1_000, maxMs: 30_000 } }, 5);
  assert.deepEqual(settling.settle, { until: 1_005, latest: 30_005 });
  assert.equal(dueAt(settling), 1_005);
  assert.equal(dueAt({ ...settling, notBefore: 2_000 }), 2_000, "a later not-before holds");
  assert.deepEqual(workItemFor({ ...req, settle: { quietMs: 5_000, maxMs: 2_000 } }, 0).settle, { until: 2_000, latest: 2_000 }, "never past its longest wait");
  assert.equal(workItemFor(req, 5).settle, undefined);
  assert.equal(dueAt(workItemFor(req, 5)), 0, "a request that does not settle is due at once");
});

test("settle: merged, the window ends at the later quiet end but never past the earlier latest; a schedule without one caps it at its own due time (now: nothing left)", () => {
  const first = item({ settle: { until: 1_000, latest: 5_000 } });
  const later = item({ settle: { until: 3_000, latest: 9_000 } });
  assert.deepEqual(mergeItems(first, later).settle, { until: 3_000, latest: 5_000 });
  assert.deepEqual(mergeItems(later, first).settle, { until: 3_000, latest: 5_000 });
  const pastLatest = item({ settle: { until: 7_000, latest: 12_000 } });
  assert.deepEqual(mergeItems(first, pastLatest).settle, { until: 5_000, latest: 5_000 }, "a burst cannot hold the key past the first's longest wait");
  assert.equal(mergeItems(first, item()).settle, undefined, "a request for a run now ends the window");
  assert.equal(dueAt(mergeItems(item(), first)), 0);
  const lookInAnHour = item({ notBefore: 3_600_000 });
  assert.deepEqual(mergeItems(lookInAnHour, first).settle, first.settle, "a requeue-after's look later leaves the window as it was");
  assert.equal(dueAt(mergeItems(lookInAnHour, first)), 1_000);
  const lookSoon = mergeItems(item({ notBefore: 2_000 }), first);
  assert.deepEqual(lookSoon.settle, { until: 1_000, latest: 2_000 }, "a look due meanwhile caps the window");
  assert.equal(dueAt(mergeItems(lookSoon, later)), 2_000, "and holds against later requests");
  const floored = mergeItems(item({ notBefore: 8_000, floor: 8_000 }), first);
  assert.deepEqual([floored.settle, dueAt(floored)], [undefined, 8_000], "a floor past the window's latest leaves nothing of it");
});

test("settle: a queued window moved by less than settleSlackMs is kept; moved further, or voided, the message is rewritten", () => {
  const queuedWindow = item({ settle: { until: 1_000, latest: 5_000 } });
  const near = mergeItems(queuedWindow, item({ settle: { until: 1_000 + settleSlackMs - 1, latest: 6_000 } }));
  assert.equal(sameSchedule(queuedWindow, near, { recorded: () => false }), true);
  const far = mergeItems(queuedWindow, item({ settle: { until: 1_000 + settleSlackMs, latest: 6_000 } }));
  assert.equal(sameSchedule(queuedWindow, far, { recorded: () => false }), false);
  assert.equal(sameSchedule(queuedWindow, mergeItems(queuedWindow, item()), { recorded: () => false }), false, "a request for a run now rewrites it");
  const plan = planMerge(item({ settle: { until: 2_000, latest: 6_000 } }), [{ seq: 4, item: queuedWindow }], undefined);
  assert.equal(plan.type, "intoQueued");
  if (plan.type === "intoQueued") assert.deepEqual([plan.keep, plan.merged.settle], [undefined, { until: 2_000, latest: 5_000 }]);
});
