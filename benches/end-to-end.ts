/**
 * What the end-to-end benches (intake, storm) share: the factory they measure, the services
 * (scripts/factory.ts) on a private nats-server and redis-server with nothing of their own in
 * the way of what a bench sends (no periodic resync: a bench makes its own events; ingest's rate
 * limits far above any bench's rate); its teardown; and their command lines.
 */
import { rm } from "node:fs/promises";
import path from "node:path";
import { connectNats, loadConfig, seedFile, type Nats, type ServiceName } from "@homeostat/core";
import { startFactory, startLocalServers, type Factory, type LocalServers } from "../scripts/factory.ts";

export type BenchFactory = {
  servers: LocalServers;
  factory: Factory;
  /** A connection as `service` (its identity and permissions), named `name`; the caller closes it. */
  connectAs(service: ServiceName, name: string): Promise<Nats>;
};

/**
 * Starts the servers under `<dir>/servers` and the services with prefix `prefix` in region
 * local, their data in `<dir>/data` and logs in `<dir>/logs`, on the catalog `catalogDir`, `env`
 * on top; pushes what stops each onto `stops` as soon as it runs (the caller stops them in
 * reverse).
 */
export async function startBenchFactory(
  dir: string,
  o: { prefix: string; catalogDir: string; env: Record<string, string> },
  stops: (() => Promise<void>)[],
): Promise<BenchFactory> {
  const servers = await startLocalServers(path.join(dir, "servers"), { prefix: o.prefix, region: "local" });
  stops.push(() => servers.stop());
  const factory = await startFactory({
    env: {
      NATS_URL: servers.natsUrl,
      REDIS_URL: servers.redisUrl,
      HOMEOSTAT_PREFIX: o.prefix,
      HOMEOSTAT_REGION: "local",
      HOMEOSTAT_DATA: path.join(dir, "data"),
      HOMEOSTAT_CATALOG: o.catalogDir,
      HOMEOSTAT_RESYNC_MS: String(7 * 24 * 3_600_000),
      HOMEOSTAT_INGEST_RATE_LIMIT: "100000000",
      HOMEOSTAT_INGEST_ADDRESS_RATE_LIMIT: "100000000",
      ...o.env,
    },
    natsCredentials: servers.natsCredentials,
    logDir: path.join(dir, "logs"),
  });
  stops.push(() => factory.stop());
  return {
    servers,
    factory,
    connectAs: (service, name) =>
      connectNats(loadConfig({ ...factory.env, NATS_NKEY_SEED_FILE: seedFile(servers.natsCredentials, service) }), name, { identity: service }),
  };
}

/** Runs `stops` last first (a failing one does not keep the rest from running), then removes `dir` unless `keep`. */
export async function tearDown(stops: (() => Promise<void>)[], dir: string, keep: boolean): Promise<void> {
  for (const stop of stops.reverse()) await stop().catch(() => {});
  if (!keep) await rm(dir, { recursive: true, force: true });
}

/**
 * A bench's command line, read by `read` (node:util parseArgs, integerOption): `--help` or `-h`
 * prints `usage` and exits 0; whatever `read` refuses (an unknown option, a missing value, an
 * integer out of range) is named with the usage on stderr, exit 64 (EX_USAGE), not a stack trace.
 */
export function commandLine<T>(bench: string, usage: string, read: () => T): T {
  const args = process.argv.slice(2);
  if (args.includes("--help") || args.includes("-h")) {
    process.stdout.write(`${usage}\n`);
    process.exit(0);
  }
  try {
    return read();
  } catch (err) {
    process.stderr.write(`${bench}: ${(err as Error).message}\n${usage}\n`);
    process.exit(64);
  }
}

/** The integer `value` of option `--name`, which must lie in [min, max]. */
export function integerOption(name: string, value: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`--${name}: expected an integer in [${min}, ${max}], got ${value}`);
  return n;
}
