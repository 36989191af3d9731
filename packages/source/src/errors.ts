/**
 * Source errors. A `SourceError` is final for these inputs (a missing file, a refused host or
 * URL, HTTP 4xx, an unknown commit or tag, content over the limit): fetching again cannot help.
 * A `SourceUnavailableError` may pass (a network error, a timeout, HTTP 408, 429 or 5xx); when
 * the server said how long to wait (`Retry-After`), `retryAfterMs` carries it.
 */
export class SourceError extends Error {
  override name = "SourceError";
}

export class SourceUnavailableError extends Error {
  override name = "SourceUnavailableError";
  readonly retryAfterMs: number | undefined;
  constructor(message: string, o: { retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, o.cause === undefined ? undefined : { cause: o.cause });
    this.retryAfterMs = o.retryAfterMs;
  }
}

/**
 * `Retry-After` in milliseconds: delay-seconds or an HTTP date (RFC 9110 10.2.3); undefined when
 * absent or unreadable. `now` is injectable for tests.
 */
export function retryAfterMs(header: string | null, now = Date.now()): number | undefined {
  if (header === null) return undefined;
  const value = header.trim();
  if (/^\d+$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}
