/**
 * The builder's entry point: `Builder.build` runs one request through the build cache and the
 * concurrency limit, and `build` dispatches to the package or the image build.
 *
 * A request whose input digest was already built (its result stored, its artifacts intact) is
 * answered from the cache (cache.ts) without running anything; the same digest requested
 * again while it is building waits for that build instead of starting a second one. At most
 * `concurrency` builds run at once in one builder process; the others wait their turn in
 * arrival order.
 *
 * A `BuildFailure` means these inputs cannot build (checksum mismatch, failing or timed-out
 * step, unsafe archive): the caller marks the key Failed. Any other error is retriable.
 */
import type { BuildOutputs } from "@homeostat/core/contracts";
import type { Digest } from "@homeostat/core/digest";
import { type BuildPlan } from "@homeostat/catalog";
import { BuildCache } from "./cache.ts";
import type { BuildContext } from "./context.ts";
import { buildImage } from "./image-build.ts";
import { buildPackage } from "./package-build.ts";

export type { BuildContext } from "./context.ts";
export { BuildFailure, MissingArtifactError } from "./errors.ts";
/** The version of the build behaviour (part of every input digest); defined in core/contracts. */
export { BUILDER_VERSION } from "@homeostat/core/contracts";

/** Builds `req` now, uncached. */
export async function build(req: BuildPlan, ctx: BuildContext): Promise<BuildOutputs> {
  return req.kind === "package" ? buildPackage(req, ctx) : buildImage(req, ctx);
}

/** Counting semaphore: a free slot, or a place in the FIFO line. */
class Slots {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<void> {
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.waiting.push(resolve));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

export type BuildResult = { outputs: BuildOutputs; cached: boolean };

export class Builder {
  private readonly ctx: BuildContext;
  private readonly cache: BuildCache;
  private readonly slots: Slots;
  private readonly inFlight = new Map<string, Promise<BuildResult>>();

  constructor(ctx: BuildContext, opts: { concurrency: number }) {
    if (!Number.isInteger(opts.concurrency) || opts.concurrency < 1) throw new Error(`build concurrency must be a positive integer, got ${opts.concurrency}`);
    this.ctx = ctx;
    this.cache = new BuildCache(ctx.dataDir);
    this.slots = new Slots(opts.concurrency);
  }

  /**
   * The outputs of `req`: from the cache when these inputs were built, else built now.
   * `o.distrusting`: a blob found corrupt; a cached result that names it is not used (the build
   * writes the blob again, over the corrupt one).
   */
  build(req: BuildPlan, o: { distrusting?: Digest } = {}): Promise<BuildResult> {
    const id = `${req.key}@${req.inputDigest}`;
    const running = this.inFlight.get(id);
    if (running) return running.then((r) => ({ ...r, cached: true }));
    const p = this.run(req, o.distrusting).finally(() => this.inFlight.delete(id));
    this.inFlight.set(id, p);
    return p;
  }

  private async run(req: BuildPlan, distrusting: Digest | undefined): Promise<BuildResult> {
    const cached = async () => {
      const hit = await this.cache.get(req);
      return hit && (distrusting === undefined || !Object.values(hit).includes(distrusting)) ? hit : undefined;
    };
    const hit = await cached();
    if (hit) return { outputs: hit, cached: true };
    await this.slots.acquire();
    try {
      // Another builder process sharing the data directory may have finished it meanwhile.
      const late = await cached();
      if (late) return { outputs: late, cached: true };
      const outputs = await build(req, this.ctx);
      await this.cache.put(req, outputs);
      return { outputs, cached: false };
    } finally {
      this.slots.release();
    }
  }
}
