/**
 * Topology: the names of every JetStream stream, consumer, subject and KV bucket, and their
 * idempotent creation.
 *
 * Subjects carry the region (`<prefix>.<region>.<stage>.<kind>.<name>`) so a second region
 * joins without renaming anything. Every stage stream is a WorkQueue: a message is consumed
 * once and then gone, so the streams hold only work that is still to do.
 *
 * Several regions may share one JetStream fabric (one NATS cluster stretched over them,
 * deploy/README.md): their subjects then carry the fabric's name instead, so that every region
 * works on the same streams, consumers and run records (one queue, one lease per key), each
 * stream and bucket kept at `HOMEOSTAT_JS_REPLICAS` replicas, and only the Redis read model is
 * the region's own.
 */
import { readFileSync, statSync } from "node:fs";
import { connect, nkeyAuthenticator, type ConnectionOptions, type NatsConnection } from "@nats-io/transport-node";
import {
  jetstream,
  jetstreamManager,
  AckPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamManager,
  type StreamConfig,
} from "@nats-io/jetstream";
import { Kvm, type KV } from "@nats-io/kv";
import { ConfigError, type Config } from "./config.ts";
import { EventLedger } from "./events.ts";
import { priorities, type Priority } from "./contracts.ts";
import { keyFromToken, keySchema, keyToken, type Key } from "./key.ts";
import type { Logger } from "./log.ts";

export type Stage = "intake" | "work" | "build" | "sign";
export const stages: readonly Stage[] = ["intake", "work", "build", "sign"];

export class Topology {
  readonly prefix: string;
  /** The region part of subjects and run-record keys: the fabric's name, shared by the regions on it. */
  readonly region: string;
  /** Where this process runs: its own read model's keys carry it when it differs from `region`. */
  readonly home: string;
  /** Replicas of every stream and bucket the topology owner creates. */
  readonly replicas: number;
  constructor(config: Pick<Config, "prefix" | "region"> & Partial<Pick<Config, "fabric" | "jsReplicas">>) {
    this.prefix = config.prefix;
    this.region = config.fabric ?? config.region;
    this.home = config.region;
    this.replicas = config.jsReplicas ?? 1;
  }
  stream(stage: Stage): string {
    return `${this.prefix}_${stage.toUpperCase()}`;
  }
  /** The one durable consumer of a stage, shared by all replicas of the service that owns it. */
  consumer(stage: Stage): string {
    return `${stage}-worker`;
  }
  subject(stage: Exclude<Stage, "work">, key: Key): string {
    return `${this.prefix}.${this.region}.${stage}.${keyToken(key)}`;
  }
  /** The key a stage's subject names, or undefined when the subject is not one of this stage's. */
  keyOfSubject(stage: Exclude<Stage, "work">, subject: string): Key | undefined {
    const head = `${this.prefix}.${this.region}.${stage}.`;
    if (!subject.startsWith(head)) return undefined;
    const parsed = keySchema.safeParse(keyFromToken(subject.slice(head.length)));
    return parsed.success ? parsed.data : undefined;
  }
  subjects(stage: Stage): string {
    return `${this.prefix}.${this.region}.${stage}.>`;
  }
  /** A trial build of a key (core NATS request and reply, not a stream: a trial lost with its builder is asked again). */
  trialSubject(key: Key): string {
    return `${this.prefix}.${this.region}.trial.${keyToken(key)}`;
  }
  trialSubjects(): string {
    return `${this.prefix}.${this.region}.trial.>`;
  }
  /** A queued key: one subject per priority class and key, `<prefix>.<region>.work.<class>.<kind>.<name>`. */
  workSubject(priority: Priority, key: Key): string {
    return `${this.prefix}.${this.region}.work.${priority}.${keyToken(key)}`;
  }
  /** Every queued key of one priority class: the subjects its consumer takes. */
  workClassSubjects(priority: Priority): string {
    return `${this.prefix}.${this.region}.work.${priority}.>`;
  }
  /** The durable consumer of one priority class of the work stream, shared by every worker. */
  workConsumer(priority: Priority): string {
    return `work-${priority}`;
  }
  bucket(name: BucketName): string {
    return `${this.prefix}_${name}`;
  }
  /** The key of a key's run record: the region (the fabric's name) first, so that factories sharing a bucket never share a record, while regions on one fabric do. */
  runRecordKey(key: Key): string {
    return `${this.region}.${keyToken(key)}`;
  }
  /** A key of this region's read model: regions on one fabric may share a Redis server, never a read model. */
  redisKey(...parts: string[]): string {
    return [this.prefix, ...(this.home === this.region ? [] : [this.home]), ...parts].join(":");
  }
  /**
   * The inbox prefix of a NATS identity (a service, or `admin`): replies to its requests come
   * here, and the server lets an identity subscribe to its own inboxes only (nats-access.ts).
   */
  inboxPrefix(identity: string): string {
    return `_INBOX.${this.prefix}.${identity}`;
  }
}

