/**
 * Keys: public keys and trust. What signs is a `Signer` (a key id, the public key and an async
 * `sign`, ECDSA P-256 / SHA-256 with DER signatures); who holds the private key is not this
 * package's business: @homeostat/key-custody provides signers to the services that sign, so
 * that verifying (the CLI) never comes near a private key.
 */
import { createPublicKey, verify as cryptoVerify, type KeyObject } from "node:crypto";
import { readFile } from "node:fs/promises";
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

/** Insists on an EC P-256 key (public or private); `source` names it in the error. */
export function assertP256(key: KeyObject, source: string): void {
  const type = key.asymmetricKeyType;
  if (type !== "ec") {
    throw new SigningKeyError(`${source}: is a ${type ?? "symmetric"} key; Homeostat signs with ECDSA P-256 (prime256v1) keys only`);
  }
  const curve = key.asymmetricKeyDetails?.namedCurve;
  if (curve !== P256) {
    throw new SigningKeyError(`${source}: is an EC key on curve ${curve ?? "(unknown)"}; Homeostat signs with ECDSA P-256 (prime256v1) keys only`);
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
    for (const [id, pem] of trustedKeysIn(file, text)) out.set(id, pem);
  }
  return [...out.values()];
}

/** Trust files' keys as last parsed, with the text they were parsed from; at most 64 files. */
const parsedTrustFiles = new Map<string, { text: string; keys: [id: string, pem: string][] }>();

/**
 * The keys a trust file's text holds, by key id; parsed once per file and text (the signer reads
 * its trust files for every request, and parsing them was about 0.6 ms of each, profiled).
 */
function trustedKeysIn(file: string, text: string): [id: string, pem: string][] {
  const known = parsedTrustFiles.get(file);
  if (known?.text === text) return known.keys;
  const blocks = text.match(/-----BEGIN PUBLIC KEY-----[\s\S]*?-----END PUBLIC KEY-----/g) ?? [];
  if (blocks.length === 0) throw new SigningKeyError(`trusted key file ${file}: holds no PEM public key (-----BEGIN PUBLIC KEY-----)`);
  const keys = blocks.map((pem, i): [string, string] => {
    const key = parsePublicKey(pem, `trusted key file ${file}${blocks.length > 1 ? ` (key #${i + 1})` : ""}`);
    return [keyIdOf(key), key.export({ type: "spki", format: "pem" }).toString()];
  });
  if (parsedTrustFiles.size >= 64) parsedTrustFiles.clear();
  parsedTrustFiles.set(file, { text, keys });
  return keys;
}
