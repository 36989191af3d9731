/**
 * OSV poller: follows a feed of OSV advisories incrementally by `modified`, so that each
 * poll handles only what changed since the last, across restarts.
 *
 * Sources:
 * - a directory of OSV JSON files (e.g. an unpacked `all.zip`), walked recursively;
 * - an http(s) base URL in OSV's bucket layout: `<base>/modified_id.csv` lists
 *   `<modified>,<path>` and each advisory is `<base>/<path>.json`.
 * The cursor (the newest `modified` handled) is kept in the KV bucket `<prefix>_ingest_cursors`,
 * one entry per source, and moves only after a chunk is accepted. Advisories modified at the
 * cursor itself are read again; the event ledger's idempotency makes that free of effects.
 * An advisory whose `modified` lies more than `maxFutureSkewMs` ahead is skipped and logged
 * (and read again at later polls, so it is handled once its date is near), so the cursor never
 * passes now + skew: one record dated years ahead must not make the poller skip every real
 * revision after it. A stored cursor beyond now + skew (moved there before this check) is
 * discarded with a warning and the feed read from the start; idempotency makes that safe.
 * Unreadable or invalid files are logged once per change and skipped: one bad file must not
 * stall the feed.
 */
import { setTimeout as delay } from "node:timers/promises";
import { createHash } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import path from "node:path";
import { errorMessage, mapLimit, type Logger, type Nats } from "@homeostat/core";
import { type Osv, osvSchema } from "@homeostat/catalog";
import { futureModified } from "./advisories.ts";

const CHUNK = 500;
const MAX_FILES = 500_000;
const MAX_DEPTH = 6;
const MAX_FILE_BYTES = 8 * 1024 * 1024;
const MAX_INDEX_BYTES = 256 * 1024 * 1024;
const FETCH_TIMEOUT_MS = 30_000;

type KV = Awaited<ReturnType<Nats["kvm"]["create"]>>;
/** An advisory read, and where from (file or URL). */
type Found = { advisory: Osv; where: string };

export function cursorBucket(n: Nats): string {
  return n.topology.bucket("ingest_cursors");
}

export type OsvPollerOptions = {
  nats: Nats;
  source: string;
  intervalMs: number;
  /** Accepts a chunk of advisories (advisories.ts ingestAdvisories). */
  handle: (advisories: Osv[]) => Promise<void>;
  /** HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS. */
  maxFutureSkewMs: number;
  log: Logger;
  signal: AbortSignal;
};

export class OsvPoller {
  private readonly o: OsvPollerOptions;
  private readonly cursorKey: string;
  private kv: KV | undefined;
  /** path -> mtime+size already read, so an unchanged file is not parsed again by this process. */
  private readonly known = new Map<string, string>();

  constructor(o: OsvPollerOptions) {
    this.o = o;
    this.cursorKey = `osv.${createHash("sha256").update(o.source).digest("hex").slice(0, 32)}`;
  }

  async cursor(): Promise<string | undefined> {
    const e = await (await this.bucket()).get(this.cursorKey);
    return e && e.operation === "PUT" ? e.string() : undefined;
  }

  /** One poll: reads what changed since the cursor, hands it over oldest first, moves the cursor. */
  async poll(): Promise<{ handled: number; skipped: number; cursor: string | undefined }> {
    let since = await this.cursor();
    if (since !== undefined && futureModified({ modified: since }, this.o.maxFutureSkewMs)) {
      this.o.log.warn(
        "osv cursor lies beyond now + the allowed clock skew; it was moved there by a future-dated advisory, which hid every revision after it: reading the feed from the start",
        { source: this.o.source, cursor: since },
      );
      await (await this.bucket()).delete(this.cursorKey);
      this.known.clear();
      since = undefined;
    }
    const sinceMs = since === undefined ? -Infinity : Date.parse(since);
    const read = new Map<string, string>();
    const all = /^https?:\/\//i.test(this.o.source) ? await this.fromHttp(sinceMs) : await this.fromDirectory(sinceMs, read);
    const found: Osv[] = [];
    let skipped = 0;
    for (const { advisory: a, where } of all) {
      const future = futureModified(a, this.o.maxFutureSkewMs);
      if (future === undefined) found.push(a);
      else {
        skipped++;
        // Not marked as read: the next polls look at it again, until its date is near.
        read.delete(where);
        this.o.log.warn("osv advisory skipped", { source: this.o.source, where, advisory: a.id, reason: future });
      }
    }
    found.sort((a, b) => Date.parse(a.modified) - Date.parse(b.modified));
    let cursor = since;
    for (let i = 0; i < found.length && !this.o.signal.aborted; i += CHUNK) {
      const chunk = found.slice(i, i + CHUNK);
      const last = chunk.at(-1);
      if (!last) throw new Error("internal: an empty chunk of advisories");
      await this.o.handle(chunk);
      cursor = last.modified;
      await (await this.bucket()).put(this.cursorKey, cursor);
    }
    // Only now are the files done with: a poll that failed half-way reads them again.
    for (const [file, version] of read) this.known.set(file, version);
    return { handled: found.length, skipped, cursor };
  }

