/**
 * The ingest edge: every body is validated before anything is recorded or enqueued, and each
 * refusal names what was wrong. Releases are recorded in a real JetStream KV bucket.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { loadCatalog, ReleaseStore, type Catalog, type EnqueueRequest } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { buildIngestServer } from "./server.ts";

let t: TestEnv;
let catalog: Catalog;
const enqueued: Array<{ req: EnqueueRequest; msgId: string }> = [];
let app: ReturnType<typeof buildIngestServer>;

before(async () => {
  t = await testEnv();
  catalog = await loadCatalog(path.join(import.meta.dirname, "../../../examples/catalog"));
  app = buildIngestServer({
    catalog: () => catalog,
    releases: new ReleaseStore(t.buckets.releases),
    enqueue: async (req, msgId) => void enqueued.push({ req, msgId }),
    ready: () => true,
  });
});
after(async () => {
  await app.close();
  await t.cleanup();
});

const release = { package: "motd", version: "1.1", url: "file:///src/motd-1.1.tar.gz", sha256: "a".repeat(64) };
const post = (payload: unknown) =>
  app.inject({ method: "POST", url: "/v1/releases", headers: { "content-type": "application/json" }, payload: typeof payload === "string" ? payload : JSON.stringify(payload) });

test("a valid release is recorded and its package key enqueued with a per-release message id", async () => {
  enqueued.length = 0;
  const res = await post(release);
  assert.equal(res.statusCode, 202, res.body);
  assert.deepEqual(res.json(), { accepted: true, key: "package/motd", release: "new" });
  assert.equal(enqueued.length, 1);
  assert.equal(enqueued[0]!.req.key, "package/motd");
  assert.equal(enqueued[0]!.msgId, `release:motd@1.1:${"a".repeat(64)}`);

  const again = await post(release);
  assert.equal(again.statusCode, 202);
  assert.equal(again.json().release, "known");
});

test("each bad body is a 4xx naming the problem, and nothing is recorded or enqueued", async () => {
  enqueued.length = 0;
  const cases: Array<[unknown, number, RegExp]> = [
    [{ ...release, sha256: undefined }, 400, /sha256/],
    [{ ...release, version: 12 }, 400, /version/],
    [{ ...release, sha256: "XYZ" }, 400, /sha256/],
    [{ ...release, url: "ftp://host/x.tar.gz" }, 400, /url/],
    [{ ...release, extra: true }, 400, /additional/],
    ["{not json", 400, /JSON/i],
    [{ ...release, package: "no-such-package" }, 404, /unknown package "no-such-package"/],
    [{ ...release, url: "file:///elsewhere.tar.gz" }, 409, /immutable/],
  ];
  for (const [body, status, message] of cases) {
    const res = await post(body);
    assert.equal(res.statusCode, status, `${JSON.stringify(body)} -> ${res.body}`);
    assert.match(res.json().message, message);
  }
  assert.equal(enqueued.length, 0);
  assert.deepEqual((await new ReleaseStore(t.buckets.releases).list("no-such-package")), []);
});

test("an oversized body is 413 and unknown routes are 404 with a message", async () => {
  const big = await post({ ...release, version: "x".repeat(300 * 1024) });
  assert.equal(big.statusCode, 413);
  const none = await app.inject({ method: "GET", url: "/v1/nothing" });
  assert.equal(none.statusCode, 404);
  assert.match(none.json().message, /no route GET \/v1\/nothing/);
});
