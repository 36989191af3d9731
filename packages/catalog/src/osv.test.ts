import { test } from "node:test";
import assert from "node:assert/strict";
import { advisoryPackageNames, fixedVersions, genericPurlName, isAffected, osvSchema, type Osv } from "./osv.ts";

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
  for (const [v, want] of [["0.9", false], ["1.0", true], ["1.4", true], ["1.5", false], ["1.9", false], ["2.1", true], ["2.2", false], ["3.0", true], ["9.9", true]] as const) {
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
    { package: pkg(), versions: ["1.0.2k", "1.0.2l"], ranges: [{ type: "GIT", repo: "https://github.com/openssl/openssl", events: [{ introduced: "0" }, { fixed: "abc123" }] }] },
  ]);
  assert.equal(isAffected(a, "openssl", "1.0.2k"), true);
  assert.equal(isAffected(a, "openssl", "1.0.2m"), false);
  assert.deepEqual(fixedVersions(a, "openssl"), [], "a commit is not a version");
});

test("a package is named by its name or by a pkg:generic purl; others are not affected", () => {
  const a = advisory([
    { package: { ecosystem: "OSS-Fuzz", name: "libgreet-upstream", purl: "pkg:generic/acme/libgreet@1.0?arch=x86" }, ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.1" }] }] },
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
  ];
  for (const b of bad) assert.equal(osvSchema.safeParse(b).success, false, JSON.stringify(b));
  assert.equal(osvSchema.safeParse({ id: "GHSA-xxxx-yyyy-zzzz", modified: "2025-01-01T00:00:00.123+02:00", severity: [{ type: "CVSS_V3", score: "x" }] }).success, true);
});
