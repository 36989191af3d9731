/**
 * The factory launcher (scripts/factory.ts, used by the demo, the benches and these tests) stops
 * its services gracefully: SIGTERM, then each service's own shutdown, ending with exit code 0;
 * SIGKILL only after the grace. A launcher that passed `Array.map`'s index as the grace SIGKILLed
 * every service milliseconds after its SIGTERM, so no service ever stopped cleanly under it, and
 * `bench:storm --profile` wrote no profiles.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { startFactory, type Factory } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

let t: TestEnv;
let factory: Factory | undefined;

before(async () => {
  t = await testEnv();
});

after(async () => {
  await factory?.stop();
  await t?.cleanup();
});

test("stopping the factory lets every service shut down by itself, exit code 0, no SIGKILL", async () => {
  const logDir = path.join(t.dir, "logs");
  factory = await startFactory({ env: t.env, natsCredentials: await t.natsCredentials(), logDir, only: ["queue", "reconciler"] });
  const children = [...factory.processes.entries()];
  assert.equal(children.length, 2);
  await factory.stop();
  for (const [name, child] of children) {
    const ended = { name, code: child.exitCode, signal: child.signalCode };
    // A service that did not stop by itself: its own log says what it was still doing.
    const story =
      ended.code === 0 ? undefined : `${name} did not stop by itself; its log:\n${readFileSync(path.join(logDir, `${name}.log`), "utf8").slice(-8_000)}`;
    assert.deepEqual(ended, { name, code: 0, signal: null }, story);
  }
});
