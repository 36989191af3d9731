/**
 * queue: owns the JetStream topology and the work queue's admission, keeps the Redis read
 * model equal to the state in KV, and serves the gRPC status API.
 */
import { Redis } from "ioredis";
import { projectStatusToRedis, runService, StatusReadModel, WorkQueue } from "@homeostat/core";
import { runAdmission, type AdmissionCounts } from "./admit.ts";
import { startStatusApi } from "./status-api.ts";

await runService("queue", async ({ config, log, nats, buckets, signal }) => {
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: null, lazyConnect: false });
  const readModel = new StatusReadModel(redis, nats.topology);
  await projectStatusToRedis(buckets.state, readModel, signal);
  const api = await startStatusApi({ addr: config.grpcAddr, readModel });
  log.info("status API listening", { addr: config.grpcAddr, port: api.port });

  const queue = new WorkQueue(nats, { leases: buckets.leases, leaseMs: config.leaseMs, log, owner: `queue-${process.pid}` });
  const counts: AdmissionCounts = { added: 0, deduped: 0, rerun: 0 };
  const admitting = runAdmission(nats, queue, { log, signal, concurrency: 64, counts });
  return async () => {
    await admitting;
    await api.close();
    redis.disconnect();
    log.info("admission totals", counts);
  };
});
