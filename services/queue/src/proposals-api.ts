/**
 * The proposals RPCs of the status API: ListProposals and GetProposal read the agent's
 * proposals (KV `<prefix>_proposals`, @homeostat/proposals); ApproveProposal and
 * RejectProposal record a review there by compare-and-set and hand the key back to the agent
 * (the `repair` class). They need the write role (status-auth.ts), like Enqueue.
 *
 * The queue service never writes the catalog: an approval only records who approved, and the
 * agent, which holds the catalog's location, applies the change (services/agent/src/apply.ts)
 * when it next runs the key. So the process facing the network can flip a review, never a
 * recipe.
 */
import type { Key } from "@homeostat/core/key";
import { ProposalConflict, ProposalNotFound, type Proposal, type ProposalStore } from "@homeostat/proposals";
import {
  parseListProposalsRequest,
  parseProposalId,
  parseReviewReason,
  proposalPageToken,
  ServerError,
  Status,
  type StatusServiceImplementation,
  toProtoProposal,
} from "@homeostat/status-api";
import type { QueueApi } from "./status-api.ts";

export type ProposalsApiDeps = {
  proposals: Pick<ProposalStore, "list" | "get" | "transition">;
  queue: Pick<QueueApi, "enqueue">;
  /** Who is calling, for the record (the bearer token's name). */
  caller: (context: Parameters<StatusServiceImplementation["approveProposal"]>[1]) => string;
};

type ProposalMethods = Pick<StatusServiceImplementation, "listProposals" | "getProposal" | "approveProposal" | "rejectProposal">;

export function proposalsApi(deps: ProposalsApiDeps): ProposalMethods {
  const invalid = (details: string) => new ServerError(Status.INVALID_ARGUMENT, details);
  const idOf = (raw: string): string => {
    const parsed = parseProposalId(raw);
    if ("error" in parsed) throw invalid(parsed.error);
    return parsed.id;
  };

  async function review(id: string, verdict: "approved" | "rejected", by: string, reason: string | undefined): Promise<Proposal> {
    let p: Proposal;
    try {
      p = await deps.proposals.transition(id, ["open"], (cur) => ({
        ...cur,
        status: verdict,
        review: { by, at: new Date().toISOString(), ...(reason !== undefined ? { reason } : {}) },
      }));
    } catch (err) {
      if (err instanceof ProposalNotFound) throw new ServerError(Status.NOT_FOUND, err.message);
      if (err instanceof ProposalConflict) throw new ServerError(Status.FAILED_PRECONDITION, err.message);
      throw err;
    }
    // The agent applies an approval, and retries after a rejection with its reason, when it next runs the key.
    const detail = `proposal ${id} ${verdict} by ${by}`;
    await deps.queue.enqueue({ key: p.key as Key, priority: "repair", cause: { type: "manual", detail } });
    return p;
  }

  return {
    async listProposals(request) {
      const q = parseListProposalsRequest(request);
      if ("error" in q) throw invalid(q.error);
      const all = await deps.proposals.list({ ...(q.key ? { key: q.key } : {}), ...(q.status ? { status: q.status } : {}) });
      const from = q.after === undefined ? 0 : all.findIndex((p) => p.id === q.after) + 1;
      // A token whose proposal is gone (expired from the bucket) cannot say where the page was.
      if (q.after !== undefined && from === 0) throw invalid("page_token names a proposal that is no longer listed: start again without it");
      const page = all.slice(from, from + q.limit);
      const last = page.at(-1);
      return {
        proposals: page.map((p) => toProtoProposal(p, { summary: true })),
        nextPageToken: last && from + q.limit < all.length ? proposalPageToken(last.id) : "",
      };
    },

    async getProposal({ id }) {
      const p = await deps.proposals.get(idOf(id));
      if (!p) throw new ServerError(Status.NOT_FOUND, `no proposal ${id}`);
      return toProtoProposal(p);
    },

    async approveProposal({ id, reason }, context) {
      const r = parseReviewReason(reason, "approve");
      if ("error" in r) throw invalid(r.error);
      return toProtoProposal(await review(idOf(id), "approved", deps.caller(context), r.reason));
    },

    async rejectProposal({ id, reason }, context) {
      const r = parseReviewReason(reason, "reject");
      if ("error" in r) throw invalid(r.error);
      return toProtoProposal(await review(idOf(id), "rejected", deps.caller(context), r.reason));
    },
  };
}
