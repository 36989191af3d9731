/**
 * The builder's store collection end to end with the real services (store-collect.ts): a
 * package released again leaves its older build's archive, metadata, provenance and cache record
 * in the store; once past the grace the builder removes them, and keeps everything the keys'
 * signed statuses name, so that a dependant still builds from it. Grace and build timeout are
 * 20 s here (the grace may be no shorter), collection every second.
 *
 * lib <- app, both Ready at 1.0.0. lib is released at 1.0.1 from a source whose files differ,
 * so its archive differs; app is rebuilt on it (until then app's metadata names lib's old
 * archive, which it was built from, and keeps it). Then app is released at 1.0.1 and builds from
 * lib's archive as the store still holds it: nothing had to be rebuilt for being gone. The
 * trials' store, which no status names, loses what is older than the grace.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, utimesSync, writeFileSync } from "node:fs";
import path from "node:path";
import { getKeyStatus } from "@homeostat/status-api";
import { packAppTarball } from "../scripts/app-tarball.ts";
import { packageReadyAt, sourceRecipe, startPackagesFactory, type AppSource, type PackagesFactory } from "./harness.ts";

let f: PackagesFactory;
const readyAt = (name: string, version: string, timeoutMs: number) => packageReadyAt(f.factory.client, name, version, timeoutMs);
const graceMs = 20_000;

async function release(name: string, version: string, source: AppSource): Promise<void> {
  const res = await fetch(`${f.factory.ingestUrl}/v1/releases`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ package: name, version, url: source.url, sha256: source.sha256 }),
  });
  assert.equal(res.status, 202, await res.text());
}

before(async () => {
  const recipe = (name: string, deps: string[], source: AppSource) => sourceRecipe(name, deps, [`install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`], source);
  f = await startPackagesFactory((source) => ({ lib: recipe("lib", [], source), app: recipe("app", ["lib"], source) }), {
    HOMEOSTAT_BUILD_TIMEOUT_MS: String(graceMs),
    HOMEOSTAT_STORE_GRACE_MS: String(graceMs),
    HOMEOSTAT_STORE_COLLECT_INTERVAL_MS: "1000",
  });
});

after(() => f?.stop());

test(
  "an older build's blobs and cache record, and old trial blobs, leave the store after the grace; what the signed statuses name stays",
  { timeout: 600_000 },
  async () => {
    const dataDir = f.t.env.HOMEOSTAT_DATA;
    assert.ok(dataDir);
    const blob = (digest: string | undefined) => {
      assert.ok(digest, "named by the status");
      return path.join(dataDir, "store", "blobs", "sha256", digest.slice("sha256:".length));
    };
    const record = (inputDigest: string | undefined) => path.join(dataDir, "store", "results", `${(inputDigest ?? "").slice("sha256:".length)}.json`);
    const old = await readyAt("lib", "1.0.0", 240_000);
    const app0 = await readyAt("app", "1.0.0", 240_000);
    const oldFiles = [
      blob(old.actual?.outputs?.archive),
      blob(old.actual?.outputs?.metadata),
      blob(old.actual?.outputs?.provenance),
      record(old.actual?.inputDigest),
    ];
    for (const file of oldFiles) assert.ok(existsSync(file), file);
    // A trial build's blob from yesterday: nothing names what trials store.
    const trialBlob = path.join(dataDir, "trials", "store", "blobs", "sha256", "ab".repeat(32));
    mkdirSync(path.dirname(trialBlob), { recursive: true });
    writeFileSync(trialBlob, "a trial's log");
    const yesterday = new Date(Date.now() - 86_400_000);
    utimesSync(trialBlob, yesterday, yesterday);
    oldFiles.push(trialBlob);

    const changed = packAppTarball(path.join(f.t.dir, "app-1.0.1.tar.gz"), { "run.sh": { content: "#!/bin/sh\necho ok, 1.0.1\n", mode: 0o755 } });
    await release("lib", "1.0.1", changed);
    const lib = await readyAt("lib", "1.0.1", 180_000);
    assert.notEqual(lib.actual?.outputs?.archive, old.actual?.outputs?.archive, "1.0.1's files differ");
    // The dependant is rebuilt on lib's new archive: until then its metadata names lib's old one, which stays.
    for (const deadline = Date.now() + 180_000; ; await new Promise((r) => setTimeout(r, 250))) {
      const app = await getKeyStatus(f.factory.client, "package/app");
      if (app.phase === "Ready" && app.actual?.inputDigest !== app0.actual?.inputDigest) break;
      assert.ok(Date.now() < deadline, `app rebuilt on lib 1.0.1: ${app.phase} at ${app.actual?.inputDigest}`);
    }

    for (const deadline = Date.now() + graceMs + 60_000; oldFiles.some(existsSync); await new Promise((r) => setTimeout(r, 250)))
      assert.ok(Date.now() < deadline, `lib 1.0.0's blobs and record collected: ${oldFiles.filter(existsSync).join(", ")} still there`);

    // What every signed status names is still there, signatures included.
    for (const name of ["lib", "app"]) {
      const s = await getKeyStatus(f.factory.client, `package/${name}`);
      const named = [s.actual?.outputs?.archive, s.actual?.outputs?.metadata, s.actual?.outputs?.provenance, ...Object.values(s.actual?.signatures ?? {})];
      for (const d of named) assert.ok(existsSync(blob(d)), `${name}'s ${d} kept`);
      assert.ok(existsSync(record(s.actual?.inputDigest)), `${name}'s cache record kept`);
    }
    assert.ok(readdirSync(path.join(dataDir, "store", "blobs", "sha256")).length > 0);

    await release("app", "1.0.1", f.source);
    const app = await readyAt("app", "1.0.1", 180_000);
    assert.equal(app.phase, "Ready");
    assert.equal((await getKeyStatus(f.factory.client, "package/lib")).actual?.inputDigest, lib.actual?.inputDigest, "lib was not rebuilt");
  },
);
