/**
 * The traditional reconciler: one key, level-triggered. It reads the desired state and the
 * key's status and does whatever closes the gap — ask the builder, fan out to dependents,
 * flag the key for attention, retire a key that left the catalog, or nothing — and is safe to run any number of times: the result
 * depends only on the state.
 *
 * Every decision that changes the key records why (status.cause): the event that brought the
 * key here, refined by what was decided (a bump from one version to another, a patch and the
 * advisories it fixes, the dependency that was rebuilt), so `homeostat why` can follow the
 * chain. Each build asked for is remembered in the key's last builds, and settled (succeeded,
 * failed, superseded) as later runs observe its end.
 *
 * What it cannot close by itself it hands to the agentic reconciler (services/agent) by queueing
 * the key in the `repair` class: a package whose advisories leave it in NeedsAttention, and a
 * build of a new version that failed for its inputs (a step or the test) once its retries are
 * spent. The key stays as it is meanwhile; the agent only proposes a changed recipe, which
 * reaches a build through the catalog like any other change.
 */
import {
  currentTraceId,
  makeKey,
  mapLimit,
  parseKey,
  retryingText,
  settleBuild,
  StateStore,
  withBuild,
  type BuildRequest,
  type Cause,
  type FactRevisions,
  type Key,
  type KeyStatus,
  type Logger,
  type StatusReader,
  type WorkItem,
} from "@homeostat/core";
import { annotateActiveSpan, meter, type Counter } from "@homeostat/core/telemetry";
import { done, doneWith, nonRetriable, requeueAfter, type QueueRequest, type ReconcileResult } from "@homeostat/workqueue";
import { buildRequestOf, DesiredState, type AdvisoryStore, type Catalog, type Desired, type DesiredInputs, type ReleaseStore } from "@homeostat/catalog";
import type { Resolution } from "./upstream.ts";

/** Dependents a run looks at at once when it decides which to tell of its build (noticesDue). */
const NOTICE_CONCURRENCY = 32;

/** Builds requested, by trigger (the cause type: release, advisory, dependency, resync, catalog, manual…); made on first use, once the MeterProvider is registered. */
let rebuildCounter: Counter | undefined;
const rebuilds = (): Counter =>
  (rebuildCounter ??= meter().createCounter("homeostat.rebuilds", { unit: "{build}", description: "Builds the reconciler requested, by trigger and kind" }));

/**
 * What a run found and did, for the runs-by-outcome breakdown (homeostat.reconcile.runs, by
 * cause and outcome): which runs did work and which only looked, so that an operator can tell
 * the runs a burst needs from the ones it could have been spared.
 */
export type RunOutcome =
  /** Asked for a build. */
  | "build"
  /** A build of the desired inputs is in flight: looked again later (requeue-after). */
  | "in-flight"
  /** Found the desired inputs built and settled them for the first time: Ready, dependents told. */
  | "completed"
  /** Found the desired inputs built and settled before: nothing to do (a dependency's notice may be passed on). */
  | "unchanged"
  /** An input is still to be built: marked waiting. */
  | "waiting"
  | "attention"
  /** A failed build: left failed, retried later, dead-lettered or handed to the agent. */
  | "failed"
  /** The agent asked a person; nothing to do until the answer. */
  | "awaiting-answer"
  | "retired";

let runCounter: Counter | undefined;
const runsByOutcome = (): Counter =>
  (runCounter ??= meter().createCounter("homeostat.reconcile.runs", {
    unit: "{run}",
    description: "Reconcile runs by cause (the run's cause type) and outcome (build, in-flight, completed, unchanged, waiting, …)",
  }));

/**
 * What one run decides from besides the catalog: releases and advisories by package, and other
 * keys' statuses. `read(name)`: once the run has listed package `name`'s facts, up to which
 * revision of each fact store it has all of them; the run reports that to the queue, and a rerun
 * asked for by the package's facts stored by then is answered by it. `revisions`: the stores'
 * revisions its readers took; inputs with the same ones answer alike (nothing was written to
 * any of the stores in between), so runs may share what was worked out from them.
 */
export type RunInputs = Omit<DesiredInputs, "catalog" | "sourceDateEpoch"> & { read?: (name: string) => FactRevisions | undefined; revisions?: string };

