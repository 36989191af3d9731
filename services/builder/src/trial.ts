/**
 * Trial builds: the agentic reconciler's candidate recipe, built before a person reviews it.
 *
 * The agent writes its candidate into a catalog snapshot (@homeostat/catalog writeSnapshot:
 * `<data>/agent/snapshots/<hex>`, whose revision is its content digest) and asks on the trial
 * subject, which only the agent may publish to, with an ordinary build request naming that
 * revision. The builder opens the snapshot itself, refuses it unless its content is what its
 * name says, recomputes the plan exactly as for a build (request.ts verifiedPlan) and builds it
 * in the same sandbox (no network), through a Builder whose store and cache are its own
 * (`<data>/trials`): a trial is never vouched for, never handed to the signer, never written
 * into a key's state, so it can never become what the factory ships. The answer (passed, or
 * why not with the log's tail) goes back on the request's reply subject, the agent's inbox.
 */
import { addAbortListener } from "node:events";
import { buildRequestSchema, trialOutcomeSchema, type BuildRequest, type Logger, type Nats, type TrialOutcome } from "@homeostat/core";
import type { BuildPlan } from "@homeostat/catalog";
import type { BuildResult } from "./build.ts";
import { BuildFailure } from "./errors.ts";
import { BuildRefusedError, verifiedPlan, type PlanDeps } from "./request.ts";

export type TrialDeps = PlanDeps & {
  /** Builds a plan apart from the real builds (its own store, cache and workspaces). */
  build: (plan: BuildPlan) => Promise<BuildResult>;
};

/** One trial: what it built, or why it did not. Never throws. */
export function createTrialHandler(deps: TrialDeps): (req: BuildRequest) => Promise<TrialOutcome> {
  return async (req) => {
    try {
      const { plan } = await verifiedPlan(req, deps);
      await deps.build(plan);
      const tested = plan.kind === "package" && plan.test ? " and its test passed" : "";
      return { v: 1, passed: true, detail: `${req.key} ${req.version} built in the sandbox${tested} (inputs ${req.inputDigest})` };
    } catch (err) {
      if (err instanceof BuildFailure)
        return { v: 1, passed: false, detail: err.message.slice(0, 8192), ...(err.logTail ? { logTail: err.logTail.slice(-16384) } : {}) };
      if (err instanceof BuildRefusedError) return { v: 1, passed: false, detail: err.message.slice(0, 8192) };
      deps.log.warn("trial build could not run", { key: req.key, error: String(err) });
      return { v: 1, passed: false, detail: `the trial build could not run: ${err instanceof Error ? err.message : String(err)}`.slice(0, 8192) };
    }
  };
}

/** Answers trial requests (one builder of the queue group takes each) until `signal` aborts. */
export async function serveTrials(nats: Nats, handle: (req: BuildRequest) => Promise<TrialOutcome>, o: { log: Logger; signal: AbortSignal }): Promise<void> {
  const sub = nats.nc.subscribe(nats.topology.trialSubjects(), { queue: "trial" });
  addAbortListener(o.signal, () => sub.unsubscribe());
  const inFlight = new Set<Promise<void>>();
  for await (const msg of sub) {
    const answer = async (): Promise<void> => {
      let outcome: TrialOutcome;
      try {
        const parsed = buildRequestSchema.safeParse(msg.json());
        outcome = parsed.success
          ? await handle(parsed.data)
          : { v: 1, passed: false, detail: `invalid trial request: ${parsed.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}` };
      } catch (err) {
        outcome = { v: 1, passed: false, detail: `invalid trial request: ${err instanceof Error ? err.message : String(err)}` };
      }
      if (!msg.respond(JSON.stringify(trialOutcomeSchema.parse(outcome)))) o.log.warn("trial request without a reply subject", { subject: msg.subject });
    };
    const run = answer().finally(() => inFlight.delete(run));
    inFlight.add(run);
  }
  await Promise.all(inFlight);
}
