import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { CatalogError, loadCatalog } from "./catalog.ts";

const sha = "0".repeat(64);
const pkg = (name: string, deps: { build?: string[]; runtime?: string[] } = {}) =>
  `name: ${name}\nversion: "1.0"\nsource:\n  url: ../sources/${name}-\${version}.tar.gz\n  sha256: "${sha}"\nbuild:\n  steps: [make]\ndependencies:\n  build: [${(deps.build ?? []).join(", ")}]\n  runtime: [${(deps.runtime ?? []).join(", ")}]\n`;

function catalogDir(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "catalog-"));
  for (const [rel, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), text);
  }
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
  assert.deepEqual(c.dependentsOf("base").sort(), ["image/app", "package/lib"]);
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
  assert.ok(p.some((x) => /packages\/c2\.yaml: duplicate package name "c" \(also in packages\/c\.yaml\)/.test(x)), p.join("\n"));
  assert.ok(p.some((x) => /packages\/c\.yaml: dependencies: unknown package "nope"/.test(x)), p.join("\n"));
  assert.ok(p.some((x) => /images\/i\.yaml: packages: unknown package "ghost"/.test(x)), p.join("\n"));
  assert.ok(p.some((x) => x === "dependency cycle: a -> b -> a"), p.join("\n"));
});

test("YAML syntax errors name the line", async () => {
  const p = await problems({ "images/i.yaml": "name: i\npackages: [a\n" });
  assert.match(p[0]!, /^images\/i\.yaml:\d+: /);
});
