/**
 * Whether the builder that marked a build (attempts.ts: the key's `building` mark names its
 * instance, workspaces.ts) is alive, for a builder that meets the mark on a request for the
 * same inputs: a redelivery after the owner's keep-alives missed the ack wait (a loaded
 * machine, a NATS hiccup), or the same request published again. An owner that is alive is
 * building it (or has it queued for a build slot) and answers it; one that is gone died with
 * it, and the build is taken over.
 *
 * Gone: on this host, a pid that no longer runs, or this process's own pid from an earlier
 * start (pid 1 in a container); anywhere, no heartbeat of that instance (heartbeat.ts: key
 * `builder.<host>-<pid>`, which must name the mark's instance in its `markDetail` detail, so
 * that a restarted process with the same host and pid is not taken for it), a `stopped` one, or
 * one older than the heartbeats' staleness (3 intervals). Alive: a fresh heartbeat naming it;
 * the caller looks again when that heartbeat would turn stale if no other came.
 */
import { heartbeatKey, instanceId, readHeartbeat, type Logger } from "@homeostat/core";
import { isRunning, parseInstance, type Instance } from "./workspaces.ts";

/** The heartbeat detail in which a builder names the instance its marks carry. */
export const markDetail = "marks";

export type MarkOwner = { alive: true; recheckMs: number } | { alive: false; why: string };

/** The shortest wait before looking again at an owner that is alive (its heartbeat may have been written a moment ago). */
const minRecheckMs = 1_000;

export function markOwnerLiveness(o: { services: Parameters<typeof readHeartbeat>[0]; me: Instance; staleAfterMs: number; log: Logger }) {
  return async function markOwner(instance: string): Promise<MarkOwner> {
    const owner = parseInstance(instance);
    if (!owner) return { alive: false, why: `the mark names no builder instance (${instance})` };
    if (owner.host === o.me.host) {
      if (owner.pid === o.me.pid) return { alive: false, why: "an earlier start of this process's pid" };
      if (!isRunning(owner.pid)) return { alive: false, why: `pid ${owner.pid} no longer runs on this host` };
    }
    const key = heartbeatKey("builder", instanceId(owner.host, owner.pid));
    const beat = await readHeartbeat(o.services, key, {
      staleAfterMs: o.staleAfterMs,
      invalid: (k, reason) => o.log.warn("a builder heartbeat that does not parse", { key: k, reason }),
    });
    if (!beat) return { alive: false, why: "no heartbeat" };
    if (beat.details[markDetail] !== instance) return { alive: false, why: `its heartbeat is another process's (${beat.details[markDetail] ?? "none"})` };
    if (beat.health === "stopped") return { alive: false, why: "it stopped" };
    if (beat.stale) return { alive: false, why: `its last heartbeat is ${beat.ageMs} ms old` };
    return { alive: true, recheckMs: Math.max(minRecheckMs, o.staleAfterMs - beat.ageMs + 1) };
  };
}
