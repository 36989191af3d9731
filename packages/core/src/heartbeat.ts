/**
 * Heartbeats: every service instance writes, every HOMEOSTAT_HEARTBEAT_MS, who it is and how it
 * is to the KV bucket `<prefix>_services`, key `<service>.<instance>` (each service may write
 * only its own keys: nats-access.ts). The queue's ListServices reads them all, and `homeostat
 * status` shows them: which services run, where, at which version, whether ready, and the last
 * error each met.
 *
 * A heartbeat older than 3 intervals is stale (the instance hung, or lost NATS); the bucket's TTL
 * (6 intervals, topology.ts) removes what an instance that died left behind. A clean stop writes
 * a last heartbeat saying `stopped`.
 */
import { spawnSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import type { KV } from "@nats-io/kv";
import { z } from "zod";
import { instanceHealthStates, type ServiceHealth } from "./health.ts";
import { kvKeys } from "./kv-keys.ts";
import { errorMessage, type Logger } from "./log.ts";
import { mainPackageVersion } from "./telemetry.ts";

export const heartbeatSchema = z.object({
  v: z.literal(1),
  service: z.string().min(1).max(64),
  instance: z.string().min(1).max(128),
  version: z.string().max(128),
  region: z.string().max(64),
  host: z.string().max(256),
  pid: z.number().int().nonnegative(),
  startedAt: z.iso.datetime(),
  /** When this heartbeat was written (the writer's clock). */
  at: z.iso.datetime(),
  health: z.enum(instanceHealthStates),
  /** Why it is not ready (empty when ready). */
  reasons: z.array(z.string().max(2048)).max(32),
  lastError: z.object({ message: z.string().max(2048), at: z.iso.datetime(), kind: z.string().max(32).optional() }).optional(),
  /** Service-specific facts, cheap to compute: the builder's builds in flight, `agent: disabled`. */
  details: z.record(z.string().max(64), z.string().max(512)),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

/** A host name as instance ids spell it (a pod's hostname is its name): characters safe in a KV key and a file name. */
export function instanceHost(host = os.hostname()): string {
  return host.replace(/[^A-Za-z0-9_-]/g, "-").slice(0, 100) || "host";
}

/** This process's instance id: host and pid, stable for its life and readable in `homeostat status`. */
export function instanceId(host = os.hostname(), pid = process.pid): string {
  return `${instanceHost(host)}-${pid}`;
}

export function heartbeatKey(service: string, instance: string): string {
  return `${service}.${instance}`;
}

/**
 * The running code's version: the service's package version, and when it runs from a git
 * checkout, `git describe` of it (a container image has no .git and says the package version).
 */
export function runningVersion(script = process.argv[1]): string {
  const pkg = mainPackageVersion(script) ?? "unknown";
  if (!script) return pkg;
  const git = spawnSync("git", ["describe", "--always", "--dirty", "--tags"], { cwd: path.dirname(path.resolve(script)), encoding: "utf8", timeout: 5_000 });
  const described = git.status === 0 ? git.stdout.trim() : "";
  return described ? `${pkg} (${described})` : pkg;
}

export type HeartbeatIdentity = { service: string; instance: string; version: string; region: string; startedAt: string };

export type HeartbeatWriter = {
  /** Writes one now (after a change worth telling at once: started, stopping). */
  beat(): Promise<void>;
  /** Stops the timer and writes the last heartbeat, `stopped`. */
  stop(): Promise<void>;
};

/** Writes `identity`'s heartbeat to `kv` now and every `intervalMs`; a failed write is logged (once per outage) and tried at the next beat. */
export function startHeartbeat(kv: KV, identity: HeartbeatIdentity, health: ServiceHealth, o: { intervalMs: number; log: Logger }): HeartbeatWriter {
  const key = heartbeatKey(identity.service, identity.instance);
  let failing = false;
  const write = async (final?: "stopped") => {
    const r = await health.readiness();
    const beat: Heartbeat = {
      v: 1,
      ...identity,
      version: identity.version.slice(0, 128),
      host: os.hostname(),
      pid: process.pid,
      at: new Date().toISOString(),
      health: final ?? r.health,
      reasons: final ? [] : r.reasons.slice(0, 32).map((reason) => reason.slice(0, 2048)),
      ...(r.lastError ? { lastError: r.lastError } : {}),
      details: health.currentDetails(),
    };
    try {
      await kv.put(key, JSON.stringify(beat));
      if (failing) o.log.info("heartbeat written again");
      failing = false;
    } catch (err) {
      if (!failing) o.log.warn("heartbeat not written; trying at the next beat", { reason: errorMessage(err) });
      failing = true;
    }
  };
  // One write at a time: a slow NATS must not pile heartbeats up.
  let writing: Promise<void> = write();
  const timer = setInterval(() => {
    writing = writing.then(() => write());
  }, o.intervalMs);
  timer.unref();
  return {
    beat: () => (writing = writing.then(() => write())),
    stop: async () => {
      clearInterval(timer);
      await (writing = writing.then(() => write("stopped")));
    },
  };
}

/** A heartbeat as read back, with its age (since the NATS server stored it) and whether it is stale. */
export const serviceInstanceSchema = heartbeatSchema.extend({ ageMs: z.number().int().nonnegative(), stale: z.boolean() });
export type ServiceInstance = z.infer<typeof serviceInstanceSchema>;

/**
 * Every heartbeat in the bucket, by service then instance; an entry that does not parse is
 * reported through `invalid` and left out. `staleAfterMs`: older heartbeats are marked stale.
 */
export async function readHeartbeats(
  kv: KV,
  o: { staleAfterMs: number; now?: number; invalid?: (key: string, reason: string) => void },
): Promise<ServiceInstance[]> {
  const now = o.now ?? Date.now();
  const keys = await kvKeys(kv);
  const out: ServiceInstance[] = [];
  for (const k of keys.sort()) {
    const instance = await readHeartbeat(kv, k, { ...o, now });
    if (instance) out.push(instance);
  }
  return out;
}

/** The heartbeat under `key` (heartbeatKey), aged as readHeartbeats ages them; undefined when there is none or it does not parse (told to `invalid`). */
export async function readHeartbeat(
  kv: Pick<KV, "get">,
  key: string,
  o: { staleAfterMs: number; now?: number; invalid?: (key: string, reason: string) => void },
): Promise<ServiceInstance | undefined> {
  const e = await kv.get(key);
  if (!e || e.operation !== "PUT") return undefined;
  let parsed: ReturnType<typeof heartbeatSchema.safeParse>;
  try {
    parsed = heartbeatSchema.safeParse(e.json());
  } catch (err) {
    o.invalid?.(key, errorMessage(err));
    return undefined;
  }
  if (!parsed.success) {
    o.invalid?.(key, parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "));
    return undefined;
  }
  // Aged by the server's receipt, not the writer's clock: hosts' clocks may disagree.
  const ageMs = Math.max(0, (o.now ?? Date.now()) - e.created.getTime());
  return { ...parsed.data, ageMs, stale: parsed.data.health !== "stopped" && ageMs > o.staleAfterMs };
}
