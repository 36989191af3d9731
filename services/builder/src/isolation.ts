/**
 * The sandbox of build steps. A catalog's steps are code from upstream and from whoever edits
 * the catalog: the builder treats them as hostile, and a step runs only in a bubblewrap sandbox
 * that works, or the builder does not start.
 *
 * Inside the sandbox a step has:
 * - its own user namespace, as uid and gid 65534 (nobody), with no capabilities at all
 *   (`--cap-drop ALL`), no_new_privs (bwrap always sets it) and no further user namespaces
 *   (`--disable-userns`), so it cannot gain capabilities over anything, not even its own mounts;
 * - its own PID, network, IPC, UTS and cgroup namespaces: it sees only its own processes, and
 *   the network is a loopback interface of its own (no route anywhere, not even to the host's
 *   127.0.0.1 where NATS and the services listen);
 * - the system read-only (/usr and the top-level /bin, /lib... entries, and the few /etc files
 *   the loader and compilers read), a fresh /proc and minimal /dev, and exactly two writable
 *   places, both inside the build's workspace: the workspace itself, bound at its own path so
 *   that paths inside and outside agree (DESTDIR, HOME and compiler prefix maps, and with them
 *   the outputs), and its `tmp/` directory as /tmp (on disk, counted in the output limit).
 *   Nothing else of the host: not the data directory (artifact store, signing key), not /run;
 * - resource limits set by prlimit(1) on the step's shell and so inherited by all it starts:
 *   CPU seconds, address space and file size per process, processes of the step together
 *   (RLIMIT_NPROC counts the tasks of one uid in the step's own user namespace), no core files.
 *   The total size of the workspace is watched by the pipeline (pipeline.ts).
 *
 * bwrap itself always runs unprivileged. As any user but root, the step's uid on the host is the
 * builder's own. As root it is not: a sandbox whose host uid is 0 ignores RLIMIT_NPROC (the
 * kernel exempts root's processes) and writes files as root, so the builder starts bwrap as the
 * dedicated build uid (HOMEOSTAT_BUILD_UID, also the gid) and hands the workspace to it
 * (`prepareWorkspace`). bwrap then opens the bind sources as that uid, so the directories above
 * the workspace must be searchable by it (x for others, as `mkdir` makes them by default); the
 * probe at start runs in the real work directory and says so when they are not.
 *
 * Whether the sandbox works depends on the machine (user namespaces may be denied in
 * containers), so `resolveIsolation` probes it once, at start, in a real workspace: the probe
 * step must see uid 65534, no capabilities and no_new_privs. There is no fallback: when the
 * probe fails the builder refuses to start, with the reason and the fix. Running steps
 * unsandboxed needs HOMEOSTAT_BUILD_ISOLATION=none and HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true,
 * logs a warning at start and is recorded as isolation "none" in each build's provenance.
 */
import { spawn } from "node:child_process";
import { access, constants, lchown, lstat, mkdir, mkdtemp, opendir, readlink, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import type { BuildLimits, BuildSandboxSettings } from "@homeostat/core/config";

export type { BuildLimits, BuildSandboxSettings };

/** How steps actually run: `kind` is what provenance records as `isolation`. */
export type Isolation =
  | { kind: "none"; limits: BuildLimits; prlimit: string }
  | { kind: "bubblewrap"; limits: BuildLimits; prlimit: string; bwrap: string; system: SystemBinds; runAs: HostUser | undefined };

/** The host uid and gid bwrap is started as (only when the builder runs as root). */
export type HostUser = { uid: number; gid: number };

/** Read-only system paths: directories bound as they are, and top-level symlinks recreated. */
export type SystemBinds = { dirs: string[]; links: { path: string; target: string }[]; files: string[] };

/** The sandbox cannot be used (or running without it was not explicitly allowed): the builder must not start. */
export class IsolationUnavailableError extends Error {
  override name = "IsolationUnavailableError";
}

/** uid and gid of a step inside the sandbox: nobody/nogroup, owning nothing of the system. */
export const SANDBOX_ID = 65534;

const SYSTEM_TOP = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];
/** /etc entries that compilers, the loader and `id`-like tools read; nothing secret. */
const SYSTEM_ETC = ["/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"];
const PRLIMIT_CANDIDATES = ["/usr/bin/prlimit", "/bin/prlimit"];

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

