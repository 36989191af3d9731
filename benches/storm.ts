/**
 * `pnpm bench:storm` — the whole factory at catalog scale, end to end: a generated catalog
 * (scripts/gen-catalog.ts: every package a real source, a real sandboxed build step, every
 * image signed and pushed to a local Distribution registry) brought to Ready by the five
 * services as separate processes (`--builders`/`--signers` start more of those two), then four
 * scenarios, one JSON line each:
 *
 * 1. burst: `--events` release and advisory events for random packages, many repeats, through
 *    ingest's HTTP edge (advisories in batches of ADVISORY_BATCH, releases one per request):
 *    time until every event is accepted (recorded, its keys' admission certain), until every
 *    key is Ready at its desired version, runs per touched key, and per-second rates.
 * 2. base: one advisory on the root package (glibc), with the fixed release → every package
 *    and image rebuilt, signed and Ready: time to the last signed image, builds per second,
 *    the critical path in waves (the catalog's impact graph).
 * 3. latency: one at a time, a release of a package only images use → its image signed;
 *    p50/p99 over `--latency` events, the time split by stage from the events' traces, and
 *    what the image's local layout holds after those builds (versions, tags, blobs, bytes).
 * 4. resync: every key enqueued at resync priority with nothing changed → time, zero builds.
 *
 * Each line carries per-process CPU seconds and peak RSS (from /proc, sampled every
 * SAMPLE_MS; a builder's CPU includes its build steps', reaped children), nats-server's,
 * redis-server's and the registry's among them (on the same two cores, the services' NATS is a
 * bound, and every image sign pushes to the registry), the JetStream
 * store's size on disk, and the artifacts' (the builder's store, and what image layouts hold
 * besides). Runs are counted from the reconcilers' own metric (the
 * homeostat.queue.process histogram, exported over OTLP/HTTP JSON to a receiver here);
 * builds from the key statuses (WatchKeys). Traces are exported only for the latency events:
 * the services sample parent-based at ratio 0, and those requests carry a sampled traceparent.
 *
 * Everything is bounded: each scenario has a deadline (`--timeout-s`), the event count is an
 * argument, servers listen on loopback only. `--quick` is the CI size (test/storm.test.ts).
 *
 * Usage: node benches/storm.ts [--packages N] [--images N] [--events N] [--latency N]
 *          [--builders N] [--signers N] [--timeout-s N] [--quick] [--keep] [--profile DIR]
 *          [--scenarios burst,base,latency,resync] (a subset, in that order; bring-up always runs)
 *          [--store-grace-s N] (the builders' store keeps what no status names for N s, and the
 *          build timeout is N s too, collected every N/6 s: what the store holds with its
 *          collection at work, in `artifact_bytes`; by default the services' 24 h)
 *          [--advisory-settle-ms N] (HOMEOSTAT_ADVISORY_SETTLE_MS, 0 to run each advisory's
 *          package at once; by default the services' own: the burst with and without it)
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, readdirSync, readFileSync, statSync } from "node:fs";
import { chmod, mkdtemp } from "node:fs/promises";
import { createServer } from "node:http";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { isVersionTag, OciLayout } from "@homeostat/attest";
import { loadCatalog } from "@homeostat/catalog";
import { loadConfig, mapLimit, publish, seedFile, type KeyStatus } from "@homeostat/core";
import { getQueueStats, statusClient, watchKeysResuming } from "@homeostat/status-api";
import { repoRoot, stopChild, waitFor } from "../scripts/factory.ts";
import { mulberry32, pick } from "../scripts/app-tarball.ts";
import { generateCatalog, sourceTarball } from "../scripts/gen-catalog.ts";
import { startRegistry } from "../test/fixtures/registry.ts";
import { commandLine, integerOption, startBenchFactory, tearDown } from "./end-to-end.ts";
import { percentile } from "./table.ts";

/** An image layout's version tags, all its tags, and its blobs' count and bytes. */
async function layoutHolds(dir: string): Promise<{ versions: number; tags: number; blobs: number; bytes: number }> {
  const tags = await (await OciLayout.open(dir)).tags();
  const blobs = path.join(dir, "blobs", "sha256");
  const names = readdirSync(blobs);
  return {
    versions: tags.filter(isVersionTag).length,
    tags: tags.length,
    blobs: names.length,
    bytes: names.reduce((sum, n) => sum + statSync(path.join(blobs, n)).size, 0),
  };
}

/**
 * `layoutHolds` once the signer has dropped what the layout no longer keeps: it does so after it
 * wrote the key Ready, which is what the scenario waited for. Given up after a few seconds:
 * what the layout holds then is the answer.
 */
async function settledLayout(dir: string, env: Record<string, string>): Promise<Awaited<ReturnType<typeof layoutHolds>>> {
  const kept = loadConfig({ HOMEOSTAT_IMAGE_VERSIONS_KEPT: env.HOMEOSTAT_IMAGE_VERSIONS_KEPT }).imageVersionsKept;
  return waitFor(
    "the image's layout to keep only its recent versions",
    async () => {
      const holds = await layoutHolds(dir);
      return holds.versions <= kept && holds;
    },
    5_000,
    50,
  ).catch(() => layoutHolds(dir));
}

/** The scenarios after bring-up, in the order they run. */
export const SCENARIOS = ["burst", "base", "latency", "resync"] as const;
export type Scenario = (typeof SCENARIOS)[number];

export type StormOptions = {
  packages: number;
  images: number;
  events: number;
  latency: number;
  builders: number;
  signers: number;
  timeoutS: number;
  keep: boolean;
  /** Which scenarios run after bring-up (all by default; at the full size, base and burst rebuild much of the catalog). */
  scenarios: readonly Scenario[];
  /** A directory for each service's `node --cpu-prof` profile (written when it stops). */
  profileDir?: string;
  /** HOMEOSTAT_STORE_GRACE_MS (and the build timeout) in seconds, when not the services' default. */
  storeGraceS?: number;
  /** HOMEOSTAT_ADVISORY_SETTLE_MS, when not the services' default. */
  advisorySettleMs?: number;
};

