/**
 * pnpm eval:agent: the agent's six repair scenarios (test/agent-eval.ts), graded, as one JSON
 * object on stdout (per scenario: passed, turns, tokens, cost, the loop's own overhead per turn;
 * totals and the pass rate); progress and a scorecard on stderr. Scripted (the fake Messages
 * server) unless ANTHROPIC_API_KEY is set: then the real model (HOMEOSTAT_AGENT_MODEL,
 * ANTHROPIC_BASE_URL), graded the same way. Exits 1 when a scenario fails.
 *
 *   pnpm eval:agent [scenario ...]
 */
import { runEval } from "../test/agent-eval.ts";
import { table } from "./table.ts";

const only = process.argv.slice(2);
const report = await runEval({ ...(only.length ? { only } : {}), progress: (line) => process.stderr.write(`${line}\n`) });
const rows = report.scenarios.map((s) => [
  s.name,
  s.passed ? "pass" : "FAIL",
  `${s.turns}/${s.budget}`,
  String(s.input_tokens + s.cache_creation_input_tokens + s.cache_read_input_tokens),
  String(s.output_tokens),
  `$${s.cost_usd.toFixed(4)}`,
  s.loop_overhead_ms_per_turn.toFixed(1),
]);
const t = report.totals;
rows.push([
  "total",
  `${t.passed}/${t.scenarios}`,
  String(t.turns),
  "",
  String(t.output_tokens),
  `$${t.cost_usd.toFixed(4)}`,
  t.loop_overhead_ms_per_turn.toFixed(1),
]);
process.stderr.write(
  `\n${report.mode} (${report.model}): pass rate ${(t.pass_rate * 100).toFixed(0)}%\n${table([["scenario", "result", "turns/budget", "input tokens", "output tokens", "cost", "loop ms/turn"], ...rows])}\n`,
);
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.exitCode = t.passed === t.scenarios ? 0 : 1;
