/**
 * `pnpm bench:telemetry` — what tracing costs: bench:ingest and bench:queue (Homeostat only),
 * each run with telemetry exporting to a local OTLP receiver and without, side by side in one
 * run, on a private nats-server (JetStream, no authentication; its store in a temporary
 * directory) so that nothing else shares it. Target: at most 10 % throughput lost to export.
 *
 * The arms:
 *  - ingest: the service as in production. "not exported": no OTEL_EXPORTER_OTLP_ENDPOINT, so
 *    spans are still made (a key's status records its trace id) but go nowhere; "exported":
 *    OTLP/HTTP to the receiver (spans and metrics, batched as configured).
 *  - queue: `--telemetry` starts the SDK as a service does and issues each enqueue in a trace
 *    context of its own, as a traced caller passes it (so runs link back to them; the caller's
 *    span is the caller's cost, so the bench makes none); "off" is the bench without any SDK,
 *    as published. Throughput is the same fixed work in both arms: the enqueues divided by the
 *    time from the first enqueue until the queue is drained (bench:queue's processed/s counts
 *    runs, and how many runs the enqueues cause depends on timing, so it is printed beside it).
 *  - both: "exported, 1 trace in 10" is the exported arm with OTEL_TRACES_SAMPLER
 *    parentbased_traceidratio at 0.1, how a platform team runs tracing at high rates (the
 *    queue's simulated callers decide at their roots with the same sampler).
 * Arms alternate (off/not exported, exported, …) `--rounds` times (default 1), so a change of
 * the machine's load falls on both. The receiver is a sink on loopback: it reads each export
 * and answers it as a collector does, counting requests and bytes, and decodes nothing (a
 * collector does that in its own process, often on another machine; decoding here, in
 * JavaScript on the same two cores, would be charged to the services). The last line is one
 * JSON object.
 *
 * The queue arms also print their process's CPU per enqueue (bench:queue's processing window), and
 * the summary its change against the baseline: the rates move with the machine's load, the CPU
 * per enqueue far less.
 *
 * Every trace is exported once per OTLP/HTTP encoding of `--protocols` (default both, http/json
 * first: the services' default), side by side; the sampled arm uses the first.
 *
 * Usage: node benches/telemetry-overhead.ts [--rounds N] [--count N (ingest)] [--enqueues N (queue; default 10,000, a fifth of bench:queue's)]
 *          [--protocols http/json,http/protobuf]
 */
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { repoRoot, startNatsServer, withServiceNodeOptions } from "../scripts/factory.ts";
import { commandLine, integerOption } from "./end-to-end.ts";
import { table } from "./table.ts";

const usage = `Usage: node benches/telemetry-overhead.ts [--rounds N (1-10)] [--count N (ingest's events)] [--enqueues N (the queue's)]
         [--protocols http/json,http/protobuf (every trace exported with each; the sampled arm with the first)]`;
const protocolNames = ["http/json", "http/protobuf"] as const;
type Protocol = (typeof protocolNames)[number];
const o = commandLine("bench:telemetry", usage, () => {
  const { values } = parseArgs({
    options: {
      rounds: { type: "string", default: "1" },
      count: { type: "string", default: "20000" },
      enqueues: { type: "string", default: "10000" },
      protocols: { type: "string", default: protocolNames.join(",") },
    },
  });
  const protocols = values.protocols.split(",").map((p) => {
    const known = protocolNames.find((n) => n === p);
    if (!known) throw new Error(`--protocols: expected a list of ${protocolNames.join(", ")}, got ${p}`);
    return known;
  });
  return {
    rounds: integerOption("rounds", values.rounds, 1, 10),
    count: String(integerOption("count", values.count, 100, 1_000_000)),
    enqueues: String(integerOption("enqueues", values.enqueues, 100, 1_000_000)),
    protocols: [...new Set(protocols)] as [Protocol, ...Protocol[]],
  };
});
const { rounds } = o;

