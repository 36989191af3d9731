/**
 * The end of the event loop's current turn, shared by everything in ingest that writes to NATS
 * for a request. Each request's handler runs from its own socket's callback, and the NATS client
 * writes what a callback published in one socket write at its end: a write per request, each a
 * loopback syscall that also wakes nats-server (bench:ingest: 1.07 writes an event, a sixth of
 * ingest's CPU). A handler that waits here first publishes together with every other request read
 * in the same turn, in one write. It adds one loop turn, which under load is the time the turn's
 * other requests take anyway.
 */
let waiting: Array<() => void> = [];

/** Resolves at the end of the current event-loop turn, together with every other waiter. */
export function endOfTurn(): Promise<void> {
  return new Promise((resolve) => {
    if (waiting.push(resolve) === 1) {
      setImmediate(() => {
        const ready = waiting;
        waiting = [];
        for (const r of ready) r();
      });
    }
  });
}
