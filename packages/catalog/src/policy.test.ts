import { test } from "node:test";
import assert from "node:assert/strict";
import { chooseVersion, compilePolicy, PolicyError, versionPolicySchema } from "./policy.ts";

const pick = (policy: Parameters<typeof chooseVersion>[0], versions: string[], prereleases = false) =>
  chooseVersion(policy, versions, { prereleases })?.version;
const accepts = (range: string, v: string, prereleases = false) => compilePolicy({ semver: range }, { prereleases }).accept(v) !== undefined;

test("without a policy the highest release wins, pre-releases left out unless let in", () => {
  assert.equal(pick(undefined, ["1.0", "v1.2", "1.10", "2.0-rc1"]), "1.10");
  assert.equal(pick(undefined, ["1.0", "2.0-rc1"], true), "2.0-rc1");
  assert.equal(pick(undefined, ["nightly", "latest"]), undefined);
});

test("semver caret, tilde, x-ranges and partial versions", () => {
  const versions = ["0.9.0", "1.1.9", "1.2.0", "1.2.7", "1.3.0", "1.10.2", "2.0.0", "2.1.0"];
  assert.equal(pick({ semver: "^1.2" }, versions), "1.10.2");
  assert.equal(pick({ semver: "~1.2" }, versions), "1.2.7");
  assert.equal(pick({ semver: "~1.2.3" }, versions), "1.2.7");
  assert.equal(pick({ semver: "1.2.x" }, versions), "1.2.7");
  assert.equal(pick({ semver: "1.x" }, versions), "1.10.2");
  assert.equal(pick({ semver: "1" }, versions), "1.10.2");
  assert.equal(pick({ semver: "*" }, versions), "2.1.0");
  assert.equal(pick({ semver: "^0.9" }, versions), "0.9.0");
  assert.ok(accepts("^0.2.3", "0.2.9") && !accepts("^0.2.3", "0.3.0"));
  assert.ok(accepts("^0.0.3", "0.0.3") && !accepts("^0.0.3", "0.0.4"));
  assert.ok(accepts("=1.2.0", "1.2") && !accepts("1.2.0", "1.2.1"));
});

test("semver comparators, AND, OR and hyphen ranges", () => {
  const versions = ["0.9", "1.0", "1.5.3", "1.9.9", "2.0", "2.5", "3.1"];
  assert.equal(pick({ semver: ">=1.0 <2" }, versions), "1.9.9");
  assert.equal(pick({ semver: ">= 1.0, < 2" }, versions), "1.9.9");
  assert.equal(pick({ semver: "<1.0 || >=2.0 <3" }, versions), "2.5");
  assert.equal(pick({ semver: "1.0 - 1.5.3" }, versions), "1.5.3");
  assert.equal(pick({ semver: "1.0 - 2" }, versions), "2.5");
  assert.equal(pick({ semver: ">1.5" }, versions), "3.1");
  assert.ok(!accepts(">1.5", "1.5.3"), "a partial > excludes everything it starts");
  assert.ok(accepts("<=1.5", "1.5.3") && !accepts("<=1.5", "1.6"));
});

test("semver ranges work on non-semver upstream versions", () => {
  assert.equal(pick({ semver: "~1.1.1" }, ["1.1.1v", "1.1.1w", "1.1.0l", "3.0.13"]), "1.1.1w");
  assert.equal(pick({ semver: "^2.4" }, ["2.4.1.3", "2.4.10", "2.5.0.1"]), "2.5.0.1");
});

test("pre-releases: left out by default; when let in, an upper bound still shuts out its own", () => {
  const versions = ["1.9.0", "2.0.0-rc.1", "2.0.0rc2", "1.9.1-beta.1"];
  assert.equal(pick({ semver: "^1" }, versions), "1.9.0");
  assert.equal(pick({ semver: "^1" }, versions, true), "1.9.1-beta.1");
  assert.equal(pick({ semver: ">=2.0.0-rc.1" }, versions, true), "2.0.0rc2");
  assert.equal(pick({ semver: ">=2.0.0-rc.1" }, versions), undefined);
});

test("calver formats select releases of their shape only", () => {
  const versions = ["2023.12.01", "2024.01.15", "2024.13.01", "24.1", "1.2.3", "2024.02.30-rc1"];
  assert.equal(pick({ calver: "YYYY.0M.0D" }, versions), "2024.01.15");
  assert.equal(pick({ calver: "YYYY.0M.0D" }, versions, true), "2024.02.30-rc1");
  assert.equal(pick({ calver: "YY.MM" }, ["23.10", "24.4", "24.04", "2024.4"]), "24.4");
  assert.equal(pick({ calver: "YYYY.MM.MICRO" }, ["2024.3.9", "2024.3.10", "2024.2.99"]), "2024.3.10");
});

test("regex policies read the version out of the tag", () => {
  assert.deepEqual(chooseVersion({ regex: "^curl-(\\d+)_(\\d+)_(\\d+)$" }, ["curl-8_5_0", "curl-8_10_1", "curl-7_99_0", "v8.11.0"]), {
    raw: "curl-8_10_1",
    version: "8.10.1",
  });
  assert.equal(pick({ regex: "^release/(?<version>\\d+\\.\\d+)(-lts)?$" }, ["release/3.4", "release/3.2-lts", "release/4.0-rc1"]), "3.4");
  assert.equal(pick({ regex: "^openssl-(.+)$" }, ["openssl-3.2.0", "openssl-3.3.0-alpha1"]), "3.2.0");
  assert.equal(pick({ regex: "^openssl-(.+)$" }, ["openssl-3.2.0", "openssl-3.3.0-alpha1"], true), "3.3.0-alpha1");
});

test("malformed policies are rejected with the reason", () => {
  assert.throws(
    () => compilePolicy({ semver: "^one" }),
    (e: unknown) => e instanceof PolicyError && /"one" is not a version/.test(e.message),
  );
  assert.throws(() => compilePolicy({ semver: "!=1.0" }), PolicyError);
  assert.throws(() => compilePolicy({ calver: "YYYY.QQ" }), /unknown part "QQ"/);
  assert.throws(() => compilePolicy({ regex: "^v\\d+$" }), /needs a capture group/);
  assert.throws(() => compilePolicy({ regex: "^v(\\d+$" }), PolicyError);
});

test("the schema wants exactly one kind and a policy that compiles", () => {
  assert.ok(versionPolicySchema.safeParse({ semver: "^1" }).success);
  const two = versionPolicySchema.safeParse({ semver: "^1", calver: "YYYY" });
  assert.match(two.error!.issues[0]!.message, /exactly one of semver, calver, regex/);
  const bad = versionPolicySchema.safeParse({ regex: "(" });
  assert.deepEqual(bad.error!.issues[0]!.path, ["regex"]);
  assert.ok(!versionPolicySchema.safeParse({ semver: "^1", extra: 1 }).success);
});
