/**
 * Fetching a source (or patch) that is one file: where its URL points, and a stream of its
 * bytes under the source path rules.
 *
 * `file://` URLs and plain paths (relative ones resolved against a base directory, the catalog
 * directory) are read from disk; `http(s)://` URLs only on loopback (127.0.0.0/8, ::1,
 * localhost) unless `allowRemote` lets other hosts in (all of them, or the ones it lists), never
 * with credentials in the URL, never following a
 * redirect (it could lead anywhere), within a time limit. At most `maxBytes` are accepted: a
 * larger file or declared Content-Length is refused before reading, and the stream counts as it
 * goes (`limitBytes`). Git repositories are git.ts's.
 */
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { isIP } from "node:net";
import path from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { retryAfterMs, SourceError, SourceUnavailableError } from "./errors.ts";

/**
 * Which hosts beyond loopback a source may come from: none (false, the default), any (true), or
 * the names listed, matched case-insensitively; a name starting with a dot (`.github.com`)
 * matches that domain and its subdomains.
 */
export type RemoteHosts = boolean | readonly string[];

export type OpenOptions = {
  /** Directory that relative source paths are resolved against (the catalog directory). */
  baseDir: string;
  /** Largest file accepted, in bytes. */
  maxBytes: number;
  /** http(s) hosts allowed beyond loopback. Default none. */
  allowRemote?: RemoteHosts;
  /** Time limit of an HTTP download. Default 5 minutes. */
  timeoutMs?: number;
  signal?: AbortSignal;
};

/** Where a source (or patch) URL points: a local file or an HTTP URL. `label` names it in errors. */
export function resolveSourceLocation(url: string, baseDir: string, label = "source"): { kind: "file"; path: string } | { kind: "http"; url: URL } {
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(url) && !/^[a-zA-Z]:[\\/]/.test(url)) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new SourceError(`${label} URL ${JSON.stringify(url)} is not a valid URL`);
    }
    if (u.protocol === "file:") return { kind: "file", path: fileURLToPath(u) };
    if (u.protocol === "http:" || u.protocol === "https:") {
      if (u.username || u.password) throw new SourceError(`${label} URL ${u.protocol}//${u.host}${u.pathname}: credentials in the URL are not allowed`);
      return { kind: "http", url: u };
    }
    throw new SourceError(`${label} URL scheme ${u.protocol} is not supported (file://, http://, https:// or a path)`);
  }
  return { kind: "file", path: path.resolve(baseDir, url) };
}

export function isLoopbackHost(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (h === "localhost" || h.endsWith(".localhost")) return true;
  if (isIP(h) === 4) return h.startsWith("127.");
  if (isIP(h) === 6) return h === "::1" || h === "0:0:0:0:0:0:0:1" || /^::ffff:127\./.test(h);
  return false;
}

/** Refuses a host other than loopback unless `allowRemote` lets it in; `what` names the source. */
export function checkHost(what: string, where: URL, allowRemote: RemoteHosts | undefined): void {
  if (isLoopbackHost(where.hostname) || allowRemote === true) return;
  const host = where.hostname.replace(/^\[|\]$/g, "").toLowerCase();
  if (Array.isArray(allowRemote)) {
    const listed = (allowRemote as readonly string[]).map((h) => h.toLowerCase());
    if (listed.some((h) => (h.startsWith(".") ? host === h.slice(1) || host.endsWith(h) : host === h))) return;
    throw new SourceError(`${what}: host ${host} is not one of the allowed source hosts (${listed.join(", ")}; HOMEOSTAT_SOURCE_HOSTS)`);
  }
  throw new SourceError(`${what}: only loopback hosts are allowed (got ${host}; HOMEOSTAT_SOURCE_ALLOW_REMOTE=true allows others)`);
}

export function timeoutSignal(o: Pick<OpenOptions, "timeoutMs" | "signal">): AbortSignal {
  return AbortSignal.any([AbortSignal.timeout(o.timeoutMs ?? 5 * 60_000), ...(o.signal ? [o.signal] : [])]);
}

/**
 * Opens a file or HTTP source (see the module comment) as a stream of at most `maxBytes`; the
 * stream fails with a SourceError when it would deliver more. `what` names it in errors
 * (`source <url>`).
 */
export async function openSource(url: string, what: string, o: OpenOptions): Promise<Readable> {
  const where = resolveSourceLocation(url, o.baseDir, what.split(" ")[0]);
  if (where.kind === "file") {
    let st;
    try {
      st = await stat(where.path);
    } catch (e) {
      throw new SourceError(`${what}: cannot read ${where.path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    if (!st.isFile()) throw new SourceError(`${what}: ${where.path} is not a file`);
    if (st.size > o.maxBytes) throw new SourceError(`${what} is ${st.size} bytes, over the limit of ${o.maxBytes}`);
    return limitBytes(createReadStream(where.path), o.maxBytes, what);
  }
  checkHost(what, where.url, o.allowRemote);
  let res: Response;
  try {
    res = await fetch(where.url, { redirect: "error", signal: timeoutSignal(o) });
  } catch (e) {
    throw new SourceUnavailableError(`${what}: ${(e as Error).name === "TimeoutError" ? "timed out" : (e as Error).message}`, { cause: e });
  }
  if (!res.ok) {
    await res.body?.cancel().catch(() => {});
    const msg = `${what}: HTTP ${res.status} ${res.statusText}`;
    if (res.status >= 400 && res.status < 500 && res.status !== 408 && res.status !== 429) throw new SourceError(msg);
    const after = retryAfterMs(res.headers.get("retry-after"));
    throw new SourceUnavailableError(msg, after === undefined ? {} : { retryAfterMs: after });
  }
  const declared = Number(res.headers.get("content-length") ?? "NaN");
  if (Number.isFinite(declared) && declared > o.maxBytes) {
    await res.body?.cancel().catch(() => {});
    throw new SourceError(`${what} is ${declared} bytes, over the limit of ${o.maxBytes}`);
  }
  if (!res.body) throw new SourceUnavailableError(`${what}: empty HTTP response`);
  return limitBytes(Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>), o.maxBytes, what);
}

/**
 * `source`'s bytes until more than `maxBytes` have gone by, then a SourceError; the source's own
 * errors (a connection cut mid-download) come through as they are.
 */
export function limitBytes(source: Readable, maxBytes: number, what: string): Readable {
  async function* limited(): AsyncGenerator<Buffer> {
    let seen = 0;
    try {
      for await (const chunk of source as AsyncIterable<Buffer>) {
        seen += chunk.length;
        if (seen > maxBytes) throw new SourceError(`${what} exceeds the limit of ${maxBytes} bytes`);
        yield chunk;
      }
    } finally {
      source.destroy();
    }
  }
  return Readable.from(limited(), { objectMode: false });
}
