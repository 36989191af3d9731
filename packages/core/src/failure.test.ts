import { test } from "node:test";
import assert from "node:assert/strict";
import { causeChain, classifyFailure, crashReason, retryingText, retryUntilItWorks, startupBackoffMs, TransientError, transientCause } from "./failure.ts";

class StepFailed extends Error {}
class Refused extends Error {}
const is = { permanent: (e: unknown) => e instanceof StepFailed, invalid: (e: unknown) => e instanceof Refused };

function errno(code: string, message: string): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

test("a disk-full or connection error is transient, even wrapped in a permanent failure", () => {
  const wrapped = new StepFailed("source.tar.gz: unpacking failed: write failed", { cause: errno("ENOSPC", "ENOSPC: no space left on device, write") });
  assert.deepEqual(classifyFailure(wrapped, is), { kind: "transient", reason: "ENOSPC: source.tar.gz: unpacking failed: write failed" });
  assert.equal(classifyFailure(errno("EROFS", "EROFS: read-only file system"), is).kind, "transient");
  assert.equal(classifyFailure(errno("ECONNRESET", "socket hang up"), is).kind, "transient");
  assert.equal(transientCause(Object.assign(new Error("upstream"), { status: 503 })), "HTTP 503");
  assert.equal(transientCause(Object.assign(new Error("rate limited"), { statusCode: 429 })), "HTTP 429");
  assert.equal(transientCause(new TransientError("held elsewhere", { retryAfterMs: 5 })), "held elsewhere");
});

test("a failing step is permanent, a refused request invalid, an unknown error transient", () => {
  assert.deepEqual(classifyFailure(new StepFailed("step make exited with code 2"), is), { kind: "permanent", reason: "step make exited with code 2" });
  assert.equal(classifyFailure(new Refused("input digest mismatch"), is).kind, "invalid");
  assert.equal(classifyFailure(Object.assign(new Error("not found"), { status: 404 }), is).kind, "transient", "neither claims it: retried, never dropped");
  assert.equal(classifyFailure(errno("ENOENT", "no such file"), is).kind, "transient");
  assert.equal(classifyFailure(new StepFailed("bad", { cause: errno("ENOENT", "x") }), is).kind, "permanent", "ENOENT is not the machine's fault");
});

test("a cause chain is followed to a bounded depth, cycles included", () => {
  const a = new Error("a");
  const b = new Error("b", { cause: a });
  (a as { cause?: unknown }).cause = b;
  assert.equal(causeChain(a).length, 2);
  let deep: Error = errno("EIO", "deep");
  for (let i = 0; i < 40; i++) deep = new Error(`level ${i}`, { cause: deep });
  assert.equal(transientCause(deep), undefined, "an EIO 40 levels down is past the bound");
});

test("status texts", () => {
  assert.equal(retryingText("ENOSPC", Date.UTC(2030, 0, 1)), "retrying: ENOSPC, next at 2030-01-01T00:00:00.000Z");
  assert.equal(crashReason("builder", 3), "the builder died while building this key (3 times)");
});

test("a start-up step is tried again until it works, logging each failure; a stop ends the wait", async () => {
  const warnings: string[] = [];
  const log = { warn: (msg: string, f?: Record<string, unknown>) => void warnings.push(`${msg}: ${String(f?.reason)}`) };
  let tries = 0;
  const key = await retryUntilItWorks(
    "writing the key",
    async () => {
      if (++tries < 3) throw errno("ENOSPC", "ENOSPC: no space left on device, open 'cosign.pub'");
      return "key";
    },
    { log, signal: new AbortController().signal, maxDelayMs: 20, firstDelayMs: 5 },
  );
  assert.equal(key, "key");
  assert.deepEqual(warnings, Array(2).fill("writing the key failed; trying again: ENOSPC: no space left on device, open 'cosign.pub'"));
  const stop = new AbortController();
  const waiting = retryUntilItWorks("never", async () => Promise.reject(new Error("down")), {
    log,
    signal: stop.signal,
    maxDelayMs: 60_000,
    firstDelayMs: 60_000,
  });
  stop.abort();
  await assert.rejects(waiting);
});

test("start-up backoff doubles up to its cap, with half of each delay random", () => {
  const o = { firstDelayMs: 500, maxDelayMs: 30_000 };
  assert.deepEqual(
    [1, 2, 3, 4].map((n) => startupBackoffMs(n, o, () => 1)),
    [500, 1_000, 2_000, 4_000],
  );
  assert.equal(
    startupBackoffMs(1, o, () => 0),
    250,
  );
  assert.equal(
    startupBackoffMs(7, o, () => 1),
    30_000,
    "capped",
  );
  assert.equal(
    startupBackoffMs(7, o, () => 0),
    15_000,
    "at least half the cap",
  );
  assert.equal(
    startupBackoffMs(5_000, o, () => 1),
    30_000,
    "a very long outage stays capped",
  );
});

test("a start-up step fails at once on an error retrying cannot fix, and reports each retried failure classified", async () => {
  class Misconfigured extends Error {}
  const seen: string[] = [];
  let tries = 0;
  const options = {
    log: { warn: () => {} },
    signal: new AbortController().signal,
    maxDelayMs: 10,
    firstDelayMs: 1,
    isFatal: (e: unknown) => e instanceof Misconfigured,
    onFailure: (f: { kind: string; reason: string }) => void seen.push(`${f.kind}: ${f.reason}`),
  };
  await assert.rejects(
    retryUntilItWorks("reading the settings", () => Promise.reject(new Misconfigured("no such region")), options),
    /no such region/,
  );
  assert.deepEqual(seen, [], "a fatal error is not retried");
  await retryUntilItWorks(
    "connecting",
    async () => {
      if (++tries < 2) throw errno("ECONNREFUSED", "connect refused");
    },
    options,
  );
  assert.deepEqual(seen, ["transient: ECONNREFUSED: connect refused"]);
});