/** Every KV bucket: the topology owner creates them all, the other services only open them. */
export type BucketName = "state" | "releases" | "runs" | "advisories" | "ingest_cursors" | "proposals" | "services";
/**
 * proposals: the agentic reconciler's proposals (services/agent), a few revisions kept as they are reviewed.
 * services: each service instance's heartbeat (heartbeat.ts), the latest only, gone a few intervals after the last.
 */
const bucketHistory: Record<BucketName, number> = { state: 5, releases: 1, runs: 1, advisories: 1, ingest_cursors: 1, proposals: 5, services: 1 };
export const bucketNames = Object.keys(bucketHistory) as readonly BucketName[];

export type Nats = {
  nc: NatsConnection;
  jsm: JetStreamManager;
  js: ReturnType<typeof jetstream>;
  kvm: Kvm;
  topology: Topology;
};

/**
 * Connects as the identity whose nkey seed NATS_NKEY_SEED_FILE names (and over TLS when
 * NATS_TLS_CA is set). `identity` (a service name) picks the inbox prefix the server lets that
 * identity subscribe to; without it the client's default `_INBOX` is used (the admin's).
 */
export async function connectNats(config: Config, name: string, o: { identity?: string; reconnect?: boolean } = {}): Promise<Nats> {
  const topology = new Topology(config);
  const nc = await connect({
    servers: config.natsUrl.split(","),
    name,
    // Services reconnect for ever; a probe (reconnect: false) wants the first answer.
    ...(o.reconnect === false ? { reconnect: false } : { maxReconnectAttempts: -1 }),
    // noAsyncTraces: the client otherwise builds (and throws away) an Error with a stack trace for
    // every request it sends, which profiling showed to be a third of the work queue's CPU.
    noAsyncTraces: true,
    ...(o.identity ? { inboxPrefix: topology.inboxPrefix(o.identity) } : {}),
    ...natsSecurity(config.nats),
  });
  const jsm = await jetstreamManager(nc);
  return { nc, jsm, js: jetstream(nc), kvm: new Kvm(nc), topology };
}

/** The client's authentication and TLS options from the configuration. */
function natsSecurity(s: Config["nats"]): Pick<ConnectionOptions, "authenticator" | "tls"> {
  const tls = s.tlsCaFile ? { tls: { caFile: s.tlsCaFile, ...(s.tlsCertFile ? { certFile: s.tlsCertFile, keyFile: s.tlsKeyFile } : {}) } } : {};
  if (!s.nkeySeedFile) return tls;
  return { authenticator: nkeyAuthenticator(readSeedFile(s.nkeySeedFile)), ...tls };
}

/**
 * Reads an nkey seed, refusing one that any user may read. Group bits are let through:
 * Kubernetes makes Secret files readable by the pod's fsGroup; the seed should still be 0600
 * (`pnpm nats-config` writes it so) or 0400.
 */
export function readSeedFile(file: string): Uint8Array {
  let mode: number;
  try {
    mode = statSync(file).mode;
  } catch (err) {
    throw new ConfigError(`NATS_NKEY_SEED_FILE ${file}: ${(err as Error).message}`);
  }
  if ((mode & 0o007) !== 0) throw new ConfigError(`NATS_NKEY_SEED_FILE ${file} is readable by others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`);
  const seed = readFileSync(file, "utf8").trim();
  if (!/^SU[A-Z2-7]{56}$/.test(seed)) throw new ConfigError(`NATS_NKEY_SEED_FILE ${file} does not hold a user nkey seed (SU…)`);
  return new TextEncoder().encode(seed);
}

