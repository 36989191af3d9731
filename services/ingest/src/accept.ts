/**
 * Accept: what every feed does once an event is authenticated, validated and mapped to keys —
 * write its record to the audit stream, one JetStream write per event.
 *
 * The record is the audit entry, the idempotency record and the intake of the event's keys
 * (core events.ts): the server refuses a second record for an event id (10077), so a repeat
 * answers `duplicate` with no keys, and the queue's admission consumer of the events stream
 * enqueues the keys of every stored record (cause.id = the event id, so a key's status links
 * back to it). A 202 is answered only after the record is stored: from then on the keys'
 * admission is certain (a durable consumer, redelivered until acked), though asynchronous.
 * A crash before the write leaves nothing, and the redelivery of the event is handled anew.
 *
 * Coalescing: the write waits for the end of the current event-loop turn (turn.ts), and every
 * event that reached it in that turn publishes together, in one socket write.
 */
import {
  currentTraceId,
  eventId,
  ledgerRefusal,
  meter,
  producerSpan,
  traceHeaders,
  type Cause,
  type EventLedger,
  type EventRecord,
  type EventSource,
  type FactRevisions,
  type JetStreamPipe,
  type Key,
  type Priority,
} from "@homeostat/core";
import { Problem } from "./problem.ts";
import { endOfTurn } from "./turn.ts";

/** The ledger write on the hot path (EventLedger has it; pipedLedger is the lean path). */
export type LedgerOps = {
  record(record: EventRecord): Promise<"recorded" | "duplicate">;
};

/**
 * EventLedger's record over the lean pipe: same stream, subjects and semantics. A stream at its
 * size or count bound (HOMEOSTAT_INGEST_RETENTION_MAX_BYTES / _MAX_MSGS) refuses the record:
 * the sender gets 503 and sends again later; nothing is dropped or taken for a duplicate.
 */
export function pipedLedger(ledger: EventLedger, pipe: JetStreamPipe): LedgerOps {
  return {
    record: (record) =>
      // The trace context travels with the record, so admitting its keys joins the request's trace.
      producerSpan("events", ledger.subject(record.id), { msgId: record.id }, async (sent) => {
        try {
          await pipe.publish(ledger.subject(record.id), JSON.stringify(record), traceHeaders(sent));
          return "recorded";
        } catch (err) {
          const refusal = ledgerRefusal(err);
          // The event subject already holds its record (discard_new_per_subject).
          if (refusal === "duplicate") return "duplicate";
          if (refusal === "full")
            throw new Problem(503, "audit-full", "the audit stream is at its size or count limit; the event was not accepted, send it again later", {
              headers: { "retry-after": "60" },
            });
          throw err;
        }
      }),
  };
}

export type IncomingEvent = {
  source: EventSource;
  /** The sender's identity for the event; equal refs are one event. */
  ref: string;
  summary: string;
  keys: Key[];
  priority: Priority;
  cause: Cause["type"];
  /** Where the facts the event carried were stored (core FactRevisions), when it carried any. */
  facts?: FactRevisions;
  requestId?: string;
};

export type Accepted = { event: string; duplicate: boolean; keys: Key[] };

export class Acceptor {
  readonly ledger: EventLedger;
  private readonly ops: LedgerOps;
  private readonly events = meter().createCounter("homeostat.ingest.events", {
    unit: "{event}",
    description: "Events by source and outcome: accepted (recorded, its keys admitted) or duplicate",
  });

  /** `ops` defaults to the ledger itself; ingest passes pipedLedger (the same records, less CPU). */
  constructor(ledger: EventLedger, ops: LedgerOps = ledger) {
    this.ledger = ledger;
    this.ops = ops;
  }

  async accept(ev: IncomingEvent): Promise<Accepted> {
    const id = eventId(ev.source, ev.ref);
    const keys = [...new Set(ev.keys)];
    const traceId = currentTraceId();
    const record: EventRecord = {
      id,
      source: ev.source,
      ref: ev.ref.slice(0, 1024),
      summary: ev.summary.slice(0, 2048),
      keys,
      priority: ev.priority,
      causeType: ev.cause,
      ...(ev.facts ? { facts: ev.facts } : {}),
      receivedAt: new Date().toISOString(),
      ...(ev.requestId ? { requestId: ev.requestId } : {}),
      ...(traceId ? { traceId } : {}),
    };
    await endOfTurn();
    // An earlier or concurrent delivery of the same event recorded it first: its keys are
    // admitted from that record, this one is the duplicate.
    const duplicate = (await this.ops.record(record)) === "duplicate";
    this.events.add(1, { source: ev.source, outcome: duplicate ? "duplicate" : "accepted" });
    return duplicate ? { event: id, duplicate: true, keys: [] } : { event: id, duplicate: false, keys };
  }
}
