/** Keys: parse and format, the reversible token form, and what a key may not be. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { escapeToken, keyFromToken, keySchema, keyToken, makeKey, nameSchema, parseKey, unescapeToken, type Key } from "./key.ts";

test("make and parse are inverse", () => {
  const key = makeKey("image", "nginx");
  assert.equal(key, "image/nginx");
  assert.deepEqual(parseKey(key), { kind: "image", name: "nginx" });
  assert.deepEqual(parseKey("package/g++"), { kind: "package", name: "g++" });
});

test("a token is one subject token pair and a KV key: only letters, digits, _ and - in the name part", () => {
  assert.equal(keyToken("package/openssl"), "package.openssl");
  assert.equal(keyToken("package/libfoo.x"), "package.libfoo=2Ex");
  assert.equal(keyToken("package/g++"), "package.g=2B=2B");
  assert.equal(keyToken("image/a_b-c"), "image.a_b-c");
  for (const key of ["package/libfoo.x", "package/g++", "image/1.2+b_c-d"] as Key[]) assert.match(keyToken(key).split(".")[1]!, /^[A-Za-z0-9_=-]+$/);
});

test("token round trip for every character a name may hold", () => {
  const names = ["openssl", "libfoo.x", "g++", "a_b-c", "x+y.z", "0", "A.B.C", `n${"x".repeat(127)}`];
  for (const name of names) {
    const key = makeKey("package", name);
    assert.equal(keyFromToken(keyToken(key)), key, name);
    assert.equal(unescapeToken(escapeToken(name)), name);
  }
  assert.equal(unescapeToken(escapeToken("a=b")), "a=b", "the escape character itself is escaped");
  assert.equal(escapeToken("a=b"), "a=3Db");
});

test("the key schema accepts package/<name> and image/<name>", () => {
  assert.equal(keySchema.parse("package/openssl"), "package/openssl");
  assert.equal(keySchema.parse("image/nginx"), "image/nginx");
  assert.equal(keySchema.parse(`package/${"a".repeat(128)}`).length, 136);
});

test("the key schema rejects malformed keys", () => {
  const bad = [
    "",
    "openssl",
    "package/",
    "package",
    "pkg/openssl",
    "Package/openssl",
    "package/.hidden",
    "package/-x",
    "package/a b",
    "package/a/b",
    "package/../etc",
    "package/x\n",
    `package/${"a".repeat(129)}`,
    "image/é",
    " package/openssl",
  ];
  for (const k of bad) assert.equal(keySchema.safeParse(k).success, false, JSON.stringify(k));
  assert.equal(keySchema.safeParse(42).success, false);
});

test("names: what catalog names may be", () => {
  for (const ok of ["openssl", "libstdc++", "python3.12", "a_b", "X"]) assert.equal(nameSchema.safeParse(ok).success, true, ok);
  for (const bad of ["", ".x", "_x", "a/b", "a b", "x".repeat(129)]) assert.equal(nameSchema.safeParse(bad).success, false, JSON.stringify(bad));
});
