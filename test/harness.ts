/**
 * Test harness: every test gets its own prefix (so its own streams, buckets and Redis keys) and
 * removes exactly what it created, never anything else.
 *
 * NATS runs with authentication on, as everywhere: each test process starts its own
 * nats-server (loopback, a free port, JetStream in a temporary directory) at its first
 * testEnv. Tests set up as `admin` (`env` carries its seed, so child processes given `env`
 * connect as admin too); `natsCredentials()` adds the five service identities of the test's
 * prefix to the server and returns their directory (for startFactory), and `connectAs(service)`
 * connects as one of them, with exactly that service's permissions (nats-access.ts).
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import {
  bucketNames,
  connectNats,
  ensureTopology,
  eventLedgerNames,
  loadConfig,
  renderServerConfig,
  seedFile,
  stages,
  writeNatsConfig,
  type Buckets,
  type Config,
  type Nats,
  type NatsUser,
  type ServiceName,
} from "@homeostat/core";
import { getKeyStatus, statusClient, type StatusClient } from "@homeostat/status-api";
import { packAppTarball } from "../scripts/app-tarball.ts";
import { startFactory, startNatsServer, waitFor, type Factory, type NatsServer } from "../scripts/factory.ts";

export const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

export type TestEnv = {
  prefix: string;
  dir: string;
  config: Config;
  env: Record<string, string>;
  /** Connected as admin. */
  nats: Nats;
  buckets: Buckets;
  redis: Redis;
  /** The services' credentials for this prefix (`<service>.nk`), admitted by the server once this resolves. */
  natsCredentials(): Promise<string>;
  /** A connection as `service`, with only its permissions. */
  connectAs(service: ServiceName): Promise<Nats>;
  cleanup(): Promise<void>;
};

type TestNatsServer = NatsServer & { adminSeed: string; admit(users: readonly NatsUser[], probe: { config: Config; identity: ServiceName }): Promise<void> };

let server: Promise<TestNatsServer> | undefined;

/** This process's nats-server, started on first use and stopped (its files removed) when the process exits. */
function natsServer(): Promise<TestNatsServer> {
  server ??= (async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-nats-"));
    const storeDir = path.join(dir, "jetstream");
    const configFile = path.join(dir, "nats-server.conf");
    const { users: adminUsers } = writeNatsConfig({ prefix: "tests", regions: ["local"], dir: path.join(dir, "admin"), identities: ["admin"], storeDir });
    const users: NatsUser[] = [...adminUsers];
    const render = () => writeFileSync(configFile, renderServerConfig({ prefix: "tests", regions: ["local"], storeDir, tls: undefined, users }));
    render();
    const s = await startNatsServer({ configFile, logFile: path.join(dir, "nats-server.log") }).catch((err: unknown) => {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    });
    s.child.unref();
    const stopNow = () => {
      s.child.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    };
    process.once("exit", stopNow);
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      process.once(signal, () => {
        stopNow();
        process.kill(process.pid, signal);
      });
    }
    return {
      ...s,
      adminSeed: seedFile(path.join(dir, "admin"), "admin"),
      /** Adds `more` to the users; resolves once `probe` (the configuration of one of them) connects. */
      admit: async (more, probe) => {
        users.push(...more);
        render();
        s.reload();
        // The reload is asynchronous: wait until the last identity added is let in.
        await waitFor(
          "nats-server to admit the new identities",
          async () => {
            await (await connectNats(probe.config, "test-probe", { identity: probe.identity, reconnect: false })).nc.close();
            return true;
          },
          10_000,
          50,
        );
      },
    };
  })();
  return server;
}

/** Waits until `queue` has nothing queued and nothing running (retries and dead letters aside). */
export function queueIdle(queue: { stats(): Promise<{ running: number; depth: Record<string, number> }> }, timeoutMs: number): Promise<true> {
  return waitFor(
    "the queue to be idle",
    async () => {
      const s = await queue.stats();
      return s.running === 0 && Object.values(s.depth).every((d) => d === 0);
    },
    timeoutMs,
  );
}

