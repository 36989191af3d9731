/**
 * Key: the unit of reconciliation, `package/<name>` or `image/<name>`.
 *
 * Keys appear in NATS subjects and KV keys, which allow only a few characters, so every key
 * has one reversible token form (`package.openssl`, with other characters escaped as =XX).
 */
import { z } from "zod";

export type Kind = "package" | "image";
export type Key = `${Kind}/${string}`;

/** Catalog names: what real package names use (dots, plus, underscores), nothing that breaks paths. */
export const nameSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[a-zA-Z0-9][a-zA-Z0-9._+-]*$/, "must start with a letter or digit and hold only letters, digits, . _ + -");

export const keySchema = z
  .string()
  .regex(/^(package|image)\/[a-zA-Z0-9][a-zA-Z0-9._+-]{0,127}$/, "must be package/<name> or image/<name>")
  .transform((k) => k as Key);

export function makeKey(kind: Kind, name: string): Key {
  return `${kind}/${name}`;
}

export function parseKey(key: Key): { kind: Kind; name: string } {
  const slash = key.indexOf("/");
  return { kind: key.slice(0, slash) as Kind, name: key.slice(slash + 1) };
}

/** `package/libfoo.x` -> `package.libfoo=2Ex`: safe as one NATS subject token pair and as a KV key. */
export function keyToken(key: Key): string {
  const { kind, name } = parseKey(key);
  return `${kind}.${escapeToken(name)}`;
}

export function keyFromToken(token: string): Key {
  const dot = token.indexOf(".");
  return `${token.slice(0, dot) as Kind}/${unescapeToken(token.slice(dot + 1))}`;
}

export function escapeToken(s: string): string {
  return s.replace(/[^a-zA-Z0-9_-]/g, (c) => `=${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`);
}

export function unescapeToken(s: string): string {
  return s.replace(/=([0-9A-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}
