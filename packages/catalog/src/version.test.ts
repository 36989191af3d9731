import { test } from "node:test";
import assert from "node:assert/strict";
import { compareVersions, isPrerelease, maxVersion, releaseOf } from "./version.ts";

test("numeric parts compare as numbers", () => {
  assert.equal(compareVersions("1.10", "1.9"), 1);
  assert.equal(compareVersions("1.0", "1.0.0"), 0);
  assert.equal(compareVersions("v2.0", "1.99"), 1);
});

test("a pre-release sorts before its release", () => {
  assert.equal(compareVersions("1.0-rc1", "1.0"), -1);
  assert.equal(compareVersions("1.0-rc2", "1.0-rc10"), -1);
});

test("maxVersion picks the highest", () => {
  assert.equal(maxVersion(["1.0", "1.1", "1.0.9"]), "1.1");
  assert.equal(maxVersion([]), undefined);
});

test("mixed parts compare run by run", () => {
  assert.equal(compareVersions("1.0a", "1.0b"), -1);
  assert.equal(compareVersions("2.10rc1", "2.9rc1"), 1);
  assert.equal(compareVersions("1.0.1", "1.0.beta"), 1);
});

test("a pre-release word without a dash still sorts before its release; a plain letter after", () => {
  assert.equal(compareVersions("3.0rc1", "3.0"), -1);
  assert.equal(compareVersions("3.0", "3.0beta2"), 1);
  assert.equal(compareVersions("1.1.1w", "1.1.1"), 1);
  assert.equal(compareVersions("1.1.1w", "1.1.1v"), 1);
});

test("isPrerelease and releaseOf", () => {
  for (const v of ["1.0-rc1", "3.0rc1", "2.0.beta2", "v1.2.3-alpha.1", "1.0.dev3"]) assert.ok(isPrerelease(v), v);
  for (const v of ["1.0", "1.1.1w", "v2.3.4", "1.0+build5", "2024.01.15"]) assert.ok(!isPrerelease(v), v);
  assert.equal(releaseOf("1.0-rc1"), "1.0");
  assert.equal(releaseOf("3.0rc1"), "3.0");
  assert.equal(releaseOf("2.0.beta2"), "2.0");
  assert.equal(releaseOf("1.1.1w"), "1.1.1w");
});
