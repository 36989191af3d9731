/**
 * builder: takes build requests, builds them hermetically and reproducibly, stores the
 * artifacts, and hands the result to the signer. A build that cannot succeed (checksum
 * mismatch, failing step) marks the key Failed with the reason (and where its step logs are)
 * and produces nothing. Inputs already built are answered from the build cache. Steps run only
 * in the sandbox (isolation.ts), probed once at start: without it the builder does not start.
 */
import path from "node:path";
import { buildRequestSchema, errorMessage, NonRetriableError, publish, runConsumer, runService, StateStore, type SignRequest } from "@homeostat/core";
import { Builder, BuildFailure } from "./build.ts";
import { IsolationUnavailableError, resolveIsolation } from "./isolation.ts";

await runService("builder", async ({ config, log, nats, buckets, signal }) => {
  const state = new StateStore(buckets.state);
  // Probed where package builds make their workspaces (makeWorkspaceDir's default); no sandbox, no builder.
  const isolation = await resolveIsolation(config.buildSandbox, { workRoot: path.join(config.dataDir, "work"), warn: (m) => log.warn(m) }).catch((err: unknown) => {
    if (!(err instanceof IsolationUnavailableError)) throw err;
    log.error(err.message);
    process.exit(78); // EX_CONFIG
  });
  log.info("build isolation", { isolation: isolation.kind, limits: isolation.limits, ...(isolation.kind === "bubblewrap" && isolation.runAs ? { hostUid: isolation.runAs.uid } : {}) });
  const builder = new Builder(
    {
      dataDir: config.dataDir,
      timeoutMs: config.buildTimeoutMs,
      maxSourceBytes: config.maxSourceBytes,
      unpackLimits: { maxBytes: config.maxUnpackedBytes, maxEntries: config.maxSourceEntries },
      isolation,
      sourceBaseDir: config.catalogDir,
      signal,
    },
    { concurrency: config.buildConcurrency },
  );
  const running = runConsumer(nats, {
    stage: "build",
    schema: buildRequestSchema,
    spanName: "builder.build",
    concurrency: config.concurrency,
    log,
    signal,
    heartbeatMs: 20_000,
    handle: async (req) => {
      const status = await state.get(req.key);
      if (status?.desiredInputDigest && status.desiredInputDigest !== req.inputDigest) {
        log.info("skipping superseded build", { key: req.key, inputDigest: req.inputDigest });
        return;
      }
      log.info("building", { key: req.key, version: req.version });
      let outputs;
      try {
        const result = await builder.build(req);
        outputs = result.outputs;
        if (result.cached) log.info("inputs already built: using the stored result", { key: req.key, inputDigest: req.inputDigest });
      } catch (err) {
        if (!(err instanceof BuildFailure)) throw err;
        await state.update(req.key, (s) => (s && s.desiredInputDigest !== req.inputDigest ? undefined : { ...(s ?? StateStore.initial(req.key)), phase: "Failed", lastError: err.message }));
        throw new NonRetriableError(`${req.key}: ${errorMessage(err)}`);
      }
      await state.update(req.key, (s) => (s && s.desiredInputDigest === req.inputDigest && s.phase === "Building" ? { ...s, phase: "Signing" } : undefined));
      const sign: SignRequest = { v: 1, key: req.key, kind: req.kind, name: req.name, version: req.version, inputDigest: req.inputDigest, outputs };
      await publish(nats, "sign", req.key, sign, { msgId: `${req.key}@${req.inputDigest}` });
      log.info("built", { key: req.key, version: req.version, ...outputs });
    },
  });
  return () => running;
});
