/**
 * End-to-end package and image builds with real tools: gcc/make build a tiny C library and a
 * program linked against it (through the sysroot), twice in different data directories; the
 * image is then checked with skopeo and umoci.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type { BuildOutputs, ImageBuildRequest, PackageArtifact, PackageBuildRequest } from "@homeostat/core/contracts";
import type { Digest } from "@homeostat/core/digest";
import { OciLayout } from "@homeostat/core/oci";
import type { ImageExternalParameters, PackageExternalParameters, SlsaProvenance } from "@homeostat/core/provenance";
import { build, BuildFailure, BUILDER_VERSION, type BuildContext } from "./build.ts";
import type { PackageMetadata } from "./package-build.ts";
import { ArtifactStore } from "./store.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-build-"));
after(() => rm(tmp, { recursive: true, force: true }));

const EPOCH = 1_700_000_000;
const INPUT = `sha256:${"1".repeat(64)}`;

async function sourceTarball(name: string, files: Record<string, string>): Promise<{ file: string; sha256: string }> {
  const dir = path.join(tmp, "sources", name);
  await mkdir(dir, { recursive: true });
  for (const [f, content] of Object.entries(files)) await writeFile(path.join(dir, f), content);
  const file = path.join(tmp, "sources", `${name}.tar.gz`);
  execFileSync("tar", ["-czf", file, "-C", path.join(tmp, "sources"), name]);
  return { file, sha256: createHash("sha256").update(await readFile(file)).digest("hex") };
}

const libmsg = await sourceTarball("libmsg-1.0", {
  "msg.h": "const char *msg(void);\n",
  "msg.c": '#include "msg.h"\nconst char *msg(void) { return "hello from libmsg"; }\n',
  Makefile: [
    "CFLAGS = -O2 -Wall -ffile-prefix-map=$(CURDIR)=.",
    "all: libmsg.a",
    "libmsg.a: msg.c msg.h",
    "\tcc $(CFLAGS) -c -o msg.o msg.c",
    "\trm -f $@ && ar rcD $@ msg.o",
    "install: libmsg.a",
    "\tinstall -d $(DESTDIR)/usr/include $(DESTDIR)/usr/lib",
    "\tinstall -m 0644 msg.h $(DESTDIR)/usr/include/msg.h",
    "\tinstall -m 0644 libmsg.a $(DESTDIR)/usr/lib/libmsg.a",
    "",
  ].join("\n"),
});

const hello = await sourceTarball("hello-1.0", {
  "hello.c": '#include <stdio.h>\n#include <msg.h>\nint main(void) { printf("%s\\n", msg()); return 0; }\n',
  Makefile: [
    "CFLAGS = -O2 -Wall -ffile-prefix-map=$(CURDIR)=.",
    "all: hello",
    "hello: hello.c",
    "\tcc $(CFLAGS) -static -o hello hello.c -l:libmsg.a",
    "install: hello",
    "\tinstall -d $(DESTDIR)/usr/bin $(DESTDIR)/usr/share/doc/hello",
    "\tinstall -m 0755 hello $(DESTDIR)/usr/bin/hello",
    "\techo 'hello docs' > $(DESTDIR)/usr/share/doc/hello/README",
    "\tln -s hello $(DESTDIR)/usr/bin/hi",
    "",
  ].join("\n"),
});

function ctxFor(name: string): BuildContext {
  return { dataDir: path.join(tmp, name), timeoutMs: 120_000, maxSourceBytes: 1 << 20, sourceBaseDir: path.join(tmp, "sources") };
}

function pkgRequest(name: string, src: { file: string; sha256: string }, dependencies: PackageArtifact[] = []): PackageBuildRequest {
  return {
    v: 1,
    kind: "package",
    key: `package/${name}`,
    name,
    version: "1.0",
    inputDigest: INPUT,
    sourceDateEpoch: EPOCH,
    source: { url: path.basename(src.file), sha256: src.sha256 },
    steps: ["make", "make install"],
    dependencies,
    runtimeDependencies: [],
    license: "MIT",
  };
}

function artifact(name: string, o: BuildOutputs): PackageArtifact {
  return { name, version: "1.0", archive: o.archive!, diffId: o.diffId!, size: o.size!, license: "MIT" };
}

function imageRequest(packages: PackageArtifact[]): ImageBuildRequest {
  return {
    v: 1,
    kind: "image",
    key: "image/hello-image",
    name: "hello-image",
    version: "1.0",
    inputDigest: INPUT,
    sourceDateEpoch: EPOCH,
    packages,
    config: {
      entrypoint: ["/usr/bin/hello"],
      cmd: [],
      env: { PATH: "/usr/bin:/bin", LANG: "C.UTF-8" },
      user: "65532",
      workdir: "/",
      annotations: { "org.opencontainers.image.title": "hello" },
    },
  };
}

/** Builds libmsg, hello (against libmsg in its sysroot) and the image in one data directory. */
async function buildAll(dataName: string) {
  const ctx = ctxFor(dataName);
  const lib = await build(pkgRequest("libmsg", libmsg), ctx);
  const app = await build(pkgRequest("hello", hello, [artifact("libmsg", lib)]), ctx);
  const image = await build(imageRequest([artifact("hello", app)]), ctx);
  return { ctx, lib, app, image };
}

