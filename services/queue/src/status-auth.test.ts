/**
 * The status API's protection, through the real server (own prefix on the real NATS and Redis)
 * and real clients: bearer tokens and roles, TLS and mTLS with a throwaway CA made here with
 * openssl, the refusal to start insecure beyond loopback, and the health and reflection
 * services, which answer without a token. Reflection is asked with a plain grpc-js stream and
 * its answers decoded with @bufbuild/protobuf's own descriptor types, not the server's code.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { service as healthService } from "grpc-health-check";
import { AdvisoryStore, ReleaseStore } from "@homeostat/catalog";
import type { StatusApiSecurity } from "@homeostat/core/config";
import type { Logger } from "@homeostat/core/log";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import {
  enqueueKey,
  getKeyStatus,
  grpc,
  listServices,
  retryDeadLetter,
  approveProposal,
  rejectProposal,
  answerQuestion,
  Status,
  statusClient,
  type StatusClientOptions,
  statusServiceName,
  tokenDigest,
} from "@homeostat/status-api";
import { makePki, type Pki } from "../../../test/fixtures/pki.ts";
import { testEnv, type TestEnv } from "../../../test/harness.ts";
import { StatusReadModel } from "./read-model.ts";
import { startStatusApi, type StatusApi, type StatusApiOptions } from "./status-api.ts";
import { KeyFeed } from "./key-feed.ts";
import { checkBind, InsecureBindError } from "./status-auth.ts";
import { ServiceDirectory } from "./service-directory.ts";
import { grpcError } from "./test-support.ts";

const quiet: Logger = { info() {}, warn() {}, error() {} };
const writeToken = "auth-test-write";
const readToken = "auth-test-read";
const tokens = [
  { name: "operator", role: "write" as const, sha256: tokenDigest(writeToken) },
  { name: "dashboard", role: "read" as const, sha256: tokenDigest(readToken) },
];

let t: TestEnv;
let base: Omit<StatusApiOptions, "addr" | "security">;
let pki: Pki;
const started: StatusApi[] = [];

before(async () => {
  t = await testEnv();
  pki = makePki(path.join(t.dir, "pki"));
  const readModel = new StatusReadModel(t.redis, t.nats.topology);
  await readModel.put({ key: "package/zlib", phase: "Ready", attempts: 0, updatedAt: "2026-11-22T08:00:00.000Z" });
  base = {
    readModel,
    queue: new WorkQueue(t.nats, workQueueOptions(t.config, { log: quiet, owner: "auth-test" })),
    releases: new ReleaseStore(t.buckets.releases),
    advisories: await AdvisoryStore.open(t.nats),
    inCatalog: () => true,
    feed: new KeyFeed(),
    onError: () => {},
    log: quiet,
  };
});

after(async () => {
  await Promise.all(started.map((api) => api.close(100)));
  await t?.cleanup();
});

async function serve(security: Partial<StatusApiSecurity>): Promise<string> {
  const api = await startStatusApi({ ...base, addr: "127.0.0.1:0", security: { tls: undefined, tokens, readAuth: "none", insecure: false, ...security } });
  started.push(api);
  return `127.0.0.1:${api.port}`;
}

/** Runs `call` with a client of `addr` made with `opts`, closing it afterwards. */
async function withClient<T>(addr: string, opts: StatusClientOptions, call: (c: ReturnType<typeof statusClient>) => Promise<T>): Promise<T> {
  const client = statusClient(addr, opts);
  try {
    return await call(client);
  } finally {
    client.close();
  }
}