async function findPrlimit(): Promise<string | undefined> {
  for (const p of PRLIMIT_CANDIDATES)
    if (
      await access(p, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return p;
  return undefined;
}

const CPU_KILL_GRACE_SECONDS = 5;

/** The sandbox's /tmp: a directory of the workspace, so that it is on disk and counted. */
export function sandboxTmp(workspaceRoot: string): string {
  return path.join(workspaceRoot, "tmp");
}

/** `argv` under prlimit: the limits are set on the step's shell and inherited by all it starts. */
export function limitedArgv(prlimit: string, limits: BuildLimits, argv: readonly string[]): string[] {
  return [prlimit, ...prlimitArgs(limits, argv)];
}

/** prlimit's arguments, after its own path, that run `argv` under `limits`. */
function prlimitArgs(limits: BuildLimits, argv: readonly string[]): string[] {
  return [
    // SIGXCPU at the soft limit says why; SIGKILL a little later for a process that ignores it.
    `--cpu=${limits.cpuSeconds}:${limits.cpuSeconds + CPU_KILL_GRACE_SECONDS}`,
    `--as=${limits.memoryBytes}`,
    `--nproc=${limits.maxProcesses}`,
    `--fsize=${limits.maxFileBytes}`,
    "--core=0",
    "--",
    ...argv,
  ];
}

/** The bwrap argument list that runs `argv` in `cwd` with only the workspace (and its tmp/ as /tmp) writable. */
export function bwrapArgs(
  iso: Extract<Isolation, { kind: "bubblewrap" }>,
  workspaceRoot: string,
  cwd: string,
  env: Record<string, string>,
  argv: readonly string[],
): string[] {
  const args = [
    "--unshare-all",
    "--unshare-user",
    "--uid",
    String(SANDBOX_ID),
    "--gid",
    String(SANDBOX_ID),
    "--disable-userns",
    "--cap-drop",
    "ALL",
    "--die-with-parent",
    "--new-session",
  ];
  for (const d of iso.system.dirs) args.push("--ro-bind", d, d);
  for (const l of iso.system.links) args.push("--symlink", l.target, l.path);
  for (const f of iso.system.files) args.push("--ro-bind", f, f);
  // /tmp before the workspace: a workspace under the host's /tmp must not be hidden by it.
  args.push("--proc", "/proc", "--dev", "/dev", "--bind", sandboxTmp(workspaceRoot), "/tmp", "--bind", workspaceRoot, workspaceRoot);
  // The sandbox's own root (a tmpfs holding the mount points) is read-only too.
  args.push("--remount-ro", "/", "--chdir", cwd, "--clearenv");
  for (const [k, v] of Object.entries(env)) args.push("--setenv", k, v);
  args.push("--", ...limitedArgv(iso.prlimit, iso.limits, argv));
  return args;
}

/** What to spawn to run `argv` under `iso`, and as whom. */
export type SandboxedCommand = { file: string; args: string[]; uid?: number; gid?: number };

export function isolatedCommand(
  iso: Isolation,
  workspaceRoot: string,
  cwd: string,
  env: Record<string, string>,
  argv: [string, ...string[]],
): SandboxedCommand {
  if (iso.kind === "none") {
    return { file: iso.prlimit, args: prlimitArgs(iso.limits, argv) };
  }
  return { file: iso.bwrap, args: bwrapArgs(iso, workspaceRoot, cwd, env, argv), ...(iso.runAs ? { uid: iso.runAs.uid, gid: iso.runAs.gid } : {}) };
}

/**
 * Makes the workspace ready for steps: creates its tmp/ and, when bwrap runs as the build uid,
 * gives that uid the whole tree (what the builder unpacked and copied in is root's).
 */
export async function prepareWorkspace(iso: Isolation, workspaceRoot: string): Promise<void> {
  await mkdir(sandboxTmp(workspaceRoot), { recursive: true });
  if (iso.kind !== "bubblewrap" || !iso.runAs) return;
  await assertReachable(workspaceRoot, iso.runAs);
  await chownTree(workspaceRoot, iso.runAs);
}

/** bwrap, started as `user`, must be able to walk down to the workspace: says which directory stops it. */
async function assertReachable(workspaceRoot: string, user: HostUser): Promise<void> {
  for (let dir = path.dirname(path.resolve(workspaceRoot)); ; dir = path.dirname(dir)) {
    const st = await stat(dir);
    const searchable = st.uid === user.uid ? st.mode & 0o100 : st.gid === user.gid ? st.mode & 0o010 : st.mode & 0o001;
    if (!searchable)
      throw new Error(
        `the build sandbox runs as uid ${user.uid} (HOMEOSTAT_BUILD_UID, because the builder runs as root) and cannot reach the workspace ${workspaceRoot}: ${dir} is not searchable by it (chmod o+x ${dir}, or run the builder as a non-root user)`,
      );
    if (dir === path.dirname(dir)) return;
  }
}

async function chownTree(dir: string, to: HostUser): Promise<void> {
  await lchown(dir, to.uid, to.gid);
  for await (const entry of await opendir(dir)) {
    const p = path.join(dir, entry.name);
    // A symlink is given itself (lchown), never what it points to.
    if (entry.isDirectory()) await chownTree(p, to);
    else await lchown(p, to.uid, to.gid);
  }
}

/**
 * What the probe step checks, from inside: the uid, no capability in any set, no_new_privs, and
 * a writable workspace and /tmp. Prints what is wrong and exits 1 otherwise.
 */
const PROBE_SCRIPT = [
  `[ "$(id -u):$(id -g)" = "${SANDBOX_ID}:${SANDBOX_ID}" ] || { echo "runs as $(id -u):$(id -g), not ${SANDBOX_ID}"; exit 1; }`,
  `for c in CapInh CapPrm CapEff CapBnd CapAmb; do grep -Eq "^$c:[[:space:]]*0+$" /proc/self/status || { echo "capabilities left: $(grep ^$c: /proc/self/status)"; exit 1; }; done`,
  `grep -Eq '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || { echo "no_new_privs is not set"; exit 1; }`,
  `touch probe /tmp/probe || { echo "the workspace is not writable"; exit 1; }`,
].join("\n");

/** Runs the probe step in a fresh workspace under `workRoot`; undefined when it passes, else the reason. */
async function probe(iso: Extract<Isolation, { kind: "bubblewrap" }>, workRoot: string): Promise<string | undefined> {
  await mkdir(workRoot, { recursive: true });
  const dir = await mkdtemp(path.join(workRoot, "bwrap-probe-"));
  try {
    const unprepared = await prepareWorkspace(iso, dir).then(
      () => undefined,
      (e: unknown) => (e instanceof Error ? e.message : String(e)),
    );
    if (unprepared !== undefined) return unprepared;
    const cmd = isolatedCommand(iso, dir, dir, { PATH: "/usr/bin:/bin" }, ["/bin/sh", "-c", PROBE_SCRIPT]);
    return await new Promise<string | undefined>((resolve) => {
      const child = spawn(cmd.file, cmd.args, {
        cwd: "/",
        stdio: ["ignore", "pipe", "pipe"],
        ...(cmd.uid !== undefined ? { uid: cmd.uid, gid: cmd.gid } : {}),
      });
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      let out = "";
      const keep = (b: Buffer): void => void (out = (out + b.toString("utf8")).slice(-1000));
      child.stdout.on("data", keep);
      child.stderr.on("data", keep);
      const done = (why: string | undefined): void => {
        clearTimeout(timer);
        resolve(why);
      };
      child.on("error", (e) => done(`${iso.bwrap} could not start: ${e.message}`));
      child.on("close", (code, signal) => done(code === 0 ? undefined : `the probe step in ${dir} failed (${code ?? signal}): ${out.trim()}`));
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export type ResolveIsolationOptions = {
  /** The bwrap executable. Default `bwrap` (from PATH). */
  bwrap?: string;
  /** Where builds make their workspaces: the probe runs there. Default the system's tmpdir. */
  workRoot?: string;
  /** Receives the warning given when steps will run unsandboxed. */
  warn?: (message: string) => void;
};

const HOW_TO_FIX = [
  "install bubblewrap (apt-get install bubblewrap) and let this process create unprivileged user namespaces",
  "(sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0; in a container, a seccomp/AppArmor profile that allows unshare(CLONE_NEWUSER) and mount, see deploy/Dockerfile)",
  "or, for development only, set HOMEOSTAT_BUILD_ISOLATION=none and HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true",
].join(" ");

/** Decides how this builder runs steps; throws IsolationUnavailableError when it must not run any. */
export async function resolveIsolation(settings: BuildSandboxSettings, opts: ResolveIsolationOptions = {}): Promise<Isolation> {
  const prlimit = await findPrlimit();
  if (prlimit === undefined)
    throw new IsolationUnavailableError(`build steps cannot be limited: prlimit (util-linux) is not installed at ${PRLIMIT_CANDIDATES.join(" or ")}`);
  if (settings.isolation === "none") {
    if (!settings.allowUnsandboxed)
      throw new IsolationUnavailableError(
        "HOMEOSTAT_BUILD_ISOLATION=none would run build steps without any sandbox; that is a development shortcut and needs HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true as well",
      );
    opts.warn?.(
      'WARNING: BUILD STEPS RUN UNSANDBOXED (HOMEOSTAT_BUILD_ISOLATION=none, HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true): a step can read the signing key, reach the network and every service, and signal their processes. Development only; every build\'s provenance records isolation "none".',
    );
    return { kind: "none", limits: settings.limits, prlimit };
  }
  const runAs = process.getuid?.() === 0 ? { uid: settings.uid, gid: settings.uid } : undefined;
  const iso: Isolation = { kind: "bubblewrap", limits: settings.limits, prlimit, bwrap: opts.bwrap ?? "bwrap", system: await systemBinds(), runAs };
  const failed = await probe(iso, opts.workRoot ?? tmpdir());
  if (failed !== undefined) {
    const as = runAs ? ` (bwrap started as the build uid ${runAs.uid}, HOMEOSTAT_BUILD_UID, because the builder runs as root)` : "";
    throw new IsolationUnavailableError(`the build sandbox does not work here, so the builder will not run build steps: ${failed}${as}. To fix: ${HOW_TO_FIX}`);
  }
  return iso;
}
