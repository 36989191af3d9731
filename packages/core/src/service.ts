/**
 * Service: the start-up and shutdown every Homeostat process shares — config, telemetry,
 * NATS with the topology ensured, health (endpoint and heartbeats), and a graceful stop on
 * SIGTERM/SIGINT.
 *
 * Start-up never ends the process on the environment: connecting to NATS, the topology and
 * the service's own `main` are each tried again with capped, jittered backoff (failure.ts
 * retryUntilItWorks) until they work or the process is asked to stop, each failure logged and
 * shown by /readyz and the heartbeat. Only invalid configuration (a ConfigError anywhere in the
 * cause chain) exits, with 78 (EX_CONFIG): retrying cannot fix it.
 *
 * `main` receives a context and returns a stop function; a second signal, or a stop that
 * takes longer than the grace period, ends the process at once. A `main` that throws is run
 * again after the backoff, so it should throw before it starts anything long-lived.
 */
import { ConfigError, loadConfig, type Config } from "./config.ts";
import { causeChain, retryUntilItWorks } from "./failure.ts";
import { ServiceHealth } from "./health.ts";
import { serveHealth, type HealthEndpoint } from "./health-http.ts";
import { instanceId, runningVersion, startHeartbeat, type HeartbeatWriter } from "./heartbeat.ts";
import { createLogger, errorMessage, type Logger } from "./log.ts";
import { startTelemetry } from "./telemetry.ts";
import { awaitStreams, topologyOwner } from "./nats-access.ts";
import { bindBuckets, connectNats, ensureTopology, type Buckets, type Nats } from "./topology.ts";

export type ServiceContext = {
  name: string;
  config: Config;
  log: Logger;
  nats: Nats;
  buckets: Buckets;
  /** Aborted when the process is asked to stop. */
  signal: AbortSignal;
  /** This instance's health: add readiness checks and heartbeat details; record errors an operator should see. */
  health: ServiceHealth;
  /**
   * Runs a start-up step of `main` until it works (a key not writable on a full disk, a volume
   * not mounted yet), logging each failure and showing it on /readyz and in the heartbeat.
   */
  retry<T>(what: string, step: () => Promise<T>): Promise<T>;
};

export const serviceNames = ["ingest", "queue", "reconciler", "builder", "signer", "agent"] as const;
export type ServiceName = (typeof serviceNames)[number];

/** An error that retrying cannot fix: invalid configuration. */
export function isConfigFailure(err: unknown): boolean {
  return causeChain(err).some((e) => e instanceof ConfigError);
}

export async function runService(name: ServiceName, main: (ctx: ServiceContext) => Promise<() => Promise<void>>, graceMs = 20_000): Promise<void> {
  const log = createLogger(name);
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    log.error(errorMessage(err));
    process.exit(78); // EX_CONFIG
  }
  const telemetry = startTelemetry(name, config.telemetry);
  const health = new ServiceHealth();
  process.on("unhandledRejection", (err) => {
    log.error("unhandled rejection", { reason: errorMessage(err) });
    health.failed(`unhandled rejection: ${errorMessage(err)}`);
  });

  const abort = new AbortController();
  let stopping = false;
  let stop: (() => Promise<void>) | undefined;
  let nats: Nats | undefined;
  let heartbeat: HeartbeatWriter | undefined;
  let endpoint: HealthEndpoint | undefined;
  const shutdown = async (why: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    log.info("stopping", { why });
    health.stopping();
    abort.abort();
    // What the stop is waiting for, named when it takes too long.
    let step = "the last heartbeat";
    const timer = setTimeout(() => {
      log.error("stop took too long; exiting", { waitingFor: step, graceMs });
      process.exit(1);
    }, graceMs);
    timer.unref();
    try {
      await heartbeat?.beat();
      step = "the service's own stop";
      await stop?.();
      step = "the heartbeat's removal";
      await heartbeat?.stop();
      step = "NATS to drain";
      await nats?.nc.drain();
    } catch (err) {
      log.warn("error while stopping", { reason: errorMessage(err), step });
    }
    step = "the health endpoint to close";
    await endpoint?.close();
    step = "telemetry to flush";
    await telemetry.shutdown().catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  // Served before anything else starts, so that a probe sees why the start-up is taking long.
  if (config.health.port !== undefined) {
    try {
      endpoint = await serveHealth(health, { host: config.health.host, port: config.health.port });
      log.info("health endpoint listening", { url: `http://${config.health.host}:${endpoint.port}`, paths: ["/healthz", "/readyz"] });
    } catch (err) {
      log.error(`the health endpoint cannot listen on ${config.health.host}:${config.health.port}: ${errorMessage(err)}`);
      process.exit(78);
    }
  }

  const retry = <T>(what: string, step: () => Promise<T>): Promise<T> => {
    health.starting(what);
    return retryUntilItWorks(what, step, {
      log,
      signal: abort.signal,
      maxDelayMs: config.startupBackoffMaxMs,
      isFatal: isConfigFailure,
      onFailure: (f) => health.failed(`${what}: ${f.reason}`, f.kind),
    });
  };

  try {
    const n = (nats = await retry("connecting to NATS", () => connectNats(config, `homeostat-${name}`, { identity: name })));
    watchConnection(n, health, log);
    // Only the topology owner may create streams and buckets; the others wait for them.
    const buckets = await retry("waiting for the topology", async () => {
      if (name === topologyOwner) return ensureTopology(n, config, log);
      await awaitStreams(n, name, { log, signal: abort.signal });
      return bindBuckets(n);
    });
    const services = await retry("opening the services bucket", () => n.kvm.open(n.topology.bucket("services"), { allow_direct: true }));
    heartbeat = startHeartbeat(
      services,
      { service: name, instance: instanceId(), version: runningVersion(), region: config.region, startedAt: new Date().toISOString() },
      health,
      { intervalMs: config.health.heartbeatMs, log },
    );
    stop = await retry("starting", async () => {
      // A main that fails is run again: the loops its failed attempt started (they take `signal`) end with it.
      const attempt = new AbortController();
      try {
        return await main({ name, config, log, nats: n, buckets, signal: AbortSignal.any([abort.signal, attempt.signal]), health, retry });
      } catch (err) {
        attempt.abort();
        throw err;
      }
    });
    health.started();
    void heartbeat.beat();
    log.info("started", { region: config.region, prefix: config.prefix });
  } catch (err) {
    // Aborted: shutdown() is under way and ends the process.
    if (abort.signal.aborted) return;
    log.error(errorMessage(err));
    process.exit(isConfigFailure(err) ? 78 : 1);
  }
}

/** NATS readiness: the connection is open and answers a round trip; losing it and getting it back are logged and recorded. */
function watchConnection(n: Nats, health: ServiceHealth, log: Logger): void {
  let lostAt: string | undefined;
  void (async () => {
    for await (const s of n.nc.status()) {
      if (s.type === "disconnect") {
        lostAt = new Date().toISOString();
        log.warn("NATS connection lost; reconnecting", { server: s.server });
        health.failed(`NATS connection lost (${s.server})`, "transient");
      } else if (s.type === "reconnect") {
        log.info("NATS connection back", { server: s.server, lostAt });
        lostAt = undefined;
      }
    }
  })();
  health.check("nats", async () => {
    if (n.nc.isClosed()) return "NATS connection closed";
    if (lostAt) return `NATS connection lost since ${lostAt}`;
    try {
      await n.nc.flush();
      return undefined;
    } catch (err) {
      return `NATS does not answer: ${errorMessage(err)}`;
    }
  });
}
