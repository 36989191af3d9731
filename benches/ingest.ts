/**
 * `pnpm bench:ingest` — how many signed GitHub release deliveries ingest accepts per second,
 * and at what latency, on loopback against the real NATS (NATS_URL, default nats://127.0.0.1:4222).
 *
 * What it measures: the ingest service as it runs in production (services/ingest/src/main.ts,
 * its own process) receiving GitHub's example `release.published` payload
 * (@octokit/webhooks-examples, 7.6 kB), correctly signed, each with a new X-GitHub-Delivery,
 * from autocannon in this process. Every delivery does the whole path: HMAC over the raw body,
 * JSON parse and schema, and the audit record (which is the idempotency mark and the intake of
 * the event's keys, admitted by the queue service, which is not running here) — one JetStream
 * round trip. Accepted = 202 with `duplicate: false` (counted from the audit stream afterwards,
 * not trusted from the client side).
 *
 * Bounded by a count (`--count`, default 30,000 after a 2,000 warm-up) and by time
 * (`--seconds`, default 30). Runs under a prefix of its own and deletes exactly the streams
 * and buckets under that prefix afterwards. The last line is one JSON object.
 *
 * Usage: node benches/ingest.ts [--count N] [--seconds S] [--connections C] [--workers W]
 */
import { spawn } from "node:child_process";
import { createHmac, randomBytes, randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import autocannon from "autocannon";
import { connectNats, ensureTopology, eventLedgerNames, loadConfig } from "@homeostat/core";
import { withServiceNodeOptions } from "../scripts/factory.ts";

const { values } = parseArgs({
  options: {
    count: { type: "string", default: "30000" },
    seconds: { type: "string", default: "30" },
    connections: { type: "string", default: "64" },
    workers: { type: "string" },
  },
});
const count = Number(values.count);
const seconds = Number(values.seconds);
const connections = Number(values.connections);
const WARMUP = 2_000;

const repoRoot = path.resolve(import.meta.dirname, "..");
const require = createRequire(path.join(repoRoot, "services/ingest/package.json"));
const examples = require("@octokit/webhooks-examples/api.github.com/index.json") as Array<{ name: string; examples: Array<{ action?: string }> }>;
const release = examples.find((e) => e.name === "release")?.examples.find((e) => e.action === "published");
if (!release) throw new Error("@octokit/webhooks-examples has no published release example");
const payload = JSON.stringify(release);

const prefix = `b${randomBytes(5).toString("hex")}`;
const secret = randomBytes(16).toString("hex");
const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-bench-ingest-"));
mkdirSync(path.join(dir, "catalog", "packages"), { recursive: true });
writeFileSync(
  path.join(dir, "catalog", "packages", "hello.yaml"),
  `name: hello\nversion: "1.0"\nupstream: { github: Codertocat/Hello-World }\nsource: { url: "https://example.org/hello-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\nbuild: { steps: [make] }\n`,
);
const port = await freePort();
const env = {
  ...process.env,
  NODE_OPTIONS: withServiceNodeOptions(process.env.NODE_OPTIONS),
  NATS_URL: process.env.NATS_URL ?? "nats://127.0.0.1:4222",
  HOMEOSTAT_PREFIX: prefix,
  HOMEOSTAT_DATA: path.join(dir, "data"),
  HOMEOSTAT_CATALOG: path.join(dir, "catalog"),
  HOMEOSTAT_INGEST_HOST: "127.0.0.1",
  HOMEOSTAT_INGEST_PORT: String(port),
  HOMEOSTAT_GITHUB_WEBHOOK_SECRET: secret,
  // One client sends everything here; the limiters (by address, by principal) still run, with room for the whole bench.
  HOMEOSTAT_INGEST_RATE_LIMIT: String(10 * (count + WARMUP)),
  HOMEOSTAT_INGEST_ADDRESS_RATE_LIMIT: String(10 * (count + WARMUP)),
  // --workers N: ingest's cluster mode (HOMEOSTAT_INGEST_WORKERS, services/ingest/README.md); unset: the shipped default, 1.
  ...(values.workers ? { HOMEOSTAT_INGEST_WORKERS: values.workers } : {}),
};
const server = spawn(process.execPath, [path.join(repoRoot, "services/ingest/src/main.ts")], { env, stdio: ["ignore", "ignore", "pipe"], cwd: repoRoot });
let serverLog = "";
server.stderr.on("data", (d: Buffer) => void (serverLog = (serverLog + d.toString()).slice(-4000)));

const url = `http://127.0.0.1:${port}/v1/webhooks/github`;
const signature = `sha256=${createHmac("sha256", secret).update(payload).digest("hex")}`;
const run = (amount: number) =>
  autocannon({
    url,
    method: "POST",
    connections,
    amount,
    duration: seconds,
    timeout: 10,
    headers: { "content-type": "application/json", "x-github-event": "release", "x-hub-signature-256": signature },
    body: payload,
    // The signature covers the body only, so each delivery gets a fresh id with the same signature.
    requests: [{ setupRequest: (req) => ({ ...req, headers: { ...req.headers, "x-github-delivery": randomUUID() } }) }],
  });

const config = loadConfig(env);
const nats = await connectNats(config, "bench-ingest");
try {
  // What the queue service does at start (it owns the topology; it is not running here).
  await ensureTopology(nats, config);
  await waitReady(`http://127.0.0.1:${port}/readyz`, 30_000);
  await run(WARMUP);
  const eventsStream = eventLedgerNames(nats.topology).stream;
  const before = (await nats.jsm.streams.info(eventsStream)).state.messages;
  const startedAt = Date.now();
  const r = await run(count);
  const after = (await nats.jsm.streams.info(eventsStream)).state;
  const accepted = after.messages - before;
  // From the first request to the last event stored: autocannon's own duration ends on its
  // once-a-second tick, which rounded every run up to the next whole second (every arm of
  // bench:telemetry measured 3.01 or 4.01 s; runs timed this way take 3.0 to 3.3 s).
  const elapsedS = Math.max(0.001, (Date.parse(after.last_ts) - startedAt) / 1000);
  const eventsPerS = Math.round(accepted / elapsedS);
  const non2xx = r.non2xx + r.errors + r.timeouts;
  console.log(`ingest: ${accepted} signed release deliveries accepted in ${elapsedS.toFixed(2)} s over ${connections} connections (${non2xx} errors/non-2xx)`);
  console.log(`  ${eventsPerS} events/s   latency p50 ${r.latency.p50} ms   p99 ${r.latency.p99} ms   max ${r.latency.max} ms`);
  console.log(
    `  target: >= 5000 events/s with p99 <= 50 ms: ${eventsPerS >= 5000 && r.latency.p99 <= 50 ? "met" : "NOT met"}   (${os.cpus().length} cores, node ${process.version})`,
  );
  console.log(
    JSON.stringify({
      bench: "ingest",
      events_per_s: eventsPerS,
      p50_ms: r.latency.p50,
      p99_ms: r.latency.p99,
      accepted,
      requests: r.requests.total,
      errors: non2xx,
      connections,
      workers: Number(env.HOMEOSTAT_INGEST_WORKERS ?? 1),
      cores: os.cpus().length,
    }),
  );
} catch (err) {
  process.stderr.write(`bench:ingest: ${(err as Error).message}\n${serverLog}\n`);
  process.exitCode = 1;
} finally {
  server.kill("SIGTERM");
  await new Promise((r) => server.once("exit", r));
  for await (const name of nats.jsm.streams.names()) {
    if (name.startsWith(`${prefix}_`) || name.startsWith(`KV_${prefix}_`)) await nats.jsm.streams.delete(name).catch(() => {});
  }
  await nats.nc.close();
  rmSync(dir, { recursive: true, force: true });
}

async function waitReady(u: string, ms: number): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (server.exitCode !== null) throw new Error(`ingest exited with ${server.exitCode}`);
    if (
      await fetch(u).then(
        (r) => r.ok,
        () => false,
      )
    )
      return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("ingest did not become ready");
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
    s.on("error", reject);
  });
}
