/**
 * `pnpm bench:build` — how fast Homeostat assembles an image layer, next to GNU tar + gzip and
 * tar + pigz on the same files in the same run.
 *
 * The tree (made here, deterministic, about `--mb` MB, default 200): many small files (1-16
 * KiB of text-like content, in nested directories) and a few large ones (half text, half
 * incompressible bytes), the shape of a real package tree.
 *
 * - Homeostat: `writeTarGzFromDirectory` from services/builder/src/tar.ts, the builder's layer
 *   path: sorted entries, fixed mtimes and owners, streamed with back-pressure, gzip at the
 *   shipped level (GZIP_OPTIONS, level 6) in parallel 1 MiB blocks (parallel-gzip.ts), plus the
 *   sha256 of every file, of the tar and of the gzip stream in the same pass. Output to /dev/null.
 * - GNU: `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -c . | gzip -n -6`
 *   counted by `wc -c`, the same level, so both sides do the same compression work; GNU
 *   computes no digests.
 * - pigz: the same tar piped to `pigz -n -6` (parallel gzip on every core, the real peer of a
 *   parallel layer writer; scripts/provision installs it).
 * Every compressed size is printed: speed bought with a worse ratio would show there.
 *
 * Throughput is the size of the input files over wall time. After one untimed warm-up of each
 * side (page cache, JIT), `--runs` rounds (default 3) each run the three sides one after the
 * other, so that a change in the machine's load falls on all of them alike; each side's best
 * round counts. Each side's CPU time (user + system, of this process or of the pipeline's
 * processes) is printed too: on a machine shared with other work, wall time follows the share
 * of the cores a side gets, CPU time the work it does. The load average is printed before and
 * after. The last line is one JSON object. Everything is bounded: a fixed tree, a fixed number
 * of runs, and a time limit on the GNU pipelines.
 */
import { execFile } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { GZIP_OPTIONS, writeTarGzFromDirectory } from "../services/builder/src/tar.ts";
import { pick } from "../scripts/app-tarball.ts";

const args = new Map<string, string>();
for (const a of process.argv.slice(2)) {
  const [, name, value] = /^--(mb|runs)=(\d+)$/.exec(a) ?? [];
  if (name === undefined || value === undefined) {
    process.stderr.write(`bench:build: unknown argument ${JSON.stringify(a)}; usage: node benches/build.ts [--mb=200] [--runs=3]\n`);
    process.exit(64);
  }
  args.set(name, value);
}
const totalMb = Math.min(Math.max(Number(args.get("mb") ?? 200), 10), 2000);
const runs = Math.min(Math.max(Number(args.get("runs") ?? 3), 1), 10);

/** A small deterministic generator, so every run of the bench builds the same tree. */
function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

const words = "the of and to in is for on with as by at from build package image layer source version signed digest reproducible factory".split(" ");

function text(rand: () => number, bytes: number): Buffer {
  const parts: string[] = [];
  let n = 0;
  while (n < bytes) {
    const w = pick(words, rand);
    parts.push(w);
    n += w.length + 1;
  }
  return Buffer.from(parts.join(rand() < 0.1 ? "\n" : " ")).subarray(0, bytes);
}

function noise(rand: () => number, bytes: number): Buffer {
  const b = Buffer.allocUnsafe(bytes);
  for (let i = 0; i < bytes; i += 4) b.writeUInt32LE(Math.floor(rand() * 0x1_0000_0000), i);
  return b.subarray(0, bytes);
}

