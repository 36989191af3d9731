/**
 * The chaos suite, small enough for CI (a few minutes): a dozen generated packages while a
 * seeded schedule SIGKILLs the builder, signer and reconciler, restarts NATS, flushes Redis,
 * fills the data disk (a tmpfs the suite mounts as root; left out, saying why, otherwise) and
 * deletes and corrupts archives a release's build needs, plus
 * a package whose build fails and one whose slow step the suite kills its builder in (scripts/chaos.ts). The seed is printed; `pnpm chaos --seed N` replays it for longer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { faultTypes, overlappingBuilds, runChaos, stepIntervals, summary, type ChaosReport } from "../scripts/chaos.ts";

const seed = process.env.HOMEOSTAT_CHAOS_SEED ? Number(process.env.HOMEOSTAT_CHAOS_SEED) : Math.floor(Math.random() * 2 ** 31);
let report: ChaosReport;

test("the double-build check: intervals read from step logs, overlaps of one key found, of different keys not", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-chaos-check-"));
  try {
    const log = (name: string, start: number, end: number) =>
      `$ echo "chaos-build-interval start ${name} $(date +%s%N)"; sleep 1\nchaos-build-interval start ${name} ${start}\nchaos-build-interval end ${name} ${end}\n`;
    writeFileSync(path.join(dir, "a1"), log("a", 1_000, 2_000));
    writeFileSync(path.join(dir, "a2"), log("a", 1_500, 2_500)); // overlaps a1
    writeFileSync(path.join(dir, "a3"), log("a", 2_500, 3_000)); // starts as a2 ends
    writeFileSync(path.join(dir, "b1"), log("b", 1_200, 1_800)); // another key at the same time
    writeFileSync(path.join(dir, "archive"), Buffer.from([0x1f, 0x8b, 0, 1, 2]));
    const intervals = stepIntervals(dir);
    assert.equal(intervals.length, 4);
    assert.deepEqual(
      overlappingBuilds(intervals).map((o) => o.split(" ")[0]),
      ["package/a"],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test(`chaos (seed ${seed}): faults injected, the crasher given up, no workspace or process leaked`, { timeout: 600_000 }, async () => {
  console.log(`# chaos seed ${seed} (replay: HOMEOSTAT_CHAOS_SEED=${seed} node --test test/chaos.test.ts, or pnpm chaos --seed ${seed})`);
  report = await runChaos({ seed, keys: 10, durationMs: 45_000, log: (line) => console.log(line) });
  console.log(`# ${JSON.stringify(summary(report))}`);
  assert.ok(report.faultsInjected >= 3, `faults injected: ${report.faultsInjected}`);
  assert.ok(report.crasherKills >= 2, "the crasher killed its builder up to the crash limit, then was given up");
  assert.equal(report.leakedWorkspaces, 0, report.problems.join("\n"));
  assert.equal(report.leakedProcesses, 0, report.problems.join("\n"));
});

test("chaos: a full disk stops builds for a while, never for good, and kills no service", () => {
  assert.ok(report, "the chaos run ran");
  if (report.faultsLeftOut.length) console.log(`# left out: ${report.faultsLeftOut.join("; ")}`);
  // The schedule takes every fault type once before any twice: a run that injected as many met the disk fault, unless it was left out.
  const diskRounds = report.recoveryMs.disk.length + report.problems.filter((p) => p.startsWith("disk round")).length;
  if (report.faultsInjected >= faultTypes.length && !report.faultsLeftOut.some((f) => f.startsWith("disk")))
    assert.ok(diskRounds >= 1, `no disk round in ${report.faultsInjected} faults`);
  // Keys that met ENOSPC and ended Failed or dead-lettered, and services that exited, are named here.
  assert.deepEqual(
    report.problems.filter((p) => /met the full disk|during the disk fault/.test(p)),
    [],
  );
});

test("chaos: every key converges after every fault and no accepted release is lost", () => {
  assert.ok(report, "the chaos run ran");
  assert.equal(report.notConverged, 0, report.problems.join("\n"));
  assert.equal(report.lostEvents, 0, report.problems.join("\n"));
});

test("chaos: archives lost from the store are rebuilt, the same bytes, when a release's build needs them", () => {
  assert.ok(report, "the chaos run ran");
  assert.deepEqual(
    report.problems.filter((p) => /not restored in the store/.test(p)),
    [],
  );
});

test("chaos: no key is built twice at once (from the intervals its build steps recorded)", () => {
  assert.ok(report, "the chaos run ran");
  // Every generated package is built at least once: a check that saw no interval checked nothing.
  assert.ok(report.builtSteps >= report.keys - 2, `build steps that recorded their interval: ${report.builtSteps}`);
  assert.equal(report.doubleBuilds, 0, report.problems.filter((p) => p.startsWith("built twice")).join("\n"));
});
