/**
 * `homeostat status`: which services of the factory run, where, at which version, whether each
 * instance is ready, how old its last heartbeat is and the last error it met, from the
 * heartbeats every instance writes to NATS (the status API's ListServices).
 *
 * The factory is ready when each required service (core health.ts: all but the optional agent)
 * has at least one instance that is ready and not stale; otherwise the command says which are
 * not and exits 4, so that a script or a CI step can wait on it.
 */
import { requiredServices } from "@homeostat/core/health";
import type { ServiceInstance } from "@homeostat/core/heartbeat";
import type { ServiceList } from "@homeostat/status-api";
import { exitCodes } from "./exit-codes.ts";
import type { Command } from "./main.ts";
import { columns } from "./table.ts";

export type ServicesAssessment = {
  /** Every required service has a ready, fresh instance. */
  ready: boolean;
  /** Required services without one, each with why (no heartbeat, or what its instances say). */
  notReady: { service: string; why: string }[];
  staleAfterMs: number;
  instances: ServiceInstance[];
};

export function assessServices(list: ServiceList): ServicesAssessment {
  const notReady: ServicesAssessment["notReady"] = [];
  for (const service of requiredServices) {
    const own = list.instances.filter((i) => i.service === service);
    if (own.some((i) => i.health === "ready" && !i.stale)) continue;
    const why =
      own.length === 0
        ? "no instance has sent a heartbeat"
        : own.map((i) => `${i.instance} ${healthText(i)}${i.reasons.length ? `: ${i.reasons.join("; ")}` : ""}`).join(", ");
    notReady.push({ service, why });
  }
  return { ready: notReady.length === 0, notReady, staleAfterMs: list.staleAfterMs, instances: list.instances };
}

function healthText(i: ServiceInstance): string {
  return i.stale ? `${i.health}, stale` : i.health;
}

/** 1234 -> "1s", 125000 -> "2m5s", 7200000 -> "2h0m". */
export function ageText(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`;
  return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
}

export function formatServices(a: ServicesAssessment): string {
  const rows = [["SERVICE", "INSTANCE", "REGION", "VERSION", "HEALTH", "AGE", "DETAILS", "LAST ERROR"]];
  for (const i of a.instances) {
    const details = Object.entries(i.details).map(([k, v]) => `${k}=${v}`);
    // One line per instance: a multi-line error would break the columns.
    const lastError = i.lastError ? `${i.lastError.at.replace(/\.\d+Z$/, "Z")} ${i.lastError.message.replace(/\s*\n\s*/g, " ")}` : "-";
    rows.push([i.service, i.instance, i.region, i.version, healthText(i), ageText(i.ageMs), details.join(" ") || "-", lastError]);
  }
  const lines = [a.instances.length ? columns(rows) : "no service instance has sent a heartbeat"];
  lines.push("");
  if (a.ready) lines.push(`ready: every required service (${requiredServices.join(", ")}) has a ready instance`);
  else for (const n of a.notReady) lines.push(`NOT READY: ${n.service}: ${n.why}`);
  return lines.join("\n");
}

export const statusCommand: Command = {
  name: "status",
  summary: "list the factory's services: instances, region, version, health, heartbeat age, last error",
  details: [
    "Read from the heartbeats every service instance writes to NATS every HOMEOSTAT_HEARTBEAT_MS (default 5s); a",
    "heartbeat older than three intervals is stale. Exit code 0 when each of ingest, queue, reconciler, builder and",
    "signer has an instance that is ready and not stale, 4 when one has none (it is named with why); the agent is",
    "listed but optional. With --json: {ready, notReady, staleAfterMs, instances}.",
  ].join("\n"),
  positionals: { min: 0, max: 0 },
  async run(ctx) {
    const { api, client } = await ctx.status();
    const assessment = assessServices(await api.listServices(client));
    ctx.show(assessment, () => formatServices(assessment));
    return assessment.ready ? exitCodes.ok : exitCodes.notReady;
  },
};
