import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { readFileSync } from "node:fs";
import { catalogJsonSchemas, CatalogError, changedKeys, diffCatalogs, loadCatalog } from "./catalog.ts";
import { sha256Hex } from "@homeostat/core/digest";
import { packageRecipe, placeholderSha256, scratchDirs, writeFiles } from "../../../test/fixtures/scratch.ts";

const sha = placeholderSha256;
const pkg = packageRecipe;

const tmp = scratchDirs();

function catalogDir(files: Record<string, string>): string {
  const dir = tmp("catalog-");
  writeFiles(dir, files);
  return dir;
}

async function problems(files: Record<string, string>): Promise<string[]> {
  try {
    await loadCatalog(catalogDir(files));
  } catch (err) {
    assert.ok(err instanceof CatalogError);
    return err.problems;
  }
  assert.fail("the catalog was accepted");
}

test("a valid catalog: dependents, runtime closure and source URLs", async () => {
  const dir = catalogDir({
    "packages/base.yaml": pkg("base"),
    "packages/lib.yaml": pkg("lib", { build: ["base"], runtime: ["base"] }),
    "packages/app.yaml": pkg("app", { build: ["lib"], runtime: ["lib"] }),
    "images/app.yaml": "name: app\npackages: [app]\n",
  });
  const c = await loadCatalog(dir);
  assert.deepEqual(c.keys().sort(), ["image/app", "package/app", "package/base", "package/lib"]);
  assert.deepEqual(c.runtimeClosure(["app"]), ["app", "lib", "base"]);
  // The image installs base (app -> lib -> base at run time), so it hears of base directly.
  assert.deepEqual(c.dependentsOf("base"), ["package/lib", "image/app"]);
  assert.equal(c.commit, undefined);
  assert.equal(c.fileOf("package/lib"), "packages/lib.yaml");
  assert.deepEqual(c.dependentsOf("app"), ["image/app"]);
  assert.equal(c.resolveSourceUrl("../sources/x-${version}.tar.gz", "1.2"), `file://${path.resolve(dir, "../sources/x-1.2.tar.gz")}`);
  assert.equal(c.resolveSourceUrl("http://127.0.0.1/x.tgz", "1"), "http://127.0.0.1/x.tgz");
});

test("a wrong type is reported with file, line and field", async () => {
  const p = await problems({ "packages/a.yaml": pkg("a").replace('version: "1.0"', "version: 12") });
  assert.equal(p.length, 1);
  assert.match(p[0]!, /^packages\/a\.yaml:2: version: /);
});

test("an unknown field is reported with its line", async () => {
  const p = await problems({ "packages/a.yaml": pkg("a") + "colour: blue\n" });
  assert.match(p[0]!, /^packages\/a\.yaml:11: colour: /);
});

test("a missing field is reported at its parent", async () => {
  const p = await problems({ "packages/a.yaml": pkg("a").replace(`  sha256: "${sha}"\n`, "") });
  assert.match(p[0]!, /^packages\/a\.yaml:\d+: source\.sha256: /);
});

test("unknown dependencies, duplicate names and cycles are rejected, all at once", async () => {
  const p = await problems({
    "packages/a.yaml": pkg("a", { build: ["b"] }),
    "packages/b.yaml": pkg("b", { runtime: ["a"] }),
    "packages/c.yaml": pkg("c", { build: ["nope"] }),
    "packages/c2.yaml": pkg("c"),
    "images/i.yaml": "name: i\npackages: [ghost]\n",
  });
  assert.deepEqual(p, [
    'images/i.yaml:2: packages[0]: unknown package "ghost"',
    "packages/a.yaml:9: dependencies.build[0]: dependency cycle: a -> b -> a",
    'packages/c.yaml:9: dependencies.build[0]: unknown package "nope"',
    'packages/c2.yaml:1: name: duplicate package name "c" (also in packages/c.yaml)',
  ]);
});

test("YAML syntax errors name the line", async () => {
  const p = await problems({ "images/i.yaml": "name: i\npackages: [a\n" });
  assert.match(p[0]!, /^images\/i\.yaml:\d+: /);
});

