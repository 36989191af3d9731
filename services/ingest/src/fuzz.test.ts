/**
 * Fuzz: 1,500 random and mutated bodies (and headers) across every route. Whatever arrives,
 * ingest answers below 500, keeps running, and enqueues a key only for a body it accepted —
 * every intake message belongs to an event some 2xx response reported.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { ingestTestEnv, sign, TOKEN, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

let env: IngestTestEnv;
before(async () => void (env = await ingestTestEnv()));
after(async () => env.cleanup());

const examples = createRequire(import.meta.url)("@octokit/webhooks-examples/api.github.com/index.json") as Array<{ name: string; examples: unknown[] }>;
const seeds: Record<string, unknown[]> = {
  "/v1/webhooks/github": examples.find((e) => e.name === "release")!.examples,
  "/v1/releases": [{ package: "pkg000", version: "1.2", url: "https://example.org/a.tar.gz", sha256: "b".repeat(64) }],
  "/v1/advisories": [{ id: "FUZZ-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: { ecosystem: "Debian", name: "pkg001" }, versions: ["1.0"] }] }],
  "/v1/webhooks/anitya": [{ project: { id: 2566, name: "openssl" }, message: { upstream_versions: ["3.6.0"] }, distro: null }],
};
const routes = Object.keys(seeds);

let seed = 42;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed / 2 ** 31);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
const weird = [null, true, -1, 1e308, "", "x".repeat(5000), "\u0000\ud800", [], {}, [[[]]], { __proto__: { a: 1 } }, "../../etc/passwd", "0", NaN];

function randomJson(depth = 0): unknown {
  const r = rnd();
  if (depth > 3 || r < 0.4) return pick(weird);
  if (r < 0.7) return Array.from({ length: Math.floor(rnd() * 4) }, () => randomJson(depth + 1));
  return Object.fromEntries(
    Array.from({ length: Math.floor(rnd() * 4) }, () => [
      pick(["id", "package", "version", "release", "action", "project", "advisories", "affected", "x"]),
      randomJson(depth + 1),
    ]),
  );
}

/** Changes one thing somewhere in a valid document: a value replaced, a field removed or added. */
function mutate(doc: unknown): unknown {
  const copy = JSON.parse(JSON.stringify(doc)) as unknown;
  const containers: Array<Record<string, unknown> | unknown[]> = [];
  const walk = (v: unknown) => {
    if (v && typeof v === "object") {
      containers.push(v as Record<string, unknown>);
      for (const c of Object.values(v)) walk(c);
    }
  };
  walk(copy);
  for (let n = 1 + Math.floor(rnd() * 3); n > 0; n--) {
    const target = pick(containers) as Record<string, unknown>;
    const keys = Object.keys(target);
    const r = rnd();
    if (keys.length && r < 0.5) target[pick(keys)] = randomJson(2);
    else if (keys.length && r < 0.8) delete target[pick(keys)];
    else target[pick(["extra", "id", "modified", "tag_name", "full_name"])] = randomJson(2);
  }
  return copy;
}

function bytesOf(text: string): string {
  const r = rnd();
  if (r < 0.1) return text.slice(0, Math.floor(rnd() * text.length)); // truncated
  if (r < 0.15) return text.replace(/[{}[\]",:]/, "");
  return text;
}

test("1,500 random and mutated requests: no 5xx, no crash, keys only from accepted bodies", { timeout: 240_000 }, async () => {
  const acceptedEvents = new Set<string>();
  const statuses = new Map<number, number>();
  for (let i = 0; i < 1500; i++) {
    const url = pick(routes);
    const r = rnd();
    const doc = r < 0.3 ? randomJson() : mutate(pick(seeds[url]!));
    const body = bytesOf(JSON.stringify(doc) ?? "null");
    const headers: Record<string, string> = {
      "content-type": rnd() < 0.95 ? "application/json" : pick(["text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8"]),
    };
    if (url === "/v1/webhooks/github") {
      headers["x-github-event"] = rnd() < 0.8 ? "release" : pick(["ping", "push", "RELEASE", "", "x".repeat(100)]);
      headers["x-github-delivery"] = `fuzz-${i}`;
      headers["x-hub-signature-256"] = rnd() < 0.85 ? sign(body) : pick(["", "sha256=", `sha256=${"0".repeat(64)}`, sign(body + "x")]);
    } else if (rnd() < 0.95) {
      headers.authorization = `Bearer ${TOKEN}`;
    }
    const res = await env.app.inject({ method: "POST", url, headers, payload: body });
    statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1);
    assert.ok(res.statusCode < 500, `${url} ${body.slice(0, 300)} -> ${res.statusCode} ${res.body.slice(0, 300)}`);
    if (res.statusCode >= 400) assert.match(res.headers["content-type"] as string, /^application\/problem\+json/);
    if (res.statusCode === 202) {
      const b = res.json() as { event?: string; results?: Array<{ event: string }> };
      if (b.event) acceptedEvents.add(b.event);
      for (const x of b.results ?? []) acceptedEvents.add(x.event);
    }
  }
  const intake = await env.intake();
  for (const m of intake) assert.ok(acceptedEvents.has(m.cause.id!), `${m.key} enqueued by ${m.cause.id}, which no 2xx reported`);
  assert.ok((statuses.get(400) ?? 0) > 300, `most bodies are refused: ${JSON.stringify([...statuses])}`);
  assert.equal((await env.app.inject({ method: "GET", url: "/healthz" })).statusCode, 200, "still serving");
});
