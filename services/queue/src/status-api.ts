/**
 * Status API: the gRPC StatusService (proto/homeostat/v1/status.proto) over the Redis read
 * model, the work queue and the known releases and advisories, plus the standard
 * grpc.health.v1 Health service.
 *
 * GetKey, Why and ListKeys read the read model (read-model.ts): Redis, kept current by the
 * follower of the state bucket, or while Redis is unavailable or being rebuilt the state bucket
 * itself, an answer then flagged `degraded` with the reason. The queue RPCs go to the WorkQueue, the
 * same library every worker uses, so an enqueue here obeys exactly the merge rules of any
 * other, and refuses a key the catalog does not declare unless forced. KnownFacts reads the
 * release and advisory stores the reconciler reads, so a plan made with its answer decides
 * with the reconciler's facts. WatchKeys streams come from the key feed (key-feed.ts), which the
 * one follower of the state bucket feeds. ListServices reads the instances' heartbeats
 * (service-directory.ts). Every request is validated here
 * and every failure becomes a gRPC status with a message; nothing a client sends can take the
 * server down. Who may call what is status-auth.ts's; health and reflection need no token.
 */
import { readFile } from "node:fs/promises";
import { HealthDefinition, HealthServiceImpl, HealthState } from "nice-grpc-server-health";
import { ServerReflection, ServerReflectionService } from "nice-grpc-server-reflection";
import type { StatusApiSecurity } from "@homeostat/core/config";
import type { Logger } from "@homeostat/core/log";
import type { Key } from "@homeostat/core/key";
import {
  causalChain,
  createServer,
  defaultDeadLetterLimit,
  defaultPageSize,
  descriptorSetPath,
  fromProtoEnqueue,
  maxDeadLetterLimit,
  maxPageSize,
  maxPrefixLength,
  parseKeyArg,
  parseKnownFactsRequest,
  parseWatchRequest,
  type ReadModelFreshness,
  ServerError,
  type ServerMiddleware,
  Status,
  StatusServiceDefinition,
  type StatusServiceImplementation,
  statusServiceName,
  toProtoDeadLetter,
  toProtoPackageFacts,
  toProtoQueueStats,
  toProtoStatus,
  toProtoWatchEvent,
} from "@homeostat/status-api";
import type { AdvisoryStore, ReleaseStore } from "@homeostat/catalog";
import { mapLimit } from "@homeostat/core/map-limit";
import { type KeyFeed, WatchEnded } from "./key-feed.ts";
import type { Freshness, StatusReads } from "./read-model.ts";
import type { WorkQueue } from "@homeostat/workqueue";
import { tracingMiddleware } from "./grpc-tracing.ts";
import type { ServiceDirectory } from "./service-directory.ts";
import { authMiddleware, callerOf, checkBind, methodName, type SecuritySummary, serverCredentials, summary } from "./status-auth.ts";
import { proposalsApi } from "./proposals-api.ts";
import { questionsApi } from "./questions-api.ts";
import type { QuestionStore } from "@homeostat/proposals/questions";
import type { ProposalStore } from "@homeostat/proposals";

/** The WorkQueue methods the queue RPCs serve. */
export type QueueApi = Pick<WorkQueue, "stats" | "enqueue" | "deadLetters" | "retryDeadLetter">;

