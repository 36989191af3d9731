/**
 * Step processes are started by a small process of the builder's own (step-spawner-main.ts),
 * not by the builder itself.
 *
 * Why: Node starts a child with fork() then exec(), in the main thread. fork() copies the page
 * tables of the whole process and marks every page copy-on-write, so its cost grows with the
 * process: on this kind of machine (a virtual machine, where a page fault costs about 11 µs)
 * a spawn from a process of 53 MB took 6.8 ms of the main thread, from one of 310 MB 19 ms, and
 * in the builder under load (bench:storm's base advisory) the spawns were 2.6 s of its 10.5 s of
 * CPU, each blocking every other build meanwhile. The spawner is a plain Node process that holds
 * nothing else, so its forks stay at the small size; the builder sends it what to run over the
 * IPC channel and gets back the pid, the output and the exit. bench:storm (quick size), two
 * alternated pairs: the builder's CPU in the base advisory 5.6–6.6 → 3.0–4.1 s, in the latency
 * scenario 8.0–9.2 → 4.8–6.0 s; the spawner's own, over a whole run (bring-up and both), 1.2 s.
 *
 * One spawner per builder process, started on first use and again after it died (its steps then
 * fail: their output and exit are lost with it). It leaves when the builder does (the channel
 * closes), killing what it started: bwrap's `--die-with-parent` then takes each sandbox down.
 */
import { fork, type ChildProcess } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** What to start: as child_process.spawn's file, args and options (detached, stdin ignored, stdout and stderr piped). */
export type StepCommand = { file: string; args: readonly string[]; cwd: string; env: Record<string, string>; uid?: number; gid?: number };

/** The spawner's messages, builder to spawner. */
export type SpawnerRequest = { type: "start"; id: number; command: StepCommand } | { type: "detach"; id: number };

/** The spawner's messages, spawner to builder. */
export type SpawnerEvent =
  | { type: "started"; id: number; pid: number }
  | { type: "error"; id: number; message: string }
  | { type: "output"; id: number; data: Uint8Array }
  | { type: "exit"; id: number; code: number | null; signal: NodeJS.Signals | null }
  | { type: "close"; id: number };

/** What a started step reports: each chunk of its stdout or stderr, its exit, then the end of its output; or that the spawner died first. */
export type StepHandlers = {
  output(data: Buffer): void;
  exit(code: number | null, signal: NodeJS.Signals | null): void;
  close(): void;
  error(err: Error): void;
};

/**
 * A started step. Its reports go to the handlers `attach` gives; those that came before (a
 * quick step's output, exit and end can arrive with its pid, in one read of the channel) are
 * kept until then and handed over first, in order.
 */
export class StepProcess {
  readonly pid: number;
  readonly #detach: () => void;
  #handlers: StepHandlers | undefined;
  readonly #early: ((h: StepHandlers) => void)[] = [];
  constructor(pid: number, detach: () => void) {
    this.pid = pid;
    this.#detach = detach;
  }

  attach(handlers: StepHandlers): void {
    this.#handlers = handlers;
    for (const report of this.#early.splice(0)) report(handlers);
  }

  /** Stops waiting for the step's output (a process that escaped its group may hold the pipes): `close` follows. */
  detachOutput(): void {
    this.#detach();
  }

  /** Hands `report` to the handlers, or keeps it until they are attached. */
  report(report: (h: StepHandlers) => void): void {
    if (this.#handlers) report(this.#handlers);
    else this.#early.push(report);
  }
}

const mainScript = path.join(path.dirname(fileURLToPath(import.meta.url)), "step-spawner-main.ts");

export class StepSpawner {
  #child: ChildProcess | undefined;
  #nextId = 1;
  readonly #starting = new Map<number, { resolve: (p: StepProcess) => void; reject: (e: Error) => void }>();
  readonly #running = new Map<number, StepProcess>();

  /** Starts `command`; rejects when it could not start (as spawn's `error`: no such file, …). */
  start(command: StepCommand): Promise<StepProcess> {
    const child = this.#spawner();
    const id = this.#nextId++;
    return new Promise<StepProcess>((resolve, reject) => {
      this.#starting.set(id, { resolve, reject });
      this.#holdOpen();
      child.send({ type: "start", id, command } satisfies SpawnerRequest);
    });
  }

  #spawner(): ChildProcess {
    if (this.#child?.connected) return this.#child;
    // A spawner that lost its channel reports nothing more: what it had in hand fails now.
    if (this.#child) this.#lost(this.#child, "the step spawner's channel closed");
    // A small heap: the spawner holds a few steps' bookkeeping, and each of its forks copies it.
    // Nothing of the builder's environment: each step's is given with it.
    const child = fork(mainScript, [], {
      serialization: "advanced",
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      execArgv: ["--max-old-space-size=64"],
      env: {},
    });
    child.on("message", (m: SpawnerEvent) => this.#handle(m));
    child.on("exit", (code, signal) => this.#lost(child, `the step spawner exited (${signal ?? `code ${code}`})`));
    child.on("error", (err) => this.#lost(child, `the step spawner failed: ${err.message}`));
    // The process does not keep the builder alive, and its channel only while steps are in hand (#holdOpen).
    child.unref();
    child.channel?.unref();
    this.#child = child;
    return child;
  }

  /** The channel keeps the builder's event loop alive while steps are starting or running, and only then. */
  #holdOpen(): void {
    if (this.#starting.size + this.#running.size > 0) this.#child?.channel?.ref();
    else this.#child?.channel?.unref();
  }

  #handle(m: SpawnerEvent): void {
    if (m.type === "started") {
      const starting = this.#starting.get(m.id);
      this.#starting.delete(m.id);
      const step = new StepProcess(m.pid, () => this.#child?.send({ type: "detach", id: m.id } satisfies SpawnerRequest));
      this.#running.set(m.id, step);
      starting?.resolve(step);
    } else if (m.type === "error") {
      this.#starting.get(m.id)?.reject(new Error(m.message));
      this.#starting.delete(m.id);
      this.#holdOpen();
    } else if (m.type === "output") {
      const data = Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength);
      this.#running.get(m.id)?.report((h) => h.output(data));
    } else if (m.type === "exit") {
      this.#running.get(m.id)?.report((h) => h.exit(m.code, m.signal));
    } else {
      const step = this.#running.get(m.id);
      this.#running.delete(m.id);
      this.#holdOpen();
      step?.report((h) => h.close());
    }
  }

  /** The spawner `child` is gone: what it had in hand fails, and the next start starts another. */
  #lost(child: ChildProcess, why: string): void {
    if (this.#child !== child) return;
    this.#child = undefined;
    for (const { reject } of this.#starting.values()) reject(new Error(why));
    this.#starting.clear();
    const lost = new Error(`${why}: the step's output and exit status are lost`);
    for (const step of this.#running.values()) step.report((h) => h.error(lost));
    this.#running.clear();
  }
}

let shared: StepSpawner | undefined;

/** The builder process's spawner. */
export const stepSpawner = (): StepSpawner => (shared ??= new StepSpawner());