export const QUICK: StormOptions = {
  packages: 40,
  images: 12,
  events: 2_000,
  latency: 10,
  builders: 1,
  signers: 1,
  timeoutS: 600,
  keep: false,
  scenarios: SCENARIOS,
};
const FULL: StormOptions = {
  packages: 27_000,
  images: 2_000,
  events: 1_300_000,
  latency: 200,
  builders: 2,
  signers: 2,
  timeoutS: 3_600,
  keep: false,
  scenarios: SCENARIOS,
};

/** OSV documents per POST /v1/advisories (the route takes up to 10,000). */
const ADVISORY_BATCH = 500;
/** HTTP requests in flight against ingest during the burst. */
const HTTP_CONCURRENCY = 32;
/** How often /proc is sampled for RSS. */
const SAMPLE_MS = 250;
const CLOCK_TICKS = 100;
/** How long the factory must stay converged before it counts (its time is when it first was). */
const IDLE_CONFIRM_MS = 300;

export type ScenarioLine = Record<string, unknown> & { scenario: string };

type Proc = { name: string; child: ChildProcess };

/**
 * Per-process CPU and RSS from /proc; undefined once the process is gone (or never started). The
 * CPU is the process's and its descendants' (utime+stime, and cutime+cstime of those that ended),
 * those still running included: the builder's step spawner lives as long as the builder, so the
 * builder's ended children alone left it out. A sandboxed step's own processes are not in it:
 * they run in bubblewrap's PID namespace, whose init reaps them, and their time reaches no
 * process outside (20 compiles through bwrap --unshare-pid: 0.03 CPU-s to the caller, 0.54 s
 * without it). The RSS is the process's own.
 */
function procSample(pid: number | undefined): { cpuS: number; rssMb: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    const rss = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return { cpuS: treeTicks(pid) / CLOCK_TICKS, rssMb: rss ? Number(rss[1]) / 1024 : 0 };
  } catch {
    return undefined;
  }
}

/** CPU ticks of a process and of its live descendants, each with its ended children's; throws when `pid` is gone. */
function treeTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  let ticks = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    let children: string;
    try {
      children = readFileSync(`/proc/${pid}/task/${task}/children`, "utf8");
    } catch {
      continue; // the thread ended meanwhile
    }
    for (const child of children.split(" ").filter(Boolean)) {
      try {
        ticks += treeTicks(Number(child));
      } catch {
        // Ended meanwhile: its time is in this process's cutime once reaped.
      }
    }
  }
  return ticks;
}

/**
 * CPU seconds and peak RSS of each process over one scenario. The sampling ends when the reading
 * is taken or `stopped` aborts: a scenario that fails never takes it, and its timer would keep
 * the process (the storm test's) from ending.
 */
function resourceMeter(procs: () => Proc[], stopped: AbortSignal) {
  const start = new Map<string, number>();
  const peak = new Map<string, number>();
  for (const p of procs()) start.set(p.name, procSample(p.child.pid)?.cpuS ?? 0);
  const tick = () => {
    for (const p of procs()) {
      const s = procSample(p.child.pid);
      if (s) peak.set(p.name, Math.max(peak.get(p.name) ?? 0, s.rssMb));
    }
  };
  tick();
  const timer = setInterval(tick, SAMPLE_MS);
  stopped.addEventListener("abort", () => clearInterval(timer), { once: true });
  return () => {
    clearInterval(timer);
    tick();
    const out: Record<string, { cpu_s: number; peak_rss_mb: number }> = {};
    for (const p of procs()) {
      const s = procSample(p.child.pid);
      out[p.name] = { cpu_s: round((s?.cpuS ?? 0) - (start.get(p.name) ?? 0), 2), peak_rss_mb: round(peak.get(p.name) ?? 0, 1) };
    }
    return out;
  };
}

/** Counters the receiver keeps, by metric name and the attributes that break them down. */
const BREAKDOWNS = {
  /** The reconcilers' runs by cause and outcome (reconcile.ts RunOutcome). */
  "homeostat.reconcile.runs": ["cause", "outcome"],
  /** The work queue's enqueues by outcome (added, deduped, rerun) and cause, whichever process made them. */
  "homeostat.queue.enqueued": ["outcome", "cause"],
} as const;
type Breakdown = keyof typeof BREAKDOWNS;

/**
 * OTLP/HTTP JSON receiver: the reconcilers' cumulative run counts (homeostat.queue.process, by
 * instance), the counters of BREAKDOWNS by instance and attributes, and the spans of the traces
 * in `wanted` (anything else is skipped unparsed).
 */
