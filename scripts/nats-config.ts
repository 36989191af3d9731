/**
 * pnpm nats-config: writes NATS credentials for every service and the server configuration
 * that admits exactly those identities with exactly their permissions (packages/core/src/nats-access.ts).
 *
 *   pnpm nats-config --out DIR [--prefix hs] [--region local …] [--store-dir /data/jetstream]
 *                    [--admin] [--rotate ingest,signer|all] [--tls-cert F --tls-key F] [--owner UID:GID]
 *
 * DIR gets `<service>.nk` (each service's nkey seed, mode 0600: give each service only its own,
 * as NATS_NKEY_SEED_FILE) and `nats-server.conf` (JetStream on, the authorization block; public
 * keys only). Run it again after an upgrade: seeds are kept, permissions regenerated; then
 * reload the server (`nats-server --signal reload`). `--rotate` replaces the named seeds.
 * `--cluster NAME --node REGION=HOST:PORT …` (one per region) also writes `nats-server-<region>.conf`
 * per node of a NATS cluster stretched over the regions (deploy/README.md, "Regions"): tagged with
 * its region, JetStream replicas in distinct regions, routes (listening on 0.0.0.0:PORT, peers
 * reached at HOST:PORT) authenticated with `route.secret`. Give `--region` the fabric's name.
 * Exit codes: 0 written, 64 usage error.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { loadConfig, serviceIdentities, writeNatsConfig, type NatsCluster, type NatsIdentity } from "@homeostat/core";

const usage =
  "usage: pnpm nats-config --out DIR [--prefix P] [--region R …] [--store-dir D] [--admin] [--rotate ID,…|all] [--tls-cert F --tls-key F] [--owner UID:GID] [--cluster NAME --node REGION=HOST:PORT …]";

function fail(message: string): never {
  process.stderr.write(`nats-config: ${message}\n${usage}\n`);
  process.exit(64);
}

let args;
try {
  args = parseArgs({
    options: {
      out: { type: "string" },
      prefix: { type: "string" },
      region: { type: "string", multiple: true },
      "store-dir": { type: "string", default: "/data/jetstream" },
      admin: { type: "boolean", default: false },
      rotate: { type: "string" },
      "tls-cert": { type: "string" },
      "tls-key": { type: "string" },
      owner: { type: "string" },
      cluster: { type: "string" },
      node: { type: "string", multiple: true },
      help: { type: "boolean", default: false },
    },
  }).values;
} catch (err) {
  fail((err as Error).message);
}
if (args.help) {
  process.stdout.write(`${usage}\n`);
  process.exit(0);
}
if (!args.out) fail("--out is required");

// Prefix and region are validated as the services validate them (config.ts).
const regions = (args.region ?? [process.env.HOMEOSTAT_REGION ?? "local"]).flatMap((r) => r.split(",")).filter((r) => r !== "");
let prefix: string;
try {
  prefix = loadConfig({ HOMEOSTAT_PREFIX: args.prefix ?? process.env.HOMEOSTAT_PREFIX ?? "hs" }).prefix;
  for (const region of regions) loadConfig({ HOMEOSTAT_REGION: region });
} catch (err) {
  fail((err as Error).message);
}
if (regions.length === 0) fail("--region: at least one region");

const known: readonly NatsIdentity[] = [...serviceIdentities, "admin"];
const rotate = args.rotate === "all" ? known : (args.rotate ?? "").split(",").filter((r) => r !== "");
for (const id of rotate) if (!known.includes(id as NatsIdentity)) fail(`--rotate: unknown identity ${id} (known: ${known.join(", ")}, all)`);

if ((args["tls-cert"] === undefined) !== (args["tls-key"] === undefined)) fail("--tls-cert and --tls-key go together");
let owner: { uid: number; gid: number } | undefined;
if (args.owner !== undefined) {
  const m = /^(\d+):(\d+)$/.exec(args.owner);
  if (!m) fail("--owner: UID:GID, numbers");
  owner = { uid: Number(m[1]), gid: Number(m[2]) };
}

let cluster: NatsCluster | undefined;
if ((args.cluster === undefined) !== (args.node === undefined)) fail("--cluster and --node go together");
if (args.cluster !== undefined) {
  const nodes = (args.node ?? []).map((spec) => {
    const [, region, host, port] = /^([a-z][a-z0-9-]{0,31})=([^\s:]+):(\d{1,5})$/.exec(spec) ?? [];
    if (region === undefined || host === undefined || port === undefined) fail(`--node ${spec}: REGION=HOST:PORT`);
    return { region, listen: `0.0.0.0:${port}`, route: `${host}:${port}` };
  });
  if (new Set(nodes.map((n) => n.region)).size !== nodes.length) fail("--node: one per region");
  cluster = { name: args.cluster, nodes };
}

const dir = path.resolve(args.out);
const { configFile } = writeNatsConfig({
  prefix,
  regions,
  dir,
  admin: args.admin,
  rotate: rotate as NatsIdentity[],
  storeDir: args["store-dir"],
  ...(args["tls-cert"] && args["tls-key"] ? { tls: { certFile: args["tls-cert"], keyFile: args["tls-key"] } } : {}),
  ...(owner ? { owner } : {}),
  ...(cluster ? { cluster } : {}),
});
process.stdout.write(`wrote ${configFile} (prefix ${prefix}, regions ${regions.join(", ")})\n`);
for (const id of [...serviceIdentities, ...(args.admin ? ["admin"] : [])])
  process.stdout.write(`  ${id.padEnd(10)} NATS_NKEY_SEED_FILE=${path.join(dir, `${id}.nk`)}${rotate.includes(id as NatsIdentity) ? "  (rotated)" : ""}\n`);
