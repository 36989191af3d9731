/**
 * Version decisions against real advisories (test/fixtures/osv, GitHub Advisory Database,
 * CC-BY-4.0): newest by policy, bump to the lowest fixed release, patch, or NeedsAttention.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { decideVersion, type DecisionInput } from "./decision.ts";
import { isAffected, osvSchema, type Osv } from "./osv.ts";
import { compilePolicy } from "./policy.ts";
import type { Patch } from "./catalog.ts";

const fixture = (id: string): Osv => osvSchema.parse(JSON.parse(readFileSync(new URL(`../../../test/fixtures/osv/${id}.json`, import.meta.url), "utf8")));
const lodash = fixture("GHSA-p6mc-m468-83gw");
const minimist2020 = fixture("GHSA-vh95-rmgr-6w4m");
const minimist2021 = fixture("GHSA-xvch-5gv4-984h");
const patch = (path: string, fixes: string[]): Patch => ({ path, sha256: "a".repeat(64), fixes });

const input = (over: Partial<DecisionInput>): DecisionInput => ({
  name: "minimist",
  pinned: "1.2.0",
  releases: [],
  policy: compilePolicy(undefined),
  advisories: [],
  patches: [],
  ...over,
});

test("the real advisories' ranges: affected, fixed, and the gap between two ranges", () => {
  assert.ok(isAffected(lodash, "lodash", "4.17.15"));
  assert.ok(!isAffected(lodash, "lodash", "4.17.19"));
  assert.ok(!isAffected(lodash, "lodash", "4.17.21"));
  for (const v of ["0.0.8", "0.2.3", "1.0.0", "1.2.5"]) assert.ok(isAffected(minimist2021, "minimist", v), v);
  for (const v of ["0.2.4", "1.2.6", "1.2.8"]) assert.ok(!isAffected(minimist2021, "minimist", v), v);
  assert.ok(!isAffected(minimist2020, "minimist", "1.2.3"));
  assert.ok(isAffected(minimist2021, "minimist", "1.2.3"), "fixed for one advisory, still affected by the next");
  assert.ok(!isAffected(minimist2021, "lodash", "1.2.0"), "another package is not named");
});

test("no advisory: the newest release the policy allows", () => {
  const d = decideVersion(input({ releases: ["1.2.5", "2.0.0", "1.3.0-rc1"], policy: compilePolicy({ semver: "^1.2" }) }));
  assert.deepEqual([d.action, d.version], ["build", "1.2.5"]);
  const none = decideVersion(input({ releases: ["1.1.0"] }));
  assert.equal(none.version, "1.2.0", "an older release never wins over the pinned version");
});

test("affected with a fixed release the policy allows: bump to the lowest fixed, not the newest", () => {
  // A regression: fixed in 1.2.6, broken again from 1.2.7 on with no fix yet. The newest
  // (1.2.8) is affected; 1.2.3 fixes only the 2020 advisory; 1.2.6 is the lowest fixed
  // release that nothing affects.
  const regression: Osv = {
    ...minimist2021,
    id: "GHSA-test-regression",
    affected: [
      {
        package: { ecosystem: "npm", name: "minimist" },
        ranges: [{ type: "SEMVER", events: [{ introduced: "0" }, { fixed: "1.2.6" }, { introduced: "1.2.7" }] }],
      },
    ],
  };
  const d = decideVersion(input({ releases: ["1.2.3", "1.2.6", "1.2.8"], advisories: [minimist2020, regression] }));
  assert.equal(d.action, "build");
  assert.equal(d.version, "1.2.6");
  assert.equal(d.action === "build" && d.reason, "bump");
  assert.deepEqual(d.action === "build" && d.advisories, ["GHSA-test-regression"]);

  const policyRefuses = decideVersion(input({ releases: ["1.2.6", "1.2.8"], policy: compilePolicy({ semver: ">=1.2.7" }), advisories: [regression] }));
  assert.equal(policyRefuses.action, "attention", "a fixed release the policy refuses is no answer");
});

test("the policy rules out the fixed release: the patch listing the advisory (or its alias) is applied", () => {
  const patches = [
    patch("patches/always.patch", []),
    patch("patches/cve-2021-44906.patch", ["CVE-2021-44906"]),
    patch("patches/unrelated.patch", ["GHSA-none"]),
  ];
  const d = decideVersion(
    input({ pinned: "1.2.5", releases: ["1.2.6"], policy: compilePolicy({ semver: "~1.2.0 <1.2.6" }), advisories: [minimist2021], patches }),
  );
  assert.equal(d.action, "build");
  assert.equal(d.action === "build" && d.reason, "patch");
  assert.equal(d.version, "1.2.5");
  assert.deepEqual(d.action === "build" && d.patches.map((p) => p.path), ["patches/always.patch", "patches/cve-2021-44906.patch"]);

  const unaffected = decideVersion(input({ pinned: "1.2.6", advisories: [minimist2021], patches }));
  assert.deepEqual(
    unaffected.action === "build" && unaffected.patches.map((p) => p.path),
    ["patches/always.patch"],
    "a backport is dropped once the version is fixed",
  );
});

test("no fixed release known and no patch: NeedsAttention with the advisory ids", () => {
  const d = decideVersion(input({ name: "lodash", pinned: "4.17.15", advisories: [lodash, minimist2021] }));
  assert.equal(d.action, "attention");
  assert.deepEqual(d.advisories, ["GHSA-p6mc-m468-83gw"]);
  assert.match(d.action === "attention" ? d.detail : "", /fixed in 4\.17\.19, which is not a known release/);
  const withdrawn = decideVersion(input({ name: "lodash", pinned: "4.17.15", advisories: [{ ...lodash, withdrawn: "2024-01-01T00:00:00Z" }] }));
  assert.equal(withdrawn.action, "build", "a withdrawn advisory does not count");
});

test("one list of advisories decided again for other packages and versions answers each (the answers are remembered by list, package and version)", () => {
  const advisories = Object.freeze([minimist2021, lodash]);
  const decide = (name: string, pinned: string) => decideVersion(input({ advisories, name, pinned }));
  // 4.17.15: not a version minimist2021 affects, one the lodash advisory does.
  assert.equal(decide("minimist", "4.17.15").action, "build");
  assert.equal(decide("lodash", "4.17.15").action, "attention", "another package at the same version");
  assert.equal(decide("lodash", "4.17.21").action, "build", "the same package at another version");
  assert.equal(decide("minimist", "1.2.0").action, "attention");
  assert.equal(decide("minimist", "4.17.15").action, "build", "asked again: the same answer");
});
