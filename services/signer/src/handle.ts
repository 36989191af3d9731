/**
 * One sign request: admit it (admit.ts), sign what admission found, and only then record the
 * key's actual state — so a key is never Ready with a half-signed result — and enqueue the key
 * again so the reconciler fans out to its dependents; a build with none to tell (the reconciler
 * said so in its request: signerCompletes) completes the key here, and the queue withdraws the
 * requeue-after that watched for it instead of running the key.
 *
 * A refused request is dropped (non-retriable) with its reason in the log, counted
 * (`homeostat.signer.refused` by reason), and changes nothing: no signature is written, the
 * key's status is untouched, and the reconciler's next run asks for the build again.
 */
import {
  currentTraceId,
  NonRetriableError,
  settleBuild,
  StateStore,
  type BuildRecord,
  type EnqueueRequest,
  type Logger,
  type SignRequest,
} from "@homeostat/core";
import { annotateActiveSpan, durationHistogram, meter, type Counter, type Histogram } from "@homeostat/core/telemetry";
import type { Registry, Signer, StartedUploads } from "@homeostat/attest";
import { admit, SignRefusedError, type SignRefusal } from "./admit.ts";
import { keepRecentVersions, sign, SignRequestError, startSignUploads } from "./sign.ts";

export type SignHandlerDeps = {
  dataDir: string;
  state: StateStore;
  /**
   * SPKI PEM public keys of the trusted builders, read for each request: the default file is
   * written by the builder on its first start, which may come after the signer's, and a key
   * added to (or removed from) the trust files counts from the next request on.
   */
  trustedBuilderKeys: () => Promise<readonly string[]>;
  allowUnsandboxed: boolean;
  signer: Signer;
  imageRepository: string;
  registry?: Registry | undefined;
  /** How many signed versions an image's layout keeps (HOMEOSTAT_IMAGE_VERSIONS_KEPT), and after how long unheld blobs go (the build timeout). */
  imageVersions: { keep: number; graceMs: number };
  /** Tells the queue the key was built (cause "built", in the class of the run that asked for the build). */
  enqueue: (req: EnqueueRequest) => Promise<void>;
  /** Counts a refusal by reason. */
  refused: (reason: SignRefusal) => void;
  log: Logger;
};

/**
 * From the enqueue that triggered a build (an event's admission, a dependency's completion) to
 * its signed image, by trigger; made on first use, once the service's MeterProvider is
 * registered. A build record without a trigger time (written before it was kept) counts from
 * its request.
 */
let rebuildHistogram: Histogram | undefined;
const rebuildDuration = (): Histogram =>
  (rebuildHistogram ??= durationHistogram(
    meter(),
    "homeostat.rebuild.duration",
    "From the enqueue that triggered a build (event admitted, dependency completed) to its signed image, by trigger",
  ));

/** Bytes an image layout's collection removed (older versions' blobs); made on first use, as above. */
let layoutFreedCounter: Counter | undefined;
const layoutFreed = (): Counter =>
  (layoutFreedCounter ??= meter().createCounter("homeostat.signer.image_layout.freed", {
    unit: "By",
    description: "Bytes of image layouts' blobs removed with the versions a layout no longer keeps (HOMEOSTAT_IMAGE_VERSIONS_KEPT)",
  }));

