/** Release facts, announcements and conflicts on real JetStream KV; tag-to-version mapping. */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { tagsOfVersion, versionOfTag } from "./catalog.ts";
import { ReleaseConflictError, ReleaseStore, UpstreamLedger } from "./releases.ts";

test("tag mapping: a template reads and writes tags; without one a leading v is dropped", () => {
  assert.equal(versionOfTag({ tag: "v${version}" }, "v1.2.3"), "1.2.3");
  assert.equal(versionOfTag({ tag: "v${version}" }, "1.2.3"), undefined, "not the mapping's spelling");
  assert.equal(versionOfTag({ tag: "release-${version}" }, "release-1.2.3"), "1.2.3");
  assert.equal(versionOfTag({ tag: "release-${version}" }, "release-"), undefined, "no version in it");
  assert.equal(versionOfTag({ tag: "curl-${version}-final" }, "curl-8_5_0-final"), "8_5_0");
  assert.equal(versionOfTag({ tag: "v${version}" }, "v1.2 beta"), undefined, "not a version the catalog could pin");
  assert.equal(versionOfTag(undefined, "v0.0.1"), "0.0.1");
  assert.equal(versionOfTag(undefined, "0.0.1"), "0.0.1");
  assert.equal(versionOfTag(undefined, "version-2"), "version-2", "any pinnable tag; the version policy decides whether it counts");
  assert.deepEqual(tagsOfVersion({ tag: "release-${version}" }, "1.2"), ["release-1.2"]);
  assert.deepEqual(tagsOfVersion(undefined, "1.2"), ["v1.2", "1.2"]);
});

describe("release facts and the upstream ledger", { timeout: 30_000 }, () => {
  let t: TestEnv;
  before(async () => (t = await testEnv()));
  after(async () => t.cleanup());

  test("a fact is created once and never rewritten; announcements and conflicts stay out of the facts", async () => {
    const releases = new ReleaseStore(t.buckets.releases);
    const ledger = new UpstreamLedger(t.buckets.releases);
    const fact = { package: "libgreet", version: "1.2", url: "http://127.0.0.1:1/libgreet-1.2.tar.gz", sha256: "a".repeat(64), tag: "v1.2" };
    assert.equal((await releases.record(fact)).isNew, true);
    assert.equal((await releases.record(fact)).isNew, false, "the same fact again is a duplicate");
    await assert.rejects(releases.record({ ...fact, sha256: "b".repeat(64) }), ReleaseConflictError);

    await ledger.announce({ package: "libgreet", version: "1.3", tag: "v1.3", origin: "github", event: "github-" + "0".repeat(32) });
    await ledger.announce({ package: "libgreet-extra", version: "9", origin: "anitya" });
    assert.deepEqual(
      (await ledger.announced("libgreet")).map((a) => [a.version, a.tag, a.origin]),
      [["1.3", "v1.3", "github"]],
    );
    assert.equal(
      await ledger.conflict({
        package: "libgreet",
        version: "1.2",
        recorded: { url: fact.url, sha256: fact.sha256 },
        found: { url: fact.url, sha256: "c".repeat(64) },
      }),
      true,
    );
    assert.equal(
      await ledger.conflict({
        package: "libgreet",
        version: "1.2",
        recorded: { url: fact.url, sha256: fact.sha256 },
        found: { url: fact.url, sha256: "d".repeat(64) },
      }),
      false,
      "the first finding is kept",
    );
    assert.equal((await ledger.conflicts("libgreet"))[0]?.found.sha256, "c".repeat(64));
    assert.deepEqual(
      (await releases.list("libgreet")).map((r) => r.version),
      ["1.2"],
      "only facts are listed",
    );
    await ledger.settle("libgreet", "1.3");
    assert.deepEqual(await ledger.announced("libgreet"), []);
  });
});
