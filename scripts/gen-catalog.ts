/**
 * Synthetic catalog at the reference factory's scale (27,000 packages, 2,000 images), for
 * `pnpm bench:catalog` and for trying Homeostat on a big catalog.
 *
 * The shape is that of a Linux distribution: a few base packages that almost everything uses
 * (a C library first, then compression, TLS, terminal libraries), a core of popular libraries
 * and a long tail. Each package depends only on packages generated before it, so the catalog
 * is acyclic; picking dependencies with a strong bias towards early (popular) packages gives
 * the power-law fan-in of real catalogs and, as two dependencies often share their own,
 * plenty of diamonds. Images install one to four packages each. Everything comes from a
 * seeded generator: the same options write the same files.
 *
 * Every package builds for real, cheaply: its source is the catalog's one small tarball
 * (sources/app.tar.gz, one C file, its sha256 in every recipe) and its one build step compiles
 * it statically with musl-gcc into /usr/bin/<name> (about 50 ms), so the builder fetches,
 * verifies, unpacks, runs a sandboxed compiler and assembles an archive, and each image's
 * entrypoint is a program that runs in it with nothing else (no shell, no libc to ship). A
 * release names a tarball of its own (`sourceTarball(dir, version)`: the same program saying
 * which release it is, so its build differs and dependents rebuild), with no network. No package names an upstream to poll: releases come as events.
 *
 * Usage: node scripts/gen-catalog.ts DIR [--packages N] [--images N] [--seed N]
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { mapLimit } from "@homeostat/core/map-limit";
import { mulberry32, packAppTarball, pick } from "./app-tarball.ts";

export type GenOptions = { packages: number; images: number; seed: number };

/** The base packages, in dependency order: every later package may use the earlier ones. */
export const BASE_PACKAGES = ["glibc", "zlib", "xz", "bzip2", "openssl", "ncurses", "readline", "libffi"];

/** Files written at once. */
const WRITE_CONCURRENCY = 64;

/** Where every package's source lies, relative to the catalog directory. */
export const SOURCE_TARBALL = "sources/app.tar.gz";

/** The program every package builds: real enough to run as an image's entrypoint. */
const program = (release: string) =>
  `#include <stdio.h>\nint main(int argc, char **argv) {\n  printf("%s ${release} from a generated catalog (%d arguments)\\n", argv[0], argc - 1);\n  return 0;\n}\n`;

/**
 * Writes a source tarball (one top directory, app/, as release tarballs have) into `dir`:
 * the catalog's (SOURCE_TARBALL) or, with `release`, sources/app-<release>.tar.gz, byte for
 * byte the same on every run (sorted, mtime 0, numeric owners, gzip -n); returns its file://
 * URL and sha256, what a release event names.
 */
export async function sourceTarball(dir: string, release?: string): Promise<{ url: string; sha256: string }> {
  if (release !== undefined && !/^[A-Za-z0-9._-]+$/.test(release)) throw new Error(`release ${JSON.stringify(release)}: letters, digits, ._- only`);
  const file = path.resolve(dir, release === undefined ? SOURCE_TARBALL : `sources/app-${release}.tar.gz`);
  return packAppTarball(file, { "main.c": { content: program(release ?? "initial") } });
}

