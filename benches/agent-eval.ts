/**
 * pnpm eval:agent: the agent's six repair scenarios (test/agent-eval.ts), graded, as one JSON
 * object on stdout (per scenario: passed, turns, tokens, cost, the loop's own overhead per turn;
 * totals and the pass rate); progress on stderr. Scripted (the fake Messages server) unless
 * ANTHROPIC_API_KEY is set: then the real model (HOMEOSTAT_AGENT_MODEL, ANTHROPIC_BASE_URL), a
 * scorecard of the same graders. Exits 1 when a scenario fails.
 *
 *   pnpm eval:agent [scenario ...]
 */
import { runEval } from "../test/agent-eval.ts";

const only = process.argv.slice(2);
const report = await runEval({ ...(only.length ? { only } : {}), progress: (line) => process.stderr.write(`${line}\n`) });
process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
process.exitCode = report.totals.passed === report.totals.scenarios ? 0 : 1;