async function startTelemetryReceiver() {
  const runsByInstance = new Map<string, number>();
  /** Cumulative counts by metric, then by "instance attr/attr". */
  const counters = new Map<Breakdown, Map<string, number>>(Object.keys(BREAKDOWNS).map((k) => [k as Breakdown, new Map()]));
  const spans = new Map<string, { name: string; service: string; start: number; end: number; kind: number }[]>();
  const wanted = new Set<string>();
  type Kv = { key: string; value: { stringValue?: string } };
  type Point = { count?: string | number; asInt?: string | number; asDouble?: number; attributes?: Kv[] };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
      const body = Buffer.concat(chunks).toString("utf8");
      if (req.url === "/v1/metrics" && (body.includes("homeostat.queue.process") || body.includes("homeostat.queue.enqueued"))) {
        const m = JSON.parse(body) as {
          resourceMetrics?: {
            resource?: { attributes?: Kv[] };
            scopeMetrics?: { metrics?: { name: string; histogram?: { dataPoints?: Point[] }; sum?: { dataPoints?: Point[] } }[] }[];
          }[];
        };
        for (const rm of m.resourceMetrics ?? []) {
          const instance = rm.resource?.attributes?.find((a) => a.key === "service.instance.id")?.value.stringValue ?? "?";
          for (const sm of rm.scopeMetrics ?? [])
            for (const metric of sm.metrics ?? []) {
              if (metric.name === "homeostat.queue.process")
                runsByInstance.set(
                  instance,
                  (metric.histogram?.dataPoints ?? []).reduce((n, d) => n + Number(d.count ?? 0), 0),
                );
              const by = counters.get(metric.name as Breakdown);
              if (!by) continue;
              // Cumulative sums: each export restates every series' total.
              for (const d of metric.sum?.dataPoints ?? []) {
                const attrs = BREAKDOWNS[metric.name as Breakdown].map((a) => d.attributes?.find((x) => x.key === a)?.value.stringValue ?? "-");
                by.set(`${instance} ${attrs.join("/")}`, Number(d.asInt ?? d.asDouble ?? 0));
              }
            }
        }
      } else if (req.url === "/v1/traces" && wanted.size && [...wanted].some((id) => body.includes(id))) {
        const t = JSON.parse(body) as {
          resourceSpans?: {
            resource?: { attributes?: Kv[] };
            scopeSpans?: { spans?: { traceId: string; name: string; kind?: number; startTimeUnixNano: string; endTimeUnixNano: string }[] }[];
          }[];
        };
        for (const rs of t.resourceSpans ?? []) {
          const service = rs.resource?.attributes?.find((a) => a.key === "service.name")?.value.stringValue ?? "?";
          for (const ss of rs.scopeSpans ?? [])
            for (const s of ss.spans ?? []) {
              if (!wanted.has(s.traceId)) continue;
              const list = spans.get(s.traceId) ?? [];
              list.push({
                name: s.name,
                service,
                kind: s.kind ?? 0,
                start: Number(BigInt(s.startTimeUnixNano) / 1000n) / 1000,
                end: Number(BigInt(s.endTimeUnixNano) / 1000n) / 1000,
              });
              spans.set(s.traceId, list);
            }
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    runs: () => [...runsByInstance.values()].reduce((a, b) => a + b, 0),
    /** A counter's totals by its BREAKDOWNS attributes ("cause/outcome"), summed over the instances. */
    counts: (metric: Breakdown): Map<string, number> => {
      const out = new Map<string, number>();
      for (const [k, v] of counters.get(metric) ?? []) {
        const attrs = k.slice(k.indexOf(" ") + 1);
        out.set(attrs, (out.get(attrs) ?? 0) + v);
      }
      return out;
    },
    wanted,
    spans,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}

/** The current status of every key, kept up to date from WatchKeys, with the time of each signed build. */
function followStatuses(client: ReturnType<typeof statusClient>, signal: AbortSignal) {
  const statuses = new Map<string, KeyStatus>();
  const signedAt: number[] = [];
  let synced = false;
  const done = (async () => {
    for await (const e of watchKeysResuming(client, {}, { signal })) {
      if (e.type === "synced") synced = true;
      if (e.type !== "initial" && e.type !== "put") continue;
      const before = statuses.get(e.status.key);
      if (e.type === "put" && e.status.actual && e.status.actual.inputDigest !== before?.actual?.inputDigest) signedAt.push(Date.now());
      statuses.set(e.status.key, e.status);
    }
  })().catch((err: unknown) => {
    if (!signal.aborted) throw err;
  });
  return { statuses, signedAt, synced: () => synced, done };
}

function round(x: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** What a counter's totals (by attributes) grew by since `before`, largest first, leaving out what did not change. */
function grownSince(after: ReadonlyMap<string, number>, before: ReadonlyMap<string, number>): Record<string, number> {
  return Object.fromEntries(
    [...after]
      .map(([k, v]) => [k, v - (before.get(k) ?? 0)] as const)
      .filter(([, n]) => n > 0)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])),
  );
}

/** Counts per second since `t0`, for the rates-over-time arrays. */
function perSecond(times: number[], t0: number): number[] {
  const out: number[] = [];
  for (const t of times) {
    if (t < t0) continue;
    const s = Math.floor((t - t0) / 1000);
    while (out.length <= s) out.push(0);
    out[s] = (out[s] ?? 0) + 1;
  }
  return out;
}

/** What `statuses` holds of `key` as built; the bench waited for every key to be built, so one without is a bug. */
function builtStatus(statuses: ReadonlyMap<string, KeyStatus>, key: string): KeyStatus & Required<Pick<KeyStatus, "actual">> {
  const s = statuses.get(key);
  if (!s?.actual) throw new Error(`${key} has not been built`);
  return { ...s, actual: s.actual };
}

/** The next patch version of `v` (x.y.z). */
const bump = (v: string, by = 1) => {
  const [a, b, c] = v.split(".").map(Number);
  if (c === undefined) throw new Error(`not an x.y.z version: ${v}`);
  return `${a}.${b}.${c + by}`;
};

