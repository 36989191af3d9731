/**
 * Version: ordering of upstream version strings. Dotted numeric parts compare as numbers,
 * other parts as text, and a pre-release (1.0-rc1, or 1.0rc1 written without the dash) sorts
 * before its release (1.0). A trailing letter that is not a pre-release word stays a later
 * release, as upstreams such as OpenSSL use it (1.1.1w > 1.1.1).
 */
export function compareVersions(a: string, b: string): number {
  const [ma, pa] = splitPre(a);
  const [mb, pb] = splitPre(b);
  const c = compareParts(ma, mb);
  if (c !== 0) return c;
  if (pa === pb) return 0;
  if (pa === undefined) return 1;
  if (pb === undefined) return -1;
  return compareParts(pa, pb);
}

/** [release, pre-release or undefined]: 1.0-rc1 -> [1.0, rc1], 3.0rc1 -> [3.0, rc1], 1.1.1w -> [1.1.1w]. */
function splitPre(v: string): [string, string | undefined] {
  const clean = stripBuild(v);
  const dash = clean.indexOf("-");
  if (dash >= 0) return [clean.slice(0, dash), clean.slice(dash + 1)];
  const [, release, pre] = PRE_WORD.exec(clean) ?? [];
  return release !== undefined && pre !== undefined ? [release, pre] : [clean, undefined];
}

/** A pre-release word glued to the release (3.0rc1, 2.0.beta2, 1.0.dev3). */
const PRE_WORD = /^(\d.*?)[._]?((?:alpha|beta|rc|pre|preview|dev)[.\d]*)$/i;

function compareParts(a: string, b: string): number {
  const xa = a.split(/[.\-_]/);
  const xb = b.split(/[.\-_]/);
  for (let i = 0; i < Math.max(xa.length, xb.length); i++) {
    const c = compareRuns(xa[i] ?? "0", xb[i] ?? "0");
    if (c !== 0) return c;
  }
  return 0;
}

/** Compares one part run by run, digits as numbers, so that rc2 < rc10 and 1a < 1b. */
function compareRuns(p: string, q: string): number {
  const rp = p.match(/\d+|\D+/g) ?? [];
  const rq = q.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.max(rp.length, rq.length); i++) {
    const x = rp[i];
    const y = rq[i];
    if (x === undefined) return -1;
    if (y === undefined) return 1;
    const nx = /^\d/.test(x);
    const ny = /^\d/.test(y);
    // A number outranks text in the same position (1.0.1 > 1.0.beta).
    const c = nx && ny ? Math.sign(Number(x) - Number(y)) : nx ? 1 : ny ? -1 : x < y ? -1 : x > y ? 1 : 0;
    if (c !== 0) return c;
  }
  return 0;
}

export function maxVersion(versions: Iterable<string>): string | undefined {
  let best: string | undefined;
  for (const v of versions) if (best === undefined || compareVersions(v, best) > 0) best = v;
  return best;
}

/** True for a pre-release: a `-suffix` (1.0-rc1) or a pre-release word inside a part (3.0rc1, 2.0.beta2). */
export function isPrerelease(v: string): boolean {
  return splitPre(v)[1] !== undefined;
}

/** The release a version is a pre-release of (1.0-rc1 -> 1.0, 3.0rc1 -> 3.0), or the version itself. */
export function releaseOf(v: string): string {
  return splitPre(v)[0];
}

function stripBuild(v: string): string {
  return v.replace(/^v/i, "").split("+", 1)[0] ?? "";
}
