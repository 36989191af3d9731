/**
 * The agent's repair path as the factory runs it, for the end-to-end test and the evals
 * (test/agent-eval.ts): on a test environment's NATS, the builder's trial server with the
 * builder's own identity, its bubblewrap sandbox and a store apart; the agent with its own
 * identity, its catalog, release facts, advisories, proposals, transcripts and trial runner; and
 * the repairer (services/agent/src/repair.ts) over them, talking to whatever Messages API the
 * client given points at (the fake server, or the real one).
 */
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { AdvisoryStore, CatalogSource, openSnapshot, ReleaseStore, type Osv, type Release } from "@homeostat/catalog";
import { loadConfig, StateStore, type AgentSettings, type Key, type Logger, type Nats } from "@homeostat/core";
import { getKeyStatus } from "@homeostat/status-api";
import { waitFor } from "../scripts/factory.ts";
import { startTestFactory, type TestEnv, type TestFactory } from "./harness.ts";
import type { ScriptedStep } from "./agent-fake-messages.ts";
import { createRepairer, type RepairDeps } from "../services/agent/src/repair.ts";
import { ProposalStore } from "@homeostat/proposals";
import { QuestionStore } from "@homeostat/proposals/questions";
import { TranscriptStore } from "../services/agent/src/transcripts.ts";
import { trialRunner } from "../services/agent/src/trial.ts";
import { Builder } from "../services/builder/src/build.ts";
import { resolveIsolation } from "../services/builder/src/isolation.ts";
import { createTrialHandler, serveTrials } from "../services/builder/src/trial.ts";

const homeostatBin = new URL("../packages/cli/bin/homeostat", import.meta.url).pathname;
const agentSources = new URL("./fixtures/agent/sources/", import.meta.url).pathname;

export const quiet: Logger = { info() {}, warn() {}, error() {} };

export const sha256File = (file: string) => createHash("sha256").update(readFileSync(file)).digest("hex");

/** `tree` packed as `<outDir>/<top>.tar.gz` with `top/` as its one top directory; its sha256. */
export function tarball(tree: string, outDir: string, top: string): string {
  mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `${top}.tar.gz`);
  execFileSync("tar", ["-czf", file, "--transform", `s,^\\.,${top},`, "-C", tree, "."]);
  return sha256File(file);
}

/** One scripted model turn calling tools (the fake server makes the ids unique). */
export const toolTurn = (...calls: [string, Record<string, unknown>][]): ScriptedStep => ({
  content: calls.map(([name, input], i) => ({ type: "tool_use", id: `${name}${i}`, name, input })),
  stop_reason: "tool_use",
  usage: { input_tokens: 1200, output_tokens: 150 },
  repeat: 1,
});

/** The fix of hello 1.1 (name util.o in OBJS) with a test of the greeting, as edit_recipe's input; `objs` varies the candidate. */
export function helloFix(sha: string, objs: string): Record<string, unknown> {
  return {
    set: {
      version: "1.1",
      source: { url: "../sources/hello-1.1.tar.gz", sha256: sha },
      build: { steps: [`make hello CC='cc -static' OBJS='${objs}'`, "mkdir -p $DESTDIR/usr/bin && cp hello $DESTDIR/usr/bin/hello"] },
      test: "test \"$($DESTDIR/usr/bin/hello)\" = 'hello from 1.1'",
    },
  };
}

/** A whole repair of hello 1.1: read the log, fix the recipe, build it on trial, submit. */
export const helloRepairScript = (sha: string, objs: string): ScriptedStep[] => [
  toolTurn(["read_build_log", {}]),
  toolTurn(["edit_recipe", helloFix(sha, objs)]),
  toolTurn(["trial_build", {}]),
  toolTurn(["submit_result", { rationale: `hello 1.1 moved greeting() into util.c, which OBJS leaves out: build with OBJS='${objs}'.` }]),
];

/**
 * A catalog under `root` of packages `names`, each the fixture hello at 1.0 (statically linked),
 * with the tarballs of 1.0 and 1.1 (which moved code into a file its Makefile misses) in
 * `root/sources`; their sha256 by version.
 */
