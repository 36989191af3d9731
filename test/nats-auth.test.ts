/**
 * NATS authentication and least privilege against a real nats-server with authentication on
 * (test/harness.ts): nobody connects without credentials, and each service's identity is
 * refused what another service does (the server reports a permission violation and nothing is
 * stored), while the same operation as the service it belongs to succeeds, so a refusal is the
 * permission at work and not a missing stream. The five services running end to end with their
 * own identities are test/e2e.test.ts.
 */
import assert from "node:assert/strict";
import { chmodSync, copyFileSync } from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { connectNats, ensureTopology, loadConfig, natsPermissions, type Nats, type ServiceName } from "@homeostat/core";
import { testEnv, type TestEnv } from "./harness.ts";

let t: TestEnv;
before(async () => {
  t = await testEnv();
});
after(async () => {
  await t?.cleanup();
});

async function refused(what: Promise<unknown>): Promise<void> {
  await assert.rejects(what, /Permissions Violation for Publish/);
}

async function messages(stream: string): Promise<number> {
  return (await t.nats.jsm.streams.info(stream)).state.messages;
}

const request = () => JSON.stringify({ v: 1, key: "package/forged", inputDigest: `sha256:${"0".repeat(64)}` });

describe("connecting", () => {
  test("without credentials the server refuses the connection", async () => {
    const { NATS_NKEY_SEED_FILE: _, ...anonymous } = t.env;
    await assert.rejects(connectNats(loadConfig(anonymous), "anonymous", { reconnect: false }), /Authorization Violation/i);
  });

  test("a seed file others may read is refused before connecting", async () => {
    const loose = path.join(t.dir, "loose.nk");
    copyFileSync(t.env.NATS_NKEY_SEED_FILE!, loose);
    chmodSync(loose, 0o644);
    await assert.rejects(connectNats(loadConfig({ ...t.env, NATS_NKEY_SEED_FILE: loose }), "loose", { reconnect: false }), /readable by others \(mode 644\)/);
  });

  test("a service may not listen on another's inbox", async () => {
    const ingest = await t.connectAs("ingest");
    const sub = ingest.nc.subscribe(`${t.nats.topology.inboxPrefix("signer")}.>`);
    const closed = await sub.closed;
    assert.match(String(closed), /Permissions Violation for Subscription/);
  });
});

