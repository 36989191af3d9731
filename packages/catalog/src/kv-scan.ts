/**
 * The live entries of a JetStream KV bucket under a key filter, read with direct gets that each
 * return the next message matching the filter (`next_by_subj`, nats-server 2.9): one request per
 * stored message plus one, and no consumer.
 *
 * Why not `kv.keys()` and a get per key: `keys()` creates an ordered consumer per call, which the
 * server stores and only forgets after its inactivity threshold. The reconciler and the builder
 * list a package's releases and advisories on every run; at catalog scale (bench:storm, 550 keys,
 * 3,100 runs) that left 30,000 consumers on the releases and advisories buckets, with nats-server
 * at 2.7 GB RSS and half a core.
 */
import type { KV } from "@nats-io/kv";

type DirectMessage = { subject: string; seq: number; data: Uint8Array; header?: { get(name: string): string } };
/** What @nats-io/kv's bucket keeps and its KV interface does not expose (its JetStream manager's direct API, typed as used here). */
type BucketInternals = {
  jsm: { direct: { getMessage(stream: string, query: { seq: number; next_by_subj: string }): Promise<DirectMessage | null> } };
  stream: string;
  prefix: string;
  direct: boolean;
};

export type ScannedEntry = { key: string; value: Uint8Array };

/** The entries whose key matches `filter` (KV wildcards), deleted and purged ones left out, in stream order. */
export async function scanEntries(kv: KV, filter: string): Promise<ScannedEntry[]> {
  const bucket = kv as unknown as BucketInternals;
  const latest = new Map<string, ScannedEntry | undefined>();
  if (!bucket.direct) {
    // A bucket without direct gets (configured so by hand): the consumer-based listing.
    for await (const key of await kv.keys(filter)) {
      const e = await kv.get(key);
      latest.set(key, e && e.operation === "PUT" ? { key, value: e.value } : undefined);
    }
  } else {
    const subjects = `${bucket.prefix}.${filter}`;
    for (let seq = 1; ;) {
      const m = await bucket.jsm.direct.getMessage(bucket.stream, { seq, next_by_subj: subjects });
      if (!m) break;
      const key = m.subject.slice(bucket.prefix.length + 1);
      // A later message of the key (history > 1, a delete or purge marker) replaces the earlier.
      latest.delete(key);
      latest.set(key, m.header?.get("KV-Operation") ? undefined : { key, value: m.data });
      seq = m.seq + 1;
    }
  }
  return [...latest.values()].filter((e): e is ScannedEntry => e !== undefined);
}
