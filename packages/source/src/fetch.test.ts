/** The source host rule: loopback always; other hosts only when allowed, all of them or those listed; an allowed one is really tried. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { checkHost, openSource } from "./fetch.ts";
import { SourceError, SourceUnavailableError } from "./errors.ts";

const at = (url: string) => new URL(url);

test("loopback is always allowed; other hosts only when allowRemote lets them in", () => {
  for (const rule of [false, undefined, true, ["example.org"]]) {
    for (const url of ["http://127.0.0.1/x", "http://127.0.0.2:8080/x", "http://localhost/x", "http://[::1]/x"]) checkHost("source", at(url), rule);
  }
  assert.throws(() => checkHost("source", at("https://codeload.github.com/o/r"), false), /only loopback hosts are allowed \(got codeload\.github\.com/);
  assert.throws(() => checkHost("source", at("https://codeload.github.com/o/r"), undefined), SourceError);
  checkHost("source", at("https://codeload.github.com/o/r"), true);
  const listed = ["codeload.github.com", ".example.org"];
  checkHost("source", at("https://CodeLoad.GitHub.com/o/r"), listed);
  checkHost("source", at("https://example.org/a.tgz"), listed);
  checkHost("source", at("https://dl.example.org/a.tgz"), listed);
  for (const url of ["https://github.com/o/r", "https://notexample.org/a.tgz", "https://example.org.evil.net/a.tgz"])
    assert.throws(() => checkHost("source", at(url), listed), /is not one of the allowed source hosts/, url);
});

test("with remote hosts allowed, a non-loopback source is attempted (an unroutable one ends unavailable, not refused)", async () => {
  const o = { baseDir: "/", maxBytes: 1024, timeoutMs: 300 };
  // 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never routed.
  await assert.rejects(openSource("http://192.0.2.1/a.tar.gz", "source a", o), /only loopback hosts are allowed/);
  await assert.rejects(openSource("http://192.0.2.1/a.tar.gz", "source a", { ...o, allowRemote: true }), (err: unknown) => {
    assert.ok(err instanceof SourceUnavailableError, String(err));
    return true;
  });
});
