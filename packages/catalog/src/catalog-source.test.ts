import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, utimesSync } from "node:fs";
import path from "node:path";
import { CatalogError } from "./catalog.ts";
import { CatalogSource, directoryFingerprint, parseCatalogLocation } from "./catalog-source.ts";
import { git, scratchDirs, writeFiles as write } from "../../../test/fixtures/scratch.ts";

const sha = "0".repeat(64);
const pkg = (name: string, build: string[] = [], steps = "[make]") =>
  `name: ${name}\nversion: "1.0"\nsource:\n  url: ../sources/${name}.tar.gz\n  sha256: "${sha}"\nbuild:\n  steps: ${steps}\ndependencies:\n  build: [${build.join(", ")}]\n`;
const base = {
  "packages/base.yaml": pkg("base"),
  "packages/lib.yaml": pkg("lib", ["base"]),
  "packages/app.yaml": pkg("app", ["lib"]),
  "images/app.yaml": "name: app\npackages: [app]\n",
};

const tmp = scratchDirs();

/** A repository holding the catalog under catalog/, one commit per call of commit(). */
function repo(): { dir: string; commit: (files: Record<string, string>, message: string) => string } {
  const dir = tmp("catalog-repo-");
  git(dir, "init", "--quiet", "--initial-branch=main");
  return {
    dir,
    commit(files, message) {
      write(dir, Object.fromEntries(Object.entries(files).map(([f, t]) => [`catalog/${f}`, t])));
      git(dir, "add", "-A");
      git(dir, "commit", "--quiet", "-m", message);
      return git(dir, "rev-parse", "HEAD");
    },
  };
}

