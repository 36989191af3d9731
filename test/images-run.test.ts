/**
 * Images that run: the sample catalog (examples/catalog, with its base: musl and busybox
 * imported from pinned Debian packages) is built the way the reconciler and builder do it
 * (DesiredState decides each key in dependency order, the real builder builds it in its
 * bubblewrap sandbox, no network), twice in different data directories; then every sample
 * image is unpacked with umoci and started by a real runtime (runc, or bubblewrap where runc
 * cannot work here: see fixtures/run-image.ts), and must print what its packages promise.
 * An image that could not start (a glibc program without its loader, a script without its
 * shell) is refused at build time with the missing path named. An advisory against the base's
 * C library moves musl to its fixed release and makes exactly the images holding it stale.
 *
 * Needs: bwrap and prlimit (the build sandbox), musl-gcc (musl-tools), xz, umoci, cc, dpkg-deb; runc to
 * use a real runtime (else bubblewrap runs the images).
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmod, cp, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { DesiredState, loadCatalog, type Catalog, type ImageBuildPlan, type Osv, type Release } from "@homeostat/catalog";
import type { BuildOutputs } from "@homeostat/core/contracts";
import { loadConfig } from "@homeostat/core/config";
import type { Digest } from "@homeostat/core/digest";
import type { Key } from "@homeostat/core/key";
import type { KeyStatus } from "@homeostat/core/status";
import { OciLayout } from "@homeostat/attest";
import { build, BuildFailure, type BuildContext } from "../services/builder/src/build.ts";
import { resolveIsolation } from "../services/builder/src/isolation.ts";
import { runBundle, unpackImage, type RunResult } from "./fixtures/run-image.ts";

for (const tool of ["musl-gcc", "umoci", "xz", "bwrap"]) {
  try {
    execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "pipe" });
  } catch {
    throw new Error(
      `test/images-run.test.ts needs ${tool} (apt-get install ${tool === "musl-gcc" ? "musl-tools" : tool === "xz" ? "xz-utils" : tool === "bwrap" ? "bubblewrap" : tool})`,
    );
  }
}

const repoRoot = path.resolve(import.meta.dirname, "..");
const EPOCH = 1_700_000_000;
const tmp = await mkdtemp(path.join(tmpdir(), "hs-images-run-"));
after(() => rm(tmp, { recursive: true, force: true }));
// As root the sandbox runs steps as the build uid, which must reach the workspaces.
await chmod(tmp, 0o711);
const isolation = await resolveIsolation(loadConfig({}).buildSandbox);

/** The examples tree copied, with musl's Debian releases followed (a Debian revision reads as a semver pre-release). */
const examples = path.join(tmp, "examples");
await cp(path.join(repoRoot, "examples"), examples, { recursive: true });
const muslYaml = path.join(examples, "catalog/packages/musl.yaml");
await writeFile(
  muslYaml,
  (await readFile(muslYaml, "utf8")).replace(
    "source:",
    'upstream: { url: "https://deb.debian.org/debian/pool/main/m/musl/musl_${version}_amd64.deb", prereleases: true }\nsource:',
  ),
);
const catalog = await loadCatalog(path.join(examples, "catalog"));

/** What the signer would record: the key's actual build. */
type Factory = { ctx: BuildContext; statuses: Map<Key, KeyStatus>; outputs: Map<Key, BuildOutputs> };

function contextIn(dir: string): BuildContext {
  return {
    dataDir: dir,
    timeoutMs: 120_000,
    maxSourceBytes: 1 << 26,
    unpackLimits: { maxBytes: 1 << 28, maxEntries: 100_000 },
    isolation,
    sourceBaseDir: path.join(examples, "catalog"),
  };
}

function recordActual(f: Factory, key: Key, version: string, inputDigest: Digest, outputs: BuildOutputs): void {
  f.outputs.set(key, outputs);
  f.statuses.set(key, {
    key,
    phase: "Ready",
    attempts: 0,
    updatedAt: new Date(0).toISOString(),
    actual: { version, inputDigest, outputs, signatures: {}, keyId: "test", builtAt: new Date(0).toISOString() },
  });
}

