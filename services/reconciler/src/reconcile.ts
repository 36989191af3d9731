/**
 * The traditional reconciler: one key, level-triggered. It reads the desired state and the
 * key's status and does whatever closes the gap — ask the builder, fan out to dependents, or
 * nothing — and is safe to run any number of times: the result depends only on the state.
 */
import {
  currentTraceId, done, nonRetriable, parseKey, StateStore,
  type Catalog, type EnqueueRequest, type Key, type KeyStatus, type Logger, type ReconcileResult, type Release, type WorkItem, type BuildRequest,
} from "@homeostat/core";
import { DesiredState } from "./desired.ts";

export type ReconcilerDeps = {
  catalog: () => Catalog;
  state: StateStore;
  releases: (pkg: string) => Promise<Release[]>;
  requestBuild: (req: BuildRequest) => Promise<void>;
  enqueue: (req: EnqueueRequest) => Promise<void>;
  sourceDateEpoch: number;
  /** A build in flight for longer than this is asked for again (its builder may be gone). */
  staleBuildMs: number;
  log: Logger;
};

export function createReconciler(deps: ReconcilerDeps) {
  return async function reconcile(item: WorkItem): Promise<ReconcileResult> {
    const catalog = deps.catalog();
    const { kind, name } = parseKey(item.key);
    const inCatalog = kind === "package" ? catalog.packages.has(name) : catalog.images.has(name);
    if (!inCatalog) return nonRetriable(`${item.key} is not in the catalog`);

    const desiredState = new DesiredState({ catalog, releases: deps.releases, status: (k) => deps.state.get(k), sourceDateEpoch: deps.sourceDateEpoch });
    const desired = kind === "package" ? await desiredState.package(name) : await desiredState.image(name);
    const status = (await deps.state.get(item.key)) ?? StateStore.initial(item.key);

    if (!desired.ready) {
      // Nothing to do until the dependency is built: its completion enqueues this key again.
      const detail = `waiting for ${desired.waitingFor}`;
      await deps.state.update(item.key, (cur) => {
        if (cur?.cause?.detail === detail) return undefined;
        const s = cur ?? StateStore.initial(item.key);
        return { ...s, cause: { type: "dependency", detail } };
      });
      return done;
    }

    if (status.actual?.inputDigest === desired.inputDigest) {
      if (status.fannedOut !== desired.inputDigest) {
        // Children first, durably, then the record that they were sent: a crash in between
        // only sends them again, which is harmless.
        const children = kind === "package" ? catalog.dependentsOf(name) : [];
        for (const child of children) {
          await deps.enqueue({ v: 1, key: child, priority: "dependency", cause: { type: "dependency", id: item.key, detail: `${item.key} was rebuilt at ${status.actual.version}` } });
        }
        await setStatus(deps, item.key, (s) => ({ ...s, phase: s.desiredInputDigest === desired.inputDigest || !s.desiredInputDigest ? "Ready" : s.phase, fannedOut: desired.inputDigest }));
      }
      return done;
    }

    if (status.desiredInputDigest === desired.inputDigest) {
      if (status.phase === "Failed") return done; // the same inputs failed for good; new inputs retry
      const inFlight = status.phase === "Building" || status.phase === "Signing";
      if (inFlight && Date.now() - Date.parse(status.updatedAt) < deps.staleBuildMs) return done;
    }

    await setStatus(deps, item.key, (s) => ({
      ...s, phase: "Building", desiredVersion: desired.version, desiredInputDigest: desired.inputDigest,
      cause: item.cause, traceId: currentTraceId(), lastError: undefined, attempts: 0,
    }));
    await deps.requestBuild(desired.request);
    deps.log.info("build requested", { key: item.key, version: desired.version, inputDigest: desired.inputDigest });
    return done;
  };
}

function setStatus(deps: ReconcilerDeps, key: Key, change: (s: KeyStatus) => KeyStatus | undefined) {
  return deps.state.update(key, (cur) => change(cur ?? StateStore.initial(key)));
}
