/**
 * OSV: vulnerability advisories in the Open Source Vulnerability format
 * (https://ossf.github.io/osv-schema/, 1.6), the one home of that concept — its schema, which
 * catalog packages an advisory names, and whether a version is affected and by what it is fixed.
 *
 * Ingest uses it to map advisories to keys; desired-state evaluation uses the same functions
 * to decide whether a built version must move. Evaluation follows the spec's algorithm: events
 * sorted by version, `introduced` opens a vulnerable interval, `fixed` closes it at that
 * version, `last_affected` closes it after that version; `limit` bounds the whole range; the
 * explicit `versions` list is affected as well. SEMVER ranges compare as SemVer 2.0, ECOSYSTEM
 * ranges with `compareVersions` (version.ts). GIT ranges name commits, not versions: they are
 * kept (an `affected[]` entry may even have no package, only GIT ranges of a repository) and
 * `assessAdvisory` reports each with why it was not compared to the version — matching a
 * pinned commit is the reconciler's business, and a package built from a tarball has no commit.
 * `severity` is validated (CVSS v3/v4 vectors, cvss.ts) and `severities` reads it as scores.
 */
import semver from "semver";
import { z } from "zod";
import { CvssError, parseCvssV3, parseCvssV4, type CvssRating } from "./cvss.ts";
import { answerFor } from "./answers.ts";
import { compareVersions } from "./version.ts";

export { CvssError, cvssRating, parseCvssV3, parseCvssV4, type CvssRating, type CvssV3, type CvssV4 } from "./cvss.ts";

const text = (max: number) => z.string().min(1).max(max);
/** RFC 3339 timestamp, as OSV requires; compared as instants, never as strings. */
const timestamp = z
  .string()
  .max(64)
  .refine((s) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i.test(s) && !Number.isNaN(Date.parse(s)), "must be an RFC 3339 timestamp");
/** `database_specific` / `ecosystem_specific`: free-form JSON objects, kept as given. */
const freeForm = z.record(z.string().max(256), z.unknown());

const eventSchema = z.union([
  z.strictObject({ introduced: text(256) }),
  z.strictObject({ fixed: text(256) }),
  z.strictObject({ last_affected: text(256) }),
  z.strictObject({ limit: text(256) }),
]);
export type OsvEvent = z.infer<typeof eventSchema>;

export const osvRangeSchema = z
  .object({
    type: z.enum(["SEMVER", "ECOSYSTEM", "GIT"]),
    repo: z.string().min(1).max(4096).optional(),
    events: z.array(eventSchema).min(1).max(1024),
    database_specific: freeForm.optional(),
  })
  .refine((r) => r.type !== "GIT" || r.repo !== undefined, { message: "a GIT range names its repo", path: ["repo"] });
export type OsvRange = z.infer<typeof osvRangeSchema>;

export const osvPackageSchema = z.object({
  ecosystem: text(256),
  name: text(512),
  purl: z.string().max(2048).optional(),
});

/** One `severity[]` entry; CVSS scores are vector strings, checked here so a stored one always parses. */
export const osvSeveritySchema = z.object({ type: z.enum(["CVSS_V2", "CVSS_V3", "CVSS_V4", "Ubuntu"]), score: text(512) }).superRefine((s, ctx) => {
  try {
    if (s.type === "CVSS_V3") parseCvssV3(s.score);
    else if (s.type === "CVSS_V4") parseCvssV4(s.score);
    else if (s.type === "CVSS_V2" && !/^(AV:[LAN]\/AC:[HML]\/Au:[MSN]\/C:[NPC]\/I:[NPC]\/A:[NPC])(\/[A-Za-z]+:[A-Z]{1,3})*$/.test(s.score))
      throw new CvssError("not a CVSS v2 vector (AV:…/AC:…/Au:…/C:…/I:…/A:…)");
  } catch (err) {
    if (!(err instanceof CvssError)) throw err;
    ctx.addIssue({ code: "custom", path: ["score"], message: `${s.type}: ${err.message}` });
  }
});
export type OsvSeverity = z.infer<typeof osvSeveritySchema>;
const severityList = z.array(osvSeveritySchema).max(16);

export const osvAffectedSchema = z
  .object({
    package: osvPackageSchema.optional(),
    severity: severityList.optional(),
    ranges: z.array(osvRangeSchema).max(1024).optional(),
    versions: z.array(text(256)).max(100_000).optional(),
    ecosystem_specific: freeForm.optional(),
    database_specific: freeForm.optional(),
  })
  // OSV 1.6: an entry may leave out the package when it is about a git repository only.
  .refine((a) => a.package !== undefined || (a.ranges !== undefined && a.ranges.length > 0 && a.ranges.every((r) => r.type === "GIT")), {
    message: "an affected entry without a package has GIT ranges only (and at least one)",
    path: ["package"],
  });
export type OsvAffected = z.infer<typeof osvAffectedSchema>;

const referenceSchema = z.object({ type: text(64), url: text(4096) });

/** The fields of OSV 1.6 Homeostat reads or keeps; fields outside the schema are dropped. */
export const osvSchema = z.object({
  schema_version: z.string().max(32).optional(),
  id: z
    .string()
    .min(1)
    .max(256)
    .regex(/^[A-Za-z0-9][A-Za-z0-9._:+-]*$/, "letters, digits and . _ : + - only"),
  modified: timestamp,
  published: timestamp.optional(),
  withdrawn: timestamp.optional(),
  aliases: z.array(text(256)).max(1024).optional(),
  upstream: z.array(text(256)).max(1024).optional(),
  related: z.array(text(256)).max(1024).optional(),
  summary: z.string().max(4096).optional(),
  details: z.string().max(65_536).optional(),
  severity: severityList.optional(),
  affected: z.array(osvAffectedSchema).max(10_000).optional(),
  references: z.array(referenceSchema).max(1024).optional(),
  credits: z
    .array(z.object({ name: text(1024), contact: z.array(text(1024)).max(64).optional(), type: text(64).optional() }))
    .max(256)
    .optional(),
  database_specific: freeForm.optional(),
});
export type Osv = z.infer<typeof osvSchema>;

