/**
 * Plan: what an advisory or a release would do to the catalog, computed locally and without
 * doing anything — which packages would be bumped, patched or flagged (NeedsAttention), and
 * which keys would then be rebuilt, in the order they would be (catalog.impact's waves).
 *
 * It decides exactly as the reconciler does (core decision.ts), against the catalog's pinned
 * versions: the facts given are the only releases and advisories it knows of.
 */
import { advisoryPackageNames, decideVersion, makeKey, osvSchema, type Catalog, type Key, type Osv } from "@homeostat/core";

export type PlanRelease = { package: string; version: string };

export type PlanStep =
  | { key: Key; action: "bump"; from: string; to: string; because: string }
  | { key: Key; action: "patch"; version: string; patches: string[]; advisories: string[] }
  | { key: Key; action: "flag"; version: string; advisories: string[]; detail: string }
  | { key: Key; action: "rebuild"; wave: number };

export type Plan = {
  /** Decisions about the packages the facts name, then the rebuilds they cause, in wave order. */
  steps: PlanStep[];
  /** Packages the facts name that stay as they are (not affected, or a release the policy refuses). */
  unchanged: Key[];
  /** Names the facts mention that are not catalog packages. */
  unknown: string[];
  waves: Key[][];
};

/** Parses an advisory file: one OSV document, an array of them, or {advisories: [...]}. */
export function parseAdvisoryFile(text: string, file: string): Osv[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: not JSON: ${(err as Error).message}`);
  }
  const docs = Array.isArray(json) ? json : typeof json === "object" && json !== null && "advisories" in json ? (json as { advisories: unknown }).advisories : [json];
  if (!Array.isArray(docs)) throw new Error(`${file}: "advisories" must be an array`);
  return docs.map((d, i) => {
    const r = osvSchema.safeParse(d);
    if (r.success) return r.data;
    const issue = r.error.issues[0]!;
    throw new Error(`${file}: advisory ${i}: ${issue.path.join(".") || "(document)"}: ${issue.message}`);
  });
}

/** `pkg@version`, validated. */
export function parseReleaseArg(s: string): PlanRelease {
  const m = /^([A-Za-z0-9][A-Za-z0-9._+-]*)@([A-Za-z0-9][A-Za-z0-9.+_~-]*)$/.exec(s);
  if (!m) throw new Error(`--release must be <package>@<version>, got ${JSON.stringify(s)}`);
  return { package: m[1]!, version: m[2]! };
}

export function plan(catalog: Catalog, facts: { advisories: readonly Osv[]; releases: readonly PlanRelease[] }): Plan {
  const named = new Set<string>([...facts.advisories.flatMap(advisoryPackageNames), ...facts.releases.map((r) => r.package)]);
  const unknown = [...named].filter((n) => !catalog.packages.has(n)).sort();
  const decided: PlanStep[] = [];
  const unchanged: Key[] = [];
  for (const name of [...named].filter((n) => catalog.packages.has(n)).sort()) {
    const spec = catalog.packages.get(name)!;
    const key = makeKey("package", name);
    const releases = facts.releases.filter((r) => r.package === name).map((r) => r.version);
    const d = decideVersion({ name, pinned: spec.version, releases, policy: catalog.policyOf(name), advisories: facts.advisories, patches: spec.patches });
    if (d.action === "attention") decided.push({ key, action: "flag", version: d.version, advisories: d.advisories, detail: d.detail });
    else if (d.reason === "patch") decided.push({ key, action: "patch", version: d.version, patches: d.patches.filter((p) => p.fixes.length).map((p) => p.path), advisories: d.advisories });
    else if (d.version !== spec.version) {
      const because = d.reason === "bump" ? `lowest release fixing ${d.advisories.join(", ")} (${d.newest} is affected)` : `release ${name}@${d.version}`;
      decided.push({ key, action: "bump", from: spec.version, to: d.version, because });
    } else unchanged.push(key);
  }
  const changed = decided.filter((s) => s.action !== "flag").map((s) => s.key);
  const impact = catalog.impact(changed);
  const own = new Set(changed);
  const rebuilds: PlanStep[] = impact.waves.flatMap((wave, i) => wave.filter((k) => !own.has(k)).map((key) => ({ key, action: "rebuild" as const, wave: i + 1 })));
  return { steps: [...decided, ...rebuilds], unchanged, unknown, waves: impact.waves };
}

export function formatPlan(p: Plan): string {
  const lines: string[] = [];
  if (p.steps.length === 0) lines.push("Nothing would change.");
  for (const s of p.steps) {
    switch (s.action) {
      case "bump":
        lines.push(`bump     ${s.key}  ${s.from} -> ${s.to}  (${s.because})`);
        break;
      case "patch":
        lines.push(`patch    ${s.key}  ${s.version} with ${s.patches.join(", ")}  (fixes ${s.advisories.join(", ")})`);
        break;
      case "flag":
        lines.push(`flag     ${s.key}  NeedsAttention: ${s.detail}`);
        break;
      case "rebuild":
        lines.push(`rebuild  ${s.key}  (wave ${s.wave})`);
        break;
    }
  }
  if (p.waves.length) {
    lines.push("", "Build order:");
    p.waves.forEach((w, i) => lines.push(`  wave ${i + 1}: ${w.join(" ")}`));
  }
  if (p.unchanged.length) lines.push("", `Unchanged: ${p.unchanged.join(" ")}`);
  if (p.unknown.length) lines.push("", `Not in the catalog: ${p.unknown.join(" ")}`);
  return lines.join("\n");
}
