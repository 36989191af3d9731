/**
 * Builder errors. A `BuildFailure` is final for these inputs (checksum mismatch, a failing or
 * timed-out step, a malformed archive): retrying cannot help, so the key is marked Failed.
 * Any other error (network, disk) is retriable. A dependency's archive missing from the store
 * (MissingArtifactError) is rebuilt by the build request's handler, which then builds again.
 */
import type { Key } from "@homeostat/core";
import type { Digest } from "@homeostat/core/digest";

/** The captured output of one step. */
export type StepLog = { step: string; log: string; exitCode: number | null; durationMs: number };

export class BuildFailure extends Error {
  override name = "BuildFailure";
  /** The pipeline step that failed, when a step failed. */
  readonly step: string | undefined;
  /** Its exit code (null when it was killed by a signal). */
  readonly exitCode: number | null | undefined;
  /** The end of the build log, when there is one. */
  readonly logTail: string | undefined;
  /** The logs of every command run (patches, steps, test), the failing one last, when any ran. */
  readonly stepLogs: readonly StepLog[] | undefined;

  constructor(message: string, details: { step?: string; exitCode?: number | null; logTail?: string; stepLogs?: readonly StepLog[]; cause?: unknown } = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.step = details.step;
    this.exitCode = details.exitCode;
    this.logTail = details.logTail;
    this.stepLogs = details.stepLogs;
  }
}

/**
 * A blob the build needs (a dependency's archive) is not in the artifact store, or is there
 * corrupt (its bytes do not hash to its digest). The build request's handler rebuilds it
 * (request.ts restoreLost) and builds again.
 */
export class MissingArtifactError extends Error {
  override name = "MissingArtifactError";
  /** The key whose archive it is. */
  readonly key: Key;
  readonly digest: Digest;
  /** Present but corrupt: a cached result naming it is not to be trusted. */
  readonly corrupt: boolean;
  constructor(key: Key, digest: Digest, message: string, o: { corrupt?: boolean } = {}) {
    super(message);
    this.key = key;
    this.digest = digest;
    this.corrupt = o.corrupt ?? false;
  }
}
