/**
 * Reviewing the agent's proposals: `homeostat proposals` lists them, `homeostat proposal <id>`
 * shows one (`--diff`: only its unified diff, ready for a pager or `git apply`), `homeostat
 * approve <id>` and `homeostat reject <id> --reason "…"` review it (a write token). An
 * approved proposal is applied to the catalog by the agent and rebuilt by the reconciler;
 * a rejected one's reason is given to the agent's next attempt for the key.
 */
import type { Proposal } from "@homeostat/proposals";
import type { StatusClient } from "@homeostat/status-api";
import { columns, exitCodes, UsageError, type Command, type Context } from "./main.ts";

const statuses = ["open", "approved", "rejected", "applied", "failed"];

async function idArg(
  ctx: Context,
  raw: string | undefined,
  c: Command,
): Promise<{ id: string; api: Awaited<ReturnType<Context["status"]>>["api"]; client: StatusClient }> {
  if (raw === undefined) throw new UsageError("give the proposal's <id>", c);
  const { api, client } = await ctx.status();
  const parsed = api.parseProposalId(raw);
  if ("error" in parsed) throw new UsageError(parsed.error, c);
  return { id: parsed.id, api, client };
}

function validatorSummary(p: Proposal): string {
  const passed = p.validators.filter((v) => v.status === "passed").length;
  return `${passed}/${p.validators.length} passed`;
}

function reviewText(p: Proposal): string {
  return p.review ? `${p.review.by} ${p.review.at.replace(/\.\d+Z$/, "Z")}${p.review.reason ? `: ${p.review.reason.replace(/\s*\n\s*/g, " ")}` : ""}` : "-";
}

export function formatProposals(items: Proposal[]): string {
  if (items.length === 0) return "no proposals";
  const rows = [["ID", "KEY", "STATUS", "VALIDATORS", "COST", "CREATED", "REVIEW"]];
  for (const p of items)
    rows.push([p.id, p.key, p.status, validatorSummary(p), `$${p.costUsd.toFixed(4)}`, p.createdAt.replace(/\.\d+Z$/, "Z"), reviewText(p)]);
  return columns(rows);
}

/** One proposal, everything but its diff (`--diff` prints that). */
export function formatProposal(p: Proposal): string {
  const lines: [string, string][] = [
    ["Proposal", p.id],
    ["Key", p.key],
    ["Status", p.status],
    ["Trigger", p.trigger],
    ["Rationale", p.rationale],
    ["File", p.file],
    ["Patches", p.patches.map((f) => f.path).join(", ") || "none"],
    ["Candidate", p.candidateDigest],
    ["Base", `${p.base.revision} (recipe ${p.base.recipeDigest})`],
  ];
  if (p.branch) lines.push(["Branch", `${p.branch.name} at ${p.branch.commit}`]);
  p.validators.forEach((v, i) => lines.push([i === 0 ? "Validators" : "", `${v.status.padEnd(7)}  ${v.name}${v.status === "passed" ? "" : `: ${v.detail}`}`]));
  p.trialLogDigests.forEach((d, i) => lines.push([i === 0 ? "Trial logs" : "", d]));
  lines.push(["Transcript", p.transcriptDigest]);
  lines.push(["Turns", String(p.turns)]);
  lines.push(["Tokens", `${p.tokens.input} in, ${p.tokens.output} out, ${p.tokens.cacheRead} cache read, ${p.tokens.cacheWrite} cache write`]);
  lines.push(["Cost", `$${p.costUsd.toFixed(4)}`]);
  lines.push(["Created", p.createdAt]);
  if (p.review) lines.push([p.status === "rejected" ? "Rejected" : "Approved", reviewText(p)]);
  if (p.applied) lines.push(["Applied", `${p.applied.at} (catalog ${p.applied.revision})`]);
  if (p.applyError) lines.push(["Not applied", p.applyError]);
  const w = Math.max(...lines.map(([label]) => label.length)) + 1;
  return lines.map(([label, value]) => `${(label ? `${label}:` : "").padEnd(w)}  ${value.replace(/\n/g, `\n${" ".repeat(w + 2)}`)}`).join("\n");
}

