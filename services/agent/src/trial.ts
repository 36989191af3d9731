/**
 * Trial builds of a candidate: the candidate's recipe and patches written into a catalog
 * snapshot (@homeostat/catalog writeSnapshot, `<data>/agent/snapshots/<hex>`), the build the
 * snapshot calls for computed as the reconciler would (DesiredState over the same facts), and
 * asked of the builder with that ordinary build request on the trial subject (core NATS
 * request and reply; see services/builder/src/trial.ts). The builder recomputes the plan from
 * the snapshot itself, builds it in its sandbox, stores it apart and never signs it.
 *
 * Outcomes are kept per candidate digest for the run, so that submitting what was just tried
 * does not build it twice.
 */
import { stringify as stringifyYaml } from "yaml";
import { buildRequestOf, DesiredState, writeSnapshot, type Catalog, type Osv, type Release } from "@homeostat/catalog";
import { makeKey, trialOutcomeSchema, type KeyStatus, type Key, type Nats, type TrialOutcome } from "@homeostat/core";
import { candidateDigest, type Candidate } from "./validators.ts";

export type TrialDeps = {
  nats: Nats;
  catalog: () => Catalog;
  releases: (pkg: string) => Promise<readonly Release[]>;
  advisories: (pkg: string) => Promise<readonly Osv[]>;
  status: (key: Key) => Promise<KeyStatus | undefined>;
  sourceDateEpoch: number;
  /** Where snapshots are written (a directory the builder can read). */
  snapshots: string;
  /** How long a trial may take, the build's own time limit included. */
  timeoutMs: number;
};

export type TrialRunner = (candidate: Candidate) => Promise<TrialOutcome>;

/** A trial runner for one run of one package. */
export function trialRunner(deps: TrialDeps, name: string): TrialRunner {
  const outcomes = new Map<string, Promise<TrialOutcome>>();
  return (candidate) => {
    const id = candidateDigest(candidate);
    let outcome = outcomes.get(id);
    if (!outcome) outcomes.set(id, (outcome = tryOnce(candidate)));
    return outcome;
  };

  async function tryOnce(candidate: Candidate): Promise<TrialOutcome> {
    const key = makeKey("package", name);
    const base = deps.catalog();
    const file = base.fileOf(key) ?? `packages/${name}.yaml`;
    let snapshot;
    try {
      snapshot = await writeSnapshot(deps.snapshots, base, [{ path: file, text: stringifyYaml(candidate.recipe) }, ...candidate.patches]);
    } catch (err) {
      return { v: 1, passed: false, detail: `the candidate does not load as a catalog: ${err instanceof Error ? err.message : String(err)}`.slice(0, 8192) };
    }
    const desired = await new DesiredState({
      catalog: snapshot.catalog,
      releases: deps.releases,
      advisories: deps.advisories,
      status: deps.status,
      sourceDateEpoch: deps.sourceDateEpoch,
    }).package(name);
    if (desired.state === "waiting") return { v: 1, passed: false, detail: `nothing to build yet: it waits for ${desired.waitingFor}` };
    if (desired.state === "attention") return { v: 1, passed: false, detail: `the candidate still needs attention at ${desired.version}: ${desired.detail}` };
    try {
      const reply = await deps.nats.nc.request(deps.nats.topology.trialSubject(key), JSON.stringify(buildRequestOf(desired.plan)), { timeout: deps.timeoutMs });
      return trialOutcomeSchema.parse(reply.json());
    } catch (err) {
      return { v: 1, passed: false, detail: `no trial build: ${err instanceof Error ? err.message : String(err)} (is a builder running?)`.slice(0, 8192) };
    }
  }
}
