/**
 * A release accepted for a key that waits for another build through a dependency is built, end
 * to end with the real services (found by the chaos suite, where it looked like a release lost
 * after a NATS restart).
 *
 * deep <- mid <- tip. deep and tip are released at once; tip is reconciled while deep's slow
 * build runs, so it waits for deep (through mid). deep's new release has the very files of the
 * old one, so its archive, and with it mid's inputs, stay as they were: mid builds nothing and
 * has nothing to fan out. tip must still be told, and build its own release.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
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
  const recipe = (name: string, deps: string[], steps: string[]) =>
    `name: ${name}\nversion: "1.0.0"\nlicense: MIT\nsource: { url: "${source.url}", sha256: "${source.sha256}" }\n` +
    `build:\n  steps:\n${steps.map((s) => `    - ${JSON.stringify(s)}`).join("\n")}\ndependencies: { build: [${deps.join(", ")}], runtime: [] }\n`;
  const install = (name: string) => `install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`;
  // deep's build is slow, so that tip is reconciled while it runs.
  writeFileSync(path.join(catalogDir, "packages", "deep.yaml"), recipe("deep", [], ["sleep 5", install("deep")]));
  writeFileSync(path.join(catalogDir, "packages", "mid.yaml"), recipe("mid", ["deep"], [install("mid")]));
  writeFileSync(path.join(catalogDir, "packages", "tip.yaml"), recipe("tip", ["mid"], [install("tip")]));
  factory = await startTestFactory(t, { HOMEOSTAT_CATALOG: catalogDir }, { only: ["ingest", "queue", "reconciler", "builder", "signer"] });
  client = factory.client;
});

after(async () => {
  await factory?.stop();
  await t?.cleanup();
});

test("a key waiting through an unchanged dependency for a build is told when it is done, and builds its own release", { timeout: 600_000 }, async () => {
  for (const name of ["deep", "mid", "tip"]) await readyAt(name, "1.0.0", 240_000);
  const midBefore = (await getKeyStatus(client, "package/mid")).actual?.inputDigest;
  for (const name of ["deep", "tip"]) {
    const res = await fetch(`${factory.ingestUrl}/v1/releases`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ package: name, version: "1.0.1", url: source.url, sha256: source.sha256 }),
    });
    assert.equal(res.status, 202, await res.text());
  }
  await readyAt("deep", "1.0.1", 120_000);
  const tip = await readyAt("tip", "1.0.1", 120_000);
  assert.equal(tip.waitingFor, undefined);
  assert.equal((await getKeyStatus(client, "package/mid")).actual?.inputDigest, midBefore, "mid's inputs did not change: it was not rebuilt");
});
