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
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { getKeyStatus, type StatusClient } from "@homeostat/status-api";
import { packAppTarball } from "../scripts/app-tarball.ts";
import { waitFor } from "../scripts/factory.ts";
import { startTestFactory, testEnv, type TestEnv, type TestFactory } from "./harness.ts";

let t: TestEnv;
let factory: TestFactory;
let client: StatusClient;
let source: { url: string; sha256: string };

/** Ready at `version`, built from the inputs its status says it desires. */
async function readyAt(name: string, version: string, timeoutMs: number) {
  return waitFor(
    `package/${name} to be Ready at ${version}`,
    async () => {
      const s = await getKeyStatus(client, `package/${name}`);
      return s.phase === "Ready" && s.actual?.version === version && s.actual.inputDigest === s.desiredInputDigest ? s : undefined;
    },
    timeoutMs,
    250,
  );
}

before(async () => {
  t = await testEnv();
  const catalogDir = path.join(t.dir, "catalog");
  mkdirSync(path.join(catalogDir, "packages"), { recursive: true });
  source = packAppTarball(path.join(t.dir, "app.tar.gz"), { "run.sh": { content: "#!/bin/sh\necho ok\n", mode: 0o755 } });
  const recipe = (name: string, deps: string[]) =>
    `name: ${name}\nversion: "1.0.0"\nlicense: MIT\nsource: { url: "${source.url}", sha256: "${source.sha256}" }\n` +
    `build:\n  steps:\n    - ${JSON.stringify(`install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`)}\ndependencies: { build: [${deps.join(", ")}], runtime: [] }\n`;
  writeFileSync(path.join(catalogDir, "packages", "lib.yaml"), recipe("lib", []));
  writeFileSync(path.join(catalogDir, "packages", "app.yaml"), recipe("app", ["lib"]));
  factory = await startTestFactory(t, { HOMEOSTAT_CATALOG: catalogDir }, { only: ["ingest", "queue", "reconciler", "builder", "signer"] });
  client = factory.client;
});

after(async () => {
  await factory?.stop();
  await t?.cleanup();
});

test("an archive gone from the store is rebuilt, the same bytes, when a dependant's build needs it", { timeout: 600_000 }, async () => {
  const lib = await readyAt("lib", "1.0.0", 240_000);
  await readyAt("app", "1.0.0", 240_000);
  const archive = lib.actual?.outputs?.archive;
  assert.ok(archive, "lib's status names its archive");
  const dataDir = t.env.HOMEOSTAT_DATA;
  assert.ok(dataDir);
  const blob = path.join(dataDir, "store", "blobs", "sha256", archive.slice("sha256:".length));
  assert.ok(existsSync(blob), blob);
  rmSync(blob);

  const res = await fetch(`${factory.ingestUrl}/v1/releases`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ package: "app", version: "1.0.1", url: source.url, sha256: source.sha256 }),
  });
  assert.equal(res.status, 202, await res.text());
  await readyAt("app", "1.0.1", 180_000);
  assert.ok(existsSync(blob), "lib's archive is back in the store, under the digest its signed status names");
  const libNow = await getKeyStatus(client, "package/lib");
  assert.equal(libNow.phase, "Ready");
  assert.equal(libNow.actual?.inputDigest, lib.actual?.inputDigest, "lib's status is as it was: its archive was restored, not a new build of lib");
});
