/**
 * End-to-end package and image builds with real tools: gcc/make build a tiny C library and a
 * program linked against it (through the sysroot), twice in different data directories, with
 * the steps sandboxed by bubblewrap when it works here; the image is then checked with skopeo
 * (inspect, and copy to a real Distribution registry), umoci, and a flipped byte.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import type { BuildOutputs, PackageArtifact } from "@homeostat/core/contracts";
import { type ImageBuildPlan, type PackageBuildPlan } from "@homeostat/catalog";
import type { Digest } from "@homeostat/core/digest";
import { OciLayout } from "@homeostat/attest";
import type { ImageExternalParameters, PackageExternalParameters, SlsaProvenance } from "./provenance.ts";
import { sha256Digest } from "@homeostat/core/digest";
import { startRegistry } from "../../../test/fixtures/registry.ts";
import { build, BuildFailure, BUILDER_VERSION, MissingArtifactError, type BuildContext } from "./build.ts";
import { loadConfig } from "@homeostat/core/config";
import { resolveIsolation } from "./isolation.ts";
import type { PackageMetadata } from "./package-build.ts";
import { ArtifactStore } from "./store.ts";
import { buildContext, CATALOG_REVISION, packagePlan, reproducibleGit } from "./test-support.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-build-"));
after(() => rm(tmp, { recursive: true, force: true }));

const EPOCH = 1_700_000_000;
/** A distinct input digest per distinct request (the build cache keys on it). */
const inputFor = (label: string) => sha256Digest(`test-input:${label}`);
// The sandbox is required, as in the builder; as root it runs as the build uid, which must be
// able to walk down to the workspaces under tmp.
await chmod(tmp, 0o711);
const isolation = await resolveIsolation(loadConfig({}).buildSandbox);

async function sourceTarball(name: string, files: Record<string, string>): Promise<{ file: string; sha256: string }> {
  const dir = path.join(tmp, "sources", name);
  await mkdir(dir, { recursive: true });
  for (const [f, content] of Object.entries(files)) await writeFile(path.join(dir, f), content);
  const file = path.join(tmp, "sources", `${name}.tar.gz`);
  execFileSync("tar", ["-czf", file, "-C", path.join(tmp, "sources"), name]);
  return {
    file,
    sha256: createHash("sha256")
      .update(await readFile(file))
      .digest("hex"),
  };
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
  return buildContext({ dataDir: path.join(tmp, name), timeoutMs: 120_000, isolation, sourceBaseDir: path.join(tmp, "sources") });
}

function pkgRequest(name: string, src: { file: string; sha256: string }, dependencies: PackageArtifact[] = []): PackageBuildPlan {
  return packagePlan(name, {
    inputDigest: inputFor(`${name}:${dependencies.map((d) => d.archive).join(",")}`),
    sourceDateEpoch: EPOCH,
    source: { url: path.basename(src.file), sha256: src.sha256 },
    steps: ["make", "make install"],
    dependencies,
    license: "MIT",
  });
}

function artifact(name: string, o: BuildOutputs): PackageArtifact {
  return { name, version: "1.0", archive: o.archive!, diffId: o.diffId!, size: o.size!, license: "MIT" };
}

function imageRequest(packages: PackageArtifact[]): ImageBuildPlan {
  return {
    catalogRevision: CATALOG_REVISION,
    kind: "image",
    key: "image/hello-image",
    name: "hello-image",
    version: "1.0",
    inputDigest: inputFor(`image:${packages.map((p) => p.archive).join(",")}`),
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
  assert.equal(BUILDER_VERSION, "homeostat-builder/0.4.0");
});

