/**
 * One build request, from the message to the sign request: check it against the catalog,
 * build, vouch for the result, hand it to the signer.
 *
 * A request names a key, a catalog revision, an input digest and a version, and nothing the
 * build runs. The builder loads the catalog at that revision itself (its own CatalogSource),
 * recomputes the key's desired build from it and the facts (release facts, stored advisories,
 * the dependencies' actual artifacts in the state KV, all read-only) with the reconciler's own
 * implementation (@homeostat/catalog DesiredState), and builds that plan only when it arrives
 * at the requested input digest and version. Anything else is refused — a revision it cannot
 * have, a key not in the catalog, a key that cannot be built now, other inputs — without
 * building and without touching the key's status: the reconciler's next run asks again with
 * what is current. Each refusal is logged with its reason and counted
 * (`homeostat.builder.refused` by reason).
 *
 * The result is vouched for by the builder's own key (not the release signing key): a DSSE
 * envelope (@homeostat/attest dsse.ts) of an in-toto statement whose subjects are the output
 * digests and whose predicate (core contracts buildResultPredicateSchema) names the key,
 * kind, version, input digest, catalog revision, outputs and how the steps were sandboxed.
 * It is stored in the content-addressed store beside the artifacts, and the sign request names
 * it by digest.
 */
import { type BuildDecision, DesiredState, type AdvisoryStore, type BuildPlan, type Catalog, type ReleaseStore } from "@homeostat/catalog";
import { BUILD_RESULT_PREDICATE_TYPE, signDsse, type Signer, statementAbout } from "@homeostat/attest";
import {
  BUILDER_VERSION,
  NonRetriableError,
  parseKey,
  StateStore,
  type BuildIsolationKind,
  type BuildOutputs,
  type BuildRequest,
  type BuildResultPredicate,
  type Key,
  type Logger,
  type ResultOutputs,
  type SignRequest,
} from "@homeostat/core";
import type { Digest } from "@homeostat/core/digest";
import { annotateActiveSpan, inSpan, meter, type Counter } from "@homeostat/core/telemetry";
import { BuildFailure, MissingArtifactError, type BuildResult } from "./build.ts";
import { ArtifactStore } from "./store.ts";

/**
 * Why a build request was refused (the `reason` attribute of homeostat.builder.refused).
 * `waiting`: the catalog and the facts say the key waits for another build (a dependency
 * released after the request was made, not built yet); unlike the others it is not final
 * (attempts.ts retries it), since that build comes.
 */
export type BuildRefusal = "unknown-revision" | "not-in-catalog" | "waiting" | "not-buildable" | "input-mismatch" | "version-mismatch";

export class BuildRefusedError extends NonRetriableError {
  readonly reason: BuildRefusal;
  constructor(reason: BuildRefusal, message: string) {
    super(`build refused (${reason}): ${message}`);
    this.reason = reason;
  }
}

export type BuildRequestDeps = {
  /** The catalog at a revision, or undefined when this builder cannot have it (CatalogSource.at). */
  catalogAt: (revision: string) => Promise<Catalog | undefined>;
  releases: Pick<ReleaseStore, "reader">;
  advisories: Pick<AdvisoryStore, "reader">;
  state: StateStore;
  sourceDateEpoch: number;
  /** Builds a plan (Builder.build: cache, concurrency; `distrusting` a blob found corrupt). */
  build: (plan: BuildPlan, o?: { distrusting?: Digest }) => Promise<BuildResult>;
  /** Where build results are stored (the builder's data directory). */
  dataDir: string;
  /** How this builder runs steps (isolation.ts); a package's result records how its own steps ran. */
  isolation: BuildIsolationKind;
  /** The builder's identity key. */
  identity: Signer;
  publishSign: (req: SignRequest) => Promise<void>;
  /** Counts a refusal by reason. */
  refused: (reason: BuildRefusal) => void;
  log: Logger;
};

/** What checking a request against the catalog needs (a build's and a trial's). */
export type PlanDeps = Pick<BuildRequestDeps, "catalogAt" | "releases" | "advisories" | "state" | "sourceDateEpoch" | "refused" | "log">;

function refuse(deps: PlanDeps, req: BuildRequest, reason: BuildRefusal, message: string): never {
  deps.refused(reason);
  deps.log.warn("build refused", { key: req.key, reason, catalogRevision: req.catalogRevision, inputDigest: req.inputDigest, detail: message });
  throw new BuildRefusedError(reason, `${req.key}: ${message}`);
}

/**
 * The plan the catalog at the requested revision calls for, if it is the one requested, with the
 * desired state it was read from (the plans of the key's dependencies); else a BuildRefusedError.
 */
