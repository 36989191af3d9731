/**
 * OSV advisories in, through POST /v1/advisories and through the poller (a directory and an
 * HTTP feed in OSV's bucket layout), into a real JetStream: exactly the named catalog
 * packages are enqueued at advisory priority, once per advisory revision.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { createLogger } from "@homeostat/core";
import { readdirSync, readFileSync } from "node:fs";
import { osvSchema } from "@homeostat/catalog";
import { advisoryCatalogPackages, ingestAdvisories } from "./advisories.ts";
import { cursorBucket, OsvPoller } from "./osv-poller.ts";
import { ingestTestEnv, PLAIN_PACKAGES, TOKEN, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

const SKEW = 24 * 3_600_000;
const CORPUS = path.join(import.meta.dirname, "../../../test/fixtures/osv");

let env: IngestTestEnv;
before(async () => void (env = await ingestTestEnv()));
after(async () => env.cleanup());

const post = (payload: unknown) =>
  env.app.inject({
    method: "POST",
    url: "/v1/advisories",
    headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
    payload: JSON.stringify(payload),
  });
const osv = (id: string, names: string[], modified = "2025-03-01T00:00:00Z") => ({
  id,
  modified,
  affected: names.map((n, i) =>
    i % 2 === 0
      ? { package: { ecosystem: "Debian", name: n }, ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "9.9" }] }] }
      : { package: { ecosystem: "OSS-Fuzz", name: `upstream-${n}`, purl: `pkg:generic/${n}@1.0` }, versions: ["1.0"] },
  ),
});

test("one document, an array and {advisories} are accepted; keys at advisory priority with the event as cause", async () => {
  const before = (await env.intake()).length;
  const one = await post(osv("OSV-ONE-1", ["openssl", "not-in-catalog"]));
  assert.equal(one.statusCode, 202, one.body);
  assert.deepEqual(one.json().keys, ["package/openssl"]);
  const arr = await post([osv("OSV-ARR-1", ["curl"]), osv("OSV-ARR-2", ["x", "pkg001"])]);
  assert.deepEqual(arr.json().keys, ["package/curl", "package/pkg001"], "pkg001 named by its generic purl");
  const wrapped = await post({ advisories: [osv("OSV-WRAP-1", ["pkg002"])] });
  assert.deepEqual(wrapped.json().keys, ["package/pkg002"]);
  const added = (await env.intake()).slice(before);
  assert.deepEqual(added.map((r) => r.key).sort(), ["package/curl", "package/openssl", "package/pkg001", "package/pkg002"]);
  assert.ok(added.every((r) => r.priority === "advisory" && r.cause.type === "advisory" && /^advisory-/.test(r.cause.id!)));
  // Stored for the reconciler, under each catalog package it names, with only that package's entries.
  const stored = await env.advisories.list("pkg001");
  assert.deepEqual(
    stored.map((x) => x.id),
    ["OSV-ARR-2"],
  );
  assert.deepEqual(
    stored[0]!.affected!.map((x) => x.package?.purl),
    ["pkg:generic/pkg001@1.0"],
  );
});

test("the same id and modified twice enqueues nothing new; a new modified is a new event", async () => {
  const a = osv("OSV-IDEM-1", ["pkg010"]);
  assert.equal((await post(a)).json().accepted, 1);
  const count = (await env.intake()).length;
  const again = await post(a);
  assert.deepEqual([again.json().accepted, again.json().duplicates, again.json().keys], [0, 1, []]);
  assert.equal((await env.intake()).length, count);
  const revised = await post({ ...a, modified: "2025-04-01T00:00:00Z" });
  assert.deepEqual(revised.json().keys, ["package/pkg010"]);
  // Its event states where the revision is stored, so that a run that read that far answers it.
  const event = await env.app.inject({ method: "GET", url: `/v1/events/${revised.json().results[0].event}`, headers: { authorization: `Bearer ${TOKEN}` } });
  const stored = await env.advisories.kv.get("pkg010.OSV-IDEM-1");
  assert.deepEqual(event.json().facts, { advisories: stored!.revision });
});

test("a batch of 1,000 advisories produces exactly the affected keys", async () => {
  // Deterministic pseudo-random names: some catalog packages, mostly not.
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed / 2 ** 31);
  const expected = new Set<string>();
  const batch = Array.from({ length: 1000 }, (_, i) => {
    const names = Array.from({ length: 1 + Math.floor(rnd() * 3) }, () =>
      rnd() < 0.03 ? PLAIN_PACKAGES[Math.floor(rnd() * PLAIN_PACKAGES.length)]! : `elsewhere-${Math.floor(rnd() * 5000)}`,
    );
    for (const n of names) if (PLAIN_PACKAGES.includes(n)) expected.add(`package/${n}`);
    return osv(`OSV-BATCH-${i}`, names, `2025-05-01T00:00:${String(i % 60).padStart(2, "0")}Z`);
  });
  assert.ok(expected.size > 10 && expected.size < 50, `a meaningful subset (${expected.size})`);
  const before = (await env.intake()).length;
  const res = await post({ advisories: batch });
  assert.equal(res.statusCode, 202, res.body.slice(0, 500));
  assert.equal(res.json().accepted, 1000);
  assert.deepEqual(res.json().keys, [...expected].sort());
  const added = (await env.intake()).slice(before);
  assert.deepEqual([...new Set(added.map((r) => r.key))].sort(), [...expected].sort());
});

test("a batch is answered per record: bad and future-dated records are refused with their reasons, the others accepted", async () => {
  const before = (await env.intake()).length;
  const future = new Date(Date.now() + 3 * SKEW).toISOString();
  const res = await post([
    osv("OSV-OK-9", ["pkg020"]),
    { id: "OSV-BAD-1", modified: "not a time" },
    osv("OSV-FUTURE-1", ["pkg021"], future),
    { nonsense: true },
  ]);
  assert.equal(res.statusCode, 202, res.body);
  const body = res.json();
  assert.deepEqual([body.accepted, body.refused, body.keys], [1, 3, ["package/pkg020"]]);
  assert.deepEqual(
    body.results.map((r: { index: number; refused?: boolean; advisory?: string }) => [r.index, r.refused ?? false, r.advisory]),
    [
      [0, false, "OSV-OK-9"],
      [1, true, "OSV-BAD-1"],
      [2, true, "OSV-FUTURE-1"],
      [3, true, undefined],
    ],
  );
  assert.deepEqual([body.results[1].reason, body.results[1].errors[0].pointer], ["invalid-advisory", "/1/modified"]);
  assert.equal(body.results[2].reason, "modified-in-future");
  assert.match(body.results[2].errors[0].detail, /in the future, more than the allowed clock skew/);
  assert.deepEqual(
    (await env.intake()).slice(before).map((r) => r.key),
    ["package/pkg020"],
    "only the valid record's key",
  );
  assert.deepEqual(
    (await env.advisories.list("pkg021")).filter((a) => a.id === "OSV-FUTURE-1"),
    [],
    "the future-dated record is not stored",
  );
  const allBad = await post({ id: "OSV-FUTURE-2", modified: future, affected: [] });
  assert.deepEqual([allBad.statusCode, allBad.json().type], [400, "urn:homeostat:problem:modified-in-future"]);
  const noToken = await env.app.inject({
    method: "POST",
    url: "/v1/advisories",
    headers: { "content-type": "application/json" },
    payload: JSON.stringify(osv("OSV-OK-9", ["pkg020"])),
  });
  assert.equal(noToken.statusCode, 401);
});

test("a revision stored with a far-future modified no longer hides later real revisions", async () => {
  const poisoned = { ...osv("OSV-POISON-1", ["pkg022"], "2099-01-01T00:00:00Z"), summary: "stale" };
  // Stored as it could be before the skew check existed.
  await env.advisories.record(osvSchema.parse(poisoned), ["pkg022"]);
  const real = await post({ ...osv("OSV-POISON-1", ["pkg022"], "2025-08-01T00:00:00Z"), summary: "real" });
  assert.equal(real.statusCode, 202, real.body);
  assert.deepEqual(
    (await env.advisories.list("pkg022")).filter((a) => a.id === "OSV-POISON-1").map((a) => [a.modified, a.summary]),
    [["2025-08-01T00:00:00Z", "real"]],
  );
});

test("OSV 1.6 records of several databases are accepted with their severities; package-less GIT entries map by repository; a withdrawal says so", async () => {
  const corpus = readdirSync(CORPUS)
    .filter((f) => f.endsWith(".json"))
    .map((f) => JSON.parse(readFileSync(path.join(CORPUS, f), "utf8")));
  const res = await post({ advisories: corpus });
  assert.equal(res.statusCode, 202, res.body.slice(0, 500));
  assert.deepEqual([res.json().accepted + res.json().duplicates, res.json().refused], [corpus.length, 0]);
  // openssl is named by DSA-5103-1, and by CVE-2022-0778's GIT range once a package's source is that repository.
  assert.ok(res.json().keys.includes("package/openssl"));
  const log4j = res.json().results.find((r: { advisory: string }) => r.advisory === "GHSA-jfh8-c2jp-5v3q");
  assert.deepEqual(log4j.severity, [{ type: "CVSS_V3", vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", baseScore: 10, rating: "Critical" }]);
  const cve = corpus.find((a) => a.id === "CVE-2022-0778");
  const gitCatalog = {
    ...env.catalog,
    packages: new Map([["ossl", { ...env.catalog.packages.get("curl")!, name: "ossl", upstream: { github: "OpenSSL/openssl", prereleases: false } }]]),
  } as unknown as typeof env.catalog;
  assert.deepEqual(advisoryCatalogPackages(osvSchema.parse(cve), gitCatalog), ["ossl"], "by upstream.github, case and .git aside");
  const withdrawn = await post({ ...osv("OSV-WD-1", ["pkg023"], "2025-09-02T00:00:00Z"), withdrawn: "2025-09-02T00:00:00Z" });
  const ev = await env.app.inject({ method: "GET", url: `/v1/events/${withdrawn.json().results[0].event}`, headers: { authorization: `Bearer ${TOKEN}` } });
  assert.match(ev.json().summary, /^advisory OSV-WD-1 withdrawn 2025-09-02T00:00:00Z .*no longer counts/);
});

test("the poller follows a directory by modified, with its cursor in NATS, across restarts", async () => {
  const dir = path.join(env.t.dir, "osv");
  mkdirSync(path.join(dir, "Debian"), { recursive: true });
  const write = (a: ReturnType<typeof osv>) => writeFileSync(path.join(dir, "Debian", `${a.id}.json`), JSON.stringify(a));
  write(osv("DIR-1", ["pkg030"], "2025-06-01T00:00:00Z"));
  write(osv("DIR-2", ["pkg031"], "2025-06-02T00:00:00Z"));
  writeFileSync(path.join(dir, "broken.json"), "{nope");
  const handled: string[][] = [];
  const signal = new AbortController().signal;
  const make = () =>
    new OsvPoller({
      nats: env.t.nats,
      source: dir,
      intervalMs: 60_000,
      handle: async (advs) => {
        handled.push(advs.map((a) => a.id));
        await ingestAdvisories(advs, env.catalog, env.acceptor, env.advisories, { maxFutureSkewMs: SKEW });
      },
      maxFutureSkewMs: SKEW,
      log: createLogger("test"),
      signal,
    });
  const poller = make();
  assert.deepEqual(await poller.poll(), { handled: 2, skipped: 0, cursor: "2025-06-02T00:00:00Z" });
  assert.deepEqual(handled, [["DIR-1", "DIR-2"]]);
  assert.equal((await poller.poll()).handled, 0, "nothing changed");
  write(osv("DIR-3", ["pkg032"], "2025-06-03T00:00:00Z"));
  assert.deepEqual((await poller.poll()).handled, 1);
  // A new process reads the files again but only from the stored cursor on.
  const restarted = make();
  assert.equal(await restarted.cursor(), "2025-06-03T00:00:00Z");
  const before = (await env.intake()).length;
  assert.equal((await restarted.poll()).handled, 1, "only the advisory at the cursor");
  assert.equal((await env.intake()).length, before, "and it was already handled: nothing enqueued");
});

test("the poller follows an HTTP feed in OSV's layout (modified_id.csv)", async () => {
  const docs = new Map([
    ["Debian/HTTP-1", osv("HTTP-1", ["pkg040"], "2025-07-01T00:00:00Z")],
    ["Debian/HTTP-2", osv("HTTP-2", ["pkg041"], "2025-07-02T00:00:00Z")],
  ]);
  const server = http.createServer((req, res) => {
    if (req.url === "/osv/modified_id.csv")
      return res.end(
        [...docs]
          .map(([p, d]) => `${d.modified},${p}`)
          .reverse()
          .join("\n") + "\n",
      );
    const m = /^\/osv\/(.+)\.json$/.exec(req.url ?? "");
    const d = m && docs.get(decodeURIComponent(m[1]!));
    if (d) return res.end(JSON.stringify(d));
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  try {
    const poller = new OsvPoller({
      nats: env.t.nats,
      source: `http://127.0.0.1:${(server.address() as { port: number }).port}/osv/`,
      intervalMs: 60_000,
      handle: async (advs) => void (await ingestAdvisories(advs, env.catalog, env.acceptor, env.advisories, { maxFutureSkewMs: SKEW })),
      maxFutureSkewMs: SKEW,
      log: createLogger("test"),
      signal: new AbortController().signal,
    });
    const before = (await env.intake()).length;
    assert.deepEqual(await poller.poll(), { handled: 2, skipped: 0, cursor: "2025-07-02T00:00:00Z" });
    assert.deepEqual(
      (await env.intake())
        .slice(before)
        .map((r) => r.key)
        .sort(),
      ["package/pkg040", "package/pkg041"],
    );
  } finally {
    server.close();
  }
});

test("the poller skips an advisory dated beyond now + skew, logs why, and its cursor never passes that", async () => {
  const dir = path.join(env.t.dir, "osv-future");
  mkdirSync(dir, { recursive: true });
  const soon = new Date(Date.now() + 3 * 60_000).toISOString();
  writeFileSync(path.join(dir, "F-1.json"), JSON.stringify(osv("F-1", ["pkg033"], "2025-10-01T00:00:00Z")));
  writeFileSync(path.join(dir, "F-2.json"), JSON.stringify(osv("F-2", ["pkg034"], "2099-01-01T00:00:00Z")));
  writeFileSync(path.join(dir, "F-3.json"), JSON.stringify(osv("F-3", ["pkg035"], soon)));
  const warnings: Array<[string, Record<string, unknown> | undefined]> = [];
  const log = { ...createLogger("test"), warn: (m: string, f?: Record<string, unknown>) => void warnings.push([m, f]) };
  const poller = new OsvPoller({
    nats: env.t.nats,
    source: dir,
    intervalMs: 60_000,
    handle: async (advs) => void (await ingestAdvisories(advs, env.catalog, env.acceptor, env.advisories, { maxFutureSkewMs: SKEW })),
    maxFutureSkewMs: SKEW,
    log,
    signal: new AbortController().signal,
  });
  assert.deepEqual(await poller.poll(), { handled: 2, skipped: 1, cursor: soon }, "within the skew is fine");
  assert.deepEqual(
    warnings.map(([m, f]) => [m, f?.advisory]),
    [["osv advisory skipped", "F-2"]],
  );
  assert.match(String(warnings[0]![1]!.reason), /in the future/);
  // Read again at the next poll (not marked as read), still skipped, the cursor stays.
  assert.deepEqual(await poller.poll(), { handled: 0, skipped: 1, cursor: soon });
  // A cursor moved far ahead before this check is discarded and the feed read from the start.
  await (await env.t.nats.kvm.open(cursorBucket(env.t.nats))).put((poller as unknown as { cursorKey: string }).cursorKey, "2099-01-01T00:00:00Z");
  warnings.length = 0;
  assert.deepEqual(await poller.poll(), { handled: 2, skipped: 1, cursor: soon });
  assert.match(warnings[0]![0], /cursor lies beyond now \+ the allowed clock skew/);
});
