/**
 * Events: the ledger of what ingest accepted, in JetStream so it outlives any process.
 *
 * The audit stream `<prefix>_EVENTS` (limits retention, subjects `<prefix>.<region>.events.<id>`)
 * holds one record per accepted event with the keys it produced, read back by id with one
 * get. The id is what an enqueue's `cause.id` carries, so a key's status links to its event.
 *
 * One record, three jobs, one write per event:
 * - the audit entry (`GET /v1/events/:id`);
 * - the idempotency record: the stream keeps at most one message per subject and refuses a
 *   second one (`max_msgs_per_subject: 1`, `discard_new_per_subject`, API error 10077), so
 *   "this event was handled" is "its subject holds a record", kept by the server for the
 *   stream's max age and across restarts;
 * - the intake of its keys: the record carries what admission needs (`priority`, `causeType`;
 *   the cause id is the event id, its detail the summary), and the queue's durable consumer
 *   of this stream admits every key of every record (services/queue/src/admit.ts). The record
 *   being stored is what makes the event's admission certain, so ingest answers after that one
 *   write, and no crash can leave keys queued without their record, or a record without them.
 *
 * An event id is derived from the sender's own identity for the event (a GitHub delivery id,
 * an advisory id and its `modified`, …), so concurrent redeliveries agree on it.
 */
