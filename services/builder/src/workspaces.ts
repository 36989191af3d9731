/**
 * Each builder process makes its workspaces under its own directory, `<data>/work/<instance>`,
 * where the instance is `<host>_<pid>_<start time>`. A builder killed mid-build cannot remove
 * its workspace, so the next builder to start on the same host removes the directories of
 * instances that are gone: a pid that no longer runs, or its own pid from an earlier start (pid
 * 1 in a container). A live builder's directory on the same host, and any from another host
 * sharing the volume, are left alone.
 *
 * Before it removes one it ends what still runs there. A sandboxed step dies with its builder
 * (bubblewrap's --die-with-parent) once bwrap has asked for that, a moment after it starts: a
 * builder killed within that moment leaves the sandbox running its step to the end (seen: a
 * builder SIGKILLed 1 ms after starting bwrap left `sleep 60` running; the chaos suite's crasher
 * is killed as its slow step starts). Such a sandbox names the workspace in its command line
 * (`--bind <root> <root>`), and an unsandboxed step works in it (its cwd).
 */
import { readFileSync, readdirSync, readlinkSync } from "node:fs";
import { mkdir, readdir, rm } from "node:fs/promises";
import path from "node:path";
import { instanceHost } from "@homeostat/core";

export type Instance = { id: string; host: string; pid: number };

/**
 * This process as a builder instance (names contain no path separator). Its host is spelled as
 * in the heartbeat's instance id (`<host>-<pid>`), so that a build's mark names the heartbeat
 * that tells whether its builder is alive (liveness.ts).
 */
export function currentInstance(now = Date.now()): Instance {
  const host = instanceHost();
  return { id: `${host}_${process.pid}_${now}`, host, pid: process.pid };
}

const instancePattern = /^(.+)_(\d+)_(\d+)$/;

/** The host and pid of an instance id (currentInstance); undefined for anything else. */
export function parseInstance(id: string): Instance | undefined {
  const [, host, pid] = instancePattern.exec(id) ?? [];
  return host && pid ? { id, host, pid: Number(pid) } : undefined;
}

/** Whether a process of this host has this pid (EPERM: it runs as another user). */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Creates this instance's workspace root and removes those of gone instances, ending the
 * processes still running in them first; returns the root, what was removed and the processes
 * ended (pid and command line).
 */
export async function claimWorkRoot(workDir: string, me: Instance): Promise<{ root: string; removed: string[]; ended: string[] }> {
  await mkdir(workDir, { recursive: true });
  const removed: string[] = [];
  const ended: string[] = [];
  for (const entry of await readdir(workDir, { withFileTypes: true })) {
    const other = parseInstance(entry.name);
    if (!entry.isDirectory() || !other || other.id === me.id || other.host !== me.host) continue;
    if (other.pid !== me.pid && isRunning(other.pid)) continue;
    const dir = path.join(workDir, entry.name);
    ended.push(...endProcessesIn(dir));
    await rm(dir, { recursive: true, force: true });
    removed.push(entry.name);
  }
  const root = path.join(workDir, me.id);
  await mkdir(root, { recursive: true });
  return { root, removed, ended };
}

/**
 * SIGKILLs the processes of this host that run in `dir`: their command line names it or their
 * working directory is in it (/proc; none where there is no /proc). Killing a sandbox's bwrap,
 * the init of its pid namespace, ends everything in that namespace. Returns what it killed.
 */
export function endProcessesIn(dir: string): string[] {
  const inside = (p: string) => p === dir || p.startsWith(`${dir}/`);
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return [];
  }
  const ended: string[] = [];
  for (const pid of pids) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      if (!argv.some(inside) && !inside(workingDirectory(pid))) continue;
      process.kill(Number(pid), "SIGKILL");
      ended.push(`${pid} ${argv.join(" ").trim().slice(0, 120)}`);
    } catch {
      // Gone meanwhile, or not ours to kill.
    }
  }
  return ended;
}

/** A process's working directory; "" for another user's process or a zombie. */
function workingDirectory(pid: string): string {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return "";
  }
}
