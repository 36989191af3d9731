/**
 * NATS access: one identity per service, and exactly the subjects each may publish and
 * subscribe to, derived from the topology's names. The server configuration and every
 * service's credentials are rendered from this one declaration (`pnpm nats-config`), and the
 * services wait here for the streams they use, which only the topology owner creates.
 *
 * Deny by default: an identity may publish only to the subjects listed for it, which include
 * the JetStream API subjects of exactly its streams, buckets and consumers, and subscribe only
 * to its own inboxes (`Topology.inboxPrefix`). What each service does with NATS:
 * - ingest records events (the audit stream, which is their intake), asks for resyncs on the
 *   intake stream, writes release facts and advisories, and keeps its feed cursors;
 * - queue owns the topology (creates and updates streams, buckets, consumers), admits the
 *   audit stream's and the intake stream's keys into the work stream, runs the work queue's
 *   API (enqueue, retry, sweep: run records), reads status, releases and advisories;
 * - reconciler takes keys from the work stream under run records, reads advisories and
 *   state, writes state, asks for builds, and (its upstream resolver) records release facts;
 * - builder takes build requests, reads releases, advisories and state (to compute the desired
 *   build itself), writes state, asks for signatures;
 * - signer takes sign requests, reads and writes state, asks for the key's re-intake;
 * - agent (the agentic reconciler) takes keys of the `repair` class from the work stream under
 *   run records, reads releases, advisories and state, notes its word on a key in its status
 *   and records proposals; it never asks for builds or signatures of a key's actual state,
 *   only for trial builds of a catalog snapshot, which the builder answers to its inbox.
 * Every service writes its instances' heartbeats (`<prefix>_services`, keys `<service>.*` of its
 * own name only); the queue reads them all for ListServices.
 * No service may delete or purge a stream; `admin` (tests, operators) may do anything and is
 * handed to no service.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { createUser, fromSeed } from "@nats-io/nkeys";
import { errors } from "@nats-io/transport-node";
import { priorities, reconcilerPriorities } from "./contracts.ts";
import { ADMISSION_CONSUMER, eventLedgerNames } from "./events.ts";
import { hasJetStreamCode, JetStreamErrorCode } from "./jetstream-errors.ts";
import type { Logger } from "./log.ts";
import type { ServiceName } from "./service.ts";
import { bucketNames, stages, Topology, type BucketName, type Nats } from "./topology.ts";

export type NatsIdentity = ServiceName | "admin";

/** The service that creates and updates the topology. */
export const topologyOwner: ServiceName = "queue";

export type NatsPermissions = { publish: string[]; subscribe: string[] };

const api = "$JS.API";

/** Collects what one identity may do, as subjects, and which streams it needs to find. */
class Grant {
  readonly publish = new Set<string>();
  readonly subscribe = new Set<string>();
  /** Streams the service uses but does not create: it waits for them at start. */
  readonly streams = new Set<string>();

  constructor(t: Topology, identity: NatsIdentity) {
    // The client asks whether JetStream is enabled when it makes its JetStream manager.
    this.publish.add(`${api}.INFO`);
    this.subscribe.add(`${t.inboxPrefix(identity)}.>`);
  }

  pub(...subjects: string[]): this {
    for (const s of subjects) this.publish.add(s);
    return this;
  }

  /** Finds the stream (stream info), reads its messages by subject (direct get) and by sequence. */
  read(stream: string): this {
    this.streams.add(stream);
    return this.pub(`${api}.STREAM.INFO.${stream}`, `${api}.DIRECT.GET.${stream}`, `${api}.DIRECT.GET.${stream}.>`, `${api}.STREAM.MSG.GET.${stream}`);
  }

  /** Lists or watches the stream through ephemeral ordered consumers (KV keys() and watch()). */
  list(stream: string): this {
    return this.pub(
      `${api}.CONSUMER.CREATE.${stream}`,
      `${api}.CONSUMER.CREATE.${stream}.>`,
      `${api}.CONSUMER.INFO.${stream}.>`,
      `${api}.CONSUMER.MSG.NEXT.${stream}.>`,
      `${api}.CONSUMER.DELETE.${stream}.>`,
      `$JS.FC.${stream}.>`,
    );
  }