const runA = buildAll("data-a");
const runB = buildAll("data-b");

test("two builds in different workspaces give identical package and image digests", async () => {
  const a = await runA;
  const b = await runB;
  for (const k of ["archive", "diffId", "size", "metadata"] as const) {
    assert.equal(a.lib[k], b.lib[k], `libmsg ${k}`);
    assert.equal(a.app[k], b.app[k], `hello ${k}`);
  }
  for (const k of ["manifest", "config", "sbom"] as const) assert.equal(a.image[k], b.image[k], `image ${k}`);
  assert.equal(a.image.location, `${path.join(a.ctx.dataDir, "oci", "hello-image")}:1.0`);
  assert.equal(a.app.location, new ArtifactStore(a.ctx.dataDir).path(a.app.archive as Digest));
  // workspaces are gone
  assert.deepEqual(await readdir(path.join(a.ctx.dataDir, "work")), []);
  assert.equal(BUILDER_VERSION, "homeostat-builder/0.1.0");
});

test("the package archive has relative paths, and its metadata lists every file", async () => {
  const { ctx, app } = await runA;
  const store = new ArtifactStore(ctx.dataDir);
  const names = execFileSync("tar", ["-tzf", store.path(app.archive as Digest)], { encoding: "utf8" }).trim().split("\n");
  assert.deepEqual(names, ["usr/", "usr/bin/", "usr/bin/hello", "usr/bin/hi", "usr/share/", "usr/share/doc/", "usr/share/doc/hello/", "usr/share/doc/hello/README"]);
  const meta = JSON.parse((await store.read(app.metadata as Digest)).toString("utf8")) as PackageMetadata;
  assert.equal(meta.name, "hello");
  assert.equal(meta.archive, app.archive);
  assert.equal(meta.diffId, app.diffId);
  assert.equal(meta.license, "MIT");
  assert.deepEqual(meta.buildDependencies.map((d) => d.name), ["libmsg"]);
  const bin = meta.files.find((f) => f.path === "usr/bin/hello")!;
  assert.equal(bin.mode, 0o755);
  assert.match(bin.sha256!, /^[0-9a-f]{64}$/);
  assert.deepEqual(meta.files.find((f) => f.path === "usr/bin/hi"), { path: "usr/bin/hi", type: "symlink", mode: 0o777, size: 0, linkname: "hello" });
});

