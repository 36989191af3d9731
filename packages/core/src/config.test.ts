/** Configuration from the environment: defaults, coercions, and bad values named by their variable. */
import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { ConfigError, loadConfig } from "./config.ts";

test("an empty environment gives the documented defaults", () => {
  const c = loadConfig({});
  assert.equal(c.natsUrl, "nats://127.0.0.1:4222");
  assert.equal(c.redisUrl, "redis://127.0.0.1:6379");
  assert.equal(c.prefix, "hs");
  assert.equal(c.region, "local");
  assert.equal(c.dataDir, path.resolve(".homeostat/data"));
  assert.equal(c.leaseMs, 30_000);
  assert.deepEqual(c.queue, {
    maxAttempts: 10,
    backoffBaseMs: 30_000,
    backoffMaxMs: 600_000,
    maxFloorMs: 6 * 3_600_000,
    drainMs: 5_000,
    advisorySettle: { quietMs: 1_000, maxMs: 30_000 },
  });
  assert.equal(c.resyncMs, 600_000);
  assert.equal(c.concurrency, 4);
  assert.equal(c.ingest.port, 8080);
  assert.deepEqual(c.ingest.tokens, []);
  assert.equal(c.ingest.githubPrereleases, false);
  assert.deepEqual(c.ingest.githubActions, ["published", "released"]);
  assert.equal(c.signingKeyPath, undefined);
  assert.equal(c.signingKeyPem, undefined);
});

test("an advisory's settle window: off at 0; its longest wait never shorter than its quiet period", () => {
  assert.equal(loadConfig({ HOMEOSTAT_ADVISORY_SETTLE_MS: "0" }).queue.advisorySettle, undefined);
  assert.deepEqual(loadConfig({ HOMEOSTAT_ADVISORY_SETTLE_MS: "5000", HOMEOSTAT_ADVISORY_SETTLE_MAX_MS: "2000" }).queue.advisorySettle, {
    quietMs: 5_000,
    maxMs: 5_000,
  });
  assert.throws(() => loadConfig({ HOMEOSTAT_ADVISORY_SETTLE_MS: "-1" }), /HOMEOSTAT_ADVISORY_SETTLE_MS/);
});

test("numbers, flags and lists are coerced from their text", () => {
  const c = loadConfig({
    HOMEOSTAT_LEASE_MS: "1500",
    HOMEOSTAT_QUEUE_MAX_ATTEMPTS: "3",
    HOMEOSTAT_QUEUE_DRAIN_MS: "250",
    HOMEOSTAT_INGEST_PORT: "0",
    HOMEOSTAT_GITHUB_PRERELEASES: "true",
    HOMEOSTAT_INGEST_TOKENS: " alpha, beta ,,",
    HOMEOSTAT_TRUSTED_KEYS: "a.pub, keys/b.pub",
    HOMEOSTAT_GITHUB_RELEASE_ACTIONS: "published",
  });
  assert.equal(c.leaseMs, 1_500);
  assert.equal(c.queue.maxAttempts, 3);
  assert.equal(c.queue.drainMs, 250);
  assert.equal(c.ingest.port, 0);
  assert.equal(c.ingest.githubPrereleases, true);
  assert.deepEqual(c.ingest.tokens, ["alpha", "beta"]);
  assert.deepEqual(c.trustedKeyPaths, [path.resolve("a.pub"), path.resolve("keys/b.pub")]);
  assert.deepEqual(c.ingest.githubActions, ["published"]);
});

test("the signing key is a path, or the PEM itself", () => {
  assert.deepEqual(
    [loadConfig({ HOMEOSTAT_SIGNING_KEY: "/keys/cosign.key" }).signingKeyPath, loadConfig({ HOMEOSTAT_SIGNING_KEY: "/keys/cosign.key" }).signingKeyPem],
    ["/keys/cosign.key", undefined],
  );
  const pem = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n";
  const c = loadConfig({ HOMEOSTAT_SIGNING_KEY: pem });
  assert.equal(c.signingKeyPem, pem);
  assert.equal(c.signingKeyPath, undefined);
  assert.equal(loadConfig({ HOMEOSTAT_SIGNING_KEY: "  " }).signingKeyPath, undefined, "blank is unset");
});

/** The ConfigError `env` raises, which must name `variable`. */
function refused(env: Record<string, string>, variable: string): ConfigError {
  let caught: unknown;
  try {
    loadConfig(env);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ConfigError, `${JSON.stringify(env)} was accepted`);
  assert.match(caught.message, new RegExp(`\\b${variable}\\b`));
  return caught;
}

