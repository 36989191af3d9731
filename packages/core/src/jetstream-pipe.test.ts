/**
 * The lean JetStream pipe against a real nats-server of its own: stream acks, refusals with their
 * API code (thrown or returned), direct gets, deletes by sequence, confirmed acks, no responders,
 * a timeout that fires within a bounded wait, and what a closed connection or pipe does to
 * pending and new requests.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  AckPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
} from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { isMessageGone, isStoreFailed, JetStreamErrorCode } from "./jetstream-errors.ts";
import { JetStreamPipe, JetStreamPipeError } from "./jetstream-pipe.ts";
import { startTestNatsServer, type TestNatsServer } from "./test-nats-server.ts";

const STREAM = "PIPE";
let server: TestNatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let pipe: JetStreamPipe;

before(async () => {
  server = await startTestNatsServer();
  nc = await connect({ servers: server.url });
  jsm = await jetstreamManager(nc);
  // The work stream's shape: one message per subject, a second one refused.
  await jsm.streams.add({
    name: STREAM,
    subjects: ["pipe.>"],
    retention: RetentionPolicy.Limits,
    storage: StorageType.Memory,
    max_msgs_per_subject: 1,
    discard: DiscardPolicy.New,
    discard_new_per_subject: true,
    allow_direct: true,
  });
  pipe = new JetStreamPipe(nc, 300);
});
after(async () => {
  pipe?.close();
  await nc?.close();
  await server?.stop();
});

test("a publish resolves with the stream's ack once the message is stored", async () => {
  const ack = await pipe.publish("pipe.stored", "one");
  assert.equal(ack.stream, STREAM);
  assert.equal(ack.duplicate, false);
  const stored = await jsm.streams.getMessage(STREAM, { seq: ack.seq });
  assert.equal(stored?.string(), "one");
});

test("a refused publish rejects with the server's API error and its code; tryPublish returns it", async () => {
  await pipe.publish("pipe.full", "first");
  const err = await pipe.publish("pipe.full", "second").then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof JetStreamApiError, String(err));
  assert.equal(err.code, JetStreamErrorCode.StoreFailed);
  assert.equal(isStoreFailed(err), true);
  const answer = await pipe.tryPublish("pipe.full", "third");
  assert.ok("refused" in answer);
  assert.equal(answer.refused.err_code, JetStreamErrorCode.StoreFailed);
  assert.equal((await pipe.lastBySubject(STREAM, "pipe.full"))?.data.length, "first".length, "the first message stays");
});

test("a compare-and-set on the subject's last sequence is refused with WrongLastSequence", async () => {
  const expecting = (seq: number) => {
    const h = headers();
    h.set("Nats-Expected-Last-Subject-Sequence", String(seq));
    return h;
  };
  const refused = await pipe.tryPublish("pipe.cas", "v", expecting(5));
  assert.ok("refused" in refused);
  assert.equal(refused.refused.err_code, JetStreamErrorCode.WrongLastSequence);
  const created = await pipe.tryPublish("pipe.cas", "v", expecting(0));
  assert.ok(!("refused" in created), "0: only if the subject has none");
});

test("direct get: the last message of a subject with its sequence, or undefined", async () => {
  const { seq } = await pipe.publish("pipe.read", "hello");
  const m = await pipe.lastBySubject(STREAM, "pipe.read");
  assert.equal(m?.seq, seq);
  assert.equal(new TextDecoder().decode(m?.data), "hello");
  assert.equal(await pipe.lastBySubject(STREAM, "pipe.nothing-here"), undefined);
});

test("delete by sequence: true once, then false (gone); an API error carries its code", async () => {
  const { seq } = await pipe.publish("pipe.delete", "x");
  assert.equal(await pipe.deleteMessage(STREAM, seq), true);
  assert.equal(await pipe.deleteMessage(STREAM, seq), false);
  assert.equal(await pipe.lastBySubject(STREAM, "pipe.delete"), undefined);
  const err = await pipe.api("$JS.API.STREAM.MSG.DELETE.NO_SUCH_STREAM", { seq: 1 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof JetStreamApiError, String(err));
  assert.equal(err.code, JetStreamApiCodes.StreamNotFound);
  assert.equal(isMessageGone(err), false);
});

test("a confirmed ack: once it resolves, the message is gone from a WorkQueue stream", async () => {
  await jsm.streams.add({ name: "PIPEWQ", subjects: ["wq.>"], retention: RetentionPolicy.Workqueue, storage: StorageType.Memory, allow_direct: true });
  await jsm.consumers.add("PIPEWQ", { durable_name: "worker", ack_policy: AckPolicy.Explicit });
  await pipe.publish("wq.key", "work");
  const consumer = await jetstream(nc).consumers.get("PIPEWQ", "worker");
  const msg = await consumer.next({ expires: 2_000 });
  assert.ok(msg, "a message was delivered");
  // The fast path's ack subject: if a client upgrade stops carrying it, acks fall back to the
  // slower public ackAck(); this says so.
  assert.match(String(Reflect.get(msg, "reply")), /^\$JS\.ACK\.PIPEWQ\.worker\./);
  await pipe.ackConfirmed(msg);
  assert.equal(await pipe.lastBySubject("PIPEWQ", "wq.key"), undefined);
  assert.equal((await jsm.consumers.info("PIPEWQ", "worker")).num_ack_pending, 0);
});

test("a publish where no stream listens rejects at once with no responders (503)", async () => {
  const t0 = Date.now();
  const err = await pipe.publish("nowhere.at.all", "x").then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof JetStreamPipeError, String(err));
  assert.equal(err.code, 503);
  assert.ok(Date.now() - t0 < 1_000);
});

test("a request nobody answers times out (408) within the timeout plus one sweep", async () => {
  const silent = nc.subscribe("silent.>", { callback: () => {} });
  try {
    const t0 = Date.now();
    const err = await pipe.publish("silent.one", "x").then(
      () => undefined,
      (e: unknown) => e,
    );
    const waited = Date.now() - t0;
    assert.ok(err instanceof JetStreamPipeError, String(err));
    assert.equal(err.code, 408);
    assert.ok(waited >= 300 && waited < 300 + 500 + 400, `timed out after ${waited} ms`);
  } finally {
    silent.unsubscribe();
  }
});

test("a closed connection fails pending requests at once and refuses new ones", async () => {
  const own = await connect({ servers: server.url });
  const ownPipe = new JetStreamPipe(own, 10_000);
  const silent = own.subscribe("hush.>", { callback: () => {} });
  try {
    assert.equal((await ownPipe.publish("pipe.before-close", "x")).stream, STREAM);
    const pending = ownPipe.publish("hush.one", "x").then(
      () => undefined,
      (e: unknown) => e,
    );
    const t0 = Date.now();
    await own.close();
    const err = await pending;
    assert.ok(err instanceof JetStreamPipeError, String(err));
    assert.match(err.message, /closed/);
    assert.ok(Date.now() - t0 < 2_000, "failed at the close, not at its timeout");
    await assert.rejects(ownPipe.publish("pipe.after-close", "x"));
  } finally {
    silent.unsubscribe();
    ownPipe.close();
    await own.close();
  }
});

test("closing the pipe fails what it still waits for", async () => {
  const own = new JetStreamPipe(nc, 10_000);
  const silent = nc.subscribe("mute.>", { callback: () => {} });
  try {
    const pending = own.publish("mute.one", "x").then(
      () => undefined,
      (e: unknown) => e,
    );
    await new Promise((r) => setTimeout(r, 50));
    own.close();
    const err = await pending;
    assert.ok(err instanceof JetStreamPipeError, String(err));
    assert.match(err.message, /pipe is closed/);
  } finally {
    silent.unsubscribe();
  }
});