export async function verifiedPlan(req: BuildRequest, deps: PlanDeps): Promise<{ plan: BuildPlan; decision?: BuildDecision; desiredState: DesiredState }> {
  const catalog = await deps.catalogAt(req.catalogRevision);
  if (!catalog) return refuse(deps, req, "unknown-revision", `catalog revision ${req.catalogRevision} is not one this builder has (superseded, or unknown)`);
  const { kind, name } = parseKey(req.key);
  const declared = kind === "package" ? catalog.packages.has(name) : catalog.images.has(name);
  if (!declared) return refuse(deps, req, "not-in-catalog", `not in the catalog at ${req.catalogRevision}`);
  // Each fact and status as of now or later, as a read of the bucket would give, through readers:
  // a package's releases and advisories unchanged since another build read them come from memory
  // (a list of each was a round trip per package of the closure), statuses from the builder's
  // mirror of the bucket (state-follower.ts) when it has one.
  const [releases, advisories, status] = await Promise.all([deps.releases.reader(), deps.advisories.reader(), deps.state.reader()]);
  const desiredState = new DesiredState({ catalog, releases, advisories, status, sourceDateEpoch: deps.sourceDateEpoch });
  const desired = kind === "package" ? await desiredState.package(name) : await desiredState.image(name);
  if (desired.state === "waiting") return refuse(deps, req, "waiting", `the catalog and the facts say it waits for ${desired.waitingFor}`);
  if (desired.state === "attention")
    return refuse(deps, req, "not-buildable", `the catalog and the facts say it needs attention (${desired.advisories.join(", ")})`);
  if (desired.inputDigest !== req.inputDigest)
    return refuse(deps, req, "input-mismatch", `the catalog and the facts give input digest ${desired.inputDigest}, not ${req.inputDigest}`);
  if (desired.version !== req.version)
    return refuse(deps, req, "version-mismatch", `the catalog and the facts give version ${desired.version}, not ${req.version}`);
  return { plan: desired.plan, ...(desired.decision ? { decision: desired.decision } : {}), desiredState };
}

/** Builds by kind and cache (hit: the outputs of these inputs were in the store already); made on first use, once the service's MeterProvider is registered. */
let buildCounter: Counter | undefined;
const buildsByCache = (): Counter =>
  (buildCounter ??= meter().createCounter("homeostat.builder.builds", { unit: "{build}", description: "Builds answered, by kind and cache (hit, miss)" }));

/** Archives rebuilt because a build found them gone from the store or corrupt there (restoreLost). */
let lostCounter: Counter | undefined;
const lostArchivesRebuilt = (): Counter =>
  (lostCounter ??= meter().createCounter("homeostat.builder.lost_archives_rebuilt", {
    unit: "{archive}",
    description: "Archives rebuilt because a build found them gone from the artifact store or corrupt there",
  }));