export const proposalsCommand: Command = {
  name: "proposals",
  summary: "list the agent's proposals, oldest first: key, status, validators, cost, review",
  options: { key: { type: "string" }, status: { type: "string" }, limit: { type: "string" } },
  optionHelp: [
    ["--key K", "only this key's, e.g. package/openssl"],
    ["--status S", `only those in this status: ${statuses.join(", ")}`],
    ["--limit n", "show at most n (default 100)"],
  ],
  positionals: { min: 0, max: 0 },
  async run(ctx, _positionals, values) {
    const status = typeof values.status === "string" ? values.status : undefined;
    if (status !== undefined && !statuses.includes(status)) throw new UsageError(`--status must be one of ${statuses.join(", ")}`, proposalsCommand);
    const limitRaw = values.limit === undefined ? "100" : String(values.limit);
    if (!/^\d+$/.test(limitRaw) || Number(limitRaw) < 1)
      throw new UsageError(`--limit must be a positive integer, got ${JSON.stringify(limitRaw)}`, proposalsCommand);
    const limit = Number(limitRaw);
    const { api, client } = await ctx.status();
    let key: string | undefined;
    if (typeof values.key === "string") {
      const parsed = api.parseKeyArg(values.key);
      if ("error" in parsed) throw new UsageError(parsed.error, proposalsCommand);
      key = parsed.key;
    }
    const items: Proposal[] = [];
    let pageToken = "";
    do {
      const page = await api.listProposals(client, {
        ...(key ? { key } : {}),
        ...(status ? { status } : {}),
        pageSize: Math.min(limit - items.length, api.maxPageSize),
        pageToken,
      });
      items.push(...page.proposals);
      pageToken = page.nextPageToken;
    } while (pageToken && items.length < limit);
    ctx.show(items, () => formatProposals(items));
    if (pageToken) ctx.io.stderr.write(`homeostat: showing the first ${items.length} proposals; more exist (raise --limit or narrow --key/--status)\n`);
    return exitCodes.ok;
  },
};

export const proposalCommand: Command = {
  name: "proposal",
  args: "<id>",
  summary: "show one of the agent's proposals: rationale, validators, digests, review; --diff prints its unified diff",
  options: { diff: { type: "boolean" } },
  optionHelp: [["--diff", "print only the unified diff of the recipe and patches against the catalog"]],
  positionals: { min: 1, max: 1 },
  async run(ctx, [raw], values) {
    const { id, api, client } = await idArg(ctx, raw, proposalCommand);
    const p = await api.getProposal(client, id);
    if (ctx.json) ctx.printJson(values.diff ? { id: p.id, diff: p.diff } : p);
    else if (values.diff) ctx.io.stdout.write(p.diff);
    else ctx.print(formatProposal(p));
    return exitCodes.ok;
  },
};

export const approveCommand: Command = {
  name: "approve",
  args: "<id>",
  summary: "approve an open proposal: the agent applies it to the catalog, the factory rebuilds and signs it",
  options: { reason: { type: "string" } },
  optionHelp: [["--reason R", "why, for the record"]],
  positionals: { min: 1, max: 1 },
  async run(ctx, [raw], values) {
    const { id, api, client } = await idArg(ctx, raw, approveCommand);
    const p = await api.approveProposal(client, id, typeof values.reason === "string" ? values.reason : undefined);
    ctx.show(p, () => `${p.id}: approved by ${p.review?.by ?? "?"}; the agent applies it to the catalog of ${p.key}, then the factory rebuilds it`);
    return exitCodes.ok;
  },
};

export const rejectCommand: Command = {
  name: "reject",
  args: "<id>",
  summary: "reject an open proposal with a reason, which the agent's next attempt for the key is given",
  options: { reason: { type: "string" } },
  optionHelp: [["--reason R", "why (required)"]],
  positionals: { min: 1, max: 1 },
  async run(ctx, [raw], values) {
    const reason = typeof values.reason === "string" ? values.reason.trim() : "";
    if (!reason) throw new UsageError('reject needs --reason "…": the agent is told it on its next attempt', rejectCommand);
    const { id, api, client } = await idArg(ctx, raw, rejectCommand);
    const p = await api.rejectProposal(client, id, reason);
    ctx.show(p, () => `${p.id}: rejected by ${p.review?.by ?? "?"}; the agent tries ${p.key} again with the reason`);
    return exitCodes.ok;
  },
};
