/**
 * Failure taxonomy: what kind of failure an error is, decided in one place, so that every
 * stage ends a failure the same way.
 *
 * - transient: the environment, not the inputs (I/O errors, a full or read-only disk,
 *   timeouts, a lost connection, an upstream 5xx/408/429). Retried with backoff for as long
 *   as it lasts; the key's status says "retrying: <reason>, next at <time>".
 * - permanent: these inputs failed (a step exits non-zero, a test fails, a checksum
 *   mismatch). Recorded as Failed with the reason, retried with backoff a bounded number of
 *   times (builds can be flaky), then dead-lettered.
 * - invalid: the request or recipe is one the contract refuses. Failed at once with the
 *   reason; only an operator's retry runs it again.
 * - crash: the process died while working on it (counted by a durable "started" mark, since a
 *   dead process reports nothing). After a bounded number, dead-lettered with that reason.
 *
 * A transient cause anywhere in an error's cause chain wins: ENOSPC while unpacking a source
 * is not the source's fault, whatever the unpacker wrapped it in.
 */
export const failureKinds = ["transient", "permanent", "invalid", "crash"] as const;
export type FailureKind = (typeof failureKinds)[number];

export type ClassifiedFailure = { kind: FailureKind; reason: string };

/** errno codes that say the machine or the network failed, not the work. */
export const transientErrnoCodes: ReadonlySet<string> = new Set([
  "ENOSPC",
  "EDQUOT",
  "EROFS",
  "EIO",
  "EAGAIN",
  "EBUSY",
  "EMFILE",
  "ENFILE",
  "ENOMEM",
  "ETXTBSY",
  "ETIMEDOUT",
  "ECONNRESET",
  "ECONNREFUSED",
  "ECONNABORTED",
  "EPIPE",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "ENETRESET",
  "EAI_AGAIN",
]);

/** The codes nats.js gives a lost or timed-out connection. */
const transientNatsCodes: ReadonlySet<string> = new Set(["TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_DRAINING", "CONNECTION_REFUSED", "DISCONNECT", "503"]);

/** An error its thrower knows is transient, with the delay it asks for (e.g. another worker holds the key). */
export class TransientError extends Error {
  override name = "TransientError";
  readonly retryAfterMs: number | undefined;
  constructor(message: string, opts: { retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.retryAfterMs = opts.retryAfterMs;
  }
}

/** How deep a cause chain is followed (a cycle or a pathological chain ends there). */
const MAX_CAUSE_DEPTH = 16;

/** The errors of `err`'s cause chain, `err` first. */
export function causeChain(err: unknown): unknown[] {
  const chain: unknown[] = [];
  for (let e = err; e !== undefined && e !== null && chain.length < MAX_CAUSE_DEPTH && !chain.includes(e); e = (e as { cause?: unknown }).cause) chain.push(e);
  return chain;
}

/** Why `err` is transient (its code or status), or undefined when nothing in its cause chain says so. */
export function transientCause(err: unknown): string | undefined {
  for (const e of causeChain(err)) {
    if (e instanceof TransientError) return e.message;
    if (typeof e !== "object") continue;
    const { code, status, statusCode } = e as { code?: unknown; status?: unknown; statusCode?: unknown };
    if (typeof code === "string" && (transientErrnoCodes.has(code) || transientNatsCodes.has(code))) return code;
    const http = typeof status === "number" ? status : typeof statusCode === "number" ? statusCode : undefined;
    if (http !== undefined && (http >= 500 || http === 408 || http === 429)) return `HTTP ${http}`;
  }
  return undefined;
}

/**
 * Classifies `err`. `invalid` and `permanent` say which of the stage's own error types are
 * which; anything neither claims is transient, so that an unforeseen error is retried, never
 * silently dropped.
 */
export function classifyFailure(err: unknown, is: { invalid?: (e: unknown) => boolean; permanent?: (e: unknown) => boolean } = {}): ClassifiedFailure {
  const reason = err instanceof Error ? err.message : String(err);
  const transient = transientCause(err);
  if (transient !== undefined) return { kind: "transient", reason: reason.includes(transient) ? reason : `${transient}: ${reason}` };
  if (is.invalid?.(err)) return { kind: "invalid", reason };
  if (is.permanent?.(err)) return { kind: "permanent", reason };
  return { kind: "transient", reason };
}

/** What a key's status says while a retry is scheduled. */
export function retryingText(reason: string, nextAt: number): string {
  return `retrying: ${reason}, next at ${new Date(nextAt).toISOString()}`;
}

/** The reason of a key dead-lettered because its work kept killing the process doing it. */
export function crashReason(service: string, crashes: number): string {
  return `the ${service} died while building this key (${crashes} time${crashes === 1 ? "" : "s"})`;
}

/** The delay before try `attempt + 1` of a start-up step: doubling from `firstDelayMs`, capped at `maxDelayMs`, with jitter (half of it random) so that replicas restarted together do not retry in step. */
export function startupBackoffMs(attempt: number, o: { firstDelayMs: number; maxDelayMs: number }, random = Math.random): number {
  const ceiling = Math.min(o.maxDelayMs, o.firstDelayMs * 2 ** Math.min(attempt - 1, 30));
  return Math.round(ceiling / 2 + (ceiling / 2) * random());
}

export type StartupRetryOptions = {
  log: { warn: (msg: string, fields?: Record<string, unknown>) => void };
  signal: AbortSignal;
  maxDelayMs: number;
  firstDelayMs?: number;
  /** Errors that retrying cannot fix (invalid configuration): rethrown at once. */
  isFatal?: (err: unknown) => boolean;
  /** Told of each failure, classified, e.g. to report it on the health endpoint and in the heartbeat. */
  onFailure?: (failure: ClassifiedFailure, attempt: number, nextAt: number) => void;
};

/**
 * Runs a start-up step until it succeeds: a service must not exit on the environment (a full
 * disk, a key not readable yet, a server not up), since nothing may restart it. Each failure
 * is logged, classified (failure.ts), with the next try's time; the delay doubles up to
 * `maxDelayMs`, with jitter. Rejects only when `signal` aborts (the service is stopping) or
 * `isFatal` says the error is one retrying cannot fix.
 */
export async function retryUntilItWorks<T>(what: string, step: () => Promise<T>, o: StartupRetryOptions): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    o.signal.throwIfAborted();
    try {
      return await step();
    } catch (err) {
      if (o.isFatal?.(err) || o.signal.aborted) throw err;
      const failure = classifyFailure(err);
      const delay = startupBackoffMs(attempt, { firstDelayMs: o.firstDelayMs ?? 500, maxDelayMs: o.maxDelayMs });
      const nextAt = Date.now() + delay;
      o.log.warn(`${what} failed; trying again`, { attempt, kind: failure.kind, reason: failure.reason, nextAt: new Date(nextAt).toISOString() });
      o.onFailure?.(failure, attempt, nextAt);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, delay);
        o.signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
      });
    }
  }
}
