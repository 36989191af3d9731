/**
 * The builder's entry point for one request: dispatches to the package or the image build.
 *
 * A `BuildFailure` means these inputs cannot build (checksum mismatch, failing or timed-out
 * step, unsafe archive): the caller marks the key Failed. Any other error is retriable.
 */
import type { BuildOutputs, BuildRequest } from "@homeostat/core/contracts";
import { buildImage } from "./image-build.ts";
import { buildPackage } from "./package-build.ts";

export { BuildFailure, MissingArtifactError } from "./errors.ts";
/** The version of the build behaviour (part of every input digest); defined in core/contracts. */
export { BUILDER_VERSION } from "@homeostat/core/contracts";

export type BuildContext = {
  /** Root of the builder's data: `store/` (artifacts), `oci/` (image layouts), `work/` (workspaces). */
  dataDir: string;
  /** Time limit of all of a package's steps together. */
  timeoutMs: number;
  /** Largest source archive accepted. */
  maxSourceBytes: number;
  /** Directory relative source paths are resolved against (the catalog directory). */
  sourceBaseDir: string;
  /** Receives progress and build output lines. */
  log?: (line: string) => void;
  /** Where workspaces are created. Default `<dataDir>/work`. */
  workRoot?: string;
  /** Allow http(s) sources on hosts other than loopback. Default false. */
  allowRemoteSources?: boolean;
  /** Aborting kills a running step; the build rejects with the signal's reason (retriable). */
  signal?: AbortSignal;
  /** Keep the workspace after the build (debugging). Default false. */
  keepWorkspace?: boolean;
};

export async function build(req: BuildRequest, ctx: BuildContext): Promise<BuildOutputs> {
  return req.kind === "package" ? buildPackage(req, ctx) : buildImage(req, ctx);
}