export type StatusApiOptions = {
  /** host:port to listen on; port 0 picks a free one (see `port`). */
  addr: string;
  /** TLS, tokens and read auth (config.statusApi); see status-auth.ts. */
  security: StatusApiSecurity;
  readModel: StatusReads;
  /** How current the read model is, told with every GetKey, ListKeys and QueueStats answer (read-model.ts). */
  freshness?: () => Freshness;
  queue: QueueApi;
  /** The known releases and stored advisories KnownFacts answers with. */
  releases: Pick<ReleaseStore, "list">;
  advisories: Pick<AdvisoryStore, "list">;
  /** Whether the catalog declares a key: Enqueue refuses one it does not, unless forced. */
  inCatalog: (key: Key) => boolean;
  /** What WatchKeys streams are served from. */
  feed: KeyFeed;
  /** What ListServices answers from (service-directory.ts); without it ListServices is FAILED_PRECONDITION. */
  services?: Pick<ServiceDirectory, "list">;
  /** The agent's proposals (proposals-api.ts); without them the proposal RPCs are FAILED_PRECONDITION. */
  proposals?: Pick<ProposalStore, "list" | "get" | "transition">;
  /** The agent's questions to a person (questions-api.ts); without them AnswerQuestion is FAILED_PRECONDITION. */
  questions?: Pick<QuestionStore, "answer">;
  /** Where unexpected errors are reported (default: console.error). */
  onError?: (err: unknown, method: string) => void;
  /** Where the insecure-start warnings go (default: console.warn). */
  log?: Pick<Logger, "warn">;
};

