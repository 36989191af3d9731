/**
 * Bubblewrap isolation, for real: the sandbox tests run when bwrap works on this machine (the
 * probe decides, as the builder does) and are skipped with the reason otherwise; the
 * "unavailable" paths use a bwrap that does not exist.
 */
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { BuildFailure } from "./errors.ts";
import { IsolationUnavailableError, resolveIsolation } from "./isolation.ts";
import { runSteps, workspaceLayout, type Workspace } from "./pipeline.ts";

const tmp = await mkdtemp(path.join(tmpdir(), "hs-isolation-"));
after(() => rm(tmp, { recursive: true, force: true }));

const warnings: string[] = [];
const iso = await resolveIsolation("auto", { warn: (m) => warnings.push(m) });
const skip = iso.kind === "none" ? `bubblewrap does not work here: ${warnings.join(" ")}` : false;

async function workspace(name: string): Promise<{ ws: Workspace; cwd: string }> {
  const ws = workspaceLayout(path.join(tmp, name, "ws"));
  const cwd = path.join(ws.root, "src");
  for (const d of [ws.home, ws.dest, ws.sysroot, cwd]) await mkdir(d, { recursive: true });
  return { ws, cwd };
}

test("without a working bwrap: auto warns once and runs unisolated, bubblewrap fails hard, none never probes", async () => {
  const missing = path.join(tmp, "no-such-bwrap");
  const seen: string[] = [];
  assert.deepEqual(await resolveIsolation("auto", { bwrap: missing, warn: (m) => seen.push(m) }), { kind: "none" });
  assert.equal(seen.length, 1);
  assert.match(seen[0]!, /WITHOUT isolation .*could not start.*isolation "none"/);
  await assert.rejects(resolveIsolation("bubblewrap", { bwrap: missing }), (e: unknown) => e instanceof IsolationUnavailableError && /HOMEOSTAT_BUILD_ISOLATION=bubblewrap but bubblewrap does not work here/.test(e.message));
  assert.deepEqual(await resolveIsolation("none", { bwrap: missing, warn: (m) => seen.push(m) }), { kind: "none" });
  assert.equal(seen.length, 1);
});

test("bubblewrap mode succeeds when the probe does", { skip }, async () => {
  assert.equal((await resolveIsolation("bubblewrap")).kind, "bubblewrap");
  assert.deepEqual(warnings, []);
});

test("in the sandbox: cleared environment, workspace writable, system read-only, nothing else of the host visible, fresh /tmp", { skip }, async () => {
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
  const res = await runSteps(steps, { cwd, workspace: ws, isolation: iso, sourceDateEpoch: 42, timeoutMs: 30_000 });
  assert.equal(res.steps.length, steps.length);
  const env = Object.fromEntries(
    (await readFile(path.join(cwd, "env.txt"), "utf8"))
      .trim()
      .split("\n")
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
  for (const k of ["PWD", "SHLVL", "_", "OLDPWD"]) delete env[k];
  assert.deepEqual(Object.keys(env), ["CPATH", "DESTDIR", "HOME", "LC_ALL", "LIBRARY_PATH", "PATH", "SOURCE_DATE_EPOCH", "SYSROOT", "TZ"]);
  assert.equal(env.DESTDIR, ws.dest);
  assert.equal(await readFile(path.join(ws.dest, "out"), "utf8"), "built\n");
  assert.equal(await readFile(path.join(ws.home, "h"), "utf8"), "home\n");
  assert.deepEqual((await readFile(path.join(cwd, "checks"), "utf8")).trim().split("\n"), ["usr-readonly", "etc-readonly", "tmp-fresh", "scratch", "cc-works"]);
  await assert.rejects(stat(outside), "a directory outside the workspace was written on the host");
  await assert.rejects(stat("/usr/hs-probe"));
});

test("in the sandbox there is no network, not even to a host loopback port", { skip }, async () => {
  const { ws, cwd } = await workspace("net");
  let connections = 0;
  const server = createServer((s) => {
    connections++;
    s.on("error", () => {});
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as AddressInfo).port;
  try {
    const probe = `if bash -c 'exec 3<>/dev/tcp/127.0.0.1/${port}' 2>/dev/null; then echo connected; else echo refused; fi > net`;
    await runSteps([probe], { cwd, workspace: ws, isolation: { kind: "none" }, sourceDateEpoch: 0, timeoutMs: 10_000 });
    assert.equal((await readFile(path.join(cwd, "net"), "utf8")).trim(), "connected", "the probe itself works unisolated");
    await runSteps([probe, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' > ifaces"], { cwd, workspace: ws, isolation: iso, sourceDateEpoch: 0, timeoutMs: 10_000 });
    assert.equal((await readFile(path.join(cwd, "net"), "utf8")).trim(), "refused");
    assert.deepEqual((await readFile(path.join(cwd, "ifaces"), "utf8")).trim().split("\n"), ["lo"]);
    assert.equal(connections, 1);
  } finally {
    server.close();
  }
});

test("a sandboxed step that runs forever is killed at its timeout with everything it started", { skip }, async () => {
  const { ws, cwd } = await workspace("timeout");
  const started = Date.now();
  await assert.rejects(
    runSteps(["(while :; do date +%s%N > beat; sleep 0.1; done) & trap '' TERM; sleep 1000"], { cwd, workspace: ws, isolation: iso, sourceDateEpoch: 0, timeoutMs: 800, killGraceMs: 300 }),
    (e: unknown) => e instanceof BuildFailure && /timed out after 800 ms/.test(e.message),
  );
  assert.ok(Date.now() - started < 5000);
  const first = await readFile(path.join(cwd, "beat"), "utf8");
  await new Promise((r) => setTimeout(r, 600));
  assert.equal(await readFile(path.join(cwd, "beat"), "utf8"), first, "the background loop is still running");
});
