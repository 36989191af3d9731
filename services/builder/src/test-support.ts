/**
 * What the builder's unit tests share (not exported from the package): the catalog revision
 * plans name, a package plan's fixed fields, a build context, a workspace, the environment a
 * step saw, a reproducible git and the unsandboxed development isolation.
 */
import { execFileSync } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import type { PackageBuildPlan } from "@homeostat/catalog";
import { loadConfig } from "@homeostat/core/config";
import type { BuildContext } from "./context.ts";
import { resolveIsolation, type Isolation } from "./isolation.ts";
import { workspaceLayout, type Workspace } from "./pipeline.ts";

/** The catalog revision plans name (a directory catalog's content digest). */
export const CATALOG_REVISION = `sha256:${"c".repeat(64)}`;

/** The explicit development mode: HOMEOSTAT_BUILD_ISOLATION=none with HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true. */
export function unsandboxed(): Promise<Isolation> {
  return resolveIsolation(loadConfig({ HOMEOSTAT_BUILD_ISOLATION: "none", HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS: "true" }).buildSandbox);
}

/** The plan of package `name` at 1.0 of CATALOG_REVISION, without dependencies unless `plan` names some. */
export function packagePlan(
  name: string,
  plan: Pick<PackageBuildPlan, "inputDigest" | "sourceDateEpoch" | "source" | "steps"> & Partial<PackageBuildPlan>,
): PackageBuildPlan {
  return {
    catalogRevision: CATALOG_REVISION,
    kind: "package",
    key: `package/${name}`,
    name,
    version: "1.0",
    dependencies: [],
    runtimeDependencies: [],
    ...plan,
  };
}

/** A build context: sources of at most 1 MiB, unpacked to at most 64 MiB in 10,000 entries unless `limits` says otherwise. */
export function buildContext(
  o: Pick<BuildContext, "dataDir" | "sourceBaseDir" | "isolation" | "timeoutMs">,
  limits: Partial<Pick<BuildContext, "maxSourceBytes" | "unpackLimits">> = {},
): BuildContext {
  return { maxSourceBytes: 1 << 20, unpackLimits: { maxBytes: 64 << 20, maxEntries: 10_000 }, ...o, ...limits };
}

/** A workspace at `root` with its directories made; `cwd` is its source directory, where steps run. */
export async function makeWorkspace(root: string): Promise<{ ws: Workspace; cwd: string }> {
  const ws = workspaceLayout(root);
  const cwd = path.join(ws.root, "src");
  for (const d of [ws.home, ws.dest, ws.sysroot, cwd]) await mkdir(d, { recursive: true });
  return { ws, cwd };
}

/** The environment a step wrote with `env | sort` to `file`, without what sh sets itself (PWD, and on some shells SHLVL, _, OLDPWD). */
export async function stepEnvironment(file: string): Promise<Record<string, string>> {
  const env = Object.fromEntries(
    (await readFile(file, "utf8"))
      .trim()
      .split("\n")
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
  for (const k of ["PWD", "SHLVL", "_", "OLDPWD"]) delete env[k];
  return env;
}

/** git in `dir` without system or user configuration, with a fixed author and fixed dates, so that the same commands make the same commits; its output. */
export function reproducibleGit(dir: string): (...args: string[]) => Buffer {
  const env = {
    ...process.env,
    GIT_CONFIG_NOSYSTEM: "1",
    GIT_CONFIG_GLOBAL: "/dev/null",
    GIT_AUTHOR_DATE: "2024-01-01T00:00:00Z",
    GIT_COMMITTER_DATE: "2024-01-01T00:00:00Z",
  };
  return (...args) => execFileSync("git", ["-c", "user.name=t", "-c", "user.email=t@example.com", ...args], { cwd: dir, env });
}
