/**
 * Service: the start-up and shutdown every Homeostat process shares — config, telemetry,
 * NATS with the topology ensured, and a graceful stop on SIGTERM/SIGINT.
 *
 * `main` receives a context and returns a stop function; a second signal, or a stop that
 * takes longer than the grace period, ends the process at once.
 */
import { loadConfig, type Config } from "./config.ts";
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
};

export const serviceNames = ["ingest", "queue", "reconciler", "builder", "signer", "agent"] as const;
export type ServiceName = (typeof serviceNames)[number];

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
  process.on("unhandledRejection", (err) => log.error("unhandled rejection", { reason: errorMessage(err) }));

  const abort = new AbortController();
  let stopping = false;
  let stop: (() => Promise<void>) | undefined;
  const shutdown = async (why: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    log.info("stopping", { why });
    abort.abort();
    const timer = setTimeout(() => {
      log.error("stop took too long; exiting");
      process.exit(1);
    }, graceMs);
    timer.unref();
    try {
      await stop?.();
      await nats.nc.drain();
    } catch (err) {
      log.warn("error while stopping", { reason: errorMessage(err) });
    }
    await telemetry.shutdown().catch(() => {});
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));

  const nats = await connectNats(config, `homeostat-${name}`, { identity: name });
  // Only the topology owner may create streams and buckets; the others wait for them.
  let buckets: Buckets;
  if (name === topologyOwner) buckets = await ensureTopology(nats, config);
  else {
    await awaitStreams(nats, name, { log, signal: abort.signal });
    buckets = await bindBuckets(nats);
  }
  stop = await main({ name, config, log, nats, buckets, signal: abort.signal });
  log.info("started", { region: config.region, prefix: config.prefix });
}