  /** Takes messages from a durable consumer that the owner made, and acknowledges them. */
  consume(stream: string, durable: string): this {
    this.streams.add(stream);
    return this.pub(
      `${api}.STREAM.INFO.${stream}`,
      `${api}.CONSUMER.INFO.${stream}.${durable}`,
      `${api}.CONSUMER.MSG.NEXT.${stream}.${durable}`,
      `$JS.ACK.${stream}.${durable}.>`,
    );
  }

  /** Deletes single messages by sequence (the work queue's release and compare-and-delete). */
  deleteMessages(stream: string): this {
    return this.pub(`${api}.STREAM.MSG.DELETE.${stream}`);
  }

  kvRead(t: Topology, bucket: BucketName): this {
    return this.read(kvStream(t, bucket));
  }

  kvList(t: Topology, bucket: BucketName): this {
    return this.kvRead(t, bucket).list(kvStream(t, bucket));
  }

  /** Writes keys of the bucket; `keys` narrows them (e.g. one region's run records). */
  kvWrite(t: Topology, bucket: BucketName, keys = ">"): this {
    return this.kvRead(t, bucket).pub(`$KV.${t.bucket(bucket)}.${keys}`);
  }

  /** Creates and updates the stream (never deletes or purges it). */
  own(stream: string): this {
    return this.pub(`${api}.STREAM.CREATE.${stream}`, `${api}.STREAM.UPDATE.${stream}`, `${api}.STREAM.INFO.${stream}`);
  }

  /** Creates, updates and deletes the stream's durable consumers. */
  ownConsumers(stream: string): this {
    return this.pub(
      `${api}.CONSUMER.CREATE.${stream}.>`,
      `${api}.CONSUMER.DURABLE.CREATE.${stream}.>`,
      `${api}.CONSUMER.INFO.${stream}.>`,
      `${api}.CONSUMER.DELETE.${stream}.>`,
    );
  }
}

export function kvStream(t: Topology, bucket: BucketName): string {
  return `KV_${t.bucket(bucket)}`;
}

/** What each service does on NATS in one region; the union over the regions is its grant. */
const serviceGrants: Record<ServiceName, (g: Grant, t: Topology) => void> = {
  ingest: (g, t) => {
    g.read(eventLedgerNames(t).stream).pub(eventLedgerNames(t).subjects);
    g.pub(t.subjects("intake"));
    g.kvList(t, "releases").kvWrite(t, "releases");
    g.kvList(t, "advisories").kvWrite(t, "advisories");
    g.kvWrite(t, "ingest_cursors");
  },
  queue: (g, t) => {
    for (const stage of stages) g.own(t.stream(stage)).ownConsumers(t.stream(stage));
    for (const bucket of bucketNames) g.own(kvStream(t, bucket));
    const events = eventLedgerNames(t).stream;
    g.own(events).ownConsumers(events).read(events).consume(events, ADMISSION_CONSUMER);
    g.consume(t.stream("intake"), t.consumer("intake"));
    workQueue(g, t);
    g.kvList(t, "state").kvList(t, "releases").kvList(t, "advisories");
    // ListServices: every instance's heartbeat.
    g.kvList(t, "services");
    // Reviews of the agent's proposals (ApproveProposal, RejectProposal): a status, never the catalog.
    g.kvList(t, "proposals").kvWrite(t, "proposals");
  },
  reconciler: (g, t) => {
    workQueue(g, t);
    for (const p of reconcilerPriorities) g.consume(t.stream("work"), t.workConsumer(p));
    // The upstream resolver records release facts and settles announcements.
    g.kvList(t, "releases").kvWrite(t, "releases").kvList(t, "advisories");
    // Its statuses are read from a copy kept current by one watch (state-follower.ts StatusMirror).
    g.kvList(t, "state").kvWrite(t, "state").pub(t.subjects("build"));
  },
  builder: (g, t) => {
    g.consume(t.stream("build"), t.consumer("build"));
    // It computes the desired build itself from the catalog and these facts, as the reconciler does.
    g.kvList(t, "releases").kvList(t, "advisories");
    // Its statuses are read from a copy kept current by one watch (state-follower.ts StatusMirror).
    g.kvList(t, "state").kvWrite(t, "state").pub(t.subjects("sign"));
    // A build that ended in Failed is handed back to the queue at once (attempts.ts).
    g.pub(t.subjects("intake"));
    // Trial builds: asked for by the agent alone, answered to the agent's inbox.
    g.subscribe.add(t.trialSubjects());
    g.pub(`${t.inboxPrefix("agent")}.>`);
  },
  signer: (g, t) => {
    g.consume(t.stream("sign"), t.consumer("sign"));
    g.kvWrite(t, "state").pub(t.subjects("intake"));
  },
  agent: (g, t) => {
    workQueue(g, t);
    g.consume(t.stream("work"), t.workConsumer("repair"));
    g.kvList(t, "releases").kvList(t, "advisories");
    g.kvList(t, "state").kvWrite(t, "state");
    g.kvList(t, "proposals").kvWrite(t, "proposals");
    // Trial builds of a candidate in a catalog snapshot: never a build of the key's actual state.
    g.pub(t.trialSubjects());
  },
};