async function makeTree(root: string): Promise<{ files: number; bytes: number }> {
  const rand = xorshift(42);
  const target = totalMb * 1024 * 1024;
  const largeEach = Math.floor((target * 0.4) / 4);
  let bytes = 0;
  let files = 0;
  await mkdir(path.join(root, "usr", "lib"), { recursive: true });
  for (let i = 0; i < 4; i++) {
    const half = Math.floor(largeEach / 2);
    await writeFile(path.join(root, "usr", "lib", `large-${i}.bin`), Buffer.concat([text(rand, half), noise(rand, largeEach - half)]));
    bytes += largeEach;
    files++;
  }
  for (let d = 0; bytes < target; d++) {
    const dir = path.join(root, "usr", "share", `pkg-${d % 50}`, `dir-${d}`);
    await mkdir(dir, { recursive: true });
    for (let f = 0; f < 40 && bytes < target; f++) {
      const size = 1024 + Math.floor(rand() * 15 * 1024);
      await writeFile(path.join(dir, `file-${f}.txt`), text(rand, size));
      bytes += size;
      files++;
    }
  }
  return { files, bytes };
}

/** One run of a side: wall seconds, CPU seconds (user + system) and the compressed size. */
type Run = { seconds: number; cpuSeconds: number; gzBytes: number };

async function homeostat(root: string): Promise<Run> {
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const r = await writeTarGzFromDirectory(root, createWriteStream("/dev/null"), { epoch: 0 });
  const cpu = process.cpuUsage(cpu0);
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6, gzBytes: r.size };
}

/** `times` prints the shell's user and system time, then its children's: `0m1.234s 0m0.056s`. */
function childCpuSeconds(times: string): number {
  const [, um, us, sm, ss] = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(times.trim()) ?? [];
  if (um === undefined || us === undefined || sm === undefined || ss === undefined) throw new Error(`unexpected output of times: ${JSON.stringify(times)}`);
  return Number(um) * 60 + Number(us) + Number(sm) * 60 + Number(ss);
}

/** GNU tar piped to `compressor` (gzip or pigz, at the shipped level), its output counted, the pipeline's CPU time from `times`. */
function tarPipe(root: string, compressor: "gzip" | "pigz"): Promise<Run> {
  const script = `tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -c . | ${compressor} -n -${GZIP_OPTIONS.level} | wc -c; times`;
  const t0 = performance.now();
  return new Promise((resolve, reject) =>
    execFile("bash", ["-o", "pipefail", "-e", "-c", script, "bench", root], { timeout: 600_000 }, (err, out, stderr) => {
      if (err) return reject(new Error(`tar | ${compressor} failed: ${stderr || err.message}`));
      const [count, , children] = out.trim().split("\n");
      if (count === undefined || children === undefined) return reject(new Error(`tar | ${compressor}: unexpected output ${JSON.stringify(out)}`));
      resolve({ seconds: (performance.now() - t0) / 1000, cpuSeconds: childCpuSeconds(children), gzBytes: Number(count) });
    }),
  );
}

type Side = { name: string; run: () => Promise<Run>; runs: Run[] };

/** Warms every side up once, then runs them in turn `runs` times, each run kept in its side. */
async function rounds(sides: Side[]): Promise<void> {
  for (const side of sides) await side.run(); // warm-up: the page cache, the JIT
  for (let i = 0; i < runs; i++) for (const side of sides) side.runs.push(await side.run());
}

function fastest(side: Side): Run {
  const [first, ...rest] = side.runs;
  if (first === undefined) throw new Error(`internal: ${side.name} has no run`);
  return rest.reduce((a, b) => (b.seconds < a.seconds ? b : a), first);
}

const round2 = (x: number): number => Math.round(x * 100) / 100;

const load = (): string =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" ");

