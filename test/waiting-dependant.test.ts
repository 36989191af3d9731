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
import { getKeyStatus } from "@homeostat/status-api";
import { packageReadyAt, sourceRecipe, startPackagesFactory, type PackagesFactory } from "./harness.ts";

let f: PackagesFactory;
const readyAt = (name: string, version: string, timeoutMs: number) => packageReadyAt(f.factory.client, name, version, timeoutMs);

before(async () => {
  const install = (name: string) => `install -D -m 755 run.sh $DESTDIR/usr/bin/${name}`;
  f = await startPackagesFactory((source) => ({
    // deep's build is slow, so that tip is reconciled while it runs.
    deep: sourceRecipe("deep", [], ["sleep 5", install("deep")], source),
    mid: sourceRecipe("mid", ["deep"], [install("mid")], source),
    tip: sourceRecipe("tip", ["mid"], [install("tip")], source),
  }));
});

after(() => f?.stop());

test("a key waiting through an unchanged dependency for a build is told when it is done, and builds its own release", { timeout: 600_000 }, async () => {
  for (const name of ["deep", "mid", "tip"]) await readyAt(name, "1.0.0", 240_000);
  const midBefore = (await getKeyStatus(f.factory.client, "package/mid")).actual?.inputDigest;
  for (const name of ["deep", "tip"]) {
    const res = await fetch(`${f.factory.ingestUrl}/v1/releases`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ package: name, version: "1.0.1", url: f.source.url, sha256: f.source.sha256 }),
    });
    assert.equal(res.status, 202, await res.text());
  }
  await readyAt("deep", "1.0.1", 120_000);
  const tip = await readyAt("tip", "1.0.1", 120_000);
  assert.equal(tip.waitingFor, undefined);
  assert.equal((await getKeyStatus(f.factory.client, "package/mid")).actual?.inputDigest, midBefore, "mid's inputs did not change: it was not rebuilt");
});
