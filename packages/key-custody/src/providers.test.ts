import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { chmod } from "node:fs/promises";
import { SigningKeyError } from "@homeostat/attest";
import { fileKeyProvider, keyProviderFromConfig, managedKeyProvider } from "./providers.ts";

async function tempDir(t: { after(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), "hs-signer-keys-"));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function openssl(args: string[], cwd: string): { status: number | null; out: string } {
  const r = spawnSync("openssl", args, { cwd, encoding: "utf8" });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

test("first run generates a 0600 P-256 key and its SPKI public key; reloading gives the same key id", async (t) => {
  const dataDir = await tempDir(t);
  const a = await managedKeyProvider({ dir: path.join(dataDir, "signer"), name: "cosign" });
  assert.equal(a.created, true);
  const keyPath = path.join(dataDir, "signer", "cosign.key");
  const pubPath = path.join(dataDir, "signer", "cosign.pub");
  assert.equal(a.keyPath, keyPath);
  assert.equal(a.publicKeyPath, pubPath);
  assert.equal((await stat(keyPath)).mode & 0o777, 0o600);
  assert.equal((await stat(path.join(dataDir, "signer"))).mode & 0o077, 0, "the key directory is private");
  assert.match(await readFile(keyPath, "utf8"), /^-----BEGIN PRIVATE KEY-----\n/);
  assert.equal(await readFile(pubPath, "utf8"), a.publicKeyPem);

  // openssl agrees it is P-256 and on the key id (sha256 of the SPKI DER).
  const text = openssl(["pkey", "-in", keyPath, "-noout", "-text"], dataDir);
  assert.equal(text.status, 0, text.out);
  assert.match(text.out, /prime256v1|P-256/);
  const der = execFileSync("openssl", ["pkey", "-pubin", "-in", pubPath, "-outform", "DER"]);
  assert.equal(a.keyId, `sha256:${createHash("sha256").update(der).digest("hex")}`);

  const b = await managedKeyProvider({ dir: path.join(dataDir, "signer"), name: "cosign" });
  assert.equal(b.created, false);
  assert.equal(b.keyId, a.keyId);
  assert.equal(b.publicKeyPem, a.publicKeyPem);
  assert.equal((await stat(keyPath)).mode & 0o777, 0o600);
});

test("only the key's own directory is closed: a data directory it creates stays reachable by the build sandbox's uid", async (t) => {
  const dataDir = path.join(await tempDir(t), "fresh-data");
  await managedKeyProvider({ dir: path.join(dataDir, "signer"), name: "cosign" });
  assert.equal((await stat(dataDir)).mode & 0o001, 0o001, "the data directory is searchable by others");
  assert.equal((await stat(path.join(dataDir, "signer"))).mode & 0o077, 0, "the key directory is private");
});

test("concurrent first runs agree on one key", async (t) => {
  const dataDir = await tempDir(t);
  const all = await Promise.all(Array.from({ length: 8 }, () => managedKeyProvider({ dir: path.join(dataDir, "signer"), name: "cosign" })));
  assert.equal(new Set(all.map((k) => k.keyId)).size, 1);
  assert.equal(all.filter((k) => k.created).length, 1);
  assert.equal(await readFile(path.join(dataDir, "signer", "cosign.pub"), "utf8"), all[0]!.publicKeyPem);
});

test("a configured PKCS#8 key is used as is, and its signatures verify with openssl", async (t) => {
  const dir = await tempDir(t);
  const keyPath = path.join(dir, "k.pem");
  execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyPath], { stdio: "pipe" });
  execFileSync("openssl", ["pkey", "-in", keyPath, "-pubout", "-out", path.join(dir, "k.pub")]);
  const s = await keyProviderFromConfig({ file: keyPath, dir: path.join(dir, "data"), name: "cosign" }, "signing key");
  assert.equal(s.source, keyPath);
  assert.equal(s.publicKeyPath, undefined);
  assert.equal(s.publicKeyPem, await readFile(path.join(dir, "k.pub"), "utf8"));
  const fromEnv = await keyProviderFromConfig({ pem: await readFile(keyPath, "utf8"), file: "ignored", dir, name: "cosign" }, "signing key");
  assert.equal(fromEnv.keyId, s.keyId, "PEM text in the environment wins over a file");

  const data = Buffer.from("hello homeostat\n");
  await writeFile(path.join(dir, "data.txt"), data);
  await writeFile(path.join(dir, "sig.der"), await s.sign(data));
  const ok = openssl(["dgst", "-sha256", "-verify", "k.pub", "-signature", "sig.der", "data.txt"], dir);
  assert.equal(ok.status, 0, ok.out);
  await writeFile(path.join(dir, "data.txt"), "hello homeostaT\n");
  assert.notEqual(openssl(["dgst", "-sha256", "-verify", "k.pub", "-signature", "sig.der", "data.txt"], dir).status, 0);

  // Nothing secret is reachable by logging the signer.
  assert.doesNotMatch(JSON.stringify(s), /PRIVATE/);
});

test("keys that are not unencrypted EC P-256 are refused with a clear reason", async (t) => {
  const dir = await tempDir(t);
  const cases: [string, string[], RegExp][] = [
    ["p384.pem", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], /curve secp384r1.*P-256/],
    ["rsa.pem", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"], /is a rsa key.*P-256/],
    ["ed25519.pem", ["genpkey", "-algorithm", "ED25519"], /is a ed25519 key.*P-256/],
    ["enc.pem", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-aes-256-cbc", "-pass", "pass:x"], /encrypted/],
  ];
  for (const [file, args, reason] of cases) {
    const keyPath = path.join(dir, file);
    execFileSync("openssl", [...args, "-out", keyPath], { stdio: "pipe" });
    await assert.rejects(fileKeyProvider(keyPath), (e: unknown) => {
      assert.ok(e instanceof SigningKeyError, String(e));
      assert.match(e.message, reason);
      assert.ok(e.message.includes(keyPath));
      assert.doesNotMatch(e.message, /BEGIN/);
      return true;
    });
  }
  await writeFile(path.join(dir, "junk.pem"), "not a key");
  await assert.rejects(fileKeyProvider(path.join(dir, "junk.pem")), /not a PEM private key/);
  await assert.rejects(fileKeyProvider(path.join(dir, "missing.pem")), /file not found/);
});

test("a key directory or key file that others can read is tightened to 0700 and 0600", async (t) => {
  const dir = path.join(await tempDir(t), "builder");
  const first = await managedKeyProvider({ dir, name: "builder" });
  await chmod(dir, 0o755);
  await chmod(first.keyPath, 0o644);
  const again = await managedKeyProvider({ dir, name: "builder" });
  assert.equal(again.keyId, first.keyId);
  assert.equal((await stat(dir)).mode & 0o777, 0o700);
  assert.equal((await stat(first.keyPath)).mode & 0o777, 0o600);
  assert.equal((await stat(first.publicKeyPath)).mode & 0o777, 0o644, "the public key stays readable");
});