test("catalog locations: a directory or git+<repository>#<ref>[:<path>]", () => {
  assert.deepEqual(parseCatalogLocation("examples/catalog"), { dir: path.resolve("examples/catalog") });
  assert.deepEqual(parseCatalogLocation("git+https://example.org/c.git#main:catalog"), { git: "https://example.org/c.git", ref: "main", path: "catalog" });
  assert.deepEqual(parseCatalogLocation("git+/srv/c#v1.2"), { git: "/srv/c", ref: "v1.2", path: "." });
  assert.throws(() => parseCatalogLocation("git+/srv/c"), /needs #<ref>/);
  assert.throws(() => parseCatalogLocation("git+/srv/c#main:../x"), /inside the repository/);
});

test("a directory source: a bad edit is rejected and the previous catalog keeps serving", async () => {
  const dir = tmp("catalog-dir-");
  write(dir, base);
  const source = await CatalogSource.open({ dir }, { cacheDir: tmp("catalog-cache-") });
  const first = source.current();
  assert.equal((await source.reload()).status, "unchanged");

  write(dir, { "packages/lib.yaml": pkg("lib", ["base"]) + "colour: blue\n" });
  const bad = await source.reload();
  assert.equal(bad.status, "rejected");
  assert.ok(
    bad.status === "rejected" && bad.error instanceof CatalogError && /packages\/lib\.yaml:10: colour: /.test(bad.error.message),
    String(bad.status === "rejected" && bad.error),
  );
  assert.equal(source.current(), first);

  write(dir, { "packages/lib.yaml": pkg("lib", ["base"], "[make, make check]") });
  // Same size as a previous state is still a change: the fingerprint has the modification time.
  utimesSync(path.join(dir, "packages/lib.yaml"), new Date(), new Date(Date.now() + 5000));
  const good = await source.reload();
  assert.equal(good.status, "changed");
  assert.ok(good.status === "changed");
  assert.deepEqual(good.diff.keys, ["package/lib", "package/app", "image/app"]);
  assert.equal(good.previous, first);
  assert.equal(source.current(), good.catalog);
});

test("a git source pinned to a commit reads that commit's tree and names the commit", async () => {
  const r = repo();
  write(r.dir, { "sources/base.tar.gz": "not really a tarball" });
  const c1 = r.commit(base, "first");
  const c2 = r.commit({ "packages/base.yaml": pkg("base", [], "[make, make test]") }, "second");
  const cacheDir = tmp("catalog-cache-");
  const source = await CatalogSource.open({ git: r.dir, ref: c1, path: "catalog" }, { cacheDir });
  const catalog = source.current();
  assert.equal(catalog.commit, c1);
  assert.equal(catalog.packages.get("base")!.build.steps.length, 1, "the pinned commit, not the newest");
  // Relative source paths resolve inside the extracted tree, as in the repository.
  assert.ok(existsSync(new URL(catalog.resolveSourceUrl("../sources/base.tar.gz", "1.0"))));
  assert.equal(git(r.dir, "status", "--porcelain"), "", "the repository is left alone");
  assert.equal((await source.reload()).status, "unchanged");

  const atHead = await CatalogSource.open({ git: r.dir, ref: "main", path: "catalog" }, { cacheDir });
  assert.equal(atHead.current().commit, c2);
});

test("a git source following a branch: changes, a bad commit rejected, old trees pruned", async () => {
  const r = repo();
  const c1 = r.commit(base, "first");
  const cacheDir = tmp("catalog-cache-");
  // Through a URL, as a remote catalog would be: mirrored into the cache.
  const source = await CatalogSource.open({ git: `file://${r.dir}`, ref: "main", path: "catalog" }, { cacheDir });
  assert.equal(source.current().commit, c1);

  const c2 = r.commit({ "packages/app.yaml": pkg("app", ["lib"], "[make, make install]") }, "touch app");
  const changed = await source.reload();
  assert.ok(changed.status === "changed", changed.status);
  assert.equal(changed.catalog.commit, c2);
  assert.deepEqual(changed.diff.keys, ["package/app", "image/app"]);

  r.commit({ "packages/lib.yaml": pkg("lib", ["ghost"]) }, "break lib");
  const rejected = await source.reload();
  assert.ok(rejected.status === "rejected");
  assert.match(rejected.error.message, /packages\/lib\.yaml:9: dependencies\.build\[0\]: unknown package "ghost"/);
  assert.equal(source.current().commit, c2);
  // Polling the same bad commit again does not load it again: the same rejection comes back.
  const again = await source.reload();
  assert.ok(again.status === "rejected" && again.error === rejected.error);

  const c4 = r.commit({ "packages/lib.yaml": pkg("lib", ["base"]) }, "fix lib");
  const fixed = await source.reload();
  assert.ok(fixed.status === "changed");
  assert.equal(fixed.catalog.commit, c4);
  assert.deepEqual(fixed.diff.keys, [], "back to c2's recipes");
  // The serving tree and the previous one are kept, older ones removed.
  assert.deepEqual(readdirSync(path.join(cacheDir, "trees")).sort(), [c2, c4].sort());
});

test("the watcher reports each change and each new rejection once, and stops when aborted", async () => {
  const dir = tmp("catalog-dir-");
  write(dir, base);
  const source = await CatalogSource.open({ dir }, { cacheDir: tmp("catalog-cache-") });
  const seen: string[] = [];
  const ac = new AbortController();
  const watching = source.watch({ intervalMs: 20, signal: ac.signal, onReload: (r) => seen.push(r.status) });
  const until = async (n: number) => {
    for (let i = 0; i < 200 && seen.length < n; i++) await new Promise((res) => setTimeout(res, 10));
  };
  write(dir, { "images/app.yaml": "name: app\npackages: [nope]\n" });
  await until(1);
  await new Promise((res) => setTimeout(res, 100));
  write(dir, { "images/app.yaml": "name: app\npackages: [app, lib]\n" });
  await until(2);
  ac.abort();
  await watching;
  assert.deepEqual(seen, ["rejected", "changed"]);
  assert.deepEqual(source.current().images.get("app")!.packages, ["app", "lib"]);
});

test("a directory's fingerprint: the same for the same files, another when any one of them, deep in a large tree, changes size or time", async () => {
  // More files than one turn of stats (STATS_PER_TURN), in nested directories.
  const dir = tmp("catalog-fingerprint-");
  write(dir, Object.fromEntries(Array.from({ length: 1_200 }, (_, i) => [`packages/${String(i % 7)}/${String(i % 3)}/p${i}.yaml`, `n: ${i}\n`])));
  const first = await directoryFingerprint(dir);
  assert.match(first, /^[0-9a-f]{64}$/);
  assert.equal(await directoryFingerprint(dir), first);
  const last = path.join(dir, "packages/2/2/p1199.yaml");
  utimesSync(last, new Date(0), new Date(0));
  const touched = await directoryFingerprint(dir);
  assert.notEqual(touched, first, "a modification time");
  write(dir, { "packages/2/2/p1199.yaml": "n: 1199 changed\n" });
  utimesSync(last, new Date(0), new Date(0));
  assert.notEqual(await directoryFingerprint(dir), touched, "a size");
  write(dir, { "packages/0/0/new.yaml": "n: new\n" });
  assert.notEqual(await directoryFingerprint(dir), touched, "a new file");
});

test("a first load that fails throws: there is nothing good to serve", async () => {
  const dir = tmp("catalog-dir-");
  write(dir, { "packages/a.yaml": "name: a\n" });
  await assert.rejects(CatalogSource.open({ dir }, { cacheDir: tmp("catalog-cache-") }), CatalogError);
  const r = repo();
  r.commit(base, "first");
  await assert.rejects(CatalogSource.open({ git: r.dir, ref: "nope", path: "catalog" }, { cacheDir: tmp("catalog-cache-") }), /no commit "nope"/);
  await assert.rejects(CatalogSource.open({ git: r.dir, ref: "main", path: "elsewhere" }, { cacheDir: tmp("catalog-cache-") }), /no directory "elsewhere"/);
});
