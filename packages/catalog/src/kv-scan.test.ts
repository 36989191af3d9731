/** scanEntries and CachedScan on real JetStream KV: the live entries under a filter, with no consumer left behind. */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import type { KV } from "@nats-io/kv";
import { CachedScan, scanEntries } from "./kv-scan.ts";

let t: TestEnv;
before(async () => (t = await testEnv()));
after(async () => t.cleanup());

// Each read path a bucket may be bound with (core topology.ts openBucket): direct gets, or the stream leader's.
for (const reads of ["direct", "leader"] as const) {
  const p = reads === "direct" ? "" : "l";
  const bucket = async () => (reads === "direct" ? t.buckets.releases : t.nats.kvm.open(t.nats.topology.bucket("releases"), { allow_direct: false }));

  test(
    `the live entries under a filter (${reads}): latest values, deleted and purged ones out, other keys untouched, no consumer`,
    { timeout: 30_000 },
    async () => {
      const kv = await bucket();
      const text = (v: Uint8Array) => new TextDecoder().decode(v);
      await kv.put(`${p}zlib.1_0`, "one");
      await kv.put(`${p}zlib.1_1`, "old");
      await kv.put(`${p}zlib.1_2`, "gone");
      await kv.put(`${p}zlibx.9`, "not zlib's");
      await kv.put(`${p}zlib.1_1`, "new");
      await kv.delete(`${p}zlib.1_2`);
      await kv.put(`${p}zlib.1_3`, "purged");
      await kv.purge(`${p}zlib.1_3`);
      const found = await scanEntries(kv, `${p}zlib.*`);
      assert.deepEqual(found.map((e) => [e.key, text(e.value)]).sort(), [
        [`${p}zlib.1_0`, "one"],
        [`${p}zlib.1_1`, "new"],
      ]);
      assert.deepEqual(await scanEntries(kv, "nothing.*"), []);
      const stream = `KV_${t.nats.topology.bucket("releases")}`;
      assert.equal((await t.nats.jsm.streams.info(stream)).state.consumer_count, 0);
    },
  );

  test(`a cached scan reads only what changed and always agrees with a full scan (${reads})`, { timeout: 30_000 }, async () => {
    const kv = await bucket();
    const text = (v: Uint8Array) => new TextDecoder().decode(v);
    let parsed = 0;
    const scan = new CachedScan(kv, (v) => (parsed++, text(v)));
    const agree = async (filter: string, expected: string[]) => {
      assert.deepEqual((await scan.list(filter)).toSorted(), expected);
      assert.deepEqual((await scanEntries(kv, filter)).map((e) => text(e.value)).toSorted(), expected);
    };
    assert.deepEqual(await scan.list(`${p}musl.*`), []);
    await kv.put(`${p}musl.1_0`, "a");
    await kv.put(`${p}musl.1_1`, "b");
    await agree(`${p}musl.*`, ["a", "b"]);
    assert.equal(parsed, 2);
    // Nothing new: nothing read or parsed again, and the same list (frozen: it is shared).
    const listed = await scan.list(`${p}musl.*`);
    await agree(`${p}musl.*`, ["a", "b"]);
    assert.equal(parsed, 2);
    assert.equal(await scan.list(`${p}musl.*`), listed);
    assert.ok(Object.isFrozen(listed));
    // Another key's write does not count; a new value, a delete and a purge of this filter's keys do.
    await kv.put(`${p}muslx.1`, "other");
    await agree(`${p}musl.*`, ["a", "b"]);
    assert.equal(parsed, 2);
    await kv.put(`${p}musl.1_1`, "b2");
    await kv.put(`${p}musl.1_2`, "c");
    await agree(`${p}musl.*`, ["a", "b2", "c"]);
    assert.equal(parsed, 4);
    assert.notEqual(await scan.list(`${p}musl.*`), listed, "a list of other entries is another list");
    await kv.delete(`${p}musl.1_0`);
    await agree(`${p}musl.*`, ["b2", "c"]);
    await kv.purge(`${p}musl.1_2`);
    await agree(`${p}musl.*`, ["b2"]);
    assert.equal(parsed, 4);
    // A second cache over the same bucket (another process) starts from a full read.
    assert.deepEqual(await new CachedScan(kv, text).list(`${p}musl.*`), ["b2"]);
  });

  test(
    `readers whose catch-ups bring the kept filters up to date agree with a full scan after every round of writes (${reads})`,
    { timeout: 60_000 },
    async () => {
      const kv = await bucket();
      const text = (v: Uint8Array) => new TextDecoder().decode(v);
      const scan = new CachedScan(kv, text);
      const filters = ["oak", "fir", "yew", "elm"].map((n) => `${p}c${n}.*`);
      // Seeded: the same puts, rewrites, deletes and purges every run.
      let seed = 11;
      const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
      // Rounds of 1 to 600 writes: more than the gets a catch-up has in flight at once, and rewrites
      // of one key within a round (its older message gone, a hole in the sequences read).
      for (const writes of [1, 40, 600, 3, 300]) {
        for (let i = 0; i < writes; i++) {
          const key = `${p}c${["oak", "fir", "yew", "elm", "ash"][rand(5)]}.k${rand(30)}`;
          const op = rand(10);
          if (op === 0) await kv.delete(key);
          else if (op === 1) await kv.purge(key);
          else await kv.put(key, `v${rand(1000)}`);
        }
        const list = await scan.reader();
        for (const filter of filters)
          assert.deepEqual(
            (await list(filter)).toSorted(),
            (await scanEntries(kv, filter)).map((e) => text(e.value)).toSorted(),
            `${filter} after a round of ${writes} writes`,
          );
      }
    },
  );
}

