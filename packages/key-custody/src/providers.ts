/**
 * Signing key providers: where a service's private key lives and how it signs, behind one
 * interface so that a KMS or PKCS#11 provider can replace the file one without touching any
 * signing code.
 *
 * Callers only see `SigningKeyProvider`: a key id, the public key and an async `sign` (ECDSA
 * P-256 / SHA-256, DER-encoded, what cosign, openssl and KMS services such as AWS KMS
 * ECDSA_SHA_256 and GCP EC_SIGN_P256_SHA256 produce). The local providers keep the private key
 * in a closure (never a property, never logged, never in an error message).
 *
 * Custody: a generated key lives in the one directory of the service that uses it (mode 0700,
 * the key 0600, the public key 0644 beside it), so on a shared machine only that service's
 * user reads it; in compose or Kubernetes that directory is a volume or Secret mounted into
 * that service alone.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, sign as cryptoSign, type KeyObject } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { chmod, link, mkdir, open, readFile, rename, stat, unlink } from "node:fs/promises";
import path from "node:path";
import { assertP256, keyIdOf, SigningKeyError, type Signer } from "@homeostat/attest";

/** A private signing key, wherever it is held. Satisfies @homeostat/attest's `Signer`. */
export interface SigningKeyProvider extends Signer {
  /** Where the key is held, for logs (a path, "environment", a KMS key name); never the key. */
  readonly source: string;
}

/** A key generated into a directory on first run, with where its public key was written. */
export type ManagedKeyProvider = SigningKeyProvider & {
  readonly keyPath: string;
  readonly publicKeyPath: string;
  /** True when this call generated the key (first run). */
  readonly created: boolean;
};

/**
 * A provider from a PKCS#8 (or SEC1 `EC PRIVATE KEY`) PEM private key. `source` names the key
 * in errors; the PEM itself never appears in one.
 */
export function pemKeyProvider(pem: string | Buffer, source = "signing key"): SigningKeyProvider {
  const text = pem.toString();
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    throw new SigningKeyError(`${source}: the key is encrypted; provide an unencrypted PKCS#8 PEM EC P-256 private key`);
  }
  if (/-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----|-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----/.test(text)) {
    throw new SigningKeyError(`${source}: this is a password-protected cosign key; export it as an unencrypted PKCS#8 PEM EC P-256 private key`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: text, format: "pem" });
  } catch (e) {
    throw new SigningKeyError(`${source}: not a PEM private key (${(e as Error).message})`);
  }
  assertP256(key, source);
  const publicKey = createPublicKey(key);
  return {
    source,
    keyId: keyIdOf(publicKey),
    publicKeyPem: publicKey.export({ type: "spki", format: "pem" }).toString(),
    async sign(data: Uint8Array): Promise<Buffer> {
      // Synchronous on purpose: one P-256 signature takes ~25 µs, less than the thread-pool
      // round trip of the callback form, so the event loop is blocked for less time this way.
      // The bare KeyObject (DER is the default for EC): wrapping it as { key, dsaEncoding }
      // makes node prepare the key again on every call, which costs ~40% of the throughput.
      return cryptoSign("sha256", data, key);
    },
  };
}

/** A provider from an existing PEM file (it must exist; nothing is generated). */
export async function fileKeyProvider(file: string): Promise<SigningKeyProvider> {
  const keyPath = path.resolve(file);
  return pemKeyProvider(await readKeyFile(keyPath), keyPath);
}

/**
 * The key `<dir>/<name>.key`, generated on first run (mode 0600, the directory 0700, the SPKI
 * PEM public key `<name>.pub` beside it, 0644). An existing directory or key that others can
 * read is tightened to those modes. Safe when several instances start at once: the key file
 * is created by an atomic link of a fully written temporary file, so the loser of a race reads
 * the winner's key and every instance ends up with the same key id.
 */