const full = (patchSha: string) => `# yaml-language-server: $schema=../../schemas/catalog-package.schema.json
name: openssl
version: "3.0.13"
epoch: 1
license: Apache-2.0
upstream:
  github: openssl/openssl
  policy: { regex: "^openssl-(\\\\d+\\\\.\\\\d+\\\\.\\\\d+)$" }
  prereleases: false
source:
  url: https://example.org/openssl-\${version}.tar.gz
  sha256: "${sha}"
patches:
  - path: patches/openssl/CVE-2024-0001.patch
    sha256: "${patchSha}"
    fixes: [GHSA-aaaa-bbbb-cccc, CVE-2024-0001]
build:
  steps: [./Configure, make]
test: make test
dependencies:
  build: [zlib]
  runtime: [zlib]
`;
const patchText = "--- a/x\n+++ b/x\n";

test("every field of the format: upstream, policy, epoch, patches, test", async () => {
  const c = await loadCatalog(
    catalogDir({
      "packages/openssl.yaml": full(sha256Hex(patchText)),
      "packages/z/zlib.yaml": pkg("zlib"),
      "patches/openssl/CVE-2024-0001.patch": patchText,
      "images/tools.yaml": 'name: tools\npackages: [openssl]\nentrypoint: [/usr/bin/openssl]\nuser: "65532"\nworkdir: /\nannotations: { a: b }\n',
    }),
  );
  const o = c.packages.get("openssl")!;
  assert.equal(o.epoch, 1);
  assert.equal(o.test, "make test");
  assert.deepEqual(o.patches[0]!.fixes, ["GHSA-aaaa-bbbb-cccc", "CVE-2024-0001"]);
  assert.equal(readFileSync(c.patchPath(o.patches[0]!), "utf8"), patchText);
  assert.equal(c.packages.get("zlib")!.epoch, 0, "defaults apply; packages may sit in subdirectories");
  assert.deepEqual(c.policyOf("openssl").choose(["openssl-3.0.13", "openssl-3.2.1", "OpenSSL_1_1_1w", "openssl-3.3.0-alpha1"]), {
    raw: "openssl-3.2.1",
    version: "3.2.1",
  });
  assert.deepEqual(c.packagesForGithub("OpenSSL/openssl"), ["openssl"]);
  assert.equal(c.images.get("tools")!.user, "65532");
});

test("format errors in the new fields name file, line and field", async () => {
  const p = await problems({
    "packages/openssl.yaml": full("f".repeat(64)).replace("github: openssl/openssl", "github: openssl").replace("prereleases: false", "prereleases: maybe"),
    "packages/zlib.yaml": pkg("zlib").replace("build:\n  steps", 'upstream:\n  url: https://x/zlib.tgz\n  policy: { semver: "^one" }\nbuild:\n  steps'),
    "packages/two.yaml": pkg("two") + "upstream:\n  github: a/b\n  releaseMonitoring: { id: 5 }\n",
    "packages/esc.yaml": pkg("esc") + 'patches:\n  - { path: ../../etc/passwd, sha256: "' + sha + '" }\n',
  });
  assert.deepEqual(p, [
    "packages/esc.yaml:12: patches[0].path: must be a relative path inside the catalog directory",
    "packages/openssl.yaml:7: upstream.github: must be owner/repo",
    "packages/openssl.yaml:9: upstream.prereleases: Invalid input: expected boolean, received string",
    "packages/two.yaml:12: upstream: exactly one of github, url, releaseMonitoring is required (got github, releaseMonitoring)",
    "packages/zlib.yaml:7: upstream.url: must contain ${version}",
    'packages/zlib.yaml:8: upstream.policy.semver: semver range "^one": "one" is not a version',
  ]);
});

test("a patch that is missing or not the declared one is rejected at its line", async () => {
  const missing = await problems({ "packages/openssl.yaml": full(sha256Hex(patchText)), "packages/zlib.yaml": pkg("zlib") });
  assert.deepEqual(missing, ["packages/openssl.yaml:14: patches[0].path: cannot read patches/openssl/CVE-2024-0001.patch: ENOENT"]);
  const wrong = await problems({ "packages/openssl.yaml": full(sha), "packages/zlib.yaml": pkg("zlib"), "patches/openssl/CVE-2024-0001.patch": patchText });
  assert.deepEqual(wrong, [`packages/openssl.yaml:15: patches[0].sha256: patches/openssl/CVE-2024-0001.patch has sha256 ${sha256Hex(patchText)}`]);
});

test("a longer cycle is reported once, with its path, at its first edge", async () => {
  const p = await problems({
    "packages/a.yaml": pkg("a", { runtime: ["b"] }),
    "packages/b.yaml": pkg("b", { build: ["c"] }),
    "packages/c.yaml": pkg("c", { build: ["base", "a"] }),
    "packages/base.yaml": pkg("base"),
  });
  assert.deepEqual(p, ["packages/a.yaml:10: dependencies.runtime[0]: dependency cycle: a -> b -> c -> a"]);
});

