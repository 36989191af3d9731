/**
 * The chaos suite, small enough for CI (about two minutes): a dozen generated packages while a
 * seeded schedule SIGKILLs the builder, signer and reconciler, restarts NATS and flushes Redis,
 * plus a package whose build fails and one whose slow step the suite kills its builder in
 * (scripts/chaos.ts). The seed is printed; `pnpm chaos --seed N` replays it for longer.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runChaos, summary, type ChaosReport } from "../scripts/chaos.ts";

const seed = process.env.HOMEOSTAT_CHAOS_SEED ? Number(process.env.HOMEOSTAT_CHAOS_SEED) : Math.floor(Math.random() * 2 ** 31);
let report: ChaosReport;

test(`chaos (seed ${seed}): faults injected, the crasher given up, no workspace or process leaked`, { timeout: 400_000 }, async () => {
  console.log(`# chaos seed ${seed} (replay: HOMEOSTAT_CHAOS_SEED=${seed} node --test test/chaos.test.ts, or pnpm chaos --seed ${seed})`);
  report = await runChaos({ seed, keys: 10, durationMs: 45_000, log: (line) => console.log(line) });
  console.log(`# ${JSON.stringify(summary(report))}`);
  assert.ok(report.faultsInjected >= 3, `faults injected: ${report.faultsInjected}`);
  assert.ok(report.crasherKills >= 2, "the crasher killed its builder up to the crash limit, then was given up");
  assert.equal(report.leakedWorkspaces, 0, report.problems.join("\n"));
  assert.equal(report.leakedProcesses, 0, report.problems.join("\n"));
});

// Found by this suite: after a NATS restart a key can stay Ready on the version before a release
// ingest accepted with 202 (the round never converges). Marked todo until that is fixed.
test("chaos: every key converges after every fault and no accepted release is lost", { todo: "after a NATS restart an accepted release can be lost" }, () => {
  assert.ok(report, "the chaos run ran");
  assert.equal(report.notConverged, 0, report.problems.join("\n"));
  assert.equal(report.lostEvents, 0, report.problems.join("\n"));
});

// Found by this suite too: a build request redelivered to the builder instance already running it
// (after a NATS restart, say) starts a second build of the key in that process (attempts.ts
// claims only against other instances). Marked todo until the builder refuses it.
test("chaos: no key is built twice at once (from the builder's log)", { todo: "builder: a redelivery to the same instance builds the key twice" }, () => {
  assert.ok(report, "the chaos run ran");
  assert.equal(report.doubleBuilds, 0, report.problems.filter((p) => p.startsWith("built twice")).join("\n"));
});
