/**
 * Three regions on one machine (deploy/README.md, "Regions"): a nats-server per region, clustered
 * on free loopback ports with JetStream (every stream and bucket R3, one replica per region), a
 * redis-server per region for its read model, and each region's five services against its own
 * node and Redis, its ingest and gRPC status API on ports of their own.
 *
 *   scripts/regions up [--regions N] [--catalog DIR]   start, print where everything listens, run until stopped
 *   scripts/regions status [--json]                    what the running launcher started, and how each region is doing
 *   scripts/regions down                               stop it (and everything it started)
 *
 * `up` stays in the foreground (Ctrl-C, SIGTERM or `down` stop it): what it starts ends with it,
 * however it ends (factory.ts spawnSupervised). It writes where everything listens to
 * .homeostat/regions/regions.json, which `status` and `down` read. startRegions is what the demo
 * (`scripts/demo --regions 3`), the regions test and bench:regions start regions with.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { getQueueStats, listKeyStatuses, statusClient } from "@homeostat/status-api";
import { ofRegion, startCluster, type Cluster } from "./cluster.ts";
import { portAnswers, repoRoot, startFactory, startRedisServer, type Factory, type RedisServer } from "./factory.ts";

export const regionNames = ["a", "b", "c", "d", "e"] as const;
const services = ["ingest", "queue", "reconciler", "builder", "signer"] as const;

export type Regions = {
  cluster: Cluster;
  regions: readonly string[];
  /** The running services of each region (replaced when a region is started again). */
  factories: Map<string, Factory>;
  /** Each region's own Redis, when the launcher started them (not when a shared REDIS_URL was given). */
  redis: Map<string, RedisServer>;
  /** The environment a region's services run with. */
  envOf(region: string): Record<string, string>;
  /** Starts (or starts again, after a kill) a region's five services. */
  startRegion(region: string): Promise<Factory>;
  /** Loses a region at once: SIGKILLs its node, its services and everything they started (build steps); returns when. */
  kill(region: string): number;
  stop(): Promise<void>;
};

export type RegionsOptions = {
  /** Where the cluster's store, credentials and the services' logs go. */
  dir: string;
  prefix: string;
  /** The fabric's name: the region part of every subject (HOMEOSTAT_FABRIC). */
  fabric: string;
  regions: readonly string[];
  /** Settings every region's services get (catalog, artifact store, lease, …). */
  env: Record<string, string>;
  /** One Redis for every region's read model (each region's keys carry its name); default: a redis-server per region. */
  redisUrl?: string;
  /** How long a region's ingest and status API may take to answer (startFactory's readyTimeoutMs). */
  readyTimeoutMs?: number;
};

/**
 * Starts the cluster, the Redis servers and every region's services: the first region alone
 * (its queue makes the topology, its builder and signer their keys), then the others at once.
 */
export async function startRegions(o: RegionsOptions): Promise<Regions> {
  mkdirSync(o.dir, { recursive: true });
  const cluster = await startCluster({ dir: path.join(o.dir, "nats"), prefix: o.prefix, fabric: o.fabric, regions: o.regions });
  const redis = new Map<string, RedisServer>();
  const factories = new Map<string, Factory>();
  const stop = async () => {
    await Promise.all([...factories.values()].map((f) => f.stop()));
    await Promise.all([cluster.stop(), ...[...redis.values()].map((r) => r.stop())]);
  };
  try {
    if (!o.redisUrl) {
      await Promise.all(
        o.regions.map(async (region) => {
          const dir = path.join(o.dir, `redis-${region}`);
          mkdirSync(dir, { recursive: true });
          redis.set(region, await startRedisServer(dir));
        }),
      );
    }
    const envOf = (region: string): Record<string, string> => ({
      NATS_URL: ofRegion(cluster.nodes, region).url,
      REDIS_URL: o.redisUrl ?? ofRegion(redis, region).url,
      HOMEOSTAT_PREFIX: o.prefix,
      HOMEOSTAT_REGION: region,
      HOMEOSTAT_FABRIC: o.fabric,
      HOMEOSTAT_JS_REPLICAS: String(Math.min(3, o.regions.length)),
      ...o.env,
    });
    const startRegion = async (region: string) => {
      const f = await startFactory({
        env: envOf(region),
        natsCredentials: cluster.credentials,
        logDir: path.join(o.dir, `logs-${region}`),
        only: services,
        ...(o.readyTimeoutMs ? { readyTimeoutMs: o.readyTimeoutMs } : {}),
      });
      factories.set(region, f);
      return f;
    };
    const [first, ...others] = o.regions;
    if (first === undefined) throw new Error("no regions to start");
    await startRegion(first);
    await Promise.all(others.map(startRegion));
    const kill = (region: string) => {
      const roots = [ofRegion(cluster.nodes, region).server?.child.pid, ...[...(factories.get(region)?.processes.values() ?? [])].map((c) => c.pid)];
      killTree(roots.filter((pid) => pid !== undefined));
      return Date.now();
    };
    return { cluster, regions: o.regions, factories, redis, envOf, startRegion, kill, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Every process under `roots` (found through /proc), the roots included. */
function processTree(roots: readonly number[]): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // comm may hold spaces and parentheses: the fields after its closing one are what count.
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // Gone meanwhile.
    }
  }
  const found: number[] = [];
  const todo = [...roots];
  for (let pid = todo.pop(); pid !== undefined; pid = todo.pop()) {
    found.push(pid);
    todo.push(...(children.get(pid) ?? []));
  }
  return found;
}