function streamConfig(t: Topology, stage: Stage): Partial<StreamConfig> & { name: string } {
  const base = {
    name: t.stream(stage),
    subjects: [t.subjects(stage)],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    num_replicas: t.replicas,
  } satisfies Partial<StreamConfig>;
  switch (stage) {
    case "intake":
      // Repeated deliveries of one event (same Nats-Msg-Id) inside the window are stored once.
      return { ...base, duplicate_window: 120_000_000_000 };
    case "work":
      // At most one queued entry per key: a second enqueue of a queued key is refused by the
      // server (API error 10077), which is how the queue deduplicates without a read first.
      // allow_direct: the queue reads a key's queued message with a direct get.
      // Replicated, the stream keeps what is acked (limits retention) and the queue deletes a
      // finished run's message itself: nats-server 2.9 checks the one-per-key limit on each
      // replica against its own store, and a WorkQueue ack removes the message on each replica
      // through the consumer's log, which can overtake the stream's own on a lagging replica.
      // That replica then stores the key's next enqueue, sent before the delete, that the others
      // refused, and their sequences part (a test saw it in one run of three under load). A
      // delete goes through the stream's log, so every replica applies it at the same point.
      return {
        ...base,
        retention: t.replicas > 1 ? RetentionPolicy.Limits : RetentionPolicy.Workqueue,
        max_msgs_per_subject: 1,
        discard: DiscardPolicy.New,
        discard_new_per_subject: true,
        duplicate_window: 0,
        allow_direct: true,
      };
    case "build":
    case "sign":
      // A publish retried (same Msg-Id) is stored once. Build: key + input digest + the
      // reconciler's request id; sign: key + input digest + the build result. Never key and
      // inputs alone: a rollback to inputs asked for inside the window would be dropped.
      return { ...base, duplicate_window: 600_000_000_000 };
  }
}

/**
 * Creates (or updates) every stream, consumer and bucket, the event ledger's too. Only the
 * topology owner (the queue service, and tests as admin) may: the other services' identities
 * are refused stream and consumer changes, and wait for the topology instead (nats-access.ts).
 */
export async function ensureTopology(n: Nats, config: Config, log?: Pick<Logger, "warn">): Promise<Buckets> {
  const t = n.topology;
  // Streams and consumers are made at once, not one after another: at R3 each one waits for its
  // RAFT group to elect a leader (seconds on a busy machine), and the other services wait for all.
  await Promise.all(stages.map((stage) => ensureStage(n, config, stage, log)));
  await EventLedger.open(n, config.ingest.retentionMs, { maxBytes: config.ingest.retentionMaxBytes, maxMsgs: config.ingest.retentionMaxMsgs });
  await Promise.all(
    (["advisories", "ingest_cursors", "proposals"] as const).map((b) => n.kvm.create(t.bucket(b), { history: bucketHistory[b], replicas: t.replicas })),
  );
  // An instance that died without a word leaves a heartbeat that expires by itself.
  await ensureBucketTtl(n, "services", config.health.heartbeatTtlMs);
  return openBuckets(n);
}

/**
 * Creates bucket `b` with entries that expire after `ttlMs`, or gives an existing one that TTL:
 * kvm.create leaves a bucket that exists as it is, so a factory whose HOMEOSTAT_HEARTBEAT_MS
 * changed would keep the TTL of the first start, and a dead instance's heartbeat would stay
 * listed for the old TTL (or vanish between the new beats).
 */
async function ensureBucketTtl(n: Nats, b: BucketName, ttlMs: number): Promise<void> {
  const kv = await n.kvm.create(n.topology.bucket(b), { history: bucketHistory[b], replicas: n.topology.replicas, ttl: ttlMs });
  const status = await kv.status();
  if (status.ttl === ttlMs) return;
  // The server refuses a duplicate window longer than the TTL; it makes a new bucket's the shorter of its default (2 min) and the TTL.
  const ns = ttlMs * 1_000_000;
  await n.jsm.streams.update(status.streamInfo.config.name, { max_age: ns, duplicate_window: Math.min(defaultDuplicateWindowNs, ns) });
}

/** The server's duplicate window for a stream that names none: 2 minutes. */
const defaultDuplicateWindowNs = 120_000_000_000;