test("a value that does not parse fails the lists of its filter only, read by a catch-up or not", { timeout: 30_000 }, async () => {
  const kv = t.buckets.releases;
  const scan = new CachedScan(kv, (v) => {
    const text = new TextDecoder().decode(v);
    if (text === "bad") throw new Error("unparsable entry");
    return text;
  });
  await kv.put("pine.1_0", "p");
  await kv.put("spruce.1_0", "s");
  const first = await scan.reader();
  assert.deepEqual(await first("pine.*"), ["p"]);
  assert.deepEqual(await first("spruce.*"), ["s"]);
  // Read by the next reader's catch-up, which keeps both filters.
  await kv.put("pine.1_1", "bad");
  await kv.put("spruce.1_1", "s2");
  const second = await scan.reader();
  await assert.rejects(second("pine.*"), /unparsable entry/);
  assert.deepEqual((await second("spruce.*")).toSorted(), ["s", "s2"]);
  // Mended, the filter lists again.
  await kv.put("pine.1_1", "p2");
  assert.deepEqual((await (await scan.reader())("pine.*")).toSorted(), ["p", "p2"]);
});

test("a cached scan keeps at most its bound of filters, the least recently listed going first", { timeout: 30_000 }, async () => {
  const kv = t.buckets.releases;
  await kv.put("bound-a.1", "a");
  await kv.put("bound-b.1", "b");
  let parsed = 0;
  const scan = new CachedScan(kv, (v) => (parsed++, new TextDecoder().decode(v)), 1);
  assert.deepEqual(await scan.list("bound-a.*"), ["a"]);
  assert.deepEqual(await scan.list("bound-a.*"), ["a"]);
  assert.equal(parsed, 1);
  assert.deepEqual(await scan.list("bound-b.*"), ["b"]);
  // bound-a was evicted: read and parsed again.
  assert.deepEqual(await scan.list("bound-a.*"), ["a"]);
  assert.equal(parsed, 3);
});

/**
 * Counts the requests CachedScan makes on `kv` (each a direct get, or the stream's info for the
 * bucket's revision) while `fn` runs.
 */
async function countingRequests(kv: KV, fn: (requests: () => number) => Promise<void>): Promise<void> {
  const { jsm } = kv as unknown as {
    jsm: { direct: { getMessage: (...args: unknown[]) => Promise<unknown> }; streams: { info: (...args: unknown[]) => Promise<unknown> } };
  };
  const { getMessage } = jsm.direct;
  const { info } = jsm.streams;
  let requests = 0;
  jsm.direct.getMessage = (...args) => (requests++, getMessage.apply(jsm.direct, args));
  jsm.streams.info = (...args) => (requests++, info.apply(jsm.streams, args));
  try {
    await fn(() => requests);
  } finally {
    jsm.direct.getMessage = getMessage;
    jsm.streams.info = info;
  }
}

