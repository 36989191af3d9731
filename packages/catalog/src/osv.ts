/**
 * OSV: vulnerability advisories in the Open Source Vulnerability format
 * (https://ossf.github.io/osv-schema/), the one home of that concept — its schema, which
 * catalog packages an advisory names, and whether a version is affected and by what it is fixed.
 *
 * Ingest uses it to map advisories to keys; desired-state evaluation uses the same functions
 * to decide whether a built version must move. Evaluation follows the spec's algorithm: events
 * sorted by version, `introduced` opens a vulnerable interval, `fixed` closes it at that
 * version, `last_affected` closes it after that version; `limit` bounds the whole range; the
 * explicit `versions` list is affected as well. SEMVER ranges compare as SemVer 2.0, ECOSYSTEM
 * ranges with `compareVersions` (version.ts). GIT ranges name commits, not versions, so they
 * never match a version string (their releases appear in `versions` when the database lists them).
 */
import semver from "semver";
import { z } from "zod";
import { compareVersions } from "./version.ts";

const text = (max: number) => z.string().min(1).max(max);
/** RFC 3339 timestamp, as OSV requires; compared as instants, never as strings. */
const timestamp = z.string().max(64).refine((s) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(s) && !Number.isNaN(Date.parse(s)), "must be an RFC 3339 timestamp");

const eventSchema = z.union([
  z.strictObject({ introduced: text(256) }),
  z.strictObject({ fixed: text(256) }),
  z.strictObject({ last_affected: text(256) }),
  z.strictObject({ limit: text(256) }),
]);
export type OsvEvent = z.infer<typeof eventSchema>;

export const osvRangeSchema = z.object({
  type: z.enum(["SEMVER", "ECOSYSTEM", "GIT"]),
  repo: z.string().max(4096).optional(),
  events: z.array(eventSchema).min(1).max(1024),
});
export type OsvRange = z.infer<typeof osvRangeSchema>;

export const osvPackageSchema = z.object({
  ecosystem: text(256),
  name: text(512),
  purl: z.string().max(2048).optional(),
});

export const osvAffectedSchema = z.object({
  package: osvPackageSchema,
  ranges: z.array(osvRangeSchema).max(1024).optional(),
  versions: z.array(text(256)).max(100_000).optional(),
});
export type OsvAffected = z.infer<typeof osvAffectedSchema>;

/** The fields Homeostat reads; others (severity, references, database_specific…) pass through unread. */
export const osvSchema = z.object({
  schema_version: z.string().max(32).optional(),
  id: z.string().min(1).max(256).regex(/^[A-Za-z0-9][A-Za-z0-9._:+-]*$/, "letters, digits and . _ : + - only"),
  modified: timestamp,
  published: timestamp.optional(),
  withdrawn: timestamp.optional(),
  aliases: z.array(text(256)).max(1024).optional(),
  summary: z.string().max(4096).optional(),
  affected: z.array(osvAffectedSchema).max(10_000).optional(),
});
export type Osv = z.infer<typeof osvSchema>;

/**
 * The package name a purl names when it is `pkg:generic/[namespace/]name[@version][?…][#…]`,
 * the purl type for software with no package ecosystem (what the catalog builds from source).
 */
export function genericPurlName(purl: string): string | undefined {
  const m = /^pkg:generic\/([^@?#]+)/i.exec(purl);
  if (!m) return undefined;
  const name = m[1]!.split("/").filter((p) => p !== "").pop();
  if (name === undefined) return undefined;
  try {
    return decodeURIComponent(name);
  } catch {
    return undefined;
  }
}

/**
 * Whether an `affected[]` entry is about catalog package `name`: its package name equals it
 * exactly, or its purl is `pkg:generic/…/<name>`. The ecosystem is not compared: catalog
 * packages are built from upstream source whatever ecosystem reported them, and naming a key
 * that turns out unaffected costs one reconcile, while missing one leaves a hole open.
 */
export function namesPackage(affected: OsvAffected, name: string): boolean {
  return affected.package.name === name || (affected.package.purl !== undefined && genericPurlName(affected.package.purl) === name);
}

/** Every name an advisory's affected entries use (package names and generic purl names), each once. */
export function advisoryPackageNames(advisory: Osv): string[] {
  const names = new Set<string>();
  for (const a of advisory.affected ?? []) {
    names.add(a.package.name);
    const p = a.package.purl === undefined ? undefined : genericPurlName(a.package.purl);
    if (p !== undefined) names.add(p);
  }
  return [...names];
}

/** True when `version` of catalog package `packageName` is affected by the advisory. */
export function isAffected(advisory: Osv, packageName: string, version: string): boolean {
  if (advisory.withdrawn !== undefined) return false;
  for (const a of advisory.affected ?? []) {
    if (!namesPackage(a, packageName)) continue;
    if (a.versions?.includes(version)) return true;
    for (const r of a.ranges ?? []) if (inRange(r, version)) return true;
  }
  return false;
}

/** The versions the advisory says fix `packageName` (its `fixed` events), lowest first, each once. */
export function fixedVersions(advisory: Osv, packageName: string): string[] {
  const out: string[] = [];
  let cmp: (a: string, b: string) => number = compareVersions;
  for (const a of advisory.affected ?? []) {
    if (!namesPackage(a, packageName)) continue;
    for (const r of a.ranges ?? []) {
      if (r.type === "GIT") continue;
      if (r.type === "SEMVER") cmp = compareSemver;
      for (const e of r.events) if ("fixed" in e && !out.includes(e.fixed)) out.push(e.fixed);
    }
  }
  return out.sort(cmp);
}

function inRange(r: OsvRange, version: string): boolean {
  if (r.type === "GIT") return false;
  const cmp = r.type === "SEMVER" ? compareSemver : compareVersions;
  const limits = r.events.flatMap((e) => ("limit" in e ? [e.limit] : []));
  // A limit bounds the range from above: a version at or past every limit is outside it.
  if (limits.length > 0 && limits.every((l) => l !== "*" && cmp(version, l) >= 0)) return false;
  const events = r.events.filter((e) => !("limit" in e)).map((e) => ({ e, at: eventVersion(e) }));
  // Sorted by version ("0" first); stable, so events at one version keep their document order.
  events.sort((x, y) => (x.at === "0" ? (y.at === "0" ? 0 : -1) : y.at === "0" ? 1 : cmp(x.at, y.at)));
  let vulnerable = false;
  for (const { e, at } of events) {
    if ("introduced" in e) {
      if (at === "0" || cmp(version, at) >= 0) vulnerable = true;
    } else if ("fixed" in e) {
      if (cmp(version, at) >= 0) vulnerable = false;
    } else if (cmp(version, at) > 0) {
      vulnerable = false; // last_affected: this version was still affected, later ones are not
    }
  }
  return vulnerable;
}

function eventVersion(e: OsvEvent): string {
  return "introduced" in e ? e.introduced : "fixed" in e ? e.fixed : "last_affected" in e ? e.last_affected : e.limit;
}

/** SemVer 2.0 precedence; a string that is not SemVer (some databases add a "v") falls back to compareVersions. */
function compareSemver(a: string, b: string): number {
  const x = semver.parse(a, { loose: true });
  const y = semver.parse(b, { loose: true });
  return x && y ? semver.compare(x, y) : compareVersions(a, b);
}
