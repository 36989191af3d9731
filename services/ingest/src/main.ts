/** ingest: HTTP events in, recorded in the events stream (which the queue admits keys from), the OSV poller and the periodic resync; HOMEOSTAT_INGEST_WORKERS > 1: cluster mode (cluster.ts). */
import cluster from "node:cluster";
import path from "node:path";
import { AdvisoryStore, CatalogSource, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { errorMessage, EventLedger, publish, runService } from "@homeostat/core";
import { Acceptor, pipedLedger } from "./accept.ts";
import { ingestWorkers, perWorker, runsBackgroundLoops, superviseWorkers } from "./cluster.ts";
import { JetStreamPipe } from "@homeostat/core";
import { ingestAdvisories } from "./advisories.ts";
import { OsvPoller } from "./osv-poller.ts";
import { runResync } from "./resync.ts";
import { buildIngestServer } from "./server.ts";

if (cluster.isPrimary && ingestWorkers() > 1) await superviseWorkers(ingestWorkers());
else
  await runService("ingest", async ({ config, log, nats, buckets, signal, health }) => {
    // The catalog only maps events to keys here; the reconciler enqueues what a catalog change touches.
    const source = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), {
      cacheDir: path.join(config.dataDir, "catalog", perWorker("ingest")),
    });
    const catalog = () => source.current();
    const advisories = await AdvisoryStore.open(nats);
    // The hot path's one JetStream write per event (its record) goes over a lean pipe.
    const pipe = new JetStreamPipe(nats.nc);
    // The queue service made the stream (ingest may record events, not change the stream).
    const ledger = EventLedger.bind(nats);
    const acceptor = new Acceptor(ledger, pipedLedger(ledger, pipe));
    const app = buildIngestServer({
      catalog,
      releases: new ReleaseStore(buckets.releases),
      advisories,
      acceptor,
      // The same readiness as the health endpoint's and the heartbeat's (NATS answers, start-up over).
      ready: () => health.readiness(),
      settings: config.ingest,
      log,
    });
    await app.listen({ host: config.ingest.host, port: config.ingest.port });
    log.info("listening", {
      url: `http://${config.ingest.host}:${config.ingest.port}`,
      writes: app.authMode,
      github: config.ingest.githubSecret ? "signed" : "refused (no secret)",
    });
    if (app.authMode === "open-on-loopback")
      log.warn("no HOMEOSTAT_INGEST_TOKENS: write endpoints are open to local clients (ingest listens on loopback only)");

    const loops: Promise<void>[] = [
      source.watch({
        intervalMs: config.catalogReloadMs,
        signal,
        onReload: (r) => {
          if (r.status === "rejected") log.error("catalog reload rejected; the previous catalog keeps serving", { reason: errorMessage(r.error) });
          else log.info("catalog reloaded", { commit: r.catalog.commit, changed: r.diff.keys.length });
        },
      }),
    ];
    // In cluster mode only worker 0 runs the background loops (cluster.ts).
    if (runsBackgroundLoops())
      loops.push(
        runResync({
          keys: () => catalog().keysInBuildOrder(),
          enqueue: async (req, msgId) => void (await publish(nats, "intake", req.key, req, { msgId })),
          intervalMs: config.resyncMs,
          log,
          signal,
        }),
      );
    if (config.ingest.osvSource && runsBackgroundLoops()) {
      const poller = new OsvPoller({
        nats,
        source: config.ingest.osvSource,
        intervalMs: config.ingest.osvPollMs,
        handle: async (list) => void (await ingestAdvisories(list, catalog(), acceptor, advisories, { maxFutureSkewMs: config.ingest.osvMaxFutureSkewMs })),
        maxFutureSkewMs: config.ingest.osvMaxFutureSkewMs,
        log,
        signal,
      });
      loops.push(poller.run());
    }
    return async () => {
      await app.close();
      await Promise.all(loops);
      pipe.close();
    };
  });
