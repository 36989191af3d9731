/**
 * Reproducible source tarballs for generated catalogs (the scale harness, the chaos suite, the
 * regions test): one top directory `app/` holding the given files, packed sorted, with mtime 0,
 * numeric root owners and gzip without name or time, so the same files always give the same
 * sha256. Also the seeded generator those catalogs are drawn with.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** A file of `app/`: its text (or bytes), and its mode (default 0644; 0755 for scripts). */
export type AppFile = { content: string | Uint8Array; mode?: number };

/** Packs `files` under `app/` into `file` (its directory is created); its file URL and sha256. */
export function packAppTarball(file: string, files: Record<string, AppFile>): { url: string; sha256: string } {
  const tree = mkdtempSync(path.join(tmpdir(), "homeostat-app-tree-"));
  try {
    mkdirSync(path.join(tree, "app"));
    for (const [name, f] of Object.entries(files)) writeFileSync(path.join(tree, "app", name), f.content, { mode: f.mode ?? 0o644 });
    mkdirSync(path.dirname(file), { recursive: true });
    execFileSync("bash", [
      "-o",
      "pipefail",
      "-c",
      'tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -c app | gzip -n -9 > "$2"',
      "tarball",
      tree,
      file,
    ]);
  } finally {
    rmSync(tree, { recursive: true, force: true });
  }
  return { url: `file://${file}`, sha256: createHash("sha256").update(readFileSync(file)).digest("hex") };
}

/** mulberry32: a small seeded generator, the same sequence for the same seed, with no dependency. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One of `items`, chosen by `rand` (a generator of [0, 1)). */
export function pick<T>(items: readonly T[], rand: () => number): T {
  const item = items[Math.floor(rand() * items.length)];
  if (item === undefined) throw new Error("nothing to pick from");
  return item;
}
