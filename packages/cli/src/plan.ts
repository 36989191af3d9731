/**
 * Plan: what an advisory or a release would do to the catalog, computed without doing
 * anything — which packages would be bumped, patched or flagged (NeedsAttention), and which
 * keys would then be rebuilt, in the order they would be (catalog.impact's waves).
 *
 * It decides exactly as the reconciler does (core decision.ts). Alone, it decides against the
 * catalog's pinned versions, and the facts given are the only releases and advisories it knows
 * of. Given what the running factory knows of the packages the facts name (`homeostat plan
 * --live`: the KnownFacts RPC and each package's status), it decides with the factory's known
 * releases and stored advisories as well (a given advisory replaces a stored one of the same
 * id, as a newer revision would), and measures each change from the version the factory has
 * built, where it has built one.
 */
import { advisoryPackageNames, type Catalog, decideVersion, type Osv, osvSchema } from "@homeostat/catalog";
import { makeKey, type Key } from "@homeostat/core/key";
import type { PackageFacts } from "@homeostat/status-api";

export type PlanRelease = { package: string; version: string };

export type PlanFacts = { advisories: readonly Osv[]; releases: readonly PlanRelease[] };

/** What the running factory knows of one catalog package: its known facts, and the version it built if it built one. */
export type LivePackage = Pick<PackageFacts, "releases" | "advisories"> & { built?: string };

export type PlanStep =
  /** `from`: the version built (live, when there is one), else the pinned one. */
  | { key: Key; action: "bump"; from: string; to: string; because: string }
  | { key: Key; action: "patch"; version: string; patches: string[]; advisories: string[] }
  | { key: Key; action: "flag"; version: string; advisories: string[]; detail: string }
  | { key: Key; action: "rebuild"; wave: number };

export type Plan = {
  /** Decisions about the packages the facts name, then the rebuilds they cause, in wave order. */
  steps: PlanStep[];
  /** Packages the facts name that stay as they are (not affected, a release the policy refuses, or live: already built at the version decided). */
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
  const docs = Array.isArray(json)
    ? json
    : typeof json === "object" && json !== null && "advisories" in json
      ? (json as { advisories: unknown }).advisories
      : [json];
  if (!Array.isArray(docs)) throw new Error(`${file}: "advisories" must be an array`);
  return docs.map((d, i) => {
    const r = osvSchema.safeParse(d);
    if (r.success) return r.data;
    const [issue] = r.error.issues;
    throw new Error(`${file}: advisory ${i}: ${issue?.path.join(".") || "(document)"}: ${issue?.message ?? "not an OSV record"}`);
  });
}

/** `pkg@version`, validated. */
export function parseReleaseArg(s: string): PlanRelease {
  const [, name, version] = /^([A-Za-z0-9][A-Za-z0-9._+-]*)@([A-Za-z0-9][A-Za-z0-9.+_~-]*)$/.exec(s) ?? [];
  if (name === undefined || version === undefined) throw new Error(`--release must be <package>@<version>, got ${JSON.stringify(s)}`);
  return { package: name, version };
}

/** The names the facts mention, sorted: those of catalog packages, and the others. */
export function namedPackages(catalog: Catalog, facts: PlanFacts): { inCatalog: string[]; unknown: string[] } {
  const named = [...new Set([...facts.advisories.flatMap(advisoryPackageNames), ...facts.releases.map((r) => r.package)])].sort();
  return { inCatalog: named.filter((n) => catalog.packages.has(n)), unknown: named.filter((n) => !catalog.packages.has(n)) };
}

/** The plan for `facts`; with `live` (by package name), for the factory as it is (see the top of this file). */
export function plan(catalog: Catalog, facts: PlanFacts, live: ReadonlyMap<string, LivePackage> = new Map()): Plan {
  const { inCatalog, unknown } = namedPackages(catalog, facts);
  const givenIds = new Set(facts.advisories.map((a) => a.id));
  const decided: PlanStep[] = [];
  const unchanged: Key[] = [];
  for (const name of inCatalog) {
    const spec = catalog.packages.get(name);
    if (!spec) continue; // inCatalog holds only names of catalog packages

    const key = makeKey("package", name);
    const known = live.get(name);
    const releases = [...facts.releases.filter((r) => r.package === name).map((r) => r.version), ...(known?.releases ?? [])];
    const advisories = [...facts.advisories, ...(known?.advisories ?? []).filter((a) => !givenIds.has(a.id))];
    const d = decideVersion({ name, pinned: spec.version, releases, policy: catalog.policyOf(name), advisories, patches: spec.patches });
    // What a bump moves from: what the factory ships now, or, never built (or not asked), the pin.
    const current = known?.built ?? spec.version;
    if (d.action === "attention") decided.push({ key, action: "flag", version: d.version, advisories: d.advisories, detail: d.detail });
    else if (d.reason === "patch")
      decided.push({ key, action: "patch", version: d.version, patches: d.patches.filter((p) => p.fixes.length).map((p) => p.path), advisories: d.advisories });
    else if (d.version !== current) {
      const because = d.reason === "bump" ? `lowest release fixing ${d.advisories.join(", ")} (${d.newest} is affected)` : `release ${name}@${d.version}`;
      decided.push({ key, action: "bump", from: current, to: d.version, because });
    } else unchanged.push(key);
  }
  const changed = decided.filter((s) => s.action !== "flag").map((s) => s.key);
  const impact = catalog.impact(changed);
  const own = new Set(changed);
  const rebuilds: PlanStep[] = impact.waves.flatMap((wave, i) =>
    wave.filter((k) => !own.has(k)).map((key) => ({ key, action: "rebuild" as const, wave: i + 1 })),
  );
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
