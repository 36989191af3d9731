/**
 * Proposals in JetStream KV (`<prefix>_proposals`), one per id, written create-only and then
 * only by compare-and-set (a review). Each names its key, the candidate's input digest, the
 * rationale, the validators' results, turns, tokens and cost, and the transcript's digest.
 */
import { z } from "zod";
import { keySchema, type Nats } from "@homeostat/core";

type KV = Awaited<ReturnType<Nats["kvm"]["open"]>>;

export const proposalSchema = z.object({
  id: z.string().regex(/^[a-z0-9-]{1,64}$/),
  key: keySchema,
  status: z.enum(["open", "approved", "rejected", "applied"]),
  trigger: z.string().max(4096),
  candidateDigest: z.string(),
  recipe: z.string().max(1024 * 1024),
  patches: z.array(z.object({ path: z.string(), text: z.string() })),
  rationale: z.string().max(8192),
  validators: z.array(z.object({ name: z.string(), status: z.enum(["passed", "failed", "not-run"]), detail: z.string() })),
  transcriptDigest: z.string(),
  turns: z.number().int(),
  tokens: z.object({ input: z.number().int(), output: z.number().int(), cacheWrite: z.number().int(), cacheRead: z.number().int() }),
  costUsd: z.number(),
  reviewReason: z.string().max(4096).optional(),
  createdAt: z.string(),
});
export type Proposal = z.infer<typeof proposalSchema>;

export class ProposalStore {
  private readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  async create(p: Proposal): Promise<void> {
    await this.kv.create(p.id, JSON.stringify(proposalSchema.parse(p)));
  }

  async get(id: string): Promise<Proposal | undefined> {
    const e = await this.kv.get(id);
    return e && e.operation === "PUT" ? proposalSchema.parse(e.json()) : undefined;
  }

  async list(): Promise<Proposal[]> {
    const out: Proposal[] = [];
    for await (const id of await this.kv.keys()) {
      const p = await this.get(id);
      if (p) out.push(p);
    }
    return out.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** The key's proposals, oldest first. */
  async ofKey(key: string): Promise<Proposal[]> {
    return (await this.list()).filter((p) => p.key === key);
  }
}
