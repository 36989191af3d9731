/**
 * The sign handler with a registry (real NATS state, docker-registry on loopback behind a
 * counting proxy): an image's registry uploads open while admission checks its outputs, and a
 * request that admission refuses after vouching for it leaves none open.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir } from "node:fs/promises";
import { BUILD_RESULT_PREDICATE_TYPE, Registry, signDsse, statementAbout, writeStoreBlob } from "@homeostat/attest";
import { BUILDER_VERSION, NonRetriableError, StateStore, type Key, type Logger } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { imageToSign, newSigner } from "../../../test/fixtures/images.ts";
import { countingProxy, startRegistry, type LocalRegistry } from "../../../test/fixtures/registry.ts";
import { imageLayoutDir } from "./admit.ts";
import { createSignHandler } from "./handle.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
let t: TestEnv;
let registry: LocalRegistry;

before(async () => {
  t = await testEnv();
  registry = await startRegistry();
  await mkdir(t.config.dataDir, { recursive: true });
});
after(async () => {
  await registry?.stop();
  await t?.cleanup();
});

test("an image request vouched for and then refused cancels the registry uploads opened during its admission", async () => {
  const proxy = await countingProxy(registry.url);
  try {
    const key: Key = "image/vouched";
    // A layout the builder would have written, and a build result its key signed, about this key
    // and input: admission vouches for it. Its provenance names no input digest, so admission
    // then refuses it (result-mismatch), after the uploads were opened.
    const build = await imageToSign(imageLayoutDir(t.config.dataDir, "vouched"), "1.0", "vouched");
    const builder = newSigner();
    const predicate = {
      key,
      kind: "image",
      name: "vouched",
      version: "1.0",
      inputDigest: build.inputDigest,
      catalogRevision: `sha256:${"c".repeat(64)}`,
      isolation: "bubblewrap",
      builder: BUILDER_VERSION,
      outputs: { manifest: build.outputs.manifest, sbom: build.outputs.sbom, provenance: build.outputs.provenance },
    };
    const result = await writeStoreBlob(
      t.config.dataDir,
      await signDsse(statementAbout([{ name: key, digest: build.outputs.manifest! }], BUILD_RESULT_PREDICATE_TYPE, predicate), builder),
    );
    const state = new StateStore(t.buckets.state);
    await state.update(key, () => ({ ...StateStore.initial(key), phase: "Signing", desiredInputDigest: build.inputDigest }));
    const refusals: string[] = [];
    const handle = createSignHandler({
      dataDir: t.config.dataDir,
      state,
      trustedBuilderKeys: async () => [builder.publicKeyPem],
      allowUnsandboxed: false,
      signer: newSigner(),
      imageRepository: `${registry.host}/homeostat`,
      registry: new Registry(proxy.url),
      imageVersions: { keep: 3, graceMs: 60_000 },
      enqueue: async () => {},
      refused: (reason) => void refusals.push(reason),
      log: quiet,
    });
    await assert.rejects(handle({ v: 2, key, inputDigest: build.inputDigest, buildResult: result }), NonRetriableError);
    assert.deepEqual(refusals, ["result-mismatch"]);
    const count = (method: string) => proxy.requests.filter((r) => r.startsWith(`${method} `) && r.includes("/blobs/uploads/")).length;
    for (const deadline = Date.now() + 5_000; (count("POST") === 0 || count("POST") !== count("DELETE")) && Date.now() < deadline;)
      await new Promise((r) => setTimeout(r, 20));
    assert.equal(count("POST"), 4, `the signature's payload and config and the two attestations' uploads opened: ${proxy.requests.join(", ")}`);
    assert.equal(count("DELETE"), 4, `and every one cancelled: ${proxy.requests.join(", ")}`);
    assert.equal(count("PUT"), 0, "nothing uploaded");
  } finally {
    await proxy.close();
  }
});
