import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import {
  advisoryPackageNames,
  advisoryRepositories,
  assessAdvisory,
  CvssError,
  fixedVersions,
  genericPurlName,
  isAffected,
  osvSchema,
  parseCvssV3,
  parseCvssV4,
  severities,
  type Osv,
} from "./osv.ts";

const advisory = (affected: unknown[], extra: Record<string, unknown> = {}): Osv =>
  osvSchema.parse({ id: "OSV-2025-1", modified: "2025-01-02T03:04:05Z", affected, ...extra });
const pkg = (name = "openssl", purl?: string) => ({ ecosystem: "Debian", name, ...(purl ? { purl } : {}) });

test("introduced 0 with a fix: everything before the fix is affected, the fix and later are not", () => {
  const a = advisory([{ package: pkg(), ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "3.0.8" }] }] }]);
  assert.equal(isAffected(a, "openssl", "1.0.2"), true);
  assert.equal(isAffected(a, "openssl", "3.0.7"), true);
  assert.equal(isAffected(a, "openssl", "3.0.8"), false);
  assert.equal(isAffected(a, "openssl", "3.1.0"), false);
  assert.deepEqual(fixedVersions(a, "openssl"), ["3.0.8"]);
});

test("ECOSYSTEM ranges use compareVersions: numeric parts, pre-releases, trailing letters", () => {
  const a = advisory([{ package: pkg(), ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "1.1.1" }, { fixed: "1.1.1w" }] }] }]);
  assert.equal(isAffected(a, "openssl", "1.1.1"), true);
  assert.equal(isAffected(a, "openssl", "1.1.1v"), true);
  assert.equal(isAffected(a, "openssl", "1.1.1w"), false);
  assert.equal(isAffected(a, "openssl", "1.1.0"), false, "before introduced");
  assert.equal(isAffected(a, "openssl", "1.1.1-rc1"), false, "a pre-release sorts before 1.1.1");
});

test("SEMVER ranges compare as SemVer: 1.10.0 > 1.9.0, pre-releases before their release", () => {
  const a = advisory([{ package: pkg("lib"), ranges: [{ type: "SEMVER", events: [{ introduced: "1.9.0" }, { fixed: "1.10.0" }] }] }]);
  assert.equal(isAffected(a, "lib", "1.9.5"), true);
  assert.equal(isAffected(a, "lib", "1.10.0-rc.1"), true);
  assert.equal(isAffected(a, "lib", "1.10.0"), false);
  assert.equal(isAffected(a, "lib", "1.8.9"), false);
});

test("last_affected includes that version and excludes later ones", () => {
  const a = advisory([{ package: pkg(), ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "2.0" }, { last_affected: "2.4" }] }] }]);
  assert.equal(isAffected(a, "openssl", "2.4"), true);
  assert.equal(isAffected(a, "openssl", "2.4.1"), false);
  assert.deepEqual(fixedVersions(a, "openssl"), [], "last_affected names no fix");
});

test("several intervals in one range and several ranges; events in any order", () => {
  const a = advisory([
    {
      package: pkg(),
      ranges: [
        { type: "ECOSYSTEM", events: [{ fixed: "1.5" }, { introduced: "2.0" }, { introduced: "1.0" }, { fixed: "2.2" }] },
        { type: "ECOSYSTEM", events: [{ introduced: "3.0" }] },
      ],
    },
  ]);
  for (const [v, want] of [
    ["0.9", false],
    ["1.0", true],
    ["1.4", true],
    ["1.5", false],
    ["1.9", false],
    ["2.1", true],
    ["2.2", false],
    ["3.0", true],
    ["9.9", true],
  ] as const) {
    assert.equal(isAffected(a, "openssl", v), want, v);
  }
  assert.deepEqual(fixedVersions(a, "openssl"), ["1.5", "2.2"]);
});

test("limit bounds the range from above", () => {
  const a = advisory([{ package: pkg(), ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { limit: "2.0" }] }] }]);
  assert.equal(isAffected(a, "openssl", "1.9"), true);
  assert.equal(isAffected(a, "openssl", "2.0"), false);
  assert.equal(isAffected(a, "openssl", "5.0"), false);
});

