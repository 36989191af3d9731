/**
 * Accept: one write per event, the record in the events stream, which is the audit entry, the
 * idempotency record (one message per event subject, a second refused by the server) and the
 * intake of the event's keys — against a real JetStream. Covers repeats across a restart,
 * concurrent deliveries, a failed write, and the lean JetStream pipe's answers (ack, API
 * error, no responders).
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { EventLedger, eventId, makeKey, type EventRecord } from "@homeostat/core";
import { Acceptor, pipedLedger, type IncomingEvent } from "./accept.ts";
import { JetStreamPipe, JetStreamPipeError } from "@homeostat/core";
import { ingestTestEnv, TOKEN, type IngestTestEnv } from "../../../test/fixtures/ingest-env.ts";

let env: IngestTestEnv;
let pipe: JetStreamPipe;
let ledger: EventLedger;
before(async () => {
  env = await ingestTestEnv();
  pipe = new JetStreamPipe(env.t.nats.nc, 1_000);
  ledger = env.acceptor.ledger;
});
after(async () => {
  pipe.close();
  await env.cleanup();
});

const event = (ref: string, names = ["pkg001", "pkg002"]): IncomingEvent => ({
  source: "github",
  ref,
  summary: `test ${ref}`,
  keys: names.map((n) => makeKey("package", n)),
  priority: "release",
  cause: "release",
});
const intakeFor = async (id: string) => (await env.intake()).filter((r) => r.cause.id === id);
const eventsStored = async () => (await env.t.nats.jsm.streams.info(ledger.stream)).state.messages;

test("the events stream keeps one record per event and refuses a second (restart-proof idempotency)", async () => {
  const info = await env.t.nats.jsm.streams.info(ledger.stream);
  assert.equal(info.config.max_msgs_per_subject, 1);
  assert.equal(info.config.discard, "new");
  assert.equal(info.config.discard_new_per_subject, true);

  const first = await env.acceptor.accept(event("delivery-restart"));
  assert.equal(first.duplicate, false);
  assert.deepEqual(first.keys, ["package/pkg001", "package/pkg002"]);
  const stored = await eventsStored();
  // A restarted ingest has no memory of its own: only the record in NATS says "seen".
  await env.restart();
  const again = await env.acceptor.accept(event("delivery-restart"));
  assert.deepEqual(again, { event: first.event, duplicate: true, keys: [] });
  assert.equal(await eventsStored(), stored);
  // The record is the intake: it carries what admission enqueues, once per key.
  assert.deepEqual(
    (await intakeFor(first.event)).map(({ at: _, ...r }) => r),
    ["package/pkg001", "package/pkg002"].map((key) => ({
      v: 1,
      key,
      priority: "release",
      cause: { type: "release", id: first.event, detail: "test delivery-restart" },
    })),
  );
  // The core ledger and the lean path agree, and the record reads back by id.
  const rec = (await ledger.get(first.event))!;
  assert.deepEqual([rec.keys, rec.priority, rec.causeType], [["package/pkg001", "package/pkg002"], "release", "release"]);
  assert.equal(await ledger.record(rec), "duplicate");
  assert.equal(await pipedLedger(ledger, pipe).record(rec), "duplicate");
});

test("concurrent deliveries of one event: one is accepted, the rest are duplicates, each key handed over once", async () => {
  const results = await Promise.all(Array.from({ length: 8 }, () => env.acceptor.accept(event("delivery-concurrent", ["pkg003"]))));
  assert.equal(results.filter((r) => !r.duplicate).length, 1);
  assert.ok(
    results.filter((r) => r.duplicate).every((r) => r.keys.length === 0),
    "a duplicate answers no keys",
  );
  assert.equal((await intakeFor(results[0]!.event)).length, 1);
});

test("a failed write answers an error and leaves nothing — no record, no keys — so the redelivery does the event", async () => {
  const failing = new Acceptor(ledger, {
    record: async () => {
      throw new JetStreamPipeError("no responders", 503);
    },
  });
  const id = eventId("github", "delivery-write-fails");
  await assert.rejects(failing.accept(event("delivery-write-fails", ["pkg004", "pkg005"])));
  assert.equal(await ledger.get(id), undefined, "not marked handled");
  assert.equal((await intakeFor(id)).length, 0, "no key without its record");

  const redelivered = await env.acceptor.accept(event("delivery-write-fails", ["pkg004", "pkg005"]));
  assert.deepEqual(redelivered, { event: id, duplicate: false, keys: ["package/pkg004", "package/pkg005"] });
  assert.equal((await intakeFor(id)).length, 2);
});

test("the pipe: stream acks, API errors with their code, and no responders", async () => {
  const id = eventId("github", "pipe-probe");
  const record: EventRecord = {
    id,
    source: "github",
    ref: "pipe-probe",
    summary: "",
    keys: [],
    priority: "release",
    causeType: "release",
    receivedAt: new Date().toISOString(),
  };
  const ack = await pipe.publish(ledger.subject(id), JSON.stringify(record));
  assert.equal(ack.stream, ledger.stream);
  assert.equal((await ledger.get(id))?.ref, "pipe-probe");
  await assert.rejects(pipe.publish(ledger.subject(id), "{}"), (err: JetStreamPipeError) => err.code === 10077);
  await assert.rejects(pipe.publish(`${env.t.prefix}.nowhere.${Date.now()}`, "{}"), (err: JetStreamPipeError) => err.code === 503);
});

test("an audit stream at its count limit answers 503 audit-full: the event is neither lost as a duplicate nor recorded", async () => {
  const full = await ingestTestEnv();
  try {
    // The limits HOMEOSTAT_INGEST_RETENTION_MAX_MSGS / _MAX_BYTES give the stream, small enough to reach.
    await EventLedger.open(full.t.nats, 3_600_000, { maxBytes: 1024 * 1024, maxMsgs: 2 });
    const post = (version: string) =>
      full.app.inject({
        method: "POST",
        url: "/v1/releases",
        headers: { "content-type": "application/json", authorization: `Bearer ${TOKEN}` },
        payload: JSON.stringify({ package: "pkg000", version, url: "https://example.org/a.tar.gz", sha256: "c".repeat(64) }),
      });
    assert.deepEqual([(await post("1.1")).statusCode, (await post("1.2")).statusCode], [202, 202]);
    assert.equal((await post("1.2")).json().duplicate, true, "a repeat is still told apart from a full stream");
    const refused = await post("1.3");
    assert.deepEqual([refused.statusCode, refused.json().type, refused.headers["retry-after"]], [503, "urn:homeostat:problem:audit-full", "60"]);
    assert.equal((await full.intake()).length, 2, "nothing recorded for the refused event");
  } finally {
    await full.cleanup();
  }
});
