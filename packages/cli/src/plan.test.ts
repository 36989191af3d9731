/**
 * `homeostat plan`: what an advisory (a real one, test/fixtures/osv) or a release would do to
 * a catalog, computed locally, in order; with what a live factory knows (its releases,
 * advisories and built versions) merged in — and the real bin printing it without a server.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { loadCatalog } from "@homeostat/catalog";
import { parseAdvisoryFile, plan, type LivePackage } from "./plan.ts";
import { scratchDirs, writeFiles } from "../../../test/fixtures/scratch.ts";

const bin = fileURLToPath(new URL("../bin/homeostat", import.meta.url));
const fixtures = fileURLToPath(new URL("../../../test/fixtures/osv/", import.meta.url));
const sha = (s: string) => createHash("sha256").update(s).digest("hex");
const advisory = (id: string) => parseAdvisoryFile(readFileSync(path.join(fixtures, `${id}.json`), "utf8"), id);

/** lodash <- app-lib <- tool; minimist (with a backport) <- tool; images: web [tool], cli [minimist]. */
const tmp = scratchDirs();

function catalogDir(): string {
  const dir = tmp("homeostat-plan-");
  const patch = "--- a/x\n+++ b/x\n";
  const pkg = (name: string, version: string, deps: string[], extra = "") =>
    `name: ${name}\nversion: "${version}"\nsource: { url: "https://example.org/${name}-\${version}.tgz", sha256: "${sha(name)}" }\nbuild: { steps: [make] }\ndependencies: { build: [${deps.join(", ")}] }\n${extra}`;
  const files: Record<string, string> = {
    "packages/lodash.yaml": pkg("lodash", "4.17.15", []),
    "packages/app-lib.yaml": pkg("app-lib", "1.0", ["lodash"]),
    "packages/minimist.yaml": pkg("minimist", "1.2.5", [], `patches: [{ path: patches/setkey.patch, sha256: ${sha(patch)}, fixes: [GHSA-xvch-5gv4-984h] }]\n`),
    "packages/tool.yaml": pkg("tool", "2.0", ["app-lib", "minimist"]),
    "images/web.yaml": "name: web\npackages: [tool]\n",
    "images/cli.yaml": "name: cli\npackages: [minimist]\n",
    "patches/setkey.patch": patch,
  };
  writeFiles(dir, files);
  return dir;
}

test("an advisory: patched, flagged, and the dependents rebuilt in wave order", async () => {
  const catalog = await loadCatalog(catalogDir());
  const p = plan(catalog, { advisories: [...advisory("GHSA-p6mc-m468-83gw"), ...advisory("GHSA-xvch-5gv4-984h")], releases: [] });
  assert.deepEqual(
    p.steps.map((s) => `${s.action} ${s.key}`),
    ["flag package/lodash", "patch package/minimist", "rebuild package/tool", "rebuild image/cli", "rebuild image/web"],
  );
  assert.deepEqual(p.waves, [["package/minimist"], ["package/tool"], ["image/cli", "image/web"]]);
});

test("a release with the advisory: lodash bumps to the fixed release, and everything above it rebuilds once", async () => {
  const catalog = await loadCatalog(catalogDir());
  const p = plan(catalog, { advisories: advisory("GHSA-p6mc-m468-83gw"), releases: [{ package: "lodash", version: "4.17.19" }] });
  assert.deepEqual(p.steps[0], { key: "package/lodash", action: "bump", from: "4.17.15", to: "4.17.19", because: "release lodash@4.17.19" });
  assert.deepEqual(p.waves, [["package/lodash"], ["package/app-lib"], ["package/tool"], ["image/web"]]);
});