/**
 * The stores' readers as one run's inputs: each answers as of the moment they were taken or
 * later, and reads again only what changed since an earlier run read it (a reconcile that
 * changes nothing, as in a resync, then costs three requests for all its dependencies).
 */
export function storeInputs(stores: { releases: ReleaseStore; advisories: AdvisoryStore; state: StateStore }): () => Promise<RunInputs> {
  return async () => {
    const [releases, advisories, status] = await Promise.all([stores.releases.reader(), stores.advisories.reader(), stores.state.reader()]);
    const read = (name: string): FactRevisions | undefined => {
      // A store not listed for the package, or listed at revision 0 (empty), answers nothing.
      const [a, r] = [advisories.seen(name) ?? 0, releases.seen(name) ?? 0];
      return a > 0 || r > 0 ? { ...(a > 0 ? { advisories: a } : {}), ...(r > 0 ? { releases: r } : {}) } : undefined;
    };
    return { releases, advisories, status, read, revisions: `${releases.revision}/${advisories.revision}/${status.revision}` };
  };
}

/**
 * `result` when upstream could not be reached: looked at again when upstream said, or after the
 * backoff (`retryAfterMs`); the key meanwhile keeps its last version (Ready, with the reason in
 * its status). Undefined `retryAfterMs`: upstream answered, `result` as it is.
 */
function lookingAgainFor(retryAfterMs: number | undefined, result: ReconcileResult): ReconcileResult {
  if (retryAfterMs === undefined || result.type === "nonRetriable") return result;
  if (result.type === "done") return { type: "requeueAfter", ms: retryAfterMs, ...(result.children ? { children: result.children } : {}) };
  return result.ms <= retryAfterMs ? result : { ...result, ms: retryAfterMs };
}

/** `result` with the fact revisions its run read (ReconcileResult `read`), when it read any. */
function withRead(result: ReconcileResult, read: FactRevisions | undefined): ReconcileResult {
  return read && result.type !== "nonRetriable" ? { ...result, read } : result;
}

export type ReconcilerDeps = {
  catalog: () => Catalog;
  state: StateStore;
  /** Taken once per run, after the key's own status is read (storeInputs). */
  inputs: () => Promise<RunInputs>;
  /**
   * Asks the builder for a build by key, catalog revision and input digest (never by recipe).
   * `requestId` names this request (the time it was recorded in the key's status): publishing it
   * again is a duplicate the build stream drops, asking again later is a new request.
   */
  requestBuild: (req: BuildRequest, requestId: string) => Promise<void>;
  sourceDateEpoch: number;
  /**
   * Turns what upstream announced into release facts before deciding (upstream.ts); on a resync
   * it also discovers. Absent: the known facts are used as they are.
   */
  resolveUpstream?: (catalog: Catalog, name: string, o: { discover: boolean }) => Promise<Resolution>;
  /** A build in flight for longer than this is asked for again (its builder may be gone). */
  staleBuildMs: number;
  /**
   * Failed builds (core failure.ts): a permanent failure of the same inputs is built again
   * `retries` times, after backoffMs × 2^(failures-1) capped at backoffMaxMs, then the key is
   * dead-lettered; so is a build that took its builder down too often. An operator's retry
   * (cause "manual") starts the count again.
   */
  buildFailures: { retries: number; backoffMs: number; backoffMaxMs: number };
  log: Logger;
};

