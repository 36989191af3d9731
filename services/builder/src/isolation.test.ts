/**
 * The sandbox, for real: how the builder decides (required by default, no fallback, the
 * unsandboxed development mode only when explicitly allowed) and what a step sees inside it.
 * The in-sandbox tests need bubblewrap and are skipped, saying so, only when it is not
 * installed; where it is installed but does not work they fail, as the builder would refuse to
 * start. The hostile steps are in sandbox.test.ts.
 */
import { access, chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { loadConfig } from "@homeostat/core/config";
import { BuildFailure } from "./errors.ts";
import { IsolationUnavailableError, resolveIsolation, SANDBOX_ID } from "./isolation.ts";
import { runSteps } from "./pipeline.ts";
import { makeWorkspace, stepEnvironment } from "./test-support.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-isolation-"));
// As root the sandbox is started as the build uid, which must be able to walk down to workspaces.
await chmod(tmp, 0o711);
after(() => rm(tmp, { recursive: true, force: true }));

const defaults = loadConfig({}).buildSandbox;
const bwrapInstalled = await access("/usr/bin/bwrap").then(
  () => true,
  () => false,
);
const skip = bwrapInstalled ? false : "bwrap (Debian package bubblewrap) is not installed";
const iso = bwrapInstalled ? await resolveIsolation(defaults) : undefined;

const workspace = (name: string) => makeWorkspace(path.join(tmp, name, "ws"));

test("the sandbox is required by default: isolation bubblewrap, no auto mode", () => {
  assert.equal(defaults.isolation, "bubblewrap");
  assert.equal(defaults.allowUnsandboxed, false);
  assert.throws(() => loadConfig({ HOMEOSTAT_BUILD_ISOLATION: "auto" }), /HOMEOSTAT_BUILD_ISOLATION/);
});

test("without a working bwrap the builder refuses, saying why and how to fix it; none needs the explicit development flag and warns", async () => {
  const missing = path.join(tmp, "no-such-bwrap");
  const warnings: string[] = [];
  const warn = (m: string): number => warnings.push(m);
  await assert.rejects(resolveIsolation(defaults, { bwrap: missing, warn }), (e: unknown) => {
    assert.ok(e instanceof IsolationUnavailableError);
    assert.match(e.message, /the build sandbox does not work here, so the builder will not run build steps: .*no-such-bwrap could not start/);
    assert.match(e.message, /To fix: install bubblewrap .* user namespaces .*HOMEOSTAT_BUILD_ISOLATION=none and HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true/);
    return true;
  });
  await assert.rejects(
    resolveIsolation({ ...defaults, isolation: "none" }, { bwrap: missing, warn }),
    (e: unknown) => e instanceof IsolationUnavailableError && /needs HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true/.test(e.message),
  );
  assert.deepEqual(warnings, []);
  const none = await resolveIsolation({ ...defaults, isolation: "none", allowUnsandboxed: true }, { bwrap: missing, warn });
  assert.equal(none.kind, "none");
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!, /BUILD STEPS RUN UNSANDBOXED.*provenance records isolation "none"/);
});

test(
  "as root, a work directory the build uid cannot reach stops the builder at start, naming the directory",
  { skip: skip || (process.getuid?.() !== 0 && "needs root") },
  async () => {
    const closed = path.join(tmp, "closed");
    await mkdir(closed, { mode: 0o700 });
    await assert.rejects(
      resolveIsolation(defaults, { workRoot: path.join(closed, "work") }),
      (e: unknown) => e instanceof IsolationUnavailableError && new RegExp(`${closed} is not searchable by it \\(chmod o\\+x`).test(e.message),
    );
  },
);