/** Writes packages/<shard>/<name>.yaml, images/<shard>/<name>.yaml and the source under `dir`; returns the names. */
export async function generateCatalog(dir: string, o: GenOptions): Promise<{ packages: string[]; images: string[] }> {
  if (o.packages < BASE_PACKAGES.length) throw new Error(`--packages must be at least ${BASE_PACKAGES.length}`);
  const { sha256 } = await sourceTarball(dir);
  const rand = mulberry32(o.seed);
  const names = [...BASE_PACKAGES, ...Array.from({ length: o.packages - BASE_PACKAGES.length }, (_, i) => `pkg-${String(i).padStart(5, "0")}`)];
  const [clib, second] = BASE_PACKAGES;
  if (clib === undefined || second === undefined) throw new Error("internal: BASE_PACKAGES lists fewer than two packages");
  const files: [string, string][] = [];
  for (const [i, name] of names.entries()) {
    const build = new Set<string>();
    if (i > 0) build.add(clib);
    if (i < BASE_PACKAGES.length) {
      if (i > 1 && rand() < 0.5) build.add(second);
    } else {
      for (const base of BASE_PACKAGES.slice(1)) if (rand() < 0.25) build.add(base);
      // Up to four more from earlier packages, most often the popular early ones (u^3 skew).
      const extra = Math.floor(rand() * 5);
      const earlier = names.slice(0, i);
      for (let k = 0; k < extra; k++) build.add(pick(earlier, () => rand() ** 3));
    }
    build.delete(name);
    const runtime = [...build].filter((d, n) => n === 0 || rand() < 0.5);
    files.push([path.join("packages", shard(name), `${name}.yaml`), packageYaml(name, i, [...build], runtime, rand, sha256)]);
  }
  const images: string[] = [];
  for (let i = 0; i < o.images; i++) {
    const name = `image-${String(i).padStart(4, "0")}`;
    const count = 1 + Math.floor(rand() * 4);
    const contents = new Set<string>();
    // Images mostly ship leaf applications: late packages, uniformly.
    const leaves = names.slice(BASE_PACKAGES.length);
    for (let k = 0; k < count; k++) contents.add(pick(leaves, rand));
    images.push(name);
    files.push([path.join("images", shard(name), `${name}.yaml`), imageYaml(name, [...contents])]);
  }
  await writeAll(dir, files);
  return { packages: names, images };
}

/** Two characters of the name, so that no directory holds more than a few thousand files. */
function shard(name: string): string {
  return name.slice(-2);
}

function packageYaml(name: string, i: number, build: string[], runtime: string[], rand: () => number, sha256: string): string {
  const version = `${1 + (i % 7)}.${Math.floor(rand() * 20)}.${Math.floor(rand() * 10)}`;
  return `# yaml-language-server: $schema=../../../schemas/catalog-package.schema.json
name: ${name}
version: "${version}"
license: MIT
description: Synthetic package ${i} of a generated catalog.
source:
  url: ${SOURCE_TARBALL}
  sha256: "${sha256}"
build:
  steps:
    - mkdir -p $DESTDIR/usr/bin && musl-gcc -static -Os -s -o $DESTDIR/usr/bin/${name} main.c
dependencies:
  build: [${build.join(", ")}]
  runtime: [${runtime.join(", ")}]
`;
}

function imageYaml(name: string, packages: string[]): string {
  return `# yaml-language-server: $schema=../../../schemas/catalog-image.schema.json
name: ${name}
packages: [${packages.join(", ")}]
entrypoint: [/usr/bin/${packages[0]}]
env: { PATH: /usr/bin:/bin }
user: "65532"
workdir: /
annotations:
  org.opencontainers.image.title: ${name}
`;
}

async function writeAll(dir: string, files: [string, string][]): Promise<void> {
  const dirs = new Set(files.map(([f]) => path.dirname(path.join(dir, f))));
  for (const d of dirs) await mkdir(d, { recursive: true });
  await mapLimit(files, WRITE_CONCURRENCY, ([f, text]) => writeFile(path.join(dir, f), text));
}

function parseArgs(argv: string[]): { dir: string } & GenOptions {
  const o = { dir: "", packages: 27_000, images: 2_000, seed: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? "";
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) throw new Error(`${a} needs a non-negative integer`);
      return v;
    };
    if (a === "--packages") o.packages = value();
    else if (a === "--images") o.images = value();
    else if (a === "--seed") o.seed = value();
    else if (!a.startsWith("-") && !o.dir) o.dir = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!o.dir) throw new Error("usage: node scripts/gen-catalog.ts DIR [--packages N] [--images N] [--seed N]");
  return o;
}

if (import.meta.main) {
  try {
    const o = parseArgs(process.argv.slice(2));
    const { packages, images } = await generateCatalog(o.dir, o);
    process.stdout.write(`wrote ${packages.length} packages and ${images.length} images to ${o.dir}\n`);
  } catch (err) {
    process.stderr.write(`gen-catalog: ${(err as Error).message}\n`);
    process.exit(2);
  }
}
