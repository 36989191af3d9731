/**
 * The ingest HTTP server: Fastify with a schema on every route, per-route body limits, a rate
 * limit per client, request ids, one plugin per feed, health endpoints, and every error as
 * RFC 9457 problem+json (problem.ts) — never a stack trace, never a crash.
 *
 * Rate limit: in memory, per client — the bearer token when one is sent (several senders
 * behind one proxy stay apart), else the peer address. In memory because the limit protects
 * this process, and ingest must not depend on Redis (only a read model) or add a NATS round
 * trip per request; with N replicas a client may send N times the limit, which the load
 * balancer's spread makes acceptable.
 */
import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import Fastify, { type FastifyInstance } from "fastify";
import rateLimit from "@fastify/rate-limit";
import { inSpan, SpanKind } from "@homeostat/core";
import type { AdvisoryStore, Catalog, ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import { advisoriesRoute } from "./advisories.ts";
import { anityaRoute } from "./anitya-route.ts";
import { bearerAuth, bearerFingerprint, type BearerAuth } from "./auth.ts";
import { eventsRoute } from "./events-route.ts";
import { githubRoute } from "./github-route.ts";
import { Problem, sendProblem, toProblem } from "./problem.ts";
import { releasesRoute } from "./releases-route.ts";

export type IngestSettings = {
  /** The address ingest listens on: without tokens, writes are open only on loopback. */
  host: string;
  tokens: readonly string[];
  githubSecret: string | undefined;
  githubActions: readonly string[];
  githubPrereleases: boolean;
  rateLimitPerMin: number;
};

export type IngestDeps = {
  catalog: () => Catalog;
  releases: ReleaseStore;
  /** Where accepted advisories are kept for the reconciler. */
  advisories: AdvisoryStore;
  acceptor: Acceptor;
  /** Resolves true when NATS answers. */
  ready: () => Promise<boolean>;
  settings: IngestSettings;
};

export const BODY_LIMITS = { default: 256 * 1024, github: 2 * 1024 * 1024, anitya: 1024 * 1024, advisories: 32 * 1024 * 1024 } as const;

export function buildIngestServer(deps: IngestDeps): FastifyInstance & { authMode: BearerAuth["mode"] } {
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMITS.default,
    // Honour the caller's X-Request-Id when it is a sane token, so logs join across systems.
    genReqId: (req: IncomingMessage) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : randomUUID();
    },
    // Strict edge: `"version": 12` or an unknown field is a client error, never coerced or dropped silently.
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } },
  });
  const auth = bearerAuth(deps.settings.tokens, deps.settings.host);

  // One server span per request: the root of every trace that starts with an event.
  app.addHook("onRequest", (req, _reply, done) => {
    void inSpan(`${req.method} ${req.routeOptions.url ?? req.url}`, { kind: SpanKind.SERVER, attributes: { "http.method": req.method, "http.route": req.routeOptions.url ?? req.url } }, () => {
      done();
      return new Promise<void>((resolve) => req.raw.once("close", resolve));
    });
  });
  app.addHook("onSend", async (req, reply) => {
    reply.header("x-request-id", req.id);
  });

  app.setErrorHandler((err, req, reply) => sendProblem(req, reply, toProblem(err)));
  app.setNotFoundHandler((req, reply) => sendProblem(req, reply, new Problem(404, "no-route", `no route ${req.method} ${req.url.slice(0, 256)}`)));

  void app.register(rateLimit, {
    max: deps.settings.rateLimitPerMin,
    timeWindow: 60_000,
    keyGenerator: (req) => bearerFingerprint(req) ?? req.ip,
    errorResponseBuilder: (_req, ctx) => new Problem(429, "rate-limited", `more than ${ctx.max} requests in a minute from this client; retry in ${ctx.after}`),
  });

  app.get("/healthz", { config: { rateLimit: false }, schema: { response: { 200: { type: "object", properties: { ok: { type: "boolean" } } } } } }, async () => ({ ok: true }));
  app.get("/readyz", { config: { rateLimit: false } }, async (req, reply) => {
    if (await deps.ready()) return { ready: true };
    return sendProblem(req, reply, new Problem(503, "not-ready", "NATS does not answer"));
  });

  const { acceptor } = deps;
  const feed = { catalog: deps.catalog, acceptor, auth };
  void app.register(releasesRoute, { ...feed, releases: deps.releases });
  void app.register(githubRoute, {
    catalog: deps.catalog,
    acceptor,
    secret: deps.settings.githubSecret,
    actions: deps.settings.githubActions,
    prereleases: deps.settings.githubPrereleases,
    bodyLimit: BODY_LIMITS.github,
  });
  void app.register(advisoriesRoute, { ...feed, advisories: deps.advisories, bodyLimit: BODY_LIMITS.advisories });
  void app.register(anityaRoute, { ...feed, bodyLimit: BODY_LIMITS.anitya });
  void app.register(eventsRoute, { ledger: acceptor.ledger, auth });
  return Object.assign(app, { authMode: auth.mode });
}
