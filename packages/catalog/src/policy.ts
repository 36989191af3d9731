/**
 * Version policy: which upstream releases a package may move to, and so which one it should
 * be at — the highest release the policy accepts.
 *
 * Three kinds, as upstreams number their releases:
 * - `semver`: a range in npm's syntax (`^1.2`, `~3.0.1`, `>=1.0 <2`, `1.2.x`, `1.2 - 1.4`,
 *   `||` for alternatives), applied to any dotted version with the ordering of version.ts,
 *   so `1.1.1w` or four-part versions work too;
 * - `calver`: a format such as `YYYY.0M.0D` or `YY.MM.MICRO`; releases in another shape are
 *   ignored (a project that moved from semver to calver keeps old tags around);
 * - `regex`: a pattern over the release tag with capture groups; the version is the named
 *   group `version`, else the groups joined with dots (`curl-(\d+)_(\d+)_(\d+)` -> 8.5.0).
 * Pre-releases are left out unless the policy lets them in. Policies are compiled once, at
 * catalog load, so a bad range is a load error naming the file and line, not a runtime one.
 */
import { z } from "zod";
import { compareVersions, isPrerelease, releaseOf } from "./version.ts";

/** Exactly one of the three is set (versionPolicySchema checks it). */
export type VersionPolicy = { semver?: string; calver?: string; regex?: string };

/** A release the policy accepted: the tag as upstream spelt it and the version it denotes. */
export type Chosen = { raw: string; version: string };

export type CompiledPolicy = {
  /** The version a release denotes if the policy accepts it, else undefined. */
  accept(raw: string): string | undefined;
  /** The highest accepted release, if any. */
  choose(raws: Iterable<string>): Chosen | undefined;
};

export class PolicyError extends Error {}

const MAX_POLICY_LENGTH = 512;

export const versionPolicySchema = z
  .strictObject({
    semver: z.string().min(1).max(MAX_POLICY_LENGTH).optional().describe("A semver range: ^1.2, ~1.2.3, >=1.0 <2, 1.2.x, 1.2 - 1.4, a || b"),
    calver: z
      .string()
      .min(1)
      .max(MAX_POLICY_LENGTH)
      .optional()
      .describe("A calendar version format: YYYY, YY, 0Y, MM, 0M, WW, 0W, DD, 0D, MAJOR, MINOR, MICRO joined by . - _"),
    regex: z
      .string()
      .min(1)
      .max(MAX_POLICY_LENGTH)
      .optional()
      .describe("A regular expression over the release tag with at least one capture group (or a group named version)"),
  })
  .superRefine((p, ctx) => {
    const given = (["semver", "calver", "regex"] as const).filter((k) => p[k] !== undefined);
    if (given.length !== 1) {
      ctx.addIssue({ code: "custom", message: `exactly one of semver, calver, regex is required (got ${given.length ? given.join(", ") : "none"})` });
      return;
    }
    try {
      compilePolicy(p);
    } catch (err) {
      if (!(err instanceof PolicyError)) throw err;
      ctx.addIssue({ code: "custom", path: given.slice(0, 1), message: err.message });
    }
  })
  .meta({ oneOf: [{ required: ["semver"] }, { required: ["calver"] }, { required: ["regex"] }] });

/** Compiles a policy (none: every release is acceptable); throws PolicyError when it is malformed. */
export function compilePolicy(policy: VersionPolicy | undefined, opts: { prereleases?: boolean } = {}): CompiledPolicy {
  const denote =
    policy?.semver !== undefined
      ? semverMatcher(policy.semver)
      : policy?.calver !== undefined
        ? calverMatcher(policy.calver)
        : policy?.regex !== undefined
          ? regexMatcher(policy.regex)
          : plain;
  const accept = (raw: string): string | undefined => {
    const v = denote(raw);
    if (v === undefined) return undefined;
    if (!opts.prereleases && isPrerelease(v)) return undefined;
    return v;
  };
  return {
    accept,
    choose(raws) {
      let best: Chosen | undefined;
      for (const raw of raws) {
        const version = accept(raw);
        if (version !== undefined && (!best || compareVersions(version, best.version) > 0)) best = { raw, version };
      }
      return best;
    },
  };
}

