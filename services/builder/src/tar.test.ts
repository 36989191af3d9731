import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { chmod, link, mkdir, mkdtemp, readFile, rm, symlink, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { writeTarFromDirectory, writeTarGzFromDirectory, type TarEntry, type TarGzResult, type TarResult } from "./tar.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-tar-"));
after(() => rm(tmp, { recursive: true, force: true }));

const EPOCH = 1_700_000_000;
const LONG = `${"d".repeat(60)}/${"f".repeat(80)}.txt`;

/** A tree with every supported kind of entry; `variant` changes only what normalisation erases. */
async function makeTree(dir: string, variant: number): Promise<void> {
  await mkdir(path.join(dir, "usr/bin"), { recursive: true });
  await mkdir(path.join(dir, "usr/share/empty"), { recursive: true });
  await mkdir(path.join(dir, path.dirname(LONG)), { recursive: true });
  await writeFile(path.join(dir, "usr/bin/tool"), "#!/bin/sh\necho hi\n");
  await chmod(path.join(dir, "usr/bin/tool"), variant ? 0o700 : 0o755);
  await writeFile(path.join(dir, "usr/share/data.txt"), "data\n".repeat(1000));
  await chmod(path.join(dir, "usr/share/data.txt"), variant ? 0o600 : 0o664);
  await writeFile(path.join(dir, LONG), "long name\n");
  await writeFile(path.join(dir, "usr/share/héllo-ünicode.txt"), "unicode\n");
  await writeFile(path.join(dir, "a-b"), "sorts before a/\n");
  await mkdir(path.join(dir, "a"));
  await writeFile(path.join(dir, "a/z"), "z\n");
  // Around a/ in byte order: "a.d/" (a directory, "." before "/"), then a/ and its contents, then "a0".
  await mkdir(path.join(dir, "a.d"));
  await writeFile(path.join(dir, "a.d/y"), "y\n");
  await writeFile(path.join(dir, "a0"), "after a/z\n");
  await symlink("tool", path.join(dir, "usr/bin/alias"));
  await symlink(`../${"x".repeat(150)}`, path.join(dir, "usr/bin/longlink"));
  await link(path.join(dir, "usr/share/data.txt"), path.join(dir, "usr/share/hardlink.txt"));
  await chmod(path.join(dir, "usr/share"), variant ? 0o700 : 0o775);
  const t = variant ? new Date(2001, 1, 1) : new Date();
  await utimes(path.join(dir, "usr/bin/tool"), t, t);
}

async function tarOf(dir: string, name: string, gz: true, prefix?: string): Promise<{ file: string; bytes: Buffer; res: TarGzResult }>;
async function tarOf(dir: string, name: string, gz: false, prefix?: string): Promise<{ file: string; bytes: Buffer; res: TarResult }>;
async function tarOf(dir: string, name: string, gz: boolean, prefix?: string): Promise<{ file: string; bytes: Buffer; res: TarResult }> {
  const file = path.join(tmp, name);
  const opts = prefix ? { epoch: EPOCH, prefix } : { epoch: EPOCH };
  const res = gz ? await writeTarGzFromDirectory(dir, createWriteStream(file), opts) : await writeTarFromDirectory(dir, createWriteStream(file), opts);
  return { file, bytes: await readFile(file), res };
}

const treeA = path.join(tmp, "treeA");
const treeB = path.join(tmp, "treeB");
await makeTree(treeA, 0);
await makeTree(treeB, 1);

test("tar is byte-identical for trees differing only in mtimes, modes and creation order", async () => {
  const a = await tarOf(treeA, "a.tar", false);
  const b = await tarOf(treeB, "b.tar", false);
  assert.ok(a.bytes.equals(b.bytes));
  assert.equal(a.res.diffId, `sha256:${createHash("sha256").update(a.bytes).digest("hex")}`);
  assert.equal(a.res.tarSize, a.bytes.length);
  assert.deepEqual(a.res.entries, b.res.entries);
});

