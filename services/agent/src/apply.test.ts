/**
 * Applying a proposal's change (apply.ts) to a real directory catalog and a real git
 * repository: written in place and loadable; a change that would not load refused with the
 * catalog unchanged; a review branch commit whose tree has the change and nothing else; the
 * configured branch fast-forwarded, never moved when someone else moved it meanwhile, and a
 * tag refused; the repository's working tree untouched.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { CatalogSource, loadCatalog } from "@homeostat/catalog";
import { alreadyApplied, applyChange, changeDiff, changeOf, commitProposal, reviewBranch } from "./apply.ts";
import { git, scratchDirs } from "../../../test/fixtures/scratch.ts";

const tmp = scratchDirs();

const sha = "0".repeat(64);
const recipe = (steps: string) => `name: hello\nversion: "1.0"\nsource:\n  url: ../sources/hello.tar.gz\n  sha256: "${sha}"\nbuild:\n  steps: [${steps}]\n`;

function writeCatalog(dir: string, steps = "make"): void {
  mkdirSync(path.join(dir, "packages"), { recursive: true });
  writeFileSync(path.join(dir, "packages", "hello.yaml"), recipe(steps));
}

const proposalOf = (steps: string) => ({ key: "package/hello" as const, file: "packages/hello.yaml", recipe: recipe(steps), patches: [] });

test("a directory catalog: the change written in place, loadable, its diff shown; a change that does not load is refused", async () => {
  const root = tmp("apply-dir-");
  const dir = path.join(root, "catalog");
  writeCatalog(dir);
  const current = await loadCatalog(dir);
  const p = proposalOf("make, make check");
  const diff = await changeDiff(current, changeOf(p));
  assert.match(diff, /^--- a\/packages\/hello.yaml\n\+\+\+ b\/packages\/hello.yaml\n/);
  assert.match(diff, /^- {2}steps: \[make\]$/m);
  assert.match(diff, /^\+ {2}steps: \[make, make check\]$/m);
  assert.equal(alreadyApplied(current, p), false);

  const revision = await applyChange({ dir }, current, changeOf(p), { scratch: path.join(root, "scratch"), message: "m" });
  const after = await loadCatalog(dir);
  assert.equal(after.revision, revision, "the revision returned is the catalog's now");
  assert.deepEqual(after.packages.get("hello")?.build.steps, ["make", "make check"]);
  assert.equal(alreadyApplied(after, p), true);

  const broken = { ...p, recipe: "name: hello\nversion: 1.0\n" };
  await assert.rejects(applyChange({ dir }, after, changeOf(broken), { scratch: path.join(root, "scratch"), message: "m" }), /source/);
  assert.equal(readFileSync(path.join(dir, "packages", "hello.yaml"), "utf8"), p.recipe, "a refused change leaves the catalog as it was");
  await assert.rejects(
    applyChange({ dir }, after, { files: [{ path: "../outside.yaml", text: "x" }] }, { scratch: path.join(root, "scratch"), message: "m" }),
    /stay inside the catalog/,
  );
});

test("a git catalog: a review branch, then a fast-forward of the branch; never over someone else's push; a tag refused", async () => {
  const repo = tmp("apply-git-");
  git(repo, "init", "--quiet", "--initial-branch=main");
  writeCatalog(path.join(repo, "catalog"));
  git(repo, "add", "-A");
  git(repo, "commit", "--quiet", "-m", "first");
  git(repo, "tag", "v1");
  const location = { git: repo, ref: "main", path: "catalog" };
  const source = await CatalogSource.open(location, { cacheDir: tmp("apply-cache-") });
  const base = source.current();
  const p = proposalOf("make, make check");
  const branch = reviewBranch("package/hello", `sha256:${"ab".repeat(32)}`);
  assert.equal(branch, "homeostat/package/hello/abababababab");

  const review = await commitProposal(location, base.commit!, branch, changeOf(p), "package/hello: agent proposal x");
  assert.equal(git(repo, "rev-parse", `refs/heads/${branch}`), review.commit);
  assert.equal(git(repo, "rev-parse", `${review.commit}^`), base.commit);
  assert.equal(git(repo, "show", `${review.commit}:catalog/packages/hello.yaml`), p.recipe.trimEnd());
  assert.equal(git(repo, "rev-parse", "main"), base.commit, "a proposal does not move the branch");

  const commit = await applyChange(location, base, changeOf(p), { scratch: tmp("apply-scratch-"), message: "package/hello: agent proposal x" });
  assert.equal(git(repo, "rev-parse", "main"), commit);
  assert.equal(git(repo, "rev-parse", `${commit}^`), base.commit, "a fast-forward of main");
  assert.equal(readFileSync(path.join(repo, "catalog", "packages", "hello.yaml"), "utf8"), recipe("make"), "the working tree is not touched");
  const reloaded = (await source.reload()).catalog;
  assert.equal(reloaded.commit, commit);
  assert.deepEqual(reloaded.packages.get("hello")?.build.steps, ["make", "make check"]);

  // Someone pushed after the catalog was read: the change is not applied over it.
  git(repo, "commit", "--quiet", "--allow-empty", "-m", "someone else");
  await assert.rejects(
    applyChange(location, reloaded, changeOf(proposalOf("make, make test")), { scratch: tmp("apply-scratch-"), message: "m" }),
    /main moved to .* try again/,
  );
  await assert.rejects(applyChange({ ...location, ref: "v1" }, reloaded, changeOf(p), { scratch: tmp("apply-scratch-"), message: "m" }), /not a branch/);
});
