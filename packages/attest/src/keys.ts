/**
 * Keys: the signer's one signing key, behind an interface a cloud KMS can implement later.
 *
 * Callers only see `Signer`: a key id, the public key and an async `sign`. The local
 * implementation keeps the private key in a closure (never a property, never logged) and
 * signs ECDSA P-256 / SHA-256 with DER-encoded signatures, which is what cosign, openssl
 * (`openssl dgst -sha256 -verify`) and KMS services (AWS KMS ECDSA_SHA_256, GCP
 * EC_SIGN_P256_SHA256) all produce and accept.
 */
import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, sign as cryptoSign, verify as cryptoVerify, type KeyObject } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import { link, mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import path from "node:path";
import { sha256Hex } from "@homeostat/core/digest";

export type Signer = {
  /** `sha256:<hex>` of the public key's SPKI DER encoding. */
  readonly keyId: string;
  /** The public key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), what `cosign verify --key` takes. */
  readonly publicKeyPem: string;
  /** ECDSA P-256 over SHA-256(data); the signature is ASN.1 DER. */
  sign(data: Uint8Array): Promise<Buffer>;
};

export class SigningKeyError extends Error {}

/** The only curve Homeostat signs with; Node reports it under its OpenSSL name. */
const P256 = "prime256v1";

/** `sha256:<hex>` of the SPKI DER of a public key (or of a private key's public half). */
export function keyIdOf(key: KeyObject | string): string {
  const pub = typeof key === "string" ? createPublicKey(key) : key.type === "private" ? createPublicKey(key) : key;
  return `sha256:${sha256Hex(pub.export({ type: "spki", format: "der" }))}`;
}

/** Parses a trusted public key (SPKI PEM), insisting on EC P-256. */
export function parsePublicKey(pem: string, source = "public key"): KeyObject {
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (e) {
    throw new SigningKeyError(`${source}: not a PEM public key (${(e as Error).message})`);
  }
  assertP256(key, source);
  return key;
}

/**
 * A Signer from a PKCS#8 (or SEC1 `EC PRIVATE KEY`) PEM private key. `source` names the key
 * in errors; the PEM itself never appears in one.
 */
export function signerFromPrivateKeyPem(pem: string | Buffer, source = "signing key"): Signer {
  const text = pem.toString();
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(text)) {
    throw new SigningKeyError(`${source}: the key is encrypted; provide an unencrypted PKCS#8 PEM EC P-256 private key`);
  }
  if (/-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----|-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----/.test(text)) {
    throw new SigningKeyError(
      `${source}: this is a password-protected cosign key; export it as an unencrypted PKCS#8 PEM EC P-256 private key`,
    );
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: text, format: "pem" });
  } catch (e) {
    throw new SigningKeyError(`${source}: not a PEM private key (${(e as Error).message})`);
  }
  assertP256(key, source);
  const publicKey = createPublicKey(key);
  const publicKeyPem = publicKey.export({ type: "spki", format: "pem" }).toString();
  const keyId = keyIdOf(publicKey);
  return {
    keyId,
    publicKeyPem,
    async sign(data: Uint8Array): Promise<Buffer> {
      // Synchronous on purpose: one P-256 signature takes ~25 µs, less than the thread-pool
      // round trip of the callback form, so the event loop is blocked for less time this way.
      // The bare KeyObject (DER is the default for EC): wrapping it as { key, dsaEncoding }
      // makes node prepare the key again on every call, which costs ~40% of the throughput.
      return cryptoSign("sha256", data, key);
    },
  };
}