test("the explicit versions list is affected even without a range; GIT ranges never match a version", () => {
  const a = advisory([
    {
      package: pkg(),
      versions: ["1.0.2k", "1.0.2l"],
      ranges: [{ type: "GIT", repo: "https://github.com/openssl/openssl", events: [{ introduced: "0" }, { fixed: "abc123" }] }],
    },
  ]);
  assert.equal(isAffected(a, "openssl", "1.0.2k"), true);
  assert.equal(isAffected(a, "openssl", "1.0.2m"), false);
  assert.deepEqual(fixedVersions(a, "openssl"), [], "a commit is not a version");
});

test("a package is named by its name or by a pkg:generic purl; others are not affected", () => {
  const a = advisory([
    {
      package: { ecosystem: "OSS-Fuzz", name: "libgreet-upstream", purl: "pkg:generic/acme/libgreet@1.0?arch=x86" },
      ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.1" }] }],
    },
    { package: pkg("motd"), versions: ["1.0"] },
  ]);
  assert.equal(isAffected(a, "libgreet", "1.0"), true);
  assert.equal(isAffected(a, "motd", "1.0"), true);
  assert.equal(isAffected(a, "greet", "1.0"), false);
  assert.deepEqual(advisoryPackageNames(a).sort(), ["libgreet", "libgreet-upstream", "motd"]);
  assert.equal(genericPurlName("pkg:npm/left-pad@1.0"), undefined);
  assert.equal(genericPurlName("pkg:generic/my%2Blib"), "my+lib");
});

test("a withdrawn advisory affects nothing", () => {
  const a = advisory([{ package: pkg(), versions: ["1.0"] }], { withdrawn: "2025-02-01T00:00:00Z" });
  assert.equal(isAffected(a, "openssl", "1.0"), false);
});

test("the schema refuses what evaluation could not use", () => {
  const bad: unknown[] = [
    { id: "X-1" },
    { id: "X-1", modified: "yesterday" },
    { id: "X 1", modified: "2025-01-01T00:00:00Z" },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: { name: "a" } }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: pkg(), ranges: [{ type: "NPM", events: [{ introduced: "0" }] }] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: pkg(), ranges: [{ type: "SEMVER", events: [{ introduced: "0", fixed: "1.0" }] }] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: pkg(), ranges: [{ type: "SEMVER", events: [] }] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ package: pkg(), ranges: [{ type: "GIT", events: [{ introduced: "0" }] }] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }] }] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", affected: [{ versions: ["1.0"] }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", severity: [{ type: "CVSS_V3", score: "x" }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", severity: [{ type: "CVSS_V3", score: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H" }] },
    { id: "X-1", modified: "2025-01-01T00:00:00Z", severity: [{ type: "CVSS_V4", score: "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:Q" }] },
  ];
  for (const b of bad) assert.equal(osvSchema.safeParse(b).success, false, JSON.stringify(b));
  assert.equal(
    osvSchema.safeParse({ id: "GHSA-xxxx-yyyy-zzzz", modified: "2025-01-01T00:00:00.123+02:00", severity: [{ type: "Ubuntu", score: "medium" }] }).success,
    true,
  );
});