/** The work queue's own operations (packages/workqueue): queued messages and this region's run records. */
function workQueue(g: Grant, t: Topology): void {
  const work = t.stream("work");
  g.read(work).deleteMessages(work).pub(t.subjects("work"));
  for (const p of priorities) g.pub(`${api}.CONSUMER.INFO.${work}.${t.workConsumer(p)}`);
  g.kvWrite(t, "runs", `${t.region}.>`).deleteMessages(kvStream(t, "runs"));
}

function grant(identity: ServiceName, prefix: string, regions: readonly string[]): Grant {
  const [first] = regions;
  if (first === undefined) throw new Error(`NATS permissions for ${identity} need at least one region`);
  const g = new Grant(new Topology({ prefix, region: first }), identity);
  for (const region of regions) serviceGrants[identity](g, new Topology({ prefix, region }));
  // Every instance writes its own heartbeat (heartbeat.ts), under its service's name only.
  const t = new Topology({ prefix, region: first });
  g.kvWrite(t, "services", `${identity}.>`);
  return g;
}

export const serviceIdentities = Object.keys(serviceGrants) as readonly ServiceName[];

/** The subjects `identity` may publish and subscribe to, sorted; the admin's are everything. */
export function natsPermissions(identity: NatsIdentity, prefix: string, regions: readonly string[]): NatsPermissions {
  if (identity === "admin") return { publish: [">"], subscribe: [">"] };
  const g = grant(identity, prefix, regions);
  return { publish: [...g.publish].sort(), subscribe: [...g.subscribe].sort() };
}

/**
 * Waits until the topology owner has made every stream `service` uses (it may not make them
 * itself); logs while it waits; rejects only when `signal` aborts.
 */
export async function awaitStreams(n: Nats, service: ServiceName, o: { log: Logger; signal: AbortSignal; everyMs?: number }): Promise<void> {
  const missing = new Set(grant(service, n.topology.prefix, [n.topology.region]).streams);
  let waitedMs = 0;
  const everyMs = o.everyMs ?? 250;
  // Absent means not created yet; a request that times out (a busy or restarting server) is
  // asked again: waiting for the topology must never end the service.
  const exists = (stream: string) =>
    n.jsm.streams.info(stream).then(
      () => true,
      (err: unknown) => (hasJetStreamCode(err, JetStreamErrorCode.StreamNotFound) || err instanceof errors.TimeoutError ? false : Promise.reject(err)),
    );
  while (missing.size > 0) {
    for (const stream of [...missing]) {
      if (await exists(stream)) missing.delete(stream);
    }
    if (missing.size === 0) break;
    o.signal.throwIfAborted();
    if (waitedMs % 10_000 === 0) o.log.info(`waiting for the ${topologyOwner} service to create the topology`, { missing: [...missing] });
    await new Promise((r) => setTimeout(r, everyMs));
    waitedMs += everyMs;
  }
}

