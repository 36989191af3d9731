/**
 * unified-diff.ts against patch(1): every diff of seeded random edits, applied with `patch`
 * to the old text, gives the new text (new files, lost and gained final newlines included);
 * and a small edit reads as `diff -u` prints it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { mulberry32 } from "../../../scripts/app-tarball.ts";
import { unifiedDiff } from "./unified-diff.ts";

function applyWithPatch(before: string | undefined, diff: string): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), "udiff-"));
  try {
    if (before !== undefined) writeFileSync(path.join(dir, "f.txt"), before);
    writeFileSync(path.join(dir, "d.patch"), diff);
    execFileSync("patch", ["-p1", "--quiet", "--batch", "-i", "d.patch"], { cwd: dir });
    return readFileSync(path.join(dir, "f.txt"), "utf8");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("random edits: patch(1) turns the old text into the new with the diff", () => {
  const seed = Number(process.env.UDIFF_SEED ?? 20);
  // Seeded, so a failure is replayable.
  const rnd = mulberry32(seed);
  const words = ["alpha", "beta", "gamma", "delta", "", "  indented", "make hello"];
  for (let round = 0; round < 60; round++) {
    const old = Array.from({ length: Math.floor(rnd() * 40) }, () => words[Math.floor(rnd() * words.length)]!);
    const next = [...old];
    for (let e = Math.floor(rnd() * 8); e > 0; e--) {
      const at = Math.floor(rnd() * (next.length + 1));
      if (rnd() < 0.5 && next.length > 0) next.splice(at, 1);
      else next.splice(at, 0, `new ${Math.floor(rnd() * 100)}`);
    }
    const eol = (lines: string[]) => (lines.length === 0 ? "" : `${lines.join("\n")}${rnd() < 0.8 ? "\n" : ""}`);
    const before = eol(old);
    const after = eol(next);
    const isNew = rnd() < 0.1;
    const diff = unifiedDiff("f.txt", isNew ? undefined : before, after);
    if (!isNew && before === after) {
      assert.equal(diff, "");
      continue;
    }
    if (isNew && after === "") continue; // patch(1) cannot create an empty file from a diff
    assert.equal(applyWithPatch(isNew ? undefined : before, diff), after, `seed ${seed} round ${round}:\n${diff}`);
  }
});

test("a one-line change reads as diff -u prints it", () => {
  const before = ["a", "b", "c", "d", "e", "f", "g", "h"].join("\n") + "\n";
  const after = before.replace("e\n", "E\n");
  assert.equal(
    unifiedDiff("packages/x.yaml", before, after),
    ["--- a/packages/x.yaml", "+++ b/packages/x.yaml", "@@ -2,7 +2,7 @@", " b", " c", " d", "-e", "+E", " f", " g", " h", ""].join("\n"),
  );
});

test("a rewrite past the edit limit is the old text removed and the new added", () => {
  const before = Array.from({ length: 3000 }, (_, i) => `old ${i}`).join("\n") + "\n";
  const after = Array.from({ length: 3000 }, (_, i) => `new ${i}`).join("\n") + "\n";
  const diff = unifiedDiff("big.txt", before, after);
  assert.equal(applyWithPatch(before, diff.replaceAll("big.txt", "f.txt")), after);
});
