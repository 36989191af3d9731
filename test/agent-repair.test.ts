/**
 * The repair path end to end, with the real @anthropic-ai/sdk against the fake Messages server
 * (test/agent-fake-messages.ts) replaying test/fixtures/agent/repair, on real NATS with the
 * agent's and the builder's own identities: the sources of the failing and the last good
 * version unpacked into the workspace, the workspace's edges (absolute paths, `..`, a symbolic
 * link out of an upstream tarball) refused as tool errors, read_file's size cap, edit_recipe
 * checked by the catalog schema, write_patch refusing `../`, validators' failures fed back, a
 * trial build of a catalog snapshot by the builder's trial server in its bubblewrap sandbox
 * (stored apart, never signed, the key's state untouched), and a proposal in KV with its
 * transcript's digest, secrets redacted. Then: what the agent cannot reach.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import path from "node:path";
import { StateStore } from "@homeostat/core";
import { testEnv } from "./harness.ts";
import { readScript, startFakeMessagesServer } from "./agent-fake-messages.ts";
import { helloRecipe, quiet, startAgentRig, tarball } from "./agent-rig.ts";
import { messagesClient } from "../services/agent/src/loop.ts";
import { serveTrials } from "../services/builder/src/trial.ts";

const fixtures = new URL("./fixtures/agent/", import.meta.url).pathname;

/** A catalog with package hello pinned at 1.0, and the tarballs of 1.0 (with a link out) and 1.1 (with a big file). */
function makeCatalog(root: string, secretFile: string): { catalogDir: string; sha: Record<string, string> } {
  const sources = path.join(root, "sources");
  mkdirSync(sources, { recursive: true });
  const sha: Record<string, string> = {};
  for (const v of ["1.0", "1.1"]) {
    const tree = path.join(root, "trees", `hello-${v}`);
    cpSync(path.join(fixtures, "sources", `hello-${v}`), tree, { recursive: true });
    // The last good version carries a link out (the builder would refuse it; the workspace must not follow it), the new one a big file.
    if (v === "1.0") symlinkSync(secretFile, path.join(tree, "escape"));
    else writeFileSync(path.join(tree, "big.txt"), "x".repeat(100 * 1024));
    sha[v] = tarball(tree, sources, `hello-${v}`);
  }
  const catalogDir = path.join(root, "catalog");
  mkdirSync(path.join(catalogDir, "packages"), { recursive: true });
  writeFileSync(path.join(catalogDir, "packages", "hello.yaml"), helloRecipe("hello", sha["1.0"]!, "make hello"));
  return { catalogDir, sha };
}