export function createReconciler(deps: ReconcilerDeps) {
  /** The last run's inputs and what was worked out from them (desiredStateOf). */
  let shared: { catalog: Catalog; inputs: RunInputs; desiredState: DesiredState } | undefined;
  return async function reconcile(item: WorkItem, run: { attempt: number } = { attempt: 1 }): Promise<ReconcileResult> {
    const catalog = deps.catalog();
    const { kind, name } = parseKey(item.key);
    // Upstream first: what it announced becomes release facts before the decision reads them.
    const upstream = kind === "package" ? await resolve(item, catalog, name) : undefined;
    let outcome: RunOutcome = "unchanged";
    let inputs: RunInputs | undefined;
    const result = await decide(item, catalog, run.attempt, {
      outcome: (o) => (outcome = o),
      inputs: (i) => (inputs = i),
    });
    // Advisories and releases are facts of packages: what this run read of its own.
    const read = kind === "package" ? inputs?.read?.(name) : undefined;
    runsByOutcome().add(1, { cause: item.cause.type, outcome });
    return withRead(lookingAgainFor(upstream?.unavailable?.retryAfterMs, result), read);
  };

  /**
   * The desired states worked out from `inputs`: those of the last run whose inputs were taken at
   * the same revisions of every store (and the same catalog), with that run's inputs (whose
   * readers know what was listed, for `read`), else new ones. Nothing either could read has
   * changed, so every answer is the same: a resync, which writes nothing, so works out each
   * package's desired state once, where each run worked out its key's whole closure.
   */
  function desiredStateOf(catalog: Catalog, inputs: RunInputs): { inputs: RunInputs; desiredState: DesiredState } {
    if (shared && shared.catalog === catalog && inputs.revisions !== undefined && shared.inputs.revisions === inputs.revisions) return shared;
    const desiredState = new DesiredState({ catalog, ...inputs, sourceDateEpoch: deps.sourceDateEpoch });
    if (inputs.revisions !== undefined) shared = { catalog, inputs, desiredState };
    return { inputs, desiredState };
  }

  async function resolve(item: WorkItem, catalog: Catalog, name: string): Promise<Resolution | undefined> {
    if (!deps.resolveUpstream || !catalog.packages.get(name)?.upstream) return undefined;
    const r = await deps.resolveUpstream(catalog, name, { discover: item.cause.type === "resync" });
    const problems = [
      ...(r.unavailable ? [`upstream unavailable (${r.unavailable.reason}); looking again in ${Math.ceil(r.unavailable.retryAfterMs / 1000)} s`] : []),
      ...r.refused.map((why) => `release refused: ${why}`),
      ...r.conflicts.map(
        (c) =>
          `release conflict: ${c.package} ${c.version}${c.tag ? ` (tag ${c.tag})` : ""} is recorded as ${c.recorded.commit ?? c.recorded.sha256} but now points at ${c.found.commit ?? c.found.sha256}; the recorded release stays`,
      ),
    ];
    const text = problems.length ? problems.join("; ").slice(0, 4096) : undefined;
    await setStatus(deps, item.key, (s) => (s.upstream === text ? undefined : { ...s, upstream: text }));
    return r;
  }

  /**
   * `attempt`: the queue's count of runs of this item (more than 1: an earlier run failed or
   * died). `tell`: what the run found (its outcome) and the inputs it decided from.
   */
  async function decide(
    item: WorkItem,
    catalog: Catalog,
    attempt: number,
    tell: { outcome: (o: RunOutcome) => void; inputs: (i: RunInputs) => void },
  ): Promise<ReconcileResult> {
    const note = tell.outcome;
    const { kind, name } = parseKey(item.key);
    const inCatalog = kind === "package" ? catalog.packages.has(name) : catalog.images.has(name);
    if (!inCatalog) {
      note("retired");
      // Desired: the key does not exist. A key that left the catalog is retired (its status
      // goes; built artifacts stay, content-addressed); an unknown one is already as desired.
      // The catalog refuses a removal that others still depend on, so no dependent is orphaned.
      if (await deps.state.remove(item.key)) deps.log.info("retired: no longer in the catalog", { key: item.key, cause: item.cause });
      else deps.log.warn("not in the catalog; nothing to do", { key: item.key, cause: item.cause });
      return done;
    }

    // The key's status before its inputs: a dependency's waiting mark written after this read
    // may come from a build this run's inputs do not show yet, so the run must not clear it.
    // Through a reader (as of a revision taken now, or later, and read before the inputs are
    // asked for): with a mirror that is memory, not a read of the bucket per run.
    const status = (await (await deps.state.reader())(item.key)) ?? StateStore.initial(item.key);
    const { inputs, desiredState } = desiredStateOf(catalog, await deps.inputs());
    tell.inputs(inputs);
    const desired = kind === "package" ? await desiredState.package(name) : await desiredState.image(name);

    if (desired.state === "waiting") {
      note("waiting");
      // Nothing to do until the dependency is built: its completion enqueues this key again.
      // The cause is left alone: waiting is not a change, and the chain `why` follows stays intact.
      await deps.state.update(item.key, (cur) =>
        cur?.waitingFor === desired.waitingFor ? undefined : { ...(cur ?? StateStore.initial(item.key)), waitingFor: desired.waitingFor },
      );
      // An input this run saw building that was to complete without a run (it had no dependents
      // when it was asked for: this key came into the catalog since) must run its completion to
      // tell this key; one that completed meanwhile told nobody, so this key looks again.
      const told = await mapLimit(catalog.inputsOf(item.key), NOTICE_CONCURRENCY, async (k) => {
        const seen = await inputs.status(k);
        return !seen || (await completionTells(k, seen));
      });
      if (!told.every(Boolean)) return requeueAfter(0);
      // The keys it waits through (an input that waits for the same build, and so on down) are
      // marked waiting too: a notice passes on only to dependents that wait (a dependency whose
      // build left a key's inputs as they were tells no one else), so each link of the chain
      // must wait for it to reach this key. A link that settled before its mark was written told
      // no one: read afresh after the marks, a wait that ended or moved looks again now.
      const through = await waitingThrough(item.key, catalog, desiredState);
      if (through.length === 0) return done;
      const seen = await deps.state.reader();
      await mapLimit(through, NOTICE_CONCURRENCY, ([k, what]) => markWaiting(k, what, seen));
      const { desiredState: afresh } = desiredStateOf(catalog, await deps.inputs());
      const now = kind === "package" ? await afresh.package(name) : await afresh.image(name);
      return now.state === "waiting" && now.waitingFor === desired.waitingFor ? done : requeueAfter(0);
    }

    if (desired.state === "attention") {
      note("attention");
      const ids = desired.advisories.join(" ");
      await setStatus(deps, item.key, (s) =>
        (s.phase === "NeedsAttention" || s.phase === "WaitingForAnswer") && s.advisories?.join(" ") === ids && s.desiredVersion === desired.version
          ? undefined
          : {
              ...s,
              phase: "NeedsAttention",
              desiredVersion: desired.version,
              advisories: desired.advisories,
              waitingFor: undefined,
              cause: cause({ type: "advisory", id: ids }, desired.detail, item.cause),
            },
      );
      deps.log.warn("needs attention", { key: item.key, version: desired.version, advisories: desired.advisories });
      return kind === "package" ? doneWith([handOver(item, `needs attention: ${desired.detail}`)]) : done;
    }

    if (status.actual?.inputDigest === desired.inputDigest) {
      const actual = status.actual;
      // Dependents are told when this run is the one the signer asked for (its "built" cause
      // names these inputs: a redelivery after a crash tells them again), or when no run has
      // told them yet (the "built" cause was merged away by a more urgent enqueue). The queue
      // enqueues them before it completes this run; repeating them is harmless.
      const builtNow = item.cause.type === "built" && item.cause.id === desired.inputDigest;
      const tell = (child: Key): QueueRequest => ({
        key: child,
        priority: "dependency",
        cause: { type: "dependency", id: item.key, detail: rebuiltAt(item.key, actual.version) },
      });
      // A dependency's build that leaves this key's inputs as they were (the same archive at a
      // new version) makes this key build nothing and fan nothing out; a key further down that
      // waits for that very build (a dependent waits for the deepest build its inputs need) is
      // still told, through the keys it waits through, which its own run marked waiting
      // (waitingThrough). So such a run, as any other, tells only the dependents that wait. So
      // does a first fan-out of a build that made the archive the dependents were last told of:
      // their inputs are as they were. (A redelivered completion, its fan-out recorded already,
      // tells every dependent again: its first try may have ended before its notices were queued.)
      const sameArchive =
        status.fannedOut !== desired.inputDigest && actual.outputs.archive !== undefined && status.fannedOutArchive === actual.outputs.archive;
      const passOn = (builtNow || status.fannedOut !== desired.inputDigest) && !sameArchive;
      note(status.fannedOut !== desired.inputDigest || status.phase !== "Ready" ? "completed" : "unchanged");
      const at = new Date().toISOString();
      await setStatus(deps, item.key, (s) => {
        const succeeded = settleBuild(s, desired.inputDigest, "succeeded", actual.builtAt, actual.traceId) ?? s;
        // A build asked for other inputs is no longer wanted (the key came back to what it has,
        // e.g. an advisory rolled it back): superseded, so that neither the builder nor the
        // signer completes it, and the key is Ready.
        const open =
          s.desiredInputDigest !== undefined && s.desiredInputDigest !== desired.inputDigest ? openRequest(succeeded, s.desiredInputDigest) : undefined;
        const settled = open ? (settleBuild(succeeded, open.inputDigest, "superseded", at) ?? succeeded) : succeeded;
        // A waiting mark a dependency wrote since this run read the status stays (noticesDue).
        const waitingFor = s.waitingFor === status.waitingFor ? undefined : s.waitingFor;
        if (
          settled === s &&
          s.phase === "Ready" &&
          s.desiredInputDigest === desired.inputDigest &&
          s.fannedOut === desired.inputDigest &&
          s.waitingFor === waitingFor &&
          !s.advisories
        )
          return undefined;
        return {
          ...settled,
          phase: "Ready",
          desiredVersion: desired.version,
          desiredInputDigest: desired.inputDigest,
          fannedOut: desired.inputDigest,
          fannedOutArchive: actual.outputs.archive,
          waitingFor,
          advisories: undefined,
        };
      });
      // Read after this key's own status is written: a dependent marked waiting for this key
      // before that write is seen here (noticesDue).
      const dependents = kind === "package" ? catalog.dependentsOf(name) : [];
      const candidates = passOn ? dependents : await waitingAmong(dependents);
      const children = (await noticesDue(item.key, candidates, catalog)).map(tell);
      return children.length ? doneWith(children) : done;
    }

    const manual = item.cause.type === "manual";
    // The agent asked a person about these inputs' failure: the answer hands the key back to it, not to a build.
    if (status.phase === "WaitingForAnswer" && status.desiredInputDigest === desired.inputDigest && !manual) {
      note("awaiting-answer");
      return done;
    }
    const failure = status.failure?.inputDigest === desired.inputDigest ? status.failure : undefined;
    if (status.desiredInputDigest === desired.inputDigest && failure && !manual && (status.phase === "Failed" || status.phase === "DeadLettered")) {
      const ended = await afterFailure(item, failure, status.actual?.version !== desired.version);
      if (ended) {
        note("failed");
        return ended;
      }
    } else if (status.desiredInputDigest === desired.inputDigest) {
      if (status.phase === "Failed" && !manual) {
        // The same inputs failed for good; new inputs retry. Remember the outcome once.
        await setStatus(deps, item.key, (s) => settleBuild(s, desired.inputDigest, "failed", s.updatedAt));
        note("failed");
        return done;
      }
      // A build in flight is looked at again when it should have ended, so a builder lost with
      // it is noticed without waiting for a resync; the signer's "built" enqueue comes sooner.
      const inFlight = status.phase === "Building" || status.phase === "Signing";
      const remaining = deps.staleBuildMs - (Date.now() - Date.parse(status.updatedAt));
      if (inFlight && remaining > 0) {
        // The run before this one failed or died (a retry, or a lease taken over from a worker
        // lost with its region), perhaps between recording the request and publishing it:
        // publish it again under its own id, which the build stream drops if the first publish
        // arrived, so a request is either answered or sent again.
        const open = openRequest(status, desired.inputDigest);
        const earlierRunEnded = item.attempts > 0 || attempt > 1;
        if (earlierRunEnded && status.phase === "Building" && open) await deps.requestBuild(buildRequestOf(desired.plan), open.at);
        note("in-flight");
        // Still watching for the build the signer completes without a run (withdrawn when it does).
        return requeueAfter(remaining, open?.signerCompletes ? desired.inputDigest : undefined);
      }
    }

    note("build");
    // A key with no dependents has nothing to tell when its build is done, so that needs no run:
    // the signer completes the key and withdraws the look below, which watches for the build
    // (its input digest) and stays only to notice a build that was lost.
    const tellsNone = kind === "image" || catalog.dependentsOf(name).length === 0;
    const event = asBuilt(item.cause, desired.plan);
    const why = cause(event, describe(desired, status), event);
    const traceId = currentTraceId();
    const at = new Date().toISOString();
    await setStatus(deps, item.key, (s) => {
      // A build still open for other inputs will never be this key's result.
      const open = (s.builds ?? []).find((b) => b.outcome === "requested" && b.inputDigest !== desired.inputDigest);
      const base = open ? (settleBuild(s, open.inputDigest, "superseded", at) ?? s) : s;
      // The failures of these inputs keep counting across their retries; an operator's retry or new inputs start afresh.
      const carried = !manual && s.failure?.inputDigest === desired.inputDigest ? s.failure : undefined;
      return withBuild(
        {
          ...base,
          phase: "Building",
          desiredVersion: desired.version,
          desiredInputDigest: desired.inputDigest,
          cause: why,
          traceId,
          lastError: undefined,
          attempts: 0,
          waitingFor: undefined,
          advisories: undefined,
          failure: carried ? { ...carried, nextAt: undefined } : undefined,
          building: carried ? s.building : undefined,
        },
        {
          version: desired.version,
          inputDigest: desired.inputDigest,
          outcome: "requested",
          at,
          ...(item.enqueuedAt > 0 ? { triggeredAt: new Date(Math.min(item.enqueuedAt, Date.parse(at))).toISOString() } : {}),
          ...(traceId ? { traceId } : {}),
          cause: why,
          // The recipe is still the one an agent's proposal put in the catalog: this build is of that proposal.
          ...(s.proposal && s.proposal.recipeDigest === catalog.recipeDigest(item.key) ? { proposal: s.proposal.id } : {}),
          ...(tellsNone ? { signerCompletes: true as const } : {}),
          priority: item.priority,
        },
      );
    });
    // A fresh id per request: a build stream message id of key and input digest alone was
    // dropped as a duplicate when the key came back to inputs asked for within the stream's
    // duplicate window (a rollback), and the key then sat in Building until the stale timeout.
    await deps.requestBuild(buildRequestOf(desired.plan), at);
    rebuilds().add(1, { trigger: why.type, kind: desired.plan.kind });
    annotateActiveSpan({ "homeostat.version": desired.version, "homeostat.input_digest": desired.inputDigest, "homeostat.build.trigger": why.type });
    deps.log.info("build requested", { key: item.key, version: desired.version, inputDigest: desired.inputDigest, reason: desired.decision?.reason });
    return requeueAfter(deps.staleBuildMs, tellsNone ? desired.inputDigest : undefined);
  }

  /**
   * The keys among `keys` marked waiting, as of this call or later, through a status reader: when
   * nothing was written since, a status comes from memory (StateStore.reader). Every unchanged
   * run of a package asks this of all its dependents, a base package's thousands included: in a
   * resync, that was one read per edge of the graph. A mirror's reader knows the marked keys at
   * once, which makes it one set lookup per edge (a promise per edge was most of what a resync's
   * run of a base package cost).
   */
  async function waitingAmong(keys: readonly Key[]): Promise<Key[]> {
    if (keys.length === 0) return [];
    const statusOf = await deps.state.reader();
    const { waiting } = statusOf;
    if (waiting) return keys.filter((k) => waiting.has(k));
    return (await mapLimit(keys, NOTICE_CONCURRENCY, async (k) => ((await statusOf(k))?.waitingFor ? [k] : []))).flat();
  }

  /**
   * Which of `candidates` (dependents of `key` it would tell of its build) to tell now. A
   * dependent with another input whose own settling is still to come would only find itself
   * waiting for it, and that input tells it when it settles: so it is left to that input and
   * marked waiting (unless it already waits), which makes the input's later run tell it even
   * when that run has nothing to pass on. Such an input is one this run tells as well (it runs
   * next), one with a build in flight (its completion tells every dependent), or one waiting
   * itself (its wait ends in a run that tells its dependents). A dependent told by several keys
   * of one wave so runs once, after the last of them, not once per key.
   *
   * Why no notice is lost: the mark is written before this run's notices are queued, and an
   * input found settling is read again after the mark (it settles with a status write of its
   * own and reads its dependents after that write, so it sees the mark or the child is told
   * here); a run of the dependent keeps a mark written after it read its own status.
   */
  async function noticesDue(key: Key, candidates: readonly Key[], catalog: Catalog): Promise<Key[]> {
    if (candidates.length === 0) return [];
    const told = new Set(candidates);
    // The first look (inputs settling, children marked) as of now, through one reader: memory
    // with a mirror, where it was a read of the bucket per input and per child. The look again
    // after a mark reads afresh.
    const seen = await deps.state.reader();
    // A base package has thousands of dependents: a few dozen looked at at once, not one by one.
    const tellNow = await mapLimit(candidates, NOTICE_CONCURRENCY, async (child) => {
      const others = catalog.inputsOf(child).filter((k) => k !== key);
      const toldToo = others.find((k) => told.has(k));
      if (toldToo) return !(await markWaiting(child, `${toldToo} to settle first`, seen));
      const settling = await firstSettling(others, seen);
      if (!settling || !(await markWaiting(child, settling, seen))) return true;
      return !(await firstSettling(others, (k) => deps.state.get(k)));
    });
    return candidates.filter((_, i) => tellNow[i]);
  }

  /**
   * The inputs of `key` that wait themselves, with what they wait for, and theirs, down to the
   * keys whose builds are awaited: the keys a waiting `key` waits through (from the run's
   * memoised desired states, so no more reads than deciding took).
   */
  async function waitingThrough(key: Key, catalog: Catalog, desiredState: DesiredState): Promise<[Key, string][]> {
    const found = new Map<Key, string>();
    const visit = async (k: Key): Promise<void> => {
      for (const input of catalog.inputsOf(k)) {
        if (found.has(input)) continue;
        const d = await desiredState.package(parseKey(input).name);
        if (d.state !== "waiting") continue;
        found.set(input, d.waitingFor);
        await visit(input);
      }
    };
    await visit(key);
    return [...found];
  }

  /**
   * Marks `child` waiting for `what` unless it waits already (any mark makes the key it waits
   * for tell it); false when it has no status yet to carry a mark (it is told instead). `seen`,
   * a reader taken by the caller as of now, answers both without a read of the bucket: a wave's
   * runs find most of what they would mark marked already (each key of a fresh factory's
   * bring-up marks its whole closure, which its dependencies' runs marked before it).
   */
  async function markWaiting(child: Key, what: string, seen: StatusReader): Promise<boolean> {
    const status = await seen(child);
    if (!status) return false;
    if (status.waitingFor) return true;
    const after = await deps.state.update(child, (cur) => (!cur || cur.waitingFor ? undefined : { ...cur, waitingFor: what.slice(0, 2048) }));
    return after?.waitingFor !== undefined;
  }

  /**
   * The first of `inputs` whose status says it settles later and tells its dependents then (a
   * build in flight whose completion runs, or waiting), in words.
   */
  async function firstSettling(inputs: readonly Key[], statusOf: (k: Key) => Promise<KeyStatus | undefined>): Promise<string | undefined> {
    const statuses = await Promise.all(inputs.map(statusOf));
    for (const [i, s] of statuses.entries()) {
      const input = inputs[i];
      if (!s || !input) continue;
      if ((s.phase === "Building" || s.phase === "Signing") && s.desiredInputDigest !== s.actual?.inputDigest) {
        if (await completionTells(input, s)) return `${input} to be built at ${s.desiredVersion ?? "its desired version"}`;
        continue;
      }
      if (s.waitingFor) return `${input}, which waits for ${s.waitingFor}`;
    }
    return undefined;
  }

  /**
   * Whether the completion of the build `seen` shows for `input` (if one is open) will run and
   * tell its dependents: a build asked for as completed by the signer alone (signerCompletes)
   * is made to run its completion; false when it was done before that could be written.
   */
  async function completionTells(input: Key, seen: KeyStatus): Promise<boolean> {
    const open = seen.builds?.find((b) => b.outcome === "requested" && b.signerCompletes);
    if (!open) return true;
    const after = await deps.state.update(input, (cur) => {
      const still = cur?.builds?.find((b) => b.outcome === "requested" && b.inputDigest === open.inputDigest && b.signerCompletes);
      if (!cur || !still) return undefined;
      const { signerCompletes: _, ...told } = still;
      return withBuild(cur, told);
    });
    return after?.builds?.some((b) => b.outcome === "requested" && b.inputDigest === open.inputDigest) ?? false;
  }

  /**
   * What follows a failed build of the desired inputs: nothing for an invalid request (Failed
   * until an operator retries or the inputs change), the dead letters once the retries are
   * spent or the build kept killing its builder, else a retry at its time (undefined: now).
   */
  async function afterFailure(item: WorkItem, failure: NonNullable<KeyStatus["failure"]>, newVersion: boolean): Promise<ReconcileResult | undefined> {
    await setStatus(deps, item.key, (s) => settleBuild(s, failure.inputDigest, "failed", failure.at));
    if (failure.kind === "invalid") return done;
    if (failure.kind === "crash") return nonRetriable(failure.reason);
    const { retries, backoffMs, backoffMaxMs } = deps.buildFailures;
    // A new version that keeps failing for its inputs is the agent's to repair (the recipe may no longer fit).
    if (failure.count > retries && newVersion && failure.kind === "permanent")
      return doneWith([handOver(item, `build failed ${failure.count} times: ${failure.reason}`)]);
    if (failure.count > retries) return nonRetriable(`build failed ${failure.count} time${failure.count === 1 ? "" : "s"}: ${failure.reason}`.slice(0, 4096));
    const nextAt = failure.nextAt
      ? Date.parse(failure.nextAt)
      : Date.parse(failure.at) + Math.min(backoffMaxMs, backoffMs * 2 ** Math.max(0, failure.count - 1));
    if (Date.now() >= nextAt) return undefined;
    const text = retryingText(`build failed (${failure.count} of ${retries + 1}): ${failure.reason}`, nextAt).slice(0, 8192);
    await setStatus(deps, item.key, (s) =>
      s.failure?.inputDigest !== failure.inputDigest || (s.failure.nextAt && s.lastError === text)
        ? undefined
        : { ...s, lastError: text, failure: { ...s.failure, nextAt: new Date(nextAt).toISOString() } },
    );
    return requeueAfter(nextAt - Date.now());
  }
}