test("a write without a token is UNAUTHENTICATED, with a read token PERMISSION_DENIED, with a write token done", async () => {
  const addr = await serve({});
  let err = await withClient(addr, {}, (c) => grpcError(enqueueKey(c, { key: "package/zlib" })));
  assert.equal(err.code, Status.UNAUTHENTICATED);
  assert.match(err.details, /^Enqueue needs a bearer token with the write role: send authorization: Bearer <token>$/);

  err = await withClient(addr, { token: "not-a-token-we-know" }, (c) => grpcError(enqueueKey(c, { key: "package/zlib" })));
  assert.equal(err.code, Status.UNAUTHENTICATED);
  assert.equal(err.details, "the bearer token is not valid here");

  for (const call of [
    (c: ReturnType<typeof statusClient>) => enqueueKey(c, { key: "package/zlib" }),
    (c: ReturnType<typeof statusClient>) => retryDeadLetter(c, "package/zlib"),
    (c: ReturnType<typeof statusClient>) => approveProposal(c, "package-zlib-0123", undefined),
    (c: ReturnType<typeof statusClient>) => rejectProposal(c, "package-zlib-0123", "no"),
    (c: ReturnType<typeof statusClient>) => answerQuestion(c, "package/zlib", "yes"),
  ]) {
    err = await withClient(addr, { token: readToken }, (c) => grpcError(call(c)));
    assert.equal(err.code, Status.PERMISSION_DENIED);
    assert.match(err.details, /needs the write role; token dashboard has the read role$/);
  }
  assert.equal((await base.queue.stats()).depth.release, 0, "nothing queued by a refused call");

  assert.equal(await withClient(addr, { token: writeToken }, (c) => enqueueKey(c, { key: "package/zlib" })), "added");
  // The write role reads too, and past the check the method answers as ever.
  const notDead = await withClient(addr, { token: writeToken }, (c) => grpcError(retryDeadLetter(c, "package/zlib")));
  assert.equal(notDead.code, Status.NOT_FOUND);
});

test("reads: anonymous with read auth none; with read auth token only with a token of either role", async () => {
  const open = await serve({ readAuth: "none" });
  assert.equal((await withClient(open, {}, (c) => getKeyStatus(c, "package/zlib"))).phase, "Ready");

  const closed = await serve({ readAuth: "token" });
  const err = await withClient(closed, {}, (c) => grpcError(getKeyStatus(c, "package/zlib")));
  assert.equal(err.code, Status.UNAUTHENTICATED);
  assert.match(err.details, /^GetKey needs a bearer token: send authorization: Bearer <token>$/);
  for (const token of [readToken, writeToken]) {
    assert.equal((await withClient(closed, { token }, (c) => getKeyStatus(c, "package/zlib"))).phase, "Ready", token);
  }
});

test("ListServices is a read: anonymous with read auth none, a token of either role with read auth token", async () => {
  const services = new ServiceDirectory(await t.nats.kvm.open(t.nats.topology.bucket("services")), { staleAfterMs: 15_000, log: quiet });
  const serveWith = async (readAuth: StatusApiSecurity["readAuth"]) => {
    const api = await startStatusApi({ ...base, services, addr: "127.0.0.1:0", security: { tls: undefined, tokens, readAuth, insecure: false } });
    started.push(api);
    return `127.0.0.1:${api.port}`;
  };
  assert.deepEqual((await withClient(await serveWith("none"), {}, (c) => listServices(c))).staleAfterMs, 15_000);
  const closed = await serveWith("token");
  const err = await withClient(closed, {}, (c) => grpcError(listServices(c)));
  assert.equal(err.code, Status.UNAUTHENTICATED);
  assert.match(err.details, /^ListServices needs a bearer token: send authorization: Bearer <token>$/);
  for (const token of [readToken, writeToken]) assert.ok(Array.isArray((await withClient(closed, { token }, (c) => listServices(c))).instances), token);
});

test("with no token configured every write is refused, even on loopback", async () => {
  const addr = await serve({ tokens: [] });
  const err = await withClient(addr, { token: writeToken }, (c) => grpcError(enqueueKey(c, { key: "package/zlib" })));
  assert.equal(err.code, Status.UNAUTHENTICATED);
  assert.match(err.details, /this server has none configured \(HOMEOSTAT_GRPC_TOKENS\)/);
});

