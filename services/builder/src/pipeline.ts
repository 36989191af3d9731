/**
 * The build pipeline: each step is `sh -c <step>`, run in the unpacked source directory with a
 * cleared environment (exactly the variables of `stepEnvironment`), in its own process group
 * (spawned detached), so that a timeout or an abort kills the step and every child it started.
 * When a step exits, whatever it left running in its group is killed too. Under bubblewrap
 * (isolation.ts) the group is bwrap's, and bwrap takes the step's PID namespace down with it;
 * `--die-with-parent` does the same when the builder itself dies (steps are started by the
 * builder's step spawner, which leaves with it: step-spawner.ts).
 *
 * The workspace may hold at most `isolation.limits.maxOutputBytes` (source, sysroot, outputs and
 * the sandbox's /tmp together): it is measured (`workspaceSize`, in-process) while a step runs
 * (every 200 ms, or four times as long as a measurement took, so that a big tree costs at most
 * a fifth of a core) and once more when the step exits. A step that grows it past the limit is
 * killed and the build fails saying so. Between two measurements a step can overshoot by what it writes in that time, each
 * of its files capped by the file size limit (RLIMIT_FSIZE).
 *
 * Each step's stdout and stderr are merged into one bounded log per step (the last
 * `maxLogBytes` are kept), returned for the build to store. A step that exits non-zero, dies
 * of a signal or runs past the deadline throws BuildFailure naming the step, its exit code and
 * the end of its log, and carrying the logs of every step run so far. The deadline
 * (`timeoutMs`) covers all steps, and several runs can share one (`startedAt`): a package
 * build applies its patches, runs its steps and then its test as three runs of one budget.
 */
import { addAbortListener } from "node:events";
import { lstat, readdir } from "node:fs/promises";
import path from "node:path";
import { constants as os } from "node:os";
import { BuildFailure, type StepLog } from "./errors.ts";
import { isolatedCommand, prepareWorkspace, type BuildLimits, type Isolation } from "./isolation.ts";
import { stepSpawner, type StepProcess } from "./step-spawner.ts";

export type { StepLog };

export type Workspace = {
  /** The workspace root: `home`, `dest`, `sysroot` live under it. */
  root: string;
  home: string;
  dest: string;
  sysroot: string;
};

export function workspaceLayout(root: string): Workspace {
  return { root, home: path.join(root, "home"), dest: path.join(root, "dest"), sysroot: path.join(root, "sysroot") };
}

/** The complete environment of a step: nothing of the builder's own environment leaks in. */
export function stepEnvironment(ws: Workspace, sourceDateEpoch: number): Record<string, string> {
  return {
    PATH: `${ws.sysroot}/usr/bin:/usr/local/bin:/usr/bin:/bin`,
    HOME: ws.home,
    SOURCE_DATE_EPOCH: String(sourceDateEpoch),
    LC_ALL: "C",
    TZ: "UTC",
    DESTDIR: ws.dest,
    SYSROOT: ws.sysroot,
    CPATH: `${ws.sysroot}/usr/include`,
    LIBRARY_PATH: `${ws.sysroot}/usr/lib`,
  };
}

export type RunStepsOptions = {
  /** Directory the steps run in (the unpacked source). */
  cwd: string;
  workspace: Workspace;
  sourceDateEpoch: number;
  /** Time limit for all the steps together. */
  timeoutMs: number;
  /** When that limit started running (ms since the epoch), for runs sharing one. Default now. */
  startedAt?: number;
  /** How errors name a step, e.g. `patch 1 (fix.patch)`. Default `step <n> (<command>)`. */
  describe?: (index: number, step: string) => string;
  /** How steps are sandboxed (resolved once per builder by resolveIsolation). */
  isolation: Isolation;
  /** Log bytes kept per step (the end of its log). Default 1 MiB. */
  maxLogBytes?: number;
  /** Receives each line of output as it comes (e.g. to the service log). */
  log?: (line: string) => void;
  /** Aborting kills the running step's process group; the run rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Grace between SIGTERM and SIGKILL on timeout or abort. Default 2 s. */
  killGraceMs?: number;
};

export type RunStepsResult = { steps: StepLog[]; durationMs: number };

/** Bounded log: keeps the last `max` bytes and counts what it dropped. */
class BoundedLog {
  private chunks: Buffer[] = [];
  private bytes = 0;
  dropped = 0;
  private readonly max: number;
  constructor(max: number) {
    this.max = max;
  }
  add(b: Buffer): void {
    this.chunks.push(b);
    this.bytes += b.length;
    for (let first = this.chunks[0]; this.bytes > this.max && first; first = this.chunks[0]) {
      const excess = this.bytes - this.max;
      if (first.length <= excess) {
        this.chunks.shift();
        this.bytes -= first.length;
        this.dropped += first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.bytes -= excess;
        this.dropped += excess;
      }
    }
  }
  text(): string {
    const body = Buffer.concat(this.chunks).toString("utf8");
    return this.dropped > 0 ? `[... ${this.dropped} bytes of log dropped ...]\n${body}` : body;
  }
}

