/**
 * Each builder process makes its workspaces under its own directory, `<data>/work/<instance>`,
 * where the instance is `<host>_<pid>_<start time>`. A builder killed mid-build cannot remove
 * its workspace (its sandboxed steps die with it: bubblewrap's --die-with-parent), so the next
 * builder to start on the same host removes the directories of instances that are gone: a pid
 * that no longer runs, or its own pid from an earlier start (pid 1 in a container). A live
 * builder's directory on the same host, and any from another host sharing the volume, are
 * left alone.
 */
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

/** Creates this instance's workspace root and removes those of gone instances; returns the root and what was removed. */
export async function claimWorkRoot(workDir: string, me: Instance): Promise<{ root: string; removed: string[] }> {
  await mkdir(workDir, { recursive: true });
  const removed: string[] = [];
  for (const entry of await readdir(workDir, { withFileTypes: true })) {
    const other = parseInstance(entry.name);
    if (!entry.isDirectory() || !other || other.id === me.id || other.host !== me.host) continue;
    if (other.pid !== me.pid && isRunning(other.pid)) continue;
    await rm(path.join(workDir, entry.name), { recursive: true, force: true });
    removed.push(entry.name);
  }
  const root = path.join(workDir, me.id);
  await mkdir(root, { recursive: true });
  return { root, removed };
}
