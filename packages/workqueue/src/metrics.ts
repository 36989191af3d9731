/**
 * The queue's OpenTelemetry instruments (no-ops unless a MeterProvider is registered): counters
 * and histograms the queue records as it works, and the gauges of `QueueAdmin.observeStats`.
 * One meter name, so a dashboard finds every queue figure in one place.
 */
import { metrics } from "@opentelemetry/api";

export const meterName = "homeostat.workqueue";

/** Made once per queue: instruments are bound to the MeterProvider registered at that time. */
export function queueMetrics() {
  const meter = metrics.getMeter(meterName);
  return {
    enqueued: meter.createCounter("homeostat.queue.enqueued", { description: "Enqueues by outcome: added, deduped, rerun" }),
    retries: meter.createCounter("homeostat.queue.retries", { description: "Runs that failed and will be retried" }),
    deadLettered: meter.createCounter("homeostat.queue.dead_lettered", { description: "Keys moved to the dead letters" }),
    inFlight: meter.createUpDownCounter("homeostat.queue.in_flight", { description: "Runs in progress in this process" }),
    wait: meter.createHistogram("homeostat.queue.wait", { unit: "ms", description: "From due (enqueued or not-before) to run start" }),
    process: meter.createHistogram("homeostat.queue.process", { unit: "ms", description: "Run duration" }),
  };
}

export type QueueMetrics = ReturnType<typeof queueMetrics>;
