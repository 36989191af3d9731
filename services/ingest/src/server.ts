/**
 * The ingest HTTP server: Fastify with a schema on every route, per-route body limits, rate
 * limits, timeouts, request ids, one plugin per feed, health endpoints, and every error as
 * RFC 9457 problem+json (problem.ts) — never a stack trace, never a crash; also errors raised
 * before routing (bad URL encoding, URI too long, headers too large, broken framing, timeouts).
 *
 * Rate limits, in memory per process (rate-limit.ts): the limit protects this process, and
 * ingest must not depend on Redis (only a read model) or add a NATS round trip per request;
 * with N replicas a client may send N times the limit, which the load balancer's spread makes
 * acceptable. Three counters, each by a key the client cannot choose:
 * - before authentication, per peer address (HOMEOSTAT_INGEST_ADDRESS_RATE_LIMIT): a random
 *   bearer token per request changes nothing;
 * - failed authentications per address (HOMEOSTAT_INGEST_AUTH_FAILURE_LIMIT): past it the
 *   address gets 429 for the rest of the minute before its credentials are even looked at;
 * - after authentication, per principal (HOMEOSTAT_INGEST_RATE_LIMIT): the matched token, or
 *   the GitHub webhook secret, so several senders behind one proxy stay apart.
 * Health endpoints are not limited.
 *
 * Timeouts (Node's HTTP server): headers must arrive within HOMEOSTAT_INGEST_HEADERS_TIMEOUT_MS,
 * the whole request with its body within HOMEOSTAT_INGEST_REQUEST_TIMEOUT_MS (checked every
 * second, so an upload that never finishes is closed, on every route, authenticated or not), a
 * socket may idle HOMEOSTAT_INGEST_IDLE_TIMEOUT_MS, a kept-alive connection
 * HOMEOSTAT_INGEST_KEEP_ALIVE_TIMEOUT_MS between requests.
 *
 * Every refused request is logged once: status, problem, method, route, peer address and
 * request id — never a header, so never a token or a signature.
 */
import { randomUUID } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import Fastify, { type FastifyInstance, type FastifyRequest } from "fastify";
import { contextFromHttpHeaders, durationHistogram, inSpan, meter, secondsSince, SpanKind, SpanStatusCode, type Config, type Logger } from "@homeostat/core";
import type { AdvisoryStore, Catalog, ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import { advisoriesRoute } from "./advisories.ts";
import { anityaRoute } from "./anitya-route.ts";
import { bearerAuth, type BearerAuth } from "./auth.ts";
import { eventsRoute } from "./events-route.ts";
import { githubRoute } from "./github-route.ts";
import { answeredProblem, Problem, sendProblem, toProblem, writeSocketProblem } from "./problem.ts";
import { RateLimiter } from "./rate-limit.ts";
import { releasesRoute } from "./releases-route.ts";

export type IngestSettings = Pick<
  Config["ingest"],
  | "host"
  | "tokens"
  | "githubSecret"
  | "githubActions"
  | "githubPrereleases"
  | "rateLimitPerMin"
  | "addressRateLimitPerMin"
  | "authFailuresPerMin"
  | "headersTimeoutMs"
  | "requestTimeoutMs"
  | "idleTimeoutMs"
  | "keepAliveTimeoutMs"
  | "osvMaxFutureSkewMs"
>;

export type IngestDeps = {
  catalog: () => Catalog;
  releases: ReleaseStore;
  /** Where accepted advisories are kept for the reconciler. */
  advisories: AdvisoryStore;
  acceptor: Acceptor;
  /** Whether the instance is ready, and why not (the service's health: core health.ts). */
  ready: () => Promise<{ ready: boolean; reasons: string[] }>;
  settings: IngestSettings;
  log: Logger;
};

/** Marks a request authenticated as `principal` (what its rate limit counts by). */
export type Authenticated = (req: FastifyRequest, principal: string) => void;
/** Authenticates a bearer request (throws a 401 Problem) and marks its principal. */
export type Authenticate = (req: FastifyRequest) => void;

/** Longer request targets are answered 414 (Node's own bound is the 16 KiB of all headers). */
export const MAX_URL_LENGTH = 4096;

/** Health and readiness probes: every few seconds from every orchestrator, a trace each would drown the real ones. */
const untracedRoutes = new Set(["/healthz", "/readyz"]);
/** Methods named as they are in spans and metrics; any other is `_OTHER` (the semantic conventions' bound). */
/** A request URL's path: everything before its query. */
function pathOf(url: string): string {
  const query = url.indexOf("?");
  return query < 0 ? url : url.slice(0, query);
}

const knownMethods = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);

export const BODY_LIMITS = { default: 256 * 1024, github: 2 * 1024 * 1024, anitya: 1024 * 1024, advisories: 32 * 1024 * 1024 } as const;

