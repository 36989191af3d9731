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
 *
 * A live builder may still have left a mark behind: an attempt that failed while NATS was
 * failing over (a region lost) could neither clear its mark nor know whether its claim was
 * written, and every other builder then deferred to it while it built nothing (the regions
 * test: a key Building for minutes). So a builder's heartbeat also lists the inputs it has in
 * hand (`inputsDetail`), and a heartbeat written after the mark (both times on the owner's
 * clock) that does not list them says the mark is abandoned: taken over, and not counted as a
 * crash.
 */
import { heartbeatKey, instanceId, readHeartbeat, type Logger } from "@homeostat/core";
import { isRunning, parseInstance, type Instance } from "./workspaces.ts";

/** The heartbeat detail in which a builder names the instance its marks carry. */
export const markDetail = "marks";

/** The heartbeat detail in which a builder lists the inputs it has in hand (inputsInHand). */
export const inputsDetail = "inputs";

/** How much of an input digest's hex the inputs detail keeps: unique enough among one builder's builds. */
const digestPrefix = 16;

/**
 * The inputs detail of `inputDigests`: their short forms, space-separated; "many" when they do
 * not fit the detail's 512 characters, which tells nothing (every mark is taken as in hand).
 */
export function inputsInHand(inputDigests: Iterable<string>): string {
  const listed = [...inputDigests].map(shortInputs).join(" ");
  return listed.length <= 512 ? listed : "many";
}

/** An input digest as the inputs detail lists it. */
function shortInputs(inputDigest: string): string {
  return inputDigest.replace(/^sha256:/, "").slice(0, digestPrefix);
}

/** What a mark says: whose it is, for which inputs, since when (on its owner's clock). */
export type Mark = { instance: string; inputDigest: string; startedAt: string };

/** Alive or not; `abandoned`: the owner lives but no longer has these inputs in hand (not a crash). */
export type MarkOwner = { alive: true; recheckMs: number } | { alive: false; why: string; abandoned?: boolean };

/** The shortest wait before looking again at an owner that is alive (its heartbeat may have been written a moment ago). */
const minRecheckMs = 1_000;

export function markOwnerLiveness(o: { services: Parameters<typeof readHeartbeat>[0]; me: Instance; staleAfterMs: number; log: Logger }) {
  return async function markOwner({ instance, inputDigest, startedAt }: Mark): Promise<MarkOwner> {
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
    const inHand = beat.details[inputsDetail];
    if (inHand !== undefined && inHand !== "many" && Date.parse(beat.at) > Date.parse(startedAt) && !inHand.split(" ").includes(shortInputs(inputDigest)))
      return {
        alive: false,
        abandoned: true,
        why: "its heartbeat, written after it marked this build, does not have these inputs in hand: that attempt ended without clearing its mark",
      };
    return { alive: true, recheckMs: Math.max(minRecheckMs, o.staleAfterMs - beat.ageMs + 1) };
  };
}