test("skopeo inspects the image and umoci unpacks it; the program runs from the unpacked rootfs", async () => {
  const { ctx, image, app } = await runA;
  const layoutDir = path.join(ctx.dataDir, "oci", "hello-image");
  const info = JSON.parse(execFileSync("skopeo", ["inspect", `oci:${layoutDir}:1.0`], { encoding: "utf8" })) as {
    Digest: string;
    Layers: string[];
    Architecture: string;
    Os: string;
    Created: string;
    Labels: Record<string, string>;
    Env: string[];
  };
  assert.equal(info.Digest, image.manifest);
  assert.deepEqual(info.Layers, [app.archive]);
  assert.equal(info.Architecture, "amd64");
  assert.equal(info.Os, "linux");
  assert.equal(info.Created, "2023-11-14T22:13:20Z");
  assert.equal(info.Labels["org.opencontainers.image.title"], "hello");
  assert.deepEqual(info.Env, ["LANG=C.UTF-8", "PATH=/usr/bin:/bin"]);

  const config = JSON.parse(execFileSync("skopeo", ["inspect", "--config", `oci:${layoutDir}:1.0`], { encoding: "utf8" })) as {
    config: { Entrypoint: string[]; User: string; WorkingDir: string };
    rootfs: { diff_ids: string[] };
  };
  assert.deepEqual(config.config.Entrypoint, ["/usr/bin/hello"]);
  assert.equal(config.config.User, "65532");
  assert.deepEqual(config.rootfs.diff_ids, [app.diffId]);

  const bundle = path.join(tmp, "bundle");
  execFileSync("umoci", ["unpack", "--rootless", "--image", `${layoutDir}:1.0`, bundle], { stdio: "pipe" });
  const out = execFileSync(path.join(bundle, "rootfs/usr/bin/hello"), { encoding: "utf8" });
  assert.equal(out, "hello from libmsg\n");
  const runtime = JSON.parse(await readFile(path.join(bundle, "config.json"), "utf8")) as { process: { args: string[] } };
  assert.deepEqual(runtime.process.args, ["/usr/bin/hello"]);
});

