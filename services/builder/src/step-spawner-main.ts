/**
 * The step spawner's process (step-spawner.ts says why it exists): starts each command the
 * builder sends, detached (its own process group) with stdin ignored, and sends back its pid,
 * its stdout and stderr as they come, its exit, and the end of its output. It trusts its parent
 * (the only process on its channel) and nothing else, and leaves when the parent does, killing
 * every group it started.
 */
import { spawn, type ChildProcess } from "node:child_process";
import type { SpawnerEvent, SpawnerRequest } from "./step-spawner.ts";

const running = new Map<number, ChildProcess>();

/**
 * Sends not yet written to the channel. Over OUTPUT_BACKLOG, every step's output waits (its
 * pipes are paused, so the step blocks on a full pipe) until the builder has taken what was
 * sent: a step that writes gigabytes of log cannot fill this process's memory.
 */
let backlog = 0;
const OUTPUT_BACKLOG = 64;

/** Pauses or resumes the output of every step running. */
function flowing(on: boolean): void {
  for (const child of running.values()) for (const out of [child.stdout, child.stderr]) out?.[on ? "resume" : "pause"]();
}

// A send that fails means the builder is gone: `disconnect` ends this process.
function send(e: SpawnerEvent): void {
  backlog++;
  process.send?.(e, undefined, {}, () => {
    backlog--;
    if (backlog === 0) flowing(true);
  });
  if (backlog > OUTPUT_BACKLOG) flowing(false);
}

process.on("message", (m: SpawnerRequest) => {
  if (m.type === "detach") {
    const child = running.get(m.id);
    child?.stdout?.destroy();
    child?.stderr?.destroy();
    return;
  }
  const { id, command: c } = m;
  const child = spawn(c.file, c.args, {
    cwd: c.cwd,
    env: c.env,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
    ...(c.uid !== undefined ? { uid: c.uid, gid: c.gid } : {}),
  });
  child.on("error", (err) => {
    running.delete(id);
    send({ type: "error", id, message: err.message });
  });
  if (child.pid === undefined) return; // `error` follows
  running.set(id, child);
  send({ type: "started", id, pid: child.pid });
  const output = (data: Buffer): void => send({ type: "output", id, data });
  child.stdout?.on("data", output);
  child.stderr?.on("data", output);
  child.on("exit", (code, signal) => send({ type: "exit", id, code, signal }));
  child.on("close", () => {
    running.delete(id);
    send({ type: "close", id });
  });
});

process.on("disconnect", () => {
  for (const child of running.values()) {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  process.exit(0);
});