test("TLS: a TLS client trusting the CA is served, a plaintext one is not", async () => {
  const addr = await serve({ tls: { certPath: pki.serverCert, keyPath: pki.serverKey, clientCaPath: undefined } });
  const ca = await import("node:fs/promises").then((fs) => fs.readFile(pki.ca));
  assert.equal((await withClient(addr, { tls: { ca }, token: writeToken }, (c) => getKeyStatus(c, "package/zlib"))).phase, "Ready");
  const plain = await withClient(addr, {}, (c) => grpcError(getKeyStatus(c, "package/zlib", { deadlineMs: 3_000 })));
  assert.ok(plain.code === Status.UNAVAILABLE || plain.code === Status.DEADLINE_EXCEEDED, Status[plain.code]);
  // A client that trusts only the system's roots does not trust this server.
  const untrusted = await withClient(addr, { tls: {} }, (c) => grpcError(getKeyStatus(c, "package/zlib", { deadlineMs: 3_000 })));
  assert.equal(untrusted.code, Status.UNAVAILABLE);
});

test("mTLS: a client without a certificate, or with one from another CA, is refused in the handshake", async () => {
  const addr = await serve({ tls: { certPath: pki.serverCert, keyPath: pki.serverKey, clientCaPath: pki.ca } });
  const fs = await import("node:fs/promises");
  const ca = await fs.readFile(pki.ca);
  const none = await withClient(addr, { tls: { ca } }, (c) => grpcError(getKeyStatus(c, "package/zlib", { deadlineMs: 3_000 })));
  assert.equal(none.code, Status.UNAVAILABLE);
  const other = { ca, cert: await fs.readFile(pki.otherCert), key: await fs.readFile(pki.otherKey) };
  assert.equal((await withClient(addr, { tls: other }, (c) => grpcError(getKeyStatus(c, "package/zlib", { deadlineMs: 3_000 })))).code, Status.UNAVAILABLE);
  const good = { ca, cert: await fs.readFile(pki.clientCert), key: await fs.readFile(pki.clientKey) };
  assert.equal((await withClient(addr, { tls: good }, (c) => getKeyStatus(c, "package/zlib"))).phase, "Ready");
});

test("beyond loopback the server refuses to start without TLS and tokens, unless told it is insecure", async () => {
  const tls = { certPath: pki.serverCert, keyPath: pki.serverKey, clientCaPath: undefined };
  // Refused before binding: nothing listens beyond loopback in this test.
  for (const [security, missing] of [
    [{ tls: undefined, tokens }, /without TLS \(HOMEOSTAT_GRPC_TLS_CERT and HOMEOSTAT_GRPC_TLS_KEY\);/],
    [{ tls, tokens: [] }, /without tokens \(HOMEOSTAT_GRPC_TOKENS\);/],
    [{ tls: undefined, tokens: [] }, /without TLS .* and tokens/],
  ] as const) {
    await assert.rejects(
      startStatusApi({ ...base, addr: "0.0.0.0:0", security: { readAuth: "token", insecure: false, ...security, tokens: [...security.tokens] } }),
      (err: Error) => err instanceof InsecureBindError && missing.test(err.message) && /HOMEOSTAT_GRPC_INSECURE=true/.test(err.message),
    );
  }
  const secure: StatusApiSecurity = { tls, tokens, readAuth: "token", insecure: false };
  assert.deepEqual(checkBind("10.0.0.5:50051", secure), []);
  assert.deepEqual(checkBind("[::1]:50051", { ...secure, tls: undefined, tokens: [] }), [], "loopback needs neither");
  const warnings = checkBind("0.0.0.0:50051", { tls: undefined, tokens: [], readAuth: "none", insecure: true });
  assert.equal(warnings.length, 2);
  assert.match(warnings[0]!, /^INSECURE: HOMEOSTAT_GRPC_INSECURE=true: the status API listens on 0\.0\.0\.0:50051 without TLS/);
  assert.match(warnings[1]!, /HOMEOSTAT_GRPC_READ_AUTH=none/);
});

