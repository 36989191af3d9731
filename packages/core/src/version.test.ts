import { test } from "node:test";
import assert from "node:assert/strict";
import { compareVersions, maxVersion } from "./version.ts";

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