/** A severity entry as read: CVSS v3 with its base score and rating, v4 as its checked vector, others as given. */
export type SeverityScore = { type: OsvSeverity["type"]; vector: string; baseScore?: number; rating?: CvssRating };

/** Every severity the advisory states (its own, then its affected entries'), each once, v3 scored. */
export function severities(advisory: Osv): SeverityScore[] {
  const all = [...(advisory.severity ?? []), ...(advisory.affected ?? []).flatMap((a) => a.severity ?? [])];
  const seen = new Set<string>();
  const out: SeverityScore[] = [];
  for (const s of all) {
    if (seen.has(`${s.type} ${s.score}`)) continue;
    seen.add(`${s.type} ${s.score}`);
    if (s.type === "CVSS_V3") {
      const v3 = parseCvssV3(s.score);
      out.push({ type: s.type, vector: s.score, baseScore: v3.baseScore, rating: v3.rating });
    } else out.push({ type: s.type, vector: s.score });
  }
  return out;
}

/**
 * The package name a purl names when it is `pkg:generic/[namespace/]name[@version][?…][#…]`,
 * the purl type for software with no package ecosystem (what the catalog builds from source).
 */
export function genericPurlName(purl: string): string | undefined {
  const path = /^pkg:generic\/([^@?#]+)/i.exec(purl)?.[1];
  if (path === undefined) return undefined;
  const name = path
    .split("/")
    .filter((p) => p !== "")
    .pop();
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
 * An entry without a package names no package by name (see `advisoryRepositories`).
 */
export function namesPackage(affected: OsvAffected, name: string): boolean {
  const p = affected.package;
  return p !== undefined && (p.name === name || (p.purl !== undefined && genericPurlName(p.purl) === name));
}

/** Every name an advisory's affected entries use (package names and generic purl names), each once. */
export function advisoryPackageNames(advisory: Osv): string[] {
  const names = new Set<string>();
  for (const a of advisory.affected ?? []) {
    if (a.package === undefined) continue;
    names.add(a.package.name);
    const p = a.package.purl === undefined ? undefined : genericPurlName(a.package.purl);
    if (p !== undefined) names.add(p);
  }
  return [...names];
}

/** The repositories named by the GIT ranges of package-less `affected[]` entries, each once. */
export function advisoryRepositories(advisory: Osv): string[] {
  const repos = new Set<string>();
  for (const a of advisory.affected ?? []) if (a.package === undefined) for (const r of a.ranges ?? []) if (r.repo !== undefined) repos.add(r.repo);
  return [...repos];
}

/** A GIT range that `assessAdvisory` did not compare with the version, and why. */
export type GitRangeNote = { repo: string; events: OsvEvent[]; reason: string };
export type Assessment = { affected: boolean; gitRanges: GitRangeNote[] };

/**
 * Whether `version` of catalog package `packageName` is affected, with every GIT range of the
 * entries about it (named, or package-less: a stored advisory keeps only the package-less
 * entries ingest matched to this package's repository) and why it was not evaluated here.
 * `sourceUrl` is the package's catalog source; a `git+…#<commit>` source has a commit for the
 * reconciler to match, any other has none, so its GIT ranges can never apply.
 */
export function assessAdvisory(advisory: Osv, packageName: string, version: string, sourceUrl?: string): Assessment {
  const gitRanges: GitRangeNote[] = [];
  let affected = false;
  const gitReason =
    sourceUrl === undefined
      ? "GIT range: names commits, not versions; not compared with the version"
      : sourceUrl.startsWith("git+")
        ? "GIT range: the source is a pinned git commit; the reconciler matches the commit, not the version"
        : "GIT range ignored: the package's source is not a git repository, so it has no commit to match";
  for (const a of advisory.affected ?? []) {
    const named = namesPackage(a, packageName);
    if (!named && a.package !== undefined) continue;
    if (named && a.versions?.includes(version)) affected = true;
    for (const r of a.ranges ?? []) {
      // The range schema requires a repo on every GIT range.
      if (r.type === "GIT") gitRanges.push({ repo: r.repo ?? "", events: r.events, reason: gitReason });
      else if (named && inRange(r, version)) affected = true;
    }
  }
  return { affected: affected && advisory.withdrawn === undefined, gitRanges };
}

/**
 * isAffected's answers by advisory. A stored advisory is parsed once and its value shared by
 * every run that lists it, and each run asks again about the same version: a profiled
 * bench:storm burst (3,000 advisories a package) had the reconciler spend 2.3 s of CPU evaluating
 * the same ranges again, where the whole burst cost it 6 s unprofiled.
 */
const affectedAnswers = new WeakMap<Osv, Map<string, boolean>>();

/** True when `version` of catalog package `packageName` is affected by the advisory (an advisory object must not change once asked about). */
export function isAffected(advisory: Osv, packageName: string, version: string): boolean {
  return answerFor(affectedAnswers, advisory, packageName, version, () => assessAdvisory(advisory, packageName, version).affected);
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
