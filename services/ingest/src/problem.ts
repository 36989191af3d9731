/**
 * Problem: every error ingest answers is an RFC 9457 `application/problem+json` document —
 * `type` (a stable URN per kind of problem, listed in services/ingest/README.md), `title`,
 * `status`, `detail`, `instance` (this request, by its id) and, for a body that failed its
 * schema, `errors: [{ pointer, detail }]` naming each field (JSON Pointer, RFC 6901).
 *
 * Handlers throw `Problem`; the error handler also maps Fastify's own errors (bad JSON, body
 * too large, wrong media type, schema failures, rate limit) and hides anything unexpected
 * behind a 500 that says to send the event again — never a stack trace.
 */
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import type { FastifyError, FastifyReply, FastifyRequest } from "fastify";

export type FieldError = { pointer: string; detail: string };

export class Problem extends Error {
  readonly status: number;
  readonly slug: string;
  readonly errors: FieldError[] | undefined;
  readonly headers: Record<string, string>;
  constructor(status: number, slug: string, detail: string, opts: { errors?: FieldError[]; headers?: Record<string, string> } = {}) {
    super(detail);
    this.status = status;
    this.slug = slug;
    this.errors = opts.errors;
    this.headers = opts.headers ?? {};
  }
}

const titles: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  405: "Method Not Allowed",
  408: "Request Timeout",
  409: "Conflict",
  413: "Content Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

/** The problem each answered request was refused with, for the one log line of its refusal (server.ts). */
export const answeredProblem = new WeakMap<FastifyRequest, Problem>();

function problemDocument(p: Problem, requestId: string) {
  return {
    type: `urn:homeostat:problem:${p.slug}`,
    title: titles[p.status] ?? (p.status < 500 ? "Client Error" : "Server Error"),
    status: p.status,
    detail: p.message,
    instance: `urn:homeostat:request:${requestId}`,
    ...(p.errors ? { errors: p.errors } : {}),
  };
}

export function sendProblem(req: FastifyRequest, reply: FastifyReply, p: Problem): FastifyReply {
  answeredProblem.set(req, p);
  return reply.code(p.status).headers(p.headers).type("application/problem+json").send(problemDocument(p, req.id));
}

/**
 * Answers on a bare socket, for errors Node's HTTP parser raises before there is a request
 * (headers too large, malformed framing, a request that timed out): a complete problem+json
 * response, then the connection is closed, since the stream's framing can no longer be trusted.
 */
export function writeSocketProblem(socket: Duplex, p: Problem, requestId: string): void {
  if (!socket.writable) return void socket.destroy();
  const body = JSON.stringify(problemDocument(p, requestId));
  socket.end(
    `HTTP/1.1 ${p.status} ${STATUS_CODES[p.status] ?? "Error"}\r\nContent-Type: application/problem+json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\nX-Request-Id: ${requestId}\r\n\r\n${body}`,
  );
  // A client that never reads must not keep the socket: it is closed either way, soon.
  setTimeout(() => socket.destroy(), 1_000).unref();
}

/** Any error thrown while handling a request, as the Problem to answer with. */
export function toProblem(err: unknown): Problem {
  if (err instanceof Problem) return err;
  const e = err as FastifyError & { validation?: Array<{ instancePath: string; message?: string; params?: Record<string, unknown> }> };
  if (e.validation) {
    const errors = e.validation.map((v) => {
      // A missing or unknown property is reported at its parent; point at the property itself.
      const child = (v.params?.missingProperty ?? v.params?.additionalProperty) as string | undefined;
      const pointer = child === undefined ? v.instancePath : `${v.instancePath}/${child.replaceAll("~", "~0").replaceAll("/", "~1")}`;
      return {
        pointer: pointer || "/",
        detail: child !== undefined && v.params?.additionalProperty ? `additional property "${child}" is not allowed` : (v.message ?? "is invalid"),
      };
    });
    const where = e.validationContext ?? "body";
    return new Problem(400, `invalid-${where}`, `${where} is invalid: ${errors.map((x) => `${x.pointer} ${x.detail}`).join("; ")}`, { errors });
  }
  switch (e.code) {
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new Problem(400, "malformed-json", `the body is not valid JSON: ${e.message}`);
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new Problem(413, "body-too-large", e.message);
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new Problem(415, "unsupported-media-type", `${e.message}; send application/json`);
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new Problem(400, "bad-content-length", e.message);
  }
  if (e instanceof SyntaxError) return new Problem(400, "malformed-json", `the body is not valid JSON: ${e.message}`);
  if (typeof e.statusCode === "number" && e.statusCode >= 400 && e.statusCode < 500) {
    return new Problem(e.statusCode, e.statusCode === 429 ? "rate-limited" : "client-error", e.message);
  }
  return new Problem(500, "internal", "internal error; the event was not accepted, send it again");
}