function desiredState(c: Catalog, f: Factory, facts: { releases?: Release[]; advisories?: Osv[] } = {}): DesiredState {
  return new DesiredState({
    catalog: c,
    releases: async (p) => (facts.releases ?? []).filter((r) => r.package === p),
    advisories: async () => facts.advisories ?? [],
    status: async (k) => f.statuses.get(k),
    sourceDateEpoch: EPOCH,
  });
}

/** Reconciles `keys` in order as the reconciler would: build what is not at its desired inputs. */
async function reconcile(f: Factory, keys: readonly Key[], facts: { releases?: Release[]; advisories?: Osv[] } = {}): Promise<Key[]> {
  const built: Key[] = [];
  for (const key of keys) {
    const [kind, name] = key.split("/") as ["package" | "image", string];
    const desired = await (kind === "package" ? desiredState(catalog, f, facts).package(name) : desiredState(catalog, f, facts).image(name));
    assert.equal(desired.state, "build", `${key}: ${JSON.stringify(desired)}`);
    if (desired.state !== "build" || f.statuses.get(key)?.actual?.inputDigest === desired.inputDigest) continue;
    recordActual(f, key, desired.version, desired.inputDigest, await build(desired.plan, f.ctx));
    built.push(key);
  }
  return built;
}

async function buildCatalog(dataName: string): Promise<Factory> {
  const f: Factory = { ctx: contextIn(path.join(tmp, dataName)), statuses: new Map(), outputs: new Map() };
  await mkdir(f.ctx.dataDir, { recursive: true });
  await chmod(f.ctx.dataDir, 0o711);
  await reconcile(f, catalog.impact(catalog.keys()).keys);
  return f;
}

let a: Factory;
let b: Factory;
before(async () => {
  a = await buildCatalog("data-a");
  b = await buildCatalog("data-b");
});

const layoutOf = (f: Factory, image: string) => path.join(f.ctx.dataDir, "oci", image);
const versionOf = (f: Factory, image: string) => f.statuses.get(`image/${image}` as Key)!.actual!.version;

async function run(f: Factory, image: string, argv?: string[]): Promise<RunResult> {
  const bundle = await mkdtemp(path.join(tmp, `bundle-${image}-`));
  await rm(bundle, { recursive: true });
  unpackImage(layoutOf(f, image), versionOf(f, image), bundle);
  const r = await runBundle(bundle, argv ? { argv } : {});
  if (r.fallbackReason) console.log(`# ${image}: runc cannot run here (${r.fallbackReason}); ran under bwrap`);
  return r;
}

test("the base and every image build byte for byte the same in two data directories", () => {
  for (const key of catalog.keys()) {
    const x = a.outputs.get(key)!;
    const y = b.outputs.get(key)!;
    for (const field of ["archive", "diffId", "metadata", "manifest", "config", "sbom"] as const) assert.equal(x[field], y[field], `${key} ${field}`);
  }
  assert.ok(a.outputs.get("package/musl" as Key)!.archive && a.outputs.get("package/busybox" as Key)!.archive);
});

test("greeter runs: its entrypoint greets, as the non-root user, and its motd runs on busybox's shell", async () => {
  const hello = await run(a, "greeter");
  assert.equal(hello.status, 0, hello.stderr);
  assert.equal(hello.stdout, "Hello, world!\n");
  console.log(`# greeter (${hello.runtime}): ${hello.stdout.trim()}`);
  const motd = await run(a, "greeter", ["/usr/bin/motd"]);
  assert.equal(motd.status, 0, motd.stderr);
  assert.match(motd.stdout, /^Welcome to a Homeostat-built image\./);
});