/** The highest of `versions` that the policy accepts (see compilePolicy). */
export function chooseVersion(policy: VersionPolicy | undefined, versions: Iterable<string>, opts: { prereleases?: boolean } = {}): Chosen | undefined {
  return compilePolicy(policy, opts).choose(versions);
}

/** Without a policy a release is its version, a leading `v` dropped (v1.2 -> 1.2). */
function plain(raw: string): string | undefined {
  const v = raw.replace(/^v(?=\d)/i, "");
  return /^\d/.test(v) ? v : undefined;
}

// ---- semver ranges ----------------------------------------------------------------------

type Op = "<" | "<=" | ">" | ">=" | "=";
/** `noPreOfBound`: an upper bound like <2.0 also shuts out 2.0's own pre-releases (2.0-rc1). */
type Comparator = { op: Op; v: string; noPreOfBound?: boolean };

function semverMatcher(range: string): (raw: string) => string | undefined {
  const sets = parseRange(range);
  return (raw) => {
    const v = plain(raw);
    if (v === undefined) return undefined;
    return sets.some((set) => set.every((c) => satisfies(v, c))) ? v : undefined;
  };
}

function satisfies(v: string, c: Comparator): boolean {
  const d = compareVersions(v, c.v);
  switch (c.op) {
    case "<":
      return d < 0 && !(c.noPreOfBound && isPrerelease(v) && compareVersions(releaseOf(v), c.v) === 0);
    case "<=":
      return d <= 0;
    case ">":
      return d > 0;
    case ">=":
      return d >= 0;
    case "=":
      return d === 0;
  }
}

const PARTIAL = /^v?((?:\d+|[xX*])(?:\.(?:\d+|[xX*]))*)(?:-([0-9A-Za-z.-]+))?$/;

/** A version with wildcards: its leading numeric parts, whether it was cut short, its pre-release. */
type Partial = { parts: number[]; complete: boolean; pre?: string };

function parsePartial(s: string, range: string): Partial {
  const m = PARTIAL.exec(s);
  if (!m) throw new PolicyError(`semver range "${range}": "${s}" is not a version`);
  const [, numbers = "", pre] = m;
  const parts: number[] = [];
  for (const p of numbers.split(".")) {
    if (!/^\d+$/.test(p)) break;
    parts.push(Number(p));
  }
  // Like npm, a version with fewer than three parts stands for every version it starts (1.2 = 1.2.x).
  const complete = parts.length >= 3 && parts.length === numbers.split(".").length;
  return { parts, complete, ...(pre ? { pre } : {}) };
}

const str = (p: Partial) => p.parts.join(".") + (p.pre ? `-${p.pre}` : "");
/** The smallest version above every version starting with parts[0..i]: 1.2.3 bumped at 1 -> 1.3. */
const bump = (parts: number[], i: number) => [...parts.slice(0, i), (parts[i] ?? 0) + 1].join(".");

function parseRange(range: string): Comparator[][] {
  const sets: Comparator[][] = [];
  for (const alt of range.split("||")) {
    const text = alt.trim().replace(/,/g, " ");
    const [, from, to] = /^(\S+)\s+-\s+(\S+)$/.exec(text) ?? [];
    if (from !== undefined && to !== undefined) {
      const lo = parsePartial(from, range);
      const hi = parsePartial(to, range);
      const set: Comparator[] = [{ op: ">=", v: str(lo) }];
      if (hi.complete) set.push({ op: "<=", v: str(hi) });
      else if (hi.parts.length) set.push({ op: "<", v: bump(hi.parts, hi.parts.length - 1), noPreOfBound: true });
      sets.push(set);
      continue;
    }
    // Operators may be written apart from their version (">= 1.0").
    const tokens = text
      .replace(/(>=|<=|>|<|=|\^|~>|~)\s+/g, "$1")
      .split(/\s+/)
      .filter(Boolean);
    sets.push(tokens.flatMap((t) => comparators(t, range)));
  }
  return sets;
}

