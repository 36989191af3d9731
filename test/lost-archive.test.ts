/**
 * A package archive gone from the builder's store (a volume restored from an older copy, a
 * deleted file) is rebuilt when a dependant's build needs it, end to end with the real services:
 * the key it belongs to is Ready at the inputs that made it, so nothing else would build it
 * again, and without it the dependant could never build.
 *
 * lib <- app. Both Ready; lib's archive is deleted from the store; app is released. app's build
 * finds lib's archive gone, rebuilds it from lib's inputs (the very same bytes: the build is
 * reproducible) and builds; lib's status stays as it was. Then the same with lib's archive
 * corrupted in place: its cached result, which names it, is not trusted, and it is rebuilt over.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { sha256Digest } from "@homeostat/core/digest";
import { getKeyStatus } from "@homeostat/status-api";
import { corruptInPlace } from "../scripts/chaos.ts";
import { packageReadyAt, sourceRecipe, startPackagesFactory, type AppSource, type PackagesFactory } from "./harness.ts";

let f: PackagesFactory;
const readyAt = (name: string, version: string, timeoutMs: number) => packageReadyAt(f.factory.client, name, version, timeoutMs);

async function release(name: string, version: string): Promise<void> {
  const res = await fetch(`${f.factory.ingestUrl}/v1/releases`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ package: name, version, url: f.source.url, sha256: f.source.sha256 }),
  });
  assert.equal(res.status, 202, await res.text());
}

/** lib's archive as its status names it, and the file that holds it in the builder's store. */
async function libArchive(): Promise<{ digest: string; file: string; inputDigest: string | undefined }> {
  const lib = await readyAt("lib", "1.0.0", 240_000);
  const digest = lib.actual?.outputs?.archive;
  assert.ok(digest, "lib's status names its archive");
  const dataDir = f.t.env.HOMEOSTAT_DATA;
  assert.ok(dataDir);
  return { digest, file: path.join(dataDir, "store", "blobs", "sha256", digest.slice("sha256:".length)), inputDigest: lib.actual?.inputDigest };
}

async function libUntouched(inputDigest: string | undefined): Promise<void> {
  const lib = await getKeyStatus(f.factory.client, "package/lib");
  assert.equal(lib.phase, "Ready");
  assert.equal(lib.actual?.inputDigest, inputDigest, "lib's status is as it was: its archive was restored, not a new build of lib");
}

before(async () => {
  const recipe = (name: string, deps: string[], source: AppSource) => sourceRecipe(name, deps, [`install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`], source);
  f = await startPackagesFactory((source) => ({ lib: recipe("lib", [], source), app: recipe("app", ["lib"], source) }));
});

after(() => f?.stop());

test("an archive gone from the store is rebuilt, the same bytes, when a dependant's build needs it", { timeout: 600_000 }, async () => {
  const lib = await libArchive();
  await readyAt("app", "1.0.0", 240_000);
  assert.ok(existsSync(lib.file), lib.file);
  rmSync(lib.file);
  await release("app", "1.0.1");
  await readyAt("app", "1.0.1", 180_000);
  assert.ok(existsSync(lib.file), "lib's archive is back in the store, under the digest its signed status names");
  await libUntouched(lib.inputDigest);
});

test("an archive corrupted in the store is rebuilt over, though a cached result names it", { timeout: 600_000 }, async () => {
  const lib = await libArchive();
  corruptInPlace(lib.file);
  await release("app", "1.0.2");
  await readyAt("app", "1.0.2", 180_000);
  assert.equal(sha256Digest(readFileSync(lib.file)), lib.digest, "lib's archive holds its bytes again");
  await libUntouched(lib.inputDigest);
});
