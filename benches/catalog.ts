/**
 * `pnpm bench:catalog` — the catalog at the reference factory's scale: 27,000 packages and
 * 2,000 images (scripts/gen-catalog.ts), against the targets on this machine: a full
 * load (read + parse + validate + dependency graph + cycle check) within 10 s, and the impact
 * set of any single package within 50 ms.
 *
 * What it measures, in one run: generating the catalog into a temporary directory (not
 * timed); `loadCatalog` end to end, then the graph alone; the impact set (size, waves, time)
 * of a base-package advisory (glibc, which nearly everything uses: the worst case there is)
 * as the median of several runs; every package's impact once, reporting the slowest; a
 * catalog diff after one base recipe changed (changedKeys); memory after a full GC
 * (`--expose-gc`, set by the pnpm script). Every loop is bounded by the catalog's size or a
 * fixed count. The last line of output is one JSON object for machines.
 *
 * Usage: node --expose-gc benches/catalog.ts [--packages N] [--images N] [--keep]
 */
import { mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { Catalog, DependencyGraph, diffCatalogs, loadCatalog } from "@homeostat/catalog";
import { makeKey } from "@homeostat/core/key";
import { BASE_PACKAGES, generateCatalog } from "../scripts/gen-catalog.ts";

const TARGET_LOAD_S = 10;
const TARGET_IMPACT_MS = 50;
const IMPACT_RUNS = 7;

function parseArgs(argv: string[]): { packages: number; images: number; keep: boolean } {
  const o = { packages: 27_000, images: 2_000, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? "";
    if (a === "--keep") o.keep = true;
    else if (a === "--packages" || a === "--images") {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) fail(`${a} needs a non-negative integer`);
      o[a === "--packages" ? "packages" : "images"] = v;
    } else fail(`unknown argument ${a}`);
  }
  return o;
}

function fail(message: string): never {
  process.stderr.write(`bench:catalog: ${message}\n`);
  process.exit(2);
}

const gc = (globalThis as { gc?: () => void }).gc;
const mib = (n: number) => Math.round((n / (1 << 20)) * 10) / 10;
const ms = (n: number) => Math.round(n * 100) / 100;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

