/**
 * Catalog watch: what the reconciler does when the catalog source reloads. A catalog that
 * changed recipes enqueues exactly the keys whose recipe changed and everything depending on
 * them (catalog.ts diffCatalogs), in rebuild order, at dependency priority, with the catalog
 * revision as the cause; keys whose recipe did not change keep their input digest and are
 * not touched. A catalog that fails to load is logged and the previous one keeps serving
 * (catalog-source.ts never swaps in a bad one).
 */
import { canonicalJson, errorMessage, sha256Digest, type EnqueueRequest, type Logger } from "@homeostat/core";
import type { Catalog, CatalogDiff, ReloadResult } from "@homeostat/catalog";

/** The catalog's revision: its git commit, or for a directory the digest of every key's recipe digest. */
export function catalogRevision(catalog: Catalog): string {
  if (catalog.commit) return catalog.commit;
  return sha256Digest(
    canonicalJson(
      catalog
        .keys()
        .sort()
        .map((k) => [k, catalog.recipeDigest(k)]),
    ),
  );
}

/** The enqueue requests a catalog change calls for, in the diff's order. */
export function catalogChangeRequests(catalog: Catalog, diff: CatalogDiff): EnqueueRequest[] {
  const id = catalogRevision(catalog);
  const detail = `catalog changed: ${diff.added.length} added, ${diff.modified.length} modified, ${diff.removed.length} removed`;
  return diff.keys.map((key) => ({ v: 1, key, priority: "dependency", cause: { type: "catalog", id, detail } }));
}

/** Handles one reload result (CatalogSource.watch's onReload); resolves once every key is enqueued. */
export async function onCatalogReload(
  r: Exclude<ReloadResult, { status: "unchanged" }>,
  enqueue: (req: EnqueueRequest) => Promise<unknown>,
  log: Logger,
): Promise<void> {
  if (r.status === "rejected") {
    log.error("catalog reload rejected; the previous catalog keeps serving", { reason: errorMessage(r.error) });
    return;
  }
  const requests = catalogChangeRequests(r.catalog, r.diff);
  log.info("catalog changed", {
    revision: requests[0]?.cause.id ?? catalogRevision(r.catalog),
    added: r.diff.added.length,
    modified: r.diff.modified.length,
    removed: r.diff.removed.length,
    keys: requests.length,
  });
  for (const req of requests) await enqueue(req);
}
