/**
 * Status API: the gRPC StatusService (proto/homeostat/v1/status.proto) over the Redis read
 * model, the work queue and the known releases and advisories, plus the standard
 * grpc.health.v1 Health service.
 *
 * GetKey, Why and ListKeys only read Redis: the read model is kept current by the projector
 * (state.ts), so serving them never touches JetStream. The queue RPCs go to the WorkQueue, the
 * same library every worker uses, so an enqueue here obeys exactly the merge rules of any
 * other. KnownFacts reads the release and advisory stores the reconciler reads, so a plan
 * made with its answer decides with the reconciler's facts. Every request is validated here
 * and every failure becomes a gRPC status with a message; nothing a client sends can take the
 * server down.
 */
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import { causalChain, defaultDeadLetterLimit, defaultPageSize, fromProtoEnqueue, grpc, maxDeadLetterLimit, maxPageSize, parseKeyArg, parseKnownFactsRequest, statusServiceDefinition, type StatusServiceHandlers, statusServiceName, toProtoDeadLetter, toProtoPackageFacts, toProtoQueueStats, toProtoStatus } from "@homeostat/status-api";
import type { AdvisoryStore, ReleaseStore } from "@homeostat/catalog";
import { mapLimit } from "@homeostat/core/map-limit";
import type { StatusReadModel } from "./read-model.ts";
import type { WorkQueue } from "@homeostat/workqueue";

/** The WorkQueue methods the queue RPCs serve. */
export type QueueApi = Pick<WorkQueue, "stats" | "enqueue" | "deadLetters" | "retryDeadLetter">;

export type StatusApiOptions = {
  /** host:port to listen on; port 0 picks a free one (see `port`). */
  addr: string;
  readModel: StatusReadModel;
  queue: QueueApi;
  /** The known releases and stored advisories KnownFacts answers with. */
  releases: Pick<ReleaseStore, "list">;
  advisories: Pick<AdvisoryStore, "list">;
  /** Where unexpected errors are reported (default: console.error). */
  onError?: (err: unknown, method: string) => void;
};

export type StatusApi = {
  /** The bound port. */
  port: number;
  /** Marks the whole server (and StatusService) SERVING or NOT_SERVING for health checks. */
  setServing(serving: boolean): void;
  /** Stops accepting calls, lets running ones finish (up to `graceMs`), then closes. */
  close(graceMs?: number): Promise<void>;
};

/** Longest prefix a ListKeys request may carry (keys are at most 6 + 1 + 128 characters). */
const maxPrefixLength = 256;

/** Packages a KnownFacts call reads at once: each read lists KV keys, and a thousand at once would flood NATS. */
const knownFactsConcurrency = 16;

