/**
 * Advisory store: the OSV advisories Homeostat has accepted, by catalog package, in JetStream
 * KV (`<prefix>_advisories`, one entry `<package>.<advisory id>`), so that every reconciler
 * reads the same facts when it decides whether a built version must move (decision.ts).
 *
 * Ingest writes an advisory here for every catalog package it names *before* it enqueues those
 * packages, so the reconcile an advisory causes always finds it. Only the newest revision of
 * an advisory (by `modified`) is kept: a stale redelivery never overwrites a newer one, and a
 * withdrawn advisory stays stored (withdrawn) so that it stops counting everywhere at once.
 * Each entry keeps only the `affected` entries about its package: a base library's advisory
 * may name hundreds of packages, and each reconcile reads just its own. Package-less entries
 * (GIT ranges of a repository, OSV 1.6) are kept too: ingest stores the advisory under a
 * package for them only when that repository is the package's, and the reconciler matches
 * their commits.
 *
 * Ordering is by `modified`, which the sender states: ingest refuses a `modified` further in
 * the future than HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS, and a stored revision dated beyond that
 * (written before the check existed) no longer outranks a newer real one, so a record dated
 * years ahead cannot hide every later revision of its id.
 */
import type { KV } from "@nats-io/kv";
import { kvCompareAndSet } from "@homeostat/core/compare-and-set";
import { escapeToken } from "@homeostat/core/key";
import { namesPackage, osvSchema, type Osv } from "./osv.ts";
import { CachedScan, type ScanReader } from "./kv-scan.ts";
import { packageFilter, perPackage } from "./releases.ts";
import { openBucket, type Nats } from "@homeostat/core/topology";

const decoder = new TextDecoder();

/** The bucket's name (topology.ts: the topology owner creates it with the others). */
export function advisoryBucket(n: Pick<Nats, "topology">): string {
  return n.topology.bucket("advisories");
}

/** byId's answers by list: a package's list is shared while its advisories do not change (kv-scan.ts CachedScan), and so is its order. */
const inIdOrder = new WeakMap<readonly Osv[], readonly Osv[]>();

/** Advisories in id order (frozen, as the lists it sorts: shared by every reader of the same list). */
function byId(advisories: readonly Osv[]): readonly Osv[] {
  let sorted = inIdOrder.get(advisories);
  if (!sorted) inIdOrder.set(advisories, (sorted = Object.freeze([...advisories].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)))));
  return sorted;
}

export class AdvisoryStore {
  readonly kv: KV;
  private readonly scan: CachedScan<Osv>;
  constructor(kv: KV) {
    this.kv = kv;
    this.scan = new CachedScan(kv, (value) => osvSchema.parse(JSON.parse(decoder.decode(value))));
  }

  /** Opens (creating when missing) the bucket, its reads current (topology.ts openBucket). */
  static async open(n: Nats): Promise<AdvisoryStore> {
    await n.kvm.create(advisoryBucket(n), { history: 1 });
    return new AdvisoryStore(await openBucket(n, "advisories"));
  }

  /**
   * Records `advisory` for each of `packages` (catalog names it affects). `changed`: how many
   * entries changed; `revision`: the bucket revision at which all of its entries are stored
   * (the latest of them, written now or before; 0 for no package), which its event states
   * (core FactRevisions). An older or equal `modified` than the stored one writes nothing,
   * unless the stored one lies more than `maxFutureSkewMs` in the future (then it does not count).
   */
  async record(advisory: Osv, packages: readonly string[], maxFutureSkewMs = Infinity): Promise<{ changed: number; revision: number }> {
    let changed = 0;
    let revision = 0;
    for (const name of new Set(packages)) {
      const entry: Osv = { ...advisory, affected: (advisory.affected ?? []).filter((a) => a.package === undefined || namesPackage(a, name)) };
      const put = await this.put(`${escapeToken(name)}.${escapeToken(advisory.id)}`, entry, maxFutureSkewMs);
      if (put.changed) changed++;
      revision = Math.max(revision, put.revision);
    }
    return { changed, revision };
  }

  /** Every advisory stored for package `name`, withdrawn ones included, in id order. */
  async list(name: string): Promise<readonly Osv[]> {
    return byId(await this.scan.list(packageFilter(name)));
  }

  /** `list` for one reconcile's reads (CachedScan.reader): each package's advisories read once per change of the bucket. */
  async reader(): Promise<ScanReader<Osv>> {
    return perPackage(await this.scan.reader(), byId);
  }

  /**
   * Compare-and-set on the entry's revision; a concurrent writer makes it read again. The
   * revision the entry now stands at: written by this put (`changed`), or the newer one kept.
   */
  private async put(k: string, entry: Osv, maxFutureSkewMs: number): Promise<{ changed: boolean; revision: number }> {
    const body = JSON.stringify(entry);
    // Most advisories a feed sends are new for the package: a create (expected revision 0) first,
    // and the entry is read only when there is one, instead of a read before every write.
    const created = await kvCompareAndSet(this.kv, k, body, 0);
    if (created !== undefined) return { changed: true, revision: created };
    // Each turn follows another writer's change of this one entry; a handful is plenty.
    for (let attempt = 0; attempt < 20; attempt++) {
      const e = await this.kv.get(k);
      if (e?.operation === "PUT") {
        const stored = osvSchema.parse(e.json());
        const storedAt = Date.parse(stored.modified);
        if (storedAt >= Date.parse(entry.modified) && storedAt - Date.now() <= maxFutureSkewMs) return { changed: false, revision: e.revision };
      }
      const revision = await kvCompareAndSet(this.kv, k, body, e?.revision ?? 0);
      if (revision !== undefined) return { changed: true, revision };
    }
    throw new Error(`advisory store: ${k} kept changing under 20 writes`);
  }
}