test("devkit, the -dev variant, has a shell: user nonroot from /etc/passwd, /tmp 1777, libgreet's files", async () => {
  const motd = await run(a, "devkit");
  assert.equal(motd.status, 0, motd.stderr);
  assert.match(motd.stdout, /^Welcome to a Homeostat-built image\./);
  const sh = await run(a, "devkit", [
    "/bin/sh",
    "-c",
    "id -un; id -u; stat -c '%a %U' /tmp /home/nonroot; ls /usr/include/greet.h /usr/lib/libgreet.a; grep nonroot /etc/passwd /etc/group",
  ]);
  assert.equal(sh.status, 0, sh.stderr);
  assert.equal(
    sh.stdout,
    [
      "nonroot",
      "65532",
      "1777 root",
      "700 nonroot",
      "/usr/include/greet.h",
      "/usr/lib/libgreet.a",
      "/etc/passwd:nonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh",
      "/etc/group:nonroot:x:65532:",
      "",
    ].join("\n"),
  );
});

test("the image's config, annotations and SBOM: linux/amd64, non-root user, OCI annotations, the base's Debian purls", async () => {
  const layout = await OciLayout.open(layoutOf(a, "greeter"));
  const out = a.outputs.get("image/greeter" as Key)!;
  const manifest = JSON.parse((await layout.readBlob(out.manifest as Digest)).toString("utf8")) as {
    annotations: Record<string, string>;
    layers: { size: number }[];
  };
  const config = JSON.parse((await layout.readBlob(out.config as Digest)).toString("utf8")) as {
    architecture: string;
    os: string;
    config: { User: string; Labels: Record<string, string> };
  };
  assert.equal(config.architecture, "amd64");
  assert.equal(config.os, "linux");
  assert.equal(config.config.User, "65532");
  const annotations = manifest.annotations;
  assert.equal(annotations["org.opencontainers.image.created"], "2023-11-14T22:13:20Z");
  assert.equal(annotations["org.opencontainers.image.version"], versionOf(a, "greeter"));
  assert.equal(annotations["org.opencontainers.image.revision"], a.statuses.get("image/greeter" as Key)!.actual!.inputDigest);
  assert.equal(annotations["org.opencontainers.image.licenses"], "GPL-2.0-only AND MIT");
  assert.equal(annotations["org.opencontainers.image.source"], "https://homeostat.dev/examples/catalog");
  assert.deepEqual(config.config.Labels, annotations);
  const sbom = JSON.parse((await layout.readBlob(out.sbom as Digest)).toString("utf8")) as { components: { name: string; purl: string }[] };
  assert.deepEqual(sbom.components.map((c) => c.purl).sort(), [
    "pkg:deb/debian/busybox-static@1:1.35.0-4+deb12u1+b1?arch=amd64&distro=debian-12",
    "pkg:deb/debian/musl@1.2.3-1?arch=amd64&distro=debian-12",
    "pkg:generic/greet@1.0",
    "pkg:generic/motd@1.0",
  ]);
});

test("sample image sizes, compressed and unpacked (debian:bookworm-slim: ~28 MB / ~75 MB)", async () => {
  for (const image of ["greeter", "devkit"]) {
    const layout = await OciLayout.open(layoutOf(a, image));
    const manifest = JSON.parse((await layout.readBlob(a.outputs.get(`image/${image}` as Key)!.manifest as Digest)).toString("utf8")) as {
      layers: { size: number }[];
    };
    const compressed = manifest.layers.reduce((n, l) => n + l.size, 0);
    const bundle = path.join(tmp, `size-${image}`);
    unpackImage(layoutOf(a, image), versionOf(a, image), bundle);
    const unpacked = Number(execFileSync("du", ["-s", "-B1", "--apparent-size", path.join(bundle, "rootfs")], { encoding: "utf8" }).split(/\s/)[0]);
    console.log(`# ${image}: ${manifest.layers.length} layers, ${(compressed / 1e6).toFixed(2)} MB compressed, ${(unpacked / 1e6).toFixed(2)} MB unpacked`);
    assert.ok(compressed < 5e6 && unpacked < 10e6, `${image} is small`);
  }
});