/** The last `lines` lines (at most `bytes` bytes) of a log. */
export function logTail(log: string, lines = 40, bytes = 4096): string {
  let tail = log
    .split("\n")
    .slice(-lines - 1)
    .join("\n");
  if (tail.length > bytes) tail = `...${tail.slice(-bytes)}`;
  return tail.trimEnd();
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

/** Runs the steps in order; resolves with the log, or throws BuildFailure at the first failure. */
export async function runSteps(steps: readonly string[], opts: RunStepsOptions): Promise<RunStepsResult> {
  const started = Date.now();
  // Nothing to run (a package without patches or a test): no workspace preparation either, which
  // as root walks and chowns the whole workspace.
  if (steps.length === 0) return { steps: [], durationMs: 0 };
  const deadline = (opts.startedAt ?? started) + opts.timeoutMs;
  const env = stepEnvironment(opts.workspace, opts.sourceDateEpoch);
  await prepareWorkspace(opts.isolation, opts.workspace.root);
  const done: StepLog[] = [];
  for (const [i, step] of steps.entries()) {
    const log = new BoundedLog(opts.maxLogBytes ?? 1024 * 1024);
    const header = `$ ${step}\n`;
    log.add(Buffer.from(header));
    opts.log?.(header.trimEnd());
    const stepStarted = Date.now();
    try {
      const exitCode = await runOne(step, i, env, opts, log, deadline);
      const size = await workspaceSize(opts.workspace.root);
      const problem = typeof size === "string" ? size : size > opts.isolation.limits.maxOutputBytes ? overLimit(size, opts.isolation.limits) : undefined;
      if (problem !== undefined) throw new BuildFailure(`${stepLabel(opts, i, step)}: ${problem}`, { step, exitCode });
      done.push({ step, log: log.text(), exitCode, durationMs: Date.now() - stepStarted });
    } catch (e) {
      if (!(e instanceof BuildFailure)) throw e;
      done.push({ step, log: log.text(), exitCode: e.exitCode ?? null, durationMs: Date.now() - stepStarted });
      throw new BuildFailure(e.message, {
        step,
        exitCode: e.exitCode ?? null,
        ...(e.logTail !== undefined ? { logTail: e.logTail } : {}),
        stepLogs: done,
        cause: e.cause,
      });
    }
  }
  return { steps: done, durationMs: Date.now() - started };
}

/**
 * The workspace's total apparent size in bytes (what an archive of it would hold, sparse files
 * at their full size), or why it cannot be measured: what `du -s -x -B1 --apparent-size` says
 * (every entry's size once, a hard-linked file once, nothing on another file system), measured
 * in-process. Spawning `du` from the builder cost a fork of a large process per measurement, and
 * at catalog scale (bench:storm: small builds, one or two measurements each) that was a good part
 * of the builder's time. A file deleted while the walk runs is no error; a directory a step made
 * unreadable is: what it holds cannot be counted.
 */
export async function workspaceSize(root: string): Promise<number | string> {
  let device: number;
  try {
    device = (await lstat(root)).dev;
  } catch (err) {
    return unmeasurable(root, err);
  }
  const linked = new Set<number>();
  let bytes = 0;
  const entrySize = async (p: string): Promise<string | undefined> => {
    let st;
    try {
      st = await lstat(p);
    } catch (err) {
      return isGone(err) ? undefined : unmeasurable(p, err);
    }
    if (st.dev !== device) return undefined;
    if (st.nlink > 1 && !st.isDirectory()) {
      if (linked.has(st.ino)) return undefined;
      linked.add(st.ino);
    }
    bytes += st.size;
    return st.isDirectory() ? directorySize(p) : undefined;
  };
  const directorySize = async (dir: string): Promise<string | undefined> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (err) {
      return isGone(err) ? undefined : unmeasurable(dir, err);
    }
    // A directory's entries at once: the lstat calls overlap in libuv's thread pool.
    const problems = await Promise.all(names.map((name) => entrySize(path.join(dir, name))));
    return problems.find((p) => p !== undefined);
  };
  const problem = await entrySize(root);
  return problem ?? bytes;
}

function isGone(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}

function unmeasurable(p: string, err: unknown): string {
  return `the workspace cannot be measured (${p}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); a step must leave it readable`;
}

function overLimit(bytes: number, limits: BuildLimits): string {
  return `the workspace grew to ${bytes} bytes, over its limit of ${limits.maxOutputBytes} (HOMEOSTAT_BUILD_MAX_OUTPUT_BYTES)`;
}