  /** Polls until `signal` aborts; a failed poll is logged and retried at the next interval. */
  async run(): Promise<void> {
    while (!this.o.signal.aborted) {
      try {
        const r = await this.poll();
        if (r.handled || r.skipped) this.o.log.info("osv poll", { source: this.o.source, advisories: r.handled, skipped: r.skipped, cursor: r.cursor });
      } catch (err) {
        this.o.log.warn("osv poll failed", { source: this.o.source, reason: errorMessage(err) });
      }
      await sleep(this.o.intervalMs, this.o.signal);
    }
  }

  private async bucket(): Promise<KV> {
    this.kv ??= await this.o.nats.kvm.create(cursorBucket(this.o.nats), { history: 1 });
    return this.kv;
  }

  private async fromDirectory(sinceMs: number, read: Map<string, string>): Promise<Found[]> {
    const out: Found[] = [];
    for (const file of await jsonFiles(this.o.source)) {
      let st;
      try {
        st = await stat(file);
      } catch {
        continue; // removed since the listing
      }
      const version = `${st.mtimeMs}:${st.size}`;
      if (this.known.get(file) === version) continue;
      read.set(file, version);
      if (st.size > MAX_FILE_BYTES) {
        this.o.log.warn("osv file too large; skipped", { file, bytes: st.size });
        continue;
      }
      const a = this.parse(await readFile(file, "utf8").catch(() => ""), file);
      if (a && Date.parse(a.modified) >= sinceMs) out.push({ advisory: a, where: file });
    }
    return out;
  }

  private async fromHttp(sinceMs: number): Promise<Found[]> {
    const base = this.o.source.replace(/\/+$/, "");
    const index = await fetchText(`${base}/modified_id.csv`, MAX_INDEX_BYTES, this.o.signal);
    const wanted: string[] = [];
    for (const line of index.split("\n")) {
      const comma = line.indexOf(",");
      if (comma < 0) continue;
      const modified = Date.parse(line.slice(0, comma));
      const id = line.slice(comma + 1).trim();
      if (!Number.isNaN(modified) && modified >= sinceMs && /^[A-Za-z0-9._:+\/-]+$/.test(id) && !id.includes("..")) wanted.push(id);
    }
    const found = await mapLimit(wanted, 8, async (id): Promise<Found | undefined> => {
      if (this.o.signal.aborted) return undefined;
      const url = `${base}/${id.split("/").map(encodeURIComponent).join("/")}.json`;
      try {
        const a = this.parse(await fetchText(url, MAX_FILE_BYTES, this.o.signal), url);
        return a ? { advisory: a, where: url } : undefined;
      } catch (err) {
        this.o.log.warn("osv fetch failed; skipped", { url, reason: errorMessage(err) });
        return undefined;
      }
    });
    return found.filter((f) => f !== undefined);
  }

  private parse(text: string, where: string): Osv | undefined {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      this.o.log.warn("osv file is not JSON; skipped", { where });
      return undefined;
    }
    const r = osvSchema.safeParse(json);
    if (!r.success) {
      this.o.log.warn("osv file is not a valid OSV document; skipped", {
        where,
        reason: r.error.issues
          .slice(0, 3)
          .map((i) => `${i.path.join(".")}: ${i.message}`)
          .join("; "),
      });
      return undefined;
    }
    return r.data;
  }
}

async function jsonFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, depth: number) => {
    if (depth > MAX_DEPTH || out.length >= MAX_FILES) return;
    const entries = await readdir(dir, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      if (out.length >= MAX_FILES) return;
      const p = path.join(dir, e.name);
      if (e.isDirectory()) await walk(p, depth + 1);
      else if (e.isFile() && e.name.endsWith(".json")) out.push(p);
    }
  };
  await walk(root, 0);
  return out;
}

async function fetchText(url: string, maxBytes: number, signal: AbortSignal): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.any([signal, AbortSignal.timeout(FETCH_TIMEOUT_MS)]), redirect: "follow" });
  if (!res.ok) throw new Error(`GET ${url}: HTTP ${res.status}`);
  const length = Number(res.headers.get("content-length") ?? 0);
  if (length > maxBytes) throw new Error(`GET ${url}: ${length} bytes is more than ${maxBytes}`);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of res.body ?? []) {
    total += (chunk as Uint8Array).byteLength;
    if (total > maxBytes) throw new Error(`GET ${url}: more than ${maxBytes} bytes`);
    chunks.push(Buffer.from(chunk as Uint8Array));
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Waits `ms`, or less when `signal` aborts (which is not an error here: it is the way out). */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal }).catch(() => {});
}
