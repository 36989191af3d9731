/**
 * The hardened edge: rate limits by address before authentication and by principal after it,
 * failed authentications limited, every refusal logged once without credentials, errors
 * raised before routing as problem+json, 405 with Allow, and timeouts that close unfinished
 * uploads (slowloris) while normal requests are still served — on a real listening socket.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import type { Logger } from "@homeostat/core";
import { ingestTestEnv, TOKEN } from "../../../test/fixtures/ingest-env.ts";

type Line = { msg: string; fields: Record<string, unknown> };
function capture(): { log: Logger; lines: Line[] } {
  const lines: Line[] = [];
  const push = (msg: string, fields?: Record<string, unknown>) => void lines.push({ msg, fields: fields ?? {} });
  return { log: { info: push, warn: push, error: push }, lines };
}
const release = (version: string) => JSON.stringify({ package: "pkg000", version, url: "https://example.org/a.tar.gz", sha256: "d".repeat(64) });

test("rate limits: random tokens do not dodge the address limit, failed authentication is limited, the principal limit spans addresses", async () => {
  const { log, lines } = capture();
  const env = await ingestTestEnv({ addressRateLimitPerMin: 5, authFailuresPerMin: 3, rateLimitPerMin: 4 }, { log });
  try {
    const post = (authorization: string, remoteAddress: string, version = "9.9") =>
      env.app.inject({
        method: "POST",
        url: "/v1/releases",
        remoteAddress,
        headers: { "content-type": "application/json", authorization },
        payload: release(version),
      });
    // A fresh random token per request: each one fails authentication, then the address is blocked.
    const random = [];
    for (let i = 0; i < 5; i++) random.push((await post(`Bearer random-${i}-${Math.random()}`, "10.0.0.1")).statusCode);
    assert.deepEqual(random, [401, 401, 401, 429, 429]);
    const blocked = await post(`Bearer ${TOKEN}`, "10.0.0.1");
    assert.deepEqual(
      [blocked.statusCode, blocked.json().type],
      [429, "urn:homeostat:problem:rate-limited"],
      "even a valid token, once the address failed too often",
    );
    assert.match(blocked.json().detail, /failed authentications/);
    assert.ok(Number(blocked.headers["retry-after"]) >= 1);
    // The address limit counts every request before authentication.
    const addr = [];
    for (let i = 0; i < 6; i++) addr.push((await env.app.inject({ method: "GET", url: "/v1/nothing", remoteAddress: "10.0.0.2" })).statusCode);
    assert.deepEqual(addr, [404, 404, 404, 404, 404, 429]);
    // The principal limit: one token from two addresses is one client.
    const principal = [];
    for (let i = 0; i < 5; i++) principal.push((await post(`Bearer ${TOKEN}`, i % 2 ? "10.0.0.3" : "10.0.0.4", `1.${i}`)).statusCode);
    assert.deepEqual(principal, [202, 202, 202, 202, 429]);
    assert.equal((await env.app.inject({ method: "GET", url: "/healthz", remoteAddress: "10.0.0.1" })).statusCode, 200, "health is never limited");
    // Every refusal logged once, with route and address, never with a credential.
    const refused = lines.filter((l) => l.msg === "request refused");
    assert.equal(refused.length, 5 + 1 + 6 + 1, "the 401s and 429s, the 404s, the limited principal");
    assert.deepEqual(refused[0]!.fields.route, "/v1/releases");
    assert.deepEqual([refused[0]!.fields.address, refused[0]!.fields.status, refused[0]!.fields.problem], ["10.0.0.1", 401, "unauthorized"]);
    const logged = JSON.stringify(lines);
    assert.ok(!logged.includes(TOKEN) && !logged.includes("random-"), "no token in the logs");
  } finally {
    await env.cleanup();
  }
});

test("before routing: bad URL encoding, a too long URI and a wrong method are problems; 405 names what is allowed", async () => {
  const env = await ingestTestEnv();
  try {
    const bad = await env.app.inject({ method: "GET", url: "/v1/events/%E0%A4%A" });
    assert.deepEqual([bad.statusCode, bad.json().type], [400, "urn:homeostat:problem:bad-url"]);
    assert.match(bad.headers["content-type"] as string, /application\/problem\+json/);
    const long = await env.app.inject({ method: "GET", url: `/v1/events/${"a".repeat(5000)}` });
    assert.deepEqual([long.statusCode, long.json().type], [414, "urn:homeostat:problem:uri-too-long"]);
    const wrong = await env.app.inject({ method: "GET", url: "/v1/releases" });
    assert.deepEqual([wrong.statusCode, wrong.headers.allow, wrong.json().type], [405, "POST", "urn:homeostat:problem:method-not-allowed"]);
    const events = await env.app.inject({ method: "DELETE", url: `/v1/events/release-${"0".repeat(32)}` });
    assert.deepEqual([events.statusCode, events.headers.allow], [405, "GET, HEAD"]);
    assert.equal((await env.app.inject({ method: "GET", url: "/v1/none" })).statusCode, 404);
  } finally {
    await env.cleanup();
  }
});

/** Sends `head` (and optionally stays silent) on a raw socket; resolves with what came back and when it closed. */
function raw(port: number, head: string): { done: Promise<{ data: string; closedAfterMs: number }>; socket: net.Socket } {
  const started = Date.now();
  const socket = net.connect(port, "127.0.0.1");
  let data = "";
  socket.on("data", (d) => void (data += d.toString()));
  socket.on("error", () => {});
  socket.write(head);
  return { socket, done: new Promise((resolve) => socket.on("close", () => resolve({ data, closedAfterMs: Date.now() - started }))) };
}

