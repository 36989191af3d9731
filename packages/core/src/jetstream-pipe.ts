/**
 * A lean request path to JetStream for hot paths (ingest's event records, the work queue's
 * claims, merges, acks and releases): stream publishes with their ack, direct gets, JetStream
 * API calls and confirmed acks, over one wildcard reply subscription.
 *
 * Why not `js.publish` and friends: per request the client builds a request object with its
 * own timer and mux entry, and on completion an Error object ("cancelled", with a stack trace)
 * that nobody sees; at thousands of requests/s that was a fifth of a process's CPU. Here a request is a publish with a reply subject `<inbox>.<n>` and a map entry;
 * timeouts are swept twice a second. The semantics are JetStream's own: a publish resolves
 * only with the stream's ack (the message is stored), an API error rejects with the client's own
 * `JetStreamApiError` (its `code` is the `err_code`; test it with jetstream-errors.ts), "no
 * responders" (no stream on the subject, JetStream down), a timeout and a closed connection
 * reject with a `JetStreamPipeError`.
 */
import { randomBytes } from "node:crypto";
import { JetStreamApiError, type ApiError, type JsMsg } from "@nats-io/jetstream";
import { isMessageGone } from "./jetstream-errors.ts";
import type { Nats } from "./topology.ts";

type Nc = Nats["nc"];
type Msg = Parameters<NonNullable<Parameters<Nc["subscribe"]>[1]>["callback"] & {}>[1];
type Headers = NonNullable<Parameters<Nc["publish"]>[2]>["headers"];

export type PubAck = { stream: string; seq: number; duplicate: boolean };

/** What `tryPublish` answers: the stream's ack, or the server's refusal. */
export type PublishAnswer = PubAck | { refused: ApiError };

/** Whether a publish stored its message. */
export const stored = (answer: PublishAnswer): answer is PubAck => !("refused" in answer);

/**
 * A request that JetStream did not answer: `code` 503 no responders, 408 timed out, undefined
 * when the pipe or the connection is closed; or a direct get's status other than 404.
 */
export class JetStreamPipeError extends Error {
  readonly code: number | undefined;
  constructor(message: string, code?: number) {
    super(message);
    this.name = "JetStreamPipeError";
    this.code = code;
  }
}

type Pending = { resolve: (m: Msg) => void; reject: (e: Error) => void; deadline: number };

export class JetStreamPipe {
  private readonly nc: Nc;
  private readonly inbox: string;
  private readonly pending = new Map<number, Pending>();
  private readonly timeoutMs: number;
  private readonly sweeper: NodeJS.Timeout;
  private next = 0;
  private subscribed = false;

  constructor(nc: Nc, timeoutMs = 5_000) {
    this.nc = nc;
    // Under the connection's own inbox prefix: the server lets an identity subscribe to its own
    // inboxes only (nats-access.ts). The option is not on the NatsConnection interface.
    const inboxPrefix = (nc as Nc & { options?: { inboxPrefix?: string } }).options?.inboxPrefix || "_INBOX";
    this.inbox = `${inboxPrefix}.${randomBytes(11).toString("hex")}`;
    this.timeoutMs = timeoutMs;
    this.sweeper = setInterval(() => this.sweep(), 500).unref();
    void nc.closed().then(() => this.failAll(new JetStreamPipeError("the NATS connection is closed")));
  }

  /** Subscribes to the replies at the first request, so that making a pipe never fails. */
  private subscribe(): void {
    if (this.subscribed) return;
    this.nc.subscribe(`${this.inbox}.*`, { callback: (err, msg) => (err ? this.failAll(err) : this.reply(msg)) });
    this.subscribed = true;
  }

  /** Stores `data` on `subject` (a stream's subject); resolves with the stream's ack. */
  async publish(subject: string, data: string | Uint8Array, headers?: Headers): Promise<PubAck> {
    const answer = await this.tryPublish(subject, data, headers);
    if ("refused" in answer) throw new JetStreamApiError(answer.refused);
    return answer;
  }

  /**
   * `publish` for callers to whom a refusal is an expected answer (a subject already holding its
   * message, a lost compare-and-set): the server's API error is returned, not thrown, which
   * spares an Error and its stack trace on a path taken thousands of times a second.
   */
  async tryPublish(subject: string, data: string | Uint8Array, headers?: Headers): Promise<PublishAnswer> {
    const m = await this.request(subject, data, headers);
    const body =
      m.data.length > 0 ? (JSON.parse(new TextDecoder().decode(m.data)) as { stream?: string; seq?: number; duplicate?: boolean; error?: ApiError }) : {};
    if (body.error) return { refused: body.error };
    if (!body.stream || typeof body.seq !== "number") throw new JetStreamPipeError(`no stream ack for a publish to ${subject}`);
    return { stream: body.stream, seq: body.seq, duplicate: body.duplicate === true };
  }