/** The handler of the build stage's messages. */
export function createBuildHandler(deps: BuildRequestDeps) {
  const store = new ArtifactStore(deps.dataDir);

  /**
   * How the steps that made these outputs ran. For a package, what its provenance recorded at
   * the time (a cached build may predate this process's sandbox), `none` unless it says
   * bubblewrap; an image runs no steps, so this builder's own.
   */
  async function isolationOf(plan: BuildPlan, outputs: BuildOutputs): Promise<BuildIsolationKind> {
    if (plan.kind === "image") return deps.isolation;
    const provenance = outputs.provenance
      ? (JSON.parse((await store.read(outputs.provenance as Digest)).toString("utf8")) as {
          buildDefinition?: { internalParameters?: { isolation?: unknown } };
        })
      : undefined;
    return provenance?.buildDefinition?.internalParameters?.isolation === "bubblewrap" ? "bubblewrap" : "none";
  }

  /**
   * Builds `plan` (not trusting a cached result that names `distrusting`), rebuilding first every
   * dependency archive found lost (restoreLost), each key at most once.
   */
  async function buildRestoring(plan: BuildPlan, desiredState: DesiredState, restored: Set<Key>, distrusting?: Digest): Promise<BuildResult> {
    for (;;) {
      try {
        return await deps.build(plan, distrusting ? { distrusting } : {});
      } catch (err) {
        if (!(err instanceof MissingArtifactError) || restored.has(err.key)) throw err;
        restored.add(err.key);
        await restoreLost(err, desiredState, restored);
      }
    }
  }

  /**
   * Rebuilds the archive a build found gone from the store (a volume restored from an older copy,
   * a deleted file) or corrupt there (its bytes no longer hash to its digest). The key it belongs
   * to is Ready at the inputs that made it, so nothing would build it again, and no dependant
   * could build without it. Its plan is the one the catalog and the facts give (a dependant is
   * built only once its dependencies are settled at what they desire: verifiedPlan), built like
   * any other, in the sandbox, through the cache, which does not trust a record whose blobs are
   * gone, nor here one that names the corrupt blob (the build writes it again, over the corrupt
   * one). A build is reproducible, so it gives the very archive back, and that is checked: the
   * signature over it stays true, and the key's status is not touched. A key that cannot be built
   * now leaves the dependant's build failing as before.
   */
  async function restoreLost(lost: MissingArtifactError, desiredState: DesiredState, restored: Set<Key>): Promise<void> {
    const { kind, name } = parseKey(lost.key);
    const desired = kind === "package" ? await desiredState.package(name) : await desiredState.image(name);
    if (desired.state !== "build") throw lost;
    deps.log.warn(`an archive is ${lost.corrupt ? "corrupt in" : "gone from"} the store: rebuilding it`, {
      key: lost.key,
      archive: lost.digest,
      inputDigest: desired.inputDigest,
    });
    const { outputs } = await buildRestoring(desired.plan, desiredState, restored, lost.corrupt ? lost.digest : undefined);
    if (outputs.archive !== lost.digest)
      throw new BuildFailure(
        `${lost.key}: its archive ${lost.digest} was ${lost.corrupt ? "corrupt in" : "gone from"} the store, and its inputs rebuilt make ${outputs.archive}: the build is not reproducible`,
      );
    lostArchivesRebuilt().add(1, { kind });
    deps.log.info("rebuilt the archive", { key: lost.key, archive: lost.digest });
  }

  /** Signs and stores the build result; returns its digest in the store. */
  async function vouch(plan: BuildPlan, outputs: BuildOutputs, isolation: BuildIsolationKind): Promise<Digest> {
    const { location: _, ...vouched } = outputs;
    const predicate: BuildResultPredicate = {
      key: plan.key,
      kind: plan.kind,
      name: plan.name,
      version: plan.version,
      inputDigest: plan.inputDigest,
      catalogRevision: plan.catalogRevision,
      isolation,
      builder: BUILDER_VERSION,
      outputs: vouched,
    };
    const statement = statementAbout(outputSubjects(vouched), BUILD_RESULT_PREDICATE_TYPE, predicate);
    return (await store.putBytes(await signDsse(statement, deps.identity))).digest;
  }

  return async function handle(req: BuildRequest): Promise<void> {
    // Checked first, so that a forged request is refused and counted rather than skipped.
    const { plan, desiredState } = await inSpan("builder.verify-plan", {}, () => verifiedPlan(req, deps));
    const status = await deps.state.get(req.key);
    if (status?.desiredInputDigest && status.desiredInputDigest !== req.inputDigest) {
      deps.log.info("skipping superseded build", { key: req.key, inputDigest: req.inputDigest });
      return;
    }
    deps.log.info("building", { key: req.key, version: req.version });
    // A failure is classified and recorded on the key by attempts.ts (a BuildFailure is
    // permanent for these inputs unless its cause is the machine's, e.g. ENOSPC).
    const result: BuildResult = await buildRestoring(plan, desiredState, new Set());
    if (result.cached) deps.log.info("inputs already built: using the stored result", { key: req.key, inputDigest: req.inputDigest });
    const isolation = await isolationOf(plan, result.outputs);
    const buildResult = await inSpan("builder.vouch", {}, () => vouch(plan, result.outputs, isolation));
    buildsByCache().add(1, { kind: plan.kind, cache: result.cached ? "hit" : "miss" });
    annotateActiveSpan({
      "homeostat.build.outcome": result.cached ? "cached" : "built",
      "homeostat.build.cache_hit": result.cached,
      "homeostat.build.isolation": isolation,
      "homeostat.build.result_digest": buildResult,
      ...(result.outputs.archive ? { "homeostat.output_digest": result.outputs.archive } : {}),
      ...(result.outputs.manifest ? { "homeostat.image.digest": result.outputs.manifest } : {}),
    });
    // Sent before the key says Signing: Signing means the request is in the sign stream. Marked
    // first, a send that failed (JetStream without a leader, a region lost) left the key Signing,
    // and the build request's retry, finding it built already, sent nothing: Signing for ever.
    await deps.publishSign({ v: 2, key: req.key, inputDigest: req.inputDigest, buildResult });
    await deps.state.update(req.key, (s) => (s && s.desiredInputDigest === req.inputDigest && s.phase === "Building" ? { ...s, phase: "Signing" } : undefined));
    deps.log.info("built", { key: req.key, version: req.version, buildResult, ...result.outputs });
  };
}

/** The statement's subjects: every output blob, named by its role. */
export function outputSubjects(outputs: ResultOutputs): { name: string; digest: string }[] {
  const roles = ["archive", "metadata", "manifest", "config", "sbom", "provenance"] as const;
  return roles.flatMap((role) => (outputs[role] ? [{ name: role, digest: outputs[role] }] : []));
}
