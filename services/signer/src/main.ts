/**
 * signer: verifies each finished build before it signs it (admit.ts), signs it, stores the
 * signatures next to the artifacts, and records the key's actual state (handle.ts).
 *
 * Key custody: the release signing key is read by this process alone. It is generated on first
 * run into HOMEOSTAT_SIGNER_DIR (default `<data>/signer`, made 0700; `cosign.key` 0600,
 * `cosign.pub` beside it for verifiers), or given as HOMEOSTAT_SIGNING_KEY (a PEM file or the
 * PEM itself). In compose or Kubernetes that directory is a volume or Secret mounted into the
 * signer only. A key it cannot load or write at start (disk full, not mounted yet) is tried
 * again with backoff, logged, instead of ending the process. The builders it trusts are HOMEOSTAT_TRUSTED_BUILDER_KEYS (PEM files; default
 * the local builder's `<data>/builder/builder.pub`).
 */
import { meter, publish, runConsumer, runService, signRequestSchema, StateStore } from "@homeostat/core";
import { readTrustedKeys, Registry } from "@homeostat/attest";
import { keyProviderFromConfig } from "@homeostat/key-custody";
import { createSignHandler } from "./handle.ts";

await runService("signer", async ({ config, log, nats, buckets, signal, retry }) => {
  // A full disk while the key is first written, or a key file not mounted yet, is waited out (and shown on /readyz and in
  // `homeostat status`), not an exit.
  const signer = await retry("loading the signing key", () =>
    keyProviderFromConfig({ pem: config.signingKeyPem, file: config.signingKeyPath, dir: config.signerDir, name: "cosign" }, "signing key"),
  );
  log.info("signing key loaded", { keyId: signer.keyId, source: signer.source });
  log.info("trusting builder keys from", { files: config.trustedBuilderKeyPaths });
  if (config.signUnsandboxed)
    log.warn("HOMEOSTAT_SIGN_UNSANDBOXED=true: builds whose steps ran without the sandbox are signed too, marked as such (development only)");
  const refusals = meter().createCounter("homeostat.signer.refused", {
    description: "Sign requests refused, by reason: not built by a trusted builder from the desired inputs, or not intact",
  });
  const handle = createSignHandler({
    dataDir: config.dataDir,
    state: new StateStore(buckets.state),
    // A file that cannot be read yet (the builder not started) fails the request retriably.
    trustedBuilderKeys: () => readTrustedKeys(config.trustedBuilderKeyPaths),
    allowUnsandboxed: config.signUnsandboxed,
    signer,
    imageRepository: config.imageRepository,
    registry: config.registryUrl ? new Registry(config.registryUrl) : undefined,
    imageVersions: { keep: config.imageVersionsKept, graceMs: config.buildTimeoutMs },
    enqueue: async (req) => void (await publish(nats, "intake", req.key, req)),
    refused: (reason) => refusals.add(1, { reason }),
    log,
  });
  const running = runConsumer(nats, {
    stage: "sign",
    schema: signRequestSchema,
    spanName: "signer.sign",
    concurrency: config.concurrency,
    log,
    signal,
    handle,
  });
  return () => running;
});
