/**
 * Messaging: publish a typed message to a stage with trace context, and run a stage's
 * consumer (or another stream's durable consumer) with bounded concurrency, schema checks at
 * the edge and explicit outcomes.
 *
 * A handler either returns (ack), throws `NonRetriableError` or the message fails its schema
 * (term: it could never succeed, redelivering it would only loop), throws a `TransientError`
 * with a delay (nak after that delay: the handler chose it and may have told the key's status),
 * or throws anything else (nak with exponential backoff: the work is retried, never lost).
 *
 * While a handler runs, `msg.working()` is sent every quarter of the consumer's ack wait, so
 * the ack wait can be short (HOMEOSTAT_STAGE_ACK_WAIT_MS): a process that dies stops sending
 * it and its message goes to another consumer within one ack wait.
 */
import { addAbortListener } from "node:events";
import type { JsMsg } from "@nats-io/jetstream";
import type { z } from "zod";
import { decodeMessage, encodeMessage, ContractError } from "./contracts.ts";
import type { Key } from "./key.ts";
import { TransientError } from "./failure.ts";
import { errorMessage, type Logger } from "./log.ts";
import {
  contextFromHeaders,
  durationHistogram,
  inSpan,
  markFailed,
  messagingAttributes,
  meter,
  producerSpan,
  traceHeaders,
  searchAttributes,
  secondsSince,
  SpanKind,
} from "./telemetry.ts";
import type { Nats, Stage } from "./topology.ts";

/** An error that no retry can fix (bad input, checksum mismatch, failing build step). */
export class NonRetriableError extends Error {}

/** Publishes in a PRODUCER span (`send <stage>`) whose context the message carries. */
export async function publish(n: Nats, stage: Exclude<Stage, "work">, key: Key, body: unknown, opts: { msgId?: string } = {}): Promise<{ duplicate: boolean }> {
  const subject = n.topology.subject(stage, key);
  const ack = await producerSpan(stage, subject, { key, ...opts }, (sent) =>
    n.js.publish(subject, encodeMessage(body), { headers: traceHeaders(sent), ...(opts.msgId ? { msgID: opts.msgId } : {}) }),
  );
  return { duplicate: ack.duplicate };
}

/**
 * What every stage handler did (builds by the builder, signatures by the signer…), by handler and
 * outcome (done, dropped: refused or failed for good, retry). Made on first use: instruments bind
 * to the MeterProvider registered then, which the service registered at start.
 */
let instruments: { messages: ReturnType<ReturnType<typeof meter>["createCounter"]>; duration: ReturnType<typeof durationHistogram> } | undefined;
function handlerMetrics() {
  instruments ??= {
    messages: meter().createCounter("homeostat.messages.processed", {
      unit: "{message}",
      description: "Messages handled, by handler (builder.build, signer.sign…) and outcome (done, dropped, retry)",
    }),
    duration: durationHistogram(meter(), "messaging.process.duration", "Time a handler took for one message, by handler and outcome"),
  };
  return instruments;
}

export type Backoff = (attempt: number) => number;

/** 2^(attempt-1) × base, capped, with ±20 % jitter so that a burst of failures spreads out. */
export function exponentialBackoff(baseMs: number, capMs: number): Backoff {
  return (attempt) => {
    const d = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
    return Math.round(d * (0.8 + Math.random() * 0.4));
  };
}

export type ConsumerOptions<S extends z.ZodType> = {
  /** A stage (its stream and its durable consumer), or a durable consumer of another stream. */
  stage: Stage | { stream: string; consumer: string };
  schema: S;
  /** Span name for one message, e.g. "builder.build". */
  spanName: string;
  concurrency: number;
  log: Logger;
  signal: AbortSignal;
  backoff?: Backoff;
  /** Ack-wait extension interval while a handler runs (msg.working()); default a quarter of the consumer's ack wait. */
  heartbeatMs?: number;
  handle: (body: z.infer<S>, msg: JsMsg) => Promise<void>;
  /** Told of a message that fails its schema before it is dropped (e.g. to record the refusal on the key its subject names). */
  onMalformed?: (msg: JsMsg, reason: string) => Promise<void>;
};

/**
 * How long a worker's pull request lives before it is sent again. nats-server 2.9 does not tell
 * pulling clients that a consumer's leader moved (a node lost, a region lost): their pull
 * requests stay with the old leader, and the new one delivers nothing to them until they expire.
 * The client's default (30 s) left a stage idle for 30 s after every leader change in the regions
 * test; a few seconds bounds it, for one small request per idle consumer every few seconds.
 */