test("the manifest carries version and created annotations; the SBOM is in the layout", async () => {
  const { ctx, image, app } = await runA;
  const layout = await OciLayout.open(path.join(ctx.dataDir, "oci", "hello-image"));
  const manifest = JSON.parse((await layout.readBlob(image.manifest as Digest)).toString("utf8")) as { annotations: Record<string, string>; layers: { digest: string }[] };
  assert.equal(manifest.annotations["org.opencontainers.image.version"], "1.0");
  assert.equal(manifest.annotations["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
  assert.deepEqual(manifest.layers.map((l) => l.digest), [app.archive]);
  assert.equal((await layout.resolve("1.0"))?.digest, image.manifest);
  const sbom = JSON.parse((await layout.readBlob(image.sbom as Digest)).toString("utf8")) as {
    metadata: { component: { name: string; hashes: { content: string }[] } };
    components: { name: string; purl: string; hashes: { content: string }[] }[];
  };
  assert.equal(sbom.metadata.component.name, "hello-image");
  assert.equal(`sha256:${sbom.metadata.component.hashes[0]!.content}`, image.manifest);
  assert.deepEqual(sbom.components.map((c) => [c.purl, `sha256:${c.hashes[0]!.content}`]), [["pkg:generic/hello@1.0", app.archive]]);
});

test("each build writes its provenance beside the artifact; only the provenance differs between two builds", async () => {
  const a = await runA;
  const b = await runB;
  const store = new ArtifactStore(a.ctx.dataDir);
  const layout = await OciLayout.open(path.join(a.ctx.dataDir, "oci", "hello-image"));

  const app = JSON.parse((await store.read(a.app.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.equal(app.buildDefinition.buildType, "https://homeostat.dev/build/package/v1");
  assert.equal((app.buildDefinition.externalParameters as PackageExternalParameters).source.sha256, hello.sha256);
  assert.deepEqual(app.buildDefinition.resolvedDependencies, [
    { uri: path.basename(hello.file), digest: { sha256: hello.sha256 } },
    { name: "pkg:generic/libmsg@1.0", digest: { sha256: a.lib.archive!.slice("sha256:".length) } },
  ]);

  const image = JSON.parse((await layout.readBlob(a.image.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.equal(image.buildDefinition.buildType, "https://homeostat.dev/build/image/v1");
  assert.deepEqual((image.buildDefinition.externalParameters as ImageExternalParameters).packages, ["hello@1.0"]);
  assert.deepEqual(image.buildDefinition.resolvedDependencies, [{ name: "pkg:generic/hello@1.0", digest: { sha256: a.app.archive!.slice("sha256:".length) } }]);
  assert.deepEqual(image.runDetails.builder, { id: "https://homeostat.dev/builder", version: { "homeostat-builder": BUILDER_VERSION } });
  const { startedOn, finishedOn } = image.runDetails.metadata;
  assert.ok(Date.parse(startedOn) <= Date.parse(finishedOn));

  // The same inputs give the same image, but each build has its own provenance.
  assert.equal(a.image.manifest, b.image.manifest);
  assert.notEqual(a.image.provenance, b.image.provenance);
  assert.notEqual(a.app.provenance, b.app.provenance);
  const otherLayout = await OciLayout.open(path.join(b.ctx.dataDir, "oci", "hello-image"));
  const other = JSON.parse((await otherLayout.readBlob(b.image.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.notEqual(other.runDetails.metadata.invocationId, image.runDetails.metadata.invocationId);
});

test("a flipped byte in a layer is rejected by skopeo", async () => {
  const { ctx, app } = await runA;
  const copy = path.join(tmp, "flipped-layout");
  await cp(path.join(ctx.dataDir, "oci", "hello-image"), copy, { recursive: true });
  const layerFile = path.join(copy, "blobs", "sha256", app.archive!.slice(7));
  const bytes = await readFile(layerFile);
  bytes[bytes.length >> 1]! ^= 0xff;
  await rm(layerFile);
  await writeFile(layerFile, bytes);
  const r = spawnSync("skopeo", ["copy", `oci:${copy}:1.0`, `dir:${path.join(tmp, "copied")}`], { encoding: "utf8" });
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /digest|checksum/i);
});

test("checksum mismatch and failing steps are BuildFailures; nothing is stored for them", async () => {
  const ctx = ctxFor("data-fail");
  const store = new ArtifactStore(ctx.dataDir);
  const bad = { ...pkgRequest("libmsg", libmsg), source: { url: path.basename(libmsg.file), sha256: "f".repeat(64) } };
  await assert.rejects(build(bad, ctx), (e: unknown) => e instanceof BuildFailure && e.message.includes(`expected sha256:${"f".repeat(64)}, got sha256:${libmsg.sha256}`));
  assert.deepEqual(await readdir(path.join(store.root, "blobs", "sha256")).catch(() => []), []);

  const failing = { ...pkgRequest("libmsg", libmsg), steps: ["make", "echo 'install: permission denied (simulated)' >&2; exit 2"] };
  await assert.rejects(build(failing, ctx), (e: unknown) => e instanceof BuildFailure && e.exitCode === 2 && /permission denied \(simulated\)/.test(e.message));
  // only the verified source is kept (a cache for the next attempt); no package archive
  assert.deepEqual(await readdir(path.join(store.root, "blobs", "sha256")), [libmsg.sha256]);
  assert.deepEqual(await readdir(path.join(ctx.dataDir, "work")), []);

  const fifo = { ...pkgRequest("libmsg", libmsg), steps: ["mkfifo $DESTDIR/pipe"] };
  await assert.rejects(build(fifo, ctx), (e: unknown) => e instanceof BuildFailure && /DESTDIR cannot be archived: .*unsupported file type/.test(e.message));
  assert.deepEqual(await readdir(path.join(store.root, "blobs", "sha256")), [libmsg.sha256]);

  const timing = { ...pkgRequest("libmsg", libmsg), steps: ["sleep 1000"] };
  await assert.rejects(build(timing, { ...ctx, timeoutMs: 500 }), (e: unknown) => e instanceof BuildFailure && /timed out/.test(e.message));
});
