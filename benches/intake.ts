/**
 * `pnpm bench:intake` — from a GitHub release delivery to a signed build: the factory's services
 * (scripts/factory.ts, on a private NATS and Redis) on a one-package catalog whose upstream is
 * the repository of GitHub's release example, served by a loopback archive host standing in for
 * GitHub's (test/fixtures/github-upstream.ts) with a reproducible tarball of `--mb` MB (10 by
 * default: incompressible seeded bytes plus the version) per tag. Then `--releases` times, one
 * after another: a new tag's tarball is made (not timed), GitHub's published-release example
 * for that tag is signed with the webhook secret and posted to ingest, and two times are taken
 * from the moment the delivery is sent:
 *
 * - fact: until the release fact is recorded (the reconciler fetched the tarball, hashed it and
 *   wrote it to the release store), polled every POLL_MS;
 * - ready: until the key is Ready at that version (built in the sandbox, signed), polled alike.
 *
 * Each release has a deadline (`--timeout-s`); one that misses it ends the run with an error.
 * Progress goes to stderr; the result is one JSON line on stdout: p50/p99/max of both, the
 * count, the tarball size and the machine's load.
 *
 * Usage: node benches/intake.ts [--releases N] [--mb N] [--timeout-s N] [--keep]
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { statSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";
import { ReleaseStore } from "@homeostat/catalog";
import { getKeyStatus, statusClient } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { deliver, PACKAGE, PINNED, releaseDelivery, releaseTarball, startArchiveHost, writeReleaseCatalog } from "../test/fixtures/github-upstream.ts";
import { commandLine, integerOption, startBenchFactory, tearDown } from "./end-to-end.ts";
import { percentile } from "./table.ts";

const SECRET = "bench-intake-webhook-secret";
const POLL_MS = 20;
const key = `package/${PACKAGE}` as const;

export type IntakeOptions = { releases: number; mb: number; timeoutS: number; keep: boolean };

export async function runIntakeBench(o: IntakeOptions): Promise<Record<string, unknown>> {
  const note = (m: string) => process.stderr.write(`# ${m}\n`);
  const dir = await mkdtemp(path.join(tmpdir(), "hs-intake-"));
  // Searchable by others: the sandbox's uid must reach the workspaces under <dir>/data.
  await chmod(dir, 0o711);
  const stops: (() => Promise<void>)[] = [];
  try {
    const payloadBytes = o.mb * 1024 * 1024;
    const upstreamDir = path.join(dir, "upstream");
    const host = await startArchiveHost();
    stops.push(() => host.close());
    const pinned = releaseTarball(upstreamDir, PINNED, payloadBytes);
    host.serve(PINNED, pinned.file);
    const catalogDir = path.join(dir, "catalog");
    writeReleaseCatalog(catalogDir, host, pinned);

    // Every release is a delivery: no periodic resync.
    const { factory, connectAs } = await startBenchFactory(
      dir,
      { prefix: "intake", catalogDir, env: { HOMEOSTAT_GITHUB_WEBHOOK_SECRET: SECRET, HOMEOSTAT_GITHUB_ARCHIVE_URL: host.base } },
      stops,
    );
    // Ingest's identity reads the release store (it writes the announcements there).
    const nats = await connectAs("ingest", "intake-bench");
    stops.push(() => nats.nc.close());
    const releases = new ReleaseStore(await nats.kvm.open(nats.topology.bucket("releases"), { allow_direct: true }));
    const client = statusClient(factory.grpcAddr);
    stops.push(async () => client.close());

    const deadlineMs = o.timeoutS * 1000;
    const readyAt = async (version: string) => {
      const s = await getKeyStatus(client, key);
      if (s.phase === "Failed" || s.phase === "DeadLettered") throw new Error(`${key} ${s.phase} at ${s.desiredVersion}: ${s.lastError}`);
      return s.phase === "Ready" && s.actual?.version === version && Object.keys(s.actual.signatures).length > 0;
    };
    const t0 = Date.now();
    await waitFor(`${key} to be Ready at ${PINNED}`, () => readyAt(PINNED), Math.max(deadlineMs, 300_000), 250);
    note(`factory up, ${key} Ready at ${PINNED} in ${Date.now() - t0} ms; ${o.releases} releases of ${o.mb} MB (work dir ${dir})`);

    const fact: number[] = [];
    const ready: number[] = [];
    for (let i = 1; i <= o.releases; i++) {
      const tag = `v1.0.${i}`;
      const version = tag.slice(1);
      const tarball = releaseTarball(upstreamDir, tag, payloadBytes);
      host.serve(tag, tarball.file);
      const delivery = releaseDelivery(tag, SECRET);
      const sent = Date.now();
      const res = await deliver(factory.ingestUrl, delivery);
      if (res.status !== 202) throw new Error(`release ${tag}: ingest answered ${res.status}: ${JSON.stringify(res.json)}`);
      await waitFor(
        `the release fact of ${version}`,
        async () => (await releases.list(PACKAGE)).find((r) => r.version === version && r.sha256 === tarball.sha256),
        deadlineMs,
        POLL_MS,
      );
      fact.push(Date.now() - sent);
      await waitFor(`${key} to be Ready at ${version}`, () => readyAt(version), Math.max(1, deadlineMs - (Date.now() - sent)), POLL_MS);
      ready.push(Date.now() - sent);
      // The tarball served is the archive host's; the builder keeps its own copy.
      await rm(tarball.file, { force: true });
      if (i % 10 === 0 || i === o.releases) note(`${i}/${o.releases}: fact ${fact.at(-1)} ms, ready ${ready.at(-1)} ms`);
    }
    const stats = (xs: number[]) => {
      const sorted = [...xs].sort((a, b) => a - b);
      return { p50_ms: percentile(sorted, 50), p99_ms: percentile(sorted, 99), max_ms: sorted.at(-1) };
    };
    return {
      bench: "intake",
      releases: o.releases,
      tarball_bytes: statSync(pinned.file).size,
      release_fact: stats(fact),
      key_ready: stats(ready),
      loadavg: loadavg().map((l) => Math.round(l * 100) / 100),
    };
  } finally {
    await tearDown(stops, dir, o.keep);
  }
}

if (import.meta.main) {
  const usage = "Usage: node benches/intake.ts [--releases N (default 100)] [--mb N (default 10)] [--timeout-s N (default 300)] [--keep]";
  const options = commandLine("bench:intake", usage, () => {
    const { values } = parseArgs({
      options: {
        releases: { type: "string", default: "100" },
        mb: { type: "string", default: "10" },
        "timeout-s": { type: "string", default: "300" },
        keep: { type: "boolean", default: false },
      },
    });
    return {
      releases: integerOption("releases", values.releases, 1, 10_000),
      mb: integerOption("mb", values.mb, 0, 512),
      timeoutS: integerOption("timeout-s", values["timeout-s"], 1, 3_600),
      keep: values.keep,
    };
  });
  const result = await runIntakeBench(options);
  console.log(JSON.stringify(result));
  process.exit(0);
}
