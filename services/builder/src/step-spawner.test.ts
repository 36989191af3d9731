/** The step spawner: what a step reports reaches its handlers whenever they are attached, and a spawner that dies fails its steps and is replaced. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { StepSpawner, type StepHandlers, type StepProcess } from "./step-spawner.ts";

const sh = (script: string) => ({ file: "/bin/sh", args: ["-c", script], cwd: "/tmp", env: { PATH: "/usr/bin:/bin" } });

/** Everything `step` reports, once its output has ended (or it was lost). */
function reports(step: StepProcess): Promise<{ output: string; exit?: [number | null, string | null]; lost?: string }> {
  return new Promise((resolve) => {
    let output = "";
    let exit: [number | null, string | null] | undefined;
    const handlers: StepHandlers = {
      output: (b) => void (output += b.toString()),
      exit: (code, signal) => void (exit = [code, signal]),
      close: () => resolve({ output, ...(exit ? { exit } : {}) }),
      error: (err) => resolve({ output, lost: err.message }),
    };
    step.attach(handlers);
  });
}

/** The processes whose parent is `pid` (from /proc). */
function childrenOf(pid: number): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        // The parent pid is the second field after the command, which is in parentheses.
        return Number(readFileSync(`/proc/${d}/stat`, "utf8").split(") ")[1]?.split(" ")[1]) === pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

test("a step's output, exit and end reach handlers attached after all of them came", async () => {
  const spawner = new StepSpawner();
  const step = await spawner.start(sh("echo out; echo err >&2; exit 3"));
  assert.ok(step.pid > 0);
  await new Promise((r) => setTimeout(r, 300));
  const got = await reports(step);
  assert.deepEqual(got.exit, [3, null]);
  assert.deepEqual(got.output.split("\n").filter(Boolean).sort(), ["err", "out"]);
});

test("a command that cannot start is refused with the reason; the next one starts", async () => {
  const spawner = new StepSpawner();
  await assert.rejects(spawner.start({ ...sh(""), file: "/no/such/program" }), /ENOENT/);
  assert.deepEqual((await reports(await spawner.start(sh("echo again")))).output, "again\n");
});

test("a spawner that dies fails the steps it ran and is replaced by the next start", async () => {
  const spawner = new StepSpawner();
  const before = new Set(childrenOf(process.pid));
  const long = await spawner.start(sh("sleep 30"));
  const [spawnerPid] = childrenOf(process.pid).filter((p) => !before.has(p));
  assert.ok(spawnerPid, "the spawner is a child of this process");
  const lost = reports(long);
  process.kill(spawnerPid, "SIGKILL");
  assert.match((await lost).lost ?? "", /step spawner exited .*lost/);
  try {
    process.kill(-long.pid, "SIGKILL"); // its group outlives a spawner killed this hard
  } catch {
    // gone
  }
  assert.deepEqual((await reports(await spawner.start(sh("echo after")))).output, "after\n");
});

test("a step that writes faster than the builder takes its output loses none of it", async () => {
  const spawner = new StepSpawner();
  const step = await spawner.start(sh("head -c 20000000 /dev/zero | tr '\\0' x; echo end"));
  let bytes = 0;
  let tail = "";
  await new Promise<void>((resolve, reject) =>
    step.attach({
      output: (b) => {
        bytes += b.length;
        tail = (tail + b.toString()).slice(-8);
      },
      exit: () => {},
      close: () => resolve(),
      error: reject,
    }),
  );
  assert.equal(bytes, 20_000_004);
  assert.equal(tail, "xxxxend\n");
});