test("431 for headers too large and 400 for broken framing, as problem+json on the socket", async () => {
  const env = await ingestTestEnv();
  try {
    await env.app.listen({ host: "127.0.0.1", port: 0 });
    const port = (env.app.server.address() as net.AddressInfo).port;
    const big = await raw(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`).done;
    assert.match(big.data, /^HTTP\/1.1 431 /);
    assert.match(big.data, /application\/problem\+json[\s\S]*"type":"urn:homeostat:problem:headers-too-large"/);
    const broken = await raw(port, "POST /v1/releases HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").done;
    assert.match(broken.data, /^HTTP\/1.1 400 [\s\S]*"type":"urn:homeostat:problem:malformed-request"/);
  } finally {
    await env.cleanup();
  }
});

test("slowloris: unfinished headers and bodies are closed by the timeouts while normal requests are served", async () => {
  const HEADERS_MS = 600;
  const REQUEST_MS = 1_200;
  const { log, lines } = capture();
  const env = await ingestTestEnv({ headersTimeoutMs: HEADERS_MS, requestTimeoutMs: REQUEST_MS }, { log });
  const N = 24;
  try {
    await env.app.listen({ host: "127.0.0.1", port: 0 });
    const port = (env.app.server.address() as net.AddressInfo).port;
    // Half never finish their headers, half announce a body they never finish — on an
    // authenticated route and on an unauthenticated one.
    const slow = Array.from({ length: N }, (_, i) =>
      i % 2 === 0
        ? raw(port, "POST /v1/releases HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        : raw(
            port,
            `POST ${i % 4 === 1 ? "/v1/releases" : "/v1/webhooks/github"} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer ${TOKEN}\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: d-${i}\r\nContent-Length: 2000\r\n\r\n{"package":`,
          ),
    );
    // Meanwhile normal requests keep being answered (bounded: at most 40, at most 6 s).
    const served: number[] = [];
    const until = Date.now() + 6_000;
    let closed = 0;
    void Promise.all(slow.map((s) => s.done.then(() => closed++)));
    for (let i = 0; i < 40 && Date.now() < until && closed < N; i++) {
      const res = await fetch(`http://127.0.0.1:${port}/v1/releases`, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
        body: release(`3.${i}`),
      });
      served.push(res.status);
      await new Promise((r) => setTimeout(r, 100));
    }
    const results = await Promise.race([
      Promise.all(slow.map((s) => s.done)),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error("slow connections still open after 8 s")), 8_000)),
    ]);
    assert.ok(served.length >= 5 && served.every((s) => s === 202), `normal requests served meanwhile: ${served.join(",")}`);
    for (const [i, r] of results.entries()) {
      // Closed by the timeout (headers or whole request) plus at most two sweeps of the check interval.
      assert.ok(r.closedAfterMs >= HEADERS_MS - 50 && r.closedAfterMs < REQUEST_MS + 1_500, `connection ${i} closed after ${r.closedAfterMs} ms`);
      assert.match(r.data, /^HTTP\/1.1 408 [\s\S]*"type":"urn:homeostat:problem:request-timeout"/, `connection ${i}: ${r.data.slice(0, 80)}`);
    }
    assert.equal(lines.filter((l) => l.msg === "request refused" && l.fields.problem === "request-timeout").length, N, "each closed upload logged once");
  } finally {
    await env.cleanup();
  }
});
