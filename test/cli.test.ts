/**
 * The real `homeostat` command (bin/homeostat, a child process) against a status API started
 * here over a real Redis read model, a real WorkQueue and real release and advisory stores on
 * NATS, with their own random prefix (streams, buckets and Redis keys removed at the end).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { AdvisoryStore, ReleaseStore } from "@homeostat/catalog";
import { done, nonRetriable, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { mapLimit, type Logger } from "@homeostat/core";
import { StatusReadModel } from "../services/queue/src/read-model.ts";
import type { KeyStatus } from "@homeostat/core/status";
import { startStatusApi, type StatusApi } from "../services/queue/src/status-api.ts";
import { KeyFeed } from "../services/queue/src/key-feed.ts";
import { tokenDigest } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";
import { parseAdvisoryFile } from "../packages/cli/src/plan.ts";
import { makePki } from "./fixtures/pki.ts";

const bin = fileURLToPath(new URL("../packages/cli/bin/homeostat", import.meta.url));
const quiet: Logger = { info() {}, warn() {}, error() {} };
const digest = (c: string): `sha256:${string}` => `sha256:${c.repeat(64)}`;
// Every run gets the write token through HOMEOSTAT_TOKEN unless a test says otherwise.
const writeToken = "cli-test-write-token";
const readToken = "cli-test-read-token";
const security = {
  tls: undefined,
  readAuth: "none",
  insecure: false,
  tokens: [
    { name: "operator", role: "write", sha256: tokenDigest(writeToken) },
    { name: "viewer", role: "read", sha256: tokenDigest(readToken) },
  ],
} as const satisfies Parameters<typeof startStatusApi>[0]["security"];

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
const nginx: KeyStatus = {
  key: "image/nginx-with-a-long-name",
  phase: "NeedsAttention",
  desiredVersion: "1.27.0",
  attempts: 0,
  updatedAt: "2026-11-22T08:00:00.000Z",
};
const zlib: KeyStatus = { key: "package/zlib", phase: "Pending", attempts: 0, updatedAt: "2026-11-22T09:00:00.000Z" };

let t: TestEnv;
let queue: WorkQueue;
let model: StatusReadModel;
let releases: ReleaseStore;
let advisories: AdvisoryStore;
let api: StatusApi;
let addr: string;

/** The catalog enqueues are checked against, and the (idle) feed of WatchKeys. */
const catalogKeys = new Set<string>(["package/openssl", "image/nginx", "package/zlib", "image/broken"]);
const served = { inCatalog: (key: string) => catalogKeys.has(key), feed: new KeyFeed() };

before(async () => {
  t = await testEnv();
  model = new StatusReadModel(t.redis, t.nats.topology);
  for (const s of [openssl, nginx, zlib]) await model.put(s);
  queue = new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "cli-test" }));
  releases = new ReleaseStore(t.buckets.releases);
  advisories = await AdvisoryStore.open(t.nats);
  api = await startStatusApi({
    addr: "127.0.0.1:0",
    security: { ...security, tokens: [...security.tokens] },
    readModel: model,
    queue,
    releases,
    advisories,
    ...served,
    onError: () => {},
  });
  addr = `127.0.0.1:${api.port}`;
});

after(async () => {
  await api?.close();
  await t?.cleanup();
});

type Run = { code: number; stdout: string; stderr: string };