export async function testEnv(extra: Record<string, string> = {}): Promise<TestEnv> {
  const s = await natsServer();
  const prefix = `t${randomBytes(5).toString("hex")}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-test-"));
  // Searchable by others (not readable): a builder running as root runs build steps as
  // HOMEOSTAT_BUILD_UID, which must reach the workspaces under <dir>/data/work.
  chmodSync(dir, 0o711);
  const env = {
    NATS_URL: s.url,
    NATS_NKEY_SEED_FILE: s.adminSeed,
    REDIS_URL: redisUrl,
    HOMEOSTAT_PREFIX: prefix,
    HOMEOSTAT_DATA: path.join(dir, "data"),
    ...extra,
  };
  const config = loadConfig(env);
  const nats = await connectNats(config, `test-${prefix}`);
  const buckets = await ensureTopology(nats, config);
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
  let credentials: Promise<string> | undefined;
  const natsCredentials = () => {
    credentials ??= (async () => {
      const credentialsDir = path.join(dir, "nats-credentials");
      const { users } = writeNatsConfig({ prefix, regions: [config.region], dir: credentialsDir, storeDir: "unused" });
      const probe = users.at(-1)!.identity as ServiceName;
      await s.admit(users, { config: loadConfig({ ...env, NATS_NKEY_SEED_FILE: seedFile(credentialsDir, probe) }), identity: probe });
      return credentialsDir;
    })();
    return credentials;
  };
  const connections: Nats[] = [];
  return {
    prefix,
    dir,
    config,
    env,
    nats,
    buckets,
    redis,
    natsCredentials,
    connectAs: async (service) => {
      const c = await connectNats(loadConfig({ ...env, NATS_NKEY_SEED_FILE: seedFile(await natsCredentials(), service) }), `test-${prefix}-${service}`, {
        identity: service,
      });
      connections.push(c);
      return c;
    },
    cleanup: async () => {
      await Promise.all(connections.map((c) => c.nc.close()));
      for (const stage of stages) await nats.jsm.streams.delete(nats.topology.stream(stage)).catch(() => {});
      for (const b of bucketNames) await nats.jsm.streams.delete(`KV_${nats.topology.bucket(b)}`).catch(() => {});
      await nats.jsm.streams.delete(eventLedgerNames(nats.topology).stream).catch(() => {});
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
      await nats.nc.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A factory of a test, with a client of its status API; stop() closes the client too. */
export type TestFactory = Factory & { client: StatusClient };

/**
 * The services (`only`, else all six) as processes on `t`'s NATS and Redis with `env` over
 * `t.env`, each connecting as itself with only its own permissions (nats-access.ts), their logs
 * in `<t.dir>/logs`.
 */
export async function startTestFactory(t: TestEnv, env: Record<string, string>, o: { only?: readonly ServiceName[] } = {}): Promise<TestFactory> {
  const factory = await startFactory({
    env: { ...t.env, ...env },
    natsCredentials: await t.natsCredentials(),
    logDir: path.join(t.dir, "logs"),
    only: o.only,
  });
  const client = statusClient(factory.grpcAddr);
  return {
    ...factory,
    client,
    stop: async () => {
      client.close();
      await factory.stop();
    },
  };
}

/** `package/<name>`'s status once it is Ready at `version`, built from the inputs its status says it desires. */
export function packageReadyAt(client: StatusClient, name: string, version: string, timeoutMs: number) {
  return waitFor(
    `package/${name} to be Ready at ${version}`,
    async () => {
      const s = await getKeyStatus(client, `package/${name}`);
      return s.phase === "Ready" && s.actual?.version === version && s.actual.inputDigest === s.desiredInputDigest ? s : undefined;
    },
    timeoutMs,
    250,
  );
}

/** The one source of a packages factory: a small tarball holding `run.sh`. */
export type AppSource = { url: string; sha256: string };

/** A package recipe at 1.0.0 built from `source` by `steps`, with build dependencies `deps`. */
export function sourceRecipe(name: string, deps: readonly string[], steps: readonly string[], source: AppSource): string {
  return (
    `name: ${name}\nversion: "1.0.0"\nlicense: MIT\nsource: { url: "${source.url}", sha256: "${source.sha256}" }\n` +
    `build:\n  steps:\n${steps.map((s) => `    - ${JSON.stringify(s)}`).join("\n")}\ndependencies: { build: [${deps.join(", ")}], runtime: [] }\n`
  );
}

/** A factory of the five services on a catalog of packages only, whose recipes `recipes(source)` gives by name; `env` adds to their environment. */
export type PackagesFactory = { t: TestEnv; factory: TestFactory; source: AppSource; stop(): Promise<void> };

export async function startPackagesFactory(recipes: (source: AppSource) => Record<string, string>, env: Record<string, string> = {}): Promise<PackagesFactory> {
  const t = await testEnv();
  const catalogDir = path.join(t.dir, "catalog");
  mkdirSync(path.join(catalogDir, "packages"), { recursive: true });
  const source = packAppTarball(path.join(t.dir, "app.tar.gz"), { "run.sh": { content: "#!/bin/sh\necho ok\n", mode: 0o755 } });
  for (const [name, recipe] of Object.entries(recipes(source))) writeFileSync(path.join(catalogDir, "packages", `${name}.yaml`), recipe);
  const factory = await startTestFactory(t, { ...env, HOMEOSTAT_CATALOG: catalogDir }, { only: ["ingest", "queue", "reconciler", "builder", "signer"] }).catch(
    async (e: unknown) => {
      await t.cleanup();
      throw e;
    },
  );
  return {
    t,
    factory,
    source,
    stop: async () => {
      await factory.stop();
      await t.cleanup();
    },
  };
}
