import { test } from "node:test";
import assert from "node:assert/strict";
import type { Key } from "@homeostat/core/key";
import { keyStatusSchema, type KeyStatus } from "@homeostat/core/status";
import { loadCatalog } from "./catalog.ts";
import { DesiredState } from "./desired-state.ts";
import { packageRecipe, scratchDirs, writeFiles } from "../../../test/fixtures/scratch.ts";

const tmp = scratchDirs();

/** Desired states over `packages` with the given statuses, counting the packages whose facts were read. */
async function desiredStates(packages: Record<string, string[]>, statuses: Map<Key, KeyStatus> = new Map()) {
  const dir = tmp("catalog-");
  writeFiles(dir, Object.fromEntries(Object.entries(packages).map(([name, build]) => [`packages/${name}.yaml`, packageRecipe(name, { build })])));
  const catalog = await loadCatalog(dir);
  const factsRead: string[] = [];
  const desired = new DesiredState({
    catalog,
    releases: async (name) => (factsRead.push(name), []),
    advisories: async () => [],
    status: async (key) => statuses.get(key),
    sourceDateEpoch: 0,
  });
  return { desired, factsRead };
}

/** A status saying `name` was built at the inputs `desired` asks for now. */
async function builtAsDesired(desired: DesiredState, name: string): Promise<KeyStatus> {
  const d = await desired.package(name);
  assert.equal(d.state, "build");
  if (d.state !== "build") throw new Error("unreachable");
  return keyStatusSchema.parse({
    key: `package/${name}`,
    phase: "Ready",
    attempts: 0,
    updatedAt: new Date(0).toISOString(),
    desiredVersion: d.version,
    desiredInputDigest: d.inputDigest,
    actual: {
      version: d.version,
      inputDigest: d.inputDigest,
      outputs: { archive: `sha256:${"a".repeat(64)}`, diffId: `sha256:${"b".repeat(64)}`, size: 1, location: "store" },
      signatures: {},
      keyId: "test",
      builtAt: new Date(0).toISOString(),
    },
  });
}

test("a package whose first dependency is not built waits for it, and its other dependencies are not worked out", async () => {
  const { desired, factsRead } = await desiredStates({
    libc: [],
    zlib: ["libc"],
    tls: ["zlib", "libc"],
    curl: ["tls", "zlib", "libc"],
    app: ["libc", "curl"],
  });
  assert.deepEqual(await desired.package("app"), { state: "waiting", waitingFor: "package/libc to be built at 1.0" });
  assert.deepEqual(factsRead, ["app", "libc"]);
  // Down a chain, the first unbuilt dependency of each link: curl waits through tls and zlib for libc.
  assert.deepEqual(await desired.package("curl"), { state: "waiting", waitingFor: "package/libc to be built at 1.0" });
  assert.deepEqual(factsRead, ["app", "libc", "curl", "tls", "zlib"]);
});

test("the first dependency in order that is not up to date is the one waited for", async () => {
  const probe = await desiredStates({ libc: [], zlib: [] });
  const libc = await builtAsDesired(probe.desired, "libc");
  for (const order of [
    ["libc", "zlib"],
    ["zlib", "libc"],
  ]) {
    const { desired } = await desiredStates({ libc: [], zlib: [], app: order }, new Map([[libc.key, libc]]));
    assert.deepEqual(await desired.package("app"), { state: "waiting", waitingFor: "package/zlib to be built at 1.0" }, order.join(", "));
  }
  const zlib = await builtAsDesired(probe.desired, "zlib");
  const { desired } = await desiredStates({ libc: [], zlib: [], app: ["zlib", "libc"] }, new Map([[zlib.key, zlib]]));
  assert.deepEqual(await desired.package("app"), { state: "waiting", waitingFor: "package/libc to be built at 1.0" });
});

test("a package whose dependencies are all up to date gets their artifacts, in its order", async () => {
  const deps = Array.from({ length: 12 }, (_, i) => `d${String(i).padStart(2, "0")}`);
  const packages = { ...Object.fromEntries(deps.map((d) => [d, []])), app: [...deps].reverse() };
  const probe = await desiredStates(packages);
  const statuses = new Map<Key, KeyStatus>();
  for (const d of deps) {
    const s = await builtAsDesired(probe.desired, d);
    statuses.set(s.key, s);
  }
  const { desired } = await desiredStates(packages, statuses);
  const app = await desired.package("app");
  assert.equal(app.state, "build");
  if (app.state !== "build" || app.plan.kind !== "package") throw new Error("unreachable");
  assert.deepEqual(
    app.plan.dependencies.map((d) => d.name),
    [...deps].reverse(),
  );
});

test("a dependency whose facts cannot be read fails the package when it is reached, and is worked out afresh when asked again", async () => {
  const { desired } = await desiredStates({ libc: [], app: ["libc"] });
  let fail = true;
  const flaky = new DesiredState({
    ...desired.in,
    releases: async (name) => {
      if (name === "libc" && fail) throw new Error("the releases bucket did not answer");
      return [];
    },
  });
  await assert.rejects(flaky.package("app"), /did not answer/);
  fail = false;
  assert.deepEqual(await flaky.package("libc"), await desired.package("libc"));
});
