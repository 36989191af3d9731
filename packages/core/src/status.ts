/**
 * Status: where one key stands, the record every service reads and the gRPC API serves.
 *
 * `desired*` is what the reconciler last decided the key should be; `actual` is the last
 * artifact that was built *and* signed. Only the signer sets `actual`, and only after every
 * artifact is stored, so a key is never Ready with a half-finished result.
 */
import { z } from "zod";
import { buildOutputsSchema, causeSchema, prioritySchema } from "./contracts.ts";
import { digestSchema } from "./digest.ts";
import { failureKinds } from "./failure.ts";
import { keySchema } from "./key.ts";

export const phases = ["Pending", "Reconciling", "Building", "Signing", "Ready", "Failed", "NeedsAttention", "WaitingForAnswer", "DeadLettered"] as const;
export type Phase = (typeof phases)[number];

export const actualSchema = z.object({
  version: z.string(),
  inputDigest: digestSchema,
  outputs: buildOutputsSchema,
  /** Signature blobs by role, e.g. { image: sha256:…, archive: sha256:… }. */
  signatures: z.record(z.string(), digestSchema),
  keyId: z.string(),
  /** How the build's steps ran (`none` only when the signer was told to sign unsandboxed builds) and which builder key vouched for it. */
  isolation: z.enum(["bubblewrap", "none"]).optional(),
  builderKeyId: z.string().optional(),
  builtAt: z.string(),
  traceId: z.string().optional(),
});
export type Actual = z.infer<typeof actualSchema>;

/** How many builds a status remembers (newest first). */
export const MAX_BUILDS = 10;

export const buildOutcomes = ["requested", "succeeded", "failed", "superseded"] as const;
export type BuildOutcome = (typeof buildOutcomes)[number];

/** One build of the key: asked for by the reconciler, settled by the signer (or a later reconcile). */
export const buildRecordSchema = z.object({
  version: z.string(),
  inputDigest: digestSchema,
  outcome: z.enum(buildOutcomes),
  /** When it was requested, then when it settled. */
  at: z.string(),
  /**
   * When the key was told it may have drifted by what this build answers (the earliest enqueue
   * the requesting run served: an event's admission, a dependency's completion): where the
   * event → signed latency starts. Absent on records written before it was kept.
   */
  triggeredAt: z.string().optional(),
  traceId: z.string().optional(),
  /** Why it was asked for. */
  cause: causeSchema.optional(),
  /** The agent's proposal its recipe came from (see KeyStatus.proposal). */
  proposal: z.string().max(64).optional(),
  /**
   * Its signed result completes the key with no run of the reconciler: the key had no
   * dependents to tell when it was asked for (an image, a package nothing is built from). The
   * signer then withdraws the requeue-after that watched for the build instead of queueing the
   * key. A dependent that comes to wait for it takes this away (the reconciler), so that its
   * completion runs and tells it.
   */
  signerCompletes: z.literal(true).optional(),
  /**
   * The class of the run that asked for it, where the requeue-after watching for the build
   * waits: the signer queues the key's completion in that class, so that it merges into that
   * look (one message, one run). Queued in another class, it could be taken by a worker before
   * the queue merged the two, and the look then ran once more after it. Absent on records
   * written before it was kept (the completion goes in class dependency).
   */
  priority: prioritySchema.optional(),
});
export type BuildRecord = z.infer<typeof buildRecordSchema>;

export const keyStatusSchema = z.object({
  key: keySchema,
  phase: z.enum(phases),
  desiredVersion: z.string().optional(),
  /** Input digest of the build that is requested or running, if any. */
  desiredInputDigest: digestSchema.optional(),
  actual: actualSchema.optional(),
  attempts: z.number().int().nonnegative(),
  lastError: z.string().optional(),
  /** Why the key last changed: the release, advisory, catalog change or dependency behind its last decision. */
  cause: causeSchema.optional(),
  /** The last builds, newest first, at most MAX_BUILDS. */
  builds: z.array(buildRecordSchema).optional(),
  /** What the key waits for before it can be built (a dependency), while it waits. */
  waitingFor: z.string().optional(),
  /** NeedsAttention: the advisories that no bump or patch answers. */
  advisories: z.array(z.string()).optional(),
  traceId: z.string().optional(),
  /** Why upstream releases could not all be resolved (unavailable, refused, a tag that moved), while that lasts; the key keeps its last version. */
  upstream: z.string().max(4096).optional(),
  /**
   * The last failure of the key's desired inputs (failure.ts), while it matters: how many times
   * in a row they failed (or took their builder down), and when they are tried again.
   */
  failure: z
    .object({
      inputDigest: digestSchema,
      kind: z.enum(failureKinds),
      reason: z.string().max(8192),
      count: z.number().int().nonnegative(),
      at: z.string(),
      nextAt: z.string().optional(),
    })
    .optional(),
  /**
   * The durable "started" mark of the build running now: a builder that finds another
   * instance's mark on a redelivered request knows that builder died with it (failure.ts
   * "crash"), and counts it, since a dead process reports nothing.
   */
  building: z
    .object({
      inputDigest: digestSchema,
      instance: z.string().max(256),
      startedAt: z.string(),
      crashes: z.number().int().nonnegative(),
    })
    .optional(),
  /** The agentic reconciler's word on the key (services/agent): disabled, working, a proposal waiting for review, or why it made none. */
  agent: z.string().max(4096).optional(),
  /**
   * The agent's proposal the key's recipe came from (set when the agent applies it) and that
   * recipe's digest: a build of exactly that recipe records the proposal (BuildRecord.proposal).
   */
  proposal: z.object({ id: z.string().max(64), recipeDigest: digestSchema }).optional(),
  /** Input digest whose completion has already been fanned out to dependents. */
  fannedOut: digestSchema.optional(),
  /**
   * The package archive that fan-out told the dependents of. A later build that makes the very
   * same archive (rebuilt only because a dependency was, its files came out the same) leaves
   * their inputs as they were: its completion tells only those that wait. Absent: every
   * dependent is told.
   */
  fannedOutArchive: buildOutputsSchema.shape.archive,
  updatedAt: z.string(),
});
export type KeyStatus = z.infer<typeof keyStatusSchema>;

/** The agent's proposal the key's actual artifact was built from, if it was (its build's record names it). */
export function builtFromProposal(s: KeyStatus): string | undefined {
  const actual = s.actual;
  return actual ? s.builds?.find((b) => b.inputDigest === actual.inputDigest)?.proposal : undefined;
}

/** The status with `build` first in its history (a record of the same input digest is replaced), capped at MAX_BUILDS. */
export function withBuild(s: KeyStatus, build: BuildRecord): KeyStatus {
  const rest = (s.builds ?? []).filter((b) => b.inputDigest !== build.inputDigest);
  return { ...s, builds: [build, ...rest].slice(0, MAX_BUILDS) };
}

/**
 * Settles the requested build of `inputDigest` with its outcome; unchanged (undefined) when
 * there is no such open record, so settling twice writes once.
 */
export function settleBuild(
  s: KeyStatus,
  inputDigest: string,
  outcome: Exclude<BuildOutcome, "requested">,
  at: string,
  traceId?: string,
): KeyStatus | undefined {
  const open = (b: BuildRecord) => b.inputDigest === inputDigest && b.outcome === "requested";
  if (!s.builds?.some(open)) return undefined;
  let settled = false;
  const builds = s.builds.map((b) => {
    if (settled || !open(b)) return b;
    settled = true;
    return { ...b, outcome, at, ...(traceId ? { traceId } : {}) };
  });
  return { ...s, builds };
}