const o = parseArgs(process.argv.slice(2));
const dir = await mkdtemp(path.join(os.tmpdir(), "homeostat-bench-catalog-"));
try {
  process.stdout.write(`generating ${o.packages} packages and ${o.images} images in ${dir} …\n`);
  await generateCatalog(dir, { packages: o.packages, images: o.images, seed: 1 });
  gc?.();
  const rssBefore = process.memoryUsage().rss;

  let t = performance.now();
  const catalog = await loadCatalog(dir);
  const loadMs = performance.now() - t;

  t = performance.now();
  const graph = new DependencyGraph(
    [...catalog.packages.values()].map((p) => ({ name: p.name, dependencies: [...p.dependencies.build, ...p.dependencies.runtime] })),
    [...catalog.images.values()].map((i) => ({ name: i.name, packages: catalog.runtimeClosure(i.packages) })),
  );
  const graphMs = performance.now() - t;
  t = performance.now();
  const cycles = graph.cycles().length;
  const cyclesMs = performance.now() - t;

  const base = `package/${BASE_PACKAGES[0]}` as const;
  const baseTimes: number[] = [];
  let baseImpact = catalog.impact([base]);
  for (let i = 0; i < IMPACT_RUNS; i++) {
    t = performance.now();
    baseImpact = catalog.impact([base]);
    baseTimes.push(performance.now() - t);
  }

  let worst = { name: "", ms: 0, size: 0 };
  t = performance.now();
  for (const name of catalog.packages.keys()) {
    const s = performance.now();
    const impact = catalog.impact([makeKey("package", name)]);
    const d = performance.now() - s;
    if (d > worst.ms) worst = { name, ms: d, size: impact.keys.length };
  }
  const allImpactsMs = performance.now() - t;

  // One base recipe changed (openssl gets a patch step): what a catalog commit costs to diff.
  const changedName = "openssl";
  const packages = new Map(catalog.packages);
  const spec = packages.get(changedName);
  if (!spec) throw new Error(`the generated catalog has no ${changedName}`);
  packages.set(changedName, { ...spec, build: { steps: [...spec.build.steps, "make test"] } });
  t = performance.now();
  const next = new Catalog(catalog.dir, packages, new Map(catalog.images));
  const diff = diffCatalogs(catalog, next);
  const diffMs = performance.now() - t;

  gc?.();
  const mem = process.memoryUsage();

  const rows: [string, string][] = [
    ["packages / images", `${catalog.packages.size} / ${catalog.images.size}`],
    ["edges (dependencies)", `${[...catalog.packages.values()].reduce((n, p) => n + p.dependencies.build.length + p.dependencies.runtime.length, 0)}`],
    ["load + validate + graph", `${ms(loadMs / 1000)} s   (target ≤ ${TARGET_LOAD_S} s: ${loadMs / 1000 <= TARGET_LOAD_S ? "met" : "MISSED"})`],
    ["  graph build alone", `${ms(graphMs)} ms`],
    ["  cycle check alone", `${ms(cyclesMs)} ms (${cycles} cycles)`],
    [
      `impact of ${BASE_PACKAGES[0]} (advisory)`,
      `${baseImpact.keys.length} keys (${baseImpact.packages} packages, ${baseImpact.images} images) in ${baseImpact.waves.length} waves`,
    ],
    [
      "  time, median of " + IMPACT_RUNS,
      `${ms(median(baseTimes))} ms   (target ≤ ${TARGET_IMPACT_MS} ms: ${median(baseTimes) <= TARGET_IMPACT_MS ? "met" : "MISSED"})`,
    ],
    [
      "slowest single package",
      `${worst.name}: ${ms(worst.ms)} ms, ${worst.size} keys   (target ≤ ${TARGET_IMPACT_MS} ms: ${worst.ms <= TARGET_IMPACT_MS ? "met" : "MISSED"})`,
    ],
    ["every package's impact", `${ms(allImpactsMs)} ms in all`],
    [`changedKeys after ${changedName} changed`, `${diff.keys.length} keys in ${ms(diffMs)} ms`],
    [
      "memory after GC",
      `rss ${mib(mem.rss)} MiB (+${mib(mem.rss - rssBefore)} MiB for the catalog), heap used ${mib(mem.heapUsed)} MiB${gc ? "" : " (no --expose-gc: not collected)"}`,
    ],
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  process.stdout.write(`\ncatalog bench (node ${process.version}, ${os.cpus().length} cores)\n`);
  for (const [k, v] of rows) process.stdout.write(`  ${k.padEnd(width)}  ${v}\n`);
  process.stdout.write(
    `${JSON.stringify({
      bench: "catalog",
      packages: catalog.packages.size,
      images: catalog.images.size,
      load_s: ms(loadMs / 1000),
      graph_ms: ms(graphMs),
      impact_ms: ms(median(baseTimes)),
      impact_keys: baseImpact.keys.length,
      impact_waves: baseImpact.waves.length,
      worst_impact_ms: ms(worst.ms),
      worst_impact_package: worst.name,
      diff_ms: ms(diffMs),
      diff_keys: diff.keys.length,
      rss_mib: mib(mem.rss),
      heap_used_mib: mib(mem.heapUsed),
      targets_met: loadMs / 1000 <= TARGET_LOAD_S && worst.ms <= TARGET_IMPACT_MS && median(baseTimes) <= TARGET_IMPACT_MS,
    })}\n`,
  );
} finally {
  if (o.keep) process.stdout.write(`kept ${dir}\n`);
  else await rm(dir, { recursive: true, force: true });
}
