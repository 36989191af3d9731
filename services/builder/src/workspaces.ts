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
import os from "node:os";
import path from "node:path";

export type Instance = { id: string; host: string; pid: number };

/** This process as a builder instance (names contain no path separator). */
export function currentInstance(now = Date.now()): Instance {
  const host =
    os
      .hostname()
      .replace(/[^A-Za-z0-9.-]/g, "-")
      .slice(0, 64) || "host";
  return { id: `${host}_${process.pid}_${now}`, host, pid: process.pid };
}

const instancePattern = /^(.+)_(\d+)_(\d+)$/;

function isRunning(pid: number): boolean {
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
    const m = instancePattern.exec(entry.name);
    if (!entry.isDirectory() || !m || entry.name === me.id || m[1] !== me.host) continue;
    const pid = Number(m[2]);
    if (pid !== me.pid && isRunning(pid)) continue;
    await rm(path.join(workDir, entry.name), { recursive: true, force: true });
    removed.push(entry.name);
  }
  const root = path.join(workDir, me.id);
  await mkdir(root, { recursive: true });
  return { root, removed };
}