test("a reader lists from memory while nothing under its filter changed, and reads a write there once, in its catch-up", { timeout: 30_000 }, async () => {
  const kv = t.buckets.releases;
  const text = (v: Uint8Array) => new TextDecoder().decode(v);
  await countingRequests(kv, async (count) => {
    const scan = new CachedScan(kv, text);
    await kv.put("ash.1_0", "a");
    let list = await scan.reader();
    assert.deepEqual(await list("ash.*"), ["a"]);
    assert.deepEqual(await list("rowan.*"), [], "a filter with no entries");
    const read = count();
    list = await scan.reader();
    assert.deepEqual(await list("ash.*"), ["a"]);
    assert.deepEqual(await list("rowan.*"), []);
    assert.equal(count(), read + 1, "unchanged bucket: its revision is the one request");
    await kv.put("elm.1_0", "other");
    const elsewhere = count();
    list = await scan.reader();
    assert.deepEqual(await list("ash.*"), ["a"]);
    assert.deepEqual(await list("rowan.*"), []);
    assert.equal(
      count(),
      elsewhere + 3,
      "a write under another filter: the revision, that one message read, the revision again (no more writes); these filters from memory",
    );
    await kv.put("ash.1_1", "b");
    await kv.put("rowan.1_0", "r");
    const here = count();
    list = await scan.reader();
    assert.deepEqual((await list("ash.*")).toSorted(), ["a", "b"]);
    assert.deepEqual(await list("rowan.*"), ["r"], "an empty filter that gained an entry");
    assert.equal(
      count(),
      here + 4,
      "writes under these filters: the revision, the two messages read once by the catch-up, which brings the filters up to date, and the revision again",
    );
    await kv.delete("ash.1_0");
    const deleted = count();
    assert.deepEqual(await (await scan.reader())("ash.*"), ["b"]);
    assert.equal(count(), deleted + 3, "a delete marker is read once too");
  });
});

test(
  "filters listed by a reader behind the latest catch-up are known unchanged from the record, unless it has a write under them",
  { timeout: 30_000 },
  async () => {
    const kv = t.buckets.releases;
    const scan = new CachedScan(kv, (v) => new TextDecoder().decode(v));
    await countingRequests(kv, async (count) => {
      await kv.put("lag.1_0", "a");
      await kv.put("lagy.1_0", "y");
      const early = await scan.reader();
      await kv.put("lagx.1_0", "other");
      // A later reader catches up past the early one, which then lists the filters: they are kept
      // at the early revision, behind where the catch-ups are, so the next ones do not update them.
      await scan.reader();
      assert.deepEqual(await early("lag.*"), ["a"]);
      assert.deepEqual(await early("lagy.*"), ["y"]);
      await kv.put("lagx.1_1", "other");
      await kv.put("lagy.1_1", "y2");
      const later = await scan.reader();
      const caughtUp = count();
      assert.deepEqual(await later("lag.*"), ["a"]);
      assert.equal(count(), caughtUp, "nothing was written under it: listed from memory");
      assert.deepEqual((await later("lagy.*")).toSorted(), ["y", "y2"], "the record has a write under it: read again");
    });
  },
);

test(
  "a reader says up to which revision it has every entry under a filter it listed: its own revision, or the filter's last entry when that is later",
  { timeout: 30_000 },
  async () => {
    const kv = t.buckets.releases;
    const scan = new CachedScan(kv, (v) => new TextDecoder().decode(v));
    const before = await kv.put("birch.1_0", "a");
    const list = await scan.reader();
    assert.equal(list.seen("birch.*"), undefined, "not listed yet");
    // A filter with no entries: complete up to the revision the reader took.
    await list("aspen.*");
    assert.equal(list.seen("aspen.*"), before);
    // Written after the reader took its revision, before the filter is listed: in the list, and so in what it has seen.
    const after = await kv.put("birch.1_1", "b");
    const other = await kv.put("willow.1_0", "w");
    assert.deepEqual((await list("birch.*")).toSorted(), ["a", "b"]);
    assert.equal(list.seen("birch.*"), after);
    assert.ok(list.seen("birch.*")! < other, "another filter's later entry is not claimed");
    // Listed again from memory by a reader at the same revision: complete up to that revision.
    const again = await scan.reader();
    await again("willow.*");
    assert.equal(again.seen("willow.*"), other);
  },
);
