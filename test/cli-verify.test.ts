/**
 * `homeostat verify` as users run it (bin/homeostat, a child process) on OCI layouts signed by
 * the signer: what it prints when everything verifies, and the plain reason and exit code 1
 * when something does not.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sign } from "../services/signer/src/sign.ts";
import { imageToSign, newSigner } from "./fixtures/images.ts";

const bin = fileURLToPath(new URL("../packages/cli/bin/homeostat", import.meta.url));

function homeostat(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(bin, args, { env: { PATH: process.env.PATH, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test("verify prints the digest, key id and predicate types, or exits 1 with the reason", async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), "hs-cli-verify-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const signer = newSigner();
  const req = await imageToSign(path.join(dir, "greeter"), "1.0", "greeter");
  await sign(req, { dataDir: dir, imageRepository: "registry.example/homeostat", signer });
  const pub = path.join(dir, "cosign.pub");
  await writeFile(pub, signer.publicKeyPem);

  const ok = await homeostat(["verify", `${dir}/greeter:1.0`, "--key", pub]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, new RegExp(`Digest:\\s+${req.outputs.manifest}`));
  assert.match(ok.stdout, new RegExp(`by key ${signer.keyId}`));
  assert.match(ok.stdout, /https:\/\/cyclonedx\.org\/bom/);
  assert.match(ok.stdout, /https:\/\/slsa\.dev\/provenance\/v1/);

  // The whole layout, keys from the environment, JSON out.
  const json = await homeostat(["verify", `oci:${dir}/greeter`, "--json"], { HOMEOSTAT_TRUSTED_KEYS: pub });
  assert.equal(json.code, 0, json.stderr);
  const [v] = JSON.parse(json.stdout) as { tag: string; signature: { manifest: string }; attestations: { predicateType: string }[] }[];
  assert.equal(v!.tag, "1.0");
  assert.equal(v!.signature.manifest, req.outputs.manifest);
  assert.equal(v!.attestations.length, 2);

  const other = path.join(dir, "other.pub");
  await writeFile(other, newSigner().publicKeyPem);
  const wrong = await homeostat(["verify", `${dir}/greeter:1.0`, "--key", other]);
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /^homeostat: verification failed: untrusted-key: .*not among the trusted keys/);

  const missing = await homeostat(["verify", `${dir}/nothing`, "--key", pub]);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no OCI layout at/);

  const usage = await homeostat(["verify"]);
  assert.equal(usage.code, 64);
});
