/**
 * mapLimit: `fn` over `items` with at most `limit` calls running at once, results in the order
 * of `items`. For fan-outs over many keys or files (a catalog's patch checks, a KnownFacts of
 * a thousand packages) that would otherwise open every file or send every request at once.
 * The first rejection rejects the whole; calls already running finish on their own.
 */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, limit), items.length) }, worker));
  return out;
}
