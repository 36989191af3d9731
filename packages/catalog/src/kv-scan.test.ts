/** scanEntries on real JetStream KV: the live entries under a filter, with no consumer left behind. */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { scanEntries } from "./kv-scan.ts";

let t: TestEnv;
before(async () => (t = await testEnv()));
after(async () => t.cleanup());

test("the live entries under a filter: latest values, deleted and purged ones out, other keys untouched, no consumer", { timeout: 30_000 }, async () => {
  const kv = t.buckets.releases;
  const text = (v: Uint8Array) => new TextDecoder().decode(v);
  await kv.put("zlib.1_0", "one");
  await kv.put("zlib.1_1", "old");
  await kv.put("zlib.1_2", "gone");
  await kv.put("zlibx.9", "not zlib's");
  await kv.put("zlib.1_1", "new");
  await kv.delete("zlib.1_2");
  await kv.put("zlib.1_3", "purged");
  await kv.purge("zlib.1_3");
  const found = await scanEntries(kv, "zlib.*");
  assert.deepEqual(found.map((e) => [e.key, text(e.value)]).sort(), [
    ["zlib.1_0", "one"],
    ["zlib.1_1", "new"],
  ]);
  assert.deepEqual(await scanEntries(kv, "nothing.*"), []);
  const stream = `KV_${t.nats.topology.bucket("releases")}`;
  assert.equal((await t.nats.jsm.streams.info(stream)).state.consumer_count, 0);
});