/** Creates (or updates) one stage's stream and its consumers. */
async function ensureStage(n: Nats, config: Config, stage: Stage, log: Pick<Logger, "warn"> | undefined): Promise<void> {
  const t = n.topology;
  let cfg = streamConfig(t, stage);
  try {
    const existing = await n.jsm.streams.info(t.stream(stage));
    // A stream's retention cannot be changed: one made before it was chosen by replication
    // keeps its own, and says so (drain it and delete it to let it be made anew).
    if (existing.config.retention !== cfg.retention) {
      log?.warn("a stream keeps the retention it was made with", { stream: t.stream(stage), retention: existing.config.retention, wanted: cfg.retention });
      cfg = { ...cfg, retention: existing.config.retention };
    }
    await n.jsm.streams.update(t.stream(stage), cfg);
  } catch (err) {
    if (!isNotFound(err)) throw err;
    try {
      await n.jsm.streams.add(cfg);
    } catch (addErr) {
      if (!/already in use|exists/i.test(String(addErr))) throw addErr;
    }
  }
  if (stage === "work") {
    // The single unfiltered consumer of earlier versions would overlap the per-class ones,
    // which a WorkQueue stream refuses; its messages stay in the stream for them.
    await n.jsm.consumers.delete(t.stream(stage), t.consumer(stage)).catch(() => false);
    await Promise.all(
      priorities.map((priority) =>
        ensureConsumer(n, stage, {
          durable_name: t.workConsumer(priority),
          filter_subject: t.workClassSubjects(priority),
          ack_policy: AckPolicy.Explicit,
          // The run record is the lease; the ack wait only decides when a silent worker's message
          // comes back, so it matches the lease.
          ack_wait: config.leaseMs * 1_000_000,
          // Attempts are counted by the queue, not by max_deliver: an exhausted max_deliver would
          // leave the message blocking its subject in a WorkQueue stream (nats-server #5564).
          max_deliver: -1,
          // Keys waiting for their not-before time or their retry stay delivered-but-unacked.
          max_ack_pending: 1_000_000,
        }),
      ),
    );
    return;
  }
  await ensureConsumer(n, stage, {
    durable_name: t.consumer(stage),
    ack_policy: AckPolicy.Explicit,
    // Short for build and sign, whose handlers keep it alive with msg.working() while they
    // run: a dead builder's or signer's message is taken over within one ack wait.
    ack_wait: (stage === "build" || stage === "sign" ? config.stageAckWaitMs : 30_000) * 1_000_000,
    max_deliver: -1,
    max_ack_pending: 10_000,
  });
}

async function ensureConsumer(n: Nats, stage: Stage, consumer: Partial<ConsumerConfig> & { durable_name: string }): Promise<void> {
  const stream = n.topology.stream(stage);
  try {
    await n.jsm.consumers.add(stream, consumer);
  } catch (err) {
    // An existing durable with older settings (e.g. another lease time) is updated in place.
    if (!/already exists|10148|10013/i.test(String(err))) throw err;
    const { durable_name, filter_subject: _, ...changes } = consumer;
    await n.jsm.consumers.update(stream, durable_name, changes);
  }
}

export type Buckets = { state: KV; releases: KV; runs: KV };

/** Opens (creating when missing) the buckets every service shares. */
export async function openBuckets(n: Nats): Promise<Buckets> {
  const t = n.topology;
  // Run records (leases, retry state, dead letters): no TTL, a lease ends by its own clock.
  const create = (b: keyof Buckets) => n.kvm.create(t.bucket(b), { history: bucketHistory[b], replicas: t.replicas });
  const [state, releases, runs] = await Promise.all([create("state"), create("releases"), create("runs")]);
  return { state, releases, runs };
}

/**
 * Binds the shared buckets without asking the server anything, for a service that may not
 * create them (nor read the stream info of those it does not use); they exist once the
 * topology owner has made them (awaitStreams in nats-access.ts).
 */
export async function bindBuckets(n: Nats): Promise<Buckets> {
  const [state, releases, runs] = await Promise.all([openBucket(n, "state"), openBucket(n, "releases"), openBucket(n, "runs")]);
  return { state, releases, runs };
}

/**
 * Binds a bucket (without asking the server anything) so that what it reads is current: what
 * the stream's leader holds, every write that was acknowledged before the read.
 *
 * The owner creates the buckets with direct gets allowed, and a direct get is answered by any
 * replica that was once caught up, from its own copy. A follower applies what the leader
 * committed a moment later, and seconds later after its node restarted or on a loaded machine.
 * A reconciler or a builder that read there could miss the release fact, the advisory or the
 * dependency's build that made its key run, and decide that nothing changed (the event lost
 * until a resync) or refuse the build it was asked for. So with replicas, reads ask the leader
 * (the stream message API); with one replica the only copy is the leader's, and direct gets,
 * cheaper for the server, read it. Read models that say how fresh they are (the queue's) follow
 * the bucket by its watch instead.
 */
export function openBucket(n: Nats, name: BucketName): Promise<KV> {
  return n.kvm.open(n.topology.bucket(name), { allow_direct: n.topology.replicas === 1 });
}

/** The stream behind a KV bucket: run records are erased from it by revision (a compare-and-delete). */
export function bucketStream(n: Nats, name: BucketName): string {
  return `KV_${n.topology.bucket(name)}`;
}

function isNotFound(err: unknown): boolean {
  return /not found/i.test(String((err as Error)?.message ?? err));
}
