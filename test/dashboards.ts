/**
 * The Grafana dashboards of deploy/grafana/dashboards, read for the tests: test/deploy.test.ts
 * checks their datasources and panels, test/telemetry.test.ts that every metric they query is
 * one the running services export.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { repoRoot } from "../scripts/factory.ts";

type DatasourceRef = { type: string; uid: string };
export type Panel = { title: string; datasource: DatasourceRef; targets: { datasource: DatasourceRef; expr?: string; query?: string }[] };
export type Dashboard = { uid: string; title: string; panels: Panel[]; file: string };

export const dashboardDir = path.join(repoRoot, "deploy", "grafana", "dashboards");

/** Every dashboard, parsed (a file that is not JSON throws with its name). */
export function dashboards(): Dashboard[] {
  return readdirSync(dashboardDir)
    .filter((f) => f.endsWith(".json"))
    .map((file) => {
      try {
        return { ...(JSON.parse(readFileSync(path.join(dashboardDir, file), "utf8")) as Omit<Dashboard, "file">), file };
      } catch (err) {
        throw new Error(`${file}: ${(err as Error).message}`);
      }
    });
}

/**
 * The metric names a dashboard's PromQL queries select: each name followed by its label
 * matchers (every query here writes them; a test checks that every query names a metric).
 */
export function queriedMetrics(d: Dashboard): { panel: string; metric: string }[] {
  return d.panels.flatMap((p) =>
    p.targets.flatMap((t) => [...(t.expr ?? "").matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\{/g)].map((m) => ({ panel: `${d.title} / ${p.title}`, metric: m[1]! }))),
  );
}