export type NatsConfigOptions = {
  prefix: string;
  regions: readonly string[];
  /** Where the credentials and the server configuration go. */
  dir: string;
  /** Also an `admin` identity that may do anything (tests, operators); handed to no service. */
  admin?: boolean;
  /** Only these identities (default: every service, and admin when asked). */
  identities?: readonly NatsIdentity[];
  /** Identities whose seeds are replaced; the others keep theirs, so a regeneration changes only permissions. */
  rotate?: readonly NatsIdentity[];
  /** JetStream's storage directory in the server configuration. */
  storeDir: string;
  /** Server TLS (PEM files); clients then set NATS_TLS_CA. */
  tls?: { certFile: string; keyFile: string };
  /** Owner of each seed file (`uid:gid`, needs root): the user the service runs as. */
  owner?: { uid: number; gid: number };
  /** One NATS cluster stretched over regions, a node each: also a configuration per node (`nodeConfigFile`). */
  cluster?: NatsCluster;
};

/**
 * A cluster of one node per region (deploy/README.md, "Regions"): each node is tagged with its
 * region and JetStream places the replicas of a stream in distinct regions (`unique_tag`).
 */
export type NatsCluster = {
  name: string;
  nodes: readonly NatsClusterNode[];
};
/** `listen`: the node's route listener (host:port); `route`: where the other nodes reach it (host:port). */
export type NatsClusterNode = { region: string; listen: string; route: string };

/** A node's configuration file in a credentials directory: the shared one plus its name, tags and routes (with the route secret, hence 0600). */
export function nodeConfigFile(dir: string, region: string): string {
  return path.join(dir, `nats-server-${region}.conf`);
}

/** The user the cluster's nodes authenticate to each other as; its password is `route.secret`, kept like a seed. */
const routeUser = "route";

/** The file of an identity's seed in a credentials directory, for NATS_NKEY_SEED_FILE. */
export function seedFile(dir: string, identity: NatsIdentity): string {
  return path.join(dir, `${identity}.nk`);
}

export const serverConfigFile = "nats-server.conf";

/**
 * Writes `<identity>.nk` (the nkey seed, mode 0600) for each service (and admin when asked)
 * and `nats-server.conf` (JetStream on, the users with their permissions) into `dir` (0700).
 * Existing seeds are kept unless rotated. Returns the configuration's path.
 */
export function writeNatsConfig(o: NatsConfigOptions): { configFile: string; users: NatsUser[] } {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const identities = o.identities ?? [...serviceIdentities, ...(o.admin ? (["admin"] as const) : [])];
  const users = identities.map((identity): NatsUser => {
    const file = seedFile(o.dir, identity);
    if (!existsSync(file) || o.rotate?.includes(identity)) writeSecret(file, `${new TextDecoder().decode(createUser().getSeed())}\n`, o.owner);
    const publicKey = fromSeed(new TextEncoder().encode(readFileSync(file, "utf8").trim())).getPublicKey();
    return { identity, publicKey, permissions: natsPermissions(identity, o.prefix, o.regions) };
  });
  const conf = renderServerConfig({ prefix: o.prefix, regions: o.regions, storeDir: o.storeDir, tls: o.tls, users });
  const confPath = path.join(o.dir, serverConfigFile);
  // The configuration holds public keys only; the server (another user, in a container) reads it.
  writeFileSync(`${confPath}.tmp`, conf, { mode: 0o644 });
  renameSync(`${confPath}.tmp`, confPath);
  if (o.cluster) {
    const secretFile = path.join(o.dir, "route.secret");
    if (!existsSync(secretFile)) writeSecret(secretFile, `${randomBytes(32).toString("base64url")}\n`, o.owner);
    const routeSecret = readFileSync(secretFile, "utf8").trim();
    for (const node of o.cluster.nodes) {
      const nodeConf = renderServerConfig({
        prefix: o.prefix,
        regions: o.regions,
        storeDir: path.join(o.storeDir, node.region),
        tls: o.tls,
        users,
        node: { cluster: o.cluster, region: node.region, routeSecret },
      });
      writeSecret(nodeConfigFile(o.dir, node.region), nodeConf, o.owner);
    }
  }
  return { configFile: confPath, users };
}