export async function runStorm(o: StormOptions, emit: (line: ScenarioLine) => void, note: (text: string) => void = () => {}): Promise<ScenarioLine[]> {
  const lines: ScenarioLine[] = [];
  const out = (l: ScenarioLine) => {
    lines.push(l);
    emit(l);
  };
  const dir = await mkdtemp(path.join(tmpdir(), "hs-storm-"));
  // Searchable by others: the sandbox's uid must reach the workspaces under <dir>/data.
  await chmod(dir, 0o711);
  const stops: (() => Promise<void>)[] = [];
  const watching = new AbortController();
  const sampling = new AbortController();
  stops.push(async () => sampling.abort());
  try {
    const catalogDir = path.join(dir, "catalog");
    // The scenarios' release tarballs, outside the catalog: a file written into it changes the
    // directory the services poll, and each then loads the whole catalog again (at 10,000 keys
    // 1.2 s of the reconciler's CPU, profiled around the resync that follows the latency scenario).
    const releaseSources = path.join(dir, "release-sources");
    const t0 = Date.now();
    await generateCatalog(catalogDir, { packages: o.packages, images: o.images, seed: 1 });
    const catalog = await loadCatalog(catalogDir);
    const keys = catalog.keys();
    note(`catalog: ${o.packages} packages, ${o.images} images (${keys.length} keys) in ${Date.now() - t0} ms; work dir ${dir}`);

    const registry = await startRegistry();
    stops.push(() => registry.stop());
    const telemetry = await startTelemetryReceiver();
    stops.push(() => telemetry.close());
    // The scenarios enqueue the resync themselves: no periodic one.
    const { servers, factory, connectAs } = await startBenchFactory(
      dir,
      {
        prefix: "storm",
        catalogDir,
        env: {
          HOMEOSTAT_REGISTRY_URL: registry.url,
          // A batch of ADVISORY_BATCH advisories on a loaded machine can take longer than the
          // default 30 s idle timeout, which closes the socket without an answer mid-request.
          HOMEOSTAT_INGEST_IDLE_TIMEOUT_MS: String(o.timeoutS * 1000),
          HOMEOSTAT_INGEST_REQUEST_TIMEOUT_MS: String(o.timeoutS * 1000),
          OTEL_EXPORTER_OTLP_ENDPOINT: telemetry.url,
          OTEL_METRIC_EXPORT_INTERVAL: "1000",
          OTEL_BSP_SCHEDULE_DELAY: "200",
          OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
          OTEL_TRACES_SAMPLER_ARG: "0",
          ...(o.profileDir ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${path.resolve(o.profileDir)}` } : {}),
          ...(o.advisorySettleMs !== undefined ? { HOMEOSTAT_ADVISORY_SETTLE_MS: String(o.advisorySettleMs) } : {}),
          ...(o.storeGraceS
            ? {
                HOMEOSTAT_STORE_GRACE_MS: String(o.storeGraceS * 1000),
                HOMEOSTAT_BUILD_TIMEOUT_MS: String(o.storeGraceS * 1000),
                HOMEOSTAT_STORE_COLLECT_INTERVAL_MS: String(Math.max(1000, Math.round((o.storeGraceS * 1000) / 6))),
              }
            : {}),
        },
      },
      stops,
    );
    // More builders and signers: the same program and identity; started once the first of each
    // has made the shared keys (a second process racing to create them would make its own).
    const replicas: Proc[] = [];
    await waitFor(
      "the builder's and signer's keys",
      async () => {
        const log = readFileSync(path.join(dir, "logs", "builder.log"), "utf8") + readFileSync(path.join(dir, "logs", "signer.log"), "utf8");
        return log.includes("builder identity") && log.includes("signing key loaded");
      },
      60_000,
      200,
    );
    for (const [name, count] of [
      ["builder", o.builders],
      ["signer", o.signers],
    ] as const) {
      for (let i = 2; i <= count; i++) {
        const log = createWriteStream(path.join(dir, "logs", `${name}-${i}.log`));
        const child = spawn(process.execPath, [path.join(repoRoot, "services", name, "src", "main.ts")], {
          env: { ...factory.env, NATS_NKEY_SEED_FILE: seedFile(servers.natsCredentials, name) },
          stdio: ["ignore", "pipe", "pipe"],
          cwd: repoRoot,
        });
        child.stdout.pipe(log);
        child.stderr.pipe(log);
        replicas.push({ name: `${name}-${i}`, child });
      }
    }
    stops.push(async () => void (await Promise.all(replicas.map((r) => stopChild(r.child)))));
    const nats = await connectAs("ingest", "storm-bench");
    stops.push(() => nats.nc.close());
    const client = statusClient(factory.grpcAddr);
    stops.push(async () => client.close());
    const follow = followStatuses(client, watching.signal);
    stops.push(async () => {
      watching.abort();
      await follow.done;
    });
    // The registry too: every image sign pushes to it, and its CPU is part of what an image costs.
    const procs = (): Proc[] => [
      ...[...factory.processes].map(([name, child]) => ({ name, child })),
      ...replicas,
      ...servers.processes(),
      { name: "registry", child: registry.child },
    ];
    /** `du -sb` of each directory, in order; one `du` counts a file hard-linked into several once, where it meets it first. */
    const diskBytes = (...dirs: string[]) =>
      execFileSync("du", ["-sb", ...dirs], { encoding: "utf8" })
        .trim()
        .split("\n")
        .map((line) => Number(line.split("\t")[0]));
    const storeBytes = () => diskBytes(path.join(dir, "servers", "nats"))[0];
    // The artifacts on disk (both directories exist once the catalog, never without a package and
    // an image, is built): the builder's store, and what the image layouts hold besides it (a
    // layer is a hard link to its package's archive in the store).
    const dataDir = factory.env.HOMEOSTAT_DATA ?? "";
    const artifactBytes = () => {
      const [store, imagesBesides] = diskBytes(path.join(dataDir, "store"), path.join(dataDir, "oci"));
      return { store, images_besides: imagesBesides };
    };
    const load = () => loadavg().map((l) => round(l, 2));
    const deadlineMs = o.timeoutS * 1000;
    const allReady = (want?: (s: KeyStatus) => boolean) => {
      if (!follow.synced() || follow.statuses.size < keys.length) return false;
      for (const k of keys) {
        const s = follow.statuses.get(k);
        if (!s || s.phase !== "Ready" || (want && !want(s))) return false;
      }
      return true;
    };
    const failedKeys = () =>
      [...follow.statuses.values()]
        .filter((s) => s.phase === "Failed" || s.phase === "DeadLettered" || s.phase === "NeedsAttention")
        .map((s) => `${s.key} ${s.phase}: ${s.lastError ?? ""}`.slice(0, 300));
    const queueIdle = async () => {
      const q = await getQueueStats(client);
      return q.running === 0 && Object.values(q.depth).every((n) => n === 0);
    };
    // Converged: every key Ready as wanted and the queue idle, twice IDLE_CONFIRM_MS apart (a
    // signed key is Ready a moment before the run that fans it out to its dependents is queued).
    let idleSince: number | undefined;
    const converge = (what: string, want?: (s: KeyStatus) => boolean) =>
      waitFor(
        what,
        async () => {
          const failed = failedKeys();
          if (failed.length) throw new Error(`${failed.length} keys failed, e.g. ${failed.slice(0, 3).join(" | ")}`);
          if (!allReady(want) || !(await queueIdle())) return (idleSince = undefined);
          idleSince ??= Date.now();
          return Date.now() - idleSince >= IDLE_CONFIRM_MS ? idleSince : undefined;
        },
        deadlineMs,
        50,
      ).catch(async (err: unknown) => {
        // Which keys are not there yet, and where they stand: a lost event shows here.
        const behind = keys
          .map((k) => follow.statuses.get(k))
          .filter((s) => !s || s.phase !== "Ready" || (want && !want(s)))
          .slice(0, 10)
          .map((s) =>
            s ? `${s.key} ${s.phase} at ${s.actual?.version ?? "-"} wanting ${s.desiredVersion ?? "-"} (updated ${s.updatedAt})` : "a key with no status",
          );
        const queue = await getQueueStats(client).catch(() => undefined);
        throw new Error(`${(err as Error).message}; not converged: ${behind.join(" | ")}; queue ${JSON.stringify(queue)}; logs in ${path.join(dir, "logs")}`);
      });
    /** Every key at resync priority straight into intake, as ingest's resync round publishes them (in build order, unpaced). */
    const enqueueAll = async (round: string) => {
      await mapLimit(
        catalog.keysInBuildOrder(),
        256,
        async (key) =>
          void (await publish(nats, "intake", key, { v: 1, key, priority: "resync", cause: { type: "resync" } }, { msgId: `resync:${key}:${round}` })),
      );
    };
    const post = async (route: string, body: unknown, headers: Record<string, string> = {}) => {
      const res = await fetch(`${factory.ingestUrl}${route}`, {
        method: "POST",
        headers: { "content-type": "application/json", ...headers },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      if (res.status !== 202) throw new Error(`POST ${route}: ${res.status} ${text.slice(0, 500)}`);
      return JSON.parse(text) as Record<string, unknown>;
    };
    const builtInputs = () => new Map([...follow.statuses].map(([k, s]) => [k, s.actual?.inputDigest]));
    const rebuiltSince = (before: Map<string, string | undefined>) => [...follow.statuses].filter(([k, s]) => s.actual?.inputDigest !== before.get(k)).length;

    // Bring-up: every key once, as a fresh factory's first resync would.
    {
      const meter = resourceMeter(procs, sampling.signal);
      const start = Date.now();
      await enqueueAll("initial");
      const seconds = ((await converge("the catalog to be Ready")) - start) / 1000;
      out({
        scenario: "initial",
        keys: keys.length,
        seconds: round(seconds, 1),
        builds_per_s: round(keys.length / seconds, 1),
        runs: telemetry.runs(),
        builders: o.builders,
        signers: o.signers,
        load: load(),
        processes: meter(),
        jetstream_store_bytes: storeBytes(),
        artifact_bytes: artifactBytes(),
      });
    }

    // 1. Burst: releases (a new version of each released package, posted REPEATS times) and
    // advisories (a new OSV id each, naming random packages from the same set: many repeats of
    // each key, affecting no built version, so they cost a reconcile and no build).
    if (o.scenarios.includes("burst")) {
      // Seeded, so a run's event mix is reproducible.
      const rand = mulberry32(7);
      const tail = [...catalog.packages.keys()].filter((n) => !/^(glibc|zlib|xz|bzip2|openssl|ncurses|readline|libffi)$/.test(n));
      const targets = Array.from(new Set(Array.from({ length: Math.max(1, Math.min(tail.length, Math.ceil(o.events / 50))) }, () => pick(tail, rand))));
      const releasesPerTarget = 5;
      const released = targets.filter((_, i) => i % 4 === 0);
      const burstSource = await sourceTarball(releaseSources, "burst");
      const releaseBodies = released.flatMap((name) =>
        Array.from({ length: releasesPerTarget }, () => ({
          package: name,
          version: bump(builtStatus(follow.statuses, `package/${name}`).actual.version, 100),
          url: burstSource.url,
          sha256: burstSource.sha256,
        })),
      );
      const advisoryCount = Math.max(0, o.events - releaseBodies.length);
      const modified = new Date().toISOString();
      const advisories = Array.from({ length: advisoryCount }, (_, i) => ({
        schema_version: "1.6.0",
        id: `STORM-${randomBytes(4).toString("hex")}-${i}`,
        modified,
        published: modified,
        summary: "storm: affects no built version",
        affected: [
          {
            package: { ecosystem: "Generic", name: pick(targets, rand) },
            ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "0.0.1" }] }],
          },
        ],
      }));
      const batches: unknown[][] = [];
      for (let i = 0; i < advisories.length; i += ADVISORY_BATCH) batches.push(advisories.slice(i, i + ADVISORY_BATCH));
      const expected = new Map(released.map((n) => [`package/${n}`, bump(builtStatus(follow.statuses, `package/${n}`).actual.version, 100)]));
      const before = builtInputs();
      const archivesBefore = new Map([...follow.statuses].map(([k, s]) => [k, s.actual?.outputs.archive]));
      const runs0 = telemetry.runs();
      const outcomes0 = telemetry.counts("homeostat.reconcile.runs");
      const enqueues0 = telemetry.counts("homeostat.queue.enqueued");
      const acceptedAt: number[] = [];
      const meter = resourceMeter(procs, sampling.signal);
      const start = Date.now();
      // Interleaved: a release request, then an advisory batch, and so on, HTTP_CONCURRENCY at a time.
      const requests: (() => Promise<void>)[] = [];
      for (let i = 0; i < Math.max(releaseBodies.length, batches.length); i++) {
        const r = releaseBodies[i];
        if (r) requests.push(async () => void (await post("/v1/releases", r), acceptedAt.push(Date.now())));
        const b = batches[i];
        if (b)
          requests.push(async () => {
            const res = await post("/v1/advisories", b);
            if (res.refused) throw new Error(`advisories refused: ${JSON.stringify(res).slice(0, 500)}`);
            const now = Date.now();
            for (let k = 0; k < b.length; k++) acceptedAt.push(now);
          });
      }
      await mapLimit(requests, HTTP_CONCURRENCY, (f) => f());
      const absorbedS = (Date.now() - start) / 1000;
      const convergedS = ((await converge("the burst to converge", (s) => !expected.has(s.key) || s.actual?.version === expected.get(s.key))) - start) / 1000;
      // The last runs' metric export (every second) before counting.
      await new Promise((r) => setTimeout(r, 1_500));
      const runs = telemetry.runs() - runs0;
      // Every key a release reaches whose inputs changed must have been rebuilt: a dependent left
      // at its old inputs is Ready too, so convergence alone would not show a lost release or
      // fan-out. A key's inputs change with its own release or with a new archive of what it is
      // built from (a package's build dependencies, an image's packages); a package rebuilt only
      // because a dependency was (the generated programs link nothing) has the same archive, and
      // its dependents rightly stay as they were.
      const impacted = new Set(released.flatMap((n) => catalog.impact([`package/${n}`]).keys));
      const releasedKeys = new Set(released.map((n) => `package/${n}`));
      const inputsOf = (k: string): string[] => {
        const [kind, name = ""] = k.split("/", 2);
        if (kind === "image") return catalog.runtimeClosure(catalog.images.get(name)?.packages ?? []);
        return catalog.packages.get(name)?.dependencies.build ?? [];
      };
      const newArchive = (p: string) => follow.statuses.get(`package/${p}`)?.actual?.outputs.archive !== archivesBefore.get(`package/${p}`);
      // Each with where it stands, so that a lost release or fan-out can be followed from the line.
      const notRebuilt = [...impacted]
        .filter((k) => follow.statuses.get(k)?.actual?.inputDigest === before.get(k) && (releasedKeys.has(k) || inputsOf(k).some(newArchive)))
        .map((k) => {
          const s = follow.statuses.get(k);
          const from = inputsOf(k).filter(newArchive);
          return `${k} ${s?.phase ?? "-"} at ${s?.actual?.version ?? "-"}, cause ${s?.cause?.type ?? "-"} ${s?.cause?.id ?? ""}, waiting ${s?.waitingFor ?? "no"}, updated ${s?.updatedAt ?? "-"}, new archives of ${from.join(" ") || "none"}`;
        });
      const touched = new Set([...targets.map((n) => `package/${n}`), ...impacted]);
      const builds = rebuiltSince(before);
      out({
        scenario: "burst",
        events: acceptedAt.length,
        release_events: releaseBodies.length,
        advisory_events: advisories.length,
        distinct_packages: targets.length,
        absorb_s: round(absorbedS, 2),
        events_per_s: round(acceptedAt.length / absorbedS),
        converge_s: round(convergedS, 2),
        runs,
        keys_touched: touched.size,
        runs_per_key: round(runs / touched.size, 3),
        // The runs a burst needs at least: one per touched key for its event, one more per build
        // for its completion (the signer's "built" enqueue, which fans out to the dependents).
        runs_per_needed_run: round(runs / (touched.size + builds), 3),
        builds,
        // Where the runs went: by the run's cause and what it found (reconcile.ts RunOutcome),
        // and the enqueues that asked for them by outcome (a rerun: the key was running).
        runs_by_cause_outcome: grownSince(telemetry.counts("homeostat.reconcile.runs"), outcomes0),
        enqueues_by_outcome_cause: grownSince(telemetry.counts("homeostat.queue.enqueued"), enqueues0),
        keys_impacted: impacted.size,
        keys_not_rebuilt: notRebuilt,
        ingest_per_s: perSecond(acceptedAt, start),
        builds_signed_per_s: perSecond(follow.signedAt, start),
        load: load(),
        processes: meter(),
        jetstream_store_bytes: storeBytes(),
        artifact_bytes: artifactBytes(),
      });
    }

    // 2. Base advisory: glibc affected at its built version, fixed in a release posted with it.
    if (o.scenarios.includes("base")) {
      const glibc = builtStatus(follow.statuses, "package/glibc").actual.version;
      const fixed = bump(glibc, 1000);
      const impact = catalog.impact(["package/glibc"]);
      const before = builtInputs();
      const runs0 = telemetry.runs();
      const outcomes0 = telemetry.counts("homeostat.reconcile.runs");
      const signed0 = follow.signedAt.length;
      const meter = resourceMeter(procs, sampling.signal);
      const start = Date.now();
      const modified = new Date().toISOString();
      const source = await sourceTarball(releaseSources, fixed);
      await post("/v1/releases", { package: "glibc", version: fixed, url: source.url, sha256: source.sha256 });
      await post("/v1/advisories", {
        schema_version: "1.6.0",
        id: `STORM-BASE-${randomBytes(4).toString("hex")}`,
        modified,
        published: modified,
        summary: "storm: the C library",
        affected: [{ package: { ecosystem: "Generic", name: "glibc" }, ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed }] }] }],
      });
      const seconds = ((await converge("every key rebuilt after the base advisory", (s) => s.actual?.inputDigest !== before.get(s.key))) - start) / 1000;
      await new Promise((r) => setTimeout(r, 1_500));
      out({
        scenario: "base",
        keys: impact.keys.length,
        // The keys whose builds need a completion run (to tell their dependents); the signer
        // completes the others' builds without one.
        keys_with_dependents: impact.keys.filter((k) => k.startsWith("package/") && catalog.dependentsOf(k.slice("package/".length)).length > 0).length,
        waves: impact.waves.length,
        seconds_to_last_signed_image: round(seconds, 2),
        keys_rebuilt: rebuiltSince(before),
        builds: follow.signedAt.length - signed0,
        builds_per_s: round((follow.signedAt.length - signed0) / seconds, 1),
        runs: telemetry.runs() - runs0,
        runs_by_cause_outcome: grownSince(telemetry.counts("homeostat.reconcile.runs"), outcomes0),
        builds_signed_per_s: perSecond(follow.signedAt, start),
        load: load(),
        processes: meter(),
        jetstream_store_bytes: storeBytes(),
        artifact_bytes: artifactBytes(),
      });
    }

    // 3. Latency: a package that only images use, released again and again, one at a time.
    if (o.scenarios.includes("latency")) {
      const leaf = [...catalog.packages.keys()]
        .reverse()
        .find(
          (n) =>
            catalog.impact([`package/${n}`]).keys.every((k) => k === `package/${n}` || k.startsWith("image/")) &&
            catalog.impact([`package/${n}`]).keys.length === 2,
        );
      if (!leaf) throw new Error("no package is in exactly one image and nothing else");
      const image = catalog.impact([`package/${leaf}`]).keys.find((k) => k.startsWith("image/"));
      if (!image) throw new Error(`${leaf} is in no image`);
      const totals: number[] = [];
      const meter = resourceMeter(procs, sampling.signal);
      let version = builtStatus(follow.statuses, `package/${leaf}`).actual.version;
      for (let i = 0; i < o.latency; i++) {
        version = bump(version);
        const traceId = randomBytes(16).toString("hex");
        telemetry.wanted.add(traceId);
        const before = builtStatus(follow.statuses, image).actual.inputDigest;
        const source = await sourceTarball(releaseSources, version);
        const start = Date.now();
        await post(
          "/v1/releases",
          { package: leaf, version, url: source.url, sha256: source.sha256 },
          { traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` },
        );
        await waitFor(
          `${image} signed after ${leaf} ${version}`,
          async () => follow.statuses.get(image)?.actual?.inputDigest !== before && follow.statuses.get(image)?.phase === "Ready",
          deadlineMs,
          2,
        );
        totals.push(Date.now() - start);
        // Low load: the next event once this one is done and its spans are out.
        await new Promise((r) => setTimeout(r, 100));
      }
      await new Promise((r) => setTimeout(r, 1_500));
      // The split by stage from each trace: the wall time covered by each service's server and
      // consumer spans (overlaps within a service counted once; the package's and the image's
      // runs both count), and what no span covers: waiting in streams, delivery, status writes.
      const covered = (spans: { start: number; end: number }[]) => {
        let total = 0;
        let until = -Infinity;
        for (const s of [...spans].sort((a, b) => a.start - b.start)) {
          total += Math.max(0, s.end - Math.max(s.start, until));
          until = Math.max(until, s.end);
        }
        return total;
      };
      const split: Record<string, number[]> = {};
      for (const [n, traceId] of [...telemetry.wanted].entries()) {
        const spans = (telemetry.spans.get(traceId) ?? []).filter((s) => s.kind === 2 || s.kind === 5);
        if (!spans.length) continue;
        const byStage: Record<string, number> = {};
        for (const service of new Set(spans.map((s) => s.service))) byStage[service] = covered(spans.filter((s) => s.service === service));
        const total = totals[n];
        if (total === undefined) throw new Error(`no total for latency event ${n}`);
        byStage["not in a span (waiting, delivery)"] = Math.max(0, total - covered(spans));
        for (const [k, v] of Object.entries(byStage)) (split[k] ??= []).push(v);
      }
      const sorted = [...totals].sort((a, b) => a - b);
      out({
        scenario: "latency",
        events: totals.length,
        package: leaf,
        image,
        p50_ms: percentile(sorted, 50),
        p99_ms: percentile(sorted, 99),
        max_ms: sorted.at(-1),
        stage_median_ms: Object.fromEntries(
          Object.entries(split).map(([k, v]) => [
            k,
            round(
              percentile(
                v.sort((a, b) => a - b),
                50,
              ),
              1,
            ),
          ]),
        ),
        traces: Object.values(split)[0]?.length ?? 0,
        // What the image's local layout holds after all those builds (HOMEOSTAT_IMAGE_VERSIONS_KEPT).
        image_layout: await settledLayout(path.join(dataDir, "oci", image.slice("image/".length)), factory.env),
        slowest_spans_median_ms: slowestSpans(
          [...telemetry.wanted].map((id) => telemetry.spans.get(id) ?? []),
          12,
        ),
        load: load(),
        processes: meter(),
        jetstream_store_bytes: storeBytes(),
        artifact_bytes: artifactBytes(),
      });
    }

    // 4. Resync with nothing to do: every key runs, none builds.
    if (o.scenarios.includes("resync")) {
      const before = builtInputs();
      const runs0 = telemetry.runs();
      const meter = resourceMeter(procs, sampling.signal);
      const start = Date.now();
      await enqueueAll(`resync-${start}`);
      const enqueuedS = (Date.now() - start) / 1000;
      // Ended when the queue went idle for the last time: the runs are counted from metrics
      // exported once a second, which alone would add up to a second to a resync of a few seconds.
      // Polled every 50 ms: every 20 ms, the stats calls alone cost the queue service a second of CPU.
      let idleFrom: number | undefined;
      await waitFor(
        "the resync to run every key",
        async () => {
          const idle = await queueIdle();
          idleFrom = idle ? (idleFrom ?? Date.now()) : undefined;
          return telemetry.runs() - runs0 >= keys.length && idle;
        },
        deadlineMs,
        50,
      );
      const seconds = ((idleFrom ?? Date.now()) - start) / 1000;
      out({
        scenario: "resync",
        keys: keys.length,
        enqueue_s: round(enqueuedS, 2),
        seconds: round(seconds, 2),
        keys_per_s: round(keys.length / seconds),
        runs: telemetry.runs() - runs0,
        builds: rebuiltSince(before),
        all_ready: allReady(),
        load: load(),
        processes: meter(),
        jetstream_store_bytes: storeBytes(),
        artifact_bytes: artifactBytes(),
      });
    }
    return lines;
  } finally {
    await tearDown(stops, dir, o.keep);
  }
}

