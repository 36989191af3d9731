import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { BuildFailure } from "./errors.ts";
import { runSteps } from "./pipeline.ts";
import { makeWorkspace, stepEnvironment, unsandboxed } from "./test-support.ts";

// The pipeline's own behaviour (order, environment, logs, timeouts, limits), unsandboxed: the
// sandbox has its tests in isolation.test.ts and sandbox.test.ts.
const none = await unsandboxed();

const tmp = await mkdtemp(path.join(tmpdir(), "hs-pipeline-"));
after(() => rm(tmp, { recursive: true, force: true }));

const workspace = (name: string) => makeWorkspace(path.join(tmp, name));

/** Alive = exists and is not a zombie (PID 1 here may not reap orphans). */
async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function waitDead(pid: number, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!(await alive(pid))) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

test("steps run in order in the source dir with exactly the cleared environment", async () => {
  const { ws, cwd } = await workspace("env");
  process.env.HOMEOSTAT_SECRET_FOR_TEST = "leak";
  const lines: string[] = [];
  const res = await runSteps(["echo one > order", "echo two >> order; pwd > where", "env | sort > env.txt"], {
    cwd,
    workspace: ws,
    isolation: none,
    sourceDateEpoch: 1234,
    timeoutMs: 10_000,
    log: (l) => lines.push(l),
  });
  delete process.env.HOMEOSTAT_SECRET_FOR_TEST;
  assert.equal(await readFile(path.join(cwd, "order"), "utf8"), "one\ntwo\n");
  assert.equal((await readFile(path.join(cwd, "where"), "utf8")).trim(), cwd);
  assert.deepEqual(await stepEnvironment(path.join(cwd, "env.txt")), {
    CPATH: `${ws.sysroot}/usr/include`,
    DESTDIR: ws.dest,
    HOME: ws.home,
    LC_ALL: "C",
    LIBRARY_PATH: `${ws.sysroot}/usr/lib`,
    PATH: `${ws.sysroot}/usr/bin:/usr/local/bin:/usr/bin:/bin`,
    SOURCE_DATE_EPOCH: "1234",
    SYSROOT: ws.sysroot,
    TZ: "UTC",
  });
  assert.deepEqual(
    lines.filter((l) => l.startsWith("$ ")),
    ["$ echo one > order", "$ echo two >> order; pwd > where", "$ env | sort > env.txt"],
  );
  assert.deepEqual(
    res.steps.map((s) => [s.step, s.exitCode]),
    [
      ["echo one > order", 0],
      ["echo two >> order; pwd > where", 0],
      ["env | sort > env.txt", 0],
    ],
  );
  assert.equal(res.steps[0]!.log, "$ echo one > order\n");
});

test("a failing step throws BuildFailure with the step, exit code and log tail; later steps do not run", async () => {
  const { ws, cwd } = await workspace("fail");
  const err = await runSteps(["echo compiling main.c", "echo 'main.c:3: error: expected ;' >&2; exit 3", "touch never"], {
    cwd,
    workspace: ws,
    isolation: none,
    sourceDateEpoch: 0,
    timeoutMs: 10_000,
  }).then(
    () => assert.fail("should have failed"),
    (e: unknown) => e,
  );
  assert.ok(err instanceof BuildFailure);
  assert.equal(err.exitCode, 3);
  assert.equal(err.step, "echo 'main.c:3: error: expected ;' >&2; exit 3");
  assert.match(err.message, /step 2 .* exited with code 3/);
  assert.match(err.message, /main\.c:3: error: expected ;/);
  assert.match(err.logTail!, /main\.c:3: error/);
  // each step's own log, the failing one last
  assert.deepEqual(
    err.stepLogs!.map((l) => [l.log, l.exitCode]),
    [
      ["$ echo compiling main.c\ncompiling main.c\n", 0],
      ["$ echo 'main.c:3: error: expected ;' >&2; exit 3\nmain.c:3: error: expected ;\n", 3],
    ],
  );
  await assert.rejects(readFile(path.join(cwd, "never")));
});

test("a step that sleeps forever is killed at the timeout, with its children", async () => {
  const { ws, cwd } = await workspace("timeout");
  const started = Date.now();
  const err = await runSteps(["sleep 1000 & echo $! > child.pid; (sleep 1000; echo grandchild) & echo $! > sub.pid; sleep 1000"], {
    cwd,
    workspace: ws,
    isolation: none,
    sourceDateEpoch: 0,
    timeoutMs: 700,
    killGraceMs: 500,
  }).then(
    () => assert.fail("should have timed out"),
    (e: unknown) => e,
  );
  const elapsed = Date.now() - started;
  assert.ok(err instanceof BuildFailure);
  assert.match(err.message, /timed out after 700 ms/);
  assert.ok(elapsed < 5000, `took ${elapsed} ms`);
  for (const f of ["child.pid", "sub.pid"]) {
    const pid = Number((await readFile(path.join(cwd, f), "utf8")).trim());
    assert.ok(await waitDead(pid), `${f} (${pid}) still alive`);
  }
});

test("a step that ignores SIGTERM is killed after the grace period", async () => {
  const { ws, cwd } = await workspace("term");
  const started = Date.now();
  await assert.rejects(
    runSteps(["trap '' TERM; sleep 1000 & echo $! > child.pid; while :; do sleep 1; done"], {
      cwd,
      workspace: ws,
      isolation: none,
      sourceDateEpoch: 0,
      timeoutMs: 300,
      killGraceMs: 300,
    }),
    (e: unknown) => e instanceof BuildFailure && /timed out/.test(e.message),
  );
  assert.ok(Date.now() - started < 5000);
  const pid = Number((await readFile(path.join(cwd, "child.pid"), "utf8")).trim());
  assert.ok(await waitDead(pid));
});

test("background processes a successful step leaves behind are killed", async () => {
  const { ws, cwd } = await workspace("leftover");
  await runSteps(["sleep 1000 > /dev/null 2>&1 & echo $! > bg.pid"], { cwd, workspace: ws, isolation: none, sourceDateEpoch: 0, timeoutMs: 10_000 });
  const pid = Number((await readFile(path.join(cwd, "bg.pid"), "utf8")).trim());
  assert.ok(await waitDead(pid));
});

test("the log is bounded (the end is kept) and aborting kills the step", async () => {
  const { ws, cwd } = await workspace("bounded");
  const res = await runSteps(["i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done"], {
    cwd,
    workspace: ws,
    isolation: none,
    sourceDateEpoch: 0,
    timeoutMs: 10_000,
    maxLogBytes: 1000,
  });
  const log = res.steps[0]!.log;
  assert.match(log, /^\[\.\.\. \d+ bytes of log dropped \.\.\.\]/);
  assert.match(log, /line 1999\n$/);
  assert.ok(log.length < 1100);

  const ac = new AbortController();
  setTimeout(() => ac.abort(new Error("draining")), 200);
  await assert.rejects(runSteps(["sleep 1000"], { cwd, workspace: ws, isolation: none, sourceDateEpoch: 0, timeoutMs: 60_000, signal: ac.signal }), /draining/);
});
