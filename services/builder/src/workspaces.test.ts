/**
 * claimWorkRoot on a real /proc: the workspaces of builders that are gone are removed, and what
 * still runs in them is ended first — a sandbox whose builder died before bwrap could tie it to
 * its parent, an unsandboxed step — while a live builder's directory and its steps are left alone.
 * The sandbox case needs bubblewrap (skipped, saying so, when it is not installed).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { access, chmod, mkdir, mkdtemp, readdir, readFile, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig } from "@homeostat/core/config";
import { isolatedCommand, prepareWorkspace, resolveIsolation } from "./isolation.ts";
import { claimWorkRoot, currentInstance, type Instance } from "./workspaces.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-workspaces-"));
// Searchable by the build uid, which a root builder starts bwrap as.
await chmod(tmp, 0o711);
const children: ChildProcess[] = [];
after(async () => {
  for (const c of children) c.kill("SIGKILL");
  await rm(tmp, { recursive: true, force: true });
});

const bwrapInstalled = await access("/usr/bin/bwrap").then(
  () => true,
  () => false,
);

/** A pid that ran and no longer does. */
async function gonePid(): Promise<number> {
  const child = spawn("true");
  await new Promise((resolve) => child.once("exit", resolve));
  return child.pid!;
}

/** Starts `argv` detached (a process group of its own, as the builder starts steps); resolves once it runs. */
function start(file: string, args: string[], o: { cwd?: string; uid?: number; gid?: number } = {}): ChildProcess {
  const child = spawn(file, args, { detached: true, stdio: "ignore", ...o });
  children.push(child);
  return child;
}

/** Whether `child` has exited within 5 s. */
function exited(child: ChildProcess): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), 5_000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

test("a gone builder's unsandboxed step and sandbox are ended before its workspace goes; a live builder's are left", { timeout: 30_000 }, async (t) => {
  const workDir = path.join(tmp, "work");
  const me = currentInstance();
  const goneBuilder = await gonePid();
  const gone: Instance = { id: `${me.host}_${goneBuilder}_1`, host: me.host, pid: goneBuilder };
  const keeper = start("sleep", ["60"]);
  const live: Instance = { id: `${me.host}_${keeper.pid}_2`, host: me.host, pid: keeper.pid! };
  const goneRoot = path.join(workDir, gone.id, "ws-1");
  const liveRoot = path.join(workDir, live.id, "ws-1");
  await mkdir(goneRoot, { recursive: true, mode: 0o711 });
  await mkdir(liveRoot, { recursive: true, mode: 0o711 });
  await chmod(workDir, 0o711);
  for (const d of [path.dirname(goneRoot), path.dirname(liveRoot)]) await chmod(d, 0o711);

  const unsandboxed = start("sleep", ["60"], { cwd: goneRoot });
  const liveStep = start("sleep", ["60"], { cwd: liveRoot });
  let sandbox: ChildProcess | undefined;
  if (bwrapInstalled) {
    // A build uid of its own: sandbox.test.ts counts the processes of the default one (its fork bomb).
    const iso = await resolveIsolation(loadConfig({ HOMEOSTAT_BUILD_UID: "65531" }).buildSandbox);
    await prepareWorkspace(iso, goneRoot);
    const cmd = isolatedCommand(iso, goneRoot, goneRoot, { PATH: "/usr/bin:/bin" }, ["/bin/sh", "-c", "sleep 60"]);
    sandbox = start(cmd.file, cmd.args, { cwd: "/", ...(cmd.uid !== undefined ? { uid: cmd.uid, gid: cmd.gid } : {}) });
  } else t.diagnostic("the sandboxed case is left out: bwrap (Debian package bubblewrap) is not installed");
  // Until the step inside the sandbox works in the workspace, beside the unsandboxed one (bounded: 5 s).
  for (let i = 0; i < 100 && (await processesIn(goneRoot)).working < (sandbox ? 2 : 1); i++) await new Promise((r) => setTimeout(r, 50));

  const claimed = await claimWorkRoot(workDir, me);
  assert.deepEqual(claimed.removed, [gone.id], "the gone builder's workspaces are removed, the live one's kept");
  assert.ok(await exited(unsandboxed), "the unsandboxed step working in the gone workspace ends");
  assert.equal(unsandboxed.signalCode, "SIGKILL", "the unsandboxed step working in the gone workspace was ended");
  if (sandbox) {
    assert.ok(await exited(sandbox), "the sandbox of the gone builder ends");
    assert.deepEqual(await processesIn(goneRoot), { named: 0, working: 0 }, "nothing of the sandbox runs any more (its pid namespace went with its init)");
  }
  assert.ok(claimed.ended.length >= (sandbox ? 2 : 1), `what was ended is named: ${JSON.stringify(claimed.ended)}`);
  assert.equal(liveStep.exitCode ?? liveStep.signalCode, null, "the live builder's step runs on");
  assert.equal(keeper.exitCode ?? keeper.signalCode, null);
  await access(liveRoot);
});

/** How many processes other than this one name `root` in their command line, and how many work in it. */
async function processesIn(root: string): Promise<{ named: number; working: number }> {
  const found = { named: 0, working: 0 };
  for (const pid of (await readdir("/proc")).filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid)) {
    const argv = (await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "")).split("\0");
    const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => "");
    if (argv.some((a) => a.startsWith(root))) found.named++;
    if (cwd.startsWith(root)) found.working++;
  }
  return found;
}