describe("each service is refused what is not its job", () => {
  const as = (s: ServiceName) => t.connectAs(s);
  const sign = () => t.nats.topology.subject("sign", "package/forged");
  const build = () => t.nats.topology.subject("build", "package/forged");

  test("only the builder may ask for a signature", async () => {
    for (const s of ["ingest", "reconciler", "queue", "signer"] as const) await refused((await as(s)).js.publish(sign(), request()));
    assert.equal(await messages(t.nats.topology.stream("sign")), 0);
    await (await as("builder")).js.publish(sign(), request());
    assert.equal(await messages(t.nats.topology.stream("sign")), 1);
  });

  test("only the reconciler may ask for a build", async () => {
    for (const s of ["ingest", "signer", "builder", "queue"] as const) await refused((await as(s)).js.publish(build(), request()));
    assert.equal(await messages(t.nats.topology.stream("build")), 0);
    await (await as("reconciler")).js.publish(build(), request());
    assert.equal(await messages(t.nats.topology.stream("build")), 1);
  });

  test("ingest and the queue may not write a key's state; the signer may", async () => {
    const bucket = t.nats.topology.bucket("state");
    for (const s of ["ingest", "queue"] as const) await refused((await kv(await as(s), bucket)).put("package.forged", "{}"));
    assert.equal(await t.buckets.state.get("package.forged"), null);
    await (await kv(await as("signer"), bucket)).put("package.forged", "{}");
    assert.equal((await t.buckets.state.get("package.forged"))?.string(), "{}");
  });

  test("only ingest and the reconciler's upstream resolver may write release facts", async () => {
    const bucket = t.nats.topology.bucket("releases");
    for (const s of ["builder", "signer", "queue"] as const) await refused((await kv(await as(s), bucket)).put("libgreet.9.9", "{}"));
    assert.equal(await t.buckets.releases.get("libgreet.9.9"), null);
    await (await kv(await as("ingest"), bucket)).put("libgreet.9.9", "{}");
    assert.ok(await t.buckets.releases.get("libgreet.9.9"));
    await (await kv(await as("reconciler"), bucket)).put("libgreet.9.8", "{}");
    assert.ok(await t.buckets.releases.get("libgreet.9.8"));
  });

  test("the builder, the signer and ingest may not touch run records; the reconciler may, in its region only", async () => {
    const bucket = t.nats.topology.bucket("runs");
    const record = t.nats.topology.runRecordKey("package/forged");
    for (const s of ["builder", "signer", "ingest"] as const) await refused((await kv(await as(s), bucket)).put(record, "{}"));
    await refused((await kv(await as("reconciler"), bucket)).put("elsewhere.package.forged", "{}"));
    assert.equal(await t.buckets.runs.get(record), null);
    await (await kv(await as("reconciler"), bucket)).put(record, "{}");
    assert.ok(await t.buckets.runs.get(record));
  });

  test("no service may create or delete a stream; the queue only makes its own topology", async () => {
    const before = await streamNames();
    for (const s of ["ingest", "reconciler", "builder", "signer", "queue"] as const) {
      const n = await as(s);
      await refused(n.jsm.streams.add({ name: `${t.prefix}_EVIL`, subjects: [`${t.prefix}.evil.>`] }));
      await refused(n.jsm.streams.delete(t.nats.topology.stream("work")));
      await refused(n.jsm.streams.purge(t.nats.topology.stream("build")));
    }
    for (const s of ["ingest", "reconciler", "builder", "signer"] as const) await refused(ensureTopology(await as(s), t.config));
    await ensureTopology(await as("queue"), t.config);
    assert.deepEqual(await streamNames(), before);
  });

  test("a service may not take another's messages with a consumer of its own", async () => {
    for (const s of ["ingest", "reconciler", "signer"] as const)
      await refused((await as(s)).jsm.consumers.add(t.nats.topology.stream("build"), { durable_name: "thief" }));
    assert.equal(await messages(t.nats.topology.stream("build")), 1);
  });
});

describe("the permissions", () => {
  test("name the prefix's own streams only and never a wildcard over JetStream's API", () => {
    for (const s of ["ingest", "queue", "reconciler", "builder", "signer"] as const) {
      const p = natsPermissions(s, "hs", ["local"]);
      // The builder alone also hears trial requests, and answers them to the agent's inbox (nothing else's).
      const trials = s === "builder" ? ["hs.local.trial.>"] : [];
      assert.deepEqual(p.subscribe, [`_INBOX.hs.${s}.>`, ...trials]);
      for (const subject of p.publish) {
        if (s === "builder" && subject === "_INBOX.hs.agent.>") continue;
        assert.doesNotMatch(subject, /^(>|\$JS\.>|\$JS\.API\.>|\$JS\.API\.(STREAM|CONSUMER)\.[A-Z.]*>|_INBOX)/, `${s}: ${subject}`);
        assert.doesNotMatch(subject, /STREAM\.(DELETE|PURGE)/, `${s}: ${subject}`);
      }
    }
  });

  test("a second region adds that region's subjects and run records", () => {
    const one = natsPermissions("reconciler", "hs", ["eu"]);
    const two = natsPermissions("reconciler", "hs", ["eu", "us"]);
    assert.ok(two.publish.includes("hs.us.build.>") && two.publish.includes("$KV.hs_runs.us.>"));
    assert.ok(!one.publish.includes("hs.us.build.>"));
  });
});

async function kv(n: Nats, bucket: string) {
  return n.kvm.open(bucket, { allow_direct: true });
}

async function streamNames(): Promise<string[]> {
  const names: string[] = [];
  for await (const s of t.nats.jsm.streams.list())
    if (s.config.name.startsWith(`${t.prefix}_`) || s.config.name.startsWith(`KV_${t.prefix}_`)) names.push(s.config.name);
  return names.sort();
}