/** Watches the workspace while a step runs; calls `over` (once) with the reason to kill it. Returns the stop function. */
function watchWorkspace(root: string, limits: BuildLimits, over: (why: string) => void): () => void {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const measure = async (): Promise<void> => {
    const started = Date.now();
    const size = await workspaceSize(root);
    if (stopped) return;
    if (typeof size === "string") return over(size);
    if (size > limits.maxOutputBytes) return over(overLimit(size, limits));
    timer = setTimeout(() => void measure(), Math.max(200, 4 * (Date.now() - started)));
  };
  timer = setTimeout(() => void measure(), 200);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function stepLabel(opts: RunStepsOptions, index: number, step: string): string {
  return opts.describe?.(index, step) ?? `step ${index + 1} (${step})`;
}

/** What an exit by a limit's signal means (a shell reports a child's signal as 128 + its number). */
function limitHint(code: number | null, signal: NodeJS.Signals | null, limits: BuildLimits): string {
  const hit = (sig: "SIGXCPU" | "SIGXFSZ"): boolean => signal === sig || code === 128 + os.signals[sig];
  if (hit("SIGXCPU")) return ` (${signal ?? `128+SIGXCPU`}: a process used up its ${limits.cpuSeconds} s of CPU time, HOMEOSTAT_BUILD_CPU_SECONDS)`;
  if (hit("SIGXFSZ")) return ` (${signal ?? `128+SIGXFSZ`}: a file reached the size limit of ${limits.maxFileBytes} bytes, HOMEOSTAT_BUILD_MAX_FILE_BYTES)`;
  return "";
}

async function runOne(step: string, index: number, env: Record<string, string>, opts: RunStepsOptions, log: BoundedLog, deadline: number): Promise<number> {
  opts.signal?.throwIfAborted();
  const cmd = isolatedCommand(opts.isolation, opts.workspace.root, opts.cwd, env, ["/bin/sh", "-c", step]);
  const label = stepLabel(opts, index, step);
  let child: StepProcess;
  try {
    // Through the builder's spawner, not spawn() here: see step-spawner.ts.
    child = await stepSpawner().start({ file: cmd.file, args: cmd.args, cwd: opts.cwd, env, ...(cmd.uid !== undefined ? { uid: cmd.uid, gid: cmd.gid } : {}) });
  } catch (err) {
    throw new BuildFailure(`${label} could not start: ${(err as Error).message}`, { step, cause: err });
  }
  return new Promise<number>((resolve, reject) => {
    const pid = child.pid;
    let partial = "";
    const onData = (b: Buffer): void => {
      log.add(b);
      if (!opts.log) return;
      const text = partial + b.toString("utf8");
      const lines = text.split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) opts.log(l);
    };

    let why: "timeout" | "abort" | { output: string } | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    let pipeTimer: NodeJS.Timeout | undefined;
    const stop = (reason: NonNullable<typeof why>): void => {
      if (why) return;
      why = reason;
      killGroup(pid, "SIGTERM");
      killTimer = setTimeout(() => killGroup(pid, "SIGKILL"), opts.killGraceMs ?? 2000);
    };
    const timer = setTimeout(() => stop("timeout"), Math.max(0, deadline - Date.now()));
    // Also a signal that aborted before the step started: the step is stopped at once.
    const abortListener = opts.signal && addAbortListener(opts.signal, () => stop("abort"));
    // Over its output limit a step gets no grace: it is still writing.
    const stopWatching = watchWorkspace(opts.workspace.root, opts.isolation.limits, (output) => {
      stop({ output });
      killGroup(pid, "SIGKILL");
    });

    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      exit = { code, signal };
      // Whatever the step left behind in its group goes too (also releases our pipes).
      killGroup(pid, "SIGKILL");
      // A process that escaped the group (setsid) may still hold our pipes: stop waiting for it.
      pipeTimer = setTimeout(() => child.detachOutput(), 2000);
    };
    const onLost = (err: Error): void => {
      // The spawner died: the step's exit is lost with it, so the step goes too.
      cleanup();
      killGroup(pid, "SIGKILL");
      reject(new BuildFailure(`${label} was lost: ${err.message}`, { step, cause: err }));
    };
    const onClose = (): void => {
      cleanup();
      if (partial && opts.log) opts.log(partial);
      const text = log.text();
      const e = exit ?? { code: null, signal: null };
      if (why === "abort") {
        reject(opts.signal?.reason ?? new Error("build aborted"));
      } else if (typeof why === "object") {
        reject(new BuildFailure(`${label} was killed: ${why.output}\n${logTail(text)}`, { step, exitCode: e.code, logTail: logTail(text) }));
      } else if (why === "timeout") {
        reject(
          new BuildFailure(`${label} timed out after ${opts.timeoutMs} ms; its process group was killed\n${logTail(text)}`, {
            step,
            exitCode: e.code,
            logTail: logTail(text),
          }),
        );
      } else if (e.code !== 0) {
        const how = (e.code === null ? `was killed by ${e.signal}` : `exited with code ${e.code}`) + limitHint(e.code, e.signal, opts.isolation.limits);
        reject(new BuildFailure(`${label} ${how}\n${logTail(text)}`, { step, exitCode: e.code, logTail: logTail(text) }));
      } else {
        resolve(0);
      }
    };
    // Last: what the step reported meanwhile is handed over now, with everything above in place.
    child.attach({ output: onData, exit: onExit, close: onClose, error: onLost });
    function cleanup(): void {
      stopWatching();
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      if (pipeTimer) clearTimeout(pipeTimer);
      abortListener?.[Symbol.dispose]();
    }
  });
}
