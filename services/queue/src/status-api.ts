/**
 * Status API: the gRPC StatusService (proto/homeostat/v1/status.proto) over the Redis read
 * model, plus the standard grpc.health.v1 Health service.
 *
 * Reads only: the read model is kept current by the projector (state.ts), so serving never
 * touches JetStream. Every request is validated here and every failure becomes a gRPC status
 * with a message; nothing a client sends can take the server down.
 */
import { HealthImplementation, type ServingStatus } from "grpc-health-check";
import { grpc, statusServiceDefinition, statusServiceName, toProtoStatus, parseKeyArg, defaultPageSize, maxPageSize, type StatusServiceHandlers } from "@homeostat/core/grpc";
import type { StatusReadModel } from "@homeostat/core/state";

export type StatusApiOptions = {
  /** host:port to listen on; port 0 picks a free one (see `port`). */
  addr: string;
  readModel: StatusReadModel;
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

export async function startStatusApi(opts: StatusApiOptions): Promise<StatusApi> {
  const { readModel } = opts;
  const onError = opts.onError ?? ((err, method) => console.error(`status-api: ${method} failed:`, err));

  const fail = (callback: (e: Partial<grpc.StatusObject>) => void, method: string, err: unknown): void => {
    onError(err, method);
    const message = err instanceof Error ? err.message : String(err);
    // A stored status that does not parse, or a bug of ours: INTERNAL. Anything else comes
    // from Redis (down, unreachable, timing out): UNAVAILABLE, which clients may retry.
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
  };

  const server = new grpc.Server({
    // Requests are tiny; nothing legitimate needs more.
    "grpc.max_receive_message_length": 64 * 1024,
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