const root = await mkdtemp(path.join(tmpdir(), "hs-bench-build-"));
try {
  process.stdout.write(`bench:build — making a ${totalMb} MB tree ... `);
  const tree = await makeTree(root);
  const mb = tree.bytes / (1024 * 1024);
  process.stdout.write(`${tree.files} files, ${mb.toFixed(1)} MB\n`);
  const loadBefore = load();
  process.stdout.write(`gzip level ${GZIP_OPTIONS.level} on every side; best of ${runs} rounds after a warm-up; load average ${loadBefore}\n`);
  const sides: Side[] = [
    { name: "homeostat writeTarGzFromDirectory", run: () => homeostat(root), runs: [] },
    { name: `GNU tar | gzip -n -${GZIP_OPTIONS.level}`, run: () => tarPipe(root, "gzip"), runs: [] },
    { name: `GNU tar | pigz -n -${GZIP_OPTIONS.level}`, run: () => tarPipe(root, "pigz"), runs: [] },
  ];
  await rounds(sides);
  const [h, g, p] = sides.map(fastest);
  if (h === undefined || g === undefined || p === undefined) throw new Error("internal: a side is missing");
  const loadAfter = load();
  process.stdout.write(
    `\n${"".padEnd(36)}${"seconds".padStart(9)}${"MB/s".padStart(9)}${"CPU s".padStart(8)}${"gzip MB".padStart(10)}   every round's seconds\n`,
  );
  for (const side of sides) {
    const r = fastest(side);
    process.stdout.write(
      `${side.name.padEnd(36)}${r.seconds.toFixed(2).padStart(9)}${(mb / r.seconds).toFixed(1).padStart(9)}${r.cpuSeconds.toFixed(2).padStart(8)}${(r.gzBytes / 2 ** 20).toFixed(2).padStart(10)}   ${side.runs.map((x) => x.seconds.toFixed(1)).join(" ")}\n`,
    );
  }
  process.stdout.write(`load average after: ${loadAfter}\n`);
  const ratio = g.seconds / h.seconds;
  const pigzRatio = p.seconds / h.seconds;
  const pigzCpuRatio = p.cpuSeconds / h.cpuSeconds;
  const [ours, , pigz] = sides;
  if (ours === undefined || pigz === undefined) throw new Error("internal: a side is missing");
  // Each round's ratio compares runs made one right after the other, under about the same load.
  const pigzRoundRatios = ours.runs.map((r, i) => round2((pigz.runs[i]?.seconds ?? NaN) / r.seconds));
  process.stdout.write(
    `ratio homeostat / GNU: ${ratio.toFixed(2)}x (target >= 1.0x: ${ratio >= 1 ? "met" : "NOT met"}); compressed size ${((h.gzBytes / g.gzBytes - 1) * 100).toFixed(2)} % against GNU's\n`,
  );
  process.stdout.write(
    `ratio homeostat / pigz: ${pigzRatio.toFixed(2)}x (target >= 1.0x: ${pigzRatio >= 1 ? "met" : "NOT met"}); compressed size ${((h.gzBytes / p.gzBytes - 1) * 100).toFixed(2)} % against pigz's (target within 1 %)\n`,
  );
  process.stdout.write(`ratio homeostat / pigz in each round: ${pigzRoundRatios.map((x) => x.toFixed(2)).join(" ")}\n`);
  process.stdout.write(`CPU time pigz / homeostat: ${pigzCpuRatio.toFixed(2)}x (${p.cpuSeconds.toFixed(2)} s against ${h.cpuSeconds.toFixed(2)} s)\n`);
  console.log(
    JSON.stringify({
      bench: "build",
      mb_per_s: {
        homeostat: Math.round((mb / h.seconds) * 10) / 10,
        gnu_tar_gzip: Math.round((mb / g.seconds) * 10) / 10,
        gnu_tar_pigz: Math.round((mb / p.seconds) * 10) / 10,
      },
      ratio: Math.round(ratio * 1000) / 1000,
      ratio_pigz: Math.round(pigzRatio * 1000) / 1000,
      cpu_s: { homeostat: round2(h.cpuSeconds), gnu_tar_gzip: round2(g.cpuSeconds), gnu_tar_pigz: round2(p.cpuSeconds) },
      ratio_pigz_rounds: pigzRoundRatios,
      cpu_ratio_pigz: Math.round(pigzCpuRatio * 1000) / 1000,
      load: { before: loadBefore, after: loadAfter },
      gzip_bytes: { homeostat: h.gzBytes, gnu_tar_gzip: g.gzBytes, gnu_tar_pigz: p.gzBytes },
      files: tree.files,
      mb: Math.round(mb * 10) / 10,
      gzip_level: GZIP_OPTIONS.level,
      runs,
    }),
  );
} finally {
  await rm(root, { recursive: true, force: true });
}
