/**
 * Factory launcher for the demo and the end-to-end tests: local NATS and Redis when none is
 * configured, then the five services as separate processes, each with its own log file.
 * Not used in production: there, compose or Kubernetes start the services.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, existsSync, mkdirSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import path from "node:path";
import { seedFile, writeNatsConfig } from "@homeostat/core/nats-access";
import { serviceNames, type ServiceName } from "@homeostat/core/service";
import { tokenDigest } from "@homeostat/status-api";

export const repoRoot = path.resolve(import.meta.dirname, "..");
/** Where launched services keep Node's compile cache (NODE_COMPILE_CACHE), unless the environment names another. */
const compileCacheDir = path.join(repoRoot, "node_modules", ".cache", "node-compile-cache");

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export function portAnswers(port: number, host = "127.0.0.1", timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ port, host });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/** util-linux's setpriv, where there is one: it makes the kernel end a child when its parent dies. */
const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => spawnSync(p, ["--version"], { stdio: "ignore" }).status === 0);

/**
 * Spawns a process that ends with the launcher: SIGTERM from the kernel when the launcher dies,
 * however it dies (a SIGKILL included), so a demo or test that is killed leaves no servers or
 * services behind. A graceful stop still goes through stopChild.
 */
export function spawnSupervised(command: string, args: readonly string[], options: SpawnOptions): ChildProcess {
  return setpriv ? spawn(setpriv, ["--pdeathsig", "TERM", "--", command, ...args], options) : spawn(command, args, options);
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs: number, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ""}`);
}

/** Makes sure a Debian package's binary exists, installing it when running as root. */
function ensureBinary(bin: string, debianPackage: string): string {
  for (const dir of ["/usr/sbin", "/usr/bin", "/usr/local/bin"]) {
    if (spawnSync("test", ["-x", path.join(dir, bin)]).status === 0) return path.join(dir, bin);
  }
  if (process.getuid?.() !== 0) throw new Error(`${bin} is not installed; install the Debian package ${debianPackage}`);
  process.stderr.write(`installing ${debianPackage} …\n`);
  spawnSync("apt-get", ["update", "-qq"], { stdio: "ignore" });
  const r = spawnSync("apt-get", ["install", "-y", "-qq", debianPackage], { stdio: "ignore", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
  if (r.status !== 0) throw new Error(`could not install ${debianPackage}`);
  return ensureBinary(bin, debianPackage);
}

export type NatsServer = {
  url: string;
  /** Makes the server read its configuration again (users and permissions). */
  reload(): void;
  stop(): Promise<void>;
};

/**
 * Starts nats-server on loopback, on `port` (a restarted cluster node keeps its own) or a free one, with `configFile` (JetStream on, authorization:
 * and JetStream's store_dir: nats-access.ts writes it), its log in `logFile`.
 */
export async function startNatsServer(o: { configFile: string; logFile: string; port?: number }): Promise<NatsServer & { child: ChildProcess }> {
  const port = o.port ?? (await freePort());
  const child = spawnSupervised(ensureBinary("nats-server", "nats-server"), ["-c", o.configFile, "-a", "127.0.0.1", "-p", String(port), "-l", o.logFile], {
    stdio: "ignore",
  });
  const exited = new Promise<never>((_, reject) => child.once("exit", (code) => reject(new Error(`nats-server exited (${code}); see ${o.logFile}`))));
  exited.catch(() => {});
  await Promise.race([waitFor("nats-server", () => portAnswers(port), 10_000), exited]).catch((err: unknown) => {
    // A server that never answered must not outlive the attempt.
    child.kill("SIGKILL");
    throw err;
  });
  return { url: `nats://127.0.0.1:${port}`, child, reload: () => void child.kill("SIGHUP"), stop: () => stopChild(child) };
}

export type RedisServer = { url: string; port: number; child: ChildProcess; stop(): Promise<void> };

