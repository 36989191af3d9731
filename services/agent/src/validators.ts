/**
 * The validators every submission passes before it becomes a proposal: the recipe passes the
 * catalog schema, every patch applies, it answers the advisories it was asked to, it keeps the
 * package's test (unchanged, or adds one where there was none), it is not one already rejected
 * for this key, and its trial build (trial.ts: the builder's sandbox, the test included) passes.
 * A patch that cannot be checked here (no unpacked source) is recorded as `not-run`; the trial
 * build still applies it.
 */
import { isAffected, packageSpecSchema, type Osv, type PackageSpec, type Release } from "@homeostat/catalog";
import { canonicalJson, sha256Digest, type TrialOutcome } from "@homeostat/core";

export type Candidate = { recipe: PackageSpec; patches: { path: string; text: string }[] };
export type ValidatorResult = { name: string; status: "passed" | "failed" | "not-run"; detail: string };

export type RepairContext = {
  name: string;
  /** The advisories the package needs an answer to (NeedsAttention), by id. */
  advisories: Osv[];
  /** Input digests of the proposals rejected for this key. */
  rejected: string[];
  /** Sources the candidate may name, by sha256: the catalog's and the package's release facts. */
  sources: { version: string; sha256: string }[];
  /** The package's test as the catalog has it now. */
  test: string | undefined;
  /** Builds the candidate on trial. */
  trial: (c: Candidate) => Promise<TrialOutcome>;
};

/** The sources a candidate of this package may name: its pinned one at its pinned version, and each release fact's. */
export function knownSources(spec: PackageSpec, releases: readonly Release[]): RepairContext["sources"] {
  return [{ version: spec.version, sha256: spec.source.sha256 }, ...releases.map((r) => ({ version: r.version, sha256: r.sha256 }))];
}

/** What identifies a candidate: its recipe and its patches' text. */
export function candidateDigest(c: Candidate): string {
  return sha256Digest(canonicalJson({ recipe: c.recipe, patches: c.patches }));
}

export async function validateCandidate(c: Candidate, ctx: RepairContext, applies: (file: string) => Promise<true | string>): Promise<ValidatorResult[]> {
  const out: ValidatorResult[] = [];
  const schema = packageSpecSchema.safeParse(c.recipe);
  out.push(
    schema.success
      ? { name: "catalog-schema", status: "passed", detail: "the recipe is a valid catalog entry" }
      : { name: "catalog-schema", status: "failed", detail: schema.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ") },
  );
  for (const p of c.patches) {
    const ok = await applies(p.path);
    out.push(
      ok === true
        ? { name: `patch-applies:${p.path}`, status: "passed", detail: "applies with patch -p1" }
        : { name: `patch-applies:${p.path}`, status: ok.includes("not unpacked") ? "not-run" : "failed", detail: ok },
    );
  }
  for (const advisory of ctx.advisories) {
    const outside = !isAffected(advisory, ctx.name, c.recipe.version);
    const patched = c.recipe.patches.some((p) => p.fixes.includes(advisory.id));
    out.push(
      outside || patched
        ? {
            name: `advisory:${advisory.id}`,
            status: "passed",
            detail: outside ? `${c.recipe.version} is outside every affected range` : "a patch names it in fixes",
          }
        : { name: `advisory:${advisory.id}`, status: "failed", detail: `${c.recipe.version} is affected and no patch names ${advisory.id} in fixes` },
    );
  }
  // A model never chooses what is fetched: only a source the catalog or a release fact vouches for.
  const known = ctx.sources.some((k) => k.sha256 === c.recipe.source.sha256 && k.version === c.recipe.version);
  out.push(
    known
      ? { name: "source-known", status: "passed", detail: "the source is the catalog's or a recorded release's" }
      : {
          name: "source-known",
          status: "failed",
          detail: `no release fact of ${c.recipe.version} has sha256 ${c.recipe.source.sha256}: name the source of a recorded release`,
        },
  );
  const digest = candidateDigest(c);
  out.push(
    ctx.rejected.includes(digest)
      ? { name: "not-rejected", status: "failed", detail: "a person already rejected exactly this change" }
      : { name: "not-rejected", status: "passed", detail: "differs from every rejected proposal" },
  );
  out.push(
    ctx.test === undefined
      ? c.recipe.test
        ? { name: "test-kept", status: "passed", detail: "adds a test" }
        : { name: "test-kept", status: "failed", detail: "the package has no test: add one (test) that shows the change works" }
      : c.recipe.test === ctx.test
        ? { name: "test-kept", status: "passed", detail: "the package's test is unchanged" }
        : { name: "test-kept", status: "failed", detail: "the package's test may not be changed or removed" },
  );
  // A trial build is the one expensive check: only a candidate that passed the others is built.
  if (out.some((v) => v.status === "failed")) out.push({ name: "trial-build", status: "not-run", detail: "not built: fix the failures above first" });
  else {
    const trial = await ctx.trial(c);
    out.push({
      name: "trial-build",
      status: trial.passed ? "passed" : "failed",
      detail: `${trial.detail}${trial.logTail ? `\n${trial.logTail.slice(-4000)}` : ""}`,
    });
  }
  return out;
}