test("the package archive has relative paths, and its metadata lists every file", async () => {
  const { ctx, app } = await runA;
  const store = new ArtifactStore(ctx.dataDir);
  const names = execFileSync("tar", ["-tzf", store.path(app.archive as Digest)], { encoding: "utf8" })
    .trim()
    .split("\n");
  assert.deepEqual(names, [
    "usr/",
    "usr/bin/",
    "usr/bin/hello",
    "usr/bin/hi",
    "usr/share/",
    "usr/share/doc/",
    "usr/share/doc/hello/",
    "usr/share/doc/hello/README",
  ]);
  const meta = JSON.parse((await store.read(app.metadata as Digest)).toString("utf8")) as PackageMetadata;
  assert.equal(meta.name, "hello");
  assert.equal(meta.archive, app.archive);
  assert.equal(meta.diffId, app.diffId);
  assert.equal(meta.license, "MIT");
  assert.deepEqual(
    meta.buildDependencies.map((d) => d.name),
    ["libmsg"],
  );
  const bin = meta.files.find((f) => f.path === "usr/bin/hello")!;
  assert.equal(bin.mode, 0o755);
  assert.match(bin.sha256!, /^[0-9a-f]{64}$/);
  assert.deepEqual(
    meta.files.find((f) => f.path === "usr/bin/hi"),
    { path: "usr/bin/hi", type: "symlink", mode: 0o777, size: 0, linkname: "hello" },
  );
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
  // The package's layer, then the image's own (accounts and directories, image-build.ts).
  assert.equal(info.Layers.length, 2);
  assert.equal(info.Layers[0], app.archive);
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
  assert.equal(config.rootfs.diff_ids[0], app.diffId);
  assert.equal(config.rootfs.diff_ids.length, 2);

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
  const manifest = JSON.parse((await layout.readBlob(image.manifest as Digest)).toString("utf8")) as {
    annotations: Record<string, string>;
    layers: { digest: string }[];
  };
  assert.equal(manifest.annotations["org.opencontainers.image.version"], "1.0");
  assert.equal(manifest.annotations["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
  assert.equal(manifest.layers[0]!.digest, app.archive);
  assert.equal(manifest.layers.length, 2);
  assert.equal(manifest.annotations["org.opencontainers.image.licenses"], "MIT");
  assert.equal((await layout.resolve("1.0"))?.digest, image.manifest);
  const sbom = JSON.parse((await layout.readBlob(image.sbom as Digest)).toString("utf8")) as {
    metadata: { component: { name: string; hashes: { content: string }[] } };
    components: { name: string; purl: string; hashes: { content: string }[] }[];
  };
  assert.equal(sbom.metadata.component.name, "hello-image");
  assert.equal(`sha256:${sbom.metadata.component.hashes[0]!.content}`, image.manifest);
  assert.deepEqual(
    sbom.components.map((c) => [c.purl, `sha256:${c.hashes[0]!.content}`]),
    [["pkg:generic/hello@1.0", app.archive]],
  );
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

/** The blobs of a store that are gzip files (package archives): none for a failed build. */
async function archivesIn(store: ArtifactStore, except: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const hex of await readdir(path.join(store.root, "blobs", "sha256")).catch(() => [] as string[])) {
    if (except.includes(hex)) continue;
    const head = (await readFile(path.join(store.root, "blobs", "sha256", hex))).subarray(0, 2);
    if (head[0] === 0x1f && head[1] === 0x8b) out.push(hex);
  }
  return out;
}

test("checksum mismatch and failing steps are BuildFailures; no artifact is stored for them, only the step logs", async () => {
  const ctx = ctxFor("data-fail");
  const store = new ArtifactStore(ctx.dataDir);
  const bad = { ...pkgRequest("libmsg", libmsg), source: { url: path.basename(libmsg.file), sha256: "f".repeat(64) } };
  await assert.rejects(
    build(bad, ctx),
    (e: unknown) => e instanceof BuildFailure && e.message.includes(`expected sha256:${"f".repeat(64)}, got sha256:${libmsg.sha256}`),
  );
  assert.deepEqual(await readdir(path.join(store.root, "blobs", "sha256")).catch(() => []), []);

  const failing = { ...pkgRequest("libmsg", libmsg), steps: ["make", "echo 'install: permission denied (simulated)' >&2; exit 2"] };
  const err = await build(failing, ctx).then(
    () => assert.fail("should fail"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof BuildFailure);
  assert.equal(err.exitCode, 2);
  // The message (what the builder records as the key's lastError) has the failing step's log
  // tail and where every step's full log is stored.
  assert.match(err.message, /step 2 .* exited with code 2\n\$ echo .*\ninstall: permission denied \(simulated\)\n/);
  const m = /full step logs in the artifact store: step-1\.log (sha256:[0-9a-f]{64}), step-2\.log (sha256:[0-9a-f]{64})$/.exec(err.message);
  assert.ok(m, err.message);
  assert.match((await store.read(m[1] as Digest)).toString("utf8"), /^\$ make\ncc -O2 -Wall/);
  assert.equal(
    (await store.read(m[2] as Digest)).toString("utf8"),
    "$ echo 'install: permission denied (simulated)' >&2; exit 2\ninstall: permission denied (simulated)\n",
  );
  // the verified source is kept (a cache for the next attempt), and the logs; no package archive
  assert.deepEqual(await archivesIn(store, [libmsg.sha256]), []);
  assert.deepEqual((await readdir(path.join(store.root, "blobs", "sha256"))).sort(), [libmsg.sha256, m[1]!.slice(7), m[2]!.slice(7)].sort());
  assert.deepEqual(await readdir(path.join(ctx.dataDir, "work")), []);

  const fifo = { ...pkgRequest("libmsg", libmsg), steps: ["mkfifo $DESTDIR/pipe"] };
  await assert.rejects(build(fifo, ctx), (e: unknown) => e instanceof BuildFailure && /DESTDIR cannot be archived: .*unsupported file type/.test(e.message));
  assert.deepEqual(await archivesIn(store, [libmsg.sha256]), []);

  const timing = { ...pkgRequest("libmsg", libmsg), steps: ["sleep 1000"] };
  await assert.rejects(
    build(timing, { ...ctx, timeoutMs: 500 }),
    (e: unknown) => e instanceof BuildFailure && /timed out/.test(e.message) && /step-1\.log sha256:/.test(e.message),
  );
});

test("the provenance records the isolation used and lists every step's stored log", async () => {
  const { ctx, app } = await runA;
  const store = new ArtifactStore(ctx.dataDir);
  const prov = JSON.parse((await store.read(app.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.equal(prov.buildDefinition.internalParameters.isolation, isolation.kind);
  const logs = prov.runDetails.byproducts!;
  assert.deepEqual(
    logs.map((b) => [b.name, b.mediaType, b.annotations?.step, b.annotations?.exitCode]),
    [
      ["step-1.log", "text/plain; charset=utf-8", "make", "0"],
      ["step-2.log", "text/plain; charset=utf-8", "make install", "0"],
    ],
  );
  const first = (await store.read(`sha256:${logs[0]!.digest.sha256}`)).toString("utf8");
  assert.match(first, /^\$ make\ncc -O2 -Wall .* -static -o hello hello\.c -l:libmsg\.a\n/);
  const second = (await store.read(`sha256:${logs[1]!.digest.sha256}`)).toString("utf8");
  assert.match(second, /^\$ make install\n[\s\S]*install -m 0755 hello/);
});

test("skopeo copies the image to a Distribution registry, and refuses a layout with a flipped layer byte", async () => {
  const { ctx, image, app } = await runA;
  const layoutDir = path.join(ctx.dataDir, "oci", "hello-image");
  const registry = await startRegistry();
  try {
    const copy = path.join(tmp, "flipped-for-registry");
    await cp(layoutDir, copy, { recursive: true });
    const layerFile = path.join(copy, "blobs", "sha256", app.archive!.slice(7));
    const bytes = await readFile(layerFile);
    bytes[bytes.length >> 1]! ^= 0x01;
    await rm(layerFile);
    await writeFile(layerFile, bytes);
    const r = spawnSync("skopeo", ["copy", "--dest-tls-verify=false", `oci:${copy}:1.0`, `docker://${registry.host}/homeostat/flipped:1.0`], {
      encoding: "utf8",
    });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /digest|checksum/i);
    const missing = spawnSync("skopeo", ["inspect", "--tls-verify=false", `docker://${registry.host}/homeostat/flipped:1.0`], { encoding: "utf8" });
    assert.notEqual(missing.status, 0, "the corrupt image must not be in the registry");

    // The intact layout goes through (first, the registry would already hold the layer and
    // skopeo would never read the corrupt copy).
    execFileSync("skopeo", ["copy", "--dest-tls-verify=false", `oci:${layoutDir}:1.0`, `docker://${registry.host}/homeostat/hello-image:1.0`], {
      stdio: "pipe",
    });
    const digest = execFileSync("skopeo", ["inspect", "--tls-verify=false", "--format", "{{.Digest}}", `docker://${registry.host}/homeostat/hello-image:1.0`], {
      encoding: "utf8",
    }).trim();
    assert.equal(digest, image.manifest, "the registry serves our manifest byte for byte");
    const raw = JSON.parse(
      execFileSync("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${registry.host}/homeostat/hello-image:1.0`], { encoding: "utf8" }),
    ) as { layers: { digest: string }[] };
    assert.equal(raw.layers[0]!.digest, app.archive);
    assert.equal(raw.layers.length, 2);
  } finally {
    await registry.stop();
  }
});

test("a flipped byte in a stored package archive is caught by our own check when the image is assembled", async () => {
  const { ctx, app } = await runA;
  const copyData = path.join(tmp, "data-flipped");
  await cp(path.join(ctx.dataDir, "store"), path.join(copyData, "store"), { recursive: true });
  const store = new ArtifactStore(copyData);
  const file = store.path(app.archive as Digest);
  const bytes = await readFile(file);
  bytes[bytes.length >> 1]! ^= 0x01;
  await rm(file);
  await writeFile(file, bytes);
  assert.equal(await store.verify(app.archive as Digest), false);
  await assert.rejects(
    build(imageRequest([artifact("hello", app)]), ctxFor("data-flipped")),
    // What the build request's handler rebuilds (request.ts restoreLost), not trusting a cached result naming it.
    (e: unknown) =>
      e instanceof MissingArtifactError &&
      e.corrupt &&
      e.key === "package/hello" &&
      new RegExp(`package hello@1.0: stored archive ${app.archive} is corrupt`).test(e.message),
  );
  assert.deepEqual(await (await OciLayout.open(path.join(copyData, "oci", "hello-image"))).tags(), [], "no image was tagged");
});

test("a package archive missing from the store stops the image before anything is written, as a missing artifact", async () => {
  const { ctx, app } = await runA;
  const copyData = path.join(tmp, "data-missing");
  await cp(path.join(ctx.dataDir, "store"), path.join(copyData, "store"), { recursive: true });
  await rm(new ArtifactStore(copyData).path(app.archive as Digest));
  await assert.rejects(
    build(imageRequest([artifact("hello", app)]), ctxFor("data-missing")),
    (e: unknown) =>
      e instanceof MissingArtifactError &&
      // What the build request's handler rebuilds (request.ts restoreLost).
      e.key === "package/hello" &&
      e.digest === app.archive &&
      new RegExp(`package hello@1.0: archive ${app.archive} is not in the store`).test(e.message),
  );
  assert.deepEqual(await (await OciLayout.open(path.join(copyData, "oci", "hello-image"))).tags(), [], "no image was tagged");
});

test("a trial's builds, in a data directory of their own, read what they build on and its fetched sources from the factory's store and write nothing there", async () => {
  const { ctx, lib, app, image } = await runA;
  const blobs = () => readdir(path.join(ctx.dataDir, "store", "blobs", "sha256"));
  const before = await blobs();
  // No sources where it looks for them: it takes what the factory's builds fetched, as a trial (no remote hosts) must.
  const noSources = path.join(tmp, "no-sources");
  await mkdir(noSources, { recursive: true });
  const trial: BuildContext = { ...ctxFor("data-trial"), sourceBaseDir: noSources, inputsDataDir: ctx.dataDir };
  // The dependant of a built package, and an image of it: the same bytes as the factory's builds.
  const tried = await build(pkgRequest("hello", hello, [artifact("libmsg", lib)]), trial);
  assert.equal(tried.archive, app.archive);
  assert.equal((await build(imageRequest([artifact("hello", app)]), trial)).manifest, image.manifest);
  assert.deepEqual(await blobs(), before, "nothing written into the factory's store");
  assert.ok(await new ArtifactStore(trial.dataDir).has(tried.archive as Digest), "the trial's archive is in its own store");
  // Reading its own store instead, it would not find what it builds on.
  await assert.rejects(build(pkgRequest("hello", hello, [artifact("libmsg", lib)]), ctxFor("data-trial-alone")), MissingArtifactError);
});

test("a package builds from a git source pinned to a commit, reproducibly, with the commit in its provenance", async () => {
  const repo = path.join(tmp, "git-motd");
  const git = reproducibleGit(repo);
  await mkdir(repo, { recursive: true });
  git("init", "-q");
  await writeFile(path.join(repo, "motd"), "pinned\n");
  await writeFile(path.join(repo, "Makefile"), "install:\n\tinstall -D -m 0644 motd $(DESTDIR)/etc/motd\n");
  git("add", ".");
  git("commit", "-qm", "pinned");
  const commit = git("rev-parse", "HEAD").toString().trim();
  await writeFile(path.join(repo, "motd"), "moved on\n");
  git("commit", "-qam", "later");
  const sha256 = createHash("sha256")
    .update(git("archive", "--format=tar", commit))
    .digest("hex");

  const req: PackageBuildPlan = { ...pkgRequest("motd", libmsg), source: { url: `git+file://${repo}#${commit}`, sha256 }, steps: ["make install"] };
  const a = await build(req, ctxFor("data-git-a"));
  const b = await build(req, ctxFor("data-git-b"));
  assert.equal(a.archive, b.archive);
  const store = new ArtifactStore(path.join(tmp, "data-git-a"));
  assert.equal(execFileSync("tar", ["-xzOf", store.path(a.archive as Digest), "etc/motd"], { encoding: "utf8" }), "pinned\n");
  const prov = JSON.parse((await store.read(a.provenance as Digest)).toString("utf8")) as SlsaProvenance;
  assert.deepEqual(prov.buildDefinition.resolvedDependencies[0], { uri: req.source.url, digest: { sha256, gitCommit: commit } });
});
