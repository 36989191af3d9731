/**
 * Cluster mode (HOMEOSTAT_INGEST_WORKERS=2): the real service entry point as two processes on
 * one port — deliveries are accepted whichever worker takes them, a repeat is a duplicate
 * across workers (the record is in NATS), and SIGTERM stops everything with exit code 0.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { advisoryBucket } from "@homeostat/catalog";
import { eventLedgerNames } from "@homeostat/core";
import { testEnv } from "../../../test/harness.ts";
import { SECRET, sign } from "../../../test/fixtures/ingest-env.ts";

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

test("two workers share the port; idempotency holds across them; SIGTERM exits 0", { timeout: 120_000 }, async () => {
  const t = await testEnv();
  const catalog = path.join(t.dir, "catalog");
  mkdirSync(path.join(catalog, "packages"), { recursive: true });
  writeFileSync(
    path.join(catalog, "packages", "hello.yaml"),
    `name: hello\nversion: "1.0"\nupstream: { github: Codertocat/Hello-World }\nsource: { url: "https://example.org/hello-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\nbuild: { steps: [make] }\n`,
  );
  const port = await freePort();
  const child = spawn(process.execPath, [path.join(import.meta.dirname, "main.ts")], {
    env: {
      ...process.env,
      ...t.env,
      HOMEOSTAT_CATALOG: catalog,
      HOMEOSTAT_INGEST_PORT: String(port),
      HOMEOSTAT_GITHUB_WEBHOOK_SECRET: SECRET,
      HOMEOSTAT_INGEST_WORKERS: "2",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  child.stderr!.on("data", (d: Buffer) => void (log += d.toString()));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  try {
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; ; i++) {
      if (
        await fetch(`${base}/readyz`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      assert.ok(i < 300 && child.exitCode === null, `ingest did not become ready:\n${log}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const body = JSON.stringify({
      action: "published",
      release: { tag_name: "v2.0", draft: false, prerelease: false },
      repository: { full_name: "Codertocat/Hello-World" },
    });
    const deliver = (delivery: string) =>
      fetch(`${base}/v1/webhooks/github`, {
        method: "POST",
        headers: { "content-type": "application/json", "x-github-event": "release", "x-github-delivery": delivery, "x-hub-signature-256": sign(body) },
        body,
      }).then(async (r) => ({ status: r.status, json: (await r.json()) as { duplicate: boolean; keys: string[] } }));
    // Separate connections, so the primary hands them to both workers.
    const first = await Promise.all(Array.from({ length: 20 }, () => deliver(randomUUID())));
    for (const r of first) assert.deepEqual([r.status, r.json.duplicate, r.json.keys], [202, false, ["package/hello"]]);
    const once = randomUUID();
    const repeats = await Promise.all(Array.from({ length: 6 }, () => deliver(once)));
    assert.equal(repeats.filter((r) => r.status === 202 && !r.json.duplicate).length, 1, JSON.stringify(repeats));
    assert.equal((await t.nats.jsm.streams.info(eventLedgerNames(t.nats.topology).stream)).state.messages, 21);
    assert.match(log, /cluster mode/);
  } finally {
    child.kill("SIGTERM");
    assert.equal(await exited, 0, log);
    for (const s of [eventLedgerNames(t.nats.topology).stream, `KV_${advisoryBucket(t.nats)}`]) await t.nats.jsm.streams.delete(s).catch(() => {});
    await t.cleanup();
  }
});
