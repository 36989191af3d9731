import { test } from "node:test";
import assert from "node:assert/strict";
import { mapLimit } from "./map-limit.ts";

test("results keep the order of the items; never more than the limit run at once", async () => {
  let running = 0;
  let most = 0;
  const out = await mapLimit([5, 1, 4, 2, 3, 0, 6], 3, async (ms) => {
    most = Math.max(most, ++running);
    await new Promise((r) => setTimeout(r, ms));
    running--;
    return ms * 10;
  });
  assert.deepEqual(out, [50, 10, 40, 20, 30, 0, 60]);
  assert.equal(most, 3);
  assert.deepEqual(await mapLimit([], 4, async () => 1), []);
});

test("a rejection rejects the whole", async () => {
  await assert.rejects(
    mapLimit([1, 2, 3], 2, async (n) => {
      if (n === 2) throw new Error("two");
      return n;
    }),
    /two/,
  );
});
