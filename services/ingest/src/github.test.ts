/**
 * GitHub webhooks with GitHub's own example payloads (@octokit/webhooks-examples), signed as
 * GitHub signs them, into a real JetStream: what is accepted, what is refused, and that a
 * redelivery enqueues nothing, even after a restart.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { UpstreamLedger } from "@homeostat/catalog";
import { ingestTestEnv, sign, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

type Example = { name: string; examples: Array<Record<string, unknown> & { action?: string; release?: { prerelease: boolean; draft: boolean } }> };
const examples = createRequire(import.meta.url)("@octokit/webhooks-examples/api.github.com/index.json") as Example[];
const of = (name: string) => examples.find((e) => e.name === name)!.examples;
const published = of("release").find((e) => e.action === "published" && !e.release!.prerelease)!;

let env: IngestTestEnv;
before(async () => void (env = await ingestTestEnv()));
after(async () => env.cleanup());

let deliveries = 0;
const deliver = (event: string, payload: unknown, o: { delivery?: string; signature?: string; contentType?: string } = {}) => {
  const body = typeof payload === "string" ? payload : JSON.stringify(payload);
  return env.app.inject({
    method: "POST",
    url: "/v1/webhooks/github",
    headers: {
      "content-type": o.contentType ?? "application/json",
      "x-github-event": event,
      "x-github-delivery": o.delivery ?? `00000000-0000-4000-8000-${String(++deliveries).padStart(12, "0")}`,
      "x-hub-signature-256": o.signature ?? sign(body),
    },
    payload: body,
  });
};

test("a real signed release delivery enqueues the packages whose upstream is that repository", async () => {
  const before = (await env.intake()).length;
  const res = await deliver("release", published);
  assert.equal(res.statusCode, 202, res.body);
  const body = res.json();
  assert.equal(body.duplicate, false);
  assert.deepEqual([...body.keys].sort(), ["package/hello", "package/hello-mirror"]);
  const added = (await env.intake()).slice(before);
  assert.deepEqual(added.map((r) => r.key).sort(), ["package/hello", "package/hello-mirror"]);
  for (const r of added) {
    assert.equal(r.priority, "release");
    assert.equal(r.cause.type, "release");
    assert.equal(r.cause.id, body.event, "cause.id links the key to its event");
  }
  const record = await env.app.inject({ method: "GET", url: `/v1/events/${body.event}`, headers: { authorization: "Bearer test-token-0123456789" } });
  assert.equal(record.statusCode, 200, record.body);
  assert.deepEqual(record.json().keys.sort(), ["package/hello", "package/hello-mirror"]);
  assert.equal(record.json().source, "github");
  // The tag becomes an announcement per package, for the reconciler's upstream resolver.
  const tag = (published.release as unknown as { tag_name: string }).tag_name;
  const announced = await new UpstreamLedger(env.t.buckets.releases).announced("hello");
  assert.deepEqual(
    announced.map((a) => [a.version, a.tag, a.origin, a.event]),
    [[tag.replace(/^v/, ""), tag, "github", body.event]],
  );
});

test("every real example of every event is answered without error: release per policy, ping 200, others 202 ignored", async () => {
  for (const group of examples) {
    for (const payload of group.examples) {
      const res = await deliver(group.name, payload);
      if (group.name === "ping") assert.equal(res.statusCode, 200, res.body);
      else assert.equal(res.statusCode, 202, `${group.name}: ${res.body}`);
      if (group.name === "release") {
        const counts = ["published", "released"].includes(payload.action!) && !payload.release!.prerelease && !payload.release!.draft;
        assert.equal(res.json().ignored === true, !counts, `${payload.action} prerelease=${payload.release!.prerelease}: ${res.body}`);
      } else if (group.name !== "ping") {
        assert.equal(res.json().ignored, true);
      }
    }
  }
});

test("the same delivery id again enqueues nothing, also after a restart", async () => {
  const delivery = "11111111-2222-4333-8444-555555555555";
  const first = await deliver("release", published, { delivery });
  assert.equal(first.json().duplicate, false);
  const count = (await env.intake()).length;
  const again = await deliver("release", published, { delivery });
  assert.equal(again.statusCode, 202);
  assert.deepEqual(again.json(), { event: first.json().event, duplicate: true, keys: [] });
  await env.restart();
  const afterRestart = await deliver("release", published, { delivery });
  assert.equal(afterRestart.json().duplicate, true);
  assert.equal((await env.intake()).length, count, "nothing new on the intake stream");
});

test("a release from an unknown repository is accepted with zero keys", async () => {
  const payload = { ...published, repository: { ...(published.repository as object), full_name: "nobody/nothing" } };
  const res = await deliver("release", payload);
  assert.equal(res.statusCode, 202);
  assert.deepEqual(res.json().keys, []);
});

test("pre-releases are followed only when configured; drafts never", async () => {
  const pre = of("release").find((e) => e.action === "prereleased")!;
  assert.equal((await deliver("release", pre)).json().ignored, true);
  const env2 = await ingestTestEnv({ githubActions: ["published", "released", "prereleased"], githubPrereleases: true });
  try {
    const body = JSON.stringify(pre);
    const res = await env2.app.inject({
      method: "POST",
      url: "/v1/webhooks/github",
      headers: { "content-type": "application/json", "x-github-event": "release", "x-github-delivery": "pre-1", "x-hub-signature-256": sign(body) },
      payload: body,
    });
    assert.equal(res.statusCode, 202, res.body);
    assert.equal(res.json().keys.length, 2);
    const draft = { ...published, release: { ...published.release!, draft: true } };
    assert.equal((await deliver("release", draft)).json().ignored, true);
  } finally {
    await env2.cleanup();
  }
});

test("a form-encoded delivery (payload=…) is verified over the raw form body", async () => {
  const form = `payload=${encodeURIComponent(JSON.stringify(published))}`;
  const res = await deliver("release", form, { contentType: "application/x-www-form-urlencoded" });
  assert.equal(res.statusCode, 202, res.body);
  assert.equal(res.json().keys.length, 2);
});

test("forged, malformed and oversized deliveries are refused as problem+json and enqueue nothing", async () => {
  const before = (await env.intake()).length;
  const body = JSON.stringify(published);
  const cases: Array<[string, Awaited<ReturnType<typeof deliver>>, number, string]> = [
    ["wrong signature", await deliver("release", published, { signature: sign(body, "not the secret") }), 401, "bad-signature"],
    ["no signature", await deliver("release", published, { signature: "" }), 401, "bad-signature"],
    ["signature of other bytes", await deliver("release", body + " ", { signature: sign(body) }), 401, "bad-signature"],
    ["malformed JSON", await deliver("release", '{"action": "published", '), 400, "malformed-json"],
    ["not an object", await deliver("release", "[1,2]"), 400, "invalid-body"],
    ["release without repository", await deliver("release", { action: "published", release: { tag_name: "v1" } }), 400, "invalid-release-event"],
    ["wrong field type", await deliver("release", { ...published, release: { ...published.release!, tag_name: 12 } }), 400, "invalid-body"],
    ["oversized", await deliver("release", { ...published, padding: "x".repeat(3 * 1024 * 1024) }), 413, "body-too-large"],
    ["wrong media type", await deliver("release", "<xml/>", { contentType: "application/xml" }), 415, "unsupported-media-type"],
  ];
  for (const [what, res, status, slug] of cases) {
    assert.equal(res.statusCode, status, `${what}: ${res.body}`);
    assert.match(res.headers["content-type"] as string, /^application\/problem\+json/, what);
    const p = res.json();
    assert.equal(p.type, `urn:homeostat:problem:${slug}`, `${what}: ${res.body}`);
    assert.equal(p.status, status);
    assert.ok(p.title && p.detail && p.instance, what);
  }
  const missingHeader = await env.app.inject({
    method: "POST",
    url: "/v1/webhooks/github",
    headers: { "content-type": "application/json", "x-github-event": "release", "x-hub-signature-256": sign(body) },
    payload: body,
  });
  assert.equal(missingHeader.statusCode, 400);
  assert.equal(missingHeader.json().errors[0].pointer, "/x-github-delivery");
  assert.equal((await env.intake()).length, before);
});

test("without a configured secret every delivery is refused", async () => {
  const env2 = await ingestTestEnv({ githubSecret: undefined });
  try {
    const body = JSON.stringify(published);
    const res = await env2.app.inject({
      method: "POST",
      url: "/v1/webhooks/github",
      headers: { "content-type": "application/json", "x-github-event": "release", "x-github-delivery": "x-1", "x-hub-signature-256": sign(body) },
      payload: body,
    });
    assert.equal(res.statusCode, 401);
    assert.match(res.json().detail, /HOMEOSTAT_GITHUB_WEBHOOK_SECRET/);
  } finally {
    await env2.cleanup();
  }
});
