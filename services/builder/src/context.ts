/**
 * What a build runs with: the builder's data directory, limits, sandbox and cancellation.
 * Made once per builder process (main.ts) and handed to every package and image build.
 */
import type { Config } from "@homeostat/core/config";
import type { RemoteHosts } from "@homeostat/source";
import type { Isolation } from "./isolation.ts";
import type { UnpackLimits } from "./source.ts";

export type BuildContext = {
  /** Root of the builder's data: `store/` (artifacts), `oci/` (image layouts), `work/` (workspaces). */
  dataDir: string;
  /**
   * The data directory whose store holds what a build reads of other builds: a package's build
   * dependencies, an image's packages, and the sources and patches they fetched. Default
   * `dataDir`. A trial build writes into a data directory of its own and reads these from the
   * factory's.
   */
  inputsDataDir?: string;
  /** Time limit of all of a package's steps together. */
  timeoutMs: number;
  /** Largest source archive accepted. */
  maxSourceBytes: number;
  /** Limits on what a source or dependency archive may unpack to. */
  unpackLimits: UnpackLimits;
  /** How steps are sandboxed (isolation.ts `resolveIsolation`, once per process). */
  isolation: Isolation;
  /** Directory relative source paths are resolved against (the catalog directory). */
  sourceBaseDir: string;
  /** Receives progress and build output lines. */
  log?: (line: string) => void;
  /** Where workspaces are created. Default `<dataDir>/work`. */
  workRoot?: string;
  /** http(s) and git hosts beyond loopback sources may come from. Default none. */
  allowRemoteSources?: RemoteHosts;
  /** Aborting kills a running step; the build rejects with the signal's reason (retriable). */
  signal?: AbortSignal;
  /** Keep the workspace after the build (debugging). Default false. */
  keepWorkspace?: boolean;
};

/**
 * The context of builds as `config` sets them (the build timeout, the source and unpack limits,
 * the catalog's directory for relative sources), into `dataDir` with workspaces under
 * `workRoot`; sources from remote hosts (HOMEOSTAT_SOURCE_HOSTS) only when `remoteSources`.
 */
export function configuredBuildContext(
  config: Config,
  o: { dataDir: string; inputsDataDir?: string; workRoot: string; isolation: Isolation; remoteSources: boolean; signal?: AbortSignal },
): BuildContext {
  return {
    dataDir: o.dataDir,
    ...(o.inputsDataDir !== undefined ? { inputsDataDir: o.inputsDataDir } : {}),
    timeoutMs: config.buildTimeoutMs,
    maxSourceBytes: config.maxSourceBytes,
    unpackLimits: { maxBytes: config.maxUnpackedBytes, maxEntries: config.maxSourceEntries },
    isolation: o.isolation,
    sourceBaseDir: config.catalogDir,
    workRoot: o.workRoot,
    ...(o.remoteSources ? { allowRemoteSources: config.sourceHosts } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
  };
}