/** Runs bin/homeostat asynchronously (the server lives in this process). */
function homeostat(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    const { HOMEOSTAT_GRPC_ADDR: _ignored, ...base } = process.env;
    execFile(bin, args, { env: { ...base, HOMEOSTAT_TOKEN: writeToken, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
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
  for (const args of [["get", "package/openssl"], ["list"], ["queue", "stats"], ["enqueue", "package/zlib"], ["dead-letters"], ["retry", "package/zlib"]]) {
    const r = await homeostat([...args, "--addr", `127.0.0.1:${port}`]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, new RegExp(`^homeostat: cannot reach homeostat at 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`));
  }
});

test("usage errors: usage on stderr, exit 64", async () => {
  const cases = [
    [],
    ["frobnicate"],
    ["get"],
    ["get", "a", "b"],
    ["get", "not-a-key"],
    ["list", "--bogus"],
    ["list", "--limit", "zero"],
    ["list", "--addr", "nohostport"],
    ["queue"],
    ["queue", "stats", "extra"],
    ["enqueue"],
    ["enqueue", "openssl"],
    ["enqueue", "package/zlib", "--priority", "urgent"],
    ["enqueue", "package/zlib", "--not-before", "soon"],
    ["enqueue", "package/zlib", "--not-before", "-5"],
    ["enqueue", "package/zlib", "--floor", "31d"],
    ["dead-letters", "--limit", "0"],
    ["dead-letters", "package/zlib"],
    ["retry"],
    ["retry", "package/../x"],
  ];
  // A few at a time: twenty Node processes started at once on a loaded 2-core machine can each
  // outlast the per-process time limit before any of them gets to parse its arguments.
  const runs = await mapLimit(cases, 4, (args) => homeostat([...args, ...(args.includes("--addr") ? [] : ["--addr", addr])]));
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
  for (const c of ["queue stats", "enqueue <key>", "dead-letters", "retry <key>"]) assert.match(r.stdout, new RegExp(`^\\s+${c}\\s+`, "m"), c);
  r = await homeostat(["list", "--help"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /--prefix p/);
});

test("queue stats prints a table per class and the totals; --json the QueueStats", async () => {
  let r = await homeostat(["queue", "stats", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^CLASS\s+QUEUED\nadvisory\s+0\nrelease\s+0\ndependency\s+0\nresync\s+0\nrepair\s+0\n\nRunning:\s+0\nRetrying:\s+0\nDead letters:\s+0\n$/,
  );
  r = await homeostat(["queue", "stats", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { depth: { advisory: 0, release: 0, dependency: 0, resync: 0, repair: 0 }, running: 0, retrying: 0, deadLetters: 0 });
});

test("enqueue queues, then deduplicates; the options reach the queue", async () => {
  let r = await homeostat([
    "enqueue",
    "package/zlib",
    "--priority",
    "resync",
    "--not-before",
    "1h30m",
    "--floor",
    "90000",
    "--detail",
    "checking a mirror",
    "--addr",
    addr,
  ]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "package/zlib: added (queued)\n");
  r = await homeostat(["enqueue", "package/zlib", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { key: "package/zlib", outcome: "deduped" });
  // The merge took the more urgent class (release, the default) and kept the floor.
  const stats = await queue.stats();
  assert.deepEqual(stats.depth, { advisory: 0, release: 1, dependency: 0, resync: 0, repair: 0 });
});

test("dead-letters lists a non-retriable key; retry queues it again; retry of another key exits 1", async () => {
  let r = await homeostat(["dead-letters", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "KEY  PRIORITY  ATTEMPTS  RETRIABLE  SINCE  REASON\n");

  assert.equal((await homeostat(["enqueue", "image/broken", "--priority", "advisory", "--addr", addr])).code, 0);
  const ac = new AbortController();
  const running = queue.run({
    concurrency: 2,
    signal: ac.signal,
    reconcile: async (item) => (item.key === "image/broken" ? nonRetriable("base image\nwithdrawn") : done),
  });
  try {
    await waitFor("the dead letter", async () => (await queue.deadLetters()).some((d) => d.key === "image/broken"), 15_000);
  } finally {
    ac.abort();
    await running;
  }

  r = await homeostat(["dead-letters", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.equal(lines.length, 2);
  assert.match(lines[1]!, /^image\/broken\s+advisory\s+\d+\s+no\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\s+base image withdrawn$/);

  r = await homeostat(["dead-letters", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  const [d] = JSON.parse(r.stdout) as Record<string, unknown>[];
  assert.deepEqual(
    { ...d, at: undefined, attempts: undefined },
    {
      key: "image/broken",
      reason: "base image\nwithdrawn",
      nonRetriable: true,
      priority: "advisory",
      cause: { type: "manual" },
      at: undefined,
      attempts: undefined,
    },
  );

  r = await homeostat(["retry", "image/broken", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^image\/broken: queued again with fresh attempts/);
  assert.equal((await queue.stats()).depth.advisory, 1);

  r = await homeostat(["retry", "package/openssl", "--addr", addr]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  assert.equal(r.stderr, "homeostat: package/openssl is neither in the dead letters nor Failed\n");
});

test("enqueue of a key the catalog does not declare exits 1 and says so; --force queues it", async () => {
  let r = await homeostat(["enqueue", "package/gone", "--addr", addr]);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, "homeostat: package/gone is not in the catalog (force the enqueue to retire a key that left it)\n");
  r = await homeostat(["enqueue", "package/gone", "--force", "--priority", "resync", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { key: "package/gone", outcome: "added" });
});

test("enqueue and retry without a token, or with a read token, exit 77 with the reason; a token file works", async () => {
  let r = await homeostat(["enqueue", "package/zlib", "--addr", addr], { HOMEOSTAT_TOKEN: "" });
  assert.equal(r.code, 77);
  assert.equal(r.stdout, "");
  assert.match(
    r.stderr,
    new RegExp(
      `^homeostat: not authenticated by ${addr.replace(/\./g, "\\.")}: Enqueue needs a bearer token with the write role: send authorization: Bearer <token>\n  give a token with --token-file FILE`,
    ),
  );

  r = await homeostat(["retry", "package/zlib", "--addr", addr, "--token", readToken]);
  assert.equal(r.code, 77);
  assert.equal(r.stderr, `homeostat: not allowed by ${addr}: RetryDeadLetter needs the write role; token viewer has the read role\n`);

  r = await homeostat(["enqueue", "package/zlib", "--addr", addr], { HOMEOSTAT_TOKEN: "wrong" });
  assert.equal(r.code, 77);
  assert.match(r.stderr, /not authenticated by .*: the bearer token is not valid here/);

  const file = path.join(t.dir, "token");
  writeFileSync(file, `${writeToken}\n`, { mode: 0o600 });
  r = await homeostat(["enqueue", "package/openssl", "--priority", "resync", "--addr", addr, "--token-file", file], { HOMEOSTAT_TOKEN: "" });
  assert.equal(r.code, 0, r.stderr);
  r = await homeostat(["enqueue", "package/openssl", "--priority", "resync", "--addr", addr], { HOMEOSTAT_TOKEN: "", HOMEOSTAT_TOKEN_FILE: file });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /deduped/);

  r = await homeostat(["enqueue", "package/zlib", "--addr", addr, "--token-file", path.join(t.dir, "nothing")]);
  assert.equal(r.code, 64);
  assert.match(r.stderr, /^homeostat: cannot read the token file .*nothing: ENOENT/);
});

test("over TLS with --ca (and a token), mTLS with --client-cert/--client-key; token new makes a working entry", async () => {
  const pki = makePki(path.join(t.dir, "pki"));
  const tls = { certPath: pki.serverCert, keyPath: pki.serverKey, clientCaPath: pki.ca };
  const { stdout } = await homeostat(["token", "new", "--name", "ci", "--role", "write", "--json"]);
  const made = JSON.parse(stdout) as { token: string; entry: string };
  const [name, role, sha256] = made.entry.split(":");
  assert.deepEqual([name, role, sha256], ["ci", "write", tokenDigest(made.token)]);
  const tlsApi = await startStatusApi({
    addr: "127.0.0.1:0",
    security: { tls, tokens: [{ name: name!, role: "write", sha256: sha256! }], readAuth: "token", insecure: false },
    readModel: model,
    queue,
    releases,
    advisories,
    ...served,
    onError: () => {},
  });
  const tlsAddr = `127.0.0.1:${tlsApi.port}`;
  try {
    const mtls = ["--ca", pki.ca, "--client-cert", pki.clientCert, "--client-key", pki.clientKey, "--addr", tlsAddr];
    let r = await homeostat(["get", "package/zlib", "--json", ...mtls], { HOMEOSTAT_TOKEN: made.token });
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), zlib);
    // The same through the environment.
    r = await homeostat(["get", "package/zlib", "--addr", tlsAddr], {
      HOMEOSTAT_TOKEN: made.token,
      HOMEOSTAT_GRPC_CA: pki.ca,
      HOMEOSTAT_GRPC_CERT: pki.clientCert,
      HOMEOSTAT_GRPC_KEY: pki.clientKey,
    });
    assert.equal(r.code, 0, r.stderr);
    // No client certificate: the handshake fails, the server is not reached.
    r = await homeostat(["get", "package/zlib", "--ca", pki.ca, "--addr", tlsAddr], { HOMEOSTAT_TOKEN: made.token });
    assert.equal(r.code, 2);
    assert.match(r.stderr, /^homeostat: cannot reach homeostat at 127\.0\.0\.1:\d+: /);
    r = await homeostat(["get", "package/zlib", "--client-cert", pki.clientCert, ...mtls.slice(0, 2), "--addr", tlsAddr]);
    assert.equal(r.code, 64);
    assert.match(r.stderr, /give the client certificate and its key together/);
  } finally {
    await tlsApi.close();
  }
});

/** A catalog of lodash 4.17.15 in image web, in the test's own directory. */
function lodashCatalog(): string {
  const dir = path.join(t.dir, "catalog");
  const files: Record<string, string> = {
    "packages/lodash.yaml": `name: lodash\nversion: "4.17.15"\nsource: { url: "https://example.org/lodash-\${version}.tgz", sha256: "${"1".repeat(64)}" }\nbuild: { steps: [make] }\n`,
    "images/web.yaml": "name: web\npackages: [lodash]\n",
  };
  for (const [f, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    writeFileSync(path.join(dir, f), text);
  }
  return dir;
}

// Last: the lodash status it adds would show in the listings above.
test("plan --live plans with the factory's releases and advisories, from the version it built; unreachable exits 2", async () => {
  const catalog = lodashCatalog();
  const fixture = fileURLToPath(new URL("./fixtures/osv/GHSA-p6mc-m468-83gw.json", import.meta.url));
  await advisories.record(parseAdvisoryFile(readFileSync(fixture, "utf8"), fixture)[0]!, ["lodash"]);
  await releases.record({ package: "lodash", version: "4.17.16", url: "https://example.org/lodash-4.17.16.tgz", sha256: "2".repeat(64) });
  await model.put({
    key: "package/lodash",
    phase: "Ready",
    desiredVersion: "4.17.16",
    attempts: 0,
    updatedAt: "2026-11-22T10:00:00.000Z",
    actual: {
      version: "4.17.16",
      inputDigest: digest("7"),
      outputs: { location: "store/package/lodash/4.17.16" },
      signatures: {},
      keyId: "test-key",
      builtAt: "2026-11-22T10:00:00.000Z",
    },
  });

  // Alone, the release is all there is: a bump from the pin.
  let r = await homeostat(["plan", "--release", "lodash@4.17.18", "--catalog", catalog, "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^bump {5}package\/lodash {2}4\.17\.15 -> 4\.17\.18 {2}\(release lodash@4\.17\.18\)$/m);

  // Live, the stored advisory affects 4.17.18 and no known release fixes it.
  r = await homeostat(["plan", "--release", "lodash@4.17.18", "--catalog", catalog, "--live", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /^flag {5}package\/lodash {2}NeedsAttention: lodash 4\.17\.18 is affected by GHSA-p6mc-m468-83gw: fixed in 4\.17\.19, which is not a known release/m,
  );

  // Live, the fixed release: a bump from the version built, and the image rebuilt after it.
  r = await homeostat(["plan", "--release", "lodash@4.17.19", "--catalog", catalog, "--live", "--json", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    steps: [
      { key: "package/lodash", action: "bump", from: "4.17.16", to: "4.17.19", because: "release lodash@4.17.19" },
      { key: "image/web", action: "rebuild", wave: 2 },
    ],
    unchanged: [],
    unknown: [],
    waves: [["package/lodash"], ["image/web"]],
  });

  // The factory has since heard of 4.17.19 and built it. Live, an older release decides that
  // same version again: nothing to do.
  await releases.record({ package: "lodash", version: "4.17.19", url: "https://example.org/lodash-4.17.19.tgz", sha256: "3".repeat(64) });
  const built = (await model.get("package/lodash"))!;
  await model.put({ ...built, desiredVersion: "4.17.19", actual: { ...built.actual!, version: "4.17.19" } });
  r = await homeostat(["plan", "--release", "lodash@4.17.17", "--catalog", catalog, "--live", "--addr", addr]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^Nothing would change\.$/m);
  assert.match(r.stdout, /^Unchanged: package\/lodash$/m);

  const port = await freePort();
  r = await homeostat(["plan", "--release", "lodash@4.17.19", "--catalog", catalog, "--live", "--addr", `127.0.0.1:${port}`]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, new RegExp(`^homeostat: cannot reach homeostat at 127\\.0\\.0\\.1:${port}: .*ECONNREFUSED`));
});
