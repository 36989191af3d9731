/**
 * signer: signs each finished build, stores the signatures next to the artifacts, and only
 * then records the key's actual state — so a key is never Ready with a half-signed result —
 * and enqueues the key again so the reconciler fans out to its dependents.
 */
import { currentTraceId, NonRetriableError, publish, runConsumer, runService, settleBuild, signRequestSchema, StateStore } from "@homeostat/core";
import { loadOrCreateSigningKey, Registry } from "@homeostat/attest";
import { sign, SignRequestError } from "./sign.ts";

await runService("signer", async ({ config, log, nats, buckets, signal }) => {
  const signer = await loadOrCreateSigningKey({ keyPath: config.signingKeyPath, keyPem: config.signingKeyPem, dataDir: config.dataDir });
  log.info("signing key loaded", { keyId: signer.keyId });
  const registry = config.registryUrl ? new Registry(config.registryUrl) : undefined;
  const state = new StateStore(buckets.state);
  const running = runConsumer(nats, {
    stage: "sign",
    schema: signRequestSchema,
    spanName: "signer.sign",
    concurrency: config.concurrency,
    log,
    signal,
    handle: async (req) => {
      const { signatures, keyId } = await sign(req, { dataDir: config.dataDir, imageRepository: config.imageRepository, signer, registry }).catch((err: unknown) => {
        // A request naming something that cannot be signed will never succeed: drop it, with the reason.
        throw err instanceof SignRequestError ? new NonRetriableError(err.message) : err;
      });
      const actual = { version: req.version, inputDigest: req.inputDigest, outputs: req.outputs, signatures, keyId, builtAt: new Date().toISOString(), traceId: currentTraceId() };
      await state.update(req.key, (s) => {
        const cur = s ?? StateStore.initial(req.key);
        const current = cur.desiredInputDigest === undefined || cur.desiredInputDigest === req.inputDigest;
        const next = { ...cur, actual, phase: current ? "Ready" as const : cur.phase, lastError: current ? undefined : cur.lastError };
        return settleBuild(next, req.inputDigest, "succeeded", actual.builtAt, actual.traceId) ?? next;
      });
      await publish(nats, "intake", req.key, { v: 1, key: req.key, priority: "dependency", cause: { type: "built", id: req.inputDigest, detail: `${req.key} signed at ${req.version}` } });
      log.info("signed", { key: req.key, version: req.version, keyId });
    },
  });
  return () => running;
});
