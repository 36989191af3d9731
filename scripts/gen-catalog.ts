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
 * Usage: node scripts/gen-catalog.ts DIR [--packages N] [--images N] [--seed N]
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";

export type GenOptions = { packages: number; images: number; seed: number };

/** The base packages, in dependency order: every later package may use the earlier ones. */
export const BASE_PACKAGES = ["glibc", "zlib", "xz", "bzip2", "openssl", "ncurses", "readline", "libffi"];

/** Files written at once. */
const WRITE_CONCURRENCY = 64;

/** Writes packages/<shard>/<name>.yaml and images/<shard>/<name>.yaml under `dir`; returns the names. */
export async function generateCatalog(dir: string, o: GenOptions): Promise<{ packages: string[]; images: string[] }> {
  if (o.packages < BASE_PACKAGES.length) throw new Error(`--packages must be at least ${BASE_PACKAGES.length}`);
  const rand = mulberry32(o.seed);
  const names = [...BASE_PACKAGES, ...Array.from({ length: o.packages - BASE_PACKAGES.length }, (_, i) => `pkg-${String(i).padStart(5, "0")}`)];
  const files: [string, string][] = [];
  for (const [i, name] of names.entries()) {
    const build = new Set<string>();
    if (i > 0) build.add(names[0]!); // the C library
    if (i < BASE_PACKAGES.length) {
      if (i > 1 && rand() < 0.5) build.add(names[1]!);
    } else {
      for (let b = 1; b < BASE_PACKAGES.length; b++) if (rand() < 0.25) build.add(names[b]!);
      // Up to four more from earlier packages, most often the popular early ones (u^3 skew).
      const extra = Math.floor(rand() * 5);
      for (let k = 0; k < extra; k++) build.add(names[Math.floor(i * rand() ** 3)]!);
    }
    build.delete(name);
    const runtime = [...build].filter((d, n) => n === 0 || rand() < 0.5);
    files.push([path.join("packages", shard(name), `${name}.yaml`), packageYaml(name, i, [...build], runtime, rand)]);
  }
  const images: string[] = [];
  for (let i = 0; i < o.images; i++) {
    const name = `image-${String(i).padStart(4, "0")}`;
    const count = 1 + Math.floor(rand() * 4);
    const contents = new Set<string>();
    // Images mostly ship leaf applications: late packages, uniformly.
    for (let k = 0; k < count; k++) contents.add(names[BASE_PACKAGES.length + Math.floor(rand() * (names.length - BASE_PACKAGES.length))]!);
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

function packageYaml(name: string, i: number, build: string[], runtime: string[], rand: () => number): string {
  const version = `${1 + (i % 7)}.${Math.floor(rand() * 20)}.${Math.floor(rand() * 10)}`;
  const hex = (Math.imul(i + 1, 2654435761) >>> 0).toString(16).padStart(8, "0");
  const upstream = i % 3 === 0
    ? `upstream:\n  github: example-org/${name}\n  policy: { semver: "^${version.split(".")[0]}" }\n`
    : i % 3 === 1 ? `upstream:\n  url: https://downloads.example.org/${name}/${name}-\${version}.tar.gz\n` : "";
  return `# yaml-language-server: $schema=../../../schemas/catalog-package.schema.json
name: ${name}
version: "${version}"
license: MIT
description: Synthetic package ${i} of a generated catalog.
${upstream}source:
  url: https://downloads.example.org/${name}/${name}-\${version}.tar.gz
  sha256: "${hex.repeat(8)}"
build:
  steps:
    - ./configure --prefix=/usr
    - make
    - make install DESTDIR=$DESTDIR
test: make check
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
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const [f, text] = files[next++]!;
      await writeFile(path.join(dir, f), text);
    }
  };
  await Promise.all(Array.from({ length: WRITE_CONCURRENCY }, worker));
}

/** A small seeded PRNG (mulberry32): reproducible catalogs without a dependency. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function parseArgs(argv: string[]): { dir: string } & GenOptions {
  const o = { dir: "", packages: 27_000, images: 2_000, seed: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
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