export async function managedKeyProvider(opts: { dir: string; name: string }): Promise<ManagedKeyProvider> {
  const dir = path.resolve(opts.dir);
  const keyPath = path.join(dir, `${opts.name}.key`);
  const publicKeyPath = path.join(dir, `${opts.name}.pub`);
  // Parents get the default mode (the data directory must stay reachable by the build
  // sandbox's uid); only the key's own directory is closed.
  await mkdir(path.dirname(dir), { recursive: true });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await tighten(dir, 0o700);
  let created = false;
  let pem = await readKeyFile(keyPath, true);
  if (pem === undefined) {
    const fresh = await generateP256Pem();
    created = await createExclusive(keyPath, fresh, 0o600);
    pem = created ? Buffer.from(fresh) : await readKeyFile(keyPath);
  }
  await tighten(keyPath, 0o600);
  const provider = pemKeyProvider(pem, keyPath);
  await writePublicKey(publicKeyPath, provider.publicKeyPem);
  // Spread keeps `sign` a closure over the private key; nothing secret is enumerable.
  return { ...provider, keyPath, publicKeyPath, created };
}

/** How a service's key is configured: PEM text (a secret variable), a PEM file, or managed in its directory. */
export type KeyConfig = { pem?: string | undefined; file?: string | undefined; dir: string; name: string };

/** The provider a configuration names: the PEM text when given, else the file, else the managed key. */
export async function keyProviderFromConfig(c: KeyConfig, what: string): Promise<SigningKeyProvider & { publicKeyPath?: string }> {
  if (c.pem !== undefined) return pemKeyProvider(c.pem, `${what} from the environment`);
  if (c.file !== undefined && c.file !== "") return fileKeyProvider(c.file);
  return managedKeyProvider({ dir: c.dir, name: c.name });
}

/** Removes group and other bits from an existing file or directory (a key made by an older version or by hand). */
async function tighten(file: string, mode: number): Promise<void> {
  const s = await stat(file);
  if ((s.mode & 0o777 & ~mode) !== 0) await chmod(file, mode);
}

async function readKeyFile(file: string): Promise<Buffer>;
async function readKeyFile(file: string, missingOk: true): Promise<Buffer | undefined>;
async function readKeyFile(file: string, missingOk = false): Promise<Buffer | undefined> {
  try {
    return await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" && missingOk) return undefined;
    if (code === "ENOENT") throw new SigningKeyError(`signing key ${file}: file not found`);
    if (code === "EACCES") throw new SigningKeyError(`signing key ${file}: permission denied`);
    throw new SigningKeyError(`signing key ${file}: cannot read (${code ?? (e as Error).message})`);
  }
}

async function generateP256Pem(): Promise<string> {
  return new Promise((resolve, reject) => {
    generateKeyPair(
      "ec",
      { namedCurve: "P-256", privateKeyEncoding: { type: "pkcs8", format: "pem" }, publicKeyEncoding: { type: "spki", format: "pem" } },
      (err, _pub, priv) => (err ? reject(err) : resolve(priv)),
    );
  });
}

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
}

/** Writes `data` to a fresh temporary file with `mode` and fsyncs it; a write that fails (ENOSPC) leaves no temporary file behind. */
async function writeTemp(file: string, data: string, mode: number): Promise<string> {
  const tmp = tempName(file);
  const fh = await open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, mode);
  try {
    await fh.chmod(mode); // the umask may have removed bits we want; it never adds any
    await fh.writeFile(data);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    throw e;
  }
  await fh.close();
  return tmp;
}

/** Creates `file` atomically unless it exists. Returns false if another process created it first. */
async function createExclusive(file: string, data: string, mode: number): Promise<boolean> {
  const tmp = await writeTemp(file, data, mode);
  try {
    await link(tmp, file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  } finally {
    await unlink(tmp).catch(() => {});
  }
}

/** Keeps the public key file in step with the private key (rewritten only if it differs). */
async function writePublicKey(file: string, pem: string): Promise<void> {
  const existing = await readFile(file, "utf8").catch(() => undefined);
  if (existing === pem) return;
  const tmp = await writeTemp(file, pem, 0o644);
  try {
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
}
