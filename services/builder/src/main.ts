/**
 * builder: takes build requests, checks each against the catalog (request.ts: the builder
 * recomputes the build from its own copy of the catalog and refuses what does not match),
 * builds it hermetically and reproducibly, stores the artifacts, vouches for the result with
 * its own key and hands it to the signer. A build that cannot succeed (checksum mismatch,
 * failing step) marks the key Failed with the reason (and where its step logs are) and
 * produces nothing. Inputs already built are answered from the build cache. How steps are
 * sandboxed is decided once at start (isolation.ts); the service does not start without it.
 *
 * Failures end as core failure.ts says (attempts.ts): transient ones come back after a
 * backoff, permanent and invalid ones mark the key Failed, and a build that keeps killing its
 * builder is given up after HOMEOSTAT_BUILD_CRASH_LIMIT deaths. The build consumer's ack wait
 * is short (HOMEOSTAT_STAGE_ACK_WAIT_MS) and kept alive while a build runs, so another builder
 * takes over a dead one's build within seconds (a builder on the same host at once, another
 * once the dead one's heartbeat is stale: liveness.ts), and leaves a live one's alone; at start
 * a builder removes the workspaces of builders that died on this host (workspaces.ts). What no
 * key's status keeps leaves the artifact store once older than HOMEOSTAT_STORE_GRACE_MS
 * (store-collect.ts, every HOMEOSTAT_STORE_COLLECT_INTERVAL_MS).
 *
 * Its identity key is generated on first run into HOMEOSTAT_BUILDER_DIR (default
 * `<data>/builder`, 0700; `builder.key` 0600, `builder.pub` for the signer to trust), or
 * given as HOMEOSTAT_BUILDER_KEY (a PEM file or the PEM itself).
 */