/** SIGKILLs `roots` and everything under them at once, as a lost machine ends them. */
function killTree(roots: readonly number[]): void {
  for (const pid of processTree(roots)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }
}

/** What `up` writes for `status` and `down`. */
type State = {
  pid: number;
  startedAt: string;
  dir: string;
  regions: { region: string; nats: string; redis: string; ingest: string; grpc: string; logs: string; grpcTokenFile: string }[];
};
const regionFields = ["region", "nats", "redis", "ingest", "grpc", "logs", "grpcTokenFile"] as const;

/** The state file, checked field by field: another version's or a damaged file is refused with its path. */
function parseState(text: string): State {
  const v = JSON.parse(text) as Partial<State>;
  const ok =
    Number.isInteger(v.pid) &&
    typeof v.startedAt === "string" &&
    typeof v.dir === "string" &&
    Array.isArray(v.regions) &&
    v.regions.every((r) => regionFields.every((f) => typeof (r as Record<string, unknown>)[f] === "string"));
  if (!ok) throw new Error(`${stateFile} is not a state file of this launcher; remove it`);
  return v as State;
}

const home = path.join(repoRoot, ".homeostat", "regions");
const stateFile = path.join(home, "regions.json");
const usage = `Usage: scripts/regions up [--regions N] [--catalog DIR] | status [--json] | down
  up      start N regions (default 3, from 2 to ${regionNames.length}: a JetStream cluster needs routes) on loopback and run until stopped (Ctrl-C, SIGTERM, or scripts/regions down)
  status  where the running regions listen, and how each is doing (keys Ready, queue, read-model freshness)
  down    stop the running regions
State: ${path.relative(process.cwd(), stateFile)}; logs and servers under ${path.relative(process.cwd(), home)}/
`;

function readState(): State | undefined {
  if (!existsSync(stateFile)) return undefined;
  return parseState(readFileSync(stateFile, "utf8"));
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function up(count: number, catalog: string): Promise<void> {
  const running = readState();
  if (running && alive(running.pid)) throw new Error(`regions are already up (launcher pid ${running.pid}); scripts/regions down first`);
  rmSync(home, { recursive: true, force: true });
  mkdirSync(home, { recursive: true });
  const regions = regionNames.slice(0, count);
  process.stdout.write(`▸ starting ${count} regions (${regions.join(", ")}): nats-server, redis-server and five services each\n`);
  const started = await startRegions({
    dir: home,
    prefix: "hs",
    fabric: "fabric",
    regions,
    env: { HOMEOSTAT_CATALOG: catalog, HOMEOSTAT_DATA: path.join(home, "data") },
  });
  const state: State = {
    pid: process.pid,
    startedAt: new Date().toISOString(),
    dir: home,
    regions: regions.map((region) => {
      const f = ofRegion(started.factories, region);
      const grpcTokenFile = path.join(home, `grpc-token-${region}`);
      writeFileSync(grpcTokenFile, `${f.grpcToken}\n`, { mode: 0o600 });
      return {
        region,
        nats: ofRegion(started.cluster.nodes, region).url,
        redis: ofRegion(started.redis, region).url,
        ingest: f.ingestUrl,
        grpc: f.grpcAddr,
        logs: path.join(home, `logs-${region}`),
        grpcTokenFile,
      };
    }),
  };
  writeFileSync(stateFile, `${JSON.stringify(state, null, 2)}\n`);
  printState(state);
  process.stdout.write(`artifacts (shared by the regions): ${path.join(home, "data")}\nup; Ctrl-C, SIGTERM or scripts/regions down stops every region\n`);
  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      if (stopping) return;
      stopping = true;
      process.stdout.write(`${signal}: stopping the regions\n`);
      void started.stop().then(() => {
        rmSync(stateFile, { force: true });
        process.exit(0);
      });
    });
  }
}