  /**
   * The last message on `subject` in `stream` (a direct get: the stream must allow it) with its
   * sequence and headers, or undefined when there is none.
   */
  async lastBySubject(stream: string, subject: string): Promise<{ seq: number; data: Uint8Array; headers: Msg["headers"] } | undefined> {
    const m = await this.request(`$JS.API.DIRECT.GET.${stream}.${subject}`, new Uint8Array(0));
    const code = m.headers?.code ?? 0;
    if (code === 404) return undefined;
    if (code !== 0) throw new JetStreamPipeError(`direct get of ${subject} in ${stream}: ${code} ${m.headers?.description ?? ""}`.trim(), code);
    return { seq: Number(m.headers?.get("Nats-Sequence")), data: m.data, headers: m.headers };
  }

  /**
   * The first message in `stream` whose subject matches `filter` (wildcards allowed; a direct get),
   * or undefined when there is none.
   */
  async firstBySubject(stream: string, filter: string): Promise<{ seq: number; data: Uint8Array } | undefined> {
    const m = await this.request(`$JS.API.DIRECT.GET.${stream}`, JSON.stringify({ seq: 1, next_by_subj: filter }));
    const code = m.headers?.code ?? 0;
    if (code === 404) return undefined;
    if (code !== 0) throw new JetStreamPipeError(`direct get of the first ${filter} in ${stream}: ${code} ${m.headers?.description ?? ""}`.trim(), code);
    return { seq: Number(m.headers?.get("Nats-Sequence")), data: m.data };
  }

  /**
   * A JetStream API call (`$JS.API.…`) with a JSON body; resolves with the JSON answer, rejects
   * with a `JetStreamApiError`.
   */
  async api<T>(subject: string, body: unknown): Promise<T> {
    const m = await this.request(subject, JSON.stringify(body));
    const answer = JSON.parse(new TextDecoder().decode(m.data)) as T & { error?: ApiError };
    if (answer.error) throw new JetStreamApiError(answer.error);
    return answer;
  }

  /**
   * Deletes message `seq` of `stream` (without overwriting its bytes: nothing secret is stored);
   * false when it is gone already. In a stream that keeps one message per subject that includes
   * a subject written again since, so deleting a revision is a compare-and-delete.
   */
  async deleteMessage(stream: string, seq: number): Promise<boolean> {
    try {
      return (await this.api<{ success: boolean }>(`$JS.API.STREAM.MSG.DELETE.${stream}`, { seq, no_erase: true })).success;
    } catch (err) {
      if (isMessageGone(err)) return false;
      throw err;
    }
  }

  /**
   * Acks a consumed message and resolves once the server has taken it (in a WorkQueue stream the
   * message is then gone). JsMsg's public `ackAck()` costs a timer, a request object and a
   * "cancelled" Error per call, which bench:queue measured at a fifth or more of the work queue's
   * drain rate; the ack subject is the reply subject the message came with, which JsMsg's type
   * does not declare, so it is read guardedly here, in one place, and the public `ackAck()` is
   * used whenever the message does not carry it (jetstream-pipe.test.ts notices if it goes).
   */
  async ackConfirmed(msg: JsMsg): Promise<void> {
    const ackSubject: unknown = Reflect.get(msg, "reply");
    if (typeof ackSubject === "string" && ackSubject.startsWith("$JS.ACK.")) await this.request(ackSubject, "+ACK");
    else await msg.ackAck();
  }

  close(): void {
    clearInterval(this.sweeper);
    this.failAll(new JetStreamPipeError("the pipe is closed"));
  }

  private request(subject: string, data: string | Uint8Array, headers?: Headers): Promise<Msg> {
    return new Promise<Msg>((resolve, reject) => {
      const n = ++this.next;
      this.pending.set(n, { resolve, reject, deadline: Date.now() + this.timeoutMs });
      try {
        this.subscribe();
        this.nc.publish(subject, data, { reply: `${this.inbox}.${n}`, ...(headers ? { headers } : {}) });
      } catch (err) {
        this.pending.delete(n);
        reject(err as Error);
      }
    });
  }

  private reply(m: Msg): void {
    const n = Number(m.subject.slice(this.inbox.length + 1));
    const p = this.pending.get(n);
    if (!p) return; // timed out already
    this.pending.delete(n);
    // No responders: nothing listens on the subject (no such stream, or JetStream is down).
    if (m.data.length === 0 && m.headers?.code === 503) p.reject(new JetStreamPipeError("no responders: JetStream does not answer on this subject", 503));
    else p.resolve(m);
  }

  private sweep(): void {
    const now = Date.now();
    // Insertion order is deadline order: stop at the first request still in time.
    for (const [n, p] of this.pending) {
      if (p.deadline > now) break;
      this.pending.delete(n);
      p.reject(new JetStreamPipeError(`JetStream did not answer within ${this.timeoutMs} ms`, 408));
    }
  }

  private failAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
