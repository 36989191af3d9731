import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { createGzip } from "node:zlib";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { BuildFailure } from "./errors.ts";
import { craftTar, craftTarGz, type CraftedEntry } from "../../../test/fixtures/crafted-tar.ts";
import { fetchSource, isLoopbackHost, unpackArchive, type UnpackLimits } from "./source.ts";
import { ArtifactStore, DigestMismatchError } from "./store.ts";
import { reproducibleGit } from "./test-support.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-source-"));
after(() => rm(tmp, { recursive: true, force: true }));

const limits: UnpackLimits = { maxBytes: 64 << 20, maxEntries: 1000 };

const sha256File = async (f: string) =>
  createHash("sha256")
    .update(await readFile(f))
    .digest("hex");

/** GNU tar; -P keeps absolute and `..` names exactly as given. */
function tarGz(out: string, cwd: string, names: string[], absolute = false): string {
  execFileSync("tar", ["-czf", out, ...(absolute ? ["-P"] : []), "-C", cwd, ...names]);
  return out;
}

let good: Promise<{ file: string; sha256: string }> | undefined;
function goodArchive(): Promise<{ file: string; sha256: string }> {
  good ??= makeGoodArchive();
  return good;
}

async function makeGoodArchive(): Promise<{ file: string; sha256: string }> {
  const src = path.join(tmp, "good");
  await mkdir(path.join(src, "pkg-1.0/sub"), { recursive: true });
  await writeFile(path.join(src, "pkg-1.0/README"), "hello\n");
  await writeFile(path.join(src, "pkg-1.0/sub/x.c"), "int x;\n");
  await symlink("../README", path.join(src, "pkg-1.0/sub/readme-link"));
  const file = tarGz(path.join(tmp, "pkg-1.0.tar.gz"), src, ["pkg-1.0"]);
  return { file, sha256: await sha256File(file) };
}

async function blobs(store: ArtifactStore): Promise<string[]> {
  return readdir(path.join(store.root, "blobs", "sha256")).catch(() => []);
}

test("store: put is content-addressed and atomic; a mismatch stores nothing", async () => {
  const store = new ArtifactStore(path.join(tmp, "data-store"));
  const a = await store.putBytes("hello");
  assert.equal(a.digest, `sha256:${createHash("sha256").update("hello").digest("hex")}`);
  assert.ok(await store.has(a.digest));
  assert.equal(await readFile(store.path(a.digest), "utf8"), "hello");
  assert.deepEqual(await store.putBytes("hello"), a);
  await assert.rejects(store.putBytes("other", { expected: a.digest }), DigestMismatchError);
  await assert.rejects(store.putBytes("x".repeat(100), { maxBytes: 10 }), /exceeds the limit/);
  assert.deepEqual(await blobs(store), [a.digest.slice(7)]);
  assert.deepEqual(await readdir(path.join(store.root, "tmp")), []);
  assert.ok(await store.verify(a.digest));
});

