/**
 * A proposal: what the agent suggests for a key, with everything a reviewer needs to judge it
 * (the diff, the rationale, the validators' results, the trial builds' logs and the transcript
 * by digest) and what became of it (the review, the application).
 *
 * Its life: `open` → `approved` (a person) → `applied` (the agent wrote it to the catalog), or
 * `open` → `rejected` (a person, with a reason the next attempt is given), or `open` →
 * `applied` directly under HOMEOSTAT_AGENT_APPLY=validated when every validator passed. An
 * approved proposal that can no longer be applied (the catalog moved on) ends `failed`.
 */
import { z } from "zod";
import { keySchema } from "@homeostat/core";

export const proposalStatuses = ["open", "approved", "rejected", "applied", "failed"] as const;
export const proposalStatusSchema = z.enum(proposalStatuses);
export type ProposalStatus = z.infer<typeof proposalStatusSchema>;

/** A content digest (`sha256:<hex>`), kept a plain string: the agent's digests are computed as such. */
const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/, "must be sha256:<64 hex>");

export const proposalIdSchema = z.string().regex(/^[a-z0-9-]{1,64}$/, "a proposal id is 1-64 of a-z, 0-9 and -");

/** Who decided, when, and why: the gRPC principal of a person, or `policy:validated`. */
export const reviewSchema = z.object({
  by: z.string().min(1).max(256),
  at: z.string(),
  reason: z.string().max(4096).optional(),
});
export type Review = z.infer<typeof reviewSchema>;

export const validatorResultSchema = z.object({ name: z.string(), status: z.enum(["passed", "failed", "not-run"]), detail: z.string() });

export const proposalSchema = z.object({
  id: proposalIdSchema,
  key: keySchema,
  status: proposalStatusSchema,
  trigger: z.string().max(4096),
  candidateDigest: digestSchema,
  /** The catalog file the recipe replaces, relative to the catalog's root. */
  file: z.string().min(1).max(1024),
  /** What the candidate was made against: the catalog revision (a git commit, or a directory catalog's digest) and the key's recipe digest there, which must still be the catalog's when it is applied. */
  base: z.object({ revision: z.string().max(256), recipeDigest: digestSchema }),
  recipe: z.string().max(1024 * 1024),
  patches: z.array(z.object({ path: z.string(), text: z.string() })),
  /** Unified diff of the recipe and every patch file against the catalog at `base`. */
  diff: z.string().max(4 * 1024 * 1024),
  rationale: z.string().max(8192),
  validators: z.array(validatorResultSchema),
  /** The trial builds' logs, stored by content beside the transcript. */
  trialLogDigests: z.array(digestSchema),
  transcriptDigest: digestSchema,
  turns: z.number().int(),
  tokens: z.object({ input: z.number().int(), output: z.number().int(), cacheWrite: z.number().int(), cacheRead: z.number().int() }),
  costUsd: z.number(),
  /** When the catalog is a git repository: the proposal as a commit on `homeostat/<key>/<short digest>`. */
  branch: z.object({ name: z.string(), commit: z.string() }).optional(),
  review: reviewSchema.optional(),
  /** Where the change went: the catalog revision after it (a commit, or the directory catalog's digest). */
  applied: z.object({ at: z.string(), revision: z.string() }).optional(),
  /** Why an approved proposal could not be applied. */
  applyError: z.string().max(4096).optional(),
  createdAt: z.string(),
});
export type Proposal = z.infer<typeof proposalSchema>;

/** Every validator passed: what HOMEOSTAT_AGENT_APPLY=validated applies without a person. */
export function allValidatorsPassed(p: Pick<Proposal, "validators">): boolean {
  return p.validators.length > 0 && p.validators.every((v) => v.status === "passed");
}