export type StatusApi = {
  /** The bound port. */
  port: number;
  /** How the API is protected, for the start-up log. */
  security: SecuritySummary;
  /** Marks the whole server (and StatusService) SERVING or NOT_SERVING for health checks. */
  setServing(serving: boolean): void;
  /** Stops accepting calls, lets running ones finish (up to `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
};

/** Packages a KnownFacts call reads at once: each read lists KV keys, and a thousand at once would flood NATS. */
const knownFactsConcurrency = 16;

/**
 * Reflection under both names clients ask for: grpcurl and buf curl try v1, older tools
 * v1alpha. The two protos have the same messages, field for field, so one implementation
 * serves both; only the method path differs.
 */
const reflectionV1alpha = {
  serverReflectionInfo: { ...ServerReflectionService.serverReflectionInfo, path: "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" },
} as unknown as typeof ServerReflectionService;

export async function startStatusApi(opts: StatusApiOptions): Promise<StatusApi> {
  const { readModel, queue, releases, advisories, inCatalog, feed, security } = opts;
  const onError = opts.onError ?? ((err, method) => console.error(`status-api: ${method} failed:`, err));
  // Before anything binds: an insecure address is refused, not served for a moment.
  const warnings = checkBind(opts.addr, security);
  const credentials = await serverCredentials(security.tls);
  const descriptors = await readFile(descriptorSetPath).catch((err: unknown) => {
    throw new Error(`cannot read the proto descriptors for reflection (${descriptorSetPath}; run pnpm gen): ${(err as Error).message}`);
  });

  /**
   * Every failure a handler did not turn into a status itself: a stored status that does not
   * parse, or a bug of ours, is INTERNAL; anything else comes from Redis or NATS (down,
   * unreachable, timing out) and is UNAVAILABLE, which clients may retry.
   */
  const failures: ServerMiddleware = async function* (call, context) {
    try {
      return yield* call.next(call.request, context);
    } catch (err) {
      if (err instanceof ServerError || (err as Error)?.name === "AbortError") throw err;
      const method = methodName(call.method.path);
      onError(err, method);
      const message = err instanceof Error ? err.message : String(err);
      const internal = err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError || (err as Error)?.name === "ZodError";
      throw new ServerError(internal ? Status.INTERNAL : Status.UNAVAILABLE, `${method}: ${message}`);
    }
  };

  const invalid = (details: string) => new ServerError(Status.INVALID_ARGUMENT, details);
  const freshness = () => (opts.freshness ? toProtoFreshness(opts.freshness(), Date.now()) : undefined);

  const noProposals = async (): Promise<never> => {
    throw new ServerError(Status.FAILED_PRECONDITION, "this status API serves no proposals");
  };
  const proposalMethods = opts.proposals
    ? proposalsApi({ proposals: opts.proposals, queue, caller: (context) => callerOf(security, context) })
    : { listProposals: noProposals, getProposal: noProposals, approveProposal: noProposals, rejectProposal: noProposals };

  const questionMethods = opts.questions
    ? questionsApi({ questions: opts.questions, queue, caller: (context) => callerOf(security, context) })
    : {
        answerQuestion: async (): Promise<never> => {
          throw new ServerError(Status.FAILED_PRECONDITION, "this status API serves no questions");
        },
      };

  const implementation: StatusServiceImplementation = {
    ...proposalMethods,
    ...questionMethods,
    async getKey({ key }) {
      const parsed = parseKeyArg(key);
      if ("error" in parsed) throw invalid(parsed.error);
      const { status, degraded } = await readModel.lookup(parsed.key);
      if (!status) throw new ServerError(Status.NOT_FOUND, `no status for ${parsed.key}`);
      return { ...toProtoStatus(status), ...(degraded ? { degraded } : {}), freshness: freshness() };
    },

    async why({ key }) {
      const parsed = parseKeyArg(key);
      if ("error" in parsed) throw invalid(parsed.error);
      let degraded: string | undefined;
      const chain = await causalChain(parsed.key, async (k) => {
        const read = await readModel.lookup(k);
        degraded ??= read.degraded;
        return read.status;
      });
      if (chain.length === 0) throw new ServerError(Status.NOT_FOUND, `no status for ${parsed.key}`);
      return { chain: chain.map((s) => ({ ...toProtoStatus(s), ...(degraded ? { degraded } : {}) })) };
    },

    async listKeys({ prefix, pageSize, pageToken }) {
      if (prefix.length > maxPrefixLength) throw invalid(`prefix is longer than ${maxPrefixLength} characters`);
      if (!Number.isInteger(pageSize) || pageSize < 0) throw invalid(`page_size must be 0 (default) or positive, got ${pageSize}`);
      let after: string | undefined;
      if (pageToken) {
        after = decodePageToken(pageToken);
        if (after === undefined || !after.startsWith(prefix)) throw invalid("page_token is not one this server issued for this prefix");
      }
      const limit = Math.min(pageSize || defaultPageSize, maxPageSize);
      const page = await readModel.list({ prefix, limit, ...(after ? { after } : {}) });
      return {
        keys: page.items.map(toProtoStatus),
        nextPageToken: page.next ? encodePageToken(page.next) : "",
        ...(page.degraded ? { degraded: page.degraded } : {}),
        freshness: freshness(),
      };
    },

    async queueStats() {
      return { ...toProtoQueueStats(await queue.stats()), freshness: freshness() };
    },

    async enqueue(request) {
      const parsed = fromProtoEnqueue(request, Date.now());
      if ("error" in parsed) throw invalid(parsed.error);
      if (!request.force && !inCatalog(parsed.request.key)) {
        throw new ServerError(Status.NOT_FOUND, `${parsed.request.key} is not in the catalog (force the enqueue to retire a key that left it)`);
      }
      return { outcome: await queue.enqueue(parsed.request) };
    },

    async *watchKeys(request, context) {
      const parsed = parseWatchRequest(request);
      if ("error" in parsed) throw invalid(parsed.error);
      try {
        const watch = feed.watch(parsed.filter, {
          ...(parsed.afterRevision !== undefined ? { afterRevision: parsed.afterRevision } : {}),
          signal: context.signal,
        });
        for await (const event of watch) yield toProtoWatchEvent(event);
      } catch (err) {
        if (!(err instanceof WatchEnded)) throw err;
        throw new ServerError(err.reason === "behind" ? Status.RESOURCE_EXHAUSTED : Status.UNAVAILABLE, err.message);
      }
    },

    async listDeadLetters({ limit }) {
      if (!Number.isInteger(limit) || limit < 0) throw invalid(`limit must be 0 (default) or positive, got ${limit}`);
      const n = Math.min(limit || defaultDeadLetterLimit, maxDeadLetterLimit);
      const all = await queue.deadLetters();
      return { deadLetters: all.slice(0, n).map(toProtoDeadLetter), total: String(all.length) };
    },

    async retryDeadLetter({ key }) {
      const parsed = parseKeyArg(key);
      if ("error" in parsed) throw invalid(parsed.error);
      if (await queue.retryDeadLetter(parsed.key)) return { retried: true };
      // A key Failed for good (an invalid request, or failures not yet dead-lettered) is retried
      // the same way: an operator's request, which starts its failure count afresh.
      if ((await readModel.lookup(parsed.key)).status?.phase !== "Failed")
        throw new ServerError(Status.NOT_FOUND, `${parsed.key} is neither in the dead letters nor Failed`);
      await queue.enqueue({ key: parsed.key, priority: "release", cause: { type: "manual", detail: "retried by an operator (it was Failed)" } });
      return { retried: true };
    },

    async listServices() {
      if (!opts.services) throw new ServerError(Status.FAILED_PRECONDITION, "this status API serves no service directory");
      return opts.services.list();
    },

    async knownFacts(request) {
      const parsed = parseKnownFactsRequest(request);
      if ("error" in parsed) throw invalid(parsed.error);
      const packages = await mapLimit(parsed.packages, knownFactsConcurrency, async (name) => {
        const [known, stored] = await Promise.all([releases.list(name), advisories.list(name)]);
        return toProtoPackageFacts(name, known, stored);
      });
      return { packages };
    },
  };

  const server = createServer({
    // Requests are small; the largest legitimate one, a KnownFacts of 1000 names of 128
    // characters, is about 131 KiB.
    "grpc.max_receive_message_length": 256 * 1024,
  });
  // Failures first, so that they also map what authorization throws unexpectedly.
  // Tracing outermost: its span sees the status code that failures and authorization settled on.
  server.with(tracingMiddleware()).with(failures).with(authMiddleware(security)).add(StatusServiceDefinition, implementation);
  const health = HealthState();
  server.add(HealthDefinition, HealthServiceImpl(health));
  const reflection = ServerReflection(descriptors, [statusServiceName, "grpc.health.v1.Health"]);
  server.add(ServerReflectionService, reflection);
  server.add(reflectionV1alpha, reflection);

  const setServing = (serving: boolean): void => {
    const s = serving ? "healthy" : "unhealthy";
    health.setStatus(s);
    health.setStatus(s, statusServiceName);
  };
  setServing(true);

  let port: number;
  try {
    port = await server.listen(opts.addr, credentials);
  } catch (err) {
    throw new Error(`status API cannot listen on ${opts.addr}: ${(err as Error).message}`);
  }
  const log = opts.log ?? { warn: (msg: string) => console.warn(msg) };
  for (const w of warnings) log.warn(w);

  let closed: Promise<void> | undefined;
  return {
    port,
    security: summary(security),
    setServing,
    close(graceMs = 5_000) {
      closed ??= new Promise<void>((resolve) => {
        setServing(false);
        // Watches never end by themselves either: end them now, so that their clients resume elsewhere or later.
        feed.close();
        // Health Watch streams never end by themselves: they are what the grace period cuts.
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        force.unref();
        void server.shutdown().then(() => {
          clearTimeout(force);
          resolve();
        });
      });
      return closed;
    },
  };
}

/** Page tokens are opaque to clients: the last key of the previous page, base64url-encoded. */
function encodePageToken(lastKey: string): string {
  return Buffer.from(lastKey, "utf8").toString("base64url");
}

function decodePageToken(token: string): string | undefined {
  if (!/^[A-Za-z0-9_-]{1,256}$/.test(token)) return undefined;
  const lastKey = Buffer.from(token, "base64url").toString("utf8");
  return "key" in parseKeyArg(lastKey) ? lastKey : undefined;
}

/** A read model's freshness as the proto says it, its age at `now`. */
function toProtoFreshness(f: Freshness, now: number): ReadModelFreshness {
  return {
    region: f.region,
    observedRevision: String(f.observedRevision),
    ...(f.currentAsOf === undefined ? {} : { currentAsOf: new Date(f.currentAsOf).toISOString(), ageMs: String(Math.max(0, now - f.currentAsOf)) }),
  };
}
