/**
 * CVSS vector strings as OSV carries them in `severity[].score`: v3.0/v3.1 parsed into the base
 * score and its qualitative rating (FIRST's CVSS v3.1 specification, section 7 formulas and
 * appendix A rounding); v4.0 validated and kept as a vector. A v4 score needs the
 * specification's table of 270 macro-vector scores, which is not carried here: a v4 vector is
 * checked metric by metric and reported without a number.
 */

export type CvssRating = "None" | "Low" | "Medium" | "High" | "Critical";
export type CvssV3 = { version: "3.0" | "3.1"; vector: string; baseScore: number; rating: CvssRating };
export type CvssV4 = { version: "4.0"; vector: string };

const V3_BASE: Record<string, readonly string[]> = {
  AV: ["N", "A", "L", "P"],
  AC: ["L", "H"],
  PR: ["N", "L", "H"],
  UI: ["N", "R"],
  S: ["U", "C"],
  C: ["H", "L", "N"],
  I: ["H", "L", "N"],
  A: ["H", "L", "N"],
};
const V3_OPTIONAL: Record<string, readonly string[]> = {
  E: ["X", "U", "P", "F", "H"],
  RL: ["X", "O", "T", "W", "U"],
  RC: ["X", "U", "R", "C"],
  CR: ["X", "L", "M", "H"],
  IR: ["X", "L", "M", "H"],
  AR: ["X", "L", "M", "H"],
  MAV: ["X", "N", "A", "L", "P"],
  MAC: ["X", "L", "H"],
  MPR: ["X", "N", "L", "H"],
  MUI: ["X", "N", "R"],
  MS: ["X", "U", "C"],
  MC: ["X", "H", "L", "N"],
  MI: ["X", "H", "L", "N"],
  MA: ["X", "H", "L", "N"],
};
const V4_BASE: Record<string, readonly string[]> = {
  AV: ["N", "A", "L", "P"],
  AC: ["L", "H"],
  AT: ["N", "P"],
  PR: ["N", "L", "H"],
  UI: ["N", "P", "A"],
  VC: ["H", "L", "N"],
  VI: ["H", "L", "N"],
  VA: ["H", "L", "N"],
  SC: ["H", "L", "N"],
  SI: ["H", "L", "N"],
  SA: ["H", "L", "N"],
};
const V4_OPTIONAL: Record<string, readonly string[]> = {
  E: ["X", "A", "P", "U"],
  CR: ["X", "H", "M", "L"],
  IR: ["X", "H", "M", "L"],
  AR: ["X", "H", "M", "L"],
  MAV: ["X", "N", "A", "L", "P"],
  MAC: ["X", "L", "H"],
  MAT: ["X", "N", "P"],
  MPR: ["X", "N", "L", "H"],
  MUI: ["X", "N", "P", "A"],
  MVC: ["X", "H", "L", "N"],
  MVI: ["X", "H", "L", "N"],
  MVA: ["X", "H", "L", "N"],
  MSC: ["X", "H", "L", "N"],
  MSI: ["X", "S", "H", "L", "N"],
  MSA: ["X", "S", "H", "L", "N"],
  S: ["X", "N", "P"],
  AU: ["X", "N", "Y"],
  R: ["X", "A", "U", "I"],
  V: ["X", "D", "C"],
  RE: ["X", "L", "M", "H"],
  U: ["X", "Clear", "Green", "Amber", "Red"],
};

export class CvssError extends Error {}

/** The metrics of `vector` after its `CVSS:<version>` prefix; throws CvssError naming what is wrong. */
function metrics(
  vector: string,
  versions: readonly string[],
  base: Record<string, readonly string[]>,
  optional: Record<string, readonly string[]>,
): { version: string; values: Map<string, string> } {
  if (vector.length > 512) throw new CvssError("a CVSS vector is at most 512 characters");
  const [head, ...parts] = vector.split("/");
  const version = /^CVSS:(\d\.\d)$/.exec(head ?? "")?.[1];
  if (version === undefined || !versions.includes(version)) throw new CvssError(`must start with ${versions.map((v) => `CVSS:${v}/`).join(" or ")}`);
  const values = new Map<string, string>();
  for (const part of parts) {
    const [name, value, extra] = part.split(":");
    const allowed = name === undefined ? undefined : (base[name] ?? optional[name]);
    if (name === undefined || allowed === undefined || value === undefined || extra !== undefined)
      throw new CvssError(`"${part}" is not a CVSS ${version} metric`);
    if (!allowed.includes(value)) throw new CvssError(`${name}:${value}: ${name} takes ${allowed.join(", ")}`);
    if (values.has(name)) throw new CvssError(`${name} is given twice`);
    values.set(name, value);
  }
  const missing = Object.keys(base).filter((m) => !values.has(m));
  if (missing.length) throw new CvssError(`base metrics missing: ${missing.join(", ")}`);
  return { version, values };
}

/** Parses a CVSS v3.0/v3.1 vector into its base score; throws CvssError when it is not one. */
export function parseCvssV3(vector: string): CvssV3 {
  const { version, values } = metrics(vector, ["3.0", "3.1"], V3_BASE, V3_OPTIONAL);
  // metrics() checked that every base metric is present with an allowed value.
  const weight = (metric: string, table: Record<string, number>): number => {
    const w = table[values.get(metric) ?? ""];
    if (w === undefined) throw new CvssError(`${metric}: no weight for ${values.get(metric) ?? "a missing value"}`);
    return w;
  };
  const changed = values.get("S") === "C";
  const av = weight("AV", { N: 0.85, A: 0.62, L: 0.55, P: 0.2 });
  const ac = weight("AC", { L: 0.77, H: 0.44 });
  const pr = weight("PR", { N: 0.85, L: changed ? 0.68 : 0.62, H: changed ? 0.5 : 0.27 });
  const ui = weight("UI", { N: 0.85, R: 0.62 });
  const cia = (k: string) => weight(k, { H: 0.56, L: 0.22, N: 0 });
  const iss = 1 - (1 - cia("C")) * (1 - cia("I")) * (1 - cia("A"));
  const impact = changed ? 7.52 * (iss - 0.029) - 3.25 * (iss - 0.02) ** 15 : 6.42 * iss;
  const exploitability = 8.22 * av * ac * pr * ui;
  const roundUp = version === "3.1" ? roundUp31 : (x: number) => Math.ceil(x * 10) / 10;
  const baseScore = impact <= 0 ? 0 : roundUp(Math.min((changed ? 1.08 : 1) * (impact + exploitability), 10));
  return { version: version as "3.0" | "3.1", vector, baseScore, rating: cvssRating(baseScore) };
}

/** Validates a CVSS v4.0 vector (every base metric once, known metrics and values only). */
export function parseCvssV4(vector: string): CvssV4 {
  metrics(vector, ["4.0"], V4_BASE, V4_OPTIONAL);
  return { version: "4.0", vector };
}

/** Qualitative severity of a CVSS score (the v3.1 and v4.0 scales agree). */
export function cvssRating(score: number): CvssRating {
  return score === 0 ? "None" : score < 4 ? "Low" : score < 7 ? "Medium" : score < 9 ? "High" : "Critical";
}

/** CVSS v3.1 Roundup (appendix A): the smallest one-decimal number ≥ x, free of floating-point drift. */
function roundUp31(x: number): number {
  const scaled = Math.round(x * 100_000);
  return scaled % 10_000 === 0 ? scaled / 100_000 : (Math.floor(scaled / 10_000) + 1) / 10;
}
