/**
 * The read model's freshness: a state bucket written more often than it is asked is still
 * confirmed current once the follower reaches the revision it had when asked, and answers that
 * cannot be confirmed for long are logged with the reason.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { keyToken, type Key } from "@homeostat/core/key";
import type { Logger } from "@homeostat/core/log";
import type { KeyStatus } from "@homeostat/core/status";
import { waitFor } from "../../../scripts/factory.ts";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { type FeedEntry, KeyFeed } from "./key-feed.ts";
import { HealingReadModel, StatusReadModel } from "./read-model.ts";
import { followState } from "@homeostat/core/state-follower";

const checkMs = 50;
/** Longer than a write's interval: every check finds the bucket ahead of what the follower applied. */
const followerLagMs = 300;
const writeEveryMs = 20;
const key = "package/busy" as Key;
const status = (n: number): KeyStatus => ({ key, phase: "Ready", desiredVersion: `1.${n}`, attempts: 0, updatedAt: new Date().toISOString() });

let t: TestEnv;
const stop = new AbortController();

before(async () => {
  t = await testEnv();
});

after(async () => {
  stop.abort();
  await t.cleanup();
});

test("a bucket written more often than it is asked is confirmed current once the follower reaches what it was asked at", async () => {
  const infos: string[] = [];
  const log: Pick<Logger, "info" | "warn"> = { info: (msg) => void infos.push(msg), warn() {} };
  const model = new HealingReadModel({
    store: new StatusReadModel(t.redis, t.nats.topology),
    state: t.buckets.state,
    source: new KeyFeed(),
    topology: t.nats.topology,
    log,
  });
  await t.buckets.state.put(keyToken(key), JSON.stringify(status(0)));
  // The follower applies each change `followerLagMs` late, so it is behind the bucket at every check.
  const lagged = (entry: FeedEntry) => void setTimeout(() => model.apply(entry), followerLagMs);
  await followState(t.buckets.state, stop.signal, lagged);
  model.start(checkMs, stop.signal);
  let writes = 1;
  const writer = setInterval(() => void t.buckets.state.put(keyToken(key), JSON.stringify(status(writes++))), writeEveryMs);
  try {
    const startedAt = Date.now();
    await waitFor("the read model to be confirmed current while the bucket is written", async () => (model.freshness.currentAsOf ?? 0) > startedAt, 5_000, 25);
    const { currentAsOf } = model.freshness;
    // Loose: a loaded machine delays checks; what matters is that some check after the start was confirmed.
    assert.ok(Date.now() - currentAsOf! < followerLagMs + 40 * checkMs, "confirmed as of a recent check, not the first one");
  } finally {
    clearInterval(writer);
  }
  assert.ok(writes > 20, `the bucket kept changing (${writes} writes)`);
});
