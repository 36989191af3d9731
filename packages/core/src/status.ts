/**
 * Status: where one key stands, the record every service reads and the gRPC API serves.
 *
 * `desired*` is what the reconciler last decided the key should be; `actual` is the last
 * artifact that was built *and* signed. Only the signer sets `actual`, and only after every
 * artifact is stored, so a key is never Ready with a half-finished result.
 */
import { z } from "zod";
import { buildOutputsSchema, causeSchema } from "./contracts.ts";
import { keySchema } from "./key.ts";

export const phases = ["Pending", "Reconciling", "Building", "Signing", "Ready", "Failed", "NeedsAttention", "DeadLettered"] as const;
export type Phase = (typeof phases)[number];

const digest = z.string().regex(/^sha256:[0-9a-f]{64}$/);

export const actualSchema = z.object({
  version: z.string(),
  inputDigest: digest,
  outputs: buildOutputsSchema,
  /** Signature blobs by role, e.g. { image: sha256:…, archive: sha256:… }. */
  signatures: z.record(z.string(), digest),
  keyId: z.string(),
  builtAt: z.string(),
  traceId: z.string().optional(),
});
export type Actual = z.infer<typeof actualSchema>;

export const keyStatusSchema = z.object({
  key: keySchema,
  phase: z.enum(phases),
  desiredVersion: z.string().optional(),
  /** Input digest of the build that is requested or running, if any. */
  desiredInputDigest: digest.optional(),
  actual: actualSchema.optional(),
  attempts: z.number().int().nonnegative(),
  lastError: z.string().optional(),
  /** Why the key last changed. */
  cause: causeSchema.optional(),
  traceId: z.string().optional(),
  /** Input digest whose completion has already been fanned out to dependents. */
  fannedOut: digest.optional(),
  updatedAt: z.string(),
});
export type KeyStatus = z.infer<typeof keyStatusSchema>;
