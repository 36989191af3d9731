/**
 * A real GitHub release delivery rebuilds its package end to end: GitHub's own `release`
 * (published) example, its repository mapped to a package whose upstream is a loopback archive
 * host standing in for GitHub's (test/fixtures/github-upstream.ts), signed with the webhook
 * secret as GitHub signs it and posted to the running ingest of the five real services. The
 * reconciler's upstream resolver fetches the tag's tarball and records the release fact (its
 * sha256); the key is rebuilt, signed and Ready at the new version. No network.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ReleaseStore } from "@homeostat/catalog";
import { getKeyStatus, type StatusClient } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { startTestFactory, testEnv, type TestEnv, type TestFactory } from "./harness.ts";
import {
  deliver,
  PACKAGE,
  PINNED,
  publishedRelease,
  releaseDelivery,
  releaseTarball,
  startArchiveHost,
  writeReleaseCatalog,
  type ArchiveHost,
} from "./fixtures/github-upstream.ts";

const SECRET = "github-release-test-secret";
const key = `package/${PACKAGE}` as const;

describe("a GitHub release delivery end to end", { timeout: 600_000 }, () => {
  let t: TestEnv;
  let host: ArchiveHost;
  let factory: TestFactory;
  let client: StatusClient;

  before(async () => {
    t = await testEnv();
    host = await startArchiveHost();
    const pinned = releaseTarball(path.join(t.dir, "upstream"), PINNED);
    host.serve(PINNED, pinned.file);
    const catalogDir = path.join(t.dir, "catalog");
    writeReleaseCatalog(catalogDir, host, pinned);
    factory = await startTestFactory(t, { HOMEOSTAT_CATALOG: catalogDir, HOMEOSTAT_GITHUB_WEBHOOK_SECRET: SECRET, HOMEOSTAT_GITHUB_ARCHIVE_URL: host.base });
    client = factory.client;
  });

  after(async () => {
    await factory?.stop();
    await host?.close();
    await t?.cleanup();
  });

  test("the package is built, signed and Ready at its pinned version", async () => {
    const s = await waitFor(
      `${key} to be Ready at ${PINNED}`,
      async () => {
        const s = await getKeyStatus(client, key);
        return s.phase === "Ready" && s.actual?.version === PINNED ? s : undefined;
      },
      240_000,
      250,
    );
    assert.ok(Object.keys(s.actual!.signatures).length > 0, "signed");
  });

  test("GitHub's release example, signed with the secret, becomes a release fact and a signed build of the new version", async () => {
    const before = await getKeyStatus(client, key);
    const tag = publishedRelease.release.tag_name;
    const version = tag.replace(/^v(?=\d)/, "");
    const tarball = releaseTarball(path.join(t.dir, "upstream"), tag);
    host.serve(tag, tarball.file);

    const delivery = releaseDelivery(tag, SECRET);
    const res = await deliver(factory.ingestUrl, delivery);
    assert.equal(res.status, 202, JSON.stringify(res.json));
    assert.deepEqual((res.json as { keys: string[] }).keys, [key], "the example's repository maps to the package");

    // The reconciler's upstream resolver fetched the tag's tarball and recorded it: a fact, with its sha256.
    const releases = new ReleaseStore(t.buckets.releases);
    const fact = await waitFor(
      `the release fact of ${PACKAGE} ${version}`,
      async () => (await releases.list(PACKAGE)).find((r) => r.version === version),
      120_000,
      100,
    );
    assert.equal(fact.sha256, tarball.sha256);
    assert.equal(fact.url, host.urlOf(tag));
    assert.equal(fact.tag, tag);

    const after = await waitFor(
      `${key} to be Ready at ${version}`,
      async () => {
        const s = await getKeyStatus(client, key);
        return s.phase === "Ready" && s.actual?.version === version ? s : undefined;
      },
      180_000,
      250,
    );
    assert.notEqual(after.actual!.inputDigest, before.actual!.inputDigest, "rebuilt from other inputs");
    assert.ok(Object.keys(after.actual!.signatures).length > 0, "signed");
    assert.match(after.actual!.outputs.archive ?? "", /^sha256:[0-9a-f]{64}$/);
    const build = after.builds?.find((b) => b.inputDigest === after.actual!.inputDigest);
    // Which run asked for it depends on timing (the release's, or one for the pinned build's
    // signature that read the fact first: the queue merges a key's enqueues), not what it built.
    assert.deepEqual([build?.version, build?.outcome], [version, "succeeded"]);
    assert.ok((host.hits.get(new URL(host.urlOf(tag)).pathname) ?? 0) >= 1, "the tarball came from the archive host");

    // GitHub's "Redeliver" sends the same delivery id: acknowledged, nothing enqueued again.
    const again = await deliver(factory.ingestUrl, delivery);
    assert.equal(again.status, 202);
    assert.deepEqual(again.json, { event: (res.json as { event: string }).event, duplicate: true, keys: [] });
  });

  test("a delivery signed with another secret is refused and changes nothing", async () => {
    const before = await getKeyStatus(client, key);
    const forged = releaseDelivery("9.9.9", "not the secret");
    const res = await deliver(factory.ingestUrl, forged);
    assert.equal(res.status, 401);
    const releases = new ReleaseStore(t.buckets.releases);
    assert.ok(!(await releases.list(PACKAGE)).some((r) => r.version === "9.9.9"), "no fact for a forged release");
    assert.equal((await getKeyStatus(client, key)).actual?.inputDigest, before.actual?.inputDigest);
  });
});
