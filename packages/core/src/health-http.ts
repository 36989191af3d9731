/**
 * The health endpoint every service serves on HOMEOSTAT_HEALTH_PORT (config.ts), for probes:
 *
 * - GET /healthz: 200 while the process's event loop runs (it answers at all); its body says
 *   since when. A liveness probe: failing it means the process should be restarted.
 * - GET /readyz: 200 `{ready: true, ...}` when ready, else 503 `{ready: false, health, reasons,
 *   lastError}`: why (the start-up step under way, a failing check) and the last error with its
 *   time (e.g. the ENOSPC that keeps the signer from writing its key). A readiness probe.
 *
 * Unauthenticated and read-only: it tells nothing beyond the instance's own health, and listens
 * on loopback unless HOMEOSTAT_HEALTH_HOST says otherwise (a pod's probes). Anything else is
 * 404, another method 405; no request body is read.
 */
import { createServer, type Server } from "node:http";
import type { ServiceHealth } from "./health.ts";

export type HealthEndpoint = { port: number; close(): Promise<void> };

export async function serveHealth(health: ServiceHealth, at: { host: string; port: number }): Promise<HealthEndpoint> {
  const since = new Date().toISOString();
  const server: Server = createServer((req, res) => {
    const send = (status: number, body: unknown) => {
      const text = JSON.stringify(body);
      res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", "content-length": Buffer.byteLength(text) });
      res.end(req.method === "HEAD" ? undefined : text);
    };
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/healthz" && path !== "/readyz") return send(404, { error: "not found: GET /healthz or /readyz" });
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      return send(405, { error: `${req.method} not allowed` });
    }
    if (path === "/healthz") return send(200, { alive: true, since });
    health.readiness().then(
      (r) => send(r.ready ? 200 : 503, r),
      (err: unknown) => send(503, { ready: false, reasons: [`readiness: ${err instanceof Error ? err.message : String(err)}`] }),
    );
  });
  // Probes are small and frequent: a slow client must not hold a socket for long.
  server.headersTimeout = 5_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(at.port, at.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
