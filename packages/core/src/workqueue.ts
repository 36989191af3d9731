/**
 * Work queue: keys to reconcile, durable in JetStream, with client-go's per-key guarantees
 * across processes.
 *
 * Invariants (each one holds across processes and restarts):
 *  - Dedup: a key has at most one queued entry. The work stream allows one message per
 *    subject (one subject per key), so a second enqueue of a queued key is refused by the
 *    server (API error 10077) and counted as deduplicated.
 *  - Exclusivity: a key runs only while its worker holds the key's lease, a KV entry created
 *    with create() (fails if it exists). A worker that cannot take the lease hands the message
 *    back for later; it never runs the key.
 *  - Rerun once: the message of a running key stays unacked (its subject stays busy), so an
 *    enqueue meanwhile is refused by the stream and instead marks the lease dirty. A run that
 *    ends with a dirty lease hands its message back (nak 0) instead of acking it: the key runs
 *    exactly once more, however many enqueues arrived.
 *  - Nothing lost: a message is acked only after the run ended clean and the lease was marked
 *    closing (a compare-and-set, so no dirty mark can slip in unseen). A worker that dies loses
 *    its lease (KV TTL) and its message is redelivered after the ack wait.
 *  - Attempts are counted by Homeostat (max_deliver is unlimited): an exhausted max_deliver
 *    would block the key's subject in a WorkQueue stream (nats-server #5564).
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import { decodeMessage, encodeMessage, workItemSchema, type WorkItem } from "./contracts.ts";
import { keyToken } from "./key.ts";
import { errorMessage, type Logger } from "./log.ts";
import { exponentialBackoff, type Backoff } from "./messaging.ts";
import { contextFromHeaders, inSpan, SpanKind, traceHeaders } from "./telemetry.ts";
import type { Nats } from "./topology.ts";

/** What a reconcile asks the queue to do next with its key. Errors are thrown, not returned. */
export type ReconcileResult =
  | { type: "done" }
  | { type: "requeueAfter"; ms: number }
  | { type: "nonRetriable"; reason: string };

export const done: ReconcileResult = { type: "done" };
export const requeueAfter = (ms: number): ReconcileResult => ({ type: "requeueAfter", ms });
export const nonRetriable = (reason: string): ReconcileResult => ({ type: "nonRetriable", reason });

export type EnqueueOutcome = "added" | "deduped" | "rerun";

type Lease = { owner: string; since: number; dirty: boolean; closing: boolean };

const SUBJECT_BUSY = 10077;

export type WorkQueueOptions = { leases: KV; leaseMs: number; log: Logger; owner: string };

export class WorkQueue {
  readonly n: Nats;
  readonly o: WorkQueueOptions;
  constructor(n: Nats, o: WorkQueueOptions) {
    this.n = n;
    this.o = o;
  }

  /** Adds the key unless it is queued already; marks a running key for exactly one rerun. */
  async enqueue(item: WorkItem): Promise<EnqueueOutcome> {
    const subject = this.n.topology.subject("work", item.key);
    const token = keyToken(item.key);
    const deadline = Date.now() + this.o.leaseMs * 2;
    for (;;) {
      try {
        await this.n.js.publish(subject, encodeMessage(item), { headers: traceHeaders() });
        return "added";
      } catch (err) {
        if ((err as { code?: number }).code !== SUBJECT_BUSY && !String(err).includes(String(SUBJECT_BUSY))) throw err;
      }
      // The subject is busy: the key is queued, or its message is the one a worker is running.
      const e = await this.o.leases.get(token);
      if (!e || e.operation !== "PUT") return "deduped";
      const lease = e.json<Lease>();
      if (lease.dirty) return "rerun";
      if (lease.closing) {
        // The run is acking right now; once it has, the subject is free for a fresh entry.
        if (Date.now() > deadline) return "deduped";
        await sleep(5);
        continue;
      }
      try {
        await this.o.leases.update(token, JSON.stringify({ ...lease, dirty: true }), e.revision);
        return "rerun";
      } catch {
        // The lease changed under us (renewed, closing or released): look again.
      }
    }
  }

