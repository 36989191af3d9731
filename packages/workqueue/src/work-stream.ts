/**
 * The work stream: a queued key is one message on `<prefix>.<region>.work.<class>.<kind>.<name>`
 * in a WorkQueue stream that holds one message per subject, its body the key's schedule
 * (`WorkItem`). Here: put a schedule in (refused while its subject is taken), read what is queued
 * for a key, delete by sequence. Reads are direct gets over the lean pipe, one per class.
 */
import { JetStreamApiError } from "@nats-io/jetstream";
import { decodeMessage, encodeMessage, priorities, workItemSchema, type Priority, type WorkItem } from "@homeostat/core/contracts";
import { JetStreamErrorCode } from "@homeostat/core/jetstream-errors";
import { stored, type JetStreamPipe } from "@homeostat/core/jetstream-pipe";
import type { Key } from "@homeostat/core/key";
import { producerSpan, propagatedTraceparent } from "@homeostat/core/telemetry";
import type { Nats } from "@homeostat/core/topology";

/** A queued message: its stream sequence and the schedule it holds. */
export type Queued = { seq: number; item: WorkItem };

export class WorkStream {
  readonly name: string;
  /** Whether the stream has more than one replica: each then applies acks in its own time (see Worker.remove). */
  readonly replicated: boolean;
  private readonly n: Nats;
  private readonly pipe: JetStreamPipe;

  constructor(n: Nats, pipe: JetStreamPipe) {
    this.n = n;
    this.pipe = pipe;
    this.name = n.topology.stream("work");
    this.replicated = n.topology.replicas > 1;
  }

  /** Queues `item` in its class; false when that class already holds a message of the key (the server refuses it). */
  async publish(item: WorkItem): Promise<boolean> {
    const subject = this.n.topology.workSubject(item.priority, item.key);
    // A refusal is the common answer to an enqueue of a queued key: no message, so no span is exported for it.
    const answer = await producerSpan(`work.${item.priority}`, subject, { key: item.key, sent: stored }, (sent) =>
      this.pipe.tryPublish(subject, encodeMessage(asQueued(item, propagatedTraceparent(sent)))),
    );
    if (stored(answer)) return true;
    // The work stream has no stream-wide limits: refused means the subject holds the key already.
    if (answer.refused.err_code === JetStreamErrorCode.StoreFailed) return false;
    throw new JetStreamApiError(answer.refused);
  }

  /** The key's message in class `priority`, if any. */
  async queuedIn(priority: Priority, key: Key): Promise<Queued | undefined> {
    const m = await this.pipe.lastBySubject(this.name, this.n.topology.workSubject(priority, key));
    return m ? { seq: m.seq, item: decodeMessage(workItemSchema, m.data) } : undefined;
  }

  /** The key's queued messages, most urgent class first (all classes, or all but `except`). */
  async queued(key: Key, except?: Priority): Promise<Queued[]> {
    const found = await Promise.all(priorities.filter((p) => p !== except).map((p) => this.queuedIn(p, key)));
    return found.filter((m) => m !== undefined);
  }

  /** The first (longest queued) message of a class, `filter` being the subjects of its consumer. */
  async firstOf(filter: string): Promise<WorkItem | undefined> {
    const m = await this.pipe.firstBySubject(this.name, filter);
    return m ? decodeMessage(workItemSchema, m.data) : undefined;
  }

  /** Deletes message `seq`; false when it is gone already (acked, or deleted by another merge). */
  delete(seq: number): Promise<boolean> {
    return this.pipe.deleteMessage(this.name, seq);
  }

  /** Whether message `seq` is still in the stream (not yet acked or deleted). */
  async holds(seq: number): Promise<boolean> {
    return (await this.n.jsm.streams.getMessage(this.name, { seq })) !== null;
  }
}

/**
 * `item` as a queued message holds it: carrying `trace` (the publish's trace context; none when
 * telemetry is off), and no facts. Facts count only in a rerun mark (merge.ts answeredBy); a
 * queued message that kept them could keep them past a merge that voided them (an enqueue that
 * stated none, merged without a rewrite: sameSchedule), so a queued message states none and
 * counts as asking for anything.
 */
function asQueued(item: WorkItem, trace: string | undefined): WorkItem {
  const { trace: _, facts: __, ...queued } = item;
  return trace ? { ...queued, trace } : queued;
}
