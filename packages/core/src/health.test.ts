import { test } from "node:test";
import assert from "node:assert/strict";
import { ServiceHealth } from "./health.ts";
import { serveHealth } from "./health-http.ts";

test("readiness: not ready while starting (with the step and the last error), then the checks decide, then stopping", async () => {
  const health = new ServiceHealth();
  health.starting("loading the signing key");
  health.failed("loading the signing key: ENOSPC: no space left on device", "transient", new Date("2026-11-26T03:00:00Z"));
  assert.deepEqual(await health.readiness(), {
    health: "not ready",
    ready: false,
    reasons: ["starting: loading the signing key"],
    lastError: { message: "loading the signing key: ENOSPC: no space left on device", at: "2026-11-26T03:00:00.000Z", kind: "transient" },
  });
  let natsUp = false;
  health.check("nats", () => (natsUp ? undefined : "NATS does not answer"));
  health.check("throws", () => Promise.reject(new Error("boom")));
  health.started();
  assert.deepEqual((await health.readiness()).reasons, ["NATS does not answer", "throws: boom"]);
  health.check("throws", () => undefined);
  natsUp = true;
  const ready = await health.readiness();
  assert.equal(ready.ready, true);
  assert.equal(ready.health, "ready");
  assert.equal(ready.lastError?.message, "loading the signing key: ENOSPC: no space left on device", "the last error is kept after recovery");
  const seen: boolean[] = [];
  health.observe((r) => seen.push(r.ready));
  health.stopping();
  assert.deepEqual((await health.readiness()).reasons, ["stopping"]);
  assert.deepEqual(seen, [false]);
});

test("a check that never answers makes the instance not ready instead of hanging the probe", async () => {
  const health = new ServiceHealth();
  health.check("redis", () => new Promise<undefined>(() => {}));
  health.started();
  const r = await health.readiness();
  assert.equal(r.ready, false);
  assert.match(r.reasons[0]!, /^redis: no answer within \d+ ms$/);
});

test("details leave out what is undefined", () => {
  const health = new ServiceHealth();
  let building = 2;
  health.detail("building", () => String(building));
  health.detail("agent", () => undefined);
  assert.deepEqual(health.currentDetails(), { building: "2" });
  building = 0;
  assert.deepEqual(health.currentDetails(), { building: "0" });
  health.detail("long", () => "x".repeat(5_000));
  assert.equal(health.currentDetails().long?.length, 512, "cut to what a heartbeat carries");
});

test("the health endpoint: /healthz alive, /readyz 503 with why and then 200, 404 elsewhere, 405 for other methods", async (t) => {
  const health = new ServiceHealth();
  health.starting("connecting to NATS");
  health.failed("connecting to NATS: CONNECTION_REFUSED", "transient");
  const endpoint = await serveHealth(health, { host: "127.0.0.1", port: 0 });
  t.after(() => endpoint.close());
  const url = (p: string) => `http://127.0.0.1:${endpoint.port}${p}`;

  const alive = await fetch(url("/healthz"));
  assert.equal(alive.status, 200);
  assert.equal(((await alive.json()) as { alive: boolean }).alive, true);

  const starting = await fetch(url("/readyz"));
  assert.equal(starting.status, 503);
  assert.equal(starting.headers.get("content-type"), "application/json");
  const body = (await starting.json()) as { ready: boolean; reasons: string[]; lastError: { message: string } };
  assert.equal(body.ready, false);
  assert.deepEqual(body.reasons, ["starting: connecting to NATS"]);
  assert.equal(body.lastError.message, "connecting to NATS: CONNECTION_REFUSED");

  health.started();
  const ready = await fetch(url("/readyz?verbose=1"));
  assert.equal(ready.status, 200);
  assert.equal(((await ready.json()) as { ready: boolean }).ready, true);

  assert.equal((await fetch(url("/readyz"), { method: "HEAD" })).status, 200);
  assert.equal((await fetch(url("/metrics"))).status, 404);
  const post = await fetch(url("/readyz"), { method: "POST", body: "x" });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
});

test("the health endpoint refuses to start on a port in use (the caller exits: a probe would otherwise reach another process)", async (t) => {
  const first = await serveHealth(new ServiceHealth(), { host: "127.0.0.1", port: 0 });
  t.after(() => first.close());
  await assert.rejects(serveHealth(new ServiceHealth(), { host: "127.0.0.1", port: first.port }), /EADDRINUSE/);
});
