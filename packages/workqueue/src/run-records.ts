/**
 * The run-record store: a key's run record in KV `<prefix>_runs` (key `<region>.<kind>.<name>`)
 * is its lease (invariants 2 to 4 in workqueue.ts). Every write is a compare-and-set on the
 * record's revision, every release a delete of the revision it knows:
 *  - created exclusively (`create`: only if there is none),
 *  - renewed by its holder only while it is still the holder,
 *  - marked for a rerun by an enqueue that finds the key running,
 *  - released by erasing exactly the revision the holder wrote (the bucket keeps one revision per
 *    key, so a mark written since makes the erase fail and the holder looks again).
 * Records are read back through a zod schema: a record written by another version, or by hand,
 * is refused with its key and reason instead of steering a run.
 *
 * The writes go straight to the bucket's stream over the lean pipe (`$KV.<bucket>.<key>` with
 * the headers of core's compare-and-set.ts, which also holds on a replicated stream), which is
 * what the KV client does with less per call.
 */
import { JetStreamApiError } from "@nats-io/jetstream";
import { z } from "zod";
import { compareAndSetHeaders } from "@homeostat/core/compare-and-set";
import { prioritySchema, workItemSchema, type WorkItem } from "@homeostat/core/contracts";
import { isRevisionConflictCode } from "@homeostat/core/jetstream-errors";
import type { JetStreamPipe } from "@homeostat/core/jetstream-pipe";
import { keyFromToken, type Key } from "@homeostat/core/key";
import { bucketStream, type Nats } from "@homeostat/core/topology";
import { mergeItems } from "./merge.ts";

/** Times the queue computes (now + a delay a reconcile or a backoff chose), in ms since the epoch. */
const epochMs = z.number().nonnegative();

export const runPhases = ["running", "retrying", "waiting", "dead"] as const;
export type RunPhase = (typeof runPhases)[number];

export const runRecordSchema = z.object({
  /** waiting: the key may not run before `floor` (a reconcile's notBefore), whichever message is taken. */
  phase: z.enum(runPhases),
  owner: z.string(),
  /** Stream sequence and class of the message this record is about. */
  seq: z.number().int().nonnegative(),
  priority: prioritySchema,
  leaseUntil: epochMs,
  attempts: z.number().int().nonnegative(),
  /** Enqueues that arrived while running, merged: queue the key once more afterwards. */
  rerun: workItemSchema.optional(),
  /** What the run queues after its ack (a requeue); kept here so that a crash cannot lose it. */
  pending: workItemSchema.optional(),
  retryAt: epochMs.optional(),
  floor: epochMs.optional(),
  error: z.string().optional(),
  dead: z.object({ reason: z.string(), nonRetriable: z.boolean(), at: epochMs, item: workItemSchema }).optional(),
});
export type RunRecord = z.infer<typeof runRecordSchema>;

/** A record as read, with the revision a compare-and-set starts from. */
export type Versioned = { revision: number; value: RunRecord };

/** The run record as its holder last wrote it: compare-and-set starts from here without a read. */
export type Lease = { revision: number; value: RunRecord; lost: boolean };

/** Whether `current` is still the lease `mine` describes: the same holder, for the same message. */
export function heldBy(current: RunRecord, mine: RunRecord): boolean {
  return current.owner === mine.owner && current.seq === mine.seq;
}

export class RunRecordStore {
  private readonly n: Nats;
  private readonly pipe: JetStreamPipe;
  private readonly stream: string;
  /** `$KV.<bucket>.`: a record's subject is this and its key. */
  private readonly subjectPrefix: string;

  constructor(n: Nats, pipe: JetStreamPipe) {
    this.n = n;
    this.pipe = pipe;
    this.stream = bucketStream(n, "runs");
    this.subjectPrefix = `$KV.${n.topology.bucket("runs")}.`;
  }

  /** The record key of `key` in this region. */
  keyOf(key: Key): string {
    return this.n.topology.runRecordKey(key);
  }

