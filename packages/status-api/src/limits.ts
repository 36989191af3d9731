/**
 * The status API's limits, as plain numbers in a module that imports nothing, so that the CLI
 * can print and check them without loading gRPC (`homeostat --help` stays fast). The server
 * enforces them; the proto's comments state them.
 */

/** Pages hold at most this many statuses; a request for more gets this many. */
export const maxPageSize = 1000;
export const defaultPageSize = 100;

/** Longest chain Why follows: deeper than any real dependency path, short enough to bound a loop. */
export const maxWhyDepth = 64;

/** Longest delay an Enqueue may ask for: further out is a mistake, not a schedule. */
export const maxEnqueueDelayMs = 30 * 24 * 3_600_000;

export const defaultDeadLetterLimit = 100;
export const maxDeadLetterLimit = 1000;

/** A KnownFacts request names at most this many packages. */
export const maxKnownFactsPackages = 1000;

/** Longest key prefix a ListKeys or WatchKeys request may carry (keys are at most 6 + 1 + 128 characters). */
export const maxPrefixLength = 256;

/**
 * Changes a watcher may have waiting to be sent, beyond its initial state: a client that falls
 * further behind has its stream ended (RESOURCE_EXHAUSTED) and resumes from its last revision,
 * so a stalled reader costs the server a bounded amount of memory.
 */
export const maxWatchBacklog = 10_000;
