/**
 * runConsumer against a real JetStream (own random prefix, removed at the end): a consumer asked
 * to stop while it is still starting (a SIGTERM just after a service started) ends. The abort
 * listener used to be added after the consumer's start-up awaits, so an abort during them was
 * never heard and the service's stop waited until it was SIGKILLed.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { setTimeout as sleep } from "node:timers/promises";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { enqueueRequestSchema } from "./contracts.ts";
import { runConsumer } from "./messaging.ts";

let t: TestEnv;
before(async () => {
  t = await testEnv();
});
after(() => t?.cleanup());

test("a consumer asked to stop while it is still starting ends", async () => {
  const abort = new AbortController();
  const log = { info() {}, warn() {}, error() {} };
  const consuming = runConsumer(t.nats, {
    stage: "intake",
    schema: enqueueRequestSchema,
    spanName: "test",
    concurrency: 1,
    log,
    signal: abort.signal,
    handle: async () => {},
  });
  abort.abort();
  const ended = await Promise.race([consuming.then(() => "ended"), sleep(10_000, "still consuming 10 s after the abort")]);
  assert.equal(ended, "ended");
});