test("live: the factory's known releases and stored advisories count with the given ones; a given advisory replaces a stored one", async () => {
  const catalog = await loadCatalog(catalogDir());
  const stored = advisory("GHSA-p6mc-m468-83gw");
  const given = { advisories: [], releases: [{ package: "lodash", version: "4.17.16" }] };
  // The stored advisory affects the given release and no known release fixes it.
  let p = plan(catalog, given, new Map([["lodash", { releases: [], advisories: stored }]]));
  assert.deepEqual(
    p.steps.map((s) => `${s.action} ${s.key}`),
    ["flag package/lodash"],
  );
  // A release the factory knows fixes it, and is newer than the given one.
  p = plan(catalog, given, new Map([["lodash", { releases: ["4.17.20", "4.17.19"], advisories: stored }]]));
  assert.deepEqual(p.steps[0], { key: "package/lodash", action: "bump", from: "4.17.15", to: "4.17.20", because: "release lodash@4.17.20" });
  // The same advisory given, withdrawn since: it replaces the stored revision.
  const withdrawn = { ...stored[0]!, modified: "2021-01-01T00:00:00Z", withdrawn: "2021-01-01T00:00:00Z" };
  p = plan(catalog, { ...given, advisories: [withdrawn] }, new Map([["lodash", { releases: [], advisories: stored }]]));
  assert.deepEqual(p.steps[0], { key: "package/lodash", action: "bump", from: "4.17.15", to: "4.17.16", because: "release lodash@4.17.16" });
  // Facts of a package the given facts do not name change nothing.
  p = plan(
    catalog,
    { advisories: [], releases: [{ package: "tool", version: "2.0" }] },
    new Map([
      ["tool", { releases: [], advisories: [] }],
      ["lodash", { releases: [], advisories: stored }],
    ]),
  );
  assert.deepEqual(p, { steps: [], unchanged: ["package/tool"], unknown: [], waves: [] });
});

test("live: a change counts from the version built; the built version decided again is unchanged, unless it needs a patch", async () => {
  const catalog = await loadCatalog(catalogDir());
  const lodash = (built?: string): Map<string, LivePackage> =>
    new Map([["lodash", { releases: ["4.17.19", "4.17.21"], advisories: [], ...(built ? { built } : {}) }]]);
  const facts = { advisories: advisory("GHSA-p6mc-m468-83gw"), releases: [] };

  let p = plan(catalog, facts, lodash("4.17.19"));
  assert.deepEqual(p.steps[0], { key: "package/lodash", action: "bump", from: "4.17.19", to: "4.17.21", because: "release lodash@4.17.21" });
  assert.deepEqual(p.waves, [["package/lodash"], ["package/app-lib"], ["package/tool"], ["image/web"]]);

  p = plan(catalog, facts, lodash("4.17.21"));
  assert.deepEqual(p, { steps: [], unchanged: ["package/lodash"], unknown: [], waves: [] });

  // Never built: from the pin.
  p = plan(catalog, facts, lodash());
  assert.deepEqual(p.steps[0], { key: "package/lodash", action: "bump", from: "4.17.15", to: "4.17.21", because: "release lodash@4.17.21" });

  // Built at the version decided, but that version needs the catalog's patch for the advisory.
  p = plan(catalog, { advisories: advisory("GHSA-xvch-5gv4-984h"), releases: [] }, new Map([["minimist", { releases: [], advisories: [], built: "1.2.5" }]]));
  assert.deepEqual(p.steps[0], {
    key: "package/minimist",
    action: "patch",
    version: "1.2.5",
    patches: ["patches/setkey.patch"],
    advisories: ["GHSA-xvch-5gv4-984h"],
  });
});

test("the bin prints the plan without a server", async () => {
  const dir = catalogDir();
  const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    execFile(
      bin,
      ["plan", "--advisory", path.join(fixtures, "GHSA-xvch-5gv4-984h.json"), "--release", "nothing@1.0", "--catalog", dir],
      { timeout: 30_000 },
      (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === "number" ? err.code : -1) : 0, stdout, stderr }),
    ),
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^patch {4}package\/minimist {2}1\.2\.5 with patches\/setkey\.patch {2}\(fixes GHSA-xvch-5gv4-984h\)$/m);
  assert.match(r.stdout, /^ {2}wave 3: image\/cli image\/web$/m);
  assert.match(r.stdout, /^Not in the catalog: nothing$/m);
});

test("the sample advisory of examples/ flags libgreet alone, and with its fixing release bumps it and rebuilds what depends on it", async () => {
  const examples = fileURLToPath(new URL("../../../examples/", import.meta.url));
  const catalog = await loadCatalog(path.join(examples, "catalog"));
  const sample = parseAdvisoryFile(readFileSync(path.join(examples, "advisories", "HSEC-2026-0001.json"), "utf8"), "HSEC-2026-0001.json");
  assert.deepEqual(
    plan(catalog, { advisories: sample, releases: [] }).steps.map((s) => `${s.action} ${s.key}`),
    ["flag package/libgreet"],
  );
  const withRelease = plan(catalog, { advisories: sample, releases: [{ package: "libgreet", version: "1.1" }] });
  assert.deepEqual(
    withRelease.steps.map((s) => `${s.action} ${s.key}`),
    ["bump package/libgreet", "rebuild package/greet", "rebuild image/devkit", "rebuild image/greeter"],
  );
});
