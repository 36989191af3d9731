/**
 * The repair tools on bad input, on a real workspace (a temporary directory with an unpacked
 * source): an oversized file is read in bounded parts, never whole; an offset past its end, a
 * patch naming paths outside the source (`../`, absolute), a patch that does not apply, an
 * invalid regular expression and a recipe the catalog schema refuses are tool errors; inputs
 * the schemas refuse (a path of the wrong type, an advisory id with `/`, unknown fields) never
 * reach a tool. What reaches the loop as a thrown error (a path out of the workspace) the loop
 * returns as a tool error (loop.test.ts).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AgentTool } from "./loop.ts";
import { MAX_READ_BYTES, repairTools, type Submission } from "./tools.ts";
import { Workspace, PathRefusedError } from "./workspace.ts";

let root: string;
let tools: Map<string, AgentTool<Submission>>;
before(() => {
  root = mkdtempSync(path.join(os.tmpdir(), "agent-tools-"));
  const ws = new Workspace(root);
  mkdirSync(path.join(root, "source"), { recursive: true });
  writeFileSync(path.join(root, "source", "main.c"), "int main(void) {\n  return 0;\n}\n");
  // 8 MiB: far more than one read returns.
  writeFileSync(path.join(root, "source", "huge.txt"), Buffer.alloc(8 << 20, "y"));
  writeFileSync(
    path.join(root, "recipe.yaml"),
    ["name: hello", 'version: "1.0"', "source:", "  url: ../sources/hello-1.0.tar.gz", `  sha256: ${"a".repeat(64)}`, "build:", "  steps: [make]", ""].join(
      "\n",
    ),
  );
  const trial = () => Promise.reject(new Error("no trial builds here"));
  tools = new Map(repairTools(ws, { name: "hello", advisories: [], rejected: [], sources: [], test: undefined, trial }).map((t) => [t.name, t]));
});
after(() => rmSync(root, { recursive: true, force: true }));

const call = (name: string, input: unknown) => {
  const tool = tools.get(name)!;
  const parsed = tool.input.safeParse(input);
  if (!parsed.success) return Promise.resolve({ refused: parsed.error.issues.map((i) => i.message).join("; ") });
  return tool.run(parsed.data as never, new AbortController().signal);
};

test("an oversized file is read in bounded parts, with where to read on; an offset past its end is a tool error", async () => {
  const first = (await call("read_file", { path: "source/huge.txt" })) as { content: string; isError?: boolean };
  assert.equal(first.isError, undefined);
  assert.ok(first.content.length < MAX_READ_BYTES + 200, `${first.content.length} characters`);
  assert.match(first.content, new RegExp(`\\(${8 << 20} bytes; read on from offset ${MAX_READ_BYTES}\\)$`));
  const last = (await call("read_file", { path: "source/huge.txt", offset: (8 << 20) - 10 })) as { content: string };
  assert.equal(last.content, "y".repeat(10));
  const past = (await call("read_file", { path: "source/huge.txt", offset: 9 << 20 })) as { content: string; isError?: boolean };
  assert.equal(past.isError, true);
  assert.match(past.content, /offset 9437184 is past its end/);
});

test("a patch naming paths outside the source is refused and not written; one that does not apply says why", async () => {
  for (const [name, header] of [
    ["climb", "--- a/../../etc/passwd\n+++ b/../../etc/passwd"],
    ["nested", "--- a/src/../../../x\n+++ b/src/../../../x"],
    ["absolute", "--- /etc/passwd\n+++ /etc/passwd"],
  ] as const) {
    const r = (await call("write_patch", { name, diff: `${header}\n@@ -1 +1 @@\n-root\n+toor\n` })) as { content: string; isError?: boolean };
    assert.equal(r.isError, true, name);
    assert.match(r.content, /names paths outside the source/, name);
    assert.ok(!existsSync(path.join(root, "patches", `${name}.patch`)), `${name}: not written`);
  }
  const stale = (await call("write_patch", {
    name: "stale",
    diff: "--- a/main.c\n+++ b/main.c\n@@ -1,1 +1,1 @@\n-int start(void) {\n+int begin(void) {\n",
  })) as {
    content: string;
    isError?: boolean;
  };
  assert.equal(stale.isError, true);
  assert.match(stale.content, /does not apply: .*FAILED/s);
  const bad = (await call("write_patch", { name: "../escape", diff: "x" })) as { refused?: string };
  assert.match(bad.refused ?? "", /Invalid string/, "a patch name is a plain file name");
});

test("malformed input is refused by the tools' schemas before any tool runs", async () => {
  assert.match(((await call("read_file", { path: 7 })) as { refused?: string }).refused ?? "", /expected string/);
  assert.match(((await call("read_file", { path: "x", mode: "rw" })) as { refused?: string }).refused ?? "", /Unrecognized key/);
  assert.match(((await call("read_advisory", { id: "../../secret" })) as { refused?: string }).refused ?? "", /Invalid string/);
  assert.match(((await call("edit_recipe", { set: { name: "other" } })) as { refused?: string }).refused ?? "", /Invalid key|Unrecognized key/);
  assert.match(((await call("submit_result", { rationale: "" })) as { refused?: string }).refused ?? "", /too small|>=1/);
});

test("an invalid regular expression and a recipe the catalog refuses are tool errors; a path out of the workspace throws for the loop to return", async () => {
  const re = (await call("search", { pattern: "(" })) as { content: string; isError?: boolean };
  assert.equal(re.isError, true);
  assert.match(re.content, /invalid regular expression/);
  const recipe = (await call("edit_recipe", { set: { build: { steps: [] } } })) as { content: string; isError?: boolean };
  assert.equal(recipe.isError, true);
  assert.match(recipe.content, /would not pass the catalog schema: build.steps/);
  await assert.rejects(call("read_file", { path: "../../etc/passwd" }), PathRefusedError);
  await assert.rejects(call("list_files", { path: "/etc" }), PathRefusedError);
});