if (import.meta.main) {
  const usage = [
    "Usage: node benches/storm.ts [--packages N] [--images N] [--events N] [--latency N]",
    "         [--builders N] [--signers N] [--timeout-s N] [--quick] [--keep] [--profile DIR]",
    `         [--scenarios ${SCENARIOS.join(",")}] (bring-up always runs) [--store-grace-s N (10-86400)]`,
    "         [--advisory-settle-ms N (0-60000)]",
  ].join("\n");
  const o = commandLine("bench:storm", usage, (): StormOptions => {
    const { values } = parseArgs({
      options: {
        packages: { type: "string" },
        images: { type: "string" },
        events: { type: "string" },
        latency: { type: "string" },
        builders: { type: "string" },
        signers: { type: "string" },
        "timeout-s": { type: "string" },
        quick: { type: "boolean", default: false },
        keep: { type: "boolean", default: false },
        profile: { type: "string" },
        scenarios: { type: "string" },
        "store-grace-s": { type: "string" },
        "advisory-settle-ms": { type: "string" },
      },
    });
    const base = values.quick ? QUICK : FULL;
    /** Option `--name` given as `v`, else the size's `d` (--quick or the full one). */
    const num = (name: string, v: string | undefined, d: number, min: number, max: number) => (v === undefined ? d : integerOption(name, v, min, max));
    return {
      packages: num("packages", values.packages, base.packages, 8, 100_000),
      images: num("images", values.images, base.images, 1, 10_000),
      events: num("events", values.events, base.events, 1, 5_000_000),
      latency: num("latency", values.latency, base.latency, 1, 10_000),
      builders: num("builders", values.builders, base.builders, 1, 16),
      signers: num("signers", values.signers, base.signers, 1, 16),
      timeoutS: num("timeout-s", values["timeout-s"], base.timeoutS, 10, 86_400),
      keep: values.keep === true,
      scenarios: values.scenarios === undefined ? base.scenarios : scenarioList(values.scenarios),
      ...(values.profile ? { profileDir: values.profile } : {}),
      ...(values["store-grace-s"] !== undefined ? { storeGraceS: integerOption("store-grace-s", values["store-grace-s"], 10, 86_400) } : {}),
      ...(values["advisory-settle-ms"] !== undefined ? { advisorySettleMs: integerOption("advisory-settle-ms", values["advisory-settle-ms"], 0, 60_000) } : {}),
    };
  });
  process.stdout.write(
    `bench:storm — ${JSON.stringify(o)}; load ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}\n`,
  );
  await runStorm(
    o,
    (l) => console.log(JSON.stringify(l)),
    (t) => process.stdout.write(`# ${t}\n`),
  );
}

