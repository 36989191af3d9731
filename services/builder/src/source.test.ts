import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { BuildFailure } from "./errors.ts";
import { fetchSource, isLoopbackHost, unpackArchive } from "./source.ts";
import { ArtifactStore, DigestMismatchError } from "./store.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-source-"));
after(() => rm(tmp, { recursive: true, force: true }));

const sha256File = async (f: string) => createHash("sha256").update(await readFile(f)).digest("hex");

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
    await assert.rejects(fetchSource({ url: `http://127.0.0.1:${port}/missing`, sha256: "0".repeat(64) }, store3, opts), (e: unknown) => e instanceof BuildFailure && /HTTP 404/.test(e.message));
    const store4 = new ArtifactStore(path.join(tmp, "d4"));
    await assert.rejects(fetchSource({ url: `http://127.0.0.1:${port}/pkg.tar.gz`, sha256 }, store4, { baseDir: tmp, maxBytes: 100 }), (e: unknown) => e instanceof BuildFailure && /limit of 100/.test(e.message));
    assert.deepEqual(await blobs(store4), []);
  } finally {
    server.close();
  }
  await assert.rejects(fetchSource({ url: "http://192.0.2.1/x.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts), /only loopback hosts/);
  await assert.rejects(fetchSource({ url: "ftp://127.0.0.1/x.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts), /not supported/);
  await assert.rejects(fetchSource({ url: "nope.tar.gz", sha256 }, new ArtifactStore(path.join(tmp, "d5")), opts), (e: unknown) => e instanceof BuildFailure && /ENOENT/.test(e.message));

  const out = path.join(tmp, "unpacked");
  const r = await unpackArchive(s1.path, out, "source");
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
    await assert.rejects(unpackArchive(archive, dest, "source"), (e: unknown) => e instanceof BuildFailure && c.error.test(e.message), c.name);
    await assert.rejects(stat(dest), c.name); // nothing was unpacked
    await assert.rejects(stat(path.join(tmp, `out-${c.name}`, "deep", "outside")));
  }
});

test("a symlink that climbs but stays inside (after stripping the top dir) is fine; non-single-top archives are not stripped", async () => {
  const d = path.join(tmp, "inside");
  await mkdir(path.join(d, "top/a/b"), { recursive: true });
  await writeFile(path.join(d, "top/f"), "f\n");
  await symlink("../../f", path.join(d, "top/a/b/lnk"));
  const r1 = await unpackArchive(tarGz(path.join(tmp, "inside.tar.gz"), d, ["top"]), path.join(tmp, "inside-out"), "source");
  assert.equal(r1.stripped, true);
  assert.equal(await readFile(path.join(tmp, "inside-out/a/b/lnk"), "utf8"), "f\n");

  const r2 = await unpackArchive(tarGz(path.join(tmp, "flat.tar.gz"), path.join(d, "top"), ["f", "a"]), path.join(tmp, "flat-out"), "source");
  assert.equal(r2.stripped, false);
  assert.equal(await readFile(path.join(tmp, "flat-out/f"), "utf8"), "f\n");
});

test("garbage is a BuildFailure; loopback detection", async () => {
  await writeFile(path.join(tmp, "garbage.tar.gz"), "not a tarball at all");
  await assert.rejects(unpackArchive(path.join(tmp, "garbage.tar.gz"), path.join(tmp, "g-out"), "source"), BuildFailure);
  for (const h of ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "::1"]) assert.ok(isLoopbackHost(h), h);
  for (const h of ["10.0.0.1", "example.com", "[::2]", "128.0.0.1"]) assert.ok(!isLoopbackHost(h), h);
});
