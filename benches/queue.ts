/**
 * `pnpm bench:queue` — how fast Homeostat's work queue moves keys, next to raw JetStream and
 * BullMQ 6 doing the same work in the same run.
 *
 * The work (identical for every contender):
 *  - Phase 1, "mixed": the workers start first; then one producer issues 50,000 enqueues over
 *    5,000 keys (enqueue i is key `package/k<i % 5000>`, in order), at most 256 in flight,
 *    while the workers run a no-op reconcile. Enqueues of one key are 5,000 apart, so they never
 *    overlap each other; they do meet queued and running entries of that key, which is where
 *    the three differ:
 *      - raw JetStream: a WorkQueue stream with max_msgs_per_subject 1 and discard-new per
 *        subject; publish, consume, ack. A key with a message still in the stream (queued or
 *        unacked) is refused by the server (10077) and counted as deduped. No other semantics.
 *      - BullMQ: `deduplication: { id: key, keepLastIfActive: true }` with removeOnComplete:
 *        dedup while queued, and an add while the key is active stores one follow-up job that
 *        is created when the active one finishes — the same "dedup while queued, rerun once if
 *        running" contract as Homeostat's (a plain jobId or a plain deduplication id would
 *        also swallow adds that arrive while the key runs).
 *      - Homeostat: `WorkQueue.enqueue` / `WorkQueue.run` with all its semantics (run records
 *        as leases, rerun marks, ackAck, ...), lease 30 s, a silent logger.
 *  - Phase 2, "drain only": 5,000 distinct fresh keys are enqueued with no worker running,
 *    then the worker starts and only the processing is timed.
 *
 * Measurement (the same for all three):
 *  - enqueue/s: 50,000 / producer time (first enqueue issued → last enqueue answered).
 *  - processed: runs the reconcile started (added entries + reruns); processed/s = processed /
 *    (first enqueue issued → the queue observed drained: producer done, no run in flight and
 *    the backend reporting nothing queued, running or pending; polled every 20 ms).
 *  - drain processed/s: 5,000 / (worker start → observed drained), phase 2.
 *  - deduped: enqueues that did not create a new queued entry (merged into a queued one, or,
 *    for BullMQ and Homeostat, folded into a rerun of a running key; the split is in the JSON).
 *  - wait p50/p99: run start − the moment the enqueue was issued (Homeostat: item.enqueuedAt,
 *    which the queue sets as it starts the enqueue), over runs whose entry was created by an
 *    "added" enqueue (reruns are left out), in ms.
 *  - drain CPU per run: this process and the server (nats-server or redis-server, from /proc)
 *    during phase 2, divided by its runs: what bounds each design on a small machine.
 *  - Workers: one worker per contender, 64 runs in flight, in this one Node process (the
 *    producer uses its own connection). Contenders run one after another, never together.
 *
 * Everything lives under a private prefix per run (streams `<prefix>_*`, KV buckets,
 * Redis keys `<prefix>:*`) and is removed at the end. Every loop is bounded by count, and each
 * contender by a 120 s wall-time cap that aborts the bench with a message.
 *
 * --telemetry starts OpenTelemetry in this process as a service does (runService in core):
 * every span made, exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, and each
 * Homeostat enqueue issued in a trace context of its own (a sampled remote parent, as a caller
 * in another process passes it), so that its run links back to it as in the queue service.
 * The caller's own span is the caller's cost (the admission's span of the event message it
 * consumes), not the queue's: the bench does not make one. benches/telemetry-overhead.ts runs
 * it both ways.
 *
 * Usage: node benches/queue.ts [--only jetstream|bullmq|homeostat[,...]] [--telemetry]
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { Queue, Worker, type Job } from "bullmq";
import { Redis } from "ioredis";
import {
  bucketNames,
  connectNats,
  ensureTopology,
  eventLedgerNames,
  isStoreFailed,
  keyToken,
  loadConfig,
  stages,
  type Config,
  type Key,
  type Logger,
  type Nats,
} from "@homeostat/core";
import { keptAtRoot, startTelemetry } from "@homeostat/core/telemetry";
import { context, ROOT_CONTEXT, trace, TraceFlags, type Context } from "@opentelemetry/api";
import { done, WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { percentile, table } from "./table.ts";

/** BENCH_QUEUE_ENQUEUES scales the work down (keys and drain keys a tenth of it): bench:telemetry runs it smaller on a loaded machine. */
const ENQUEUES = benchSize(process.env.BENCH_QUEUE_ENQUEUES, 50_000);
const KEYS = ENQUEUES / 10;
const DRAIN_KEYS = ENQUEUES / 10;
const PRODUCER_IN_FLIGHT = 256;
const WORKER_CONCURRENCY = 64;
const LEASE_MS = 30_000;
const CAP_MS = 120_000;
const POLL_MS = 20;
const TARGET_VS_BULLMQ = 1.5;
const TARGET_VS_JETSTREAM = 0.7;