  /** Runs `reconcile` on queued keys, at most `concurrency` at once, until `signal` aborts. */
  async run(o: {
    concurrency: number;
    signal: AbortSignal;
    backoff?: Backoff;
    reconcile: (item: WorkItem, attempt: number) => Promise<ReconcileResult>;
  }): Promise<void> {
    const backoff = o.backoff ?? exponentialBackoff(1_000, 60_000);
    const consumer = await this.n.js.consumers.get(this.n.topology.stream("work"), this.n.topology.consumer("work"));
    const messages = await consumer.consume({ max_messages: o.concurrency });
    o.signal.addEventListener("abort", () => void messages.close(), { once: true });
    const inFlight = new Set<Promise<void>>();
    for await (const msg of messages) {
      const p = this.runOne(msg, o.reconcile, backoff).finally(() => inFlight.delete(p));
      inFlight.add(p);
      if (inFlight.size >= o.concurrency) await Promise.race(inFlight);
    }
    await Promise.allSettled(inFlight);
  }

  private async runOne(msg: JsMsg, reconcile: (item: WorkItem, attempt: number) => Promise<ReconcileResult>, backoff: Backoff): Promise<void> {
    let item: WorkItem;
    try {
      item = decodeMessage(workItemSchema, msg.data);
    } catch (err) {
      this.o.log.error("rejected malformed work item", { subject: msg.subject, reason: errorMessage(err) });
      msg.term(errorMessage(err));
      return;
    }
    const token = keyToken(item.key);
    const lease: Lease = { owner: this.o.owner, since: Date.now(), dirty: false, closing: false };
    try {
      await this.o.leases.create(token, JSON.stringify(lease));
    } catch {
      msg.nak(250 + Math.floor(Math.random() * 250)); // another run of this key holds the lease
      return;
    }

    let lost = false;
    const renew = setInterval(() => {
      msg.working();
      void this.renewLease(token).then(
        () => {},
        () => (lost = true),
      );
    }, Math.max(100, Math.floor(this.o.leaseMs / 3)));

    const attempt = msg.info.deliveryCount;
    let result: ReconcileResult | Error;
    try {
      result = await inSpan(`reconcile ${item.key}`, { parent: contextFromHeaders(msg.headers), kind: SpanKind.CONSUMER, attributes: { "homeostat.key": item.key, "homeostat.attempt": attempt } }, () =>
        reconcile(item, attempt),
      );
    } catch (err) {
      result = err as Error;
    } finally {
      clearInterval(renew);
    }
    if (lost) this.o.log.warn("lease lost while running; the key may have run twice", { key: item.key });

    if (result instanceof Error) {
      const delay = backoff(attempt);
      this.o.log.warn("reconcile failed; retrying", { key: item.key, attempt, delayMs: delay, reason: result.message });
      await this.release(token);
      msg.nak(delay);
    } else if (result.type === "requeueAfter") {
      const dirty = await this.release(token);
      msg.nak(dirty ? 0 : result.ms);
    } else {
      if (result.type === "nonRetriable") this.o.log.error("reconcile gave up", { key: item.key, reason: result.reason });
      await this.finish(token, msg);
    }
  }

  private async renewLease(token: string): Promise<number> {
    for (;;) {
      const e = await this.o.leases.get(token);
      if (!e || e.operation !== "PUT") throw new Error("lease expired");
      try {
        // Rewriting the current value (whatever revision it is at) keeps a dirty mark.
        return await this.o.leases.update(token, e.value, e.revision);
      } catch {
        // changed between get and update: look again
      }
    }
  }

  /** Ends a clean run: ack, unless an enqueue arrived while running, then run once more. */
  private async finish(token: string, msg: JsMsg): Promise<void> {
    for (;;) {
      const e = await this.o.leases.get(token);
      const lease = e && e.operation === "PUT" ? e.json<Lease>() : undefined;
      if (!e || !lease) {
        await msg.ackAck();
        return;
      }
      if (lease.dirty) {
        await this.deleteLease(token);
        msg.nak(0);
        return;
      }
      try {
        await this.o.leases.update(token, JSON.stringify({ ...lease, closing: true }), e.revision);
      } catch {
        continue; // an enqueue marked it dirty just now: look again
      }
      await msg.ackAck();
      await this.deleteLease(token);
      return;
    }
  }

  /** Drops the lease; returns whether an enqueue asked for a rerun meanwhile. */
  private async release(token: string): Promise<boolean> {
    const e = await this.o.leases.get(token);
    const dirty = !!(e && e.operation === "PUT" && e.json<Lease>().dirty);
    await this.deleteLease(token);
    return dirty;
  }

  private async deleteLease(token: string): Promise<void> {
    await this.o.leases.delete(token);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
