/**
 * Admission's coalescing of enqueues: a burst of event records names the same keys again and
 * again (an advisory batch of 500 documents for a few dozen packages), and every enqueue that
 * reaches a key after its run began costs one more run. So admission sends each distinct key
 * once per gathering: requests for a key wait until the end of the current turn of the event
 * loop (every record already delivered is handled by then) and, while an enqueue of the key is
 * in flight, until it ends; all that gathered meanwhile goes as one enqueue. The one enqueue is
 * in the most urgent class asked for, with that request's cause (on a tie, the first's), made
 * in that request's trace context (the run continues its trace), and links to the span of
 * every other request it stands for (up to the queue's limit), so each event's trace still
 * leads to the run that served it.
 *
 * Nothing is dropped: every request's promise settles with its key's enqueue, so a record is
 * acked only once its keys are durable in the queue, and a failed enqueue fails every request
 * it stood for (their records are delivered again). No timer is involved: a key alone is sent
 * at the end of the turn it arrived in.
 */
import { maxLinkedEnqueues, mergeFacts, priorities, type FactRevisions, type Key } from "@homeostat/core";
import { context } from "@homeostat/core/telemetry";
import type { EnqueueOutcome, QueueRequest, Settle } from "@homeostat/workqueue";

/** A request to admit: what the queue takes, less the schedule fields admission never sets. */
export type AdmissionRequest = Pick<QueueRequest, "key" | "priority" | "cause" | "facts" | "settle">;

type Waiter = { resolve: (outcome: EnqueueOutcome) => void; reject: (err: unknown) => void };
/**
 * The requests gathered for a key: the one that decides class and cause, with its trace context,
 * the links of all, the facts of all (none when one of them stated none: core mergeFacts), and a
 * settle window only when every one asked for it (one that did not asks for a run now).
 */
type Gathered = {
  request: Omit<AdmissionRequest, "facts" | "settle">;
  context: ReturnType<typeof context.active>;
  links: string[];
  facts: FactRevisions | undefined;
  settle: Settle | undefined;
  waiters: Waiter[];
};

export class KeyCoalescer {
  readonly #enqueue: (req: QueueRequest) => Promise<EnqueueOutcome>;
  /** Requests gathered per key, not sent yet. */
  readonly #gathered = new Map<Key, Gathered>();
  /** Keys with an enqueue in flight: their next gathering goes when it ends. */
  readonly #sending = new Set<Key>();

  constructor(enqueue: (req: QueueRequest) => Promise<EnqueueOutcome>) {
    this.#enqueue = enqueue;
  }

  /**
   * Enqueues `req` together with whatever else asks for its key meanwhile. `link` is the
   * traceparent of the request's own span. Resolves with the enqueue's outcome for the first
   * request of a gathering and "deduped" for the others (merged before they reached the queue).
   */
  enqueue(req: AdmissionRequest, link?: string): Promise<EnqueueOutcome> {
    return new Promise<EnqueueOutcome>((resolve, reject) => {
      const waiter = { resolve, reject };
      const g = this.#gathered.get(req.key);
      if (!g) {
        const { facts, settle, ...request } = req;
        this.#gathered.set(req.key, { request, context: context.active(), links: link ? [link] : [], facts, settle, waiters: [waiter] });
        if (!this.#sending.has(req.key)) setImmediate(() => this.#send(req.key));
        return;
      }
      if (priorities.indexOf(req.priority) < priorities.indexOf(g.request.priority)) {
        const { facts: _facts, settle: _settle, ...request } = req;
        g.request = request;
        g.context = context.active();
      }
      if (link && g.links.length < maxLinkedEnqueues && !g.links.includes(link)) g.links.push(link);
      g.facts = mergeFacts(g.facts, req.facts);
      if (!req.settle) g.settle = undefined;
      g.waiters.push(waiter);
    });
  }

  /** Sends the key's gathering, then the next one if more arrived while it was in flight. */
  #send(key: Key): void {
    const g = this.#gathered.get(key);
    if (!g) return;
    this.#gathered.delete(key);
    this.#sending.add(key);
    context
      .with(g.context, () => this.#enqueue({ ...g.request, links: g.links, ...(g.facts ? { facts: g.facts } : {}), ...(g.settle ? { settle: g.settle } : {}) }))
      .then(
        (outcome) => g.waiters.forEach((w, i) => w.resolve(i === 0 ? outcome : "deduped")),
        (err: unknown) => g.waiters.forEach((w) => w.reject(err)),
      )
      .finally(() => {
        this.#sending.delete(key);
        this.#send(key);
      });
  }
}