/** A package built from a one-file C program with the host's cc (glibc), for the refusal below. */
async function glibcProgram(f: Factory): Promise<{ name: string; version: string; archive: string; diffId: string; size: number }> {
  const src = path.join(tmp, "sources", "hello-glibc-1.0");
  await mkdir(src, { recursive: true });
  await writeFile(path.join(src, "hello.c"), '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n');
  const file = path.join(tmp, "sources", "hello-glibc-1.0.tar.gz");
  execFileSync("tar", ["-czf", file, "-C", path.dirname(src), path.basename(src)]);
  const sha256 = createHash("sha256")
    .update(await readFile(file))
    .digest("hex");
  const out = await build(
    {
      kind: "package",
      key: "package/hello-glibc",
      name: "hello-glibc",
      version: "1.0",
      inputDigest: `sha256:${"1".repeat(64)}`,
      sourceDateEpoch: EPOCH,
      catalogRevision: catalog.revision,
      source: { url: file, sha256 },
      steps: ["cc -O2 -o hello hello.c", 'install -D -m 0755 hello "$DESTDIR/usr/bin/hello"'],
      dependencies: [],
      runtimeDependencies: [],
    },
    f.ctx,
  );
  return { name: "hello-glibc", version: "1.0", archive: out.archive!, diffId: out.diffId!, size: out.size! };
}

function imagePlan(name: string, packages: ImageBuildPlan["packages"], entrypoint: string[]): ImageBuildPlan {
  return {
    kind: "image",
    key: `image/${name}` as Key,
    name,
    version: "1.0",
    inputDigest: `sha256:${createHash("sha256").update(name).digest("hex")}`,
    sourceDateEpoch: EPOCH,
    catalogRevision: catalog.revision,
    packages,
    config: { entrypoint, cmd: [], env: { PATH: "/usr/bin:/bin" }, user: "65532", workdir: "/", annotations: {} },
  };
}

const artifactOf = (f: Factory, name: string) => {
  const o = f.outputs.get(`package/${name}` as Key)!;
  return { name, version: f.statuses.get(`package/${name}` as Key)!.actual!.version, archive: o.archive!, diffId: o.diffId!, size: o.size! };
};

test("an image whose entrypoint could not start is refused at build time, naming what is missing", async () => {
  const glibc = await glibcProgram(a);
  // A glibc program in a musl base: its loader is not there.
  await assert.rejects(build(imagePlan("broken-loader", [glibc, artifactOf(a, "musl")], ["/usr/bin/hello"]), a.ctx), (e: unknown) => {
    assert.ok(e instanceof BuildFailure);
    assert.match(
      e.message,
      /entrypoint \/usr\/bin\/hello, from package hello-glibc@1\.0: needs its loader \/lib64\/ld-linux-x86-64\.so\.2, which is not in the image/,
    );
    return true;
  });
  // A shell script with no shell in the image.
  await assert.rejects(
    build(imagePlan("broken-shell", [artifactOf(a, "motd")], ["/usr/bin/motd"]), a.ctx),
    /entrypoint \/usr\/bin\/motd, from package motd@1\.0: needs its interpreter \/bin\/sh: \/bin\/sh is not in the image/,
  );
  // musl's loader present, but a program greet's entrypoint is not.
  await assert.rejects(
    build(imagePlan("broken-path", [artifactOf(a, "greet"), artifactOf(a, "musl")], ["/usr/bin/nothere"]), a.ctx),
    /entrypoint \/usr\/bin\/nothere: \/usr\/bin\/nothere is not in the image/,
  );
  // Nothing of a refused image was written.
  for (const name of ["broken-loader", "broken-shell", "broken-path"])
    assert.equal(
      (await OciLayout.open(path.join(a.ctx.dataDir, "oci", name))).dir.length > 0 &&
        (await (await OciLayout.open(path.join(a.ctx.dataDir, "oci", name))).tags()).length,
      0,
    );
});