/** Written whole under a temporary name, then renamed, so that no reader sees half a seed or a wider mode. */
function writeSecret(file: string, content: string, owner: NatsConfigOptions["owner"]): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  if (owner) chownSync(tmp, owner.uid, owner.gid);
  renameSync(tmp, file);
}

export type NatsUser = { identity: NatsIdentity; publicKey: string; permissions: NatsPermissions };

export function renderServerConfig(o: {
  prefix: string;
  regions: readonly string[];
  storeDir: string;
  tls: NatsConfigOptions["tls"];
  users: readonly NatsUser[];
  /** This server is the node of `region` in the cluster; `routeSecret` authenticates the routes between the nodes. */
  node?: { cluster: NatsCluster; region: string; routeSecret: string };
}): string {
  const q = (s: string) => JSON.stringify(s);
  const list = (subjects: string[]) => `[\n${subjects.map((s) => `        ${q(s)}`).join(",\n")}\n      ]`;
  const users = o.users.map((u) =>
    [
      `    # ${u.identity}`,
      `    { nkey: ${q(u.publicKey)}, permissions: {`,
      `      publish: { allow: ${list(u.permissions.publish)} },`,
      `      subscribe: { allow: ${list(u.permissions.subscribe)} }`,
      `    } }`,
    ].join("\n"),
  );
  return [
    `# Homeostat's NATS: prefix ${o.prefix}, regions ${o.regions.join(", ")}. Generated by \`pnpm nats-config\`:`,
    "# regenerate rather than edit (packages/core/src/nats-access.ts declares the permissions).",
    "# Listen address and port come from the command line (-a, -p).",
    ...(o.node ? clusterConfig(o.node) : [`jetstream { store_dir: ${q(o.storeDir)} }`]),
    ...(o.tls ? [`tls { cert_file: ${q(o.tls.certFile)}, key_file: ${q(o.tls.keyFile)} }`] : []),
    "authorization {",
    "  users = [",
    users.join(",\n"),
    "  ]",
    "}",
    "",
  ].join("\n");

  function clusterConfig(node: NonNullable<typeof o.node>): string[] {
    const self = node.cluster.nodes.find((n) => n.region === node.region);
    if (!self) throw new Error(`region ${node.region} has no node in cluster ${node.cluster.name}`);
    const peers = node.cluster.nodes.filter((n) => n !== self).map((n) => `nats-route://${routeUser}:${node.routeSecret}@${n.route}`);
    return [
      `server_name: ${q(`${node.cluster.name}-${node.region}`)}`,
      // The region tag and unique_tag put each replica of a stream in another region.
      `server_tags: [${q(`region:${node.region}`)}]`,
      `jetstream { store_dir: ${q(o.storeDir)}, unique_tag: "region:" }`,
      "cluster {",
      `  name: ${q(node.cluster.name)}`,
      `  listen: ${q(self.listen)}`,
      // Only the other nodes, knowing the route secret, may open a route.
      `  authorization { user: ${q(routeUser)}, password: ${q(node.routeSecret)} }`,
      `  routes: [${peers.map(q).join(", ")}]`,
      // Clients are not told of the other nodes: a region's services stay on their region's node,
      // and a region fails as a whole.
      "  no_advertise: true",
      "}",
    ];
  }
}