  async read(recordKey: string): Promise<Versioned | undefined> {
    const m = await this.pipe.lastBySubject(this.stream, this.subjectPrefix + recordKey);
    // A KV delete or purge leaves a marker; this queue erases records instead, but others may not.
    if (!m || m.headers?.get("KV-Operation")) return undefined;
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(m.data));
    } catch {
      throw new Error(`run record ${recordKey} (revision ${m.seq}) is not JSON`);
    }
    const parsed = runRecordSchema.safeParse(json);
    if (!parsed.success) throw new Error(`run record ${recordKey} (revision ${m.seq}) is malformed: ${z.prettifyError(parsed.error)}`);
    return { revision: m.seq, value: parsed.data };
  }

  /** Writes a record only if its last revision is `expected` (0: only if there is none); its new revision, or undefined. */
  async writeIf(recordKey: string, value: RunRecord, expected: number): Promise<number | undefined> {
    const subject = this.subjectPrefix + recordKey;
    const answer = await this.pipe.tryPublish(subject, JSON.stringify(value), compareAndSetHeaders(subject, expected));
    if (!("refused" in answer)) return answer.duplicate ? undefined : answer.seq;
    if (isRevisionConflictCode(answer.refused.err_code)) return undefined;
    throw new JetStreamApiError(answer.refused);
  }

  /** Creates the record only if the key has none: the exclusive claim. Its revision, or undefined. */
  create(recordKey: string, value: RunRecord): Promise<number | undefined> {
    return this.writeIf(recordKey, value, 0);
  }

  /** Folds `item` into the running record's rerun mark; false when the record changed since it was read (look again). */
  async markRerun(recordKey: string, rec: Versioned, item: WorkItem): Promise<boolean> {
    const rerun = rec.value.rerun ? mergeItems(rec.value.rerun, item) : item;
    return (await this.writeIf(recordKey, { ...rec.value, rerun }, rec.revision)) !== undefined;
  }

  /**
   * Extends the lease of the holder described by `lease` (`owner`, running message `seq`) to
   * `until`; marks the lease lost when the record is gone or held by someone else. A rerun mark
   * written between the read and the write is kept: read again and retry.
   */
  async renew(recordKey: string, lease: Lease, owner: string, seq: number, until: number): Promise<void> {
    for (let i = 0; i < 5 && !lease.lost; i++) {
      const rec = await this.read(recordKey).catch(() => undefined);
      if (!rec || rec.value.owner !== owner || rec.value.seq !== seq) {
        lease.lost = true;
        return;
      }
      const value = { ...rec.value, leaseUntil: until };
      const revision = await this.writeIf(recordKey, value, rec.revision);
      if (revision !== undefined) {
        lease.revision = revision;
        lease.value = value;
        return;
      }
    }
  }

  /** Compare-and-set from the lease's known value; on a conflict (a rerun mark) re-reads and re-applies. */
  async update(recordKey: string, lease: Lease, change: (r: RunRecord) => RunRecord): Promise<void> {
    let current: Versioned | undefined = { revision: lease.revision, value: lease.value };
    for (let turn = 0; turn < 100; turn++) {
      if (!current) throw new Error(`run record ${recordKey} vanished`);
      if (!heldBy(current.value, lease.value)) throw new Error(`run record ${recordKey} was taken over by ${current.value.owner}`);
      const value = change(current.value);
      const revision = await this.writeIf(recordKey, value, current.revision);
      if (revision !== undefined) {
        lease.revision = revision;
        lease.value = value;
        return;
      }
      current = await this.read(recordKey);
    }
    throw new Error(`run record ${recordKey} kept changing`);
  }

  /** Erases a record if it is still at `revision`: a compare-and-delete that leaves no tombstone. */
  erase(revision: number): Promise<boolean> {
    return this.pipe.deleteMessage(this.stream, revision);
  }

  /**
   * This region's record keys, from the bucket stream's per-subject state. (Records are erased
   * by revision, without tombstones, which KV's key listing does not expect.)
   */
  async keys(): Promise<string[]> {
    const info = await this.n.jsm.streams.info(this.stream, { subjects_filter: `${this.subjectPrefix}${this.n.topology.region}.>` });
    return Object.keys(info.state.subjects ?? {}).map((s) => s.slice(this.subjectPrefix.length));
  }

  /** Every record of this region (those erased meanwhile left out). */
  async all(): Promise<RunRecord[]> {
    const recs = await Promise.all((await this.keys()).map((k) => this.read(k)));
    return recs.filter((r) => r !== undefined).map((r) => r.value);
  }
}

/** `<region>.<kind>.<name>` -> the key. */
export function keyOfRecord(recordKey: string): Key {
  return keyFromToken(recordKey.slice(recordKey.indexOf(".") + 1));
}
