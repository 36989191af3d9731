/**
 * `pnpm bench:watch` — WatchKeys fan-out: `--watchers` (default 1,000) concurrent watch streams
 * on one queue service, each receiving every change of the state bucket; how long from a
 * change's write to its arrival at each watcher (p50, p99, max over every delivery; target
 * p99 ≤ 100 ms), and what the queue service spends on it (CPU and resident memory of its
 * process, from /proc).
 *
 * The setting is the factory's own: a private nats-server (authentication on) and redis-server
 * on loopback (factory.ts), the queue service in its own process (services/queue/src/main.ts),
 * the writes made as the reconciler's identity, the watchers in this process over `--channels`
 * (default 10) HTTP/2 connections. The watchers decode every wire message but skip the status
 * validation (zod) the CLI's client does: 1,000 of them in one process would otherwise measure
 * this process's validation, not the server's fan-out. Bounded by a count (`--changes`, default 200, at `--rate`
 * per second, default 20) and by time (`--seconds`, default 60, for the whole run). Everything
 * lives in a temporary directory removed at the end. The last line is one JSON object.
 *
 * Usage: node benches/watch.ts [--watchers N] [--channels C] [--changes N] [--rate R] [--seconds S]
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { connectNats, keyToken, loadConfig, seedFile, type Key } from "@homeostat/core";
import { statusClient } from "@homeostat/status-api";
import { startFactory, startLocalServers, waitFor } from "../scripts/factory.ts";

const { values } = parseArgs({
  options: {
    watchers: { type: "string", default: "1000" },
    channels: { type: "string", default: "10" },
    changes: { type: "string", default: "200" },
    rate: { type: "string", default: "20" },
    seconds: { type: "string", default: "60" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  process.stdout.write("Usage: node benches/watch.ts [--watchers N] [--channels C] [--changes N] [--rate R] [--seconds S]\n");
  process.exit(0);
}
const watchers = Number(values.watchers);
const channels = Number(values.channels);
const changes = Number(values.changes);
const rate = Number(values.rate);
const deadline = Date.now() + Number(values.seconds) * 1000;
const keys: Key[] = Array.from({ length: 20 }, (_, i) => `package/bench-${i}` as Key);

const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-bench-watch-"));
const say = (line: string) => process.stdout.write(`${line}\n`);
const servers = await startLocalServers(path.join(dir, "servers"), { prefix: "hs", region: "local" });
const stops: (() => Promise<void> | void)[] = [() => servers.stop()];
try {
  const env = { NATS_URL: servers.natsUrl, REDIS_URL: servers.redisUrl, HOMEOSTAT_PREFIX: "hs", HOMEOSTAT_DATA: path.join(dir, "data") };
  const factory = await startFactory({ env, natsCredentials: servers.natsCredentials, logDir: path.join(dir, "logs"), only: ["queue"] });
  stops.unshift(() => factory.stop());
  const queuePid = factory.processes.get("queue")?.pid;
  if (queuePid === undefined) throw new Error("the queue service did not start");
  const writer = await connectNats(loadConfig({ ...env, NATS_NKEY_SEED_FILE: seedFile(servers.natsCredentials, "reconciler") }), "bench-watch", {
    identity: "reconciler",
  });
  stops.unshift(() => writer.nc.close());
  const state = await writer.kvm.open(writer.topology.bucket("state"));
  const put = (key: Key, i: number) =>
    state.put(keyToken(key), JSON.stringify({ key, phase: i % 2 ? "Building" : "Ready", attempts: 0, updatedAt: new Date().toISOString() }));
  for (const [i, key] of keys.entries()) await put(key, i);

  // The watchers: each counts what it receives and notes the arrival time of every change.
  const clients = Array.from({ length: channels }, () => statusClient(factory.grpcAddr, { channelOptions: { "grpc.max_receive_message_length": 1 << 20 } }));
  stops.unshift(() => clients.forEach((c) => c.close()));
  const stop = new AbortController();
  const arrivals = new Map<number, number[]>(); // revision -> arrival times, one per watcher
  let synced = 0;
  const running = Array.from({ length: watchers }, async (_, i) => {
    const client = clients[i % clients.length];
    if (!client) return;
    try {
      for await (const e of client.rpc.watchKeys({ prefix: "", kinds: [], phases: [] }, { signal: stop.signal })) {
        if (e.type === "synced") synced++;
        else if (e.type === "put") {
          const at = performance.now();
          const revision = Number(e.revision);
          let list = arrivals.get(revision);
          if (!list) arrivals.set(revision, (list = []));
          list.push(at);
        }
      }
    } catch (err) {
      if (!stop.signal.aborted) throw err;
    }
  });
  await waitFor(`${watchers} watchers to be synced`, async () => synced === watchers, Math.max(1_000, deadline - Date.now()), 50);
  say(`${watchers} watchers synced over ${channels} connections; writing ${changes} changes at ${rate}/s`);

  const cpu = () => {
    // The command name may hold spaces: the fields start after its closing parenthesis.
    const fields = readFileSync(`/proc/${queuePid}/stat`, "utf8").split(") ", 2)[1]?.split(" ") ?? [];
    return (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, in ms (100 Hz ticks)
  };
  const memory = () => {
    const status = readFileSync(`/proc/${queuePid}/status`, "utf8");
    const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
    return { rssMiB: kib("VmRSS") / 1024, peakMiB: kib("VmHWM") / 1024 };
  };
  const cpuBefore = cpu();
  const wallBefore = performance.now();
  const written = new Map<number, number>(); // revision -> write time
  for (let i = 0; i < changes && Date.now() < deadline; i++) {
    const due = wallBefore + (i * 1000) / rate;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const key = keys[i % keys.length];
    if (key === undefined) break;
    const at = performance.now();
    written.set(await put(key, i + 1), at);
  }
  const lastRevision = Math.max(...written.keys());
  await waitFor(
    "every change at every watcher",
    async () => [...written.keys()].every((r) => (arrivals.get(r)?.length ?? 0) >= watchers),
    Math.max(1_000, deadline - Date.now()),
    20,
  ).catch((err: unknown) => say(`not all delivered: ${(err as Error).message}`));
  const wallMs = performance.now() - wallBefore;
  const cpuMs = cpu() - cpuBefore;
  const mem = memory();
  stop.abort();
  await Promise.allSettled(running);

  const latencies: number[] = [];
  let delivered = 0;
  for (const [revision, sentAt] of written) {
    for (const at of arrivals.get(revision) ?? []) {
      latencies.push(at - sentAt);
      delivered++;
    }
  }
  latencies.sort((a, b) => a - b);
  const q = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? NaN;
  const result = {
    watchers,
    channels,
    changes: written.size,
    lastRevision,
    delivered,
    expected: written.size * watchers,
    latencyMs: { p50: round(q(0.5)), p99: round(q(0.99)), max: round(latencies.at(-1) ?? NaN) },
    queueService: {
      cpuPercentOfOneCore: round((cpuMs / wallMs) * 100),
      cpuMsPerChange: round(cpuMs / written.size),
      rssMiB: round(mem.rssMiB),
      peakRssMiB: round(mem.peakMiB),
    },
    target: { p99Ms: 100, met: delivered === written.size * watchers && q(0.99) <= 100 },
  };
  say(`delivered ${delivered} of ${result.expected} (${written.size} changes × ${watchers} watchers)`);
  say(
    `latency from write to arrival: p50 ${result.latencyMs.p50} ms, p99 ${result.latencyMs.p99} ms, max ${result.latencyMs.max} ms (target p99 ≤ 100 ms: ${result.target.met ? "met" : "NOT met"})`,
  );
  say(
    `queue service: ${result.queueService.cpuPercentOfOneCore} % of one core over ${round(wallMs / 1000)} s (${result.queueService.cpuMsPerChange} ms per change), RSS ${result.queueService.rssMiB} MiB (peak ${result.queueService.peakRssMiB} MiB)`,
  );
  say(JSON.stringify(result));
} finally {
  for (const s of stops) await s();
  rmSync(dir, { recursive: true, force: true });
}

function round(n: number): number {
  return Math.round(n * 10) / 10;
}
