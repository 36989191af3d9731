/**
 * Releases: the upstream releases Homeostat has heard of, one immutable fact per package
 * version, kept in JetStream KV so that every reconciler sees the same facts.
 *
 * A release is never rewritten: the same version announced again with the same source is a
 * duplicate; with a different source it is a conflict (someone moved a tag — refuse it).
 *
 * Beside the facts, the same bucket holds what leads to them (keys that start with `_`, which
 * no package name does, so `list` never sees them):
 * - announcements (`_announced.<package>.<version>`): a feed said upstream released this tag
 *   (a GitHub release event, release-monitoring) and nobody has fetched its source yet. Ingest
 *   writes one before it accepts the event, so the event's key is never reconciled without it;
 *   the reconciler's upstream resolver turns it into a fact and then removes it.
 * - conflicts (`_conflict.<package>.<version>`): the tag of a recorded release was found pointing
 *   at another source. Written once and kept, the fact unchanged: a human decides.
 */
import type { KV } from "@nats-io/kv";
import { z } from "zod";
import { escapeToken } from "@homeostat/core/key";
import { kvKeys } from "@homeostat/core/kv-keys";
import { CachedScan, type ScanReader } from "./kv-scan.ts";

const decoder = new TextDecoder();

export const releaseSchema = z.object({
  package: z.string(),
  version: z.string(),
  url: z.string(),
  sha256: z.string(),
  receivedAt: z.string(),
  /** The upstream tag the release was resolved from, when a resolver found it. */
  tag: z.string().optional(),
  /** For a git source: the commit the tag pointed at (also pinned in `url`). */
  commit: z.string().optional(),
});
export type Release = z.infer<typeof releaseSchema>;

export class ReleaseConflictError extends Error {}

/** The keys of a package's entries in the releases and advisories buckets: `<package>.<version or id>`. */
export const packageFilter = (pkg: string): string => `${escapeToken(pkg)}.*`;

/**
 * A bucket reader by package name (the entries under `packageFilter(name)`), each list passed
 * through `order`: the releases and the advisories stores read their facts through it.
 */
export function perPackage<T>(list: ScanReader<T>, order: (entries: readonly T[]) => readonly T[] = (entries) => entries): ScanReader<T> {
  return Object.assign(async (name: string) => order(await list(packageFilter(name))), {
    revision: list.revision,
    seen: (name: string) => list.seen(packageFilter(name)),
  });
}

export class ReleaseStore {
  readonly kv: KV;
  private readonly scan: CachedScan<Release>;
  constructor(kv: KV) {
    this.kv = kv;
    this.scan = new CachedScan(kv, (value) => releaseSchema.parse(JSON.parse(decoder.decode(value))));
  }

  /**
   * Records a release; `isNew` is false when exactly this release was already known.
   * `revision`: the bucket revision it is stored at, which its event states (core FactRevisions).
   */
  async record(r: Omit<Release, "receivedAt">): Promise<{ isNew: boolean; release: Release; revision: number }> {
    if (r.package.startsWith("_")) throw new Error(`not a package name: ${r.package}`);
    const k = `${escapeToken(r.package)}.${escapeToken(r.version)}`;
    const release: Release = { ...r, receivedAt: new Date().toISOString() };
    try {
      const revision = await this.kv.create(k, JSON.stringify(release));
      return { isNew: true, release, revision };
    } catch {
      const existing = await this.kv.get(k);
      if (!existing || existing.operation !== "PUT") throw new Error(`could not record release ${r.package}@${r.version}`);
      const known = releaseSchema.parse(existing.json());
      if (known.url !== r.url || known.sha256 !== r.sha256) {
        throw new ReleaseConflictError(`${r.package}@${r.version} is already known with source ${known.url} (sha256 ${known.sha256}); a release is immutable`);
      }
      return { isNew: false, release: known, revision: existing.revision };
    }
  }

  async list(pkg: string): Promise<readonly Release[]> {
    return this.scan.list(packageFilter(pkg));
  }

  /** `list` for one reconcile's reads (CachedScan.reader): each package's releases read once per change of the bucket. */
  async reader(): Promise<ScanReader<Release>> {
    return perPackage(await this.scan.reader());
  }
}

/** Where an announcement came from. */
export const announcementOrigins = ["github", "anitya", "resync"] as const;

export const announcementSchema = z.object({
  package: z.string(),
  version: z.string(),
  /** The tag as upstream spelt it (GitHub's tag_name), when the feed gave one. */
  tag: z.string().optional(),
  origin: z.enum(announcementOrigins),
  /** The event that announced it (its audit record id), when one did. */
  event: z.string().optional(),
  at: z.string(),
});
export type Announcement = z.infer<typeof announcementSchema>;

export const releaseConflictSchema = z.object({
  package: z.string(),
  version: z.string(),
  tag: z.string().optional(),
  /** The source recorded for the release, which stays. */
  recorded: z.object({ url: z.string(), sha256: z.string(), commit: z.string().optional() }),
  /** What the tag was found pointing at. */
  found: z.object({ url: z.string(), sha256: z.string().optional(), commit: z.string().optional() }),
  at: z.string(),
});
export type ReleaseConflict = z.infer<typeof releaseConflictSchema>;

const ANNOUNCED = "_announced";
const CONFLICT = "_conflict";

/** Announcements and conflicts beside the release facts (see the module comment). */
export class UpstreamLedger {
  readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  private static key(kind: string, pkg: string, version: string): string {
    return `${kind}.${escapeToken(pkg)}.${escapeToken(version)}`;
  }

  /** Records that upstream announced `a.version`; announcing it again replaces the first (the same fact). */
  async announce(a: Omit<Announcement, "at">): Promise<void> {
    await this.kv.put(UpstreamLedger.key(ANNOUNCED, a.package, a.version), JSON.stringify({ ...a, at: new Date().toISOString() }));
  }

  async announced(pkg: string): Promise<Announcement[]> {
    return this.read(`${ANNOUNCED}.${escapeToken(pkg)}.*`, announcementSchema);
  }

  /** Removes an announcement once it is a fact (or found to conflict with one). */
  async settle(pkg: string, version: string): Promise<void> {
    await this.kv.delete(UpstreamLedger.key(ANNOUNCED, pkg, version));
  }

  /** Records a conflict once (the first finding is kept); true when it is new. */
  async conflict(c: Omit<ReleaseConflict, "at">): Promise<boolean> {
    try {
      await this.kv.create(UpstreamLedger.key(CONFLICT, c.package, c.version), JSON.stringify({ ...c, at: new Date().toISOString() }));
      return true;
    } catch (err) {
      if ((await this.kv.get(UpstreamLedger.key(CONFLICT, c.package, c.version)))?.operation === "PUT") return false;
      throw err;
    }
  }

  async conflicts(pkg: string): Promise<ReleaseConflict[]> {
    return this.read(`${CONFLICT}.${escapeToken(pkg)}.*`, releaseConflictSchema);
  }

  private async read<S extends z.ZodType>(filter: string, schema: S): Promise<z.infer<S>[]> {
    const out: z.infer<S>[] = [];
    for (const k of await kvKeys(this.kv, filter)) {
      const e = await this.kv.get(k);
      if (e && e.operation === "PUT") out.push(schema.parse(e.json()));
    }
    return out;
  }
}