const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

type Name = "jetstream" | "bullmq" | "homeostat";
/** --telemetry: OpenTelemetry on as in a service, and each Homeostat enqueue in a caller's trace context of its own. */
let telemetry = false;
const allNames: readonly Name[] = ["jetstream", "bullmq", "homeostat"];
const labels: Record<Name, string> = { jetstream: "raw JetStream", bullmq: "BullMQ 6 (dedup)", homeostat: "Homeostat WorkQueue" };

function benchSize(value: string | undefined, fallback: number): number {
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1_000 || n % 10 !== 0)
    throw new Error(`BENCH_QUEUE_ENQUEUES must be a multiple of 10 from 1000, got ${JSON.stringify(value)}`);
  return n;
}

function fail(message: string): never {
  process.stderr.write(`bench:queue: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv: readonly string[]): { only: Name[]; telemetry: boolean } {
  let only: Name[] = [...allNames];
  let telemetry = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const [flag, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    switch (flag) {
      case "--only": {
        const v = inline ?? argv[++i];
        if (v === undefined) fail("--only needs a value");
        const names = v
          .split(",")
          .map((s) => s.trim())
          .filter((s) => s !== "");
        for (const n of names) if (!allNames.includes(n as Name)) fail(`--only takes ${allNames.join(", ")} (comma-separated), got ${JSON.stringify(n)}`);
        if (names.length === 0) fail("--only needs at least one name");
        only = allNames.filter((n) => names.includes(n));
        break;
      }
      case "--telemetry":
        telemetry = true;
        break;
      case "--help":
      case "-h":
        process.stdout.write(`usage: node benches/queue.ts [--only ${allNames.join("|")}[,...]] [--telemetry]\n`);
        process.exit(0);
      default:
        fail(`unknown argument ${JSON.stringify(arg)} (try --help)`);
    }
  }
  return { only, telemetry };
}

// ---------------------------------------------------------------------------------------------
// Shared measurement machinery

/** Thrown when a contender overruns its cap; the message says where. */
class CapExceeded extends Error {}

type Deadline = { at: number; name: Name };

function checkDeadline(d: Deadline, what: string): void {
  if (Date.now() > d.at) throw new CapExceeded(`${labels[d.name]}: ${what} did not finish within the ${CAP_MS / 1000} s cap`);
}

/** Races `p` against the contender's deadline (the promise itself is abandoned on overrun). */
function withDeadline<T>(p: Promise<T>, d: Deadline, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const cap = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new CapExceeded(`${labels[d.name]}: ${what} did not finish within the ${CAP_MS / 1000} s cap`)),
      Math.max(0, d.at - Date.now()),
    );
    timer.unref();
  });
  return Promise.race([p, cap]).finally(() => clearTimeout(timer));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

type Outcome = "added" | "deduped" | "rerun";

/** Issues `count` enqueues, `PRODUCER_IN_FLIGHT` at once, each through `enqueue(i, issuedAt)`. */
async function produce(
  count: number,
  d: Deadline,
  what: string,
  enqueue: (i: number, t: number) => Promise<Outcome>,
): Promise<{ seconds: number; outcomes: Outcome[] }> {
  const outcomes: Outcome[] = new Array(count);
  let next = 0;
  const t0 = performance.now();
  const lane = async () => {
    while (next < count) {
      const i = next++;
      checkDeadline(d, what);
      outcomes[i] = await enqueue(i, Date.now());
    }
  };
  await withDeadline(Promise.all(Array.from({ length: Math.min(PRODUCER_IN_FLIGHT, count) }, lane)), d, what);
  return { seconds: (performance.now() - t0) / 1000, outcomes };
}

/** Polls `drained` every POLL_MS until it holds; returns the performance.now() it was seen. */
async function waitDrained(d: Deadline, what: string, drained: () => Promise<boolean>): Promise<number> {
  for (;;) {
    checkDeadline(d, what);
    if (await withDeadline(drained(), d, what)) return performance.now();
    await sleep(POLL_MS);
  }
}

type RunLog = { ids: number[]; waits: number[]; count: number; inFlight: number; producing: boolean; duringProducer: number };
const newRunLog = (): RunLog => ({ ids: [], waits: [], count: 0, inFlight: 0, producing: true, duringProducer: 0 });

/** Records one run start: which enqueue created its entry (-1: unknown) and its wait. */
function started(log: RunLog, id: number, issuedAt: number): void {
  log.count++;
  if (log.producing) log.duringProducer++;
  log.ids.push(id);
  log.waits.push(Date.now() - issuedAt);
}

/** Waits of the runs whose entry was created by an "added" enqueue of phase 1. */
function waitStats(log: RunLog, outcomes: readonly Outcome[]): { p50: number; p99: number; n: number } {
  const waits: number[] = [];
  for (const [r, id] of log.ids.entries()) {
    const wait = log.waits[r];
    if (id >= 0 && outcomes[id] === "added" && wait !== undefined) waits.push(wait);
  }
  waits.sort((a, b) => a - b);
  return { p50: percentile(waits, 50), p99: percentile(waits, 99), n: waits.length };
}

type Result = {
  name: Name;
  enqueuePerS: number;
  producerS: number;
  processed: number;
  processedS: number;
  processedPerS: number;
  drainProcessed: number;
  drainS: number;
  drainPerS: number;
  added: number;
  deduped: number;
  rerunMarks: number;
  reruns: number;
  failed: number;
  duringProducer: number;
  waitP50: number;
  waitP99: number;
  waitN: number;
  drainClientUs: number;
  drainServerUs: number;
  /**
   * This process's CPU from the first enqueue until drained, per enqueue (producer and worker
   * share the process): unlike the rates, barely moved by what else runs on the machine, so
   * bench:telemetry compares its arms by it too.
   */
  processingClientUs: number;
};

/**
 * CPU spent in the drain phase, per run: this process (client) and the server the contender
 * talks to (nats-server or redis-server, read from /proc when it runs on this machine). It is
 * what bounds a design on a small machine, so the bench prints it next to the rates.
 */
type CpuMark = { client: number; server: number };
function serverPid(name: "nats-server" | "redis-server"): string | undefined {
  try {
    return execFileSync("pgrep", ["-xo", name], { encoding: "utf8" }).trim().split("\n")[0] || undefined;
  } catch {
    return undefined;
  }
}
function cpuMark(pid: string | undefined): CpuMark {
  const u = process.cpuUsage();
  let server = NaN;
  if (pid) {
    try {
      // The command name may hold spaces: the fields start after its closing parenthesis.
      const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ", 2)[1]?.split(" ") ?? [];
      server = (Number(f[11]) + Number(f[12])) * (1000 / 100); // utime + stime, clock ticks of 10 ms
    } catch {
      // not readable here: leave it unknown
    }
  }
  return { client: (u.user + u.system) / 1000, server };
}
function cpuPerRun(from: CpuMark, to: CpuMark, runs: number): { clientUs: number; serverUs: number } {
  return { clientUs: ((to.client - from.client) * 1000) / runs, serverUs: ((to.server - from.server) * 1000) / runs };
}

function summarise(
  name: Name,
  producer: { seconds: number; outcomes: Outcome[] },
  t0: number,
  drainedAt: number,
  runs: RunLog,
  drain: { t0: number; drainedAt: number; runs: RunLog; cpu: { clientUs: number; serverUs: number } },
  failed: number,
  processingCpu: NodeJS.CpuUsage,
): Result {
  const added = producer.outcomes.filter((o) => o === "added").length;
  const rerunMarks = producer.outcomes.filter((o) => o === "rerun").length;
  const processedS = (drainedAt - t0) / 1000;
  const drainS = (drain.drainedAt - drain.t0) / 1000;
  const w = waitStats(runs, producer.outcomes);
  return {
    name,
    enqueuePerS: ENQUEUES / producer.seconds,
    producerS: producer.seconds,
    processed: runs.count,
    processedS,
    processedPerS: runs.count / processedS,
    drainProcessed: drain.runs.count,
    drainS,
    drainPerS: drain.runs.count / drainS,
    drainClientUs: drain.cpu.clientUs,
    drainServerUs: drain.cpu.serverUs,
    processingClientUs: (processingCpu.user + processingCpu.system) / ENQUEUES,
    added,
    deduped: ENQUEUES - added,
    rerunMarks,
    reruns: runs.count - added,
    failed,
    duringProducer: runs.duringProducer,
    waitP50: w.p50,
    waitP99: w.p99,
    waitN: w.n,
  };
}

const key = (i: number): Key => `package/k${i % KEYS}`;
const drainKey = (i: number): Key => `package/d${i}`;
const noop = async (): Promise<void> => {};

// ---------------------------------------------------------------------------------------------
// Contender 1: raw JetStream

async function benchJetStream(prefix: string, config: Config, d: Deadline, cleanups: (() => Promise<void>)[]): Promise<Result> {
  const producerConn = await connectNats(config, `bench-queue-js-producer-${prefix}`);
  const workerConn = await connectNats(config, `bench-queue-js-worker-${prefix}`);
  const stream = `${prefix}_RAW`;
  const durable = "raw-worker";
  cleanups.push(async () => {
    await producerConn.jsm.streams.delete(stream).catch(() => {});
    await producerConn.nc.close().catch(() => {});
    await workerConn.nc.close().catch(() => {});
  });
  // The same stream and consumer settings as Homeostat's work stream (packages/core/src/topology.ts);
  // the enum values are spelled out because @nats-io/jetstream is a dependency of core, not of the root.
  await producerConn.jsm.streams.add({
    name: stream,
    subjects: [`${prefix}.raw.>`],
    retention: "workqueue",
    storage: "file",
    max_msgs_per_subject: 1,
    discard: "new",
    discard_new_per_subject: true,
    duplicate_window: 0,
  } as Parameters<Nats["jsm"]["streams"]["add"]>[0]);
  await producerConn.jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: "explicit",
    ack_wait: LEASE_MS * 1_000_000,
    max_deliver: -1,
    max_ack_pending: 1_000_000,
  } as Parameters<Nats["jsm"]["consumers"]["add"]>[1]);
  const subject = (k: Key) => `${prefix}.raw.${keyToken(k)}`;
  const enqueue = async (k: Key, i: number, t: number): Promise<Outcome> => {
    try {
      await producerConn.js.publish(subject(k), JSON.stringify({ i, t }));
      return "added";
    } catch (err) {
      if (isStoreFailed(err)) return "deduped"; // the key's subject holds its message
      throw err;
    }
  };

  /** One worker: consume, at most WORKER_CONCURRENCY runs in flight, no-op reconcile, ack. */
  const startWorker = async (log: RunLog): Promise<{ stop(): Promise<void> }> => {
    const consumer = await workerConn.js.consumers.get(stream, durable);
    const messages = await consumer.consume({ max_messages: WORKER_CONCURRENCY * 2 });
    let free: () => void = () => {};
    const loop = (async () => {
      for await (const m of messages) {
        while (log.inFlight >= WORKER_CONCURRENCY) await new Promise<void>((r) => (free = r));
        const body = m.json<{ i: number; t: number }>();
        started(log, body.i, body.t);
        log.inFlight++;
        void noop().then(() => {
          m.ack();
          log.inFlight--;
          free();
        });
      }
    })();
    return {
      stop: async () => {
        await messages.close();
        await loop.catch(() => {});
      },
    };
  };
  const drained = async (log: RunLog) => {
    if (log.inFlight > 0) return false;
    const info = await producerConn.jsm.consumers.info(stream, durable);
    return info.num_pending === 0 && info.num_ack_pending === 0;
  };

  // Phase 1: workers first, then the producer, concurrently.
  const runs = newRunLog();
  const w1 = await startWorker(runs);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const producer = await produce(ENQUEUES, d, "the enqueues", (i, t) => enqueue(key(i), i, t));
  runs.producing = false;
  const drainedAt = await waitDrained(d, "processing", () => drained(runs));
  const processingCpu = process.cpuUsage(cpu0);
  await w1.stop();

  // Phase 2: enqueue first, then start the worker and time the processing alone.
  const drainRuns = newRunLog();
  await produce(DRAIN_KEYS, d, "the drain-phase enqueues", (i, t) => enqueue(drainKey(i), ENQUEUES + i, t));
  const nats = serverPid("nats-server");
  const c0 = cpuMark(nats);
  const d0 = performance.now();
  const w2 = await startWorker(drainRuns);
  const d1 = await waitDrained(d, "the drain phase", () => drained(drainRuns));
  const cpu = cpuPerRun(c0, cpuMark(nats), drainRuns.count);
  await w2.stop();
  return summarise("jetstream", producer, t0, drainedAt, runs, { t0: d0, drainedAt: d1, runs: drainRuns, cpu }, 0, processingCpu);
}

// ---------------------------------------------------------------------------------------------
// Contender 2: BullMQ 6

function redisConnection(url: string): { host: string; port: number; username?: string; password?: string; db?: number; maxRetriesPerRequest: null } {
  const u = new URL(url);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : undefined;
  return {
    host: u.hostname || "127.0.0.1",
    port: Number(u.port || 6379),
    ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
    ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
    ...(db !== undefined && Number.isInteger(db) ? { db } : {}),
    maxRetriesPerRequest: null,
  };
}

type BullData = { i: number; t: number };

async function benchBullMQ(prefix: string, d: Deadline, cleanups: (() => Promise<void>)[]): Promise<Result> {
  const connection = redisConnection(redisUrl);
  const queueName = "bench";
  const queue = new Queue<BullData>(queueName, { connection, prefix });
  const workers: Worker<BullData>[] = [];
  cleanups.push(async () => {
    for (const w of workers) await w.close(true).catch(() => {});
    await queue.obliterate({ force: true }).catch(() => {});
    await queue.close().catch(() => {});
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
    try {
      let cursor = "0";
      for (let turn = 0; turn < 100_000; turn++) {
        const [nextCursor, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000);
        if (keys.length) await redis.del(...keys);
        cursor = nextCursor;
        if (cursor === "0") break;
      }
    } finally {
      redis.disconnect();
    }
  });
  await queue.waitUntilReady();
  const enqueue = async (k: Key, i: number, t: number): Promise<Outcome> => {
    const jobId = `j${i}`;
    const job = await queue.add(
      "reconcile",
      { i, t },
      {
        jobId,
        deduplication: { id: k, keepLastIfActive: true },
        removeOnComplete: true,
        removeOnFail: true,
      },
    );
    return job.id === jobId ? "added" : "deduped";
  };
  let failed = 0;
  const makeWorker = async (log: RunLog): Promise<Worker<BullData>> => {
    const w = new Worker<BullData>(
      queueName,
      async (job: Job<BullData>) => {
        started(log, job.data.i, job.data.t);
        log.inFlight++;
        try {
          await noop();
        } finally {
          log.inFlight--;
        }
      },
      { connection, prefix, concurrency: WORKER_CONCURRENCY, lockDuration: LEASE_MS, autorun: false },
    );
    w.on("failed", () => void failed++);
    w.on("error", () => {});
    workers.push(w);
    await w.waitUntilReady();
    return w;
  };
  const drained = async (log: RunLog) => {
    if (log.inFlight > 0) return false;
    const c = await queue.getJobCounts("wait", "active", "delayed", "prioritized", "waiting-children");
    return Object.values(c).every((n) => n === 0);
  };

  const runs = newRunLog();
  const w1 = await makeWorker(runs);
  void w1.run().catch(() => {});
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const producer = await produce(ENQUEUES, d, "the enqueues", (i, t) => enqueue(key(i), i, t));
  runs.producing = false;
  const drainedAt = await waitDrained(d, "processing", () => drained(runs));
  const processingCpu = process.cpuUsage(cpu0);
  await withDeadline(w1.close(), d, "closing the worker");

  const drainRuns = newRunLog();
  await produce(DRAIN_KEYS, d, "the drain-phase enqueues", (i, t) => enqueue(drainKey(i), ENQUEUES + i, t));
  const w2 = await makeWorker(drainRuns);
  const redisPid = serverPid("redis-server");
  const c0 = cpuMark(redisPid);
  const d0 = performance.now();
  void w2.run().catch(() => {});
  const d1 = await waitDrained(d, "the drain phase", () => drained(drainRuns));
  const cpu = cpuPerRun(c0, cpuMark(redisPid), drainRuns.count);
  await withDeadline(w2.close(), d, "closing the worker");
  const r = summarise("bullmq", producer, t0, drainedAt, runs, { t0: d0, drainedAt: d1, runs: drainRuns, cpu }, failed, processingCpu);
  // BullMQ does not tell a merge into a waiting job from a stored follow-up of an active one.
  r.rerunMarks = NaN;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Contender 3: Homeostat's WorkQueue

const quiet: Logger = { info() {}, warn() {}, error() {} };

/**
 * Trace ids of the callers: this run's random half, then a count and the count scrambled
 * (randomness per call would be the bench's cost, not the queue's; the scrambled half spreads
 * the ids over the ratio sampler, which XORs their 32-bit words).
 */
const callerTraceIds = randomBytes(8).toString("hex");
let callers = 0;

/**
 * A new trace context, as a traced caller in another process passes it with its request: sampled
 * as that caller, configured with the same OTEL_TRACES_SAMPLER, decides at its trace's root.
 */
function callerContext(kept: (traceId: string) => boolean): Context {
  const count = ++callers;
  const n = count.toString(16).padStart(8, "0") + (Math.imul(count, 0x9e3779b1) >>> 0).toString(16).padStart(8, "0");
  const traceId = callerTraceIds + n;
  return trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId: n, traceFlags: kept(traceId) ? TraceFlags.SAMPLED : TraceFlags.NONE, isRemote: true });
}

async function benchHomeostat(prefix: string, config: Config, d: Deadline, cleanups: (() => Promise<void>)[]): Promise<Result> {
  const producerConn: Nats = await connectNats(config, `bench-queue-hs-producer-${prefix}`);
  const workerConn: Nats = await connectNats(config, `bench-queue-hs-worker-${prefix}`);
  cleanups.push(async () => {
    for (const stage of stages) await producerConn.jsm.streams.delete(producerConn.topology.stream(stage)).catch(() => {});
    for (const b of bucketNames) await producerConn.jsm.streams.delete(`KV_${producerConn.topology.bucket(b)}`).catch(() => {});
    // ensureTopology made the event ledger too; left behind, its reserved storage fills the server after a few runs.
    await producerConn.jsm.streams.delete(eventLedgerNames(producerConn.topology).stream).catch(() => {});
    await producerConn.nc.close().catch(() => {});
    await workerConn.nc.close().catch(() => {});
  });
  await ensureTopology(producerConn, config);
  const producerQueue = new WorkQueue(producerConn, workQueueOptions(config, { log: quiet, owner: `bench-producer-${process.pid}` }));
  const workerQueue = new WorkQueue(workerConn, workQueueOptions(config, { log: quiet, owner: `bench-worker-${process.pid}` }));
  const request = (k: Key, i: number) => producerQueue.enqueue({ key: k, priority: "release", cause: { type: "manual", id: String(i) } });
  // Each enqueue's caller context is made as it is issued, as a caller has it while its own work
  // runs (so its making counts against tracing). Made all before the timed
  // window, as they were, the 11,000 contexts outlived the services' young generation (16 MiB)
  // within it: 20 MB more promoted a run, and the garbage collector's work charged to tracing.
  const callerKeeps = keptAtRoot(config.telemetry.sampler);
  const enqueue = (k: Key, i: number): Promise<Outcome> => (telemetry ? context.with(callerContext(callerKeeps), () => request(k, i)) : request(k, i));

  const startWorker = (log: RunLog): { stop(): Promise<void> } => {
    const ac = new AbortController();
    const running = workerQueue.run({
      concurrency: WORKER_CONCURRENCY,
      signal: ac.signal,
      reconcile: async (item) => {
        const id = Number(item.cause.id ?? -1);
        started(log, Number.isInteger(id) ? id : -1, item.enqueuedAt);
        log.inFlight++;
        try {
          await noop();
          return done;
        } finally {
          log.inFlight--;
        }
      },
    });
    running.catch(() => {});
    return {
      stop: async () => {
        ac.abort();
        await running;
      },
    };
  };
  const drained = async (log: RunLog) => {
    if (log.inFlight > 0) return false;
    const s = await producerQueue.stats();
    return Object.values(s.depth).every((n) => n === 0) && s.running === 0 && s.retrying === 0;
  };

  const runs = newRunLog();
  const w1 = startWorker(runs);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const producer = await produce(ENQUEUES, d, "the enqueues", (i) => enqueue(key(i), i));
  runs.producing = false;
  const drainedAt = await waitDrained(d, "processing", () => drained(runs));
  const processingCpu = process.cpuUsage(cpu0);
  await withDeadline(w1.stop(), d, "stopping the worker");

  const drainRuns = newRunLog();
  await produce(DRAIN_KEYS, d, "the drain-phase enqueues", (i) => enqueue(drainKey(i), ENQUEUES + i));
  const nats = serverPid("nats-server");
  const c0 = cpuMark(nats);
  const d0 = performance.now();
  const w2 = startWorker(drainRuns);
  const d1 = await waitDrained(d, "the drain phase", () => drained(drainRuns));
  const cpu = cpuPerRun(c0, cpuMark(nats), drainRuns.count);
  await withDeadline(w2.stop(), d, "stopping the worker");
  const r = summarise("homeostat", producer, t0, drainedAt, runs, { t0: d0, drainedAt: d1, runs: drainRuns, cpu }, 0, processingCpu);
  const stats = await producerQueue.stats();
  r.failed = stats.deadLetters;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Output

const fmtRate = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "n/a");
const fmtInt = (n: number): string => (Number.isFinite(n) ? n.toLocaleString("en-US") : "n/a");
const fmtMs = (n: number): string => (Number.isFinite(n) ? `${Math.round(n)} ms` : "n/a");
const fmtRatio = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) + "x" : "n/a");
const round1 = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 10) / 10 : null);
const round3 = (n: number): number | null => (Number.isFinite(n) ? Math.round(n * 1000) / 1000 : null);

function versionOf(pkg: string): string {
  try {
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
    return (JSON.parse(readFileSync(path.join(root, "node_modules", pkg, "package.json"), "utf8")) as { version: string }).version;
  } catch {
    return "?";
  }
}

async function redisVersion(): Promise<string> {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectTimeout: 5_000, lazyConnect: true });
  try {
    await redis.connect();
    const info = await redis.info("server");
    return /redis_version:(\S+)/.exec(info)?.[1] ?? "?";
  } finally {
    redis.disconnect();
  }
}

async function main(): Promise<void> {
  const { only, telemetry: withTelemetry } = parseArgs(process.argv.slice(2));
  const prefix = `bq${randomBytes(4).toString("hex")}`;
  const otel = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith("OTEL_")));
  const config = loadConfig({
    NATS_URL: natsUrl,
    REDIS_URL: redisUrl,
    HOMEOSTAT_PREFIX: prefix,
    HOMEOSTAT_LEASE_MS: String(LEASE_MS),
    HOMEOSTAT_DATA: path.join(os.tmpdir(), `${prefix}-data`),
    ...otel,
  });
  telemetry = withTelemetry;
  const sdk = withTelemetry ? startTelemetry("bench-queue", config.telemetry) : undefined;

  let natsVersion = "?";
  let redisV = "n/a";
  try {
    const probe = await connectNats(config, `bench-queue-probe-${prefix}`);
    natsVersion = probe.nc.info?.version ?? "?";
    await probe.nc.close();
  } catch (e) {
    fail(`cannot reach NATS at ${natsUrl}: ${(e as Error).message}`);
  }
  if (only.includes("bullmq")) {
    try {
      redisV = await redisVersion();
    } catch (e) {
      fail(`cannot reach Redis at ${redisUrl}: ${(e as Error).message}`);
    }
  }

  console.log(`bench:queue — ${fmtInt(ENQUEUES)} enqueues over ${fmtInt(KEYS)} keys (key i % ${KEYS}), no-op reconcile; prefix ${prefix}`);
  console.log(`node ${process.version}, ${os.availableParallelism()} CPUs; nats-server ${natsVersion}, redis ${redisV}, bullmq ${versionOf("bullmq")}`);
  console.log(
    `producer: ${PRODUCER_IN_FLIGHT} enqueues in flight; workers started first, running concurrently: 1 worker, ${WORKER_CONCURRENCY} runs in flight, same process, own connection`,
  );
  console.log(`enqueue/s = ${fmtInt(ENQUEUES)} / producer time; processed/s = runs / (first enqueue → drained: nothing queued, running or pending)`);
  console.log(`drain = ${fmtInt(DRAIN_KEYS)} distinct keys queued with no worker, then worker start → drained; deduped = enqueues that created no new entry`);
  console.log(
    `wait = run start − enqueue issued (Homeostat: item.enqueuedAt), runs of entries created by an "added" enqueue; cap ${CAP_MS / 1000} s per contender\n`,
  );

  const results: Result[] = [];
  for (const name of only) {
    process.stdout.write(`${labels[name]} ... `);
    const cleanups: (() => Promise<void>)[] = [];
    const d: Deadline = { at: Date.now() + CAP_MS, name };
    try {
      const r =
        name === "jetstream"
          ? await benchJetStream(prefix, config, d, cleanups)
          : name === "bullmq"
            ? await benchBullMQ(prefix, d, cleanups)
            : await benchHomeostat(prefix, config, d, cleanups);
      results.push(r);
      process.stdout.write(`${fmtRate(r.processedPerS)} processed/s\n`);
    } catch (e) {
      process.stdout.write("\n");
      for (const c of cleanups.reverse()) await Promise.race([c().catch(() => {}), sleep(15_000)]);
      fail(
        e instanceof CapExceeded
          ? `${e.message}; aborted (everything under prefix ${prefix} removed)`
          : e instanceof Error
            ? (e.stack ?? e.message)
            : String(e),
      );
    }
    for (const c of cleanups.reverse()) await Promise.race([c().catch(() => {}), sleep(15_000)]);
  }

  const by = (n: Name) => results.find((r) => r.name === n);
  console.log("");
  console.log(
    table([
      ["contender", "enqueue/s", "processed", "processed/s", "drain processed/s", "deduped", "wait p50", "wait p99"],
      ...results.map((r) => [
        labels[r.name],
        fmtRate(r.enqueuePerS),
        fmtInt(r.processed),
        fmtRate(r.processedPerS),
        fmtRate(r.drainPerS),
        fmtInt(r.deduped),
        fmtMs(r.waitP50),
        fmtMs(r.waitP99),
      ]),
    ]),
  );
  console.log("");
  for (const r of results) {
    console.log(
      `${labels[r.name]}: producer ${r.producerS.toFixed(2)} s, processing ${r.processedS.toFixed(2)} s, drain ${r.drainS.toFixed(2)} s; ` +
        `added ${fmtInt(r.added)}, reruns ${fmtInt(r.reruns)}${Number.isFinite(r.rerunMarks) ? ` (rerun marks ${fmtInt(r.rerunMarks)})` : ""}, failed/dead ${r.failed}, runs started while producing ${fmtInt(r.duringProducer)}, waits over ${fmtInt(r.waitN)} runs; ` +
        `drain CPU per run: client ${fmtRate(r.drainClientUs)} µs, server ${fmtRate(r.drainServerUs)} µs; client CPU per enqueue from first enqueue to drained ${fmtRate(r.processingClientUs)} µs`,
    );
  }
  const hs = by("homeostat");
  const bull = by("bullmq");
  const js = by("jetstream");
  const vsBull = hs && bull ? hs.processedPerS / bull.processedPerS : NaN;
  const vsJs = hs && js ? hs.processedPerS / js.processedPerS : NaN;
  if (hs && (bull || js)) {
    console.log("");
    if (bull)
      console.log(
        `ratio Homeostat / BullMQ processed/s:    ${fmtRatio(vsBull)} (target >= ${TARGET_VS_BULLMQ}x: ${vsBull >= TARGET_VS_BULLMQ ? "MET" : "NOT MET"})`,
      );
    if (js)
      console.log(
        `ratio Homeostat / JetStream processed/s: ${fmtRatio(vsJs)} (target >= ${TARGET_VS_JETSTREAM}x: ${vsJs >= TARGET_VS_JETSTREAM ? "MET" : "NOT MET"})`,
      );
  }
  const per = (f: (r: Result) => number) => Object.fromEntries(results.map((r) => [r.name, round1(f(r))]));
  console.log(
    JSON.stringify({
      bench: "queue",
      processed_per_s: per((r) => r.processedPerS),
      // Milliseconds' precision: bench:telemetry divides by it, and a small run drains in a few seconds.
      processing_s: Object.fromEntries(results.map((r) => [r.name, Math.round(r.processedS * 1000) / 1000])),
      enqueue_per_s: per((r) => r.enqueuePerS),
      drain_processed_per_s: per((r) => r.drainPerS),
      processed: per((r) => r.processed),
      deduped: per((r) => r.deduped),
      reruns: per((r) => r.reruns),
      runs_while_producing: per((r) => r.duringProducer),
      wait_p50_ms: per((r) => r.waitP50),
      wait_p99_ms: per((r) => r.waitP99),
      drain_cpu_us_per_run: { client: per((r) => r.drainClientUs), server: per((r) => r.drainServerUs) },
      processing_cpu_us_per_enqueue: per((r) => r.processingClientUs),
      ratio_homeostat_bullmq: round3(vsBull),
      ratio_homeostat_jetstream: round3(vsJs),
      target_vs_bullmq: TARGET_VS_BULLMQ,
      target_vs_jetstream: TARGET_VS_JETSTREAM,
      target_met: Number.isFinite(vsBull) && Number.isFinite(vsJs) ? vsBull >= TARGET_VS_BULLMQ && vsJs >= TARGET_VS_JETSTREAM : null,
      enqueues: ENQUEUES,
      keys: KEYS,
      drain_keys: DRAIN_KEYS,
      producer_in_flight: PRODUCER_IN_FLIGHT,
      worker_concurrency: WORKER_CONCURRENCY,
      workers: 1,
      processes: 1,
      node: process.version,
      nats_server: natsVersion,
      redis: redisV,
      bullmq: versionOf("bullmq"),
      telemetry: withTelemetry ? (config.telemetry.traces ? "exported" : "not exported") : "off",
    }),
  );
  await sdk?.shutdown();
}

main().then(
  () => process.exit(0),
  (e: unknown) => fail(e instanceof Error ? (e.stack ?? e.message) : String(e)),
);
