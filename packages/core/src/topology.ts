/**
 * Topology: the names of every JetStream stream, consumer, subject and KV bucket, and their
 * idempotent creation.
 *
 * Subjects carry the region (`<prefix>.<region>.<stage>.<kind>.<name>`) so a second region
 * joins without renaming anything. Every stage stream is a WorkQueue: a message is consumed
 * once and then gone, so the streams hold only work that is still to do.
 */
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, jetstreamManager, AckPolicy, DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import type { Config } from "./config.ts";
import { keyToken, type Key } from "./key.ts";

export type Stage = "intake" | "work" | "build" | "sign";
export const stages: readonly Stage[] = ["intake", "work", "build", "sign"];

export class Topology {
  readonly prefix: string;
  readonly region: string;
  constructor(config: Pick<Config, "prefix" | "region">) {
    this.prefix = config.prefix;
    this.region = config.region;
  }
  stream(stage: Stage): string {
    return `${this.prefix}_${stage.toUpperCase()}`;
  }
  /** The one durable consumer of a stage, shared by all replicas of the service that owns it. */
  consumer(stage: Stage): string {
    return `${stage}-worker`;
  }
  subject(stage: Stage, key: Key): string {
    return `${this.prefix}.${this.region}.${stage}.${keyToken(key)}`;
  }
  subjects(stage: Stage): string {
    return `${this.prefix}.${this.region}.${stage}.>`;
  }
  bucket(name: "state" | "releases" | "leases"): string {
    return `${this.prefix}_${name}`;
  }
  redisKey(...parts: string[]): string {
    return [this.prefix, ...parts].join(":");
  }
}

export type Nats = {
  nc: NatsConnection;
  jsm: JetStreamManager;
  js: ReturnType<typeof jetstream>;
  kvm: Kvm;
  topology: Topology;
};

export async function connectNats(config: Config, name: string): Promise<Nats> {
  const nc = await connect({ servers: config.natsUrl.split(","), name, maxReconnectAttempts: -1 });
  const jsm = await jetstreamManager(nc);
  return { nc, jsm, js: jetstream(nc), kvm: new Kvm(nc), topology: new Topology(config) };
}

function streamConfig(t: Topology, stage: Stage): Partial<StreamConfig> & { name: string } {
  const base = {
    name: t.stream(stage),
    subjects: [t.subjects(stage)],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
  } satisfies Partial<StreamConfig>;
  switch (stage) {
    case "intake":
      // Repeated deliveries of one event (same Nats-Msg-Id) inside the window are stored once.
      return { ...base, duplicate_window: 120_000_000_000 };
    case "work":
      // At most one queued entry per key: a second enqueue of a queued key is refused by the
      // server (API error 10077), which is how the queue deduplicates without a read first.
      return { ...base, max_msgs_per_subject: 1, discard: DiscardPolicy.New, discard_new_per_subject: true, duplicate_window: 0 };
    case "build":
    case "sign":
      // Msg-Id = key + input digest: the same build asked for twice is queued once.
      return { ...base, duplicate_window: 600_000_000_000 };
  }
}

/** Creates (or updates) every stream, consumer and bucket; safe to call from every service at start. */
export async function ensureTopology(n: Nats, config: Config): Promise<Buckets> {
  const t = n.topology;
  for (const stage of stages) {
    const cfg = streamConfig(t, stage);
    try {
      await n.jsm.streams.info(t.stream(stage));
      await n.jsm.streams.update(t.stream(stage), cfg);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      try {
        await n.jsm.streams.add(cfg);
      } catch (addErr) {
        if (!/already in use|exists/i.test(String(addErr))) throw addErr;
      }
    }
    const consumer = {
      durable_name: t.consumer(stage),
      ack_policy: AckPolicy.Explicit,
      // A work item's ack wait is its lease: a worker that stops renewing loses both together.
      ack_wait: stage === "build" ? 120_000_000_000 : stage === "work" ? config.leaseMs * 1_000_000 : 30_000_000_000,
      // Attempts are counted by Homeostat, not by max_deliver: an exhausted max_deliver would
      // leave the message blocking its subject in a WorkQueue stream (nats-server #5564).
      max_deliver: -1,
      max_ack_pending: 10_000,
    };
    try {
      await n.jsm.consumers.add(t.stream(stage), consumer);
    } catch (err) {
      // An existing durable with older settings (e.g. another lease time) is updated in place.
      if (!/already exists|10148|10013/i.test(String(err))) throw err;
      const { durable_name, ...changes } = consumer;
      await n.jsm.consumers.update(t.stream(stage), durable_name, changes);
    }
  }
  return openBuckets(n, config);
}

export type Buckets = { state: KV; releases: KV; leases: KV };

export async function openBuckets(n: Nats, config: Config): Promise<Buckets> {
  const t = n.topology;
  const [state, releases, leases] = await Promise.all([
    n.kvm.create(t.bucket("state"), { history: 5 }),
    n.kvm.create(t.bucket("releases"), { history: 1 }),
    // A lease not renewed within its TTL disappears: that is how a dead worker loses its key.
    n.kvm.create(t.bucket("leases"), { history: 1, ttl: config.leaseMs }),
  ]);
  return { state, releases, leases };
}

function isNotFound(err: unknown): boolean {
  return /not found/i.test(String((err as Error)?.message ?? err));
}
