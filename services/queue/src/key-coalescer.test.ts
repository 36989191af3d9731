/** The admission coalescer against a recording enqueue: what goes to the queue, when, and what each request is told. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { maxLinkedEnqueues, type Key } from "@homeostat/core";
import type { EnqueueOutcome, QueueRequest } from "@homeostat/workqueue";
import { KeyCoalescer, type AdmissionRequest } from "./key-coalescer.ts";

const traceparent = (n: number) => `00-${n.toString(16).padStart(32, "0")}-${"1".repeat(16)}-01`;
const advisory = (key: Key, id: string): AdmissionRequest => ({ key, priority: "advisory", cause: { type: "advisory", id } });
const release = (key: Key, id: string): AdmissionRequest => ({ key, priority: "release", cause: { type: "release", id } });

/** An enqueue that records each request and answers when the test says so. */
function recordingQueue() {
  const sent: QueueRequest[] = [];
  const answers: { resolve: (o: EnqueueOutcome) => void; reject: (e: unknown) => void }[] = [];
  const enqueue = (req: QueueRequest) =>
    new Promise<EnqueueOutcome>((resolve, reject) => {
      sent.push(req);
      answers.push({ resolve, reject });
    });
  return { sent, answers, coalescer: new KeyCoalescer(enqueue) };
}

const turn = () => new Promise((r) => setImmediate(r));

test("requests for a key in one turn go as one enqueue: the most urgent class with its cause, every link once", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const outcomes = [
    coalescer.enqueue(release("package/zlib", "r1"), traceparent(1)),
    coalescer.enqueue(advisory("package/zlib", "a1"), traceparent(2)),
    coalescer.enqueue(advisory("package/zlib", "a2"), traceparent(2)),
    coalescer.enqueue(release("package/xz", "r2"), traceparent(3)),
  ];
  assert.equal(sent.length, 0, "nothing is sent before the turn ends");
  await turn();
  assert.deepEqual(sent, [
    { key: "package/zlib", priority: "advisory", cause: { type: "advisory", id: "a1" }, links: [traceparent(1), traceparent(2)] },
    { key: "package/xz", priority: "release", cause: { type: "release", id: "r2" }, links: [traceparent(3)] },
  ]);
  answers[0]?.resolve("added");
  answers[1]?.resolve("rerun");
  assert.deepEqual(await Promise.all(outcomes), ["added", "deduped", "deduped", "rerun"], "the first request has the queue's outcome, the rest were merged");
});

test("a tie of classes keeps the first request's cause; links stop at the queue's limit", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const all = Array.from({ length: maxLinkedEnqueues + 4 }, (_, i) => coalescer.enqueue(advisory("package/zlib", `a${i}`), traceparent(i + 1)));
  await turn();
  assert.equal(sent.length, 1);
  assert.deepEqual(sent[0]?.cause, { type: "advisory", id: "a0" });
  assert.deepEqual(
    sent[0]?.links,
    Array.from({ length: maxLinkedEnqueues }, (_, i) => traceparent(i + 1)),
  );
  answers[0]?.resolve("added");
  await Promise.all(all);
});

test("requests arriving while the key's enqueue is in flight go together once it ends; other keys do not wait", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const first = coalescer.enqueue(advisory("package/zlib", "a1"));
  await turn();
  assert.equal(sent.length, 1);
  const later = [coalescer.enqueue(advisory("package/zlib", "a2")), coalescer.enqueue(release("package/zlib", "r1"))];
  const other = coalescer.enqueue(release("package/xz", "r2"));
  await turn();
  assert.deepEqual(
    sent.map((r) => r.key),
    ["package/zlib", "package/xz"],
    "zlib waits for its enqueue in flight, xz goes",
  );
  answers[0]?.resolve("added");
  assert.equal(await first, "added");
  await turn();
  assert.equal(sent.length, 3);
  assert.deepEqual(sent[2], { key: "package/zlib", priority: "advisory", cause: { type: "advisory", id: "a2" }, links: [] });
  answers[1]?.resolve("added");
  answers[2]?.resolve("rerun");
  assert.deepEqual(await Promise.all([...later, other]), ["rerun", "deduped", "added"]);
});

test("a failed enqueue fails every request it stood for; the key's next requests still go", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const failing = [coalescer.enqueue(advisory("package/zlib", "a1")), coalescer.enqueue(advisory("package/zlib", "a2"))];
  await turn();
  const next = coalescer.enqueue(advisory("package/zlib", "a3"));
  answers[0]?.reject(new Error("no responders"));
  for (const r of await Promise.allSettled(failing)) assert.equal(r.status === "rejected" && (r.reason as Error).message, "no responders");
  await turn();
  assert.equal(sent.length, 2);
  answers[1]?.resolve("added");
  assert.equal(await next, "added");
});

test("the facts of requests gathered into one enqueue are merged: each store at its latest revision, none when one request stated none", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const withFacts = (key: Key, id: string, advisories: number): AdmissionRequest => ({ ...advisory(key, id), facts: { advisories } });
  const all = [
    coalescer.enqueue(withFacts("package/zlib", "a1", 7)),
    coalescer.enqueue(withFacts("package/zlib", "a2", 3)),
    coalescer.enqueue(withFacts("package/xz", "a3", 2)),
    coalescer.enqueue(release("package/xz", "r1")),
  ];
  await turn();
  assert.deepEqual(
    sent.map((r) => [r.key, r.facts]),
    [
      ["package/zlib", { advisories: 7 }],
      ["package/xz", undefined],
    ],
  );
  answers.forEach((a) => a.resolve("added"));
  await Promise.all(all);
});

test("a gathering settles only when every request in it asked to: one that did not asks for a run now", async () => {
  const { sent, answers, coalescer } = recordingQueue();
  const settle = { quietMs: 1_000, maxMs: 30_000 };
  const all = [
    coalescer.enqueue({ ...advisory("package/zlib", "a1"), settle }),
    coalescer.enqueue({ ...advisory("package/zlib", "a2"), settle }),
    coalescer.enqueue({ ...advisory("package/xz", "a3"), settle }),
    coalescer.enqueue(release("package/xz", "r1")),
  ];
  await turn();
  assert.deepEqual(
    sent.map((r) => [r.key, r.settle]),
    [
      ["package/zlib", settle],
      ["package/xz", undefined],
    ],
  );
  answers.forEach((a) => a.resolve("added"));
  await Promise.all(all);
});
