/**
 * Resync spreads a round over the interval: key i of N reaches the intake stream at about
 * i × interval / N after the round starts (stream timestamps, real JetStream), never in a burst.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createLogger, makeKey, publish, type EnqueueRequest } from "@homeostat/core";
import { runResync } from "./resync.ts";
import { ingestTestEnv, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

let env: IngestTestEnv;
before(async () => void (env = await ingestTestEnv()));
after(async () => env.cleanup());

test("rounds are spread evenly across the interval at resync priority", { timeout: 60_000 }, async () => {
  const keys = Array.from({ length: 20 }, (_, i) => makeKey("package", `k${i}`));
  const intervalMs = 1_000;
  const abort = new AbortController();
  const enqueue = async (req: EnqueueRequest, msgId: string) => void (await publish(env.t.nats, "intake", req.key, req, { msgId }));
  const loop = runResync({ keys: () => keys, enqueue, intervalMs, log: createLogger("test"), signal: abort.signal });
  // First round (paced at 10 ms) plus two full rounds.
  await new Promise((r) => setTimeout(r, 2_000 + 200 + 500));
  abort.abort();
  await loop;
  const msgs = await env.intake();
  assert.ok(msgs.every((m) => m.priority === "resync" && m.cause.type === "resync"));
  const second = msgs.slice(20, 40);
  assert.equal(second.length, 20);
  assert.deepEqual(
    second.map((m) => m.key),
    keys,
    "in catalog order",
  );
  const t0 = second[0]!.at;
  second.forEach((m, i) => {
    const offset = m.at - t0;
    assert.ok(Math.abs(offset - (i * intervalMs) / keys.length) < 40, `key ${i} at +${offset} ms, expected +${(i * intervalMs) / keys.length}`);
  });
  const first = msgs.slice(0, 20);
  assert.ok(first[19]!.at - first[0]!.at < 400, "the first round after start is paced fast (10 ms apart)");
});
