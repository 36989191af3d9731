/** ingest: HTTP events in, keys out (to the queue's intake), plus the periodic resync. */
import { loadCatalog, publish, ReleaseStore, runService, type EnqueueRequest } from "@homeostat/core";
import { buildIngestServer } from "./server.ts";
import { startResync } from "./resync.ts";

await runService("ingest", async ({ config, log, nats, buckets, signal }) => {
  const catalog = await loadCatalog(config.catalogDir);
  const enqueue = async (req: EnqueueRequest, msgId: string) => {
    await publish(nats, "intake", req.key, req, { msgId });
  };
  const app = buildIngestServer({
    catalog: () => catalog,
    releases: new ReleaseStore(buckets.releases),
    enqueue,
    ready: () => !nats.nc.isClosed(),
  });
  await app.listen({ host: config.ingest.host, port: config.ingest.port });
  log.info("listening", { url: `http://${config.ingest.host}:${config.ingest.port}` });
  await startResync({ catalog: () => catalog, enqueue, intervalMs: config.resyncMs, log, signal });
  return () => app.close();
});
