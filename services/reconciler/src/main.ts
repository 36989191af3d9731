/** reconciler: takes keys from the work queue and closes the gap between desired and actual. */
import { loadCatalog, publish, ReleaseStore, runService, StateStore, WorkQueue } from "@homeostat/core";
import { createReconciler } from "./reconcile.ts";

await runService("reconciler", async ({ config, log, nats, buckets, signal }) => {
  const catalog = await loadCatalog(config.catalogDir);
  const releases = new ReleaseStore(buckets.releases);
  const queue = new WorkQueue(nats, { leases: buckets.leases, leaseMs: config.leaseMs, log, owner: `reconciler-${process.pid}` });
  const reconcile = createReconciler({
    catalog: () => catalog,
    state: new StateStore(buckets.state),
    releases: (pkg) => releases.list(pkg),
    requestBuild: async (req) => void (await publish(nats, "build", req.key, req, { msgId: `${req.key}@${req.inputDigest}` })),
    enqueue: async (req) => void (await publish(nats, "intake", req.key, req)),
    sourceDateEpoch: config.sourceDateEpoch,
    staleBuildMs: config.buildTimeoutMs * 2,
    log,
  });
  const running = queue.run({ concurrency: config.concurrency, signal, reconcile });
  return () => running;
});
