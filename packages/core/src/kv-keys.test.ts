/**
 * kvKeys on a real JetStream KV (a nats-server of its own): keys rewritten while the listing
 * runs are listed once. `kv.keys()` alone lists them again (the test says how often it did, so
 * a run shows that the case it guards was met).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Kvm, type KV } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { kvKeys, type KeyLister } from "./kv-keys.ts";
import { startTestNatsServer, type TestNatsServer } from "./test-nats-server.ts";

let server: TestNatsServer;
let nc: NatsConnection;
let kv: KV;
const keys = Array.from({ length: 2_000 }, (_, i) => `k${String(i).padStart(4, "0")}`);

before(async () => {
  server = await startTestNatsServer();
  nc = await connect({ servers: server.url });
  kv = await new Kvm(nc).create("listing", { history: 1 });
  await Promise.all(keys.map((k) => kv.put(k, "0")));
});
after(async () => {
  await nc?.close();
  await server?.stop();
});

/**
 * `kv` as a writer racing the listing sees it: every key is written once more as soon as the
 * listing has delivered it, so its new message is pending while the listing still runs.
 */
function rewrittenWhenListed(writes: Promise<unknown>[]): KeyLister {
  return {
    keys: async (filter?: string) => {
      const listing = await kv.keys(filter);
      return (async function* () {
        for await (const k of listing) {
          writes.push(kv.put(k, "again"));
          yield k;
        }
      })();
    },
  };
}

test("a key written while the keys are listed is listed once", async () => {
  const writes: Promise<unknown>[] = [];
  const raw: string[] = [];
  for await (const k of await rewrittenWhenListed(writes).keys()) raw.push(k);
  await Promise.all(writes);
  const repeats = raw.length - new Set(raw).size;
  console.log(`# kv.keys() listed ${repeats} of ${keys.length} keys twice when each was written as it was listed`);
  assert.ok(repeats > 0, "kv.keys() alone lists a key written during the listing again (the case kvKeys guards against)");

  const listed = await kvKeys(rewrittenWhenListed(writes));
  await Promise.all(writes);
  assert.equal(listed.length, new Set(listed).size, "no key twice");
  assert.deepEqual([...listed].sort(), keys);
});

test("a filter lists only its keys", async () => {
  assert.deepEqual(await kvKeys(kv, "k0001"), ["k0001"]);
  assert.deepEqual(await kvKeys(kv, "nothing"), []);
});