test("fetch by relative path, file:// URL and loopback http; verified, then unpacked without the top directory", async () => {
  const { file, sha256 } = await goodArchive();
  const opts = { baseDir: tmp, maxBytes: 1 << 20 };

  const s1 = await fetchSource({ url: path.basename(file), sha256 }, new ArtifactStore(path.join(tmp, "d1")), opts);
  assert.equal(s1.digest, `sha256:${sha256}`);
  const s2 = await fetchSource({ url: pathToFileURL(file).href, sha256 }, new ArtifactStore(path.join(tmp, "d2")), opts);
  assert.equal(s2.digest, s1.digest);

  const server = createServer((req, res) => {
    if (req.url === "/pkg.tar.gz") createReadStream(file).pipe(res);
    else res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  try {
    const store3 = new ArtifactStore(path.join(tmp, "d3"));
    const s3 = await fetchSource({ url: `http://127.0.0.1:${port}/pkg.tar.gz`, sha256 }, store3, opts);
    assert.equal(s3.digest, s1.digest);
    await assert.rejects(
      fetchSource({ url: `http://127.0.0.1:${port}/missing`, sha256: "0".repeat(64) }, store3, opts),
      (e: unknown) => e instanceof BuildFailure && /HTTP 404/.test(e.message),
    );
    const store4 = new ArtifactStore(path.join(tmp, "d4"));
    await assert.rejects(
      fetchSource({ url: `http://127.0.0.1:${port}/pkg.tar.gz`, sha256 }, store4, { baseDir: tmp, maxBytes: 100 }),
      (e: unknown) => e instanceof BuildFailure && /limit of 100/.test(e.message),
    );
    assert.deepEqual(await blobs(store4), []);
  } finally {
    server.close();
  }
  await assert.rejects(fetchSource({ url: "http://192.0.2.1/x.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts), /only loopback hosts/);
  await assert.rejects(fetchSource({ url: "ftp://127.0.0.1/x.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts), /not supported/);
  await assert.rejects(
    fetchSource({ url: "nope.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts),
    (e: unknown) => e instanceof BuildFailure && /ENOENT/.test(e.message),
  );

  const out = path.join(tmp, "unpacked");
  const r = await unpackArchive(s1.path, out, "source", { limits });
  assert.equal(r.stripped, true);
  assert.equal(await readFile(path.join(out, "README"), "utf8"), "hello\n");
  assert.equal(await readFile(path.join(out, "sub/x.c"), "utf8"), "int x;\n");
  assert.equal(await readlink(path.join(out, "sub/readme-link")), "../README");
});

test("a sha256 mismatch is a BuildFailure naming expected and actual digests, and nothing is stored", async () => {
  const { file, sha256 } = await goodArchive();
  const store = new ArtifactStore(path.join(tmp, "mismatch"));
  const wrong = "ab".repeat(32);
  const err = await fetchSource({ url: file, sha256: wrong }, store, { baseDir: tmp, maxBytes: 1 << 20 }).then(
    () => assert.fail("should fail"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof BuildFailure);
  assert.match(err.message, new RegExp(`expected sha256:${wrong}, got sha256:${sha256}`));
  assert.deepEqual(await blobs(store), []);
  assert.deepEqual(await readdir(path.join(store.root, "tmp")), []);
});

test("archives with absolute paths, '..' or links leaving the tree are refused before anything is written", async () => {
  const base = path.join(tmp, "evil");
  await mkdir(path.join(base, "top"), { recursive: true });
  await writeFile(path.join(base, "top/ok"), "ok\n");
  await writeFile(path.join(base, "outside"), "outside\n");

  const cases: { name: string; make: () => Promise<string>; error: RegExp }[] = [
    {
      name: "dotdot",
      make: async () => tarGz(path.join(tmp, "dotdot.tar.gz"), path.join(base, "top"), ["ok", "../outside"], true),
      error: /entry "\.\.\/outside" contains '\.\.'/,
    },
    {
      name: "absolute",
      make: async () => tarGz(path.join(tmp, "abs.tar.gz"), base, [path.join(base, "outside")], true),
      error: /has an absolute path/,
    },
    {
      name: "symlink-absolute",
      make: async () => {
        const d = path.join(tmp, "sl1");
        await mkdir(path.join(d, "top"), { recursive: true });
        await symlink("/etc/passwd", path.join(d, "top/passwd"));
        return tarGz(path.join(tmp, "sl1.tar.gz"), d, ["top"]);
      },
      error: /points outside the tree \(absolute target/,
    },
    {
      name: "symlink-climb",
      make: async () => {
        const d = path.join(tmp, "sl2");
        await mkdir(path.join(d, "top/a"), { recursive: true });
        await symlink("../../../etc", path.join(d, "top/a/up"));
        return tarGz(path.join(tmp, "sl2.tar.gz"), d, ["top"]);
      },
      error: /"top\/a\/up" -> "\.\.\/\.\.\/\.\.\/etc" points outside the tree/,
    },
  ];
  for (const c of cases) {
    const archive = await c.make();
    const dest = path.join(tmp, `out-${c.name}`, "deep", "src");
    await assert.rejects(unpackArchive(archive, dest, "source", { limits }), (e: unknown) => e instanceof BuildFailure && c.error.test(e.message), c.name);
    await assert.rejects(stat(dest), c.name); // nothing was unpacked
    await assert.rejects(stat(path.join(tmp, `out-${c.name}`, "deep", "outside")));
  }
});

test("a symlink that climbs but stays inside (after stripping the top dir) is fine; non-single-top archives are not stripped", async () => {
  const d = path.join(tmp, "inside");
  await mkdir(path.join(d, "top/a/b"), { recursive: true });
  await writeFile(path.join(d, "top/f"), "f\n");
  await symlink("../../f", path.join(d, "top/a/b/lnk"));
  const r1 = await unpackArchive(tarGz(path.join(tmp, "inside.tar.gz"), d, ["top"]), path.join(tmp, "inside-out"), "source", { limits });
  assert.equal(r1.stripped, true);
  assert.equal(await readFile(path.join(tmp, "inside-out/a/b/lnk"), "utf8"), "f\n");

  const r2 = await unpackArchive(tarGz(path.join(tmp, "flat.tar.gz"), path.join(d, "top"), ["f", "a"]), path.join(tmp, "flat-out"), "source", { limits });
  assert.equal(r2.stripped, false);
  assert.equal(await readFile(path.join(tmp, "flat-out/f"), "utf8"), "f\n");
});

test("a verified archive's scan is remembered by digest and limits: the entries' checks and the limits still apply on every unpack", async () => {
  const d = path.join(tmp, "remembered");
  await mkdir(path.join(d, "top/sub"), { recursive: true });
  await writeFile(path.join(d, "top/f"), "f\n");
  await writeFile(path.join(d, "top/sub/g"), "g\n");
  const file = tarGz(path.join(tmp, "remembered.tar.gz"), d, ["top"]);
  const digest = `sha256:${createHash("sha256")
    .update(await readFile(file))
    .digest("hex")}` as const;
  const first = await unpackArchive(file, path.join(tmp, "remembered-1"), "source", { limits, digest });
  const again = await unpackArchive(file, path.join(tmp, "remembered-2"), "source", { limits, digest });
  assert.deepEqual(again, first);
  assert.equal(first.stripped, true);
  assert.equal(await readFile(path.join(tmp, "remembered-2/sub/g"), "utf8"), "g\n");
  // Another unpack's options: not stripped this time.
  const flat = await unpackArchive(file, path.join(tmp, "remembered-3"), "source", { limits, digest, stripTopDir: false });
  assert.equal(flat.stripped, false);
  assert.equal(await readFile(path.join(tmp, "remembered-3/top/f"), "utf8"), "f\n");
  // Tighter limits: scanned again, and refused.
  await assert.rejects(
    unpackArchive(file, path.join(tmp, "remembered-4"), "source", { limits: { ...limits, maxEntries: 2 }, digest }),
    (e: unknown) => e instanceof BuildFailure && /more than 2 entries/.test(e.message),
  );
});

test("small and large archives (unpacked with synchronous and asynchronous calls) come out the same", async () => {
  const d = path.join(tmp, "sizes");
  await mkdir(path.join(d, "top"), { recursive: true });
  const big = randomBytes(1536 * 1024);
  await writeFile(path.join(d, "top/small"), "small\n");
  const small = tarGz(path.join(tmp, "small.tar.gz"), d, ["top"]);
  await writeFile(path.join(d, "top/big"), big);
  await symlink("big", path.join(d, "top/big-link"));
  const large = tarGz(path.join(tmp, "large.tar.gz"), d, ["top"]);
  assert.deepEqual(await unpackArchive(small, path.join(tmp, "small-out"), "source", { limits }), { stripped: true, entries: 2 });
  assert.deepEqual(await unpackArchive(large, path.join(tmp, "large-out"), "source", { limits }), { stripped: true, entries: 4 });
  assert.equal(await readFile(path.join(tmp, "small-out/small"), "utf8"), "small\n");
  assert.ok((await readFile(path.join(tmp, "large-out/big"))).equals(big));
  assert.equal(await readlink(path.join(tmp, "large-out/big-link")), "big");
});

test("garbage is a BuildFailure; loopback detection", async () => {
  await writeFile(path.join(tmp, "garbage.tar.gz"), "not a tarball at all");
  await assert.rejects(unpackArchive(path.join(tmp, "garbage.tar.gz"), path.join(tmp, "g-out"), "source", { limits }), BuildFailure);
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "::1"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["10.0.0.1", "example.com", "[::2]", "128.0.0.1"]) assert.ok(!isLoopbackHost(h), h);
});

/**
 * Unpacks `archive` into `<case>/workspace/src` and expects `error`; then checks that nothing
 * was written: not the destination, and nothing beside the workspace (where every escape in
 * these archives aims).
 */
async function expectRefused(name: string, archive: Buffer, error: RegExp, lim: UnpackLimits = limits): Promise<void> {
  const caseDir = path.join(tmp, "attacks", name);
  const workspace = path.join(caseDir, "workspace");
  await mkdir(workspace, { recursive: true });
  const file = path.join(caseDir, "archive.tar.gz");
  await writeFile(file, archive);
  const dest = path.join(workspace, "src");
  await assert.rejects(unpackArchive(file, dest, "source", { limits: lim }), (e: unknown) => e instanceof BuildFailure && error.test(e.message), name);
  await assert.rejects(stat(dest), `${name}: the destination was created`);
  assert.deepEqual((await readdir(caseDir)).sort(), ["archive.tar.gz", "workspace"], `${name}: something was written beside the workspace`);
  assert.deepEqual(await readdir(workspace), [], `${name}: something was written in the workspace`);
}

const file = (p: string, body = "x\n"): CraftedEntry => ({ path: p, type: "0", body });

test("crafted archives: every attack is refused with a clear error and nothing is written", async () => {
  await expectRefused("abs", craftTarGz([file("top/ok"), file("/tmp/hs-evil")]), /entry "\/tmp\/hs-evil" has an absolute path/);
  await expectRefused("dotdot", craftTarGz([file("top/ok"), file("top/../../escaped")]), /contains '\.\.'/);
  await expectRefused("symlink-abs", craftTarGz([file("top/ok"), { path: "top/l", type: "2", linkpath: "/etc" }]), /absolute target "\/etc"/);
  await expectRefused(
    "symlink-climb",
    craftTarGz([file("top/ok"), { path: "top/l", type: "2", linkpath: "../escaped" }]),
    /"top\/l" -> "\.\.\/escaped" points outside the tree/,
  );
  // Lexically `a/up/../..` stays inside; through the archive's own link `a/up -> ..` it leaves.
  await expectRefused(
    "symlink-chain",
    craftTarGz([
      file("top/ok"),
      { path: "top/a/", type: "5" },
      { path: "top/a/up", type: "2", linkpath: ".." },
      { path: "top/y", type: "2", linkpath: "a/up/../.." },
    ]),
    /"top\/y" -> "a\/up\/\.\.\/\.\." points outside the tree/,
  );
  await expectRefused(
    "symlink-loop",
    craftTarGz([file("top/ok"), { path: "top/a", type: "2", linkpath: "b" }, { path: "top/b", type: "2", linkpath: "a" }]),
    /points outside the tree/,
  );
  await expectRefused(
    "hardlink-climb",
    craftTarGz([file("top/ok"), { path: "top/h", type: "1", linkpath: "top/../../escaped" }]),
    /hard link "top\/h" target contains '\.\.'/,
  );
  await expectRefused("hardlink-abs", craftTarGz([file("top/ok"), { path: "top/h", type: "1", linkpath: "/etc/passwd" }]), /absolute target "\/etc\/passwd"/);
  // A hard link through a symlink that leaves the tree: the symlink alone is refused first.
  await expectRefused(
    "hardlink-via-symlink",
    craftTarGz([file("top/ok"), { path: "top/out", type: "2", linkpath: "../.." }, { path: "top/h", type: "1", linkpath: "top/out/etc/passwd" }]),
    /points outside the tree/,
  );
  await expectRefused("char-device", craftTarGz([file("top/ok"), { path: "top/null", type: "3" }]), /entry "top\/null" has unsupported type CharacterDevice/);
  await expectRefused("block-device", craftTarGz([file("top/ok"), { path: "top/sda", type: "4" }]), /entry "top\/sda" has unsupported type BlockDevice/);
  await expectRefused("fifo", craftTarGz([file("top/ok"), { path: "top/p", type: "6" }]), /entry "top\/p" has unsupported type FIFO/);
});

test("limits: too many entries, too many bytes (a lying header fails before its body is read), a decompression bomb", async () => {
  const many = Array.from({ length: 30 }, (_, i) => file(`top/f${i}`));
  await expectRefused("entries", craftTarGz(many), /has more than 20 entries \(the limit\)/, { maxBytes: 1 << 20, maxEntries: 20 });

  await expectRefused(
    "bytes",
    craftTarGz([file("top/a", "a".repeat(600_000)), file("top/b", "b".repeat(600_000))]),
    /unpacks to more than 1000000 bytes \(the limit; entry "top\/b" declares 600000\)/,
    {
      maxBytes: 1_000_000,
      maxEntries: 100,
    },
  );
  // A header that claims 1 TiB with no body: refused on the header, not as a truncated archive.
  await expectRefused(
    "huge-header",
    craftTarGz([file("top/ok"), { path: "top/huge", type: "0", declaredSize: 2 ** 40 }]),
    /unpacks to more than 67108864 bytes .*declares 1099511627776/,
  );

  // 96 MiB of zeros gzip to about 100 KB: refused once 64 MiB have been inflated.
  const gz = createGzip();
  const out: Buffer[] = [];
  gz.on("data", (b: Buffer) => out.push(b));
  const ended = new Promise((r) => gz.on("end", r));
  gz.write(craftTar([{ path: "top/zeros", type: "0", declaredSize: 96 << 20 }]).subarray(0, 512));
  const mib = Buffer.alloc(1 << 20);
  for (let i = 0; i < 96; i++) gz.write(mib);
  gz.end(Buffer.alloc(1024));
  await ended;
  const bomb = Buffer.concat(out);
  assert.ok(bomb.length < 1 << 20, `bomb is ${bomb.length} bytes`);
  await expectRefused("bomb", bomb, /decompression bomb: \d+ compressed bytes expand to more than \d+ \(over 200:1\)/, { maxBytes: 1 << 30, maxEntries: 100 });
});

test("symlinks and hard links to in-tree files are fine", async () => {
  const archive = craftTarGz([
    file("top/lib/real.txt", "real\n"),
    { path: "top/bin/", type: "5" },
    { path: "top/bin/r", type: "2", linkpath: "../lib/real.txt" },
    { path: "top/bin/lib", type: "2", linkpath: "../lib" },
    { path: "top/hard", type: "1", linkpath: "top/lib/real.txt" },
  ]);
  const f = path.join(tmp, "fine.tar.gz");
  await writeFile(f, archive);
  const dest = path.join(tmp, "fine-out");
  const r = await unpackArchive(f, dest, "source", { limits });
  assert.equal(r.stripped, true);
  assert.equal(await readFile(path.join(dest, "bin/r"), "utf8"), "real\n");
  assert.equal(await readFile(path.join(dest, "bin/lib/real.txt"), "utf8"), "real\n");
  assert.equal(await readFile(path.join(dest, "hard"), "utf8"), "real\n");
});

/** A git repository with two commits; returns the commits and the sha256 of each one's `git archive` tar. */
async function gitRepo(): Promise<{ dir: string; first: string; second: string; firstSha: string }> {
  const dir = path.join(tmp, "repo");
  const git = reproducibleGit(dir);
  await mkdir(path.join(dir, "src"), { recursive: true });
  git("init", "-q", "-b", "main");
  await writeFile(path.join(dir, "src/main.c"), "int main(void) { return 0; }\n");
  await writeFile(path.join(dir, "Makefile"), "all:\n\techo v1 > version\n");
  git("add", ".");
  git("commit", "-qm", "v1");
  const first = git("rev-parse", "HEAD").toString().trim();
  await writeFile(path.join(dir, "Makefile"), "all:\n\techo v2 > version\n");
  git("commit", "-qam", "v2");
  const second = git("rev-parse", "HEAD").toString().trim();
  const tarBytes = git("archive", "--format=tar", first);
  return { dir, first, second, firstSha: createHash("sha256").update(tarBytes).digest("hex") };
}

test("git source pinned to a commit: that commit's tree (not the branch tip), sha256 verified alongside, then cached", async () => {
  const repo = await gitRepo();
  const url = `git+${pathToFileURL(repo.dir).href}#${repo.first}`;
  const store = new ArtifactStore(path.join(tmp, "git-data"));
  const opts = { baseDir: tmp, maxBytes: 1 << 20 };

  const s = await fetchSource({ url, sha256: repo.firstSha }, store, opts);
  assert.equal(s.digest, `sha256:${repo.firstSha}`);
  const out = path.join(tmp, "git-out");
  const r = await unpackArchive(s.path, out, "source", { stripTopDir: false, limits });
  assert.equal(r.stripped, false);
  assert.equal(await readFile(path.join(out, "Makefile"), "utf8"), "all:\n\techo v1 > version\n");
  assert.equal(await readFile(path.join(out, "src/main.c"), "utf8"), "int main(void) { return 0; }\n");
  // no scratch repository is left behind
  assert.deepEqual(await readdir(path.join(store.root, "tmp")), []);

  // The same commit exported into another store gives the same bytes.
  const again = await fetchSource({ url, sha256: repo.firstSha }, new ArtifactStore(path.join(tmp, "git-data-2")), opts);
  assert.equal(again.digest, s.digest);

  // The right commit with the wrong sha256 (here: the other commit's) is refused, nothing stored.
  const other = new ArtifactStore(path.join(tmp, "git-data-3"));
  await assert.rejects(
    fetchSource({ url: `git+${pathToFileURL(repo.dir).href}#${repo.second}`, sha256: repo.firstSha }, other, opts),
    (e: unknown) => e instanceof BuildFailure && new RegExp(`sha256 mismatch: expected sha256:${repo.firstSha}`).test(e.message),
  );
  assert.deepEqual(await blobs(other), []);
  assert.deepEqual(await readdir(path.join(other.root, "tmp")), []);

  // Once verified, the source comes from the store: git is not needed any more.
  await rm(repo.dir, { recursive: true });
  assert.deepEqual(await fetchSource({ url, sha256: repo.firstSha }, store, opts), s);
});

test("a git fetch that grows past the source size limit is stopped; nothing is stored or left behind", async () => {
  const dir = path.join(tmp, "repo-big");
  await mkdir(dir, { recursive: true });
  execFileSync("git", ["init", "-q", dir]);
  // Random bytes do not compress: the pack is as large as the file.
  await writeFile(path.join(dir, "blob.bin"), randomBytes(2 << 20));
  execFileSync("git", ["-C", dir, "add", "."]);
  execFileSync("git", ["-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "big"]);
  const commit = execFileSync("git", ["-C", dir, "rev-parse", "HEAD"], { encoding: "utf8" }).trim();
  const store = new ArtifactStore(path.join(tmp, "git-big"));
  const url = `git+${pathToFileURL(dir).href}#${commit}`;
  await assert.rejects(
    fetchSource({ url, sha256: "0".repeat(64) }, store, { baseDir: tmp, maxBytes: 512 << 10 }),
    (e: unknown) => e instanceof BuildFailure && /the fetch grew past 524288 bytes .*HOMEOSTAT_MAX_SOURCE_BYTES/.test(e.message),
  );
  assert.deepEqual(await blobs(store), []);
  assert.deepEqual(await readdir(path.join(store.root, "tmp")), []);
});

test("git sources: unpinned, malformed, unknown commits and foreign transports are BuildFailures", async () => {
  const store = new ArtifactStore(path.join(tmp, "git-bad"));
  const opts = { baseDir: tmp, maxBytes: 1 << 20 };
  const sha256 = "0".repeat(64);
  const repoDir = path.join(tmp, "repo-bad");
  await mkdir(repoDir, { recursive: true });
  execFileSync("git", ["init", "-q", repoDir]);
  const repoUrl = pathToFileURL(repoDir).href;
  const cases: [string, RegExp][] = [
    [`git+${repoUrl}`, /must end in #<full commit id>/],
    [`git+${repoUrl}#main`, /must end in #<full commit id>/],
    [`git+${repoUrl}#abc1234`, /must end in #<full commit id>/],
    [`git+${repoUrl}#${"a".repeat(40)}`, /git fetch exited with 128/],
    [`git+ftp://127.0.0.1/repo#${"a".repeat(40)}`, /transport ftp: is not supported/],
    [`git+ssh://127.0.0.1/repo#${"a".repeat(40)}`, /transport ssh: is not supported/],
    [`git+http://192.0.2.1/repo.git#${"a".repeat(40)}`, /only loopback hosts are allowed/],
    [`git+http://user:pw@127.0.0.1/repo.git#${"a".repeat(40)}`, /credentials in the URL are not allowed/],
  ];
  for (const [url, error] of cases) {
    await assert.rejects(fetchSource({ url, sha256 }, store, opts), (e: unknown) => e instanceof BuildFailure && error.test(e.message), url);
  }
  assert.deepEqual(await blobs(store), []);
});