/** The key's open request for a build of `inputDigest`, if it has one. */
function openRequest(s: KeyStatus, inputDigest: string) {
  return (s.builds ?? []).find((b) => b.inputDigest === inputDigest && b.outcome === "requested");
}

/** What this build is, in words, for the cause: a bump, a patch, a first build or a rebuild. */
function describe(desired: Extract<Desired, { state: "build" }>, status: KeyStatus): string {
  const d = desired.decision;
  const from = status.actual?.version;
  const ids = d?.advisories.join(", ");
  if (d?.reason === "bump")
    return `bumped ${from ? `from ${from} ` : ""}to ${d.version}, the lowest release fixing ${ids} (the newest, ${d.newest}, is affected)`;
  if (d?.reason === "patch")
    return `rebuilt ${d.version} with ${d.patches
      .filter((p) => p.fixes.length)
      .map((p) => p.path)
      .join(", ")}, fixing ${ids}`;
  if (!from) return `first build at ${desired.version}`;
  if (desired.plan.kind === "package" && from !== desired.version) return `bumped from ${from} to ${desired.version}`;
  return `rebuilt at ${desired.version}`;
}

/** The key queued for the agentic reconciler, with what it is to repair. */
function handOver(item: WorkItem, why: string): QueueRequest {
  return {
    key: item.key,
    priority: "repair",
    cause: { type: item.cause.type, ...(item.cause.id ? { id: item.cause.id } : {}), detail: `handed to the agent: ${why}`.slice(0, 2048) },
  };
}

