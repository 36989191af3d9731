/**
 * The ingest edge: generic releases and release-monitoring messages, bearer auth, request
 * ids, problem+json errors, health, and the audit record — against a real JetStream.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { ReleaseStore } from "@homeostat/catalog";
import { ingestTestEnv, TOKEN, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

let env: IngestTestEnv;
before(async () => void (env = await ingestTestEnv()));
after(async () => env.cleanup());

const auth = { authorization: `Bearer ${TOKEN}` };
const release = { package: "pkg000", version: "1.1", url: "file:///src/pkg000-1.1.tar.gz", sha256: "a".repeat(64) };
const post = (url: string, payload: unknown, headers: Record<string, string> = auth) =>
  env.app.inject({
    method: "POST",
    url,
    headers: { "content-type": "application/json", ...headers },
    payload: typeof payload === "string" ? payload : JSON.stringify(payload),
  });

test("a release is recorded, its key enqueued once, and the event readable by id", async () => {
  const before = (await env.intake()).length;
  const res = await post("/v1/releases", release);
  assert.equal(res.statusCode, 202, res.body);
  const body = res.json();
  assert.deepEqual([body.keys, body.duplicate, body.release], [["package/pkg000"], false, "new"]);
  const again = await post("/v1/releases", release);
  assert.deepEqual([again.statusCode, again.json().duplicate, again.json().release], [202, true, "known"]);
  const added = (await env.intake()).slice(before);
  assert.equal(added.length, 1);
  assert.equal(added[0]!.cause.id, body.event);
  const ev = await env.app.inject({ method: "GET", url: `/v1/events/${body.event}`, headers: auth });
  assert.equal(ev.statusCode, 200);
  assert.equal(ev.json().ref, `pkg000@1.1:${"a".repeat(64)}`);
  assert.equal(ev.json().requestId, res.headers["x-request-id"]);
  const missing = await env.app.inject({ method: "GET", url: `/v1/events/release-${"0".repeat(32)}`, headers: auth });
  assert.equal(missing.statusCode, 404);
  assert.equal(missing.json().type, "urn:homeostat:problem:unknown-event");
});

test("each bad release body is a problem+json naming the field, and nothing is recorded or enqueued", async () => {
  const before = (await env.intake()).length;
  const cases: Array<[unknown, number, string, RegExp]> = [
    [{ ...release, sha256: undefined }, 400, "/sha256", /required/],
    [{ ...release, version: 12 }, 400, "/version", /string/],
    [{ ...release, sha256: "XYZ" }, 400, "/sha256", /pattern/],
    [{ ...release, url: "ftp://host/x.tar.gz" }, 400, "/url", /pattern/],
    [{ ...release, extra: true }, 400, "/extra", /additional/],
  ];
  for (const [body, status, pointer, detail] of cases) {
    const res = await post("/v1/releases", body);
    assert.equal(res.statusCode, status, res.body);
    assert.match(res.headers["content-type"] as string, /application\/problem\+json/);
    assert.equal(res.json().errors[0].pointer, pointer, res.body);
    assert.match(res.json().errors[0].detail, detail);
  }
  const notJson = await post("/v1/releases", "{not json");
  assert.deepEqual([notJson.statusCode, notJson.json().type], [400, "urn:homeostat:problem:malformed-json"]);
  const unknown = await post("/v1/releases", { ...release, package: "no-such-package" });
  assert.deepEqual([unknown.statusCode, unknown.json().detail], [404, 'unknown package "no-such-package": it is not in the catalog']);
  await post("/v1/releases", { ...release, version: "2.0" });
  const moved = await post("/v1/releases", { ...release, version: "2.0", url: "file:///elsewhere.tar.gz" });
  assert.equal(moved.statusCode, 409);
  assert.match(moved.json().detail, /immutable/);
  const big = await post("/v1/releases", { ...release, version: "x".repeat(300 * 1024) });
  assert.equal(big.statusCode, 413);
  assert.equal((await env.intake()).length, before + 1, "only the valid 2.0 release");
  assert.deepEqual(await new ReleaseStore(env.t.buckets.releases).list("no-such-package"), []);
});

test("a release-monitoring version update maps the project to catalog packages", async () => {
  const message = (id: number, name: string, versions: string[]) => ({
    project: {
      id,
      name,
      homepage: `https://${name}.org`,
      backend: "GitHub",
      version: versions[0],
      versions,
      regex: null,
      version_url: null,
      created_on: 1,
      updated_on: 2,
      ecosystem: "https://release-monitoring.org",
    },
    message: {
      agent: "anitya",
      old_version: "1.0",
      packages: [{ distro: "Fedora", package_name: name }],
      project: { id, name },
      upstream_versions: versions,
      versions,
      stable_versions: versions,
    },
    distro: null,
  });
  const byId = await post("/v1/webhooks/anitya", message(2566, "OpenSSL", ["3.5.0"]));
  assert.equal(byId.statusCode, 202, byId.body);
  assert.deepEqual(byId.json().keys, ["package/openssl"], "by upstream.releaseMonitoring.id");
  const byName = await post("/v1/webhooks/anitya", message(381, "curl", ["8.14.0"]));
  assert.deepEqual(byName.json().keys, ["package/curl"], "by its own name when no mapping is declared");
  const none = await post("/v1/webhooks/anitya", message(99, "unknown", ["1"]));
  assert.deepEqual([none.statusCode, none.json().keys], [202, []]);
  assert.equal((await post("/v1/webhooks/anitya", message(381, "curl", ["8.14.0"]))).json().duplicate, true);
  const bad = await post("/v1/webhooks/anitya", { project: { id: "x", name: "curl" }, message: {} });
  assert.equal(bad.statusCode, 400);
});

test("bearer auth: missing or wrong tokens are 401 with a challenge; open only on loopback without tokens", async () => {
  const none = await post("/v1/releases", release, {});
  assert.equal(none.statusCode, 401);
  assert.match(none.headers["www-authenticate"] as string, /^Bearer/);
  assert.equal((await post("/v1/releases", release, { authorization: "Bearer wrong" })).statusCode, 401);
  const open = await ingestTestEnv({ tokens: [] });
  const closed = await ingestTestEnv({ tokens: [], host: "0.0.0.0" });
  try {
    assert.equal(open.app.authMode, "open-on-loopback");
    const ok = await open.app.inject({
      method: "POST",
      url: "/v1/releases",
      headers: { "content-type": "application/json" },
      payload: JSON.stringify(release),
    });
    assert.equal(ok.statusCode, 202, ok.body);
    const refused = await closed.app.inject({
      method: "POST",
      url: "/v1/releases",
      headers: { "content-type": "application/json" },
      payload: JSON.stringify(release),
    });
    assert.equal(refused.statusCode, 401);
    assert.match(refused.json().detail, /HOMEOSTAT_INGEST_TOKENS/);
  } finally {
    await open.cleanup();
    await closed.cleanup();
  }
});

test("request ids are honoured or made, health answers, unknown routes are problems, the rate limit is 429", async () => {
  const given = await env.app.inject({ method: "GET", url: "/healthz", headers: { "x-request-id": "abc-123" } });
  assert.deepEqual([given.statusCode, given.headers["x-request-id"]], [200, "abc-123"]);
  const made = await env.app.inject({ method: "GET", url: "/healthz", headers: { "x-request-id": "bad id\u0001" } });
  assert.match(made.headers["x-request-id"] as string, /^[0-9a-f-]{36}$/);
  assert.equal((await env.app.inject({ method: "GET", url: "/readyz" })).statusCode, 200);
  const none = await env.app.inject({ method: "GET", url: "/v1/nothing" });
  assert.equal(none.statusCode, 404);
  assert.equal(none.json().instance, `urn:homeostat:request:${none.headers["x-request-id"]}`);

  const limited = await ingestTestEnv({ rateLimitPerMin: 3 });
  try {
    const codes = [];
    for (let i = 0; i < 5; i++)
      codes.push((await limited.app.inject({ method: "GET", url: `/v1/events/release-${"0".repeat(32)}`, headers: auth })).statusCode);
    assert.deepEqual(codes, [404, 404, 404, 429, 429]);
    const p = await limited.app.inject({ method: "GET", url: `/v1/events/release-${"0".repeat(32)}`, headers: auth });
    assert.equal(p.json().type, "urn:homeostat:problem:rate-limited");
    assert.equal((await limited.app.inject({ method: "GET", url: "/healthz" })).statusCode, 200, "health is never limited");
  } finally {
    await limited.cleanup();
  }
});