export const pullExpiresMs = 5_000;

/** Consumes until `signal` aborts; then waits for in-flight handlers and returns. */
export async function runConsumer<S extends z.ZodType>(n: Nats, o: ConsumerOptions<S>): Promise<void> {
  const backoff = o.backoff ?? exponentialBackoff(1_000, 60_000);
  const { stream, consumer: name } = typeof o.stage === "string" ? { stream: n.topology.stream(o.stage), consumer: n.topology.consumer(o.stage) } : o.stage;
  const consumer = await n.js.consumers.get(stream, name);
  const ackWaitMs = ((await consumer.info(true)).config.ack_wait ?? 30_000_000_000) / 1_000_000;
  const heartbeatMs = o.heartbeatMs ?? Math.max(250, Math.floor(ackWaitMs / 4));
  const messages = await consumer.consume({ max_messages: o.concurrency, expires: pullExpiresMs });
  // Also when the signal aborted during the awaits above (a SIGTERM just after start-up), which
  // a plain "abort" listener would never hear: the loop below would then never end.
  addAbortListener(o.signal, () => void messages.close());
  const inFlight = new Set<Promise<void>>();

  for await (const msg of messages) {
    const run = handleOne(msg, o, backoff, heartbeatMs).finally(() => inFlight.delete(run));
    inFlight.add(run);
    if (inFlight.size >= o.concurrency) await Promise.race(inFlight);
  }
  await Promise.allSettled(inFlight);
}

async function handleOne<S extends z.ZodType>(msg: JsMsg, o: ConsumerOptions<S>, backoff: Backoff, heartbeatMs: number): Promise<void> {
  const heartbeat = setInterval(() => msg.working(), heartbeatMs);
  try {
    const attributes = messagingAttributes(msg.subject, "process", { "messaging.nats.delivery_count": msg.info.deliveryCount });
    await inSpan(o.spanName, { parent: contextFromHeaders(msg.headers), kind: SpanKind.CONSUMER, attributes }, async (span) => {
      let body: z.infer<S>;
      try {
        body = decodeMessage(o.schema, msg.data);
      } catch (err) {
        markFailed(span, err);
        o.log.error("rejected malformed message", { subject: msg.subject, reason: errorMessage(err) });
        await o
          .onMalformed?.(msg, errorMessage(err))
          .catch((hookErr: unknown) => o.log.warn("could not record a malformed message", { subject: msg.subject, reason: errorMessage(hookErr) }));
        // A bare term: nats-server 2.9 ignores "+TERM <reason>" (2.10 added it), which would leave
        // the message to be redelivered forever; the reason is in the log.
        msg.term();
        return;
      }
      span.setAttributes(searchAttributes(body));
      const started = Date.now();
      const measured = (outcome: "done" | "dropped" | "retry", err?: unknown) => {
        const attributes = { "homeostat.handler": o.spanName, outcome, ...(err ? { "error.type": (err as Error).constructor?.name ?? "Error" } : {}) };
        handlerMetrics().messages.add(1, attributes);
        handlerMetrics().duration.record(secondsSince(started), attributes);
      };
      try {
        await o.handle(body, msg);
        msg.ack();
        measured("done");
      } catch (err) {
        // A refused request, a failed build, a retry: each is a span to find and act on.
        markFailed(span, err);
        measured(err instanceof NonRetriableError || err instanceof ContractError ? "dropped" : "retry", err);
        if (err instanceof NonRetriableError || err instanceof ContractError) {
          o.log.error("dropped message", { subject: msg.subject, reason: errorMessage(err) });
          msg.term();
        } else if (err instanceof TransientError && err.retryAfterMs !== undefined) {
          o.log.warn("retrying message", { subject: msg.subject, attempt: msg.info.deliveryCount, delayMs: err.retryAfterMs, reason: errorMessage(err) });
          msg.nak(err.retryAfterMs);
        } else {
          const delay = backoff(msg.info.deliveryCount);
          o.log.warn("retrying message", { subject: msg.subject, attempt: msg.info.deliveryCount, delayMs: delay, reason: errorMessage(err) });
          msg.nak(delay);
        }
      }
    });
  } catch {
    // inSpan already recorded it; the message outcome was set above.
  } finally {
    clearInterval(heartbeat);
  }
}