/** Starts redis-server on a free loopback port, nothing persisted (its working directory `dir`); resolves when it answers. */
export async function startRedisServer(dir: string): Promise<RedisServer> {
  const port = await freePort();
  const child = spawnSupervised(
    ensureBinary("redis-server", "redis-server"),
    ["--bind", "127.0.0.1", "--port", String(port), "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: "ignore" },
  );
  await waitFor("redis-server", () => portAnswers(port), 10_000).catch((err: unknown) => {
    child.kill("SIGKILL");
    throw err;
  });
  return { url: `redis://127.0.0.1:${port}`, port, child, stop: () => stopChild(child) };
}

export type LocalServers = {
  natsUrl: string;
  redisUrl: string;
  /** The services' NATS credentials (nats-access.ts): `<service>.nk` each; give startFactory this. */
  natsCredentials: string;
  /** Stops nats-server, waits `downMs`, starts it again on the same port and store (a NATS outage, for the chaos suite). */
  restartNats(downMs: number): Promise<void>;
  /** The server processes as they run now (a bench measures their CPU beside the services'). */
  processes(): { name: "nats-server" | "redis-server"; child: ChildProcess }[];
  stop(): Promise<void>;
};

/**
 * Starts a private nats-server (JetStream, authentication on: one identity per service of
 * `prefix`, with only its permissions) and redis-server on free loopback ports.
 */
export async function startLocalServers(dir: string, o: { prefix: string; region: string }): Promise<LocalServers> {
  mkdirSync(dir, { recursive: true });
  const natsCredentials = path.join(dir, "nats-credentials");
  const { configFile } = writeNatsConfig({ prefix: o.prefix, regions: [o.region], dir: natsCredentials, storeDir: path.join(dir, "nats") });
  const redisStarting = startRedisServer(dir);
  const logFile = path.join(dir, "nats-server.log");
  let nats = await startNatsServer({ configFile, logFile });
  const redis = await redisStarting;
  return {
    natsUrl: nats.url,
    redisUrl: redis.url,
    natsCredentials,
    restartNats: async (downMs) => {
      await nats.stop();
      await new Promise((r) => setTimeout(r, downMs));
      nats = await startNatsServer({ configFile, logFile, port: Number(new URL(nats.url).port) });
    },
    processes: () => [
      { name: "nats-server", child: nats.child },
      { name: "redis-server", child: redis.child },
    ],
    stop: async () => {
      await Promise.all([nats.stop(), redis.stop()]);
    },
  };
}

export type Factory = {
  ingestUrl: string;
  grpcAddr: string;
  /**
   * A status API token with the write role, made for this run (the queue service knows only
   * its digest): for enqueue and retry; reads need none on loopback.
   */
  grpcToken: string;
  env: Record<string, string>;
  processes: Map<ServiceName, ChildProcess>;
  /** Starts one service again (after a kill), with the same environment. */
  restart(name: ServiceName): Promise<void>;
  stop(): Promise<void>;
};

/**
 * How long a launched factory's ingest and status API may take to answer, unless the caller
 * says: 180 s, or HOMEOSTAT_FACTORY_READY_TIMEOUT_MS. Six services starting at once (each
 * type-stripping its TypeScript, connecting, ensuring its topology) take 10-20 s on an idle
 * 2-core machine and several times that at a CI load average of 20 and more; 30 s failed there.
 */
export function defaultReadyTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const given = env.HOMEOSTAT_FACTORY_READY_TIMEOUT_MS;
  if (given === undefined || given === "") return 180_000;
  const ms = Number(given);
  if (!Number.isInteger(ms) || ms < 1_000)
    throw new Error(`HOMEOSTAT_FACTORY_READY_TIMEOUT_MS: expected an integer number of milliseconds, at least 1000, got ${given}`);
  return ms;
}

/**
 * The Node options every service runs with: here for the processes a launcher starts, and as
 * NODE_OPTIONS in deploy/Dockerfile (test/deploy.test.ts holds the two equal).
 *
 * A young generation of at most 16 MiB per semi-space. Left to itself, V8 grows it to 64 MiB
 * under a service's allocation rate (messages, promises, spans: a work queue at thousands of
 * enqueues a second), and the larger one cost more than its fewer scavenges saved, mostly in page
 * faults, which cost about 11 µs each on this kind of machine (a virtual machine without hardware
 * page tables; 1 GB touched in 2.8 s). bench:queue, Homeostat alone, 10,000 enqueues,
 * alternated: 177-187 µs of CPU per enqueue and 73,000-80,000 page faults by default; 128-141 µs
 * and 41,000-42,500 with 16 MiB (8 MiB: 144-146 µs; 32 MiB: 161-169 µs).
 */
export const serviceNodeOptions = "--max-semi-space-size=16";

/** NODE_OPTIONS for a process that runs a service (or, in a bench, a service's code): `serviceNodeOptions`, then `own` (a profiler's; of a V8 option given twice, the last counts). */
export function withServiceNodeOptions(own: string | undefined): string {
  if (!own) return serviceNodeOptions;
  return own.includes(serviceNodeOptions) ? own : `${serviceNodeOptions} ${own}`;
}

/**
 * Starts the five services as separate processes, each with its own NATS identity (the seed
 * `<service>.nk` in `natsCredentials`, as startLocalServers or `pnpm nats-config` write them);
 * resolves when ingest and the status API answer, within `readyTimeoutMs` (defaultReadyTimeoutMs:
 * 180 s, or HOMEOSTAT_FACTORY_READY_TIMEOUT_MS); stops what it started when they do not.
 */
