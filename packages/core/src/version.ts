/**
 * Version: ordering of upstream version strings. Dotted numeric parts compare as numbers,
 * other parts as text, and a pre-release suffix (1.0-rc1) sorts before its release (1.0).
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

function splitPre(v: string): [string, string | undefined] {
  const clean = v.replace(/^v/i, "").split("+")[0]!;
  const dash = clean.indexOf("-");
  return dash < 0 ? [clean, undefined] : [clean.slice(0, dash), clean.slice(dash + 1)];
}

function compareParts(a: string, b: string): number {
  const xa = a.split(/[.\-_]/);
  const xb = b.split(/[.\-_]/);
  for (let i = 0; i < Math.max(xa.length, xb.length); i++) {
    const p = xa[i] ?? "0";
    const q = xb[i] ?? "0";
    const np = /^\d+$/.test(p);
    const nq = /^\d+$/.test(q);
    const c = np && nq ? Number(p) - Number(q) : np ? 1 : nq ? -1 : p < q ? -1 : p > q ? 1 : 0;
    if (c !== 0) return Math.sign(c);
  }
  return 0;
}

export function maxVersion(versions: Iterable<string>): string | undefined {
  let best: string | undefined;
  for (const v of versions) if (best === undefined || compareVersions(v, best) > 0) best = v;
  return best;
}