type Arm = { bench: "ingest" | "queue"; arm: string; args: string[]; env: Record<string, string> };
type Measured = Arm & { throughput: number; p99Ms: number; exports: number; exportedKiB: number; detail: string; cpuUsPerEnqueue?: number };

/** An OTLP/HTTP sink: answers every export with an empty success (protobuf), counting requests and bytes. */
async function startOtlpSink(): Promise<{ url: string; requests: number; bytes: number; close(): Promise<void> }> {
  const sink = {
    url: "",
    requests: 0,
    bytes: 0,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
  const server = createServer((req, res) => {
    req.on("data", (c: Buffer) => void (sink.bytes += c.length));
    req.on("end", () => {
      sink.requests++;
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  sink.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return sink;
}

/** Runs a bench as its own process; resolves with the JSON object of its last line. */
function runBench(script: string, args: string[], env: Record<string, string>): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    // The queue's bench runs the queue in its own process, which runs as a service does (ingest's
    // bench gives the service it starts the same options).
    const child = spawn(process.execPath, [path.join(repoRoot, "benches", script), ...args], {
      env: { ...process.env, NODE_OPTIONS: withServiceNodeOptions(process.env.NODE_OPTIONS), ...env },
      stdio: ["ignore", "pipe", "pipe"],
      cwd: repoRoot,
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => void (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => void (err = (err + d.toString()).slice(-4000)));
    // Bounded: either bench caps itself well within this.
    const timer = setTimeout(() => child.kill("SIGKILL"), 15 * 60_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      const last = out.trim().split("\n").pop() ?? "";
      if (code !== 0 || !last.startsWith("{")) return reject(new Error(`${script} ${args.join(" ")} exited ${code}: ${err || out.slice(-2000)}`));
      resolve(JSON.parse(last) as Record<string, unknown>);
    });
  });
}

const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-bench-telemetry-"));
writeFileSync(path.join(dir, "nats.conf"), `jetstream { store_dir: "${path.join(dir, "js")}" }\n`);
const nats = await startNatsServer({ configFile: path.join(dir, "nats.conf"), logFile: path.join(dir, "nats.log") });
const otlp = await startOtlpSink();
const exportedWith = (protocol: Protocol) => ({ OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: protocol });
const common = { NATS_URL: nats.url, BENCH_QUEUE_ENQUEUES: o.enqueues };
/** The production lever at high rates: one trace in ten kept, a child following its parent's decision. */
const sampled = { ...exportedWith(o.protocols[0]), OTEL_TRACES_SAMPLER: "parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" };
const everyTrace = (protocol: Protocol) => `exported, ${protocol}`;
const benchArms = (bench: Arm["bench"], baseline: string, args: string[], tracedArgs: string[]): Arm[] => [
  { bench, arm: baseline, args, env: common },
  ...o.protocols.map((p) => ({ bench, arm: everyTrace(p), args: tracedArgs, env: { ...common, ...exportedWith(p) } })),
  { bench, arm: `exported, ${o.protocols[0]}, 1 trace in 10`, args: tracedArgs, env: { ...common, ...sampled } },
];
const arms: Arm[] = [
  ...benchArms("ingest", "not exported", ["--count", o.count], ["--count", o.count]),
  ...benchArms("queue", "off", ["--only", "homeostat"], ["--only", "homeostat", "--telemetry"]),
];

const load = () => os.loadavg().map((l) => l.toFixed(1));
const measured: Measured[] = [];
try {
  console.log(
    `bench:telemetry — ${rounds} round(s); private nats-server ${nats.url}; OTLP receiver ${otlp.url} (${o.protocols.join(", ")}); load ${load().join(" ")} on ${os.availableParallelism()} CPUs`,
  );
  for (let round = 0; round < rounds; round++)
    for (const a of arms) {
      const before = { requests: otlp.requests, bytes: otlp.bytes };
      const r = await runBench(a.bench === "ingest" ? "ingest.ts" : "queue.ts", a.args, a.env);
      const queue = (field: string) => Number((r[field] as Record<string, number>).homeostat);
      const throughput = a.bench === "ingest" ? Number(r.events_per_s) : Math.round((Number(r.enqueues) / queue("processing_s")) * 10) / 10;
      const p99Ms = a.bench === "ingest" ? Number(r.p99_ms) : queue("wait_p99_ms");
      // The queue bench's own process (producer and worker) over the same window: CPU per enqueue,
      // which a busy machine moves far less than it moves the rate.
      const cpuUsPerEnqueue = a.bench === "queue" ? Number((r.processing_cpu_us_per_enqueue as Record<string, number>).homeostat) : undefined;
      const detail =
        a.bench === "ingest"
          ? ""
          : ` (producer ${queue("enqueue_per_s")} enqueues/s; ${queue("processed")} runs, ${queue("processed_per_s")} runs/s; ${cpuUsPerEnqueue} µs CPU per enqueue)`;
      const exports = otlp.requests - before.requests;
      const exportedKiB = Math.round((otlp.bytes - before.bytes) / 1024);
      measured.push({ ...a, throughput, p99Ms, exports, exportedKiB, detail, ...(cpuUsPerEnqueue !== undefined ? { cpuUsPerEnqueue } : {}) });
      console.log(`  ${a.bench} ${a.arm}: ${throughput} /s${detail}, p99 ${p99Ms} ms, ${exports} OTLP exports (${exportedKiB} KiB) (load ${load()[0]})`);
    }
} finally {
  await otlp.close();
  await nats.stop();
  rmSync(dir, { recursive: true, force: true });
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const summary = (["ingest", "queue"] as const).flatMap((bench) => {
  // Each bench's first arm is its baseline; every other arm is measured against it.
  const [baseArm, ...tracedArms] = arms.filter((a) => a.bench === bench);
  if (!baseArm || tracedArms.length === 0) throw new Error(`${bench} needs a baseline and a traced arm`);
  const runsOf = (arm: Arm) => measured.filter((m) => m.bench === bench && m.arm === arm.arm);
  const throughput = (arm: Arm) => mean(runsOf(arm).map((m) => m.throughput));
  const cpu = (arm: Arm) => mean(runsOf(arm).map((m) => m.cpuUsPerEnqueue ?? NaN));
  const baseline = throughput(baseArm);
  return tracedArms.map((arm) => ({
    bench,
    baseline: baseArm.arm,
    baselinePerS: Math.round(baseline),
    arm: arm.arm,
    perS: Math.round(throughput(arm)),
    lossPct: Number(((1 - throughput(arm) / baseline) * 100).toFixed(1)),
    // The queue's CPU per enqueue against its baseline's (ingest: not measured).
    ...(bench === "queue" ? { cpuPct: Number(((cpu(arm) / cpu(baseArm) - 1) * 100).toFixed(1)) } : {}),
  }));
});
console.log("");
console.log(
  table([
    ["bench", "baseline", "baseline /s", "traced arm", "traced /s", "throughput lost", "CPU per enqueue"],
    ...summary.map((s) => [
      s.bench,
      s.baseline,
      String(s.baselinePerS),
      s.arm,
      String(s.perS),
      `${s.lossPct} %`,
      s.cpuPct === undefined ? "" : `${s.cpuPct > 0 ? "+" : ""}${s.cpuPct} %`,
    ]),
  ]),
);
const verdict = (rows: typeof summary) => (rows.every((s) => s.lossPct <= 10) ? "met" : "NOT met");
console.log(
  `target: <= 10 % lost: ${o.protocols.map((p) => `every trace exported (${p}) ${verdict(summary.filter((s) => s.arm === everyTrace(p)))}`).join("; ")}; ` +
    `1 trace in 10 ${verdict(summary.filter((s) => s.arm.endsWith("1 trace in 10")))} (load ${load().join(" ")})`,
);
console.log(
  JSON.stringify({ bench: "telemetry-overhead", rounds, summary, runs: measured.map(({ env: _, args: __, detail: ___, ...m }) => m), load: os.loadavg() }),
);
