/**
 * Following the state bucket on a real JetStream KV (a nats-server of its own): a follower whose
 * watch goes silent watches again and applies each revision once, in order; a mirror's readers
 * answer as of the revision they took, from memory, and read the bucket when the mirror lags.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { keyToken, type Key } from "./key.ts";
import { StateStore } from "./state.ts";
import { followState, StatusMirror } from "./state-follower.ts";
import type { KeyStatus } from "./status.ts";
import { startTestNatsServer, type TestNatsServer } from "./test-nats-server.ts";

let server: TestNatsServer;
let nc: NatsConnection;
let kv: KV;
const stop = new AbortController();
const status = (key: Key, n: number): KeyStatus => ({ key, phase: "Ready", desiredVersion: `1.${n}`, attempts: 0, updatedAt: new Date().toISOString() });
const put = (key: Key, n: number) => kv.put(keyToken(key), JSON.stringify(status(key, n)));

before(async () => {
  server = await startTestNatsServer();
  nc = await connect({ servers: server.url });
  kv = await new Kvm(nc).create("state", { history: 1, allow_direct: true });
});
after(async () => {
  stop.abort();
  await nc.close();
  await server?.stop();
});

async function until(what: string, check: () => boolean, ms = 5_000): Promise<void> {
  for (const deadline = Date.now() + ms; !check(); await new Promise((r) => setTimeout(r, 25)))
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
}

test("a follower whose watch goes silent watches again from the last revision it applied, and applies each revision once", async () => {
  const key = "package/silent" as Key;
  const stallMs = 400;
  const seen: number[] = [];
  const warnings: string[] = [];
  const following = new AbortController();
  await put(key, 100);
  await followState(kv, following.signal, (entry) => void seen.push(entry.revision), { stallMs, log: { warn: (msg) => void warnings.push(msg) } });
  try {
    // Deleting the watch's consumer silences it: the client would notice only by two missed
    // idle heartbeats (10 s), well past this test's bound.
    const jsm = await jetstreamManager(nc);
    for await (const c of jsm.consumers.list("KV_state")) await jsm.consumers.delete("KV_state", c.name);
    const last = await put(key, 101);
    await until("the follower to apply the revision written while its watch was silent", () => seen.includes(last));
    assert.ok(warnings.includes("state follower stalled: watching again from the last revision applied"), `warnings: ${warnings.join("; ")}`);
    assert.equal(new Set(seen).size, seen.length, `each revision applied once: ${seen.join(",")}`);
    assert.deepEqual(
      seen,
      [...seen].sort((a, b) => a - b),
      "in order",
    );
  } finally {
    following.abort();
  }
});

test("a mirrored store's readers see every write made before they were taken, from memory", async () => {
  const a: Key = "package/mirrored-a";
  const b: Key = "package/mirrored-b";
  await put(a, 1);
  const mirror = await StatusMirror.follow(kv, stop.signal);
  // Counts the reads that reach the bucket (a store over this view reads the same bucket).
  let gets = 0;
  const counted = Object.create(kv, { get: { value: (k: string) => (gets++, kv.get(k)) } }) as KV;
  const store = new StateStore(counted, { mirror });
  assert.equal((await (await store.reader())(a))?.desiredVersion, "1.1", "present at the start");
  // Written and read at once: the reader waits for the mirror to reach the revision it took.
  await put(a, 2);
  await put(b, 1);
  const reader = await store.reader();
  assert.equal((await reader(a))?.desiredVersion, "1.2");
  assert.equal((await reader(b))?.desiredVersion, "1.1");
  await kv.delete(keyToken(b));
  assert.equal(await (await store.reader())(b), undefined, "a deleted key has no status");
  assert.equal(await (await store.reader())("package/never" as Key), undefined);
  assert.equal(gets, 0, "no status was read from the bucket");
});

test("a mirror that has not reached the bucket's revision hands out a reader of the bucket", async () => {
  const key = "package/lagging" as Key;
  await put(key, 7);
  // Never fed: it stays behind every revision.
  const behind = new StatusMirror();
  let fellBack = 0;
  const store = new StateStore(kv);
  const reader = await behind.reader(kv, (at) => (fellBack++, assert.ok(at > 0, "the revision it took"), store.reader()), 50);
  assert.equal(fellBack, 1);
  assert.equal((await reader(key))?.desiredVersion, "1.7", "current, read from the bucket");
});

test("a mirrored store's get and update take the mirror's copy of the very write they read, and parse any other", async () => {
  const key = "package/parsed-once" as Key;
  const revision = await put(key, 1);
  const mirror = new StatusMirror(); // fed by hand: what it holds is what the test says
  const store = new StateStore(kv, { mirror });
  // A copy that differs from what is stored, so the answer tells which one it came from.
  mirror.apply({ key, revision, status: status(key, 99) });
  assert.equal((await store.get(key))?.desiredVersion, "1.99", "the mirror's copy of this write");
  assert.equal((await store.update(key, () => undefined))?.desiredVersion, "1.99");
  mirror.apply({ key, revision: revision - 1, status: status(key, 98) });
  assert.equal((await store.get(key))?.desiredVersion, "1.1", "another write's copy: the stored one, parsed");
  assert.equal((await store.update(key, () => undefined))?.desiredVersion, "1.1");
});

test("a mirror's reader knows the keys marked waiting, as of the revision it took or later", async () => {
  const key = "package/marked" as Key;
  const mirror = await StatusMirror.follow(kv, stop.signal);
  const store = new StateStore(kv, { mirror });
  await kv.put(keyToken(key), JSON.stringify({ ...status(key, 1), waitingFor: "package/base to be built" }));
  assert.ok((await store.reader()).waiting?.has(key), "marked");
  await put(key, 2);
  assert.equal((await store.reader()).waiting?.has(key), false, "the mark went with the next write");
  await kv.put(keyToken(key), JSON.stringify({ ...status(key, 3), waitingFor: "package/base to be built" }));
  await kv.delete(keyToken(key));
  assert.equal((await store.reader()).waiting?.has(key), false, "a deleted key waits for nothing");
  assert.equal((await new StateStore(kv).reader()).waiting, undefined, "a reader of the bucket does not know them all at once");
});

test("a mirror gives every status once it has every write made before the call, and nothing while it lags", async () => {
  const key = "package/listed" as Key;
  const mirror = await StatusMirror.follow(kv, stop.signal);
  await put(key, 1);
  const listed = await mirror.all(kv);
  assert.equal(listed?.find((s) => s.key === key)?.desiredVersion, "1.1", "the write made just before");
  await kv.delete(keyToken(key));
  assert.equal(
    (await mirror.all(kv))?.some((s) => s.key === key),
    false,
    "a deleted key is not listed",
  );
  assert.equal(await new StatusMirror().all(kv, 50), undefined, "a mirror that never reached the bucket's revision lists nothing");
});
