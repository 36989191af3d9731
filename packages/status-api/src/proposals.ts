/**
 * The agent's proposals on both sides of the wire: `Proposal` records (@homeostat/proposals)
 * as proto messages and back, validated; the requests' checks the queue service applies; and
 * the client calls `homeostat proposals|proposal|approve|reject` make.
 */
import { z } from "zod";
import { keySchema } from "@homeostat/core/key";
import { proposalIdSchema, proposalSchema, proposalStatusSchema, type Proposal, type ProposalStatus } from "@homeostat/proposals";
import { callOptions, ContractViolation, type CallOptions, type StatusClient } from "./grpc.ts";
import type { ListProposalsRequest, Proposal as ProtoProposal } from "./generated/homeostat/v1/status.ts";
import { defaultPageSize, maxPageSize } from "./limits.ts";

/** The longest reason a review may carry (the record's limit). */
export const maxReviewReason = 4096;

/** A proposal as its wire message; `summary` leaves out the recipe, the patches and the diff (what ListProposals sends). */
export function toProtoProposal(p: Proposal, opts: { summary?: boolean } = {}): ProtoProposal {
  return {
    id: p.id,
    key: p.key,
    status: p.status,
    trigger: p.trigger,
    candidateDigest: p.candidateDigest,
    file: p.file,
    baseRevision: p.base.revision,
    baseRecipeDigest: p.base.recipeDigest,
    recipe: opts.summary ? "" : p.recipe,
    patches: opts.summary ? [] : p.patches.map((f) => ({ ...f })),
    diff: opts.summary ? "" : p.diff,
    rationale: p.rationale,
    validators: p.validators.map((v) => ({ ...v })),
    trialLogDigests: [...p.trialLogDigests],
    transcriptDigest: p.transcriptDigest,
    turns: p.turns,
    tokens: { ...p.tokens },
    costUsd: p.costUsd,
    branch: p.branch?.name,
    branchCommit: p.branch?.commit,
    review: p.review ? { ...p.review } : undefined,
    appliedAt: p.applied?.at,
    appliedRevision: p.applied?.revision,
    applyError: p.applyError,
    createdAt: p.createdAt,
  };
}

/** A received Proposal message as the record, validated (a ContractViolation naming the fields otherwise). */
export function fromProtoProposal(m: ProtoProposal): Proposal {
  const parsed = proposalSchema.safeParse({
    id: m.id,
    key: m.key,
    status: m.status,
    trigger: m.trigger,
    candidateDigest: m.candidateDigest,
    file: m.file,
    base: { revision: m.baseRevision, recipeDigest: m.baseRecipeDigest },
    recipe: m.recipe,
    patches: m.patches.map((f) => ({ path: f.path, text: f.text })),
    diff: m.diff,
    rationale: m.rationale,
    validators: m.validators.map((v) => ({ name: v.name, status: v.status, detail: v.detail })),
    trialLogDigests: m.trialLogDigests,
    transcriptDigest: m.transcriptDigest,
    turns: m.turns,
    tokens: m.tokens ?? { input: 0, output: 0, cacheWrite: 0, cacheRead: 0 },
    costUsd: m.costUsd,
    ...(m.branch !== undefined ? { branch: { name: m.branch, commit: m.branchCommit ?? "" } } : {}),
    ...(m.review ? { review: { by: m.review.by, at: m.review.at, ...(m.review.reason !== undefined ? { reason: m.review.reason } : {}) } } : {}),
    ...(m.appliedAt !== undefined ? { applied: { at: m.appliedAt, revision: m.appliedRevision ?? "" } } : {}),
    ...(m.applyError !== undefined ? { applyError: m.applyError } : {}),
    createdAt: m.createdAt,
  });
  if (!parsed.success) {
    const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ContractViolation(`invalid Proposal ${m.id}: ${where}`);
  }
  return parsed.data;
}

export type ProposalQuery = { key?: string; status?: ProposalStatus; limit: number; after?: string };

