/**
 * DSSE envelopes (https://github.com/secure-systems-lab/dsse, envelope.md) around in-toto
 * Statements v1: the plain JSON form, `{payloadType, payload (base64), signatures: [{keyid,
 * sig (base64 DER)}]}`, signed over the pre-authentication encoding. This is how the builder
 * vouches for a build result (predicate type BUILD_RESULT_PREDICATE_TYPE): the envelope is a
 * blob in the content-addressed store, and the signer opens it with the trusted builder keys
 * before it signs anything the statement names. in-toto tooling reads the same format.
 */
import type { KeyObject } from "node:crypto";
import { dsse } from "@sigstore/core";
import { IN_TOTO_STATEMENT_TYPE, type Statement } from "./attestation.ts";
import { keyIdOf, parsePublicKey, verifyDer, type Signer } from "./keys.ts";
import { mediaTypes } from "./oci.ts";
import { decodeBase64 } from "./simple-signing.ts";
import { VerificationError } from "./verify.ts";

/** A Homeostat builder's signed word about one build: what it made, for which key and inputs, how sandboxed. */
export const BUILD_RESULT_PREDICATE_TYPE = "https://homeostat.dev/build-result/v1";
/** Media type of a DSSE envelope in JSON form. */
export const DSSE_ENVELOPE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json";

export type DsseEnvelope = { payloadType: string; payload: string; signatures: { keyid: string; sig: string }[] };

/** An in-toto Statement v1 about `subjects` (each a name and a `sha256:<hex>` digest). */
export function statementAbout(subjects: readonly { name: string; digest: string }[], predicateType: string, predicate: unknown): Buffer {
  const statement: Statement = {
    _type: IN_TOTO_STATEMENT_TYPE,
    subject: subjects.map((s) => ({ name: s.name, digest: { sha256: s.digest.slice("sha256:".length) } })),
    predicateType,
    predicate,
  };
  return Buffer.from(JSON.stringify(statement), "utf8");
}

/** Signs a statement into a DSSE envelope (JSON text, the bytes to store). */
export async function signDsse(statement: Buffer, signer: Signer): Promise<string> {
  const sig = await signer.sign(dsse.preAuthEncoding(mediaTypes.inToto, statement));
  const envelope: DsseEnvelope = {
    payloadType: mediaTypes.inToto,
    payload: statement.toString("base64"),
    signatures: [{ keyid: signer.keyId, sig: sig.toString("base64") }],
  };
  return JSON.stringify(envelope);
}

/**
 * Parsed trusted keys by their PEM. The signer reads its trust set again for every request (so
 * a rotated key needs no restart); parsing each key again was most of a verification's cost.
 * Bounded: a trust set is a handful of keys, and the map starts over if it ever grows past that.
 */
const parsedTrustedKeys = new Map<string, { id: string; key: KeyObject }>();
const MAX_PARSED_TRUSTED_KEYS = 64;

function trustedKey(pem: string, index: number): { id: string; key: KeyObject } {
  let parsed = parsedTrustedKeys.get(pem);
  if (!parsed) {
    const key = parsePublicKey(pem, `trusted key #${index + 1}`);
    parsed = { id: keyIdOf(key), key };
    if (parsedTrustedKeys.size >= MAX_PARSED_TRUSTED_KEYS) parsedTrustedKeys.clear();
    parsedTrustedKeys.set(pem, parsed);
  }
  return parsed;
}

/**
 * Opens a DSSE envelope: some signature must verify with one of `trustedKeys` (SPKI PEM), and
 * the payload must be an in-toto Statement v1 of `predicateType`. Returns the statement and
 * the id of the key that signed it; throws a VerificationError (untrusted-key, bad-signature,
 * corrupt) otherwise. The key ids in the envelope are hints only: an unknown one is refused,
 * a known one must still verify.
 */
export function openDsse(bytes: Uint8Array, trustedKeys: readonly string[], predicateType: string): { statement: Statement; keyId: string } {
  let envelope: Partial<DsseEnvelope>;
  try {
    envelope = JSON.parse(Buffer.from(bytes).toString("utf8")) as Partial<DsseEnvelope>;
  } catch {
    throw new VerificationError("corrupt", "the envelope is not JSON");
  }
  const payload = typeof envelope.payload === "string" ? decodeBase64(envelope.payload) : undefined;
  if (envelope.payloadType !== mediaTypes.inToto || !payload || !Array.isArray(envelope.signatures)) {
    throw new VerificationError("corrupt", `not a DSSE envelope of ${mediaTypes.inToto}`);
  }
  const keys = trustedKeys.map(trustedKey);
  const pae = dsse.preAuthEncoding(envelope.payloadType, payload);
  let keyId: string | undefined;
  const claimed: string[] = [];
  for (const s of envelope.signatures) {
    if (typeof s?.keyid !== "string" || typeof s.sig !== "string") continue;
    claimed.push(s.keyid);
    const key = keys.find((k) => k.id === s.keyid);
    const sig = decodeBase64(s.sig);
    if (key && sig && verifyDer(key.key, pae, sig)) {
      keyId = key.id;
      break;
    }
  }
  if (keyId === undefined) {
    if (!claimed.some((id) => keys.some((k) => k.id === id))) {
      throw new VerificationError(
        "untrusted-key",
        `signed by ${claimed.join(", ") || "no key"}, none of which is trusted (${keys.map((k) => k.id).join(", ") || "no trusted keys"})`,
      );
    }
    throw new VerificationError("bad-signature", "the envelope's signature does not verify with the trusted key it names");
  }
  let statement: Statement;
  try {
    statement = JSON.parse(payload.toString("utf8")) as Statement;
  } catch {
    throw new VerificationError("corrupt", "the signed payload is not JSON");
  }
  if (statement?._type !== IN_TOTO_STATEMENT_TYPE || statement.predicateType !== predicateType) {
    throw new VerificationError("corrupt", `the signed payload is not an in-toto Statement v1 of ${predicateType}`);
  }
  return { statement, keyId };
}
