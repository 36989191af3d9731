/**
 * The queue's OpenTelemetry instruments (no-ops unless a MeterProvider is registered): counters
 * and histograms the queue records as it works, and the gauges of `QueueAdmin.observeStats`.
 * One meter name, so a dashboard finds every queue figure in one place.
 */
import { metrics } from "@opentelemetry/api";
import { durationHistogram } from "@homeostat/core/telemetry";

export const meterName = "homeostat.workqueue";

/** Made once per queue: instruments are bound to the MeterProvider registered at that time. */
export function queueMetrics() {
  const meter = metrics.getMeter(meterName);
  return {
    enqueued: meter.createCounter("homeostat.queue.enqueued", {
      unit: "{enqueue}",
      description: "Enqueues by outcome (added, deduped, rerun), class and cause (release, advisory, dependency, resync, …)",
    }),
    retries: meter.createCounter("homeostat.queue.retries", { unit: "{run}", description: "Runs that failed and will be retried" }),
    deadLettered: meter.createCounter("homeostat.queue.dead_lettered", { unit: "{key}", description: "Keys moved to the dead letters" }),
    inFlight: meter.createUpDownCounter("homeostat.queue.in_flight", { unit: "{run}", description: "Runs in progress in this process" }),
    wait: durationHistogram(meter, "homeostat.queue.wait", "From due (enqueued or not-before) to run start, by class and cause"),
    process: durationHistogram(meter, "homeostat.queue.process", "Run duration, by class and cause"),
  };
}

export type QueueMetrics = ReturnType<typeof queueMetrics>;