export async function startStatusApi(opts: StatusApiOptions): Promise<StatusApi> {
  const { readModel, queue, releases, advisories } = opts;
  const onError = opts.onError ?? ((err, method) => console.error(`status-api: ${method} failed:`, err));

  const fail = (callback: (e: Partial<grpc.StatusObject>) => void, method: string, err: unknown): void => {
    onError(err, method);
    const message = err instanceof Error ? err.message : String(err);
    // A stored status that does not parse, or a bug of ours: INTERNAL. Anything else comes
    // from Redis or NATS (down, unreachable, timing out): UNAVAILABLE, which clients may retry.
    const internal = err instanceof TypeError || err instanceof RangeError || err instanceof SyntaxError || (err as Error)?.name === "ZodError";
    const code = internal ? grpc.status.INTERNAL : grpc.status.UNAVAILABLE;
    callback({ code, details: `${method}: ${message}` });
  };

  const handlers: StatusServiceHandlers = {
    GetKey(call, callback) {
      const parsed = parseKeyArg(call.request.key);
      if ("error" in parsed) return callback({ code: grpc.status.INVALID_ARGUMENT, details: parsed.error });
      readModel.get(parsed.key).then(
        (status) => {
          if (!status) return callback({ code: grpc.status.NOT_FOUND, details: `no status for ${parsed.key}` });
          callback(null, toProtoStatus(status));
        },
        (err: unknown) => fail(callback, "GetKey", err),
      );
    },

    Why(call, callback) {
      const parsed = parseKeyArg(call.request.key);
      if ("error" in parsed) return callback({ code: grpc.status.INVALID_ARGUMENT, details: parsed.error });
      causalChain(parsed.key, (k) => readModel.get(k)).then(
        (chain) => {
          if (chain.length === 0) return callback({ code: grpc.status.NOT_FOUND, details: `no status for ${parsed.key}` });
          callback(null, { chain: chain.map(toProtoStatus) });
        },
        (err: unknown) => fail(callback, "Why", err),
      );
    },

    ListKeys(call, callback) {
      const { prefix, pageSize, pageToken } = call.request;
      if (prefix.length > maxPrefixLength) {
        return callback({ code: grpc.status.INVALID_ARGUMENT, details: `prefix is longer than ${maxPrefixLength} characters` });
      }
      if (!Number.isInteger(pageSize) || pageSize < 0) {
        return callback({ code: grpc.status.INVALID_ARGUMENT, details: `page_size must be 0 (default) or positive, got ${pageSize}` });
      }
      let after: string | undefined;
      if (pageToken) {
        after = decodePageToken(pageToken);
        if (after === undefined || !after.startsWith(prefix)) {
          return callback({ code: grpc.status.INVALID_ARGUMENT, details: "page_token is not one this server issued for this prefix" });
        }
      }
      const limit = Math.min(pageSize || defaultPageSize, maxPageSize);
      readModel.list({ prefix, limit, ...(after ? { after } : {}) }).then(
        (page) => callback(null, { keys: page.items.map(toProtoStatus), nextPageToken: page.next ? encodePageToken(page.next) : "" }),
        (err: unknown) => fail(callback, "ListKeys", err),
      );
    },

    QueueStats(_call, callback) {
      queue.stats().then(
        (stats) => callback(null, toProtoQueueStats(stats)),
        (err: unknown) => fail(callback, "QueueStats", err),
      );
    },

    Enqueue(call, callback) {
      const parsed = fromProtoEnqueue(call.request, Date.now());
      if ("error" in parsed) return callback({ code: grpc.status.INVALID_ARGUMENT, details: parsed.error });
      queue.enqueue(parsed.request).then(
        (outcome) => callback(null, { outcome }),
        (err: unknown) => fail(callback, "Enqueue", err),
      );
    },

    ListDeadLetters(call, callback) {
      const { limit } = call.request;
      if (!Number.isInteger(limit) || limit < 0) {
        return callback({ code: grpc.status.INVALID_ARGUMENT, details: `limit must be 0 (default) or positive, got ${limit}` });
      }
      const n = Math.min(limit || defaultDeadLetterLimit, maxDeadLetterLimit);
      queue.deadLetters().then(
        (all) => callback(null, { deadLetters: all.slice(0, n).map(toProtoDeadLetter), total: all.length }),
        (err: unknown) => fail(callback, "ListDeadLetters", err),
      );
    },

    RetryDeadLetter(call, callback) {
      const parsed = parseKeyArg(call.request.key);
      if ("error" in parsed) return callback({ code: grpc.status.INVALID_ARGUMENT, details: parsed.error });
      queue.retryDeadLetter(parsed.key).then(
        (retried) => {
          if (!retried) return callback({ code: grpc.status.NOT_FOUND, details: `${parsed.key} is not in the dead letters` });
          callback(null, { retried });
        },
        (err: unknown) => fail(callback, "RetryDeadLetter", err),
      );
    },

    KnownFacts(call, callback) {
      const parsed = parseKnownFactsRequest(call.request);
      if ("error" in parsed) return callback({ code: grpc.status.INVALID_ARGUMENT, details: parsed.error });
      mapLimit(parsed.packages, knownFactsConcurrency, async (name) => {
        const [known, stored] = await Promise.all([releases.list(name), advisories.list(name)]);
        return toProtoPackageFacts(name, known, stored);
      }).then(
        (packages) => callback(null, { packages }),
        (err: unknown) => fail(callback, "KnownFacts", err),
      );
    },
  };

  const server = new grpc.Server({
    // Requests are small; the largest legitimate one, a KnownFacts of 1000 names of 128
    // characters, is about 131 KiB.
    "grpc.max_receive_message_length": 256 * 1024,
  });
  server.addService(statusServiceDefinition, handlers);
  const health = new HealthImplementation({ "": "SERVING", [statusServiceName]: "SERVING" });
  health.addToServer(server);

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(opts.addr, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(new Error(`status API cannot listen on ${opts.addr}: ${err.message}`)) : resolve(p)));
  });

  const setServing = (serving: boolean): void => {
    const s: ServingStatus = serving ? "SERVING" : "NOT_SERVING";
    health.setStatus("", s);
    health.setStatus(statusServiceName, s);
  };

  let closed: Promise<void> | undefined;
  return {
    port,
    setServing,
    close(graceMs = 5_000) {
      closed ??= new Promise<void>((resolve) => {
        setServing(false);
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        force.unref();
        server.tryShutdown(() => {
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

