import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { loadCatalog } from "@homeostat/catalog";
import { BASE_PACKAGES, generateCatalog } from "./gen-catalog.ts";

test("the generated catalog loads, is reproducible and has the realistic shape", async (t) => {
  const a = mkdtempSync(path.join(os.tmpdir(), "gen-catalog-"));
  const b = mkdtempSync(path.join(os.tmpdir(), "gen-catalog-"));
  t.after(() => [a, b].forEach((d) => rmSync(d, { recursive: true, force: true })));
  const names = await generateCatalog(a, { packages: 600, images: 60, seed: 7 });
  await generateCatalog(b, { packages: 600, images: 60, seed: 7 });
  const file = path.join("packages", "00", "pkg-00100.yaml");
  assert.equal(readFileSync(path.join(a, file), "utf8"), readFileSync(path.join(b, file), "utf8"));

  const c = await loadCatalog(a);
  assert.equal(c.packages.size, 600);
  assert.equal(c.images.size, 60);
  assert.deepEqual(names.packages.slice(0, BASE_PACKAGES.length), BASE_PACKAGES);
  // A base package reaches everything; a late tail package almost nothing.
  assert.equal(c.impact(["package/glibc"]).keys.length, 660);
  assert.ok(c.impact(["package/pkg-00590"]).keys.length < 10);
  // Diamonds: some package reaches another by two different direct dependencies.
  const diamond = [...c.packages.values()].some((p) => {
    const deps = p.dependencies.build.filter((d) => d !== "glibc");
    return deps.some((d) => c.packages.get(d)!.dependencies.build.some((x) => x !== "glibc" && deps.includes(x)));
  });
  assert.ok(diamond);
});
