/**
 * mapLimit: `fn` over `items` with at most `limit` calls running at once, results in the order
 * of `items`. For fan-outs over many keys or files (a catalog's patch checks, a KnownFacts of
 * a thousand packages) that would otherwise open every file or send every request at once.
 * The first rejection rejects the whole; calls already running finish on their own.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  // One iterator shared by every worker: each takes the next item when it is free.
  const pending = items.entries();
  const worker = async (): Promise<void> => {
    for (const [i, item] of pending) out[i] = await fn(item);
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, limit), items.length) }, worker));
  return out;
}
