/**
 * The ingest HTTP server: Fastify with schemas at the edge, one plugin per feed, health
 * endpoints, and errors that say what was wrong (never a stack trace, never a crash).
 */
import Fastify, { type FastifyInstance } from "fastify";
import { inSpan, SpanKind } from "@homeostat/core";
import { releasesRoute, type ReleasesRouteDeps } from "./releases-route.ts";

export type IngestDeps = ReleasesRouteDeps & { ready: () => boolean };

export function buildIngestServer(deps: IngestDeps): FastifyInstance {
  // Strict edge: `"version": 12` or an unknown field is a client error, never coerced or dropped silently.
  const app = Fastify({ logger: false, bodyLimit: 256 * 1024, ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } } });

  // One server span per request: the root of every trace that starts with an event.
  app.addHook("onRequest", (req, _reply, done) => {
    void inSpan(`${req.method} ${req.routeOptions.url ?? req.url}`, { kind: SpanKind.SERVER, attributes: { "http.method": req.method, "http.route": req.routeOptions.url ?? req.url } }, () => {
      done();
      return new Promise<void>((resolve) => req.raw.once("close", resolve));
    });
  });

  app.setErrorHandler((err, _req, reply) => {
    const e = err as { statusCode?: number; message: string; validation?: unknown; code?: string };
    const status = e.statusCode && e.statusCode >= 400 && e.statusCode < 500 ? e.statusCode : 500;
    const message = status === 500 ? "internal error; the event was not accepted, send it again" : e.message;
    void reply.code(status).send({ statusCode: status, error: status === 500 ? "Internal Server Error" : httpError(status), message });
  });
  app.setNotFoundHandler((req, reply) => void reply.code(404).send({ statusCode: 404, error: "Not Found", message: `no route ${req.method} ${req.url}` }));

  app.get("/healthz", async () => ({ ok: true }));
  app.get("/readyz", async (_req, reply) => (deps.ready() ? { ready: true } : reply.code(503).send({ ready: false })));
  void app.register(releasesRoute, deps);
  return app;
}

function httpError(status: number): string {
  return ({ 400: "Bad Request", 404: "Not Found", 409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type" } as Record<number, string>)[status] ?? "Client Error";
}