test("CVSS v3 base scores match FIRST's calculator; v4 vectors are validated, not scored", () => {
  const cases: Array<[string, number, string]> = [
    ["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8, "Critical"],
    ["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10, "Critical"],
    ["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:N/A:N", 7.5, "High"],
    ["CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9, "Medium"],
    ["CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8, "High"],
    ["CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1, "Medium"],
    ["CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:L/I:N/A:N", 1.6, "Low"],
    ["CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:N", 0, "None"],
    ["CVSS:3.0/AV:N/AC:L/PR:L/UI:N/S:C/C:H/I:H/A:H/E:P/RL:O", 9.9, "Critical"],
  ];
  for (const [vector, score, rating] of cases) assert.deepEqual([parseCvssV3(vector).baseScore, parseCvssV3(vector).rating], [score, rating], vector);
  for (const bad of [
    "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:2.0/AV:N",
    "AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
  ]) {
    assert.throws(() => parseCvssV3(bad), CvssError, bad);
  }
  assert.equal(parseCvssV4("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H/SC:N/SI:N/SA:N/E:A").version, "4.0");
  assert.throws(() => parseCvssV4("CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/VA:H"), /base metrics missing: SC, SI, SA/);
});

const corpus = (file: string): Osv => osvSchema.parse(JSON.parse(readFileSync(path.join(import.meta.dirname, "../../../test/fixtures/osv", file), "utf8")));

test("a corpus of real records from six databases parses, keeping severity and database_specific", () => {
  for (const f of readdirSync(path.join(import.meta.dirname, "../../../test/fixtures/osv")).filter((f) => f.endsWith(".json")))
    assert.doesNotThrow(() => corpus(f), f);
  const log4j = corpus("GHSA-jfh8-c2jp-5v3q.json");
  assert.deepEqual(severities(log4j), [{ type: "CVSS_V3", vector: "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", baseScore: 10, rating: "Critical" }]);
  assert.equal(log4j.database_specific?.severity, "CRITICAL");
  const name = "org.apache.logging.log4j:log4j-core";
  for (const [v, want] of [
    ["2.14.1", true],
    ["2.15.0", false],
    ["2.12.1", true],
    ["2.12.2", false],
    ["2.3", true],
    ["2.3.1", false],
    ["2.0-beta9", true],
    ["2.0-beta8", false],
  ] as const)
    assert.equal(isAffected(log4j, name, v), want, v);
  const axios = corpus("GHSA-8hc4-vh64-cxmj.json");
  assert.deepEqual(
    severities(axios),
    [{ type: "CVSS_V4", vector: "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:N/VA:N/SC:N/SI:N/SA:N" }],
    "v4: the checked vector, no number",
  );
  const go = corpus("GO-2022-0969.json");
  assert.deepEqual(
    [isAffected(go, "stdlib", "1.18.5"), isAffected(go, "stdlib", "1.18.6"), isAffected(go, "stdlib", "1.19.0"), isAffected(go, "stdlib", "1.19.1")],
    [true, false, true, false],
  );
  const hyper = corpus("RUSTSEC-2021-0078.json");
  assert.deepEqual([isAffected(hyper, "hyper", "0.14.9"), isAffected(hyper, "hyper", "0.14.10")], [true, false]);
  assert.ok(hyper.affected![0]!.ecosystem_specific, "ecosystem_specific kept");
  const dsa = corpus("DSA-5103-1.json");
  assert.deepEqual([isAffected(dsa, "openssl", "1.1.1k-1+deb11u1"), isAffected(dsa, "openssl", "1.1.1n-0+deb11u1")], [true, false]);
});

test("GIT ranges are kept and reported with why they were not compared; package-less entries are valid", () => {
  const urllib3 = corpus("PYSEC-2021-108.json");
  const tarball = assessAdvisory(urllib3, "urllib3", "1.26.4", "https://files.pythonhosted.org/urllib3-1.26.4.tar.gz");
  assert.equal(tarball.affected, true, "by its ECOSYSTEM range and versions");
  assert.deepEqual(
    tarball.gitRanges.map((g) => [g.repo, g.reason]),
    [["https://github.com/urllib3/urllib3", "GIT range ignored: the package's source is not a git repository, so it has no commit to match"]],
  );
  const git = assessAdvisory(urllib3, "urllib3", "1.26.5", `git+https://github.com/urllib3/urllib3#${"a".repeat(40)}`);
  assert.equal(git.affected, false);
  assert.match(git.gitRanges[0]!.reason, /reconciler matches the commit/);
  const cve = corpus("CVE-2022-0778.json");
  assert.equal(cve.affected![0]!.package, undefined);
  assert.deepEqual(advisoryPackageNames(cve), [], "names no package by name");
  assert.deepEqual(advisoryRepositories(cve), ["https://github.com/openssl/openssl"]);
  const stored = assessAdvisory(cve, "openssl", "3.0.1", "https://www.openssl.org/source/openssl-3.0.1.tar.gz");
  assert.deepEqual([stored.affected, stored.gitRanges.length], [false, 1], "a commit range never matches a version; recorded with its reason");
  assert.equal(severities(cve)[0]!.baseScore, 7.5);
});