export function createSignHandler(deps: SignHandlerDeps) {
  return async function handle(req: SignRequest): Promise<void> {
    let build;
    // An image's registry uploads open while admission checks its outputs (they need no bytes).
    let uploads: StartedUploads | undefined;
    try {
      build = await admit(req, {
        dataDir: deps.dataDir,
        trustedBuilderKeys: await deps.trustedBuilderKeys(),
        allowUnsandboxed: deps.allowUnsandboxed,
        status: (k) => deps.state.get(k),
        vouched: (result) => {
          if (result.kind === "image") uploads = startSignUploads(deps, result.name, result.outputs);
        },
      });
    } catch (err) {
      void uploads?.cancel();
      if (!(err instanceof SignRefusedError)) throw err;
      deps.refused(err.reason);
      deps.log.warn("sign refused", { key: req.key, reason: err.reason, inputDigest: req.inputDigest, buildResult: req.buildResult, detail: err.message });
      throw new NonRetriableError(`${req.key}: ${err.message}`);
    }
    if (build.isolation === "none")
      deps.log.warn("signing a build whose steps ran unsandboxed (HOMEOSTAT_SIGN_UNSANDBOXED=true); the signature says so", {
        key: req.key,
        inputDigest: req.inputDigest,
      });
    const { signatures, keyId } = await sign(build, {
      dataDir: deps.dataDir,
      imageRepository: deps.imageRepository,
      signer: deps.signer,
      registry: deps.registry,
      uploads,
    }).catch((err: unknown) => {
      // Uploads opened for a sign that failed before it took them (sign cancels the rest itself).
      void uploads?.cancel();
      // What cannot be signed as it stands will never succeed: drop it, with the reason.
      throw err instanceof SignRequestError ? new NonRetriableError(err.message) : err;
    });
    const actual = {
      version: build.version,
      inputDigest: build.inputDigest,
      outputs: build.outputs,
      signatures,
      keyId,
      ...(build.isolation ? { isolation: build.isolation } : {}),
      ...(build.builderKeyId ? { builderKeyId: build.builderKeyId } : {}),
      builtAt: new Date().toISOString(),
      traceId: currentTraceId(),
    };
    annotateActiveSpan({
      "homeostat.version": build.version,
      "homeostat.signing.key_id": keyId,
      ...(build.isolation ? { "homeostat.build.isolation": build.isolation } : {}),
      ...(build.outputs.manifest ? { "homeostat.image.digest": build.outputs.manifest } : {}),
      ...(build.outputs.archive ? { "homeostat.output_digest": build.outputs.archive } : {}),
    });
    let requested: BuildRecord | undefined;
    await deps.state.update(req.key, (s) => {
      const cur = s ?? StateStore.initial(req.key);
      requested = cur.builds?.find((b) => b.inputDigest === req.inputDigest && b.outcome === "requested");
      const current = cur.desiredInputDigest === undefined || cur.desiredInputDigest === req.inputDigest;
      // A build the reconciler asked to be completed here has no dependents to tell: the key is
      // told as told (fannedOut, as its completion run would write) and needs no run.
      const complete = current && requested?.signerCompletes === true;
      const next = {
        ...cur,
        actual,
        phase: current ? ("Ready" as const) : cur.phase,
        lastError: current ? undefined : cur.lastError,
        ...(complete ? { fannedOut: build.inputDigest } : {}),
      };
      return settleBuild(next, req.inputDigest, "succeeded", actual.builtAt, actual.traceId) ?? next;
    });
    if (requested)
      rebuildDuration().record((Date.parse(actual.builtAt) - Date.parse(requested.triggeredAt ?? requested.at)) / 1000, {
        trigger: requested.cause?.type ?? "unknown",
      });
    // The queue runs the key again to tell its dependents; or, for a build that tells none, it
    // withdraws the look that watched for this build (`completes`), and queues the key only if
    // that look stands for more or is gone (the key runs, or an enqueue merged into it). In the
    // class of the run that asked for the build, where that look waits (BuildRecord.priority).
    await deps.enqueue({
      v: 1,
      key: req.key,
      priority: requested?.priority ?? "dependency",
      cause: { type: "built", id: req.inputDigest, detail: `${req.key} signed at ${build.version}` },
      ...(requested?.signerCompletes ? { completes: req.inputDigest } : {}),
    });
    deps.log.info("signed", { key: req.key, version: build.version, keyId });
    // After the key is Ready at this version: older versions go from the layout.
    await keepRecentVersions(build, { dataDir: deps.dataDir, ...deps.imageVersions }).then(
      (c) => {
        if (c.bytes > 0) layoutFreed().add(c.bytes);
        if (c.tags.length > 0) deps.log.info("older image versions removed from the layout", { key: req.key, tags: c.tags, blobs: c.blobs, bytes: c.bytes });
      },
      (err: unknown) => deps.log.warn("could not remove older image versions from the layout", { key: req.key, error: String(err) }),
    );
  };
}