/** `--scenarios a,b`: each a known scenario, none twice; an unknown one is a usage error. */
function scenarioList(v: string): Scenario[] {
  const names = v.split(",").map((n) => n.trim());
  const unknown = names.filter((n) => !(SCENARIOS as readonly string[]).includes(n));
  if (unknown.length || !names.length) throw new Error(`--scenarios: ${unknown.join(", ") || "(none)"} is not one of ${SCENARIOS.join(", ")}`);
  return SCENARIOS.filter((n) => names.includes(n));
}

/**
 * Where an event's time goes, span by span: each span name's median duration over the traces
 * (a span that occurs several times in a trace, e.g. a reconcile of the package and of the image,
 * summed within it), the `n` slowest, as `<service>: <span name>`.
 */
function slowestSpans(traces: readonly { name: string; service: string; start: number; end: number }[][], n: number): Record<string, number> {
  const byName = new Map<string, number[]>();
  for (const spans of traces) {
    const inTrace = new Map<string, number>();
    for (const s of spans) {
      const name = `${s.service}: ${s.name}`;
      inTrace.set(name, (inTrace.get(name) ?? 0) + (s.end - s.start));
    }
    for (const [name, ms] of inTrace) byName.set(name, [...(byName.get(name) ?? []), ms]);
  }
  const median = (v: readonly number[]) =>
    round(
      percentile(
        [...v].sort((a, b) => a - b),
        50,
      ),
      1,
    );
  const medians = [...byName].map(([name, v]) => [name, median(v)] as const);
  return Object.fromEntries(medians.sort((a, b) => b[1] - a[1]).slice(0, n));
}
