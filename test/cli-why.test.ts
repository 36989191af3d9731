/**
 * `homeostat why` (the real bin, a child process) against the real status API over a real
 * Redis read model: the chain of causes from an image back to the release event.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { AdvisoryStore, ReleaseStore } from "@homeostat/catalog";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { type Logger } from "@homeostat/core";
import { StatusReadModel } from "../services/queue/src/read-model.ts";
import type { KeyStatus } from "@homeostat/core/status";
import { startStatusApi, type StatusApi } from "../services/queue/src/status-api.ts";
import { KeyFeed } from "../services/queue/src/key-feed.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const bin = fileURLToPath(new URL("../packages/cli/bin/homeostat", import.meta.url));
const quiet: Logger = { info() {}, warn() {}, error() {} };
const digest = (c: string): `sha256:${string}` => `sha256:${c.repeat(64)}`;
const at = "2026-11-22T07:00:00.000Z";

const statuses: KeyStatus[] = [
  {
    key: "image/greeter",
    phase: "Ready",
    desiredVersion: "3f2a9c1d0e4b",
    attempts: 0,
    updatedAt: at,
    cause: { type: "dependency", id: "package/greet", detail: "rebuilt at 3f2a9c1d0e4b; package/greet was rebuilt at 1.0" },
    builds: [
      { version: "3f2a9c1d0e4b", inputDigest: digest("c"), outcome: "succeeded", at, traceId: "4bf92f3577b34da6a3ce929d0e0e4736" },
      { version: "0a1b2c3d4e5f", inputDigest: digest("d"), outcome: "superseded", at },
    ],
  },
  {
    key: "package/greet",
    phase: "Ready",
    desiredVersion: "1.0",
    attempts: 0,
    updatedAt: at,
    cause: { type: "dependency", id: "package/libgreet", detail: "rebuilt at 1.0; package/libgreet was rebuilt at 1.1" },
  },
  {
    key: "package/libgreet",
    phase: "Ready",
    desiredVersion: "1.1",
    attempts: 0,
    updatedAt: at,
    cause: { type: "release", id: "release-0123456789abcdef0123456789abcdef", detail: "bumped from 1.0 to 1.1; libgreet released 1.1" },
  },
  // A loop must end the chain, not the server.
  { key: "package/a", phase: "Pending", attempts: 0, updatedAt: at, cause: { type: "dependency", id: "package/b" } },
  { key: "package/b", phase: "Pending", attempts: 0, updatedAt: at, cause: { type: "dependency", id: "package/a" } },
];

let t: TestEnv;
let api: StatusApi;
let addr: string;

before(async () => {
  t = await testEnv();
  const model = new StatusReadModel(t.redis, t.nats.topology);
  for (const s of statuses) await model.put(s);
  const queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "why-test" }));
  api = await startStatusApi({
    // Why is a read: no token needed on loopback (read auth none), as the CLI runs it here.
    addr: "127.0.0.1:0",
    security: { tls: undefined, tokens: [], readAuth: "none", insecure: false },
    readModel: model,
    queue,
    releases: new ReleaseStore(t.buckets.releases),
    advisories: await AdvisoryStore.open(t.nats),
    inCatalog: (key) => statuses.some((s) => s.key === key),
    feed: new KeyFeed(),
    onError: () => {},
  });
  addr = `127.0.0.1:${api.port}`;
});

after(async () => {
  await api?.close();
  await t?.cleanup();
});

function homeostat(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, [...args, "--addr", addr], { timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr }),
    );
  });
}

test("why follows cause links through dependencies back to the release event", async () => {
  const r = await homeostat(["why", "image/greeter"]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n");
  assert.match(lines[0]!, /^image\/greeter \[Ready 3f2a9c1d0e4b\]: rebuilt at 3f2a9c1d0e4b; package\/greet was rebuilt at 1\.0 \(dependency package\/greet\)$/);
  assert.match(lines[1]!, /^ {2}because package\/greet \[Ready 1\.0\]: .*package\/libgreet was rebuilt at 1\.1/);
  assert.match(
    lines[2]!,
    /^ {2}because package\/libgreet \[Ready 1\.1\]: bumped from 1\.0 to 1\.1; libgreet released 1\.1 \(release release-0123456789abcdef0123456789abcdef\)$/,
  );
  assert.match(r.stdout, /Last builds of image\/greeter:\nAT\s+VERSION\s+OUTCOME\s+INPUT\s+TRACE\n2026-11-22T07:00:00Z\s+3f2a9c1d0e4b\s+succeeded/);

  const json = await homeostat(["why", "image/greeter", "--json"]);
  assert.deepEqual(
    (JSON.parse(json.stdout) as KeyStatus[]).map((s) => s.key),
    ["image/greeter", "package/greet", "package/libgreet"],
  );
  assert.deepEqual((JSON.parse(json.stdout) as KeyStatus[])[0], statuses[0], "builds survive the wire");
});

test("why stops at a loop, and a key without status is not found", async () => {
  const loop = await homeostat(["why", "package/a", "--json"]);
  assert.deepEqual(
    (JSON.parse(loop.stdout) as KeyStatus[]).map((s) => s.key),
    ["package/a", "package/b"],
  );
  const missing = await homeostat(["why", "package/nothing"]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no status for package\/nothing/);
});
