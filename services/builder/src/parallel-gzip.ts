/**
 * Parallel gzip: a gzip member compressed on several threads whose bytes depend only on the
 * input, never on scheduling, thread count or how the input was split into writes.
 *
 * Why: deflate is the whole cost of making a layer (the main thread idles while one zlib job
 * runs at a time), and a single deflate stream cannot use a second core. Like pigz, the input
 * is cut into fixed blocks of BLOCK_BYTES; each block is raw-deflated on its own (Node runs
 * them on the libuv thread pool) with the previous block's last 32 KiB as its dictionary, so
 * matches still reach back across block boundaries and the ratio stays close to a single
 * stream's. Every block but the last ends with a sync flush (byte-aligned, not final), the last
 * with the final block; concatenated between a gzip header and the CRC-32/size trailer, they
 * are one ordinary gzip member that any gunzip reads.
 *
 * Determinism: the block boundaries are fixed offsets of the input, each block's output is a
 * function of its bytes, its dictionary and the pinned zlib parameters, and blocks are written
 * in input order. At most `inFlight` blocks are held (input and output), so memory is bounded
 * whatever the input size.
 */
import { Transform, type TransformCallback } from "node:stream";
import { constants as zc, crc32, deflateRaw, type ZlibOptions } from "node:zlib";

/** Input bytes per block: large enough that dictionaries and flush markers cost ~0.1 %, small enough to spread a layer over threads. */
export const BLOCK_BYTES = 1024 * 1024;
/**
 * zlib's output buffer for a block of `n` bytes: room for the whole block even when it does not
 * compress (stored blocks add 5 bytes per 16 KiB at most, the flush marker and final block a few
 * more), so that a block is one thread-pool job. With Node's default (16 KiB) a block bounces
 * between the pool and the main thread dozens of times, and the blocks hardly run in parallel.
 * Sized to the block, not to BLOCK_BYTES: a small layer's one block would otherwise take a
 * megabyte of external memory, and a build's few such buffers started V8's full marking after
 * most builds (bench:storm's latency scenario, `--trace-gc`). The output bytes do not depend on it.
 */
function outputChunkBytes(n: number): number {
  return n + 5 * Math.ceil(n / 16_384) + 64;
}
/** deflate's window: how far back a match may reach, hence the dictionary each block gets. */
const WINDOW_BYTES = 32 * 1024;

/** gzip header: magic, CM=8 (deflate), FLG=0, MTIME=0, XFL=0, OS=3 (Unix): nothing of the build. */
const HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03]);

export type ParallelGzipOptions = {
  /** zlib parameters of every block (level, memLevel, strategy); windowBits is always 15. */
  zlib: Pick<ZlibOptions, "level" | "memLevel" | "strategy">;
  /** Blocks compressed at once. Does not change the output. */
  inFlight: number;
};

function deflateBlock(block: Buffer, dictionary: Buffer | undefined, last: boolean, o: ParallelGzipOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    deflateRaw(
      block,
      {
        ...o.zlib,
        windowBits: 15,
        chunkSize: outputChunkBytes(block.length),
        finishFlush: last ? zc.Z_FINISH : zc.Z_SYNC_FLUSH,
        ...(dictionary ? { dictionary } : {}),
      },
      (err, out) => (err ? reject(err) : resolve(out)),
    );
  });
}

/** A Transform from raw bytes to one gzip member, compressed `inFlight` blocks at a time. */
export class ParallelGzip extends Transform {
  private readonly o: ParallelGzipOptions;
  /** Input not yet cut into a block. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The last WINDOW_BYTES of the previous block: the next block's dictionary. */
  private tail: Buffer | undefined;
  /** Blocks being compressed, oldest first; their outputs are pushed in this order. */
  private readonly queue: Promise<Buffer>[] = [];
  private crc = 0;
  private size = 0;
  private started = false;

  constructor(o: ParallelGzipOptions) {
    super();
    this.o = { ...o, inFlight: Math.max(1, Math.floor(o.inFlight)) };
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    this.drainFullBlocks().then(() => cb(), cb);
  }

  override _flush(cb: TransformCallback): void {
    (async () => {
      // The remainder (possibly empty) is the last block: it carries the final deflate block.
      this.compressBlock(this.cutBlock(this.pendingBytes), true);
      for (let next = this.queue.shift(); next; next = this.queue.shift()) this.pushBlock(await next);
      const trailer = Buffer.alloc(8);
      trailer.writeUInt32LE(this.crc >>> 0, 0);
      trailer.writeUInt32LE(this.size % 2 ** 32, 4);
      this.push(trailer);
    })().then(() => cb(), cb);
  }

  /** Starts every full block in the pending input, waiting for the oldest when `inFlight` are running. */
  private async drainFullBlocks(): Promise<void> {
    while (this.pendingBytes >= BLOCK_BYTES) {
      // A full block is never the last: the last is cut at the end, even when it is empty.
      this.compressBlock(this.cutBlock(BLOCK_BYTES), false);
      while (this.queue.length >= this.o.inFlight) {
        const oldest = this.queue.shift();
        if (oldest) this.pushBlock(await oldest);
      }
    }
  }

  private cutBlock(n: number): Buffer {
    const [only] = this.pending;
    const all = this.pending.length === 1 && only ? only : Buffer.concat(this.pending, this.pendingBytes);
    const block = all.subarray(0, n);
    const rest = all.subarray(n);
    this.pending = rest.length > 0 ? [rest] : [];
    this.pendingBytes = rest.length;
    return block;
  }

  private compressBlock(block: Buffer, last: boolean): void {
    this.crc = crc32(block, this.crc);
    this.size += block.length;
    const p = deflateBlock(block, this.tail, last, this.o);
    p.catch(() => {}); // awaited in order; a failure surfaces there
    this.queue.push(p);
    // Copied: `block` may share memory with input the caller reuses.
    this.tail = Buffer.from(block.subarray(Math.max(0, block.length - WINDOW_BYTES)));
  }

  private pushBlock(out: Buffer): void {
    if (!this.started) {
      this.push(HEADER);
      this.started = true;
    }
    this.push(out);
  }
}
