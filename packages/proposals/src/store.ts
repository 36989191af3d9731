/**
 * Proposals in JetStream KV (`<prefix>_proposals`), one entry per id: written create-only,
 * then changed only by compare-and-set on the entry's revision (`transition`), so that of two
 * reviewers approving at once exactly one wins and the other gets a clear error.
 */
import type { KV } from "@nats-io/kv";
import { kvKeys } from "@homeostat/core/kv-keys";
import { proposalSchema, type Proposal, type ProposalStatus } from "./proposal.ts";
import { QUESTION_ENTRY_PREFIX } from "./questions.ts";

/** A change asked of a proposal in a status that does not allow it (already reviewed, unknown). */
export class ProposalConflict extends Error {
  override readonly name = "ProposalConflict";
}

export class ProposalNotFound extends Error {
  override readonly name = "ProposalNotFound";
}

export type ProposalFilter = { key?: string; status?: ProposalStatus };

export class ProposalStore {
  private readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  async create(p: Proposal): Promise<void> {
    await this.kv.create(p.id, JSON.stringify(proposalSchema.parse(p)));
  }

  async get(id: string): Promise<Proposal | undefined> {
    return (await this.entry(id))?.proposal;
  }

  /** Every proposal matching the filter, oldest first (ties by id). */
  async list(filter: ProposalFilter = {}): Promise<Proposal[]> {
    const out: Proposal[] = [];
    for (const id of await kvKeys(this.kv)) {
      // The bucket also holds the agent's parked questions (questions.ts).
      if (id.startsWith(QUESTION_ENTRY_PREFIX)) continue;
      const p = await this.get(id);
      if (p && (!filter.key || p.key === filter.key) && (!filter.status || p.status === filter.status)) out.push(p);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id));
  }

  /** The key's proposals, oldest first. */
  ofKey(key: string): Promise<Proposal[]> {
    return this.list({ key });
  }

  /**
   * Moves a proposal from one of `from` to what `change` makes of it, by compare-and-set: a
   * proposal in another status, or changed by someone else in between, is a ProposalConflict.
   */
  async transition(id: string, from: readonly ProposalStatus[], change: (p: Proposal) => Proposal): Promise<Proposal> {
    const cur = await this.entry(id);
    if (!cur) throw new ProposalNotFound(`no proposal ${id}`);
    if (!from.includes(cur.proposal.status)) throw new ProposalConflict(`proposal ${id} is ${describe(cur.proposal)}, not ${from.join(" or ")}`);
    const next = proposalSchema.parse(change(cur.proposal));
    try {
      await this.kv.update(id, JSON.stringify(next), cur.revision);
    } catch (err) {
      const now = await this.get(id);
      if (now && now.status !== cur.proposal.status) throw new ProposalConflict(`proposal ${id} is ${describe(now)} (changed meanwhile)`);
      throw err;
    }
    return next;
  }

  private async entry(id: string): Promise<{ proposal: Proposal; revision: number } | undefined> {
    const e = await this.kv.get(id);
    return e && e.operation === "PUT" ? { proposal: proposalSchema.parse(e.json()), revision: e.revision } : undefined;
  }
}

function describe(p: Proposal): string {
  return p.review ? `${p.status} (by ${p.review.by} at ${p.review.at})` : p.status;
}
