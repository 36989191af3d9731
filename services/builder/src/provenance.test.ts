import { test } from "node:test";
import assert from "node:assert/strict";
import { BUILDER_VERSION } from "@homeostat/core/contracts";
import { type ImageBuildPlan, type PackageBuildPlan } from "@homeostat/catalog";
import { BUILDER_ID, IMAGE_BUILD_TYPE, PACKAGE_BUILD_TYPE, slsaProvenance } from "./provenance.ts";
import { CATALOG_REVISION } from "./test-support.ts";

const hex = (c: string) => c.repeat(64);
const d = (c: string) => `sha256:${hex(c)}` as const;
const run = { startedOn: new Date("2024-05-01T10:00:00.000Z"), finishedOn: new Date("2024-05-01T10:02:30.500Z") };

const pkg: PackageBuildPlan = {
  catalogRevision: CATALOG_REVISION,
  kind: "package",
  key: "package/greet",
  name: "greet",
  version: "1.1",
  inputDigest: d("1"),
  sourceDateEpoch: 1_700_000_000,
  source: { url: "https://example.org/greet-1.1.tar.gz", sha256: hex("a") },
  steps: ["make", "make install"],
  dependencies: [{ name: "libgreet", version: "1.1", archive: d("b"), diffId: d("c"), size: 10 }],
  runtimeDependencies: ["libgreet"],
};

const image: ImageBuildPlan = {
  catalogRevision: CATALOG_REVISION,
  kind: "image",
  key: "image/greeter",
  name: "greeter",
  version: "2.0",
  inputDigest: d("2"),
  sourceDateEpoch: 1_700_000_000,
  packages: [
    { name: "libgreet", version: "1.1", archive: d("b"), diffId: d("c"), size: 10 },
    { name: "greet", version: "1.1+b1", archive: d("e"), diffId: d("f"), size: 20 },
  ],
  config: { entrypoint: ["/usr/bin/greet"], cmd: [], env: { PATH: "/usr/bin", LANG: "C" }, user: "65532", workdir: "/", annotations: { b: "2", a: "1" } },
};

test("a package's provenance names its recipe, its source and its build dependencies' archives", () => {
  const p = slsaProvenance(pkg, run);
  assert.equal(p.buildDefinition.buildType, PACKAGE_BUILD_TYPE);
  assert.deepEqual(p.buildDefinition.externalParameters, {
    name: "greet",
    version: "1.1",
    source: { url: "https://example.org/greet-1.1.tar.gz", sha256: hex("a") },
    steps: ["make", "make install"],
    dependencies: ["libgreet"],
    runtimeDependencies: ["libgreet"],
  });
  assert.deepEqual(p.buildDefinition.internalParameters, { sourceDateEpoch: 1_700_000_000, inputDigest: d("1"), catalogRevision: CATALOG_REVISION });
  assert.deepEqual(p.buildDefinition.resolvedDependencies, [
    { uri: "https://example.org/greet-1.1.tar.gz", digest: { sha256: hex("a") } },
    { name: "pkg:generic/libgreet@1.1", digest: { sha256: hex("b") } },
  ]);
  assert.deepEqual(p.runDetails.builder, { id: BUILDER_ID, version: { "homeostat-builder": BUILDER_VERSION } });
});

test("an image's provenance names its packages, its config and every layer's archive", () => {
  const p = slsaProvenance(image, run);
  assert.equal(p.buildDefinition.buildType, IMAGE_BUILD_TYPE);
  assert.deepEqual(p.buildDefinition.externalParameters, {
    name: "greeter",
    version: "2.0",
    packages: ["libgreet@1.1", "greet@1.1+b1"],
    config: { entrypoint: ["/usr/bin/greet"], cmd: [], env: { LANG: "C", PATH: "/usr/bin" }, user: "65532", workdir: "/", annotations: { a: "1", b: "2" } },
  });
  assert.deepEqual(p.buildDefinition.resolvedDependencies, [
    { name: "pkg:generic/libgreet@1.1", digest: { sha256: hex("b") } },
    { name: "pkg:generic/greet@1.1%2Bb1", digest: { sha256: hex("e") } },
  ]);
  assert.deepEqual(p.runDetails.builder, { id: BUILDER_ID, version: { "homeostat-builder": BUILDER_VERSION } });
});

test("run metadata: the real times in order and a fresh invocation id per call", () => {
  const a = slsaProvenance(image, run).runDetails.metadata;
  const b = slsaProvenance(image, run).runDetails.metadata;
  assert.equal(a.startedOn, "2024-05-01T10:00:00.000Z");
  assert.equal(a.finishedOn, "2024-05-01T10:02:30.500Z");
  assert.ok(Date.parse(a.startedOn) <= Date.parse(a.finishedOn));
  assert.match(a.invocationId, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(a.invocationId, b.invocationId);
});

test("the JSON has a stable field order, whatever order the request's maps were built in", () => {
  const shuffled: ImageBuildPlan = { ...image, config: { ...image.config, env: { LANG: "C", PATH: "/usr/bin" }, annotations: { a: "1", b: "2" } } };
  const strip = (json: string) => json.replace(/"invocationId":"[^"]+"/, "");
  assert.equal(strip(JSON.stringify(slsaProvenance(shuffled, run))), strip(JSON.stringify(slsaProvenance(image, run))));
  assert.deepEqual(Object.keys(slsaProvenance(image, run)), ["buildDefinition", "runDetails"]);
  assert.deepEqual(Object.keys(slsaProvenance(image, run).buildDefinition), ["buildType", "externalParameters", "internalParameters", "resolvedDependencies"]);
});

test("a malformed archive digest is refused", () => {
  const bad = { ...image, packages: [{ ...image.packages[0]!, archive: "sha256:nope" }] };
  assert.throws(() => slsaProvenance(bad, run), /not a sha256 digest/);
});

test("a package's provenance records the isolation, the step logs as byproducts, and a git source's commit", () => {
  const commit = "0123456789abcdef0123456789abcdef01234567";
  const git = { ...pkg, source: { url: `git+file:///srv/greet.git#${commit}`, sha256: hex("a") } };
  const log = {
    name: "step-1.log",
    digest: { sha256: hex("9") },
    mediaType: "text/plain; charset=utf-8",
    annotations: { step: "make", exitCode: "0", durationMs: "12" },
  };
  const p = slsaProvenance(git, { ...run, isolation: "bubblewrap", byproducts: [log] });
  assert.deepEqual(p.buildDefinition.internalParameters, {
    sourceDateEpoch: 1_700_000_000,
    inputDigest: d("1"),
    catalogRevision: CATALOG_REVISION,
    isolation: "bubblewrap",
  });
  assert.deepEqual(p.buildDefinition.resolvedDependencies[0], { uri: git.source.url, digest: { sha256: hex("a"), gitCommit: commit } });
  assert.deepEqual(p.runDetails.byproducts, [log]);
  assert.equal(slsaProvenance(pkg, { ...run, isolation: "none" }).buildDefinition.internalParameters.isolation, "none");
});
