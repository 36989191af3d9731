/**
 * deploy/compose.regions.yaml, checked statically as test/deploy.test.ts checks the single-region
 * deployment (no Docker engine here): three regions, each with its own NATS node of the stretched
 * cluster and its own Redis, its five services against them with their own identities, one fabric
 * at R3; nothing but ingest and the status API published, on loopback, each region on ports of its
 * own; and `pnpm nats-config` writes node configurations for those hosts that nats-server accepts.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { nodeConfigFile, writeNatsConfig } from "@homeostat/core/nats-access";
import { loadCompose, secretsOf, volumesOf } from "./fixtures/compose.ts";

const compose = loadCompose("compose.regions.yaml");
const regions = ["a", "b", "c"] as const;
const services = ["ingest", "queue", "reconciler", "builder", "signer"] as const;

test("compose regions: a NATS node and a Redis per region, each region's five services on their own", () => {
  const expected = regions.flatMap((r) => [`nats-${r}`, `redis-${r}`, ...services.map((s) => `${s}-${r}`)]).sort();
  assert.deepEqual(Object.keys(compose.services).sort(), expected);
  const fabrics = new Set<string>();
  for (const r of regions) {
    for (const name of services) {
      const s = compose.services[`${name}-${r}`]!;
      const env = s.environment!;
      assert.equal(env.NATS_URL, `nats://nats-${r}:4222`, `${name}-${r} uses its region's node`);
      assert.equal(env.REDIS_URL, `redis://redis-${r}:6379`, `${name}-${r} uses its region's Redis`);
      assert.equal(env.HOMEOSTAT_REGION, r);
      assert.equal(env.HOMEOSTAT_JS_REPLICAS, "3", "every stream and bucket has a replica in each region");
      fabrics.add(env.HOMEOSTAT_FABRIC!);
      assert.ok(s.depends_on?.[`nats-${r}`], `${name}-${r} waits for its node`);
      assert.deepEqual(
        secretsOf(s).filter((x) => x.startsWith("nats-")),
        [`nats-${name}`],
        `${name}-${r} has its own identity only`,
      );
      assert.equal(s.environment?.NATS_NKEY_SEED_FILE, "/run/secrets/nats-seed");
      assert.equal(s.user, "1000:1000");
      assert.equal(s.read_only, true);
      assert.deepEqual(s.cap_drop, ["ALL"]);
      assert.equal(volumesOf(s).includes("signer-key"), name === "signer", `${name}-${r}: the signing key is the signers' alone`);
      assert.equal(
        volumesOf(s).includes("artifacts"),
        name === "builder" || name === "signer",
        `${name}-${r}: the artifact store is the builders' and signers'`,
      );
    }
    const nats = compose.services[`nats-${r}`]!;
    assert.deepEqual(nats.command!.slice(0, 2), ["-c", "/etc/nats/nats-server.conf"]);
    assert.ok(nats.volumes?.includes(`./secrets/nats/nats-server-${r}.conf:/etc/nats/nats-server.conf:ro`), `nats-${r} runs its node's configuration`);
  }
  assert.equal(fabrics.size, 1, "one fabric: one queue, one lease per key");
  for (const name of services) assert.equal(compose.secrets[`nats-${name}`]!.file, `./secrets/nats/${name}.nk`);
});

test("compose regions: only ingest and the status API are published, on loopback, each region on ports of its own", () => {
  const published: string[] = [];
  for (const [name, s] of Object.entries(compose.services)) {
    const kind = name.replace(/-[abc]$/, "");
    if (kind !== "ingest" && kind !== "queue") {
      assert.equal(s.ports, undefined, `${name} is not published`);
      continue;
    }
    assert.equal(s.ports?.length, 1, name);
    const [address, hostPort, containerPort] = parsePort(s.ports![0]!);
    assert.equal(address, "${HOMEOSTAT_PUBLISH_ADDRESS:-127.0.0.1}", `${name} binds loopback unless told otherwise`);
    assert.equal(containerPort, kind === "ingest" ? "8080" : "50051");
    published.push(hostPort!);
  }
  assert.equal(published.length, 6);
  assert.equal(new Set(published).size, 6, `distinct host ports: ${published.join(", ")}`);
});

/** `ADDRESS:HOST:CONTAINER`, where ADDRESS may be a `${VAR:-default}` holding colons. */
function parsePort(spec: string): [string, string, string] {
  const parts = spec.split(":");
  const container = parts.pop()!;
  const host = parts.pop()!;
  return [parts.join(":"), host, container];
}

test("compose regions: pnpm nats-config writes a node per region for these hosts, and nats-server accepts each", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-deploy-regions-"));
  try {
    writeNatsConfig({
      prefix: "hs",
      regions: ["fab"],
      dir,
      storeDir: "/data/jetstream",
      cluster: { name: "fab", nodes: regions.map((r) => ({ region: r, listen: `nats-${r}:6222`, route: `nats-${r}:6222` })) },
    });
    for (const r of regions) {
      const conf = readFileSync(nodeConfigFile(dir, r), "utf8");
      assert.match(conf, new RegExp(`server_tags: \\["region:${r}"\\]`));
      assert.match(conf, /unique_tag: "region:"/);
      const routes = [...conf.matchAll(/@(nats-[abc]):6222/g)].map((m) => m[1]).sort();
      assert.deepEqual(
        routes,
        regions.filter((x) => x !== r).map((x) => `nats-${x}`),
        `nats-${r} routes to the two other nodes`,
      );
      const check = spawnSync("nats-server", ["-t", "-c", nodeConfigFile(dir, r)], { encoding: "utf8" });
      assert.equal(check.status, 0, `nats-server -t accepts nats-server-${r}.conf: ${check.stderr}${check.stdout}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