export function helloCatalog(root: string, names: readonly string[]): { catalogDir: string; sha: Record<string, string> } {
  const sha: Record<string, string> = {};
  for (const v of ["1.0", "1.1"]) {
    const tree = path.join(root, "trees", `hello-${v}`);
    cpSync(path.join(agentSources, `hello-${v}`), tree, { recursive: true });
    sha[v] = tarball(tree, path.join(root, "sources"), `hello-${v}`);
  }
  const catalogDir = path.join(root, "catalog");
  mkdirSync(path.join(catalogDir, "packages"), { recursive: true });
  // Linked statically: an image holding it has no C library.
  for (const name of names) writeFileSync(path.join(catalogDir, "packages", `${name}.yaml`), helloRecipe(name, sha["1.0"]!, "make hello CC='cc -static'"));
  return { catalogDir, sha };
}

/** The recipe of package `name`: hello 1.0 (its tarball's sha256 `sha`) built by `make`, its program installed. */
export function helloRecipe(name: string, sha: string, make: string): string {
  return [
    `name: ${name}`,
    'version: "1.0"',
    "source:",
    "  url: ../sources/hello-1.0.tar.gz",
    `  sha256: ${sha}`,
    "build:",
    "  steps:",
    `    - ${make}`,
    "    - mkdir -p $DESTDIR/usr/bin && cp hello $DESTDIR/usr/bin/hello",
    "",
  ].join("\n");
}

