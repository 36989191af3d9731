/**
 * The key feed on its own: a watch starts with the current state or resumes after a revision
 * with each key changed since once, at its latest; filters by prefix, kind and phase (a key
 * leaving the view is a delete); a watcher that falls behind is ended, never the feed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Key } from "@homeostat/core/key";
import type { KeyStatus, Phase } from "@homeostat/core/status";
import type { WatchEvent, WatchFilter } from "@homeostat/status-api";
import { KeyFeed, type Watch, WatchEnded } from "./key-feed.ts";

const all: WatchFilter = { prefix: "", kinds: [], phases: [] };
const status = (key: Key, phase: Phase = "Ready"): KeyStatus => ({ key, phase, attempts: 0, updatedAt: "2026-11-22T08:00:00.000Z" });

/** The events a watch has ready now, as `type key@revision` (or `type@revision`). */
async function drain(w: Watch, n: number): Promise<string[]> {
  const out: string[] = [];
  const it = w[Symbol.asyncIterator]();
  while (out.length < n) {
    const r = await it.next();
    if (r.done) break;
    out.push(brief(r.value));
  }
  return out;
}

const brief = (e: WatchEvent) => ("key" in e ? `${e.type} ${e.key}@${e.revision}` : `${e.type}@${e.revision}`);

function feedWith(...changes: [Key, Phase | undefined][]): KeyFeed {
  const feed = new KeyFeed();
  changes.forEach(([key, phase], i) => feed.apply({ key, revision: i + 1, status: phase ? status(key, phase) : undefined }));
  return feed;
}

test("a watch starts with the current state in key order, then each change once", async () => {
  const feed = feedWith(["package/b", "Building"], ["image/a", "Pending"], ["package/b", "Ready"], ["package/gone", "Ready"], ["package/gone", undefined]);
  const w = feed.watch(all);
  feed.apply({ key: "image/a", revision: 6, status: status("image/a") });
  assert.deepEqual(await drain(w, 4), ["initial image/a@2", "initial package/b@3", "synced@5", "put image/a@6"]);
  w.close();
  assert.equal(feed.watchers, 0, "a closed watch leaves the feed");
});

test("resuming after a revision sends each key changed since once, at its latest, in revision order; deletions too", async () => {
  const feed = feedWith(
    ["package/a", "Building"],
    ["package/b", "Building"],
    ["package/a", "Ready"],
    ["package/c", "Ready"],
    ["package/c", undefined],
    ["package/b", "Ready"],
  );
  assert.deepEqual(await drain(feed.watch(all, { afterRevision: 2 }), 4), ["put package/a@3", "delete package/c@5", "put package/b@6", "synced@6"]);
  assert.deepEqual(await drain(feed.watch(all, { afterRevision: 6 }), 1), ["synced@6"], "nothing changed since");
});

test("a revision beyond the feed's is a reset, then the current state", async () => {
  const feed = feedWith(["package/a", "Ready"]);
  const w = feed.watch(all, { afterRevision: 99 });
  const it = w[Symbol.asyncIterator]();
  const reset = (await it.next()).value as WatchEvent;
  assert.equal(reset.type, "reset");
  assert.match(reset.type === "reset" ? reset.reason : "", /revision 99 is beyond this server's 1/);
  assert.deepEqual([brief((await it.next()).value as WatchEvent), brief((await it.next()).value as WatchEvent)], ["initial package/a@1", "synced@1"]);
});

test("filters: prefix, kinds and phases; a key leaving the phases is a delete, one never in the view is not told", async () => {
  const feed = feedWith(["package/libgreet", "Building"], ["package/greet", "Ready"], ["image/greeter", "Ready"]);
  const ready = feed.watch({ prefix: "", kinds: ["package"], phases: ["Ready"] });
  const prefixed = feed.watch({ prefix: "package/lib", kinds: [], phases: [] });
  feed.apply({ key: "package/libgreet", revision: 4, status: status("package/libgreet") });
  feed.apply({ key: "package/greet", revision: 5, status: status("package/greet", "Building") });
  feed.apply({ key: "image/greeter", revision: 6, status: status("image/greeter", "Building") });
  feed.apply({ key: "package/libgreet", revision: 7, status: undefined });
  assert.deepEqual(await drain(ready, 5), [
    "initial package/greet@2",
    "synced@3",
    "put package/libgreet@4",
    "delete package/greet@5",
    "delete package/libgreet@7",
  ]);
  assert.deepEqual(await drain(prefixed, 4), ["initial package/libgreet@1", "synced@3", "put package/libgreet@4", "delete package/libgreet@7"]);
});

test("a watcher that falls behind is ended with WatchEnded; the feed and other watchers go on", async () => {
  const feed = feedWith(["package/a", "Ready"]);
  const slow = feed.watch(all, { backlog: 3 });
  const other = feed.watch(all);
  for (let r = 2; r <= 6; r++) feed.apply({ key: "package/a", revision: r, status: status("package/a", r % 2 ? "Ready" : "Building") });
  const it = slow[Symbol.asyncIterator]();
  await assert.rejects(
    async () => {
      for (;;) if ((await it.next()).done) break;
    },
    (err: unknown) => err instanceof WatchEnded && err.reason === "behind",
  );
  assert.equal(feed.watchers, 1);
  assert.deepEqual((await drain(other, 7)).slice(-1), ["put package/a@6"]);
});

test("an aborted signal ends the watch quietly; closing the feed ends every watch and refuses new ones", async () => {
  const feed = feedWith(["package/a", "Ready"]);
  const ac = new AbortController();
  const aborted = feed.watch(all, { signal: ac.signal });
  const it = aborted[Symbol.asyncIterator]();
  await it.next();
  await it.next();
  const pending = it.next();
  ac.abort();
  assert.deepEqual(await pending, { done: true, value: undefined });
  const open = feed.watch(all)[Symbol.asyncIterator]();
  await open.next();
  await open.next();
  const ended = open.next();
  feed.close();
  await assert.rejects(ended, (err: unknown) => err instanceof WatchEnded && err.reason === "closed");
  assert.throws(() => feed.watch(all), WatchEnded);
});