test("keysInBuildOrder: every key once, after the keys its inputs are built from, images last", async () => {
  const c = await loadCatalog(
    catalogDir({
      "packages/a-app.yaml": pkg("app", { build: ["lib"], runtime: ["lib"] }),
      "packages/b-lib.yaml": pkg("lib", { build: ["base"], runtime: ["base"] }),
      "packages/c-tool.yaml": pkg("tool"),
      "packages/z-base.yaml": pkg("base"),
      "images/app.yaml": "name: app\npackages: [app]\n",
    }),
  );
  const order = c.keysInBuildOrder();
  assert.deepEqual([...order].sort(), c.keys().sort());
  // In file order app came first; base, which it is built on, last.
  assert.deepEqual(c.keys(), ["package/app", "package/lib", "package/tool", "package/base", "image/app"]);
  assert.deepEqual(order, ["package/base", "package/tool", "package/lib", "package/app", "image/app"]);
  for (const [i, key] of order.entries()) for (const input of c.inputsOf(key)) assert.ok(order.indexOf(input) < i, `${input} before ${key}`);
  assert.equal(c.keysInBuildOrder(), order, "worked out once per catalog");
});

test("changedKeys: exactly the changed recipes and their dependents, packages before images", async () => {
  const files = {
    "packages/base.yaml": pkg("base"),
    "packages/left.yaml": pkg("left", { build: ["base"] }),
    "packages/right.yaml": pkg("right", { build: ["base"] }),
    "packages/top.yaml": pkg("top", { build: ["left", "right"] }),
    "packages/other.yaml": pkg("other"),
    "images/top.yaml": "name: top\npackages: [top]\n",
    "images/other.yaml": "name: other\npackages: [other]\n",
  };
  const before = await loadCatalog(catalogDir(files));
  // Same content: a no-op, whatever the directory.
  assert.deepEqual(changedKeys(before, await loadCatalog(catalogDir(files))), []);
  // A description is not part of a recipe.
  assert.deepEqual(changedKeys(before, await loadCatalog(catalogDir({ ...files, "packages/base.yaml": pkg("base") + "description: the base\n" }))), []);
  // One recipe touched: it, the diamond above it once, after both branches, then the image.
  const touched = await loadCatalog(catalogDir({ ...files, "packages/base.yaml": pkg("base").replace("[make]", "[make, make check]") }));
  assert.deepEqual(changedKeys(before, touched), ["package/base", "package/left", "package/right", "package/top", "image/top"]);
  assert.notEqual(before.recipeDigest("package/base"), touched.recipeDigest("package/base"));
  assert.equal(before.recipeDigest("package/left"), touched.recipeDigest("package/left"));
  // Raising the epoch (the package revision) rebuilds the same version: a changed recipe.
  const revised = await loadCatalog(catalogDir({ ...files, "packages/other.yaml": pkg("other") + "epoch: 1\n" }));
  assert.deepEqual(changedKeys(before, revised), ["package/other", "image/other"]);
  // Added, modified and removed keys.
  const withoutOther = Object.fromEntries(Object.entries(files).filter(([f]) => !f.endsWith("/other.yaml")));
  const next = await loadCatalog(
    catalogDir({ ...withoutOther, "packages/new.yaml": pkg("new", { runtime: ["top"] }), "images/top.yaml": "name: top\npackages: [top, new]\n" }),
  );
  const diff = diffCatalogs(before, next);
  assert.deepEqual(diff.added, ["package/new"]);
  assert.deepEqual(diff.modified, ["image/top"]);
  assert.deepEqual(diff.removed, ["image/other", "package/other"]);
  assert.deepEqual(diff.keys, ["package/new", "image/top", "image/other", "package/other"]);
});

test("the committed JSON Schemas are the ones the format generates (pnpm gen:catalog-schema)", () => {
  const dir = path.join(import.meta.dirname, "../../../schemas");
  for (const [name, schema] of Object.entries(catalogJsonSchemas())) {
    assert.deepEqual(JSON.parse(readFileSync(path.join(dir, name), "utf8")), schema, `schemas/${name} is stale: run pnpm gen:catalog-schema`);
  }
});

test("the example catalog loads", async () => {
  const c = await loadCatalog(path.join(import.meta.dirname, "../../../examples/catalog"));
  assert.deepEqual(c.keys().sort(), ["image/devkit", "image/greeter", "package/busybox", "package/greet", "package/libgreet", "package/motd", "package/musl"]);
});
