import { test } from "node:test";
import assert from "node:assert/strict";
import { DependencyGraph, type GraphPackage } from "./graph.ts";

const pkgs = (spec: Record<string, string[]>): GraphPackage[] => Object.entries(spec).map(([name, dependencies]) => ({ name, dependencies }));

test("the reverse-dependency index lists packages, then images", () => {
  const g = new DependencyGraph(pkgs({ base: [], lib: ["base"], app: ["lib", "base"] }), [{ name: "app", packages: ["app", "base"] }]);
  assert.deepEqual(g.dependents("base"), ["package/app", "package/lib", "image/app"]);
  assert.deepEqual(g.dependents("app"), ["image/app"]);
  assert.deepEqual(g.dependencies("package/app"), ["package/base", "package/lib"]);
  assert.deepEqual(g.dependents("nope"), []);
});

test("a diamond comes once, in the wave after both of its changed dependencies", () => {
  //      base
  //     /    \
  //   left  right
  //     \    /   \
  //      top     solo      image i1: top, image i2: solo
  const g = new DependencyGraph(pkgs({ base: [], left: ["base"], right: ["base"], top: ["left", "right"], solo: ["right"], unrelated: [] }), [
    { name: "i1", packages: ["top"] },
    { name: "i2", packages: ["solo"] },
    { name: "i3", packages: ["unrelated"] },
  ]);
  const impact = g.impact(["package/base"]);
  assert.deepEqual(impact.waves, [["package/base"], ["package/left", "package/right"], ["package/solo", "package/top"], ["image/i1", "image/i2"]]);
  assert.equal(impact.packages, 5);
  assert.equal(impact.images, 2);
  assert.equal(impact.keys.length, new Set(impact.keys).size);
  // With branches of unequal length (a -> d, and a -> b -> c -> d), d waits for the longer one.
  const chain = new DependencyGraph(pkgs({ a: [], b: ["a"], c: ["b"], d: ["a", "c"] }), []);
  assert.deepEqual(chain.impact(["package/a"]).waves, [["package/a"], ["package/b"], ["package/c"], ["package/d"]]);
});

test("several changed keys: one that depends on another changed one waits for it", () => {
  const g = new DependencyGraph(pkgs({ a: [], b: ["a"], c: [] }), [{ name: "i", packages: ["b"] }]);
  assert.deepEqual(g.impact(["package/b", "package/a", "image/i", "package/gone"]).waves, [["package/a"], ["package/b"], ["image/i"]]);
  assert.deepEqual(g.impact(["image/i"]).waves, [["image/i"]]);
  assert.deepEqual(g.impact([]).waves, []);
});

test("cycles are found, each written as a path back to its start", () => {
  const g = new DependencyGraph(pkgs({ a: ["b"], b: ["c"], c: ["a"], d: ["d"], e: ["a"], x: ["y"], y: ["x"] }), []);
  assert.deepEqual(g.cycles(), [
    ["a", "b", "c", "a"],
    ["d", "d"],
    ["x", "y", "x"],
  ]);
  assert.deepEqual(new DependencyGraph(pkgs({ a: [], b: ["a"] }), []).cycles(), []);
  assert.throws(() => g.impact(["package/a"]), /cycle/);
});

test("a long chain neither overflows the stack nor slows down", () => {
  const n = 50_000;
  const spec: GraphPackage[] = Array.from({ length: n }, (_, i) => ({
    name: `p${String(i).padStart(6, "0")}`,
    dependencies: i ? [`p${String(i - 1).padStart(6, "0")}`] : [],
  }));
  const g = new DependencyGraph(spec, []);
  assert.deepEqual(g.cycles(), []);
  const t = performance.now();
  const impact = g.impact(["package/p000000"]);
  assert.equal(impact.waves.length, n);
  assert.ok(performance.now() - t < 1000);
});

test("unknown dependencies are left to the loader to report", () => {
  const g = new DependencyGraph(pkgs({ a: ["ghost"] }), [{ name: "i", packages: ["ghost", "a"] }]);
  assert.deepEqual(g.dependencies("image/i"), ["package/a"]);
  assert.ok(g.has("package/a") && g.has("image/i") && !g.has("package/ghost"));
});