import { createHash } from "node:crypto";
import { AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { z } from "zod";
import { causeSchema, factRevisionsSchema, prioritySchema } from "./contracts.ts";
import { isStoreFailed } from "./jetstream-errors.ts";
import { keySchema, type Key } from "./key.ts";
import { producerSpan, traceHeaders } from "./telemetry.ts";
import type { Nats, Topology } from "./topology.ts";

export const eventSources = ["github", "advisory", "release", "anitya"] as const;
export type EventSource = (typeof eventSources)[number];

export const eventIdSchema = z.string().regex(/^(github|advisory|release|anitya)-[0-9a-f]{32}$/, "must be <source>-<32 hex>");

export const eventRecordSchema = z.object({
  id: eventIdSchema,
  source: z.enum(eventSources),
  /** The sender's identity for the event: delivery id, `<advisory id>@<modified>`, `<package>@<version>`… */
  ref: z.string().max(1024),
  summary: z.string().max(2048),
  keys: z.array(keySchema),
  /** The class the keys are admitted in, and their cause's type (cause id = id, detail = summary). */
  priority: prioritySchema,
  causeType: causeSchema.shape.type,
  /** Where the facts the event carried are stored (contracts.ts FactRevisions): its keys' enqueues state them. */
  facts: factRevisionsSchema.optional(),
  receivedAt: z.string(),
  requestId: z.string().max(128).optional(),
  traceId: z.string().optional(),
});
export type EventRecord = Omit<z.infer<typeof eventRecordSchema>, "keys"> & { keys: Key[] };

/** The id of the event `ref` from `source`: stable, so every redelivery of it has the same id. */
export function eventId(source: EventSource, ref: string): string {
  return `${source}-${createHash("sha256").update(`${source}\0${ref}`).digest("hex").slice(0, 32)}`;
}

/** The audit stream's name and subjects. */
export function eventLedgerNames(t: Topology): { stream: string; subjects: string } {
  return { stream: `${t.prefix}_EVENTS`, subjects: `${t.prefix}.${t.region}.events.>` };
}

/** The queue's durable consumer of the records (services/queue/src/admit.ts). */
export const ADMISSION_CONSUMER = "admission";

export class EventLedger {
  readonly nats: Nats;
  readonly stream: string;

  private constructor(nats: Nats) {
    this.nats = nats;
    this.stream = eventLedgerNames(nats.topology).stream;
  }

  /**
   * Creates (or updates) the stream; `retentionMs` bounds it (and so how long a repeat is
   * recognised), `limits` bound its size and count as well (kept as the stream has them when
   * not given). A full stream refuses new records (`discard: new`, which per-subject dedup
   * needs): the sender is told to retry, no record that may not be admitted yet is dropped.
   */
  static async open(nats: Nats, retentionMs: number, limits?: EventLedgerLimits): Promise<EventLedger> {
    const names = eventLedgerNames(nats.topology);
    const cfg = {
      ...(limits ? { max_bytes: limits.maxBytes, max_msgs: limits.maxMsgs } : {}),
      name: names.stream,
      subjects: [names.subjects],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
      num_replicas: nats.topology.replicas,
      max_age: retentionMs * 1_000_000,
      // One record per event id, and a second one is refused rather than replacing the first:
      // the record is the idempotency record, restart-proof for the whole max age.
      max_msgs_per_subject: 1,
      discard: DiscardPolicy.New,
      discard_new_per_subject: true,
      allow_direct: true,
    };
    try {
      await nats.jsm.streams.info(names.stream);
      await nats.jsm.streams.update(names.stream, cfg);
    } catch (err) {
      if (!/not found/i.test(String(err))) throw err;
      await nats.jsm.streams.add(cfg).catch((addErr: unknown) => {
        if (!/already in use|exists/i.test(String(addErr))) throw addErr;
      });
    }
    return new EventLedger(nats);
  }

  /**
   * Creates (or updates) the queue's admission consumer of every record: durable, so a record
   * stored while the queue is down is admitted when it is back; explicit acks, redelivered
   * without limit until acked, so admission is certain once the record is stored.
   */
  async admissionConsumer(): Promise<{ stream: string; consumer: string }> {
    const cfg = {
      durable_name: ADMISSION_CONSUMER,
      filter_subject: eventLedgerNames(this.nats.topology).subjects,
      deliver_policy: DeliverPolicy.All,
      ack_policy: AckPolicy.Explicit,
      ack_wait: 30_000_000_000,
      max_deliver: -1,
      max_ack_pending: 10_000,
    };
    try {
      await this.nats.jsm.consumers.add(this.stream, cfg);
    } catch (err) {
      // An existing durable with older settings is updated in place (its position is kept).
      if (!/already exists|10148|10013/i.test(String(err))) throw err;
      const { durable_name, filter_subject: _, deliver_policy: __, ...changes } = cfg;
      await this.nats.jsm.consumers.update(this.stream, durable_name, changes);
    }
    return { stream: this.stream, consumer: ADMISSION_CONSUMER };
  }

  /** The ledger for a service that records or reads events but may not create or change the stream (ingest). */
  static bind(nats: Nats): EventLedger {
    return new EventLedger(nats);
  }

  subject(id: string): string {
    return `${this.nats.topology.prefix}.${this.nats.topology.region}.events.${id}`;
  }

  /**
   * Records the event, which marks it handled and hands its keys to admission. "duplicate" when a record for its id exists
   * already (a concurrent or earlier delivery of the same event recorded it first).
   */
  async record(record: EventRecord): Promise<"recorded" | "duplicate"> {
    return producerSpan("events", this.subject(record.id), { msgId: record.id }, async (sent) => {
      try {
        await this.nats.js.publish(this.subject(record.id), JSON.stringify(record), { headers: traceHeaders(sent) });
        return "recorded";
      } catch (err) {
        if (isSubjectFull(err)) return "duplicate";
        throw err;
      }
    });
  }

  /** The record of event `id`, as the stream's leader holds it when replicated (topology.ts openBucket says why). */
  async get(id: string): Promise<EventRecord | undefined> {
    const query = { last_by_subj: this.subject(id) };
    const m =
      this.nats.topology.replicas === 1
        ? await this.nats.jsm.direct.getMessage(this.stream, query)
        : await this.nats.jsm.streams.getMessage(this.stream, query);
    if (!m) return undefined;
    return eventRecordSchema.parse(m.json()) as EventRecord;
  }
}

function isSubjectFull(err: unknown): boolean {
  return ledgerRefusal(err) === "duplicate";
}

export type EventLedgerLimits = { maxBytes: number; maxMsgs: number };

/**
 * Why the server refused a record, if it did: `duplicate` (the event's subject holds its
 * record) or `full` (the stream is at its max_msgs or max_bytes). Both are StoreFailed
 * (jetstream-errors.ts), told apart only by the description; any other store failure is
 * neither, so it is an error to retry, never taken for a duplicate.
 */
export function ledgerRefusal(err: unknown): "duplicate" | "full" | undefined {
  if (!isStoreFailed(err)) return undefined;
  const text = String((err as Error).message);
  if (/per subject/i.test(text)) return "duplicate";
  return /maximum (messages|bytes) exceeded/i.test(text) ? "full" : undefined;
}
