/**
 * The demo: brings the factory up on the sample catalog, waits until everything is built and
 * signed, then ingests the 1.1 release of libgreet and waits until the packages and images
 * that depend on it are rebuilt and signed. Ends with a summary table, exit code 0.
 *
 *   --serve      keep the factory running afterwards (Ctrl-C, SIGTERM or SIGHUP stops it)
 *   --regions N  run it as N regions of one fabric (scripts/regions.ts: a clustered nats-server,
 *                a redis-server and the five services per region); the release goes to region a,
 *                and every region must report the same digests at the end
 *   --release F  the release event to ingest (default examples/releases/libgreet-1.1.json)
 *   --help       this text
 *
 * Artifacts go to HOMEOSTAT_DATA (default .homeostat/data, as for every service and command, so
 * `homeostat verify .homeostat/data/oci/greeter` finds the key the demo's signer made); its
 * servers, logs and token go to .homeostat/demo, which each run starts afresh. Progress comes
 * from WatchKeys: every change of every key, in the order the factory made them.
 *
 * With NATS_URL / REDIS_URL unset it starts private nats-server and redis-server processes,
 * NATS with authentication on (one identity per service). With NATS_URL set, NATS_CREDENTIALS
 * names the directory `pnpm nats-config --prefix P` wrote for that server, and HOMEOSTAT_PREFIX
 * is P (default hs): give it a prefix of its own, the demo starts from nothing.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import { listKeyStatuses, statusClient, watchKeysResuming } from "@homeostat/status-api";
import { loadConfig, type KeyStatus } from "@homeostat/core";
import { repoRoot, startFactory, startLocalServers, waitFor, type Factory, type LocalServers } from "./factory.ts";
import { ofRegion } from "./cluster.ts";
import { regionNames, startRegions, type Regions } from "./regions.ts";

const usage =
  "Usage: scripts/demo [--serve] [--regions N] [--release FILE.json] [--help]\n  --serve      keep the factory running after the demo (Ctrl-C, SIGTERM or SIGHUP stops it)\n  --regions N  N regions of one fabric on this machine (a nats-server, a redis-server and the five services each)\n  --release F  the release event to ingest (default examples/releases/libgreet-1.1.json)\nArtifacts: $HOMEOSTAT_DATA (default .homeostat/data); servers, logs and the write token: .homeostat/demo\n";
let parsed;
try {
  parsed = parseArgs({
    options: {
      serve: { type: "boolean", default: false },
      regions: { type: "string" },
      release: { type: "string", default: "examples/releases/libgreet-1.1.json" },
      help: { type: "boolean", short: "h" },
    },
  });
} catch (err) {
  process.stderr.write(`demo: ${(err as Error).message}\n${usage}`);
  process.exit(64);
}
const args = parsed.values;
if (args.help) {
  process.stdout.write(usage);
  process.exit(0);
}
const regionCount = args.regions === undefined ? undefined : Number(args.regions);
if (regionCount !== undefined && (!Number.isInteger(regionCount) || regionCount < 2 || regionCount > regionNames.length)) {
  process.stderr.write(`demo: --regions must be an integer from 2 to ${regionNames.length}\n${usage}`);
  process.exit(64);
}
const { dataDir } = loadConfig({ HOMEOSTAT_DATA: process.env.HOMEOSTAT_DATA || undefined });
// Made here, searchable by all: created by the signer's or builder's private key directory
// (0700, recursively) it would shut the build sandbox's uid out of the workspace under it.
mkdirSync(dataDir, { recursive: true, mode: 0o755 });
const work = path.join(repoRoot, ".homeostat", "demo");
rmSync(work, { recursive: true, force: true });
mkdirSync(work, { recursive: true });

const say = (line: string) => process.stdout.write(`${line}\n`);
let servers: LocalServers | undefined;
let regions: Regions | undefined;
let factory: Factory;
const catalogDir = path.join(repoRoot, "examples", "catalog");
if (regionCount !== undefined) {
  if (process.env.NATS_URL || process.env.REDIS_URL) say("--regions starts its own servers: NATS_URL and REDIS_URL are not used");
  const names = regionNames.slice(0, regionCount);
  say(
    `▸ starting ${regionCount} regions (${names.join(", ")}) of one fabric: a clustered nats-server (JetStream R${Math.min(3, regionCount)}), a redis-server and the five services each`,
  );
  regions = await startRegions({
    dir: path.join(work, "regions"),
    prefix: "hs",
    fabric: "fabric",
    regions: names,
    env: { HOMEOSTAT_DATA: dataDir, HOMEOSTAT_CATALOG: catalogDir },
  });
  for (const [region, f] of regions.factories)
    say(`  region ${region}: ingest http://${f.ingestUrl.slice(7)}   status gRPC ${f.grpcAddr}   nats ${ofRegion(regions.cluster.nodes, region).url}`);
  const [home] = names;
  if (home === undefined) throw new Error("--regions must be at least 1");
  factory = ofRegion(regions.factories, home);
  say(`  logs under ${path.relative(process.cwd(), path.join(work, "regions"))}/logs-<region>/; the release goes to region ${home}`);
} else {
  if (process.env.NATS_URL && !process.env.NATS_CREDENTIALS) {
    say("NATS_URL is set: set NATS_CREDENTIALS too, the directory `pnpm nats-config --out DIR --prefix P` wrote for that server (and HOMEOSTAT_PREFIX=P)");
    process.exit(64);
  }
  const prefix = process.env.NATS_URL ? (process.env.HOMEOSTAT_PREFIX ?? "hs") : "hs";
  if (!process.env.NATS_URL || !process.env.REDIS_URL) {
    say("▸ starting a private nats-server (JetStream, authentication on) and redis-server on loopback");
    servers = await startLocalServers(path.join(work, "servers"), { prefix, region: "local" });
  }
  const local = servers;
  const fromLocal = (what: "natsUrl" | "redisUrl" | "natsCredentials"): string => {
    if (!local) throw new Error(`internal: no local servers were started to give the ${what}`);
    return local[what];
  };
  const natsUrl = process.env.NATS_URL ?? fromLocal("natsUrl");
  const redisUrl = process.env.REDIS_URL ?? fromLocal("redisUrl");
  // NATS_CREDENTIALS is set whenever NATS_URL is (checked above).
  const credentials = process.env.NATS_CREDENTIALS;
  const natsCredentials = process.env.NATS_URL && credentials ? path.resolve(credentials) : fromLocal("natsCredentials");

  say("▸ starting the five services: ingest, queue, reconciler, builder, signer");
  factory = await startFactory({
    env: {
      NATS_URL: natsUrl,
      REDIS_URL: redisUrl,
      HOMEOSTAT_PREFIX: prefix,
      HOMEOSTAT_REGION: "local",
      HOMEOSTAT_DATA: dataDir,
      HOMEOSTAT_CATALOG: catalogDir,
      ...(process.env.OTEL_EXPORTER_OTLP_ENDPOINT ? { OTEL_EXPORTER_OTLP_ENDPOINT: process.env.OTEL_EXPORTER_OTLP_ENDPOINT } : {}),
    },
    natsCredentials,
    logDir: path.join(work, "logs"),
  });
  say(`  ingest http://${factory.ingestUrl.slice(7)}   status gRPC ${factory.grpcAddr}   logs ${path.relative(process.cwd(), path.join(work, "logs"))}/`);
}
// The run's write token, readable by this user only: what `homeostat enqueue` and `retry` need.
const tokenFile = path.join(work, "grpc-token");
writeFileSync(tokenFile, `${factory.grpcToken}\n`, { mode: 0o600 });
const client = statusClient(factory.grpcAddr);

const stopAll = async () => {
  watching.abort();
  await printing;
  client.close();
  await factory.stop();
  await servers?.stop();
  await regions?.stop();
};
for (const [signal, code] of [
  ["SIGINT", 130],
  ["SIGTERM", 143],
  ["SIGHUP", 129],
] as const) {
  process.once(signal, () => {
    say(`\n${signal}: stopping the factory`);
    void stopAll().then(() => process.exit(code));
  });
}

const list = async () => (await listKeyStatuses(client, { pageSize: 1000 })).items;
const seen = new Map<string, string>();
/** Prints a key's line when its phase or its built artifact changed (a rebuild at the same version counts). */
const progress = (s: KeyStatus) => {
  const line = `${s.phase} ${s.actual?.inputDigest ?? ""}`;
  if (seen.get(s.key) === line) return;
  const previous = seen.get(s.key);
  const rebuilt = s.phase === "Ready" && previous !== undefined && !previous.endsWith(` ${s.actual?.inputDigest ?? ""}`);
  seen.set(s.key, line);
  say(
    `  ${s.key.padEnd(20)} ${s.phase.padEnd(9)} ${s.phase === "Ready" ? `${s.actual?.version ?? ""}${rebuilt ? " (rebuilt)" : ""}` : (s.desiredVersion ?? "")}${s.lastError ? `  ${s.lastError}` : ""}`,
  );
};
// Every change, in the order the factory made it (the state bucket's revisions): a poll would
// miss a key that was rebuilt between two looks.
const watching = new AbortController();
const printing = (async () => {
  for await (const e of watchKeysResuming(client, {}, { signal: watching.signal })) if (e.type === "initial" || e.type === "put") progress(e.status);
})().catch((err: unknown) => say(`  (progress stopped: ${(err as Error).message})`));