function rebuiltAt(key: Key, version: string): string {
  return `${key} was rebuilt at ${version}`;
}

/**
 * A dependency cause told with the version this build uses. The queue keeps the cause of the
 * first of several merged enqueues of a key (and a requeue keeps its own), so the detail a
 * fan-out wrote may name an older build of the dependency than the one the plan holds now.
 */
function asBuilt(event: Cause, plan: Extract<Desired, { state: "build" }>["plan"]): Cause {
  if (event.type !== "dependency" || !event.id) return event;
  const used = plan.kind === "package" ? plan.dependencies : plan.packages;
  const dependency = used.find((a) => makeKey("package", a.name) === event.id);
  return dependency ? { ...event, detail: rebuiltAt(makeKey("package", dependency.name), dependency.version) } : event;
}

/** The cause to record: `base` with the decision in words first and the event's own detail after it. */
function cause(base: Cause, decided: string, event: Cause): Cause {
  const parts = [decided, event.detail && event.detail !== decided ? event.detail : undefined].filter(Boolean);
  const eventRef = base.id !== event.id && event.id ? ` [${event.type} ${event.id}]` : "";
  return { type: base.type, ...(base.id ? { id: base.id.slice(0, 512) } : {}), detail: (parts.join("; ") + eventRef).slice(0, 2048) };
}

function setStatus(deps: ReconcilerDeps, key: Key, change: (s: KeyStatus) => KeyStatus | undefined) {
  return deps.state.update(key, (cur) => change(cur ?? StateStore.initial(key)));
}

/** The build stream's message id of a request: the same request published twice is stored once, a new request never matches an old one. */
export function buildMessageId(req: BuildRequest, requestId: string): string {
  return `${req.key}@${req.inputDigest}@${requestId}`;
}