function printState(state: State): void {
  const rows = [["REGION", "NATS", "REDIS", "INGEST", "GRPC", "LOGS"], ...state.regions.map((r) => [r.region, r.nats, r.redis, r.ingest, r.grpc, r.logs])];
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0)));
  for (const row of rows) process.stdout.write(`${row.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ")}\n`);
}

async function status(json: boolean): Promise<number> {
  const state = readState();
  if (!state || !alive(state.pid)) {
    process.stdout.write(json ? `${JSON.stringify({ up: false })}\n` : "regions are not up (scripts/regions up)\n");
    return 3;
  }
  const regions = await Promise.all(
    state.regions.map(async (r) => {
      const client = statusClient(r.grpc);
      try {
        const [nats, redis] = await Promise.all([portAnswers(Number(new URL(r.nats).port)), portAnswers(Number(new URL(r.redis).port))]);
        const ingest = await fetch(`${r.ingest}/readyz`).then(
          (res) => res.ok,
          () => false,
        );
        const keys = await listKeyStatuses(client, { pageSize: 1000 }, { deadlineMs: 5_000 }).catch(() => undefined);
        const queue = await getQueueStats(client, { deadlineMs: 5_000 }).catch(() => undefined);
        return {
          ...r,
          natsUp: nats,
          redisUp: redis,
          ingestReady: ingest,
          keys: keys?.items.length,
          ready: keys?.items.filter((s) => s.phase === "Ready").length,
          running: queue?.running,
          queued: queue ? Object.values(queue.depth).reduce((a, b) => a + b, 0) : undefined,
          freshness: keys?.freshness,
        };
      } finally {
        client.close();
      }
    }),
  );
  if (json) {
    process.stdout.write(`${JSON.stringify({ up: true, pid: state.pid, startedAt: state.startedAt, regions }, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(`launcher pid ${state.pid}, up since ${state.startedAt}\n`);
  printState(state);
  for (const r of regions) {
    const fresh =
      r.freshness?.ageMs !== undefined
        ? `read model ${(r.freshness.ageMs / 1000).toFixed(1)} s old at revision ${r.freshness.observedRevision}`
        : "read model not confirmed current";
    process.stdout.write(
      `region ${r.region}: nats ${r.natsUp ? "up" : "DOWN"}, redis ${r.redisUp ? "up" : "DOWN"}, ingest ${r.ingestReady ? "ready" : "NOT READY"}, ` +
        (r.keys === undefined
          ? "status API NOT ANSWERING"
          : `${r.ready}/${r.keys} keys Ready, ${r.queued ?? "?"} queued, ${r.running ?? "?"} running, ${fresh}`) +
        "\n",
    );
  }
  return 0;
}

async function down(): Promise<number> {
  const state = readState();
  if (!state || !alive(state.pid)) {
    process.stdout.write("regions are not up\n");
    rmSync(stateFile, { force: true });
    return 0;
  }
  process.kill(state.pid, "SIGTERM");
  for (let i = 0; i < 600 && alive(state.pid); i++) await new Promise((r) => setTimeout(r, 100));
  if (alive(state.pid)) {
    process.stderr.write(`the launcher (pid ${state.pid}) has not stopped after 60 s\n`);
    return 1;
  }
  process.stdout.write("regions stopped\n");
  return 0;
}

if (import.meta.main) {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        regions: { type: "string", default: "3" },
        catalog: { type: "string", default: path.join(repoRoot, "examples", "catalog") },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (err) {
    process.stderr.write(`regions: ${(err as Error).message}\n${usage}`);
    process.exit(64);
  }
  const [command, ...rest] = parsed.positionals;
  const count = Number(parsed.values.regions);
  if (parsed.values.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  if (rest.length > 0 || !["up", "status", "down"].includes(command ?? "") || !Number.isInteger(count) || count < 2 || count > regionNames.length) {
    process.stderr.write(usage);
    process.exit(64);
  }
  try {
    if (command === "up") await up(count, path.resolve(parsed.values.catalog));
    else process.exit(command === "status" ? await status(parsed.values.json) : await down());
  } catch (err) {
    process.stderr.write(`regions: ${(err as Error).message}\n`);
    process.exit(1);
  }
}
