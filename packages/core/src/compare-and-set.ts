/**
 * Compare-and-set on one subject of a stream (a KV key): a write that succeeds only if the
 * subject's last revision is still the one its writer read, also on a replicated stream.
 *
 * Why not `Nats-Expected-Last-Subject-Sequence` alone: nats-server 2.9 checks it for a
 * replicated stream only before proposing the write, against what the leader has applied
 * (`processClusteredInboundMsg`); when the write is applied, `processJetStreamMsg` skips it ("we
 * have prechecked seq > 0"). Two writers that read the same revision can then both succeed, the
 * later undoing the earlier (a builder's "Signing" mark undid a signer's "Ready" in the regions
 * test). The message id is checked when the write is applied, on every replica alike (the
 * stream's duplicate window), so each write also carries the id "the successor of revision N of
 * this subject": of two writes from the same revision the later is dropped as a duplicate, and
 * its writer told so by the ack, which is a lost compare-and-set like any other. On a 3-node
 * cluster (compare-and-set.test.ts) concurrent increments lose updates without the id and none
 * with it. A create (expected 0) is checked when applied already, and gets no id: a subject
 * emptied and created again within the window would otherwise be refused.
 */
import { Bucket, type KV } from "@nats-io/kv";
import { headers, type MsgHdrs } from "@nats-io/transport-node";
import { isRevisionConflict } from "./jetstream-errors.ts";

/**
 * The headers of a write to `subject` that must find `expected` as its last revision (0: none).
 * An ack that says `duplicate` answers such a write that lost.
 */
export function compareAndSetHeaders(subject: string, expected: number, h: MsgHdrs = headers()): MsgHdrs {
  h.set("Nats-Expected-Last-Subject-Sequence", String(expected));
  if (expected > 0) h.set("Nats-Msg-Id", `${subject}@${expected}`);
  return h;
}

/**
 * Writes `value` to `key` of the bucket if its last revision is `expected` (0: the key has no
 * message); the new revision, or undefined when another write came first.
 */
export async function kvCompareAndSet(kv: KV, key: string, value: string, expected: number): Promise<number | undefined> {
  if (!(kv instanceof Bucket)) throw new TypeError("a KV bucket made by @nats-io/kv is needed");
  const subject = kv.subjectForKey(key, true);
  try {
    const ack = await kv.js.publish(subject, value, { headers: compareAndSetHeaders(subject, expected) });
    return ack.duplicate ? undefined : ack.seq;
  } catch (err) {
    if (isRevisionConflict(err)) return undefined;
    throw err;
  }
}
