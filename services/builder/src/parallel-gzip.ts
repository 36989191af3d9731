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
 * A block whose bytes look random (compressed or encrypted data: gzip, xz, jpeg, jar, ...) is
 * stored, not deflated: deflate spends about half the CPU of a text block on such a block and
 * finds next to nothing (measured on bench:build's tree: 18 ms a MiB for 0.01 % at level 6; pigz
 * spends it too). Whether a block looks random is decided by a sample of its byte histogram,
 * then a deflate of its first PROBE_BYTES, which catches random bytes that repeat within
 * deflate's window (the only thing deflate finds in such data); see storedIfRandom.
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
 * zlib's output buffer for a block of `n` bytes: room for what a block deflates to (text and code
 * to a fifth or less, so one thread-pool job; a block that compresses less fills it a few times,
 * one round trip to the main thread each; a random one is stored, see storedIfRandom). With
 * Node's default (16 KiB) a block bounced between the pool and the main thread dozens of times
 * and the blocks hardly ran in parallel; sized to the whole block (1 MiB), the buffers, mostly
 * empty, started V8's full marking every few blocks (bench:build: 120 ms less of the GC's threads
 * and 50 ms less of the main thread's CPU a layer at 256 KiB). A small block's is sized to the
 * block: a small layer's one block would otherwise hold memory it does not need. The output
 * bytes do not depend on it.
 */
function outputChunkBytes(n: number): number {
  return Math.min(n + 5 * Math.ceil(n / 16_384) + 64, 256 * 1024);
}
/** deflate's window: how far back a match may reach, hence the dictionary each block gets. */
const WINDOW_BYTES = 32 * 1024;

/**
 * A block is stored when a sample of its bytes (every SAMPLE_STRIDE-th) carries at least this
 * many bits per byte (order-0 entropy, 8 being uniform, with the Miller-Madow correction of a
 * sample's bias: (bins seen - 1) / (2 samples ln 2), 0.006 bits for a 1-MiB block, 0.09 for a
 * 64-KiB one). Random bytes estimate at 7.97 or more from 64 KiB on (the least of 200 blocks of
 * each size: 7.972 at 64 KiB, 7.999 at 1 MiB). Measured on 1-MiB blocks of tars of this machine's
 * files: bench:build's text 4.1-4.4; /usr/bin and /usr/lib (1,117 blocks) 0.05-7.74, none
 * stored; /usr/share/doc and man, gzipped pages and changelogs with their tar headers (164
 * blocks), 4.6-7.99, of which 4 were stored (with the probe below), the output 0.07 % larger in
 * all than deflating every block (one stored block would have deflated to 95 %).
 */
const RANDOM_BITS_PER_BYTE = 7.96;
const SAMPLE_STRIDE = 32;
/** Blocks shorter than this are always deflated: too little to gain, and a last block is often short. */
const MIN_STORED_BYTES = 64 * 1024;
/** A random-looking block is stored unless deflating its first PROBE_BYTES saves more than PROBE_GAIN. */
const PROBE_BYTES = 64 * 1024;
const PROBE_GAIN = 0.01;
/** A stored deflate block holds at most this many bytes (its LEN field is 16 bits). */
const STORED_MAX = 65_535;

/** gzip header: magic, CM=8 (deflate), FLG=0, MTIME=0, XFL=0, OS=3 (Unix): nothing of the build. */
const HEADER = Buffer.from([0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03]);

export type ParallelGzipOptions = {
  /** zlib parameters of every block (level, memLevel, strategy); windowBits is always 15. */
  zlib: Pick<ZlibOptions, "level" | "memLevel" | "strategy">;
  /** Blocks compressed at once. Does not change the output. */
  inFlight: number;
  /**
   * Given each block's input once it is compressed and no longer read, for the caller to write
   * its next input into (a layer's megabyte chunks, which otherwise start V8's full marking every
   * few dozen blocks). Set only by a caller that holds no other reference to what it writes.
   */
  recycle?: (input: Buffer) => void;
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

/** Whether a sample of `block`'s byte histogram looks uniformly random (RANDOM_BITS_PER_BYTE). */
function looksRandom(block: Buffer): boolean {
  if (block.length < MIN_STORED_BYTES) return false;
  const counts = new Uint32Array(256);
  for (let i = 0; i < block.length; i += SAMPLE_STRIDE) {
    const byte = block[i] ?? 0;
    counts[byte] = (counts[byte] ?? 0) + 1;
  }
  const n = Math.ceil(block.length / SAMPLE_STRIDE);
  let bits = 0;
  let seen = 0;
  for (const c of counts) {
    if (c === 0) continue;
    seen++;
    bits -= (c / n) * Math.log2(c / n);
  }
  return bits + (seen - 1) / (2 * n * Math.LN2) >= RANDOM_BITS_PER_BYTE;
}

/**
 * `block` as stored deflate blocks (each a 5-byte header and up to STORED_MAX bytes), the last of
 * them final when the block is the stream's last. Byte-aligned already, so the next block needs
 * no sync flush before it.
 */
function storedBlocks(block: Buffer, last: boolean): Buffer {
  const pieces = Math.max(1, Math.ceil(block.length / STORED_MAX));
  const out = Buffer.allocUnsafe(block.length + 5 * pieces);
  let at = 0;
  for (let i = 0; i < pieces; i++) {
    const piece = block.subarray(i * STORED_MAX, (i + 1) * STORED_MAX);
    out[at] = last && i === pieces - 1 ? 1 : 0; // BFINAL, BTYPE 00 (stored)
    out.writeUInt16LE(piece.length, at + 1);
    out.writeUInt16LE(~piece.length & 0xffff, at + 3);
    at += 5 + piece.copy(out, at + 5);
  }
  return out;
}

/**
 * A block that looks random, stored when deflating its first PROBE_BYTES (with the same
 * dictionary and parameters) saves too little; otherwise undefined, and the block is deflated.
 */
async function storedIfRandom(block: Buffer, dictionary: Buffer | undefined, last: boolean, o: ParallelGzipOptions): Promise<Buffer | undefined> {
  if (!looksRandom(block)) return undefined;
  const probe = block.subarray(0, PROBE_BYTES);
  const deflated = await deflateBlock(probe, dictionary, false, o);
  return deflated.length >= probe.length * (1 - PROBE_GAIN) ? storedBlocks(block, last) : undefined;
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
    const dictionary = this.tail;
    const p = storedIfRandom(block, dictionary, last, this.o)
      .then((stored) => stored ?? deflateBlock(block, dictionary, last, this.o))
      .finally(() => this.o.recycle?.(block));
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