test("an advisory against the base's C library moves musl to the fixed release and rebuilds exactly the images holding it", async () => {
  const before = { greeter: a.outputs.get("image/greeter" as Key)!.manifest, devkit: a.outputs.get("image/devkit" as Key)!.manifest };
  const musl = catalog.packages.get("musl")!;
  // A stand-in for Debian's fixed revision (no network here): the pinned .deb, its changelog
  // entry added to the licence file the package installs, rebuilt with dpkg-deb.
  const tree = path.join(tmp, "musl-fixed");
  execFileSync("dpkg-deb", ["-R", new URL(catalog.resolveSourceUrl(musl.source.url, musl.version)).pathname, tree]);
  await writeFile(path.join(tree, "usr/share/doc/musl/copyright"), "\nmusl (1.2.3-2): fixes DSA-0000-1\n", { flag: "a" });
  const control = path.join(tree, "DEBIAN/control");
  await writeFile(control, (await readFile(control, "utf8")).replace("Version: 1.2.3-1", "Version: 1.2.3-2"));
  const fixedDeb = path.join(tmp, "musl_1.2.3-2_amd64.deb");
  execFileSync("dpkg-deb", ["--root-owner-group", "-Zxz", "-b", tree, fixedDeb], { stdio: "pipe" });
  const fixed: Release = {
    package: "musl",
    version: "1.2.3-2",
    url: `file://${fixedDeb}`,
    sha256: createHash("sha256")
      .update(await readFile(fixedDeb))
      .digest("hex"),
    receivedAt: new Date(0).toISOString(),
  };
  const advisory = {
    id: "DSA-0000-1",
    modified: "2025-01-01T00:00:00Z",
    summary: "musl: test advisory against the base's C library",
    affected: [{ package: { ecosystem: "Debian:12", name: "musl" }, ranges: [{ type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.2.3-2" }] }] }],
  } as unknown as Osv;
  // The advisory alone reaches the base: musl needs attention while no fixed release is known.
  const alone = await desiredState(catalog, a, { advisories: [advisory] }).package("musl");
  assert.equal(alone.state, "attention");
  assert.deepEqual(alone.state === "attention" && alone.advisories, ["DSA-0000-1"]);
  // Debian's fixed revision known: musl moves to it, which nothing affects.
  const facts = { releases: [fixed], advisories: [advisory] };
  const desired = await desiredState(catalog, a, facts).package("musl");
  assert.equal(desired.state === "build" && desired.version, "1.2.3-2");
  // The reconciler fans a rebuilt package out to its dependents; the graph says which.
  const impact = catalog.impact(["package/musl" as Key]).keys;
  // greet is in the impact (it names musl as a runtime need) but its own inputs do not change.
  assert.deepEqual(impact, ["package/musl", "package/greet", "image/greeter"]);
  assert.deepEqual(
    catalog
      .impact(["package/busybox" as Key])
      .keys.filter((k) => k.startsWith("image/"))
      .sort(),
    ["image/devkit", "image/greeter"],
  );
  const rebuilt = await reconcile(a, impact, facts);
  assert.deepEqual(rebuilt, ["package/musl", "image/greeter"]);
  assert.equal(a.statuses.get("package/musl" as Key)!.actual!.version, "1.2.3-2");
  assert.notEqual(a.outputs.get("image/greeter" as Key)!.manifest, before.greeter);
  assert.equal(a.outputs.get("image/devkit" as Key)!.manifest, before.devkit);
  const layout = await OciLayout.open(layoutOf(a, "greeter"));
  const sbom = (await layout.readBlob(a.outputs.get("image/greeter" as Key)!.sbom as Digest)).toString("utf8");
  assert.match(sbom, /pkg:deb\/debian\/musl@1\.2\.3-2\?arch=amd64/);
  const hello = await run(a, "greeter", ["/usr/bin/greet", "again"]);
  assert.equal(hello.stdout, "Hello, again!\n");
});
