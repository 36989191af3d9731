/**
 * Digests: sha256 in the OCI form (`sha256:<hex>`) and canonical JSON, so that the same
 * inputs always give the same input digest whatever order an object's fields were built in.
 */
import { createHash } from "node:crypto";
import { z } from "zod";

/** A bare sha256: 64 lower-case hex characters. */
export const sha256HexSchema = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex characters");

/** `sha256:<64 hex>`, the OCI digest form; what it parses is typed as `Digest`, no cast needed. */
export const digestSchema = z.templateLiteral(["sha256:", sha256HexSchema], { error: "must be sha256:<64 lower-case hex>" });

export type Digest = z.infer<typeof digestSchema>;

/** The hex part of a digest, or undefined when `value` is not a sha256 digest. */
export function digestHex(value: string): string | undefined {
  return digestSchema.safeParse(value).success ? value.slice("sha256:".length) : undefined;
}

export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

export function sha256Digest(data: string | Uint8Array): Digest {
  return `sha256:${sha256Hex(data)}`;
}

/** JSON with object keys sorted at every level and no whitespace (RFC 8785 for our value space). */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortDeep(value));
}

function sortDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortDeep);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) {
      const x = (v as Record<string, unknown>)[k];
      if (x !== undefined) out[k] = sortDeep(x);
    }
    return out;
  }
  return v;
}

/** Byte order of the UTF-8 encodings: the order OCI and reproducible-build tools sort names in. */
export function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/** A copy of `r` with its keys in byte order, so that JSON.stringify writes it the same way every time. */
export function sortedRecord(r: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(r).sort(([a], [b]) => byteOrder(a, b))) out[k] = v;
  return out;
}
