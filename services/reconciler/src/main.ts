/** reconciler: takes keys from the work queue and closes the gap between desired and actual. */
import path from "node:path";
import { AdvisoryStore, CatalogSource, parseCatalogLocation, ReleaseStore, UpstreamLedger } from "@homeostat/catalog";
import { errorMessage, publish, runService, StateStore, urgentReconcilerPriorities } from "@homeostat/core";
import { StatusMirror } from "@homeostat/core/state-follower";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { onCatalogReload } from "./catalog-watch.ts";
import { buildMessageId, createReconciler, storeInputs } from "./reconcile.ts";
import { UpstreamResolver } from "./upstream.ts";

await runService("reconciler", async ({ config, log, nats, buckets, signal }) => {
  const source = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "reconciler") });
  const releases = new ReleaseStore(buckets.releases);
  const advisories = await AdvisoryStore.open(nats);
  // A run reads the statuses of its key's whole closure: from a copy of the bucket kept current
  // by one watch, not one round trip per key (at 29,000 keys a fresh factory's runs read little else).
  const state = new StateStore(buckets.state, { mirror: await StatusMirror.follow(buckets.state, signal, log) });
  const queue = new WorkQueue(
    nats,
    workQueueOptions(config, {
      log,
      owner: `reconciler-${process.pid}`,
      // The key's status says so too: `homeostat get` shows why it stopped being retried.
      onDeadLetter: async (letter) =>
        void (await state.update(letter.key, (cur) => ({ ...(cur ?? StateStore.initial(letter.key)), phase: "DeadLettered", lastError: letter.reason }))),
    }),
  );
  const upstream = new UpstreamResolver({
    releases,
    ledger: new UpstreamLedger(buckets.releases),
    // The builder's source rules: its size limit and the same hosts (HOMEOSTAT_SOURCE_ALLOW_REMOTE, HOMEOSTAT_SOURCE_HOSTS).
    limits: { maxBytes: config.maxSourceBytes, allowRemote: config.sourceHosts, ...config.upstream },
    githubArchiveUrl: config.githubArchiveUrl,
    scratchDir: path.join(config.dataDir, "upstream"),
    log,
  });
  const reconcile = createReconciler({
    resolveUpstream: (catalog, name, o) => upstream.resolve(catalog, name, o),
    catalog: () => source.current(),
    state,
    inputs: storeInputs({ releases, advisories, state }),
    requestBuild: async (req, requestId) => void (await publish(nats, "build", req.key, req, { msgId: buildMessageId(req, requestId) })),
    sourceDateEpoch: config.sourceDateEpoch,
    staleBuildMs: config.buildTimeoutMs * 2,
    buildFailures: { retries: config.buildFailures.retries, backoffMs: config.buildFailures.backoffMs, backoffMaxMs: config.queue.backoffMaxMs },
    log,
  });
  // The repair class is the agent's (services/agent). A resync (every key at once) runs in slots
  // of its own, so that neither waits for the other: the urgent classes, most urgent first, in theirs.
  const running = Promise.all([
    queue.run({ concurrency: config.concurrency, signal, reconcile, classes: urgentReconcilerPriorities }),
    queue.run({ concurrency: config.resyncConcurrency, signal, reconcile, classes: ["resync"] }),
  ]);
  // Reloads are handled one at a time, in order; an enqueue that fails is retried by the next resync.
  let handled: Promise<void> = Promise.resolve();
  const watching = source.watch({
    intervalMs: config.catalogReloadMs,
    signal,
    onReload: (r) => {
      handled = handled
        .then(() => onCatalogReload(r, (req) => queue.enqueue(req), log))
        .catch((err: unknown) => log.error("enqueueing a catalog change failed", { reason: errorMessage(err) }));
    },
  });
  return async () => {
    await Promise.all([running, watching, handled]);
  };
});