export async function startFactory(o: {
  env: Record<string, string>;
  natsCredentials: string;
  logDir: string;
  only?: readonly ServiceName[];
  /** How long ingest and the status API may take to answer (default: defaultReadyTimeoutMs). */
  readyTimeoutMs?: number;
}): Promise<Factory> {
  const readyMs = o.readyTimeoutMs ?? defaultReadyTimeoutMs();
  mkdirSync(o.logDir, { recursive: true });
  const ingestPort = await freePort();
  const grpcPort = await freePort();
  const grpcToken = randomBytes(32).toString("base64url");
  const env: Record<string, string> = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? "/tmp",
    HOMEOSTAT_INGEST_PORT: String(ingestPort),
    HOMEOSTAT_GRPC_ADDR: `127.0.0.1:${grpcPort}`,
    HOMEOSTAT_GRPC_TOKENS: `launcher:write:${tokenDigest(grpcToken)}`,
    // Node's on-disk compile cache (type-stripped TypeScript and V8 code): a service's start-up
    // then costs about half the CPU, which counts when a launcher starts fifteen at once.
    NODE_COMPILE_CACHE: process.env.NODE_COMPILE_CACHE ?? compileCacheDir,
    ...o.env,
    NODE_OPTIONS: withServiceNodeOptions(o.env.NODE_OPTIONS),
  };
  for (const name of o.only ?? serviceNames) {
    if (!existsSync(seedFile(o.natsCredentials, name)))
      throw new Error(`no NATS credentials for ${name} in ${o.natsCredentials} (pnpm nats-config writes them)`);
  }
  const processes = new Map<ServiceName, ChildProcess>();
  const start = (name: ServiceName) => {
    const log = createWriteStream(path.join(o.logDir, `${name}.log`), { flags: "a" });
    const child = spawnSupervised(process.execPath, [path.join(repoRoot, "services", name, "src", "main.ts")], {
      env: { ...env, NATS_NKEY_SEED_FILE: seedFile(o.natsCredentials, name) },
      stdio: ["ignore", "pipe", "pipe"],
      cwd: repoRoot,
    });
    if (!child.stdout || !child.stderr) throw new Error(`internal: ${name} was started without pipes for its output`);
    child.stdout.pipe(log, { end: false });
    child.stderr.pipe(log, { end: false });
    processes.set(name, child);
  };
  for (const name of o.only ?? serviceNames) start(name);
  const factory: Factory = {
    ingestUrl: `http://127.0.0.1:${ingestPort}`,
    grpcAddr: `127.0.0.1:${grpcPort}`,
    grpcToken,
    env,
    processes,
    restart: async (name) => {
      const old = processes.get(name);
      if (old && old.exitCode === null && old.signalCode === null) await stopChild(old);
      start(name);
    },
    stop: async () => {
      // Not `.map(stopChild)`: map's index would be taken as the grace, and every service SIGKILLed
      // a few milliseconds after its SIGTERM (no graceful stop, no --cpu-prof profile written).
      await Promise.all([...processes.values()].map((child) => stopChild(child)));
    },
  };
  // A service that exits while the factory comes up (a port taken meanwhile by another process, a
  // setting it refuses) ends the wait at once, named, rather than after the whole timeout.
  let exited: Error | undefined;
  const exitListeners = [...processes].map(([name, child]) => {
    const listener = (code: number | null, signal: NodeJS.Signals | null) =>
      void (exited ??= new Error(`${name} exited (${code ?? signal}) before the factory was ready`));
    child.once("exit", listener);
    return () => child.off("exit", listener);
  });
  /** Waits for `probe`, or for a service to exit (then throws that). */
  const until = async (what: string, probe: () => Promise<boolean>) => {
    await waitFor(what, async () => exited !== undefined || (await probe()), readyMs);
    if (exited) throw exited;
  };
  try {
    if (processes.has("ingest")) await until("ingest to be ready", async () => (await fetch(`${factory.ingestUrl}/readyz`)).ok);
    if (processes.has("queue")) await until("the status API", () => portAnswers(grpcPort));
  } catch (err) {
    await factory.stop();
    throw new Error(`${(err as Error).message} (service logs in ${o.logDir})`);
  } finally {
    for (const remove of exitListeners) remove();
  }
  return factory;
}

/**
 * SIGTERM, then SIGKILL after `graceMs`. The default outlasts a service's own stop deadline
 * (runService: 20 s), so that a service whose stop hangs logs what it was waiting for and exits
 * by itself rather than being killed without a word.
 */
export async function stopChild(child: ChildProcess, graceMs = 25_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}
