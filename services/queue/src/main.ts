/**
 * queue: owns the JetStream topology and the work queue's admission (of ingest's event records
 * and of the intake stream), keeps the Redis read
 * model equal to the state in KV, sweeps the run records of crashed workers, and serves the
 * gRPC status and queue APIs (and, from the release and advisory stores, the known facts), with
 * WatchKeys fed by the same follower of the state bucket that keeps the read model, and
 * ListServices from every instance's heartbeat (service-directory.ts).
 */
import path from "node:path";
import { Redis } from "ioredis";
import { AdvisoryStore, CatalogSource, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { errorMessage, EventLedger, openBucket, runService } from "@homeostat/core";
import { KeyFeed } from "./key-feed.ts";
import { HealingReadModel, StatusReadModel } from "./read-model.ts";
import { followState } from "@homeostat/core/state-follower";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { EVENT_ADMISSION_BATCH, runAdmission, runEventAdmission, type AdmissionCounts } from "./admit.ts";
import { startStatusApi } from "./status-api.ts";
import { ProposalStore } from "@homeostat/proposals";
import { QuestionStore } from "@homeostat/proposals/questions";
import { ServiceDirectory } from "./service-directory.ts";

await runService("queue", async ({ config, log, nats, buckets, signal, health }) => {
  // Fail fast rather than queue: a Redis that is down must neither stall the follower of the
  // state bucket nor hold reads; the read model answers from the bucket and heals afterwards.
  const redis = new Redis(config.redisUrl, { enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: config.readModelCheckMs, lazyConnect: false });
  const feed = new KeyFeed();
  feed.observePhases();
  const readModel = new HealingReadModel({
    store: new StatusReadModel(redis, nats.topology),
    state: buckets.state,
    source: feed,
    topology: nats.topology,
    log,
  });
  await followState(
    buckets.state,
    signal,
    (entry) => {
      feed.apply(entry);
      readModel.apply(entry);
    },
    { log },
  );
  readModel.start(config.readModelCheckMs, signal);
  // `homeostat status` tells whether reads come from Redis or, degraded, from the state bucket.
  health.detail("read-model", () => (readModel.degraded === undefined ? "current" : `degraded: ${readModel.degraded}`));
  // The catalog, reloaded as the reconciler reloads its own: Enqueue refuses keys it does not declare.
  const catalog = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "queue") });
  const watchingCatalog = catalog.watch({
    intervalMs: config.catalogReloadMs,
    signal,
    onReload: (r) => {
      if (r.status === "rejected") log.warn("catalog reload rejected; enqueues are checked against the previous catalog", { reason: errorMessage(r.error) });
    },
  });
  const queue = new WorkQueue(nats, workQueueOptions(config, { log, owner: `queue-${process.pid}` }));
  queue.observeStats();
  // The events stream is ingest's, opened here too so that admission can start before ingest has. Opened before the
  // status API listens: a start-up that fails after that would find its own port taken when it is tried again.
  const ledger = await EventLedger.open(nats, config.ingest.retentionMs);
  const proposalsBucket = await openBucket(nats, "proposals");
  const api = await startStatusApi({
    addr: config.grpcAddr,
    security: config.statusApi,
    readModel,
    freshness: () => readModel.freshness,
    queue,
    releases: new ReleaseStore(buckets.releases),
    advisories: await AdvisoryStore.open(nats),
    inCatalog: (key) => catalog.current().recipe(key) !== undefined,
    feed,
    proposals: new ProposalStore(proposalsBucket),
    questions: new QuestionStore(proposalsBucket),
    services: new ServiceDirectory(await nats.kvm.open(nats.topology.bucket("services"), { allow_direct: true }), {
      staleAfterMs: config.health.staleAfterMs,
      log,
    }),
    log,
  });
  log.info("status API listening", { addr: config.grpcAddr, port: api.port, ...api.security });
  // grpc.health.v1 says what /readyz and the heartbeat say.
  health.observe((r) => api.setServing(r.ready));

  const counts: AdmissionCounts = { added: 0, deduped: 0, rerun: 0 };
  const admitting = Promise.all([
    runAdmission(nats, queue, { log, signal, concurrency: 64, counts }),
    runEventAdmission(nats, ledger, queue, { log, signal, concurrency: EVENT_ADMISSION_BATCH, counts, advisorySettle: config.queue.advisorySettle }),
  ]);
  // A worker that crashed between acking a run and queueing its follow-up left that promise in
  // its run record; sweeping once per lease keeps it.
  const sweeping = setInterval(() => {
    queue.sweep().then(
      (queued) => queued > 0 && log.info("queued what crashed workers had promised", { queued }),
      (err: unknown) => log.warn("sweep failed", { reason: errorMessage(err) }),
    );
  }, config.leaseMs);
  return async () => {
    clearInterval(sweeping);
    await Promise.all([admitting, watchingCatalog]);
    await api.close();
    redis.disconnect();
    log.info("admission totals", counts);
  };
});
