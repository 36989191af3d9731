/**
 * The keys of a KV bucket, each once.
 *
 * Why not `kv.keys()` as it is: @nats-io/kv 3.4 lists keys through a consumer that delivers the
 * last message of every subject and ends when none is pending, so a key written while the
 * listing runs is delivered again (its new message is pending too). `homeostat status` listed
 * one signer instance twice when its heartbeat was written mid-listing (a CI run failed on it).
 */

/** What kvKeys needs of a bucket (a KV of @nats-io/kv is one). */
export type KeyLister = { keys(filter?: string): Promise<AsyncIterable<string>> };

/** Every key of `kv` matching `filter` (all when absent) that was present while the listing ran, each once, in listing order. */
export async function kvKeys(kv: KeyLister, filter?: string): Promise<string[]> {
  const seen = new Set<string>();
  for await (const key of await kv.keys(filter)) seen.add(key);
  return [...seen];
}
