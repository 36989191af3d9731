import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Readable } from "node:stream";
import { randomBytes } from "node:crypto";
import { gunzipSync, gzipSync } from "node:zlib";
import { BLOCK_BYTES, ParallelGzip } from "./parallel-gzip.ts";

const zlib = { level: 6, memLevel: 8 } as const;

/** Compressible, not trivially so: words from a small vocabulary, with some noise. */
function sample(bytes: number, seed = 1): Buffer {
  let x = seed;
  const rand = () => ((x = (x * 1103515245 + 12345) % 2 ** 31), x / 2 ** 31);
  const words = Array.from({ length: 300 }, (_, i) => `w${i.toString(36)}${"xyz".slice(0, i % 4)}`);
  const b = Buffer.alloc(bytes);
  let i = 0;
  while (i < bytes) {
    const w = rand() < 0.05 ? String.fromCharCode(33 + Math.floor(rand() * 90)) : words[Math.floor(rand() * words.length)]!;
    i += b.write(`${w} `, i);
  }
  return b;
}

/** Gzips `input` written in chunks of the given sizes (cycled), with `inFlight` blocks at once. */
async function gzip(input: Buffer, chunkSizes: number[], inFlight: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for (let at = 0, i = 0; at < input.length; i++) {
    const n = chunkSizes[i % chunkSizes.length]!;
    chunks.push(input.subarray(at, at + n));
    at += n;
  }
  const out: Buffer[] = [];
  const z = new ParallelGzip({ zlib, inFlight });
  const done = new Promise<void>((resolve, reject) => z.on("end", resolve).on("error", reject));
  z.on("data", (b: Buffer) => out.push(b));
  Readable.from(chunks).pipe(z);
  await done;
  return Buffer.concat(out);
}

test("any gunzip reads it back exactly, at every size around the block boundaries", async () => {
  for (const size of [0, 1, 1000, BLOCK_BYTES - 1, BLOCK_BYTES, BLOCK_BYTES + 1, Math.floor(3.5 * BLOCK_BYTES)]) {
    const input = sample(size, size + 1);
    const gz = await gzip(input, [64 * 1024], 3);
    assert.deepEqual(gz.subarray(0, 10), Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]), "header: no mtime, no name, Unix");
    assert.ok(gunzipSync(gz).equals(input), `node's gunzip, ${size} bytes`);
    assert.ok(execFileSync("gzip", ["-dc"], { input: gz, maxBuffer: 64 << 20 }).equals(input), `GNU gzip, ${size} bytes`);
  }
});

test("the bytes depend only on the input: not on how it was written, nor on how many blocks run at once", async () => {
  // Text, then random bytes (stored blocks), then text again.
  const input = Buffer.concat([sample(BLOCK_BYTES + 1000, 7), randomBytes(BLOCK_BYTES), sample(Math.floor(0.7 * BLOCK_BYTES), 8)]);
  const reference = await gzip(input, [BLOCK_BYTES], 1);
  assert.ok((await gzip(input, [7, 512, 100_000, 3], 4)).equals(reference), "odd write sizes, 4 in flight");
  assert.ok((await gzip(input, [3 * BLOCK_BYTES], 2)).equals(reference), "one write, 2 in flight");
  assert.ok((await gzip(Buffer.from(input), [65_536], 8)).equals(reference), "a copy of the input, 8 in flight");
});

test("blocks reach back into the previous one: the ratio stays within 1 % of one deflate stream", async () => {
  const input = sample(4 * BLOCK_BYTES, 3);
  const parallel = await gzip(input, [65_536], 4);
  const single = gzipSync(input, zlib);
  assert.ok(parallel.length <= single.length * 1.01, `${parallel.length} bytes against ${single.length}`);
});

test("a block of random bytes is stored as it is, in stored deflate blocks of 64 KiB, not deflated", async () => {
  const input = randomBytes(2 * BLOCK_BYTES);
  const gz = await gzip(input, [100_000], 2);
  assert.ok(gunzipSync(gz).equals(input));
  assert.ok(execFileSync("gzip", ["-dc"], { input: gz, maxBuffer: 64 << 20 }).equals(input), "GNU gzip reads it");
  // Right after the gzip header: a stored block (BFINAL 0, BTYPE 00) of 65,535 bytes, then the input's first bytes.
  assert.deepEqual([...gz.subarray(10, 15)], [0x00, 0xff, 0xff, 0x00, 0x00]);
  assert.ok(gz.subarray(15, 15 + 65_535).equals(input.subarray(0, 65_535)));
  // Two full blocks of 17 stored blocks each (5 bytes of header a piece); the empty last block is deflated (a few bytes).
  const overhead = gz.length - 18 - input.length;
  assert.ok(overhead >= 2 * 17 * 5 && overhead < 2 * 17 * 5 + 16, `${overhead} bytes beyond the input`);

  // A random last block is stored too, its last stored block final: nothing follows it but the trailer.
  const tail = randomBytes(BLOCK_BYTES + 100_000);
  const gzTail = await gzip(tail, [65_536], 2);
  assert.ok(gunzipSync(gzTail).equals(tail));
  assert.ok(execFileSync("gzip", ["-dc"], { input: gzTail, maxBuffer: 64 << 20 }).equals(tail), "GNU gzip reads it");
  const lastPiece = 100_000 % 65_535;
  assert.deepEqual(
    [...gzTail.subarray(gzTail.length - 8 - lastPiece - 5, gzTail.length - 8 - lastPiece)],
    [0x01, lastPiece & 0xff, lastPiece >> 8, ~lastPiece & 0xff, (~lastPiece >> 8) & 0xff],
  );
});

test("random bytes that repeat within deflate's window are deflated, not stored", async () => {
  // An odd length, so that a sample of every 32nd byte sees all of it: its histogram looks random.
  const pattern = randomBytes(30_001);
  const input = Buffer.concat(Array.from({ length: Math.ceil((2 * BLOCK_BYTES) / pattern.length) }, () => pattern));
  const gz = await gzip(input, [BLOCK_BYTES], 2);
  assert.ok(gunzipSync(gz).equals(input));
  assert.ok(gz.length < input.length / 20, `${gz.length} bytes for ${input.length}`);
});

test("a block handed back for reuse is no longer read: overwriting it at once changes nothing", async () => {
  const input = Buffer.concat([sample(2 * BLOCK_BYTES, 11), randomBytes(BLOCK_BYTES), sample(BLOCK_BYTES / 2, 12)]);
  const reference = await gzip(input, [BLOCK_BYTES], 3);
  let recycled = 0;
  const z = new ParallelGzip({
    zlib,
    inFlight: 3,
    recycle: (block) => {
      block.fill(0xaa);
      recycled++;
    },
  });
  const out: Buffer[] = [];
  const done = new Promise<void>((resolve, reject) => z.on("end", resolve).on("error", reject));
  z.on("data", (b: Buffer) => out.push(b));
  // Copies: the blocks handed back are the caller's to overwrite.
  Readable.from([0, 1, 2, 3].map((i) => Buffer.from(input.subarray(i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES)))).pipe(z);
  await done;
  assert.ok(Buffer.concat(out).equals(reference));
  assert.equal(recycled, 4, "three full blocks and the short last one");
});

test("a block that fails to compress fails the stream", async () => {
  const z = new ParallelGzip({ zlib: { level: 42 }, inFlight: 2 });
  const failed = new Promise<Error>((resolve) => z.on("error", resolve));
  z.on("data", () => {});
  z.end(sample(BLOCK_BYTES + 10));
  assert.match((await failed).message, /level/i);
});