function comparators(token: string, range: string): Comparator[] {
  // Matches every token: the operator is optional and the rest may be anything.
  const [, op = "", version = ""] = /^(>=|<=|>|<|=|\^|~>|~)?(.*)$/.exec(token) ?? [];
  const p = parsePartial(version, range);
  const n = p.parts.length;
  const lower: Comparator = { op: ">=", v: n ? str(p) : "0" };
  const below = (i: number): Comparator => ({ op: "<", v: bump(p.parts, i), noPreOfBound: true });
  switch (op) {
    case "^": {
      if (!n) return [];
      const firstNonZero = p.parts.findIndex((x) => x !== 0);
      return [lower, below(firstNonZero >= 0 ? firstNonZero : n - 1)];
    }
    case "~":
    case "~>":
      return n ? [lower, below(n >= 2 ? 1 : 0)] : [];
    case ">":
      return !n ? [{ op: "<", v: "0" }] : p.complete ? [{ op: ">", v: str(p) }] : [{ op: ">=", v: bump(p.parts, n - 1) }];
    case ">=":
      return n ? [lower] : [];
    case "<":
      return n ? [{ op: "<", v: str(p), noPreOfBound: !p.pre }] : [{ op: "<", v: "0" }];
    case "<=":
      return !n ? [] : p.complete ? [{ op: "<=", v: str(p) }] : [below(n - 1)];
    default:
      // "=" or no operator: exactly that version, or every version it starts when cut short.
      return !n ? [] : p.complete ? [{ op: "=", v: str(p) }] : [lower, below(n - 1)];
  }
}

// ---- calendar versions ------------------------------------------------------------------

const CALVER_TOKENS: Record<string, { re: string; check?: (n: number) => boolean }> = {
  YYYY: { re: "\\d{4}" },
  YY: { re: "\\d{1,3}" },
  "0Y": { re: "\\d{2,3}" },
  MM: { re: "[1-9]\\d?", check: (n) => n >= 1 && n <= 12 },
  "0M": { re: "\\d{2}", check: (n) => n >= 1 && n <= 12 },
  WW: { re: "[1-9]\\d?", check: (n) => n >= 1 && n <= 53 },
  "0W": { re: "\\d{2}", check: (n) => n >= 1 && n <= 53 },
  DD: { re: "[1-9]\\d?", check: (n) => n >= 1 && n <= 31 },
  "0D": { re: "\\d{2}", check: (n) => n >= 1 && n <= 31 },
  MAJOR: { re: "\\d+" },
  MINOR: { re: "\\d+" },
  MICRO: { re: "\\d+" },
};

function calverMatcher(format: string): (raw: string) => string | undefined {
  const pieces = format.split(/([._-])/);
  const checks: ((n: number) => boolean)[] = [];
  let re = "";
  for (const [i, piece] of pieces.entries()) {
    if (i % 2 === 1) {
      re += `\\${piece}`;
      continue;
    }
    const t = CALVER_TOKENS[piece];
    if (!t) throw new PolicyError(`calver format "${format}": unknown part "${piece}" (use ${Object.keys(CALVER_TOKENS).join(", ")})`);
    re += `(${t.re})`;
    checks.push(t.check ?? (() => true));
  }
  // A pre-release or modifier may follow the format (2024.01-rc1); the policy's pre-release switch decides.
  const matcher = new RegExp(`^v?${re}(?:[-.]?(?:alpha|beta|rc|pre|preview|dev)[.\\d]*|-[0-9A-Za-z.]+)?$`, "i");
  return (raw) => {
    const m = matcher.exec(raw);
    if (!m) return undefined;
    for (const [i, check] of checks.entries()) if (!check(Number(m[i + 1]))) return undefined;
    return raw.replace(/^v/i, "");
  };
}

// ---- regular expressions ----------------------------------------------------------------

function regexMatcher(pattern: string): (raw: string) => string | undefined {
  let re: RegExp;
  try {
    re = new RegExp(pattern);
  } catch (err) {
    throw new PolicyError(`regex "${pattern}": ${(err as Error).message}`);
  }
  // Count the groups by matching the empty string against an always-matching alternative.
  const groups = (new RegExp(`${pattern}|`).exec("")?.length ?? 1) - 1;
  if (groups < 1) throw new PolicyError(`regex "${pattern}": needs a capture group holding the version`);
  return (raw) => {
    const m = re.exec(raw);
    if (!m) return undefined;
    const v =
      m.groups?.version ??
      m
        .slice(1)
        .filter((g) => g !== undefined)
        .join(".");
    return v ? v : undefined;
  };
}
