/**
 * The real `homeostat` command (bin/homeostat, a child process) against a status API started
 * here over a real Redis read model with its own random prefix (removed at the end).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createRequire } from "node:module";
import net from "node:net";
import { fileURLToPath } from "node:url";
import { StatusReadModel } from "@homeostat/core/state";
import type { KeyStatus } from "@homeostat/core/status";
import { Topology } from "@homeostat/core/topology";
import { startStatusApi, type StatusApi } from "../../../services/queue/src/status-api.ts";

// ioredis is a dependency of core, not of the CLI: load it from core's side.
type RedisClient = ConstructorParameters<typeof StatusReadModel>[0];
const coreRequire = createRequire(import.meta.resolve("@homeostat/core/state"));
const { Redis } = coreRequire("ioredis") as { Redis: new (url: string, opts?: object) => RedisClient };

const bin = fileURLToPath(new URL("../bin/homeostat", import.meta.url));
const prefix = `t${randomBytes(6).toString("hex")}`;
const digest = (c: string): string => `sha256:${c.repeat(64)}`;

const openssl: KeyStatus = {
  key: "package/openssl",
  phase: "Ready",
  desiredVersion: "3.2.1",
  desiredInputDigest: digest("a"),
  actual: {
    version: "3.2.0",
    inputDigest: digest("9"),
    outputs: { archive: digest("b"), diffId: digest("c"), size: 4096, sbom: digest("e"), location: "store/package/openssl/3.2.0" },
    signatures: { archive: digest("f") },
    keyId: "test-key",
    builtAt: "2026-11-22T07:00:00.000Z",
    traceId: "0af7651916cd43dd8448eb211c80319c",
  },
  attempts: 2,
  lastError: "fetch failed: 503\nretrying",
  cause: { type: "release", id: "3.2.1" },
  traceId: "4bf92f3577b34da6a3ce929d0e0e4736",
  updatedAt: "2026-11-22T07:01:00.123Z",
};
const nginx: KeyStatus = { key: "image/nginx-with-a-long-name", phase: "NeedsAttention", desiredVersion: "1.27.0", attempts: 0, updatedAt: "2026-11-22T08:00:00.000Z" };
const zlib: KeyStatus = { key: "package/zlib", phase: "Pending", attempts: 0, updatedAt: "2026-11-22T09:00:00.000Z" };

let redis: RedisClient;
let api: StatusApi;
let addr: string;

before(async () => {
  redis = new Redis(process.env.REDIS_URL ?? "redis://127.0.0.1:6379", { maxRetriesPerRequest: 1 });
  const model = new StatusReadModel(redis, new Topology({ prefix, region: "local" }));
  for (const s of [openssl, nginx, zlib]) await model.put(s);
  api = await startStatusApi({ addr: "127.0.0.1:0", readModel: model, onError: () => {} });
  addr = `127.0.0.1:${api.port}`;
});

after(async () => {
  await api?.close();
  if (redis) {
    const keys = await redis.keys(`${prefix}:*`);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
  }
});

type Run = { code: number; stdout: string; stderr: string };

/** Runs bin/homeostat asynchronously (the server lives in this process). */
function homeostat(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const { HOMEOSTAT_GRPC_ADDR: _ignored, ...base } = process.env;
    execFile(bin, args, { env: { ...base, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

test("list prints an aligned table in key order", async () => {
  const r = await homeostat(["list", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.equal(lines.length, 4);
  assert.match(lines[0]!, /^KEY\s+PHASE\s+DESIRED\s+ACTUAL\s+UPDATED$/);
  assert.match(lines[1]!, /^image\/nginx-with-a-long-name\s+NeedsAttention\s+1\.27\.0\s+-\s+2026-11-22T08:00:00Z$/);
  assert.match(lines[2]!, /^package\/openssl\s+Ready\s+3\.2\.1\s+3\.2\.0\s+2026-11-22T07:01:00Z$/);
  assert.match(lines[3]!, /^package\/zlib\s+Pending\s+-\s+-\s+2026-11-22T09:00:00Z$/);
  // Every column starts at the same offset on every line.
  for (const heading of ["PHASE", "DESIRED", "ACTUAL", "UPDATED"]) {
    const at = lines[0]!.indexOf(heading);
    for (const line of lines.slice(1)) {
      assert.notEqual(line[at], " ", `${heading} column of ${JSON.stringify(line)}`);
      assert.equal(line[at - 1], " ", `${heading} column of ${JSON.stringify(line)}`);
    }
  }
});

test("list --prefix, --limit and --json; the address from HOMEOSTAT_GRPC_ADDR", async () => {
  let r = await homeostat(["list", "--prefix", "package/", "--json"], { HOMEOSTAT_GRPC_ADDR: addr });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), [openssl, zlib]);

  r = await homeostat(["--addr", addr, "list", "--limit", "2"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trimEnd().split("\n").length, 3);
  assert.match(r.stderr, /showing the first 2 keys; more exist/);

  r = await homeostat(["list", "--prefix", "image/none", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^KEY\s+PHASE\s+DESIRED\s+ACTUAL\s+UPDATED\n$/);
});

test("get prints a readable block with digests and trace ids", async () => {
  const r = await homeostat(["get", "package/openssl", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  for (const re of [
    /^Key:\s+package\/openssl$/m,
    /^Phase:\s+Ready$/m,
    /^Desired version:\s+3\.2\.1$/m,
    new RegExp(`^Desired input:\\s+${digest("a")}$`, "m"),
    /^Actual version:\s+3\.2\.0$/m,
    new RegExp(`^Actual input:\\s+${digest("9")}$`, "m"),
    /^Drift:/m,
    new RegExp(`^Archive:\\s+${digest("b")}$`, "m"),
    new RegExp(`^SBOM:\\s+${digest("e")}$`, "m"),
    new RegExp(`^Signatures:\\s+archive\\s+${digest("f")}$`, "m"),
    /^Size:\s+4096 bytes$/m,
    /^Attempts:\s+2$/m,
    /^Last error:\s+fetch failed: 503\n\s+retrying$/m,
    /^Cause:\s+release 3\.2\.1$/m,
    /^Trace ID:\s+4bf92f3577b34da6a3ce929d0e0e4736$/m,
    /^Build trace ID:\s+0af7651916cd43dd8448eb211c80319c$/m,
  ]) {
    assert.match(r.stdout, re);
  }
  const minimal = await homeostat(["get", "package/zlib", "--addr", addr]);
  assert.equal(minimal.code, 0, minimal.stderr);
  assert.match(minimal.stdout, /^Actual:\s+none/m);
});

test("get --json prints the KeyStatus with status.ts field names", async () => {
  const r = await homeostat(["get", "package/openssl", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), openssl);
});

test("an unknown key: message and exit 1", async () => {
  const r = await homeostat(["get", "image/unknown", "--addr", addr]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.equal(r.stderr, "homeostat: no status for image/unknown\n");
});

test("an unreachable server: exit 2 naming the address", async () => {
  const port = await freePort();
  for (const args of [["get", "package/openssl"], ["list"]]) {
    const r = await homeostat([...args, "--addr", `127.0.0.1:${port}`]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`^homeostat: cannot reach homeostat at 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`));
  }
});

test("usage errors: usage on stderr, exit 64", async () => {
  const cases = [[], ["frobnicate"], ["get"], ["get", "a", "b"], ["get", "not-a-key"], ["list", "--bogus"], ["list", "--limit", "zero"], ["list", "--addr", "nohostport"]];
  const runs = await Promise.all(cases.map((args) => homeostat([...args, ...(args.includes("--addr") ? [] : ["--addr", addr])])));
  runs.forEach((r, i) => {
    const what = cases[i]!.join(" ");
    assert.equal(r.code, 64, `${what}: ${r.stderr}`);
    assert.match(r.stderr, /Usage: homeostat/, what);
    assert.equal(r.stdout, "", what);
  });
});

test("--help lists the commands and exits 0", async () => {
  let r = await homeostat(["--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^\s+get <key>\s+/m);
  assert.match(r.stdout, /^\s+list\s+/m);
  r = await homeostat(["list", "--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--prefix p/);
});