function assertP256(key: KeyObject, source: string): void {
  const type = key.asymmetricKeyType;
  if (type !== "ec") {
    throw new SigningKeyError(`${source}: is a ${type ?? "symmetric"} key; Homeostat signs with ECDSA P-256 (prime256v1) keys only`);
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (curve !== P256) {
    throw new SigningKeyError(`${source}: is an EC key on curve ${curve ?? "(unknown)"}; Homeostat signs with ECDSA P-256 (prime256v1) keys only`);
  }
}

export type LoadedSigningKey = Signer & {
  /** Where the private key lives (for messages; never read it to log it). */
  readonly keyPath: string;
  /** Where the SPKI PEM public key was written, when the key is Homeostat-managed. */
  readonly publicKeyPath: string | undefined;
  /** True when this call generated the key (first run). */
  readonly created: boolean;
};

/**
 * The signing key: the PEM text `keyPem` when given (a secret injected as an environment
 * variable), else from `keyPath` when set (it must exist), otherwise
 * `<dataDir>/signer/cosign.key`, generated on first run with mode 0600, next to
 * `cosign.pub` (SPKI PEM). Safe when several signers start at once: the key file is created
 * by an atomic link of a fully written temporary file, so the loser of a race reads the
 * winner's key and every instance ends up with the same key id.
 */
export async function loadOrCreateSigningKey(opts: { keyPath?: string | undefined; keyPem?: string | undefined; dataDir: string }): Promise<LoadedSigningKey> {
  if (opts.keyPem !== undefined) {
    return withInfo(signerFromPrivateKeyPem(opts.keyPem, "signing key from HOMEOSTAT_SIGNING_KEY"), "(environment)", undefined, false);
  }
  if (opts.keyPath !== undefined && opts.keyPath !== "") {
    const keyPath = path.resolve(opts.keyPath);
    const pem = await readKeyFile(keyPath);
    const signer = signerFromPrivateKeyPem(pem, `signing key ${keyPath}`);
    return withInfo(signer, keyPath, undefined, false);
  }

  const dir = path.join(path.resolve(opts.dataDir), "signer");
  const keyPath = path.join(dir, "cosign.key");
  const publicKeyPath = path.join(dir, "cosign.pub");
  await mkdir(dir, { recursive: true, mode: 0o700 });

  let created = false;
  let pem = await readKeyFile(keyPath, true);
  if (pem === undefined) {
    const fresh = await generateP256Pem();
    created = await createExclusive(keyPath, fresh, 0o600);
    pem = created ? Buffer.from(fresh) : await readKeyFile(keyPath);
  }
  const signer = signerFromPrivateKeyPem(pem, `signing key ${keyPath}`);
  await writePublicKey(publicKeyPath, signer.publicKeyPem);
  return withInfo(signer, keyPath, publicKeyPath, created);
}

function withInfo(signer: Signer, keyPath: string, publicKeyPath: string | undefined, created: boolean): LoadedSigningKey {
  // Spread keeps `sign` a closure over the private key; nothing secret is enumerable.
  return { ...signer, keyPath, publicKeyPath, created };
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

/** Writes `data` to a fresh temporary file with `mode` and fsyncs it. */
async function writeTemp(file: string, data: string, mode: number): Promise<string> {
  const tmp = tempName(file);
  const fh = await open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, mode);
  try {
    await fh.chmod(mode); // the umask may have removed bits we want; it never adds any
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
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

/** Keeps cosign.pub in step with the private key (rewritten only if it differs). */
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

/** Checks a DER ECDSA signature over SHA-256(data); false (never a throw) for a malformed one. */
export function verifyDer(publicKey: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  try {
    return cryptoVerify("sha256", data, { key: publicKey, dsaEncoding: "der" }, signature);
  } catch {
    return false;
  }
}

/**
 * The public keys in PEM files (a file may hold several), each checked to be EC P-256 and
 * returned as SPKI PEM, duplicates removed: the trust set of a verification. A key stays
 * trusted while it is listed; removing it revokes every signature it made.
 */
export async function readTrustedKeys(files: readonly string[]): Promise<string[]> {
  const out = new Map<string, string>();
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (e) {
      throw new SigningKeyError(`trusted key file ${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    const blocks = text.match(/-----BEGIN PUBLIC KEY-----[\s\S]*?-----END PUBLIC KEY-----/g) ?? [];
    if (blocks.length === 0) throw new SigningKeyError(`trusted key file ${file}: holds no PEM public key (-----BEGIN PUBLIC KEY-----)`);
    blocks.forEach((pem, i) => {
      const key = parsePublicKey(pem, `trusted key file ${file}${blocks.length > 1 ? ` (key #${i + 1})` : ""}`);
      out.set(keyIdOf(key), key.export({ type: "spki", format: "pem" }).toString());
    });
  }
  return [...out.values()];
}
