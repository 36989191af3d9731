/**
 * Blob signing: a signature over a package archive, cosign sign-blob style.
 *
 * The signature is ECDSA P-256 over SHA-256 of the archive's bytes, DER-encoded, stored as
 * base64 text (exactly what `cosign sign-blob --key` prints, no trailing newline) as its own
 * blob in the content-addressed store `<dataDir>/store/blobs/sha256/`. Checking it by hand:
 *
 *   openssl base64 -d -A -in <store>/<sig hex> -out sig.der
 *   openssl dgst -sha256 -verify cosign.pub -signature sig.der <store>/<archive hex>
 *
 * or `cosign verify-blob --key cosign.pub --signature <sig file> <archive> --insecure-ignore-tlog`.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import path from "node:path";
import { digestHex, sha256Digest, type Digest } from "@homeostat/core/digest";
import type { Signer } from "./keys.ts";

export class BlobSigningError extends Error {}
/** A blob is absent from the store. */
export class MissingStoreBlobError extends BlobSigningError {}
/** A blob's bytes no longer hash to its digest. */
export class CorruptStoreBlobError extends BlobSigningError {}

export function storeDir(dataDir: string): string {
  return path.join(path.resolve(dataDir), "store", "blobs", "sha256");
}

/** `<dataDir>/store/blobs/sha256/<hex>` for a `sha256:<hex>` digest. */
export function storeBlobPath(dataDir: string, digest: string): string {
  const hex = digestHex(digest);
  if (hex === undefined) throw new BlobSigningError(`not a sha256 digest: ${JSON.stringify(digest)}`);
  return path.join(storeDir(dataDir), hex);
}

/** Reads a store blob and checks that its bytes still hash to its name. */
export async function readStoreBlob(dataDir: string, digest: string): Promise<Buffer> {
  const file = storeBlobPath(dataDir, digest);
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw new MissingStoreBlobError(`blob ${digest} is not in the store (${file})`);
    throw e;
  }
  const actual = sha256Digest(data);
  if (actual !== digest) throw new CorruptStoreBlobError(`store blob ${digest} is corrupt: its content hashes to ${actual}`);
  return data;
}

/** Writes bytes into the store under their digest (atomic; a present blob is left alone). */
export async function writeStoreBlob(dataDir: string, data: Uint8Array | string): Promise<Digest> {
  const digest = sha256Digest(data);
  const file = storeBlobPath(dataDir, digest);
  const dir = path.dirname(file);
  await mkdir(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await writeFile(tmp, data, { mode: 0o644 });
    await rename(tmp, file);
  } catch (e) {
    await unlink(tmp).catch(() => {});
    throw e;
  }
  return digest;
}

export type BlobSignature = {
  /** The signed blob. */
  blob: Digest;
  /** The store blob holding the base64 DER signature. */
  signature: Digest;
  keyId: string;
};

/** Signs bytes; returns the base64 DER signature text cosign sign-blob would print. */
export async function signBytes(data: Uint8Array, signer: Signer): Promise<string> {
  return (await signer.sign(data)).toString("base64");
}

/**
 * Signs the store blob `digest` (after checking its content still matches the digest) and
 * stores the base64 signature as its own store blob. ECDSA signatures are randomised, so
 * signing twice stores two different (equally valid) signature blobs.
 */
export async function signBlob(opts: { dataDir: string; digest: string; signer: Signer }): Promise<BlobSignature> {
  const data = await readStoreBlob(opts.dataDir, opts.digest);
  const sigText = await signBytes(data, opts.signer);
  const signature = await writeStoreBlob(opts.dataDir, sigText);
  return { blob: opts.digest as Digest, signature, keyId: opts.signer.keyId };
}
