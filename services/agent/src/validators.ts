/**
 * The validators every submission passes before it becomes a proposal: the recipe passes the
 * catalog schema, every patch applies, it answers the advisories it was asked to, and it is not
 * one already rejected for this key. A validator that cannot run here is recorded as `not-run`
 * (a trial build, until the builder takes trial requests): such a proposal waits for review
 * and is never applied by the `validated` policy.
 */
import { isAffected, packageSpecSchema, type Osv, type PackageSpec } from "@homeostat/catalog";
import { canonicalJson, sha256Digest } from "@homeostat/core";

export type Candidate = { recipe: PackageSpec; patches: { path: string; text: string }[] };
export type ValidatorResult = { name: string; status: "passed" | "failed" | "not-run"; detail: string };

export type RepairContext = {
  name: string;
  /** The advisories the package needs an answer to (NeedsAttention), by id. */
  advisories: Osv[];
  /** Input digests of the proposals rejected for this key. */
  rejected: string[];
};

/** What identifies a candidate: its recipe and its patches' text. */
export function candidateDigest(c: Candidate): string {
  return sha256Digest(canonicalJson({ recipe: c.recipe, patches: c.patches }));
}

export async function validateCandidate(c: Candidate, ctx: RepairContext, applies: (file: string) => Promise<true | string>): Promise<ValidatorResult[]> {
  const out: ValidatorResult[] = [];
  const schema = packageSpecSchema.safeParse(c.recipe);
  out.push(schema.success ? { name: "catalog-schema", status: "passed", detail: "the recipe is a valid catalog entry" } : { name: "catalog-schema", status: "failed", detail: schema.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ") });
  for (const p of c.patches) {
    const ok = await applies(p.path);
    out.push(ok === true ? { name: `patch-applies:${p.path}`, status: "passed", detail: "applies with patch -p1" } : { name: `patch-applies:${p.path}`, status: ok.includes("not unpacked") ? "not-run" : "failed", detail: ok });
  }
  for (const advisory of ctx.advisories) {
    const outside = !isAffected(advisory, ctx.name, c.recipe.version);
    const patched = c.recipe.patches.some((p) => p.fixes.includes(advisory.id));
    out.push(outside || patched
      ? { name: `advisory:${advisory.id}`, status: "passed", detail: outside ? `${c.recipe.version} is outside every affected range` : "a patch names it in fixes" }
      : { name: `advisory:${advisory.id}`, status: "failed", detail: `${c.recipe.version} is affected and no patch names ${advisory.id} in fixes` });
  }
  const digest = candidateDigest(c);
  out.push(ctx.rejected.includes(digest) ? { name: "not-rejected", status: "failed", detail: "a person already rejected exactly this change" } : { name: "not-rejected", status: "passed", detail: "differs from every rejected proposal" });
  out.push({ name: "trial-build", status: "not-run", detail: "trial builds are not wired to the builder yet: review the change" });
  return out;
}