test("inside: uid and gid 65534, no capabilities, no_new_privs, no user namespaces, limits set", { skip }, async () => {
  const { ws, cwd } = await workspace("creds");
  await runSteps(
    [
      "id -u > uid; id -g >> uid; cat /proc/self/status > status; cat /proc/self/limits > limits; if unshare -U true 2>/dev/null; then echo userns-allowed; else echo userns-denied; fi > userns",
    ],
    { cwd, workspace: ws, isolation: iso!, sourceDateEpoch: 0, timeoutMs: 10_000 },
  );
  assert.deepEqual((await readFile(path.join(cwd, "uid"), "utf8")).trim().split("\n"), [String(SANDBOX_ID), String(SANDBOX_ID)]);
  const status = await readFile(path.join(cwd, "status"), "utf8");
  for (const set of ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]) assert.match(status, new RegExp(`^${set}:\\s*0+$`, "m"), set);
  assert.match(status, /^NoNewPrivs:\s*1$/m);
  assert.equal((await readFile(path.join(cwd, "userns"), "utf8")).trim(), "userns-denied");
  const limits = await readFile(path.join(cwd, "limits"), "utf8");
  const limit = (name: string): string => new RegExp(`^${name}\\s+(\\S+)\\s+(\\S+)`, "m").exec(limits)!.slice(1).join("/");
  const l = defaults.limits;
  assert.equal(limit("Max cpu time"), `${l.cpuSeconds}/${l.cpuSeconds + 5}`);
  assert.equal(limit("Max address space"), `${l.memoryBytes}/${l.memoryBytes}`);
  assert.equal(limit("Max processes"), `${l.maxProcesses}/${l.maxProcesses}`);
  assert.equal(limit("Max file size"), `${l.maxFileBytes}/${l.maxFileBytes}`);
  assert.equal(limit("Max core file size"), "0/0");
  if (iso?.kind === "bubblewrap" && iso.runAs)
    assert.equal((await stat(path.join(cwd, "uid"))).uid, defaults.uid, "as root, files are written by the build uid");
  else assert.equal((await stat(path.join(cwd, "uid"))).uid, process.getuid?.());
});

test(
  "in the sandbox: cleared environment, workspace writable, system read-only, nothing else of the host visible, /tmp in the workspace",
  { skip },
  async () => {
    const { ws, cwd } = await workspace("fs");
    const outside = path.join(tmp, "fs", "outside");
    const hostTmpMarker = path.join(tmpdir(), `hs-host-marker-${process.pid}`);
    await writeFile(hostTmpMarker, "host\n");
    after(() => rm(hostTmpMarker, { force: true }));
    const steps = [
      "env | sort > env.txt",
      "echo built > $DESTDIR/out; echo home > $HOME/h",
      `if touch /usr/hs-probe 2>/dev/null; then echo usr-writable; else echo usr-readonly; fi > checks`,
      `if touch /etc/hs-probe 2>/dev/null; then echo etc-writable; else echo etc-readonly; fi >> checks`,
      `mkdir -p ${outside} 2>/dev/null; echo escaped > ${outside}/f 2>/dev/null; true`,
      `if [ -e ${hostTmpMarker} ]; then echo host-tmp-visible; else echo tmp-fresh; fi >> checks`,
      "echo scratch > /tmp/scratch && cat /tmp/scratch >> checks",
      "cc --version > /dev/null && echo cc-works >> checks",
    ];
    const res = await runSteps(steps, { cwd, workspace: ws, isolation: iso!, sourceDateEpoch: 42, timeoutMs: 30_000 });
    assert.equal(res.steps.length, steps.length);
    const env = await stepEnvironment(path.join(cwd, "env.txt"));
    assert.deepEqual(Object.keys(env), ["CPATH", "DESTDIR", "HOME", "LC_ALL", "LIBRARY_PATH", "PATH", "SOURCE_DATE_EPOCH", "SYSROOT", "TZ"]);
    assert.equal(env.DESTDIR, ws.dest);
    assert.equal(await readFile(path.join(ws.dest, "out"), "utf8"), "built\n");
    assert.equal(await readFile(path.join(ws.home, "h"), "utf8"), "home\n");
    assert.deepEqual((await readFile(path.join(cwd, "checks"), "utf8")).trim().split("\n"), [
      "usr-readonly",
      "etc-readonly",
      "tmp-fresh",
      "scratch",
      "cc-works",
    ]);
    assert.equal(await readFile(path.join(ws.root, "tmp", "scratch"), "utf8"), "scratch\n", "the sandbox's /tmp is the workspace's tmp/");
    await assert.rejects(stat(outside), "a directory outside the workspace was written on the host");
    await assert.rejects(stat("/usr/hs-probe"));
  },
);

test("a sandboxed step that runs forever is killed at its timeout with everything it started", { skip }, async () => {
  const { ws, cwd } = await workspace("timeout");
  const started = Date.now();
  await assert.rejects(
    runSteps(["(while :; do date +%s%N > beat; sleep 0.1; done) & trap '' TERM; sleep 1000"], {
      cwd,
      workspace: ws,
      isolation: iso!,
      sourceDateEpoch: 0,
      timeoutMs: 800,
      killGraceMs: 300,
    }),
    (e: unknown) => e instanceof BuildFailure && /timed out after 800 ms/.test(e.message),
  );
  assert.ok(Date.now() - started < 5000);
  const first = await readFile(path.join(cwd, "beat"), "utf8");
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(await readFile(path.join(cwd, "beat"), "utf8"), first, "the background loop is still running");
});
