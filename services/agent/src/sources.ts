/**
 * The package's sources in the key's workspace: the version whose build failed (or that an
 * advisory affects) in `source/`, the last version that was built and signed in
 * `source-last-good/`, so that the model can search, read and diff them.
 *
 * Fetched under the builder's source rules (@homeostat/source: loopback unless remote sources
 * are allowed, no credentials in URLs, a size limit, a time limit), checked against the sha256
 * the catalog or the release fact declares before anything unpacks it, and unpacked by tar
 * without owners or permissions from the archive (GNU tar refuses members that climb out with
 * `..`; a symbolic link inside that leads out is refused by the workspace when followed).
 */
import { createHash } from "node:crypto";
import { execFile } from "node:child_process";
import { createWriteStream } from "node:fs";
import { mkdtemp, readdir, rename, rm } from "node:fs/promises";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { Transform } from "node:stream";
import { promisify } from "node:util";
import type { Catalog, PackageSpec, Release } from "@homeostat/catalog";
import { isGitSourceUrl, openSource, type RemoteHosts } from "@homeostat/source";
import type { Workspace } from "./workspace.ts";

const run = promisify(execFile);

/** A child process sees only what it needs: never the agent's own environment (API key, NATS seed file). */
export const TOOL_ENV = { PATH: "/usr/local/bin:/usr/bin:/bin", LC_ALL: "C" };

export type SourceRules = { maxBytes: number; allowRemote: RemoteHosts; timeoutMs: number };

/** Where `version` of the package comes from: the pinned source, else its release fact. */
export function sourceOf(catalog: Catalog, spec: PackageSpec, releases: readonly Release[], version: string): { url: string; sha256: string } | undefined {
  if (version === spec.version) return { url: catalog.resolveSourceUrl(spec.source.url, version), sha256: spec.source.sha256 };
  const release = releases.find((r) => r.version === version);
  return release ? { url: catalog.resolveSourceUrl(release.url, version), sha256: release.sha256 } : undefined;
}

/** Fetches, verifies and unpacks a source archive into `dir` of the workspace (replacing it). */
export async function unpackSource(
  ws: Workspace,
  dir: string,
  source: { url: string; sha256: string },
  rules: SourceRules & { baseDir: string; signal: AbortSignal },
): Promise<void> {
  if (isGitSourceUrl(source.url)) throw new Error(`${source.url}: git sources are not unpacked into the workspace`);
  const target = await ws.resolve(dir);
  const scratch = await mkdtemp(path.join(ws.root, ".fetch-"));
  try {
    const archive = path.join(scratch, "archive");
    const hash = createHash("sha256");
    const hashing = new Transform({ transform: (chunk: Buffer, _e, done) => (hash.update(chunk), done(null, chunk)) });
    const stream = await openSource(source.url, `source ${source.url}`, {
      baseDir: rules.baseDir,
      maxBytes: rules.maxBytes,
      allowRemote: rules.allowRemote,
      timeoutMs: rules.timeoutMs,
      signal: rules.signal,
    });
    await pipeline(stream, hashing, createWriteStream(archive, { mode: 0o600 }));
    const actual = hash.digest("hex");
    if (actual !== source.sha256) throw new Error(`source ${source.url} has sha256 ${actual}, not the declared ${source.sha256}`);
    const tree = path.join(scratch, "tree");
    await run("mkdir", [tree], { env: TOOL_ENV });
    await run("tar", ["-x", "-f", archive, "-C", tree, "--no-same-owner", "--no-same-permissions"], { env: TOOL_ENV, timeout: 60_000, maxBuffer: 1 << 20 });
    const top = await readdir(tree, { withFileTypes: true });
    // A tarball's single top directory is stripped, as the builder does.
    const [only] = top;
    const root = top.length === 1 && only?.isDirectory() ? path.join(tree, only.name) : tree;
    await rm(target, { recursive: true, force: true });
    await rename(root, target);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