test("a bad value stops with a message naming its variable", () => {
  refused({ HOMEOSTAT_LEASE_MS: "soon" }, "HOMEOSTAT_LEASE_MS");
  refused({ HOMEOSTAT_LEASE_MS: "0" }, "HOMEOSTAT_LEASE_MS");
  refused({ HOMEOSTAT_LEASE_MS: "1.5" }, "HOMEOSTAT_LEASE_MS");
  refused({ HOMEOSTAT_LEASE_MS: "" }, "HOMEOSTAT_LEASE_MS");
  refused({ HOMEOSTAT_QUEUE_MAX_ATTEMPTS: "0" }, "HOMEOSTAT_QUEUE_MAX_ATTEMPTS");
  refused({ HOMEOSTAT_QUEUE_MAX_ATTEMPTS: "1001" }, "HOMEOSTAT_QUEUE_MAX_ATTEMPTS");
  refused({ HOMEOSTAT_INGEST_PORT: "65536" }, "HOMEOSTAT_INGEST_PORT");
  refused({ HOMEOSTAT_PREFIX: "1abc" }, "HOMEOSTAT_PREFIX");
  refused({ HOMEOSTAT_PREFIX: "a.b" }, "HOMEOSTAT_PREFIX");
  refused({ HOMEOSTAT_REGION: "EU" }, "HOMEOSTAT_REGION");
  refused({ HOMEOSTAT_GITHUB_PRERELEASES: "yes" }, "HOMEOSTAT_GITHUB_PRERELEASES");
  refused({ HOMEOSTAT_BUILD_ISOLATION: "docker" }, "HOMEOSTAT_BUILD_ISOLATION");
  refused({ HOMEOSTAT_REGISTRY_URL: "ftp://registry" }, "HOMEOSTAT_REGISTRY_URL");
});

test("the store's grace is at least the build timeout: a running build's blobs are named by no status yet", () => {
  assert.deepEqual(loadConfig({}).storeCollection, { graceMs: 86_400_000, intervalMs: 3_600_000 });
  refused({ HOMEOSTAT_STORE_GRACE_MS: "60000" }, "HOMEOSTAT_STORE_GRACE_MS");
  assert.equal(loadConfig({ HOMEOSTAT_STORE_GRACE_MS: "60000", HOMEOSTAT_BUILD_TIMEOUT_MS: "60000" }).storeCollection.graceMs, 60_000);
  refused({ HOMEOSTAT_STORE_COLLECT_INTERVAL_MS: "10" }, "HOMEOSTAT_STORE_COLLECT_INTERVAL_MS");
});

test("every bad variable is named at once", () => {
  const err = refused({ HOMEOSTAT_LEASE_MS: "x", HOMEOSTAT_REGION: "Bad Region" }, "HOMEOSTAT_LEASE_MS");
  assert.match(err.message, /\bHOMEOSTAT_REGION\b/);
});

test("sources come from loopback only unless remote hosts are allowed, all of them or those listed", () => {
  const off = loadConfig({});
  assert.equal(off.sourceHosts, false);
  assert.equal(off.githubArchiveUrl, "https://codeload.github.com");
  assert.equal(loadConfig({ HOMEOSTAT_SOURCE_ALLOW_REMOTE: "true" }).sourceHosts, true);
  assert.deepEqual(loadConfig({ HOMEOSTAT_SOURCE_ALLOW_REMOTE: "true", HOMEOSTAT_SOURCE_HOSTS: " codeload.github.com, .Example.org " }).sourceHosts, [
    "codeload.github.com",
    ".example.org",
  ]);
  assert.equal(loadConfig({ HOMEOSTAT_GITHUB_ARCHIVE_URL: "http://127.0.0.1:8081/" }).githubArchiveUrl, "http://127.0.0.1:8081");
  assert.throws(() => loadConfig({ HOMEOSTAT_SOURCE_HOSTS: "codeload.github.com" }), /HOMEOSTAT_SOURCE_HOSTS needs HOMEOSTAT_SOURCE_ALLOW_REMOTE=true/);
  assert.throws(
    () => loadConfig({ HOMEOSTAT_SOURCE_ALLOW_REMOTE: "true", HOMEOSTAT_SOURCE_HOSTS: "https://x.org/" }),
    /HOMEOSTAT_SOURCE_HOSTS: must be host names/,
  );
  assert.throws(() => loadConfig({ HOMEOSTAT_SOURCE_ALLOW_REMOTE: "yes" }), /HOMEOSTAT_SOURCE_ALLOW_REMOTE/);
});