try {
  say("▸ building and signing the sample catalog");
  const expected = (await import("@homeostat/catalog")).loadCatalog(path.join(repoRoot, "examples", "catalog")).then((c) => c.keys().length);
  const total = await expected;
  const initial = await waitFor(
    "the sample catalog to converge",
    async () => {
      const items = await list();
      if (items.some((s) => s.phase === "Failed")) throw new Error("a key failed; see the logs");
      return items.length === total && items.every((s) => s.phase === "Ready") ? items : undefined;
    },
    300_000,
    300,
  );

  const release = JSON.parse(readFileSync(path.resolve(repoRoot, args.release), "utf8")) as { package: string; version: string; url: string; sha256: string };
  if (!/^[a-z]+:\/\//.test(release.url)) release.url = `file://${path.resolve(repoRoot, release.url)}`;
  say(`▸ upstream released ${release.package} ${release.version}: POST /v1/releases`);
  const res = await fetch(`${factory.ingestUrl}/v1/releases`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(release),
  });
  say(`  ${res.status} ${await res.text()}`);
  if (res.status !== 202) throw new Error("the release was not accepted");

  const before = new Map(initial.map((s) => [s.key, s.actual?.inputDigest]));
  const final = await waitFor(
    "the release to propagate",
    async () => {
      const items = await list();
      const pkg = items.find((s) => s.key === `package/${release.package}`);
      const settled = items.every((s) => s.phase === "Ready" || s.phase === "Failed");
      // Settled, the package at the new version, and nothing left that is waiting to rebuild.
      return pkg?.actual?.version === release.version && settled ? items : undefined;
    },
    300_000,
    300,
  );
  await new Promise((r) => setTimeout(r, 1_000)); // let late fan-out show up
  const settledItems = await waitFor(
    "the factory to settle",
    async () => {
      const items = await list();
      return items.every((s) => s.phase === "Ready") ? items : undefined;
    },
    300_000,
    300,
  ).catch(() => final);

  say("\nSummary");
  const rows = [
    ["KEY", "PHASE", "VERSION", "REBUILT", "DIGEST", "SIGNED BY"],
    ...settledItems.map((s) => [
      s.key,
      s.phase,
      s.actual?.version ?? "-",
      before.get(s.key) !== s.actual?.inputDigest ? "yes" : "no",
      (s.actual?.outputs.manifest ?? s.actual?.outputs.archive ?? "-").slice(0, 19),
      (s.actual?.keyId ?? "-").slice(0, 19),
    ]),
  ];
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => r[i]?.length ?? 0)));
  for (const r of rows) say(r.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  "));
  let ok = settledItems.every((s) => s.phase === "Ready");
  if (regions) {
    // Every region answers from its own read model: each must report the digests region a does.
    const reference = new Map(settledItems.map((s) => [s.key, JSON.stringify(s.actual?.outputs)]));
    for (const [region, f] of regions.factories) {
      const other = statusClient(f.grpcAddr);
      try {
        const page = await waitFor(
          `region ${region} to agree`,
          async () => {
            const p = await listKeyStatuses(other, { pageSize: 1000 });
            return p.items.length === reference.size && p.items.every((s) => reference.get(s.key) === JSON.stringify(s.actual?.outputs)) ? p : undefined;
          },
          120_000,
          500,
        ).catch(() => undefined);
        const fresh =
          page?.freshness?.ageMs !== undefined
            ? `, its read model at state revision ${page.freshness.observedRevision}, ${(page.freshness.ageMs / 1000).toFixed(1)} s old`
            : "";
        say(page ? `region ${region}: every key at the same digests${fresh}` : `region ${region}: does NOT report the same digests`);
        ok &&= page !== undefined;
      } finally {
        other.close();
      }
    }
  }
  say(ok ? "\nconverged: every key is built, signed and Ready." : "\nnot converged: see the logs");
  const layout = path.relative(process.cwd(), path.join(dataDir, "oci", "greeter"));
  const verify = `packages/cli/bin/homeostat verify ${layout}`;
  if (args.serve) {
    // Addresses only while they answer: the factory stops when this process does.
    say(`try: packages/cli/bin/homeostat list --watch --addr ${factory.grpcAddr}`);
    say(`     packages/cli/bin/homeostat why image/devkit --addr ${factory.grpcAddr}`);
    say(`     packages/cli/bin/homeostat enqueue package/libgreet --addr ${factory.grpcAddr} --token-file ${path.relative(process.cwd(), tokenFile)}`);
    say(`     ${verify}`);
    say("serving; Ctrl-C (or SIGTERM, SIGHUP) stops the factory");
  } else {
    await stopAll();
    say(`try: ${verify}   (offline: the factory has stopped; scripts/demo --serve keeps it up)`);
    process.exit(ok ? 0 : 1);
  }
} catch (err) {
  say(`demo failed: ${(err as Error).message} (logs in ${path.join(work, "logs")})`);
  await stopAll();
  process.exit(1);
}