test(
  "a failed build of 1.1 repaired end to end: workspace edges, validators as feedback, a sandboxed trial build, a proposal with a redacted transcript",
  { timeout: 120_000 },
  async () => {
    const t = await testEnv();
    const server = await startFakeMessagesServer();
    const abort = new AbortController();
    let stop: (() => Promise<void>) | undefined;
    try {
      const secretFile = path.join(t.dir, "data", "signer", "cosign.key");
      mkdirSync(path.dirname(secretFile), { recursive: true });
      const secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETSIGNINGKEYMATERIAL\n-----END PRIVATE KEY-----\n";
      writeFileSync(secretFile, secret, { mode: 0o600 });
      const { catalogDir, sha } = makeCatalog(path.join(t.dir, "factory"), secretFile);
      const script = readFileSync(path.join(fixtures, "repair", "makefile-misses-file.json"), "utf8")
        .replaceAll("@SHA_1_1@", sha["1.1"]!)
        .replaceAll("@SECRET_FILE@", secretFile);
      const scriptFile = path.join(t.dir, "script.json");
      writeFileSync(scriptFile, script);
      server.play(readScript(scriptFile));

      const key = "package/hello" as const;
      const apiKey = "sk-ant-test-0123456789abcdef";
      const rig = await startAgentRig(t, {
        catalogDir,
        client: messagesClient(apiKey, server.url),
        settings: { ...t.config.agent, apiKey, model: "claude-test", maxTurns: 20 },
        apiKey,
      });
      stop = rig.stop;
      const { state, proposals, transcripts, dataDir, snapshots } = rig;
      await rig.recordRelease({ package: "hello", version: "1.1", url: "../sources/hello-1.1.tar.gz", sha256: sha["1.1"]! });
      const before = await state.update(key, () => ({
        ...StateStore.initial(key),
        phase: "Failed",
        desiredVersion: "1.1",
        failure: {
          inputDigest: `sha256:${"1".repeat(64)}`,
          kind: "permanent",
          reason: "step 1 (make hello) exited 2: undefined reference to `greeting'",
          count: 3,
          at: new Date().toISOString(),
        },
        actual: {
          version: "1.0",
          inputDigest: `sha256:${"2".repeat(64)}`,
          outputs: { location: "store" },
          signatures: {},
          keyId: "k",
          builtAt: new Date().toISOString(),
        },
      }));
      await rig.repair(key, abort.signal);

      const results = server.requests
        .slice(1)
        .map((r) => (r as { messages: { content: { type: string; is_error?: boolean; content?: string }[] }[] }).messages.at(-1)!.content);
      const [abs, up, link, big, log] = results[0]!;
      assert.equal(abs!.is_error, true);
      assert.match(abs!.content!, /paths are relative to the workspace/);
      assert.match(up!.content!, /leaves the workspace/);
      assert.match(link!.content!, /leads out of the workspace through a symbolic link/);
      assert.equal(big!.is_error, undefined);
      assert.ok(big!.content!.length < 70 * 1024 && /102400 bytes; read on from offset 65536/.test(big!.content!), "read_file stops at 64 KiB");
      assert.match(log!.content!, /undefined reference to `greeting'/);
      const [diff, grep] = results[1]!;
      assert.match(diff!.content!, /\+const char \*greeting\(void\) \{ return "hello from 1.1"; \}/, "diff_sources shows 1.1's new util.c");
      assert.match(grep!.content!, /source\/main.c:3: .*greeting\(\)/);
      const [badRecipe, outPatch, early] = results[2]!;
      assert.match(badRecipe!.content!, /would not pass the catalog schema: build.steps/);
      assert.match(outPatch!.content!, /names paths outside the source: a\/..\/..\/etc\/passwd/);
      assert.equal(early!.is_error, true);
      assert.match(early!.content!, /not accepted: test-kept: the package has no test/);
      assert.match(results[3]![0]!.content!, /recipe.yaml updated/);
      assert.equal(results[4]![0]!.is_error, undefined, results[4]![0]!.content);
      assert.match(results[4]![0]!.content!, /^passed: package\/hello 1.1 built in the sandbox and its test passed/);
      const everything = server.raw.join("\n");
      assert.ok(!everything.includes("TOPSECRETSIGNINGKEYMATERIAL"), "the signing key never reached the model");

      const [proposal] = await proposals.ofKey(key);
      assert.ok(proposal, "a proposal was recorded");
      assert.equal(proposal.status, "open");
      assert.deepEqual(
        proposal.validators.filter((v) => v.status !== "passed"),
        [],
      );
      assert.match(proposal.recipe, /version: "1.1"/);
      const transcript = readFileSync(path.join(transcripts.dir, proposal.transcriptDigest.slice("sha256:".length)), "utf8");
      assert.match(transcript, /\[redacted\]/);
      assert.ok(!transcript.includes("LEAKEDLEAKED") && !transcript.includes(apiKey), "secrets redacted from the transcript");

      // The trial is stored apart and never became the key's state nor a signature.
      assert.ok(existsSync(path.join(dataDir, "trials", "store")) && !existsSync(path.join(dataDir, "store")));
      const after = (await state.get(key))!;
      assert.equal(after.phase, "Failed");
      assert.deepEqual(after.actual, before!.actual);
      assert.match(after.agent ?? "", /^proposal .* waits for review/);
      assert.equal((await t.nats.jsm.streams.info(t.nats.topology.stream("sign"))).state.messages, 0);
      assert.equal(readdirSync(snapshots).filter((d) => !d.startsWith(".")).length, 1, "one content-addressed snapshot");
    } finally {
      abort.abort();
      await stop?.();
      await server.close();
      await t.cleanup();
    }
  },
);

test(
  "the agent's identity cannot ask for builds or signatures, nor read ingest's cursors; only the agent may ask for trials",
  { timeout: 60_000 },
  async () => {
    const t = await testEnv();
    try {
      const agent = await t.connectAs("agent");
      const refused = async (p: Promise<unknown>) =>
        assert.ok(
          await p.then(
            () => false,
            () => true,
          ),
          "refused",
        );
      const key = "package/hello" as const;
      await refused(agent.js.publish(t.nats.topology.subject("build", key), "{}"));
      await refused(agent.js.publish(t.nats.topology.subject("sign", key), "{}"));
      await refused(agent.kvm.open(agent.topology.bucket("ingest_cursors")).then((b) => b.get("x")));
      // A builder answers trials; the agent's request is answered (an invalid one, told so), nobody else's reaches it.
      const abort = new AbortController();
      const builder = await t.connectAs("builder");
      const serving = serveTrials(builder, async () => ({ v: 1, passed: false, detail: "unused" }), { log: quiet, signal: abort.signal });
      await builder.nc.flush();
      const answer = await agent.nc.request(t.nats.topology.trialSubject(key), "{}", { timeout: 5000 });
      assert.match((answer.json() as { detail: string }).detail, /^invalid trial request/);
      for (const other of ["reconciler", "ingest", "signer"] as const) {
        const c = await t.connectAs(other);
        await refused(c.nc.request(t.nats.topology.trialSubject(key), "{}", { timeout: 1000 }));
      }
      abort.abort();
      await serving;
    } finally {
      await t.cleanup();
    }
  },
);
