/**
 * The state store on a real JetStream KV (a nats-server of its own): compare-and-set writes from
 * two concurrent writers on two connections lose nothing, `change` may decline to write,
 * remove, a fresh key's initial status, and the bucket revision's shared queries.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { keyToken } from "./key.ts";
import { bucketRevision, StateStore } from "./state.ts";
import type { KeyStatus } from "./status.ts";
import { startTestNatsServer, type TestNatsServer } from "./test-nats-server.ts";

let server: TestNatsServer;
const connections: NatsConnection[] = [];
/** One store per connection, on the same bucket: two writers as two services would be. */
let writers: StateStore[];

before(async () => {
  server = await startTestNatsServer();
  for (let i = 0; i < 2; i++) connections.push(await connect({ servers: server.url }));
  const kv: KV = await new Kvm(connections[0]!).create("state", { history: 5 });
  writers = [new StateStore(kv), new StateStore(await new Kvm(connections[1]!).open("state"))];
});
after(async () => {
  for (const nc of connections) await nc.close();
  await server?.stop();
});

const bump =
  (key: KeyStatus["key"]) =>
  (current: KeyStatus | undefined): KeyStatus => {
    const base = current ?? StateStore.initial(key);
    return { ...base, attempts: base.attempts + 1 };
  };

test("a fresh key's initial status is Pending with no attempts", () => {
  const s = StateStore.initial("package/fresh");
  assert.equal(s.key, "package/fresh");
  assert.equal(s.phase, "Pending");
  assert.equal(s.attempts, 0);
  assert.ok(!Number.isNaN(Date.parse(s.updatedAt)));
});

test("update creates, get reads back through the schema, updatedAt is set on write", async () => {
  const [w] = writers;
  assert.equal(await w!.get("package/created"), undefined);
  const written = await w!.update("package/created", (cur) => ({
    ...(cur ?? StateStore.initial("package/created")),
    phase: "Reconciling",
    updatedAt: "1970-01-01T00:00:00.000Z",
  }));
  assert.equal(written?.phase, "Reconciling");
  assert.notEqual(written?.updatedAt, "1970-01-01T00:00:00.000Z");
  assert.deepEqual(await w!.get("package/created"), written);
});

test("compare-and-set under two concurrent writers loses no update", async () => {
  const key = "package/contended";
  let applied = 0;
  const perWriter = 15;
  await Promise.all(
    writers.flatMap((w) =>
      Array.from({ length: perWriter }, () =>
        w.update(key, (cur) => {
          applied++;
          return bump(key)(cur);
        }),
      ),
    ),
  );
  const final = await writers[1]!.get(key);
  assert.equal(final?.attempts, 2 * perWriter, "every increment survived");
  assert.ok(applied > 2 * perWriter, `the writers did collide (change applied ${applied} times) and re-applied their change`);
});

test("a change that returns undefined writes nothing and returns the current status", async () => {
  const key = "package/unchanged";
  const first = await writers[0]!.update(key, bump(key));
  const again = await writers[1]!.update(key, () => undefined);
  assert.deepEqual(again, first);
  assert.deepEqual(await writers[0]!.get(key), first);
  assert.equal(await writers[0]!.update("package/never-written", () => undefined), undefined);
  assert.equal(await writers[0]!.get("package/never-written"), undefined);
});

test("remove deletes a status once; a later update starts afresh", async () => {
  const key = "package/removed";
  await writers[0]!.update(key, bump(key));
  await writers[0]!.update(key, bump(key));
  assert.equal(await writers[1]!.remove(key), true);
  assert.equal(await writers[0]!.get(key), undefined);
  assert.equal(await writers[1]!.remove(key), false, "nothing left to remove");
  assert.equal(await writers[0]!.remove("package/never-there"), false);
  const reborn = await writers[0]!.update(key, bump(key));
  assert.equal(reborn?.attempts, 1, "written over the delete marker, from the initial status");
});

test("a reader answers from memory while the bucket is unchanged, and reads again after any write to it", async () => {
  const kv = await new Kvm(connections[0]!).open("state");
  let gets = 0;
  // The same bucket with its gets counted (the revision is a stream info, not counted).
  const counted = new Proxy(kv, {
    get(target, prop, receiver) {
      const value: unknown = Reflect.get(target, prop, receiver);
      if (prop === "get") return (...args: Parameters<KV["get"]>) => (gets++, target.get(...args));
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
  const store = new StateStore(counted);
  const [w] = writers;
  await w!.update("package/read-a", bump("package/read-a"));
  await w!.update("package/read-b", bump("package/read-b"));
  let read = await store.reader();
  assert.equal((await read("package/read-a"))?.attempts, 1);
  assert.equal(await read("package/read-none"), undefined);
  assert.equal(gets, 2);
  read = await store.reader();
  assert.equal((await read("package/read-a"))?.attempts, 1);
  assert.equal(await read("package/read-none"), undefined);
  assert.equal(gets, 2, "unchanged bucket: nothing read again, an absent key included");
  await writers[1]!.update("package/read-b", bump("package/read-b"));
  read = await store.reader();
  assert.equal((await read("package/read-a"))?.attempts, 1);
  assert.equal((await read("package/read-b"))?.attempts, 2, "another writer's change is seen");
  assert.equal(gets, 4, "a write anywhere in the bucket: each key is read again");
  await w!.remove("package/read-a");
  assert.equal(await (await store.reader())("package/read-a"), undefined, "a removal is seen");
});

test("concurrent revision queries share stream infos, and none answers with a revision the server gave before its caller asked", async () => {
  const nc = await connect({ servers: server.url });
  try {
    const kv = await new Kvm(nc).open("state");
    // The connection's stream infos counted, and held once answered until `release` (a slow answer).
    let infos = 0;
    let release = (): void => {};
    let held: Promise<void> | undefined;
    const request = nc.request.bind(nc);
    nc.request = async (subject, ...rest) => {
      if (!subject.startsWith("$JS.API.STREAM.INFO.")) return request(subject, ...rest);
      infos++;
      const answer = await request(subject, ...rest);
      await held;
      return answer;
    };
    const revisions = await Promise.all(Array.from({ length: 20 }, () => bucketRevision(kv)));
    assert.equal(infos, 2, "the first caller's query, then one for the other nineteen");
    assert.equal(new Set(revisions).size, 1);

    held = new Promise((r) => (release = r));
    const before = bucketRevision(kv); // answered by the server now, held by the client
    await writers[0]!.update("package/revision-shared", bump("package/revision-shared"));
    const written = (await kv.get(keyToken("package/revision-shared")))!.revision;
    const after = bucketRevision(kv); // asked after the write: must not share the held answer
    release();
    assert.ok((await before) < written, "the held answer predates the write");
    assert.ok((await after) >= written, "a caller who asked after the write sees it");
    assert.equal(infos, 2 + 2);
  } finally {
    await nc.close();
  }
});
