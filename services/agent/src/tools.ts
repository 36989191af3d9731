/**
 * The agent's tools over one key's workspace (workspace.ts), each with a strict input schema.
 * The workspace holds `recipe.yaml` (the package's catalog entry, the candidate the model
 * edits), `patches/` (the candidate's patches), `build.log` (why the build failed),
 * `advisories/<id>.json` and, when they could be fetched (sources.ts), `source/` (the version
 * to repair), `source-last-good/` (the version last built and signed) and `source-fixed/` (a
 * release that fixes an advisory but is not one the policy allows: the fix to backport).
 *
 * trial_build builds the candidate in the builder's sandbox (trial.ts); submit_result runs the
 * validators (validators.ts), the trial build among them; a failing one is returned to the
 * model as a tool error, so the loop goes on within its budget; a passing submission ends the
 * run. ask_human pauses the run until a person answers (loop.ts, repair.ts). Child processes
 * (patch, diff) run with an environment of PATH alone.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { promisify } from "node:util";
import { parse as parseYaml, stringify as stringifyYaml } from "yaml";
import { z } from "zod";
import { packageSpecSchema, type PackageSpec } from "@homeostat/catalog";
import type { AgentTool } from "./loop.ts";
import { TOOL_ENV } from "./sources.ts";
import { validateCandidate, type Candidate, type RepairContext, type ValidatorResult } from "./validators.ts";
import type { Workspace } from "./workspace.ts";

const run = promisify(execFile);
const relPath = z.string().min(1).max(1024);
export const MAX_READ_BYTES = 64 * 1024;

/** What the model submits, once it passed every validator (or every one that could run). */
export type Submission = { candidate: Candidate; rationale: string; validators: ValidatorResult[] };

