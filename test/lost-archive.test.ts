/**
 * A package archive gone from the builder's store (a volume restored from an older copy, a
 * deleted file) is rebuilt when a dependant's build needs it, end to end with the real services:
 * the key it belongs to is Ready at the inputs that made it, so nothing else would build it
 * again, and without it the dependant could never build.
 *
 * lib <- app. Both Ready; lib's archive is deleted from the store; app is released. app's build
 * finds lib's archive gone, rebuilds it from lib's inputs (the very same bytes: the build is
 * reproducible) and builds; lib's status stays as it was.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, rmSync } from "node:fs";
import path from "node:path";
import { getKeyStatus } from "@homeostat/status-api";
import { packageReadyAt, sourceRecipe, startPackagesFactory, type AppSource, type PackagesFactory } from "./harness.ts";

let f: PackagesFactory;
const readyAt = (name: string, version: string, timeoutMs: number) => packageReadyAt(f.factory.client, name, version, timeoutMs);

before(async () => {
  const recipe = (name: string, deps: string[], source: AppSource) => sourceRecipe(name, deps, [`install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`], source);
  f = await startPackagesFactory((source) => ({ lib: recipe("lib", [], source), app: recipe("app", ["lib"], source) }));
});

after(() => f?.stop());

test("an archive gone from the store is rebuilt, the same bytes, when a dependant's build needs it", { timeout: 600_000 }, async () => {
  const lib = await readyAt("lib", "1.0.0", 240_000);
  await readyAt("app", "1.0.0", 240_000);
  const archive = lib.actual?.outputs?.archive;
  assert.ok(archive, "lib's status names its archive");
  const dataDir = f.t.env.HOMEOSTAT_DATA;
  assert.ok(dataDir);
  const blob = path.join(dataDir, "store", "blobs", "sha256", archive.slice("sha256:".length));
  assert.ok(existsSync(blob), blob);
  rmSync(blob);

  const res = await fetch(`${f.factory.ingestUrl}/v1/releases`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ package: "app", version: "1.0.1", url: f.source.url, sha256: f.source.sha256 }),
  });
  assert.equal(res.status, 202, await res.text());
  await readyAt("app", "1.0.1", 180_000);
  assert.ok(existsSync(blob), "lib's archive is back in the store, under the digest its signed status names");
  const libNow = await getKeyStatus(f.factory.client, "package/lib");
  assert.equal(libNow.phase, "Ready");
  assert.equal(libNow.actual?.inputDigest, lib.actual?.inputDigest, "lib's status is as it was: its archive was restored, not a new build of lib");
});
