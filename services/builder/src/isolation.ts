/**
 * Isolation of build steps with bubblewrap (`bwrap`): each step runs with no network (a new
 * network namespace holding only loopback), new PID/IPC/UTS namespaces, a read-only view of
 * the system (/usr and the /bin, /lib… links, and the few /etc files that tools and the
 * dynamic loader read), a fresh /proc, a minimal /dev, a fresh empty /tmp, and exactly one
 * writable directory: the build's workspace, bound at its own path so that paths inside and
 * outside the sandbox agree (DESTDIR, HOME and compiler prefix maps stay the same, and with
 * them the outputs). The environment is cleared and set to the step's; `--die-with-parent`
 * and the PID namespace mean that killing bwrap kills everything the step started.
 *
 * Whether bwrap works depends on the machine (user namespaces may be denied in containers),
 * so it is probed once by running `true` in the same sandbox. HOMEOSTAT_BUILD_ISOLATION says
 * what to do: `bubblewrap` fails when the probe fails, `auto` logs one warning and runs steps
 * unisolated, `none` never sandboxes. What was used is recorded in each build's provenance.
 */
import { spawn } from "node:child_process";
import { lstat, mkdtemp, readlink, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

export type IsolationMode = "auto" | "bubblewrap" | "none";

/** How steps actually run: what provenance records as `isolation`. */
export type Isolation = { kind: "none" } | { kind: "bubblewrap"; bwrap: string; system: SystemBinds };

/** Read-only system paths: directories bound as they are, and top-level symlinks recreated. */
export type SystemBinds = { dirs: string[]; links: { path: string; target: string }[]; files: string[] };

/** HOMEOSTAT_BUILD_ISOLATION=bubblewrap and bwrap does not work here. */
export class IsolationUnavailableError extends Error {
  override name = "IsolationUnavailableError";
}

const SYSTEM_TOP = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/** /etc entries that compilers, the loader and `id`-like tools read; nothing secret. */
const SYSTEM_ETC = ["/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"];

async function systemBinds(): Promise<SystemBinds> {
  const binds: SystemBinds = { dirs: [], links: [], files: [] };
  for (const p of SYSTEM_TOP) {
    const st = await lstat(p).catch(() => undefined);
    if (st?.isSymbolicLink()) binds.links.push({ path: p, target: await readlink(p) });
    else if (st?.isDirectory()) binds.dirs.push(p);
  }
  for (const p of SYSTEM_ETC) if (await lstat(p).catch(() => undefined)) binds.files.push(p);
  return binds;
}

/** The bwrap argument list that runs `argv` in `cwd` with only `writable` writable. */
export function bwrapArgs(system: SystemBinds, writable: string, cwd: string, env: Record<string, string>, argv: string[]): string[] {
  const args = ["--unshare-all", "--die-with-parent", "--new-session"];
  for (const d of system.dirs) args.push("--ro-bind", d, d);
  for (const l of system.links) args.push("--symlink", l.target, l.path);
  for (const f of system.files) args.push("--ro-bind", f, f);
  args.push("--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--bind", writable, writable);
  // The sandbox's own root (a tmpfs holding the mount points) is read-only too.
  args.push("--remount-ro", "/", "--chdir", cwd, "--clearenv");
  for (const [k, v] of Object.entries(env)) args.push("--setenv", k, v);
  args.push("--", ...argv);
  return args;
}

/** The command that runs `argv` under `iso`. */
export function isolatedCommand(iso: Isolation, writable: string, cwd: string, env: Record<string, string>, argv: [string, ...string[]]): { file: string; args: string[] } {
  if (iso.kind === "none") return { file: argv[0], args: argv.slice(1) };
  return { file: iso.bwrap, args: bwrapArgs(iso.system, writable, cwd, env, argv) };
}

/** Runs `true` in the sandbox; resolves with undefined when it works, else the reason. */
async function probe(bwrap: string, system: SystemBinds): Promise<string | undefined> {
  const dir = await mkdtemp(path.join(tmpdir(), "hs-bwrap-probe-"));
  try {
    return await new Promise<string | undefined>((resolve) => {
      const child = spawn(bwrap, bwrapArgs(system, dir, dir, { PATH: "/usr/bin:/bin" }, ["/bin/sh", "-c", "true"]), { stdio: ["ignore", "ignore", "pipe"] });
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      const done = (why: string | undefined): void => {
        clearTimeout(timer);
        resolve(why);
      };
      let err = "";
      child.stderr.on("data", (b: Buffer) => (err = (err + b.toString("utf8")).slice(-1000)));
      child.on("error", (e) => done(`${bwrap} could not start: ${e.message}`));
      child.on("close", (code, signal) => done(code === 0 ? undefined : `${bwrap} exited with ${code ?? signal}: ${err.trim()}`));
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export type ResolveIsolationOptions = {
  /** The bwrap executable. Default `bwrap` (from PATH). */
  bwrap?: string;
  /** Receives the one warning of `auto` when bwrap does not work. */
  warn?: (message: string) => void;
};

/** Decides how this builder runs steps (probing bwrap unless the mode is `none`). */
export async function resolveIsolation(mode: IsolationMode, opts: ResolveIsolationOptions = {}): Promise<Isolation> {
  if (mode === "none") return { kind: "none" };
  const bwrap = opts.bwrap ?? "bwrap";
  const system = await systemBinds();
  const failed = await probe(bwrap, system);
  if (failed === undefined) return { kind: "bubblewrap", bwrap, system };
  if (mode === "bubblewrap") throw new IsolationUnavailableError(`HOMEOSTAT_BUILD_ISOLATION=bubblewrap but bubblewrap does not work here (${failed}); install it (apt-get install bubblewrap) and allow user namespaces, or set HOMEOSTAT_BUILD_ISOLATION=auto or none`);
  opts.warn?.(`WARNING: build steps will run WITHOUT isolation (no bubblewrap sandbox: ${failed}); provenance records isolation "none". Set HOMEOSTAT_BUILD_ISOLATION=bubblewrap to require it.`);
  return { kind: "none" };
}