test("the client will not send a token in plaintext beyond loopback unless told it is insecure", () => {
  assert.throws(() => statusClient("10.0.0.5:50051", { token: writeToken }), /refusing to send a token in plaintext to 10\.0\.0\.5:50051/);
  statusClient("10.0.0.5:50051", { token: writeToken, insecure: true }).close();
  statusClient("10.0.0.5:50051", { token: writeToken, tls: {} }).close();
});

/* ---------------------------------------------------------------- health and reflection */

/** One request on a reflection stream (v1 or v1alpha: the same messages), answered as raw bytes. */
function reflect(addr: string, version: "v1" | "v1alpha", request: Uint8Array): Promise<Uint8Array> {
  const raw = new grpc.Client(addr, grpc.credentials.createInsecure());
  return new Promise<Uint8Array>((resolve, reject) => {
    const call = raw.makeBidiStreamRequest(
      `/grpc.reflection.${version}.ServerReflection/ServerReflectionInfo`,
      (b: Uint8Array) => Buffer.from(b),
      (b: Buffer) => new Uint8Array(b),
    );
    call.on("data", (res: Uint8Array) => {
      resolve(res);
      call.end();
    });
    call.on("error", reject);
    call.write(request);
  }).finally(() => raw.close());
}

/** The length-delimited fields of a message, by number (what reflection answers with). */
function fields(bytes: Uint8Array): Map<number, Uint8Array[]> {
  const out = new Map<number, Uint8Array[]>();
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, type] = r.tag();
    if (type !== 2) {
      r.skip(type);
      continue;
    }
    out.set(no, [...(out.get(no) ?? []), r.bytes()]);
  }
  return out;
}

test("reflection (v1 and v1alpha) lists StatusService and the health service and describes their methods, without a token", async () => {
  const addr = await serve({ readAuth: "token" });
  for (const version of ["v1", "v1alpha"] as const) {
    // ServerReflectionRequest.list_services = 7
    const listed = fields(
      await reflect(
        addr,
        version,
        new BinaryWriter()
          .uint32((7 << 3) | 2)
          .string("")
          .finish(),
      ),
    );
    // ServerReflectionResponse.list_services_response = 6, ListServiceResponse.service = 1, ServiceResponse.name = 1
    const names = (listed.get(6) ?? []).flatMap((list) => fields(list).get(1) ?? []).map((s) => new TextDecoder().decode(fields(s).get(1)![0]));
    assert.deepEqual(names, [statusServiceName, "grpc.health.v1.Health"], version);

    // ServerReflectionRequest.file_containing_symbol = 4; the answer's file_descriptor_response = 4, file_descriptor_proto = 1
    const file = fields(
      await reflect(
        addr,
        version,
        new BinaryWriter()
          .uint32((4 << 3) | 2)
          .string(statusServiceName)
          .finish(),
      ),
    );
    const [descriptor] = fields(file.get(4)![0]!).get(1)!;
    const proto = fromBinary(FileDescriptorProtoSchema, descriptor!);
    assert.equal(proto.package, "homeostat.v1");
    const methods = proto.service.find((s) => s.name === "StatusService")?.method.map((m) => m.name);
    assert.deepEqual(
      methods,
      [
        "GetKey",
        "Why",
        "ListKeys",
        "QueueStats",
        "Enqueue",
        "ListDeadLetters",
        "RetryDeadLetter",
        "WatchKeys",
        "KnownFacts",
        "ListServices",
        "ListProposals",
        "GetProposal",
        "ApproveProposal",
        "RejectProposal",
        "AnswerQuestion",
      ],
      version,
    );
  }
});

test("health answers without a token, even when reads need one", async () => {
  const addr = await serve({ readAuth: "token" });
  const Health = grpc.makeGenericClientConstructor(healthService, "Health");
  const health = new Health(addr, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check(req: { service: string }, cb: (err: grpc.ServiceError | null, res?: { status: string }) => void): void;
  };
  try {
    const status = await new Promise<string>((resolve, reject) =>
      health.check({ service: statusServiceName }, (err, res) => (err ? reject(err) : resolve(res!.status))),
    );
    assert.equal(status, "SERVING");
  } finally {
    health.close();
  }
});