export function buildIngestServer(deps: IngestDeps): FastifyInstance & { authMode: BearerAuth["mode"] } {
  const { settings, log } = deps;
  const app = Fastify({
    logger: false,
    bodyLimit: BODY_LIMITS.default,
    requestTimeout: settings.requestTimeoutMs,
    connectionTimeout: settings.idleTimeoutMs,
    keepAliveTimeout: settings.keepAliveTimeoutMs,
    http: {
      // Node requires headers ≤ request timeout; both are enforced by a sweep this often.
      headersTimeout: Math.min(settings.headersTimeoutMs, settings.requestTimeoutMs),
      connectionsCheckingInterval: Math.max(50, Math.min(1_000, Math.floor(Math.min(settings.headersTimeoutMs, settings.requestTimeoutMs) / 4))),
    },
    // Honour the caller's X-Request-Id when it is a sane token, so logs join across systems.
    genReqId: (req: IncomingMessage) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : randomUUID();
    },
    // Strict edge: `"version": 12` or an unknown field is a client error, never coerced or dropped silently.
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: false } },
    // Before routing: a path that does not decode, a parameter too long.
    frameworkErrors: (err, req, reply) => {
      const p =
        err.code === "FST_ERR_MAX_PARAM_LENGTH"
          ? new Problem(414, "uri-too-long", "a path segment is too long")
          : new Problem(400, "bad-url", "the request target is not a valid URL (bad percent-encoding?)");
      refused(p, { method: req.method, route: undefined, address: req.ip, requestId: req.id });
      void sendProblem(req, reply, p);
    },
    // Node's parser or its timeouts, with no request to answer through: a raw problem+json.
    clientErrorHandler: (err: NodeJS.ErrnoException, socket: Duplex) => {
      if (err.code === "ECONNRESET" || err.code === "EPIPE" || socket.destroyed) return;
      const p =
        err.code === "ERR_HTTP_REQUEST_TIMEOUT"
          ? new Problem(
              408,
              "request-timeout",
              `the request (headers and body) was not received within ${settings.requestTimeoutMs} ms, or its headers within ${settings.headersTimeoutMs} ms`,
            )
          : err.code === "HPE_HEADER_OVERFLOW"
            ? new Problem(431, "headers-too-large", "the request line and headers exceed 16 KiB")
            : new Problem(400, "malformed-request", `the request is not well-formed HTTP/1.1 (${err.code ?? "parse error"})`);
      const requestId = randomUUID();
      refused(p, { method: undefined, route: undefined, address: (socket as Duplex & { remoteAddress?: string }).remoteAddress, requestId });
      // A response already under way cannot be replaced; the connection just ends.
      if ((socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent) return void socket.destroy();
      writeSocketProblem(socket, p, requestId);
    },
  });
  const auth = bearerAuth(settings.tokens, settings.host);
  const byAddress = new RateLimiter(settings.addressRateLimitPerMin);
  const authFailures = new RateLimiter(settings.authFailuresPerMin);
  const byPrincipal = new RateLimiter(settings.rateLimitPerMin);
  const principals = new WeakMap<FastifyRequest, string>();
  const authenticated: Authenticated = (req, principal) => void principals.set(req, principal);
  const authenticate: Authenticate = (req) => authenticated(req, auth.check(req));

  const refusals = meter().createCounter("homeostat.ingest.refused", {
    unit: "{request}",
    description: "Requests refused, by status and problem (authentication, rate limit, validation…)",
  });
  function refused(p: Problem, where: { method: string | undefined; route: string | undefined; address: string | undefined; requestId: string }): void {
    refusals.add(1, { "http.response.status_code": p.status, problem: p.slug, ...(where.route ? { "http.route": where.route } : {}) });
    log.warn("request refused", { status: p.status, problem: p.slug, reason: p.message.slice(0, 300), ...where });
  }

  // Which methods each route pattern has, for 405 and its Allow header.
  const routes: Array<{ pattern: RegExp; methods: Set<string> }> = [];
  app.addHook("onRoute", (r) => {
    const pattern = new RegExp(
      `^${r.url
        .split("/")
        .map((seg) => (seg.startsWith(":") ? "[^/]+" : seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
        .join("/")}$`,
    );
    let known = routes.find((x) => x.pattern.source === pattern.source);
    if (!known) routes.push((known = { pattern, methods: new Set() }));
    for (const m of [r.method].flat()) known.methods.add(m);
  });

  // One server span per request, the root of every trace that starts with an event (or a child
  // of the caller's traceparent), named by the route template: never the raw URL, whose query
  // or unmatched path may hold anything, tokens included. Probes are measured, not traced.
  const requestDuration = durationHistogram(meter(), "http.server.request.duration", "Ingest HTTP requests, by method, route and status");
  app.addHook("onRequest", (req, reply, done) => {
    const route = req.routeOptions.url;
    const method = knownMethods.has(req.method) ? req.method : "_OTHER";
    const started = Date.now();
    const finished = new Promise<number>((resolve) => reply.raw.once("close", () => resolve(reply.raw.statusCode)));
    void finished.then((status) =>
      requestDuration.record(secondsSince(started), {
        "http.request.method": method,
        "http.response.status_code": status,
        ...(route ? { "http.route": route } : {}),
      }),
    );
    if (route !== undefined && untracedRoutes.has(route)) return done();
    const attributes = {
      "http.request.method": method,
      "url.path": pathOf(req.url).slice(0, 256),
      "url.scheme": "http",
      ...(route ? { "http.route": route } : {}),
    };
    void inSpan(route ? `${method} ${route}` : method, { parent: contextFromHttpHeaders(req.headers), kind: SpanKind.SERVER, attributes }, async (span) => {
      done();
      const status = await finished;
      span.setAttribute("http.response.status_code", status);
      // Server spans: a 5xx is this service's failure, a 4xx the client's (left unset).
      if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: `HTTP ${status}` });
    });
  });
  // Limits before authentication: by address only, so no header can dodge them.
  app.addHook("onRequest", async (req) => {
    if (req.url.length > MAX_URL_LENGTH) throw new Problem(414, "uri-too-long", `the request target is longer than ${MAX_URL_LENGTH} characters`);
    if (req.routeOptions.config.unlimited === true) return;
    const failures = authFailures.peek(req.ip);
    if (failures && failures.count >= authFailures.limit) {
      throw new Problem(
        429,
        "rate-limited",
        `more than ${authFailures.limit} failed authentications in a minute from this address; retry in ${authFailures.retryAfterS(failures)} s`,
        { headers: { "retry-after": String(authFailures.retryAfterS(failures)) } },
      );
    }
    const w = byAddress.hit(req.ip);
    if (w.count > byAddress.limit)
      throw new Problem(429, "rate-limited", `more than ${byAddress.limit} requests in a minute from this address; retry in ${byAddress.retryAfterS(w)} s`, {
        headers: { "retry-after": String(byAddress.retryAfterS(w)) },
      });
  });
  // After authentication (bearer in the route's onRequest, GitHub's signature in its preValidation): by principal.
  app.addHook("preHandler", async (req) => {
    const principal = principals.get(req);
    if (principal === undefined) return;
    const w = byPrincipal.hit(principal);
    if (w.count > byPrincipal.limit)
      throw new Problem(429, "rate-limited", `more than ${byPrincipal.limit} requests in a minute from this client; retry in ${byPrincipal.retryAfterS(w)} s`, {
        headers: { "retry-after": String(byPrincipal.retryAfterS(w)) },
      });
  });
  app.addHook("onSend", async (req, reply) => {
    reply.header("x-request-id", req.id);
  });
  app.addHook("onResponse", async (req, reply) => {
    if (reply.statusCode < 400) return;
    if (reply.statusCode === 401) authFailures.hit(req.ip);
    const p = answeredProblem.get(req) ?? new Problem(reply.statusCode, "client-error", "refused");
    refused(p, { method: req.method, route: req.routeOptions.url, address: req.ip, requestId: req.id });
  });

  app.setErrorHandler((err, req, reply) => sendProblem(req, reply, toProblem(err)));
  app.setNotFoundHandler((req, reply) => {
    const path = pathOf(req.url);
    const allowed = routes.find((r) => r.pattern.test(path))?.methods;
    if (allowed) {
      const allow = [...allowed].sort().join(", ");
      return sendProblem(
        req,
        reply,
        new Problem(405, "method-not-allowed", `${req.method} is not allowed on ${path.slice(0, 256)}; use ${allow}`, { headers: { allow } }),
      );
    }
    return sendProblem(req, reply, new Problem(404, "no-route", `no route ${req.method} ${path.slice(0, 256)}`));
  });

  app.get(
    "/healthz",
    { config: { unlimited: true }, schema: { response: { 200: { type: "object", properties: { ok: { type: "boolean" } } } } } },
    async () => ({ ok: true }),
  );
  app.get("/readyz", { config: { unlimited: true } }, async (req, reply) => {
    const r = await deps.ready();
    if (r.ready) return { ready: true };
    return sendProblem(req, reply, new Problem(503, "not-ready", r.reasons.join("; ") || "not ready"));
  });

  const { acceptor } = deps;
  const feed = { catalog: deps.catalog, acceptor, authenticate };
  void app.register(releasesRoute, { ...feed, releases: deps.releases });
  void app.register(githubRoute, {
    catalog: deps.catalog,
    releases: deps.releases,
    acceptor,
    authenticated,
    secret: settings.githubSecret,
    actions: settings.githubActions,
    prereleases: settings.githubPrereleases,
    bodyLimit: BODY_LIMITS.github,
  });
  void app.register(advisoriesRoute, { ...feed, advisories: deps.advisories, bodyLimit: BODY_LIMITS.advisories, maxFutureSkewMs: settings.osvMaxFutureSkewMs });
  void app.register(anityaRoute, { ...feed, releases: deps.releases, bodyLimit: BODY_LIMITS.anitya });
  void app.register(eventsRoute, { ledger: acceptor.ledger, authenticate });
  return Object.assign(app, { authMode: auth.mode });
}

declare module "fastify" {
  interface FastifyContextConfig {
    /** Health endpoints: never rate limited. */
    unlimited?: boolean;
  }
}