export function repairTools(ws: Workspace, given: RepairContext): AgentTool<Submission>[] {
  // Trial builds timed, so that a call can say how much of it was a build (not the loop's own cost).
  let buildMs = 0;
  const ctx: RepairContext = {
    ...given,
    trial: async (c) => {
      const t0 = performance.now();
      try {
        return await given.trial(c);
      } finally {
        buildMs += performance.now() - t0;
      }
    },
  };
  // Whether a patch applies, by its text: source/ does not change during a run, so a patch checked
  // when it was written is not checked again (a process each) when it is submitted.
  const checked = new Map<string, Promise<true | string>>();
  const applies = async (file: string): Promise<true | string> => {
    const id = createHash("sha256")
      .update((await ws.read(file, 1024 * 1024)).text)
      .digest("hex");
    let outcome = checked.get(id);
    if (!outcome) checked.set(id, (outcome = patchApplies(ws, file)));
    return outcome;
  };
  const timed = async <T extends object>(f: () => Promise<T>): Promise<T & { buildMs: number }> => {
    const before = buildMs;
    const out = await f();
    return { ...out, buildMs: buildMs - before };
  };
  const recipe = async (): Promise<PackageSpec> => packageSpecSchema.parse(parseYaml((await ws.read("recipe.yaml", 1024 * 1024)).text));
  return [
    {
      name: "list_files",
      description:
        "Lists the files under a directory of the workspace (recipe.yaml, patches/, build.log, advisories/, source/, source-last-good/, source-fixed/).",
      input: z.strictObject({ path: relPath.default(".") }),
      run: async ({ path }: { path: string }) => {
        const { entries, more } = await ws.list(path, 500);
        return { content: entries.join("\n") + (more ? "\n… (more; list a subdirectory)" : "") || "(empty)" };
      },
    },
    {
      name: "read_file",
      description: `Reads a text file of the workspace (at most ${MAX_READ_BYTES} bytes from offset).`,
      input: z.strictObject({ path: relPath, offset: z.number().int().min(0).default(0) }),
      run: async ({ path, offset }: { path: string; offset: number }) => {
        // Only the bytes asked for are read, however big the file.
        const { text, size } = await ws.read(path, MAX_READ_BYTES, offset);
        if (offset > 0 && offset >= size) return { content: `${path} has ${size} bytes: offset ${offset} is past its end`, isError: true };
        return { content: text + (size > offset + MAX_READ_BYTES ? `\n… (${size} bytes; read on from offset ${offset + MAX_READ_BYTES})` : "") };
      },
    },
    {
      name: "search",
      description: "Searches the files under a directory of the workspace for a regular expression; returns path:line: text.",
      input: z.strictObject({ pattern: z.string().min(1).max(512), path: relPath.default(".") }),
      run: async ({ pattern, path }: { pattern: string; path: string }) => {
        let re: RegExp;
        try {
          re = new RegExp(pattern);
        } catch (err) {
          return { content: `invalid regular expression: ${(err as Error).message}`, isError: true };
        }
        const { hits, more } = await ws.search(re, path, 200, MAX_READ_BYTES * 16);
        return { content: hits.join("\n") + (more ? "\n… (more)" : "") || "no match" };
      },
    },
    {
      name: "read_build_log",
      description: "Reads why the last build of the key failed.",
      input: z.strictObject({}),
      run: async () => ({ content: (await ws.read("build.log", MAX_READ_BYTES)).text }),
    },
    {
      name: "read_advisory",
      description: "Reads an advisory (OSV JSON) that affects the package.",
      input: z.strictObject({ id: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/) }),
      run: async ({ id }: { id: string }) => ({ content: (await ws.read(`advisories/${id}.json`, MAX_READ_BYTES)).text }),
    },
    {
      name: "edit_recipe",
      description:
        "Changes fields of the package's recipe (version, source, build.steps, test, patches, dependencies, epoch); the result must pass the catalog schema.",
      input: z.strictObject({ set: z.partialRecord(z.enum(["version", "epoch", "source", "build", "test", "patches", "dependencies"]), z.unknown()) }),
      run: async ({ set }: { set: Record<string, unknown> }) => {
        // Only the fields given change (a partial record: an absent field is not set to undefined).
        const next = packageSpecSchema.safeParse({ ...(await recipe()), ...Object.fromEntries(Object.entries(set).filter(([, v]) => v !== undefined)) });
        if (!next.success)
          return {
            content: `the recipe would not pass the catalog schema: ${next.error.issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; ")}`,
            isError: true,
          };
        if (next.data.name !== ctx.name) return { content: "the package's name cannot change", isError: true };
        await ws.write("recipe.yaml", stringifyYaml(next.data));
        return { content: `recipe.yaml updated:\n${stringifyYaml(next.data)}` };
      },
    },
    {
      name: "write_patch",
      description: "Writes a unified diff (applied with patch -p1 in the unpacked source) as patches/<name>.patch; it must apply to source/.",
      input: z.strictObject({
        name: z.string().regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/),
        diff: z
          .string()
          .min(1)
          .max(256 * 1024),
      }),
      run: async ({ name, diff }: { name: string; diff: string }) => {
        const escapes = [...diff.matchAll(/^(?:---|\+\+\+) (\S+)/gm)]
          .flatMap(([, p]) => (p === undefined ? [] : [p]))
          .filter((p) => p !== "/dev/null" && (p.startsWith("/") || p.split("/").includes("..")));
        if (escapes.length) return { content: `the diff names paths outside the source: ${escapes.join(", ")}`, isError: true };
        const file = `patches/${name}.patch`;
        await ws.write(file, diff);
        const applied = await applies(file);
        const sha256 = createHash("sha256").update(diff).digest("hex");
        return applied === true
          ? { content: `${file} written; it applies to source/. Name it in the recipe's patches as { path: ${file}, sha256: ${sha256} }` }
          : { content: `${file} written, but it does not apply: ${applied}`, isError: true };
      },
    },
    {
      name: "diff_sources",
      description:
        "Shows a unified diff between two unpacked sources, under a path of the source: what changed upstream from source-last-good/ (the version last built) to source/ (the version to repair), or, with from: source-fixed, what the fixed release changed from source/ (the fix to backport).",
      input: z.strictObject({ path: relPath.default("."), from: z.enum(["source-last-good", "source-fixed"]).default("source-last-good") }),
      run: async ({ path, from }: { path: string; from: "source-last-good" | "source-fixed" }) => {
        // Old to new: last good to the version to repair, or the version to repair to the fixed release.
        const [older, newer] = from === "source-fixed" ? ["source", "source-fixed"] : ["source-last-good", "source"];
        const [a, b] = await Promise.all([ws.resolve(`${older}/${path}`), ws.resolve(`${newer}/${path}`)]);
        const diff = await run("diff", ["-ruN", a, b], { cwd: ws.root, env: TOOL_ENV, maxBuffer: 32 << 20, timeout: 30_000 }).then(
          () => "",
          (err: { code?: number; stdout?: string; message: string }) =>
            err.code === 1 && err.stdout !== undefined ? err.stdout : Promise.reject(new Error((err.stdout || err.message).slice(0, 2000))),
        );
        const relative = diff.split(`${ws.root}/`).join("");
        return {
          content: relative
            ? relative.slice(0, MAX_READ_BYTES) + (relative.length > MAX_READ_BYTES ? `\n… (${relative.length} bytes; diff a subdirectory)` : "")
            : "no difference",
        };
      },
    },
    {
      name: "trial_build",
      description:
        "Builds the candidate (recipe.yaml and the patches it names) in the builder's sandbox, without network, its test included; returns the outcome and the end of the log. Never signed.",
      input: z.strictObject({}),
      run: () =>
        timed(async () => {
          const outcome = await ctx.trial({ recipe: await recipe(), patches: await readPatches(ws, await recipe()) });
          return {
            content: `${outcome.passed ? "passed" : "failed"}: ${outcome.detail}${outcome.logTail ? `\n--- log tail ---\n${outcome.logTail}` : ""}`,
            ...(outcome.passed ? {} : { isError: true }),
          };
        }),
    },
    {
      name: "ask_human",
      description:
        "Asks a person a question only they can answer (a policy decision, which of two fixes is wanted, a fact the workspace lacks). The run pauses until they answer; their answer comes back as this call's result. Use it sparingly.",
      input: z.strictObject({ question: z.string().trim().min(1).max(4096) }),
      run: ({ question }: { question: string }) => Promise.resolve({ content: "asked", ask: question }),
    },
    {
      name: "submit_result",
      description: "Submits the candidate recipe and patches with a rationale. The validators run; a failure comes back as an error to fix.",
      input: z.strictObject({ rationale: z.string().min(1).max(8192) }),
      run: ({ rationale }: { rationale: string }) =>
        timed(async () => {
          const spec = await recipe();
          const candidate: Candidate = { recipe: spec, patches: await readPatches(ws, spec) };
          const validators = await validateCandidate(candidate, ctx, applies);
          const failed = validators.filter((v) => v.status === "failed" || (v.name === "trial-build" && v.status !== "passed"));
          if (failed.length) return { content: `not accepted: ${failed.map((v) => `${v.name}: ${v.detail}`).join("; ")}`, isError: true };
          return { content: "accepted", result: { candidate, rationale, validators } };
        }),
    },
  ];
}

/** Whether the patch applies to source/ (true), or why not. */
export async function patchApplies(ws: Workspace, file: string): Promise<true | string> {
  const source = await ws.resolve("source").catch(() => undefined);
  if (
    !source ||
    !(await ws.list("source", 1).then(
      () => true,
      () => false,
    ))
  )
    return "the source is not unpacked in this workspace";
  try {
    await run("patch", ["--dry-run", "--batch", "--forward", "-p1", "-d", source, "-i", await ws.resolve(file)], { timeout: 30_000, env: TOOL_ENV });
    return true;
  } catch (err) {
    return String((err as { stdout?: string }).stdout || (err as Error).message).slice(0, 2000);
  }
}

/** The patches the recipe names, as the workspace has them (the catalog checks their sha256 when the candidate loads). */
async function readPatches(ws: Workspace, spec: PackageSpec): Promise<Candidate["patches"]> {
  return Promise.all(spec.patches.map(async (p) => ({ path: p.path, text: (await ws.read(p.path, 1024 * 1024)).text })));
}