import path from "node:path";
import { AdvisoryStore, CatalogSource, openSnapshot, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { buildRequestSchema, meter, publish, runConsumer, runService, StateStore } from "@homeostat/core";
import { StatusMirror } from "@homeostat/core/state-follower";
import { keyProviderFromConfig } from "@homeostat/key-custody";
import { Builder } from "./build.ts";
import { configuredBuildContext } from "./context.ts";
import { IsolationUnavailableError, resolveIsolation } from "./isolation.ts";
import { inputsDetail, inputsInHand, markDetail, markOwnerLiveness } from "./liveness.ts";
import { withFailureHandling } from "./attempts.ts";
import { createBuildHandler } from "./request.ts";
import { collectStoreEvery } from "./store-collect.ts";
import { createTrialHandler, serveTrials } from "./trial.ts";
import { claimWorkRoot, currentInstance } from "./workspaces.ts";

await runService("builder", async ({ config, log, nats, buckets, signal, health, retry }) => {
  // Probed where package builds make their workspaces (makeWorkspaceDir's default); no sandbox, no builder.
  const isolation = await resolveIsolation(config.buildSandbox, { workRoot: path.join(config.dataDir, "work"), warn: (m) => log.warn(m) }).catch(
    (err: unknown) => {
      if (!(err instanceof IsolationUnavailableError)) throw err;
      log.error(err.message);
      process.exit(78); // EX_CONFIG
    },
  );
  log.info("build isolation", {
    isolation: isolation.kind,
    limits: isolation.limits,
    ...(isolation.kind === "bubblewrap" && isolation.runAs ? { hostUid: isolation.runAs.uid } : {}),
  });
  const identity = await retry("loading the builder key", () =>
    keyProviderFromConfig({ pem: config.builderKeyPem, file: config.builderKeyPath, dir: config.builderDir, name: "builder" }, "builder key"),
  );
  log.info("builder identity", { keyId: identity.keyId, source: identity.source });
  const catalogs = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "builder") });
  const instance = currentInstance();
  const work = await retry("preparing the workspaces", () => claimWorkRoot(path.join(config.dataDir, "work"), instance));
  if (work.ended.length) log.warn("ended the steps that builders which died left running", { processes: work.ended });
  if (work.removed.length) log.info("removed the workspaces of builders that died", { instances: work.removed });
  const refusals = meter().createCounter("homeostat.builder.refused", {
    description: "Build requests refused, by reason: the request is not what the catalog and the facts call for",
  });
  const builder = new Builder(configuredBuildContext(config, { dataDir: config.dataDir, workRoot: work.root, isolation, remoteSources: true, signal }), {
    concurrency: config.buildConcurrency,
  });
  // Checking a request reads the statuses of the key's whole closure: from a copy of the bucket
  // kept current by one watch (at 10,000 keys a check took 65 ms of round trips).
  const mirror = await StatusMirror.follow(buckets.state, signal, log);
  const state = new StateStore(buckets.state, { mirror });
  const handleRequest = createBuildHandler({
    catalogAt: (revision) => catalogs.at(revision),
    releases: new ReleaseStore(buckets.releases),
    advisories: await AdvisoryStore.open(nats),
    state,
    sourceDateEpoch: config.sourceDateEpoch,
    build: (plan, o) => builder.build(plan, o),
    dataDir: config.dataDir,
    isolation: isolation.kind,
    identity,
    // One sign request per build result: a publish retried is stored once, but each answer to a
    // build request is its own result (its envelope signed anew: ECDSA P-256 signatures differ
    // every time), so inputs asked for again — a rollback to inputs signed minutes ago, answered
    // from the cache — are signed again. A message id of key and inputs alone was dropped as a
    // duplicate inside the stream's window and left the key Signing until it went stale.
    publishSign: async (req) => void (await publish(nats, "sign", req.key, req, { msgId: `${req.key}@${req.inputDigest}@${req.buildResult}` })),
    refused: (reason) => refusals.add(1, { reason }),
    log,
  });
  // The heartbeat names the instance this builder's marks carry, for the builders that meet them (liveness.ts).
  health.detail(markDetail, () => instance.id);
  const attempts = withFailureHandling(handleRequest, {
    state,
    instance: instance.id,
    markOwner: markOwnerLiveness({
      services: await nats.kvm.open(nats.topology.bucket("services"), { allow_direct: true }),
      me: instance,
      staleAfterMs: config.health.staleAfterMs,
      log,
    }),
    // A dependency's build ends, one way or another, within the build timeout.
    waitLimitMs: config.buildTimeoutMs,
    crashLimit: config.buildFailures.crashLimit,
    log,
    enqueue: async (req) => void (await publish(nats, "intake", req.key, req)),
  });
  // A request the contract refuses outright is recorded on the key its subject names, if that key is waiting for a build.
  const onMalformed = async (msg: { subject: string }, reason: string) => {
    const key = nats.topology.keyOfSubject("build", msg.subject);
    if (!key) return;
    const why = `invalid build request: ${reason}`.slice(0, 2048);
    let failed = false;
    await state.update(key, (s) => {
      failed = s?.phase === "Building";
      if (!failed || !s) return undefined;
      const failure = s.desiredInputDigest
        ? { inputDigest: s.desiredInputDigest, kind: "invalid" as const, reason: why, count: 1, at: new Date().toISOString() }
        : undefined;
      return { ...s, phase: "Failed", lastError: why, building: undefined, failure };
    });
    if (failed) await publish(nats, "intake", key, { v: 1, key, priority: "release", cause: { type: "built", detail: why } });
  };
  // Builds in flight, for the heartbeat (`homeostat status`).
  let building = 0;
  health.detail("building", () => String(building));
  // And which inputs, so that a mark this builder left behind is not waited for (liveness.ts).
  health.detail(inputsDetail, () => inputsInHand(attempts.inputsInFlight()));
  const running = runConsumer(nats, {
    stage: "build",
    schema: buildRequestSchema,
    spanName: "builder.build",
    concurrency: config.concurrency,
    log,
    signal,
    handle: async (req, msg) => {
      building++;
      try {
        await attempts.handle(req, msg);
      } finally {
        building--;
      }
    },
    onMalformed,
  });
  // Trial builds (trial.ts): the agent's snapshots, built in the same sandbox into a store of their own.
  const trialsDir = path.join(config.dataDir, "trials");
  const trials = new Builder(
    configuredBuildContext(config, {
      dataDir: trialsDir,
      inputsDataDir: config.dataDir,
      workRoot: path.join(work.root, "trials"),
      isolation,
      remoteSources: false,
      signal,
    }),
    { concurrency: 1 },
  );
  const snapshots = path.join(config.dataDir, "agent", "snapshots");
  const trying = serveTrials(
    nats,
    createTrialHandler({
      catalogAt: (revision) => openSnapshot(snapshots, revision, catalogs.current().sourceBase),
      releases: new ReleaseStore(buckets.releases),
      advisories: await AdvisoryStore.open(nats),
      state,
      sourceDateEpoch: config.sourceDateEpoch,
      build: (plan) => trials.build(plan),
      refused: (reason) => refusals.add(1, { reason, trial: true }),
      log,
    }),
    { log, signal },
  );
  // What no status keeps goes from the store once older than the grace (store-collect.ts).
  const collecting = collectStoreEvery({
    dataDir: config.dataDir,
    stateBucket: nats.topology.bucket("state"),
    unnamedDataDirs: [trialsDir],
    ...config.storeCollection,
    statuses: () => mirror.all(buckets.state),
    log,
    signal,
  });
  return () => Promise.all([running, trying, collecting]).then(() => undefined);
});
