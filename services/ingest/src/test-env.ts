/**
 * What the ingest tests share: a real JetStream under a prefix of their own (test/harness.ts),
 * the event ledger, an ingest server writing to the real events stream, and a reader of what
 * ingest handed to admission: the keys of every event record (what the queue's admission
 * consumer enqueues from it) and what reached the intake stream (resync). Cleanup removes
 * exactly the streams and buckets created here.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { createHmac } from "node:crypto";
import { AdvisoryStore, EventLedger, eventLedgerNames, eventRecordSchema, loadCatalog, ReleaseStore, type Catalog, type EnqueueRequest } from "@homeostat/core";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { Acceptor, pipedLedger } from "./accept.ts";
import { JetStreamPipe } from "@homeostat/core";
import { cursorBucket } from "./osv-poller.ts";
import { buildIngestServer, type IngestSettings } from "./server.ts";

export const SECRET = "it's a secret to everybody";
export const TOKEN = "test-token-0123456789";

export type IngestTestEnv = {
  t: TestEnv;
  catalog: Catalog;
  app: ReturnType<typeof buildIngestServer>;
  acceptor: Acceptor;
  advisories: AdvisoryStore;
  /**
   * Every enqueue request ingest produced so far, oldest first, with its stored time: one per key
   * of each event record (as admission enqueues it) and each message on the intake stream.
   */
  intake(): Promise<Array<EnqueueRequest & { at: number }>>;
  /** A second server on the same NATS prefix, as after a restart. */
  restart(): Promise<void>;
  cleanup(): Promise<void>;
};

/** Plain packages in the test catalog besides the named ones: pkg000 … pkg049. */
export const PLAIN_PACKAGES = Array.from({ length: 50 }, (_, i) => `pkg${String(i).padStart(3, "0")}`);

/** A catalog with GitHub- and release-monitoring-mapped packages and 50 plain ones. */
function writeCatalog(dir: string): void {
  mkdirSync(path.join(dir, "packages"), { recursive: true });
  const pkg = (name: string, upstream?: string) =>
    writeFileSync(
      path.join(dir, "packages", `${name}.yaml`),
      `name: ${name}\nversion: "1.0"\n${upstream ? `upstream: ${upstream}\n` : ""}source: { url: "https://example.org/${name}-\${version}.tar.gz", sha256: "${"0".repeat(64)}" }\nbuild: { steps: [make] }\n`,
    );
  pkg("hello", "{ github: Codertocat/Hello-World }");
  pkg("hello-mirror", "{ github: codertocat/hello-world }");
  pkg("openssl", "{ releaseMonitoring: { id: 2566 } }");
  pkg("curl");
  for (const n of PLAIN_PACKAGES) pkg(n);
}

export async function ingestTestEnv(settings: Partial<IngestSettings> = {}): Promise<IngestTestEnv> {
  const t = await testEnv();
  writeCatalog(path.join(t.dir, "catalog"));
  const catalog = await loadCatalog(path.join(t.dir, "catalog"));
  // The same lean JetStream path as main.ts: one pipe per (re)started server.
  let pipe = new JetStreamPipe(t.nats.nc);
  const advisories = await AdvisoryStore.open(t.nats);
  const make = async () => {
    pipe.close();
    pipe = new JetStreamPipe(t.nats.nc);
    const ledger = await EventLedger.open(t.nats, 3_600_000);
    const acceptor = new Acceptor(ledger, pipedLedger(ledger, pipe));
    const app = buildIngestServer({
      catalog: () => catalog,
      releases: new ReleaseStore(t.buckets.releases),
      advisories,
      acceptor,
      ready: async () => !t.nats.nc.isClosed(),
      settings: { host: "127.0.0.1", tokens: [TOKEN], githubSecret: SECRET, githubActions: ["published", "released"], githubPrereleases: false, rateLimitPerMin: 1_000_000, ...settings },
    });
    await app.ready();
    return { acceptor, app };
  };
  const env: IngestTestEnv = {
    t,
    catalog,
    advisories,
    ...(await make()),
    intake: async () => {
      const out: Array<EnqueueRequest & { at: number }> = [];
      const read = async (stream: string, add: (json: unknown, at: number) => void) => {
        const info = await t.nats.jsm.streams.info(stream);
        for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
          const m = await t.nats.jsm.streams.getMessage(stream, { seq }).catch(() => null);
          if (m) add(m.json(), m.time.getTime());
        }
      };
      await read(eventLedgerNames(t.nats.topology).stream, (json, at) => {
        const r = eventRecordSchema.parse(json);
        for (const key of r.keys) out.push({ v: 1, key, priority: r.priority, cause: { type: r.causeType, id: r.id, detail: r.summary }, at });
      });
      await read(t.nats.topology.stream("intake"), (json, at) => out.push({ ...(json as EnqueueRequest), at }));
      // Stable: an event's keys keep their order.
      return out.sort((a, b) => a.at - b.at);
    },
    restart: async () => {
      await env.app.close();
      Object.assign(env, await make());
    },
    cleanup: async () => {
      await env.app.close();
      pipe.close();
      await t.nats.jsm.streams.delete(`KV_${cursorBucket(t.nats)}`).catch(() => {});
      await t.cleanup();
    },
  };
  return env;
}

export function sign(body: string | Buffer, secret = SECRET): string {
  return `sha256=${createHmac("sha256", secret).update(body).digest("hex")}`;
}
