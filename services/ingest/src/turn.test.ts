import assert from "node:assert/strict";
import { test } from "node:test";
import { endOfTurn } from "./turn.ts";

test("the waiters of one turn resolve together, in one callback; a waiter asking after that waits for a later one", async () => {
  const order: string[] = [];
  const a = endOfTurn().then(() => order.push("a"));
  setImmediate(() => order.push("immediate queued between a and b"));
  const b = endOfTurn().then(() => order.push("b"));
  queueMicrotask(() => order.push("microtask"));
  await Promise.all([a, b]);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ["microtask", "a", "b", "immediate queued between a and b"]);
  setImmediate(() => order.push("immediate queued before c"));
  await endOfTurn().then(() => order.push("c"));
  assert.deepEqual(order.slice(4), ["immediate queued before c", "c"]);
});