/**
 * A ListProposals request as a query, or why it is not one. The page token is the last
 * proposal's id of the previous page (base64url): opaque to clients.
 */
export function parseListProposalsRequest(m: ListProposalsRequest): ProposalQuery | { error: string } {
  const out: ProposalQuery = { limit: defaultPageSize };
  if (m.key) {
    const key = keySchema.safeParse(m.key);
    if (!key.success) return { error: `invalid key ${JSON.stringify(m.key)}: expected package/<name> or image/<name>` };
    out.key = key.data;
  }
  if (m.status) {
    const status = proposalStatusSchema.safeParse(m.status);
    if (!status.success) return { error: `invalid status ${JSON.stringify(m.status)}: must be one of ${proposalStatusSchema.options.join(", ")}` };
    out.status = status.data;
  }
  if (!Number.isInteger(m.pageSize) || m.pageSize < 0) return { error: `page_size must be 0 (default) or positive, got ${m.pageSize}` };
  out.limit = Math.min(m.pageSize || defaultPageSize, maxPageSize);
  if (m.pageToken) {
    const id = /^[A-Za-z0-9_-]{1,128}$/.test(m.pageToken) ? Buffer.from(m.pageToken, "base64url").toString("utf8") : "";
    if (!proposalIdSchema.safeParse(id).success) return { error: "page_token is not one this server issued" };
    out.after = id;
  }
  return out;
}

/** The page token that continues after `id`. */
export function proposalPageToken(id: string): string {
  return Buffer.from(id, "utf8").toString("base64url");
}

/** A proposal id from a request, or why it is not one. */
export function parseProposalId(id: string): { id: string } | { error: string } {
  return proposalIdSchema.safeParse(id).success ? { id } : { error: `invalid proposal id ${JSON.stringify(id)}: 1-64 of a-z, 0-9 and -` };
}

const rejectReasonSchema = z.string().trim().min(1, "a rejection needs a reason").max(maxReviewReason, `a reason is at most ${maxReviewReason} characters`);
const approveReasonSchema = z.string().trim().max(maxReviewReason, `a reason is at most ${maxReviewReason} characters`);

/** A review's reason from a request (required to reject), or why it is not one. */
export function parseReviewReason(reason: string | undefined, verdict: "approve" | "reject"): { reason?: string } | { error: string } {
  if (verdict === "approve" && (reason === undefined || reason.trim() === "")) return {};
  const parsed = (verdict === "reject" ? rejectReasonSchema : approveReasonSchema).safeParse(reason ?? "");
  return parsed.success ? { reason: parsed.data } : { error: parsed.error.issues.map((i) => i.message).join("; ") };
}

export type ProposalPage = { proposals: Proposal[]; nextPageToken: string };

/** ListProposals: one page (recipes, patches and diffs left out), validated. */
export async function listProposals(
  client: StatusClient,
  q: { key?: string; status?: string; pageSize?: number; pageToken?: string },
  opts: CallOptions = {},
): Promise<ProposalPage> {
  const res = await client.rpc.listProposals(
    { key: q.key ?? "", status: q.status ?? "", pageSize: q.pageSize ?? 0, pageToken: q.pageToken ?? "" },
    callOptions(opts),
  );
  return { proposals: res.proposals.map(fromProtoProposal), nextPageToken: res.nextPageToken };
}

export async function getProposal(client: StatusClient, id: string, opts: CallOptions = {}): Promise<Proposal> {
  return fromProtoProposal(await client.rpc.getProposal({ id }, callOptions(opts)));
}

export async function approveProposal(client: StatusClient, id: string, reason: string | undefined, opts: CallOptions = {}): Promise<Proposal> {
  return fromProtoProposal(await client.rpc.approveProposal({ id, ...(reason !== undefined ? { reason } : {}) }, callOptions(opts)));
}

export async function rejectProposal(client: StatusClient, id: string, reason: string, opts: CallOptions = {}): Promise<Proposal> {
  return fromProtoProposal(await client.rpc.rejectProposal({ id, reason }, callOptions(opts)));
}
