import { test } from "node:test";
import assert from "node:assert/strict";
import type { ServiceInstance } from "@homeostat/core/heartbeat";
import { ageText, assessServices, formatServices } from "./status.ts";

function instance(service: string, o: Partial<ServiceInstance> = {}): ServiceInstance {
  return {
    v: 1,
    service,
    instance: `host-${service.length}`,
    version: "0.1.0",
    region: "local",
    host: "host",
    pid: service.length,
    startedAt: "2026-11-26T03:00:00.000Z",
    at: "2026-11-26T03:10:00.000Z",
    health: "ready",
    reasons: [],
    details: {},
    ageMs: 1_200,
    stale: false,
    ...o,
  };
}

const five = ["ingest", "queue", "reconciler", "builder", "signer"];

test("ready when each required service has a ready, fresh instance; the agent is optional", () => {
  const a = assessServices({ instances: five.map((s) => instance(s)), staleAfterMs: 15_000 });
  assert.equal(a.ready, true);
  assert.deepEqual(a.notReady, []);
  assert.match(formatServices(a), /^ready: every required service \(ingest, queue, reconciler, builder, signer\) has a ready instance$/m);
});

test("a required service with no instance, only a stale one, or only a not-ready one makes the factory not ready, each with why", () => {
  const instances = [
    instance("ingest"),
    instance("queue", { stale: true, ageMs: 40_000 }),
    instance("reconciler"),
    instance("builder", { details: { building: "2" } }),
    instance("signer", {
      health: "not ready",
      reasons: ["starting: loading the signing key"],
      lastError: { message: "loading the signing key: ENOSPC: no space left on device,\nwrite", at: "2026-11-26T03:09:58.123Z" },
    }),
    instance("signer", { instance: "host-old", health: "stopped" }),
  ].filter((i) => i.service !== "reconciler");
  const a = assessServices({ instances, staleAfterMs: 15_000 });
  assert.equal(a.ready, false);
  assert.deepEqual(a.notReady, [
    { service: "queue", why: "host-5 ready, stale" },
    { service: "reconciler", why: "no instance has sent a heartbeat" },
    { service: "signer", why: "host-6 not ready: starting: loading the signing key, host-old stopped" },
  ]);
  const text = formatServices(a).split("\n");
  assert.match(text[0]!, /^SERVICE +INSTANCE +REGION +VERSION +HEALTH +AGE +DETAILS +LAST ERROR$/);
  assert.match(
    text.find((l) => l.startsWith("builder"))!,
    /ready +1s +building=2 +-$/,
  );
  assert.match(
    text.find((l) => l.startsWith("signer") && l.includes("host-6"))!,
    /not ready +1s +- +2026-11-26T03:09:58Z loading the signing key: ENOSPC: no space left on device, write$/,
    "the last error on one line, with its time",
  );
  assert.match(
    text.find((l) => l.startsWith("queue"))!,
    /ready, stale +40s/,
  );
  assert.ok(text.includes("NOT READY: reconciler: no instance has sent a heartbeat"));
});

test("no heartbeat at all says so", () => {
  const a = assessServices({ instances: [], staleAfterMs: 15_000 });
  assert.equal(a.notReady.length, 5);
  assert.match(formatServices(a), /^no service instance has sent a heartbeat$/m);
});

test("ages read at a glance", () => {
  assert.deepEqual([999, 1_200, 59_999, 125_000, 7_260_000].map(ageText), ["0s", "1s", "59s", "2m5s", "2h1m"]);
});