test("GNU tar reads the archive: names, types, modes, owners, mtime, byte order, contents", async () => {
  const { file, res } = await tarOf(treeA, "c.tar", false);
  const names = execFileSync("tar", ["-tf", file], { encoding: "utf8" }).trimEnd().split("\n");
  assert.deepEqual(
    names,
    res.entries.map((e) => e.path),
  );
  const sorted = [...names].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
  assert.deepEqual(names, sorted);
  assert.ok(names.indexOf("a-b") < names.indexOf("a/"));
  assert.deepEqual(names.slice(names.indexOf("a-b"), names.indexOf("a0") + 1), ["a-b", "a.d/", "a.d/y", "a/", "a/z", "a0"]);
  assert.ok(names.includes(LONG));
  assert.ok(names.includes("usr/share/héllo-ünicode.txt"));

  const verbose = execFileSync("tar", ["--numeric-owner", "--full-time", "-tvf", file], { encoding: "utf8", env: { ...process.env, TZ: "UTC" } });
  for (const line of verbose.trimEnd().split("\n")) {
    assert.match(line, / 0\/0 /, line);
    assert.match(line, /2023-11-14 22:13:20/, line);
  }
  const byPath = new Map(res.entries.map((e) => [e.path, e] as [string, TarEntry]));
  assert.equal(byPath.get("usr/bin/tool")!.mode, 0o755);
  assert.equal(byPath.get("usr/share/data.txt")!.mode, 0o644);
  assert.equal(byPath.get("usr/share/")!.mode, 0o755);
  assert.equal(byPath.get("usr/bin/alias")!.type, "symlink");
  assert.equal(byPath.get("usr/bin/alias")!.mode, 0o777);
  assert.equal(byPath.get("usr/share/hardlink.txt")!.type, "file");
  assert.match(verbose, /-rwxr-xr-x 0\/0 +18 [^\n]* usr\/bin\/tool\n/);
  assert.match(verbose, /lrwxrwxrwx 0\/0 +0 [^\n]* usr\/bin\/alias -> tool\n/);
  assert.match(verbose, /drwxr-xr-x 0\/0 +0 [^\n]* usr\/share\/empty\/\n/);

  const out = path.join(tmp, "extract");
  await mkdir(out);
  execFileSync("tar", ["-xf", file, "-C", out]);
  for (const e of res.entries.filter((x) => x.type === "file")) {
    const content = await readFile(path.join(out, e.path));
    assert.equal(createHash("sha256").update(content).digest("hex"), e.sha256, e.path);
    assert.equal(content.length, e.size);
  }
  assert.equal(await readFile(path.join(out, "usr/share/hardlink.txt"), "utf8"), "data\n".repeat(1000));
  assert.equal(execFileSync("readlink", [path.join(out, "usr/bin/longlink")], { encoding: "utf8" }).trim(), `../${"x".repeat(150)}`);
});

test("prefix puts every entry under it, with its directories", async () => {
  const { res, file } = await tarOf(treeA, "p.tar", false, "opt/pkg");
  assert.equal(res.entries[0]!.path, "opt/");
  assert.equal(res.entries[1]!.path, "opt/pkg/");
  assert.ok(res.entries.every((e) => e.path.startsWith("opt/")));
  execFileSync("tar", ["-tf", file]);
});

test("tar.gz: identical bytes across runs, header without mtime or name, digests from one pass", async () => {
  const a = await tarOf(treeA, "a.tar.gz", true);
  const b = await tarOf(treeB, "b.tar.gz", true);
  assert.ok(a.bytes.equals(b.bytes));
  // gzip header: magic, CM=8, FLG=0 (no name, no comment, no extra), MTIME=0, OS=3 (Unix).
  assert.deepEqual([...a.bytes.subarray(0, 10)], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
  assert.equal(a.res.digest, `sha256:${createHash("sha256").update(a.bytes).digest("hex")}`);
  assert.equal(a.res.size, a.bytes.length);
  const raw = gunzipSync(a.bytes);
  assert.equal(a.res.diffId, `sha256:${createHash("sha256").update(raw).digest("hex")}`);
  assert.equal(a.res.tarSize, raw.length);
  const plain = await tarOf(treeA, "plain.tar", false);
  assert.ok(raw.equals(plain.bytes));
  execFileSync("gzip", ["-t", a.file]);
});

test("large files are streamed (content never held whole) and hashed", async () => {
  const dir = path.join(tmp, "big");
  await mkdir(dir);
  const big = Buffer.alloc(20 * 1024 * 1024 + 123, 7);
  await writeFile(path.join(dir, "big.bin"), big);
  const { res } = await tarOf(dir, "big.tar.gz", true);
  assert.equal(res.entries[0]!.sha256, createHash("sha256").update(big).digest("hex"));
  assert.equal(res.tarSize, 512 + big.length + (512 - (big.length % 512)) + 1024);
});

test("archives across chunk sizes: what GNU tar extracts is what was packed, gzipped or not", async () => {
  // Sizes around the packer's first chunk (64 KiB), its doublings and a block (1 MiB), in random
  // bytes so that a byte copied to the wrong place shows.
  const dir = path.join(tmp, "chunks");
  await mkdir(dir);
  const files = new Map<string, Buffer>();
  for (const [i, size] of [100, 65_000, 70_000, 3, 200_000, 600_000, 1_048_576, 1_500_000, 10].entries()) {
    const name = `f${String(i).padStart(2, "0")}.bin`;
    const bytes = randomBytes(size);
    files.set(name, bytes);
    await writeFile(path.join(dir, name), bytes);
  }
  const gz = await tarOf(dir, "chunks.tar.gz", true);
  const plain = await tarOf(dir, "chunks.tar", false);
  assert.ok(gunzipSync(gz.bytes).equals(plain.bytes));
  const out = path.join(tmp, "chunks-out");
  await mkdir(out);
  execFileSync("tar", ["-xzf", gz.file, "-C", out]);
  for (const [name, bytes] of files) assert.ok((await readFile(path.join(out, name))).equals(bytes), name);
});

test("unsupported entries and bad epochs are refused", async () => {
  const dir = path.join(tmp, "fifo");
  await mkdir(dir);
  execFileSync("mkfifo", [path.join(dir, "pipe")]);
  await assert.rejects(writeTarFromDirectory(dir, createWriteStream(path.join(tmp, "f.tar")), { epoch: 0 }), /unsupported file type/);
  await assert.rejects(writeTarFromDirectory(treeA, createWriteStream(path.join(tmp, "g.tar")), { epoch: -1 }), /bad epoch/);
});
