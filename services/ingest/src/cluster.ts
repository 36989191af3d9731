/**
 * Cluster mode: HOMEOSTAT_INGEST_WORKERS=N (default 1) runs ingest as N processes sharing its
 * port through node:cluster — one core is the ceiling of one Node process, and the HTTP edge
 * (HMAC, JSON, Fastify) is where ingest spends its CPU.
 *
 * Nothing about correctness depends on which process takes a delivery: the audit record, which
 * is the idempotency record and the intake of the keys, lives in NATS (core events.ts), exactly
 * as with N replicas. The
 * background loops (periodic resync, OSV poller) run in worker 0 only, so a resync round is
 * not multiplied by N; each worker follows the catalog itself. The primary only supervises:
 * it restarts a worker that dies (same index), and on SIGTERM/SIGINT stops every worker
 * gracefully and exits when they have. The in-memory rate limit is per process, so a client
 * may send N times HOMEOSTAT_INGEST_RATE_LIMIT (as with N replicas).
 */
import cluster, { type Worker } from "node:cluster";
import { createLogger, errorMessage, loadConfig } from "@homeostat/core";

const INDEX_VAR = "HOMEOSTAT_INGEST_WORKER_INDEX";

/** How many ingest processes to run; exits with EX_CONFIG on a bad value, as runService does. */
export function ingestWorkers(): number {
  try {
    return loadConfig().ingest.workers;
  } catch (err) {
    createLogger("ingest").error(errorMessage(err));
    process.exit(78);
  }
}

/** True in the process that runs the background loops: the single process, or worker 0. */
export function runsBackgroundLoops(): boolean {
  return !cluster.isWorker || process.env[INDEX_VAR] === "0";
}

/** A directory name of this process's own (a worker must not share a checkout with another). */
export function perWorker(name: string): string {
  return cluster.isWorker ? `${name}-${process.env[INDEX_VAR] ?? cluster.worker?.id}` : name;
}

/** The primary of cluster mode: forks and supervises `n` workers until SIGTERM/SIGINT. */
export async function superviseWorkers(n: number): Promise<void> {
  const log = createLogger("ingest");
  let stopping = false;
  const byIndex = new Map<number, Worker>();
  const fork = (i: number) => {
    const w = cluster.fork({ [INDEX_VAR]: String(i) });
    byIndex.set(i, w);
    w.on("exit", (code, sig) => {
      if (byIndex.get(i) === w) byIndex.delete(i);
      if (stopping) {
        if (byIndex.size === 0) process.exit(0);
        return;
      }
      log.error("ingest worker exited; restarting it", { worker: i, code, signal: sig });
      setTimeout(() => !stopping && fork(i), 1_000).unref();
    });
  };
  for (let i = 0; i < n; i++) fork(i);
  log.info("cluster mode", { workers: n });
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    log.info("stopping workers", { why });
    if (byIndex.size === 0) process.exit(0);
    for (const w of byIndex.values()) w.process.kill("SIGTERM");
    // Workers stop within their own grace time (runService); this is the backstop.
    setTimeout(() => process.exit(1), 30_000).unref();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  await new Promise<never>(() => {});
}
