/**
 * The queue's OpenTelemetry instruments (no-ops unless a MeterProvider is registered): counters
 * and histograms the queue records as it works, and the gauges of `QueueAdmin.observeStats`.
 * One meter name, so a dashboard finds every queue figure in one place.
 */
import { metrics, type Attributes, type ObservableResult } from "@opentelemetry/api";
import { durationHistogram } from "@homeostat/core/telemetry";

export const meterName = "homeostat.workqueue";

/**
 * Counts kept in the process and read by the SDK when it collects: the hottest paths (every
 * enqueue, every run) then pay a map lookup or an increment, not the SDK's per-record work
 * (hashing the attributes), which a busy queue measured.
 */
class EnqueueCounts {
  readonly #counts = new Map<string, { attributes: Attributes; count: number }>();

  /** One more enqueue with this outcome, class and cause (its attributes made once, for the first). */
  add(outcome: string, priority: string, cause: string): void {
    const key = `${outcome} ${priority} ${cause}`;
    const entry = this.#counts.get(key);
    if (entry) entry.count++;
    else this.#counts.set(key, { attributes: { outcome, priority, cause }, count: 1 });
  }

  observe(result: ObservableResult): void {
    for (const { attributes, count } of this.#counts.values()) result.observe(count, attributes);
  }
}

/** The process's counts, whatever queue (producer, worker, admin) made them, as synchronous counters were summed. */
const enqueues = new EnqueueCounts();
const running = { runs: 0 };
/** The meters (one per MeterProvider) that read them already: a second callback would report them twice. */
const observedBy = new WeakSet<object>();

/** Made once per queue: instruments are bound to the MeterProvider registered at that time. */
export function queueMetrics() {
  const meter = metrics.getMeter(meterName);
  if (!observedBy.has(meter)) {
    observedBy.add(meter);
    meter
      .createObservableCounter("homeostat.queue.enqueued", {
        unit: "{enqueue}",
        description:
          "Enqueues by outcome (added, deduped, rerun; withdrawn: a look told it was done; answered: a rerun mark the run had read the facts of), class and cause (release, advisory, dependency, resync, …)",
      })
      .addCallback((result) => enqueues.observe(result));
    meter
      .createObservableUpDownCounter("homeostat.queue.in_flight", { unit: "{run}", description: "Runs in progress in this process" })
      .addCallback((result) => result.observe(running.runs));
  }
  return {
    enqueued: (outcome: string, priority: string, cause: string) => enqueues.add(outcome, priority, cause),
    /** Runs in progress in this process, reported as `homeostat.queue.in_flight`. */
    running,
    retries: meter.createCounter("homeostat.queue.retries", { unit: "{run}", description: "Runs that failed and will be retried" }),
    deadLettered: meter.createCounter("homeostat.queue.dead_lettered", { unit: "{key}", description: "Keys moved to the dead letters" }),
    wait: durationHistogram(meter, "homeostat.queue.wait", "From due (enqueued or not-before) to run start, by class and cause"),
    process: durationHistogram(meter, "homeostat.queue.process", "Run duration, by class and cause"),
  };
}

export type QueueMetrics = ReturnType<typeof queueMetrics>;