/** The real `homeostat` command line with only `env` (and PATH): its exit code and output. */
export function runHomeostat(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(homeostatBin, args, { env: { PATH: process.env.PATH ?? "/usr/bin:/bin", ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

export type AgentFactory = TestFactory & {
  /** The environment of the `homeostat` command line against it, with the write token. */
  cli: Record<string, string>;
  /** `homeostat <args> --json` against it, which must succeed: its output parsed. */
  homeostatJson<T>(args: string[]): Promise<T>;
  /** Posts hello 1.1 (its tarball next to the catalog) to ingest as a release of `pkg`. */
  postHelloRelease(pkg: string): Promise<void>;
};

/**
 * The six services on `t` over a helloCatalog, the agent talking to the Messages API at
 * `messagesUrl` with `apiKey` and handed the first failure of a new version; `env` on top.
 * Resolves once every key of `ready` is Ready.
 */
export async function startAgentFactory(
  t: TestEnv,
  o: { catalogDir: string; sha: Record<string, string>; messagesUrl: string; apiKey: string; env: Record<string, string>; ready: readonly string[] },
): Promise<AgentFactory> {
  const factory = await startTestFactory(t, {
    HOMEOSTAT_CATALOG: o.catalogDir,
    HOMEOSTAT_CATALOG_RELOAD_MS: "500",
    // The first failure of a new version goes to the agent.
    HOMEOSTAT_BUILD_FAILURE_RETRIES: "0",
    ANTHROPIC_API_KEY: o.apiKey,
    ANTHROPIC_BASE_URL: o.messagesUrl,
    HOMEOSTAT_AGENT_MODEL: "claude-test",
    ...o.env,
  });
  const cli = { HOMEOSTAT_GRPC_ADDR: factory.grpcAddr, HOMEOSTAT_TOKEN: factory.grpcToken };
  try {
    await waitFor(
      "the catalog built and signed",
      async () => {
        const all = await Promise.all(o.ready.map((k) => getKeyStatus(factory.client, k).catch(() => undefined)));
        return all.every((s) => s?.phase === "Ready") ? all : undefined;
      },
      300_000,
      500,
    );
  } catch (err) {
    await factory.stop();
    throw err;
  }
  return {
    ...factory,
    cli,
    homeostatJson: async <T>(args: string[]): Promise<T> => {
      const r = await runHomeostat([...args, "--json"], cli);
      assert.equal(r.code, 0, `homeostat ${args.join(" ")}: ${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    },
    postHelloRelease: async (pkg) => {
      const file = path.join(o.catalogDir, "..", "sources", "hello-1.1.tar.gz");
      const res = await fetch(`${factory.ingestUrl}/v1/releases`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ package: pkg, version: "1.1", url: `file://${file}`, sha256: o.sha["1.1"] }),
      });
      assert.equal(res.status, 202, await res.text());
    },
  };
}

export type AgentRig = {
  /** Connected as the agent. */
  agent: Nats;
  state: StateStore;
  proposals: ProposalStore;
  transcripts: TranscriptStore;
  /** The builder's trial store and the agent's snapshots live under it. */
  dataDir: string;
  snapshots: string;
  /** One reconcile of `key` by the agent, as the work queue would run it. */
  repair(key: Key, signal: AbortSignal): Promise<unknown>;
  /** Records a release fact (as ingest would). */
  recordRelease(r: Omit<Release, "receivedAt">): Promise<void>;
  /** Stores an advisory for the packages it names (as ingest would). */
  recordAdvisory(osv: Osv, packages: string[]): Promise<void>;
  /** Stops the trial server. */
  stop(): Promise<void>;
};

export async function startAgentRig(
  t: TestEnv,
  o: { catalogDir: string; client: RepairDeps["client"]; settings: AgentSettings; apiKey: string; log?: Logger; dataDir?: string },
): Promise<AgentRig> {
  const abort = new AbortController();
  const agent = await t.connectAs("agent");
  const builderNats = await t.connectAs("builder");
  const kv = (n: Nats, b: "state" | "releases" | "proposals") => n.kvm.open(n.topology.bucket(b), { allow_direct: true });
  const dataDir = o.dataDir ?? path.join(t.dir, "data");
  // Searchable by the sandbox's own uid (the builder running as root builds as another user).
  mkdirSync(dataDir, { recursive: true, mode: 0o755 });
  const catalogs = await CatalogSource.open({ dir: o.catalogDir }, { cacheDir: path.join(dataDir, "catalog", "builder") });
  const trials = new Builder(
    {
      dataDir: path.join(dataDir, "trials"),
      inputsDataDir: dataDir,
      timeoutMs: 60_000,
      maxSourceBytes: 1 << 20,
      unpackLimits: { maxBytes: 16 << 20, maxEntries: 1000 },
      isolation: await resolveIsolation(loadConfig({}).buildSandbox),
      sourceBaseDir: o.catalogDir,
      signal: abort.signal,
    },
    { concurrency: 1 },
  );
  const snapshots = path.join(dataDir, "agent", "snapshots");
  const serving = serveTrials(
    builderNats,
    createTrialHandler({
      catalogAt: (rev) => openSnapshot(snapshots, rev, catalogs.current().sourceBase),
      releases: new ReleaseStore(await kv(builderNats, "releases")),
      advisories: await AdvisoryStore.open(builderNats),
      state: new StateStore(await kv(builderNats, "state")),
      sourceDateEpoch: 0,
      build: (plan) => trials.build(plan),
      refused: () => {},
      log: quiet,
    }),
    { log: quiet, signal: abort.signal },
  );
  await builderNats.nc.flush();

  const agentCatalog = await CatalogSource.open({ dir: o.catalogDir }, { cacheDir: path.join(dataDir, "catalog", "agent") });
  const releases = new ReleaseStore(await kv(agent, "releases"));
  const advisories = await AdvisoryStore.open(agent);
  const state = new StateStore(await kv(agent, "state"));
  const proposalsBucket = await kv(agent, "proposals");
  const proposals = new ProposalStore(proposalsBucket);
  const questions = new QuestionStore(proposalsBucket);
  const transcripts = new TranscriptStore(path.join(dataDir, "agent", "blobs", "sha256"), [o.apiKey]);
  const repairer = createRepairer({
    client: o.client,
    settings: o.settings,
    catalog: () => agentCatalog.current(),
    source: agentCatalog,
    scratch: snapshots,
    state,
    advisories: (p) => advisories.list(p),
    releases: (p) => releases.list(p),
    proposals,
    questions,
    workRoot: path.join(dataDir, "agent", "work"),
    sourceRules: { maxBytes: 1 << 20, allowRemote: false, timeoutMs: 10_000 },
    trial: (name) =>
      trialRunner(
        {
          nats: agent,
          catalog: () => agentCatalog.current(),
          releases: (p) => releases.list(p),
          advisories: (p) => advisories.list(p),
          status: (k) => state.get(k),
          sourceDateEpoch: 0,
          snapshots,
          timeoutMs: 90_000,
        },
        name,
      ),
    transcripts,
    log: o.log ?? quiet,
  });
  const adminReleases = new ReleaseStore(await kv(t.nats, "releases"));
  const adminAdvisories = await AdvisoryStore.open(t.nats);
  return {
    agent,
    state,
    proposals,
    transcripts,
    dataDir,
    snapshots,
    repair: (key, signal) =>
      repairer(
        { v: 1, key, priority: "repair", cause: { type: "built", detail: "handed to the agent" }, notBefore: 0, floor: 0, attempts: 0, enqueuedAt: 0 },
        { signal },
      ),
    recordRelease: async (r) => void (await adminReleases.record(r)),
    recordAdvisory: async (osv, packages) => void (await adminAdvisories.record(osv, packages)),
    stop: async () => {
      abort.abort();
      await serving;
      await Promise.all([agent.nc.close(), builderNats.nc.close()]);
    },
  };
}
