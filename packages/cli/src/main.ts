/**
 * homeostat: the command line. Asks a running factory where its keys stand and steers its work
 * queue, over the gRPC status API that the queue service serves (packages/core/src/grpc.ts is
 * the contract).
 *
 * Subcommands are rows of the `commands` table: a name (one or more words, e.g. "get" or
 * "queue stats"), its options and a `run`. Adding one is adding a row; parsing, help, the
 * connection and the mapping of errors to messages and exit codes are shared.
 *
 * Exit codes: 0 ok; 1 the server answered with an error (e.g. not found); 2 the server could
 * not be reached; 3 up but its stores unavailable; 4 (status) a service has no ready instance;
 * 64 usage error (EX_USAGE); 77 not authenticated or not allowed (EX_NOPERM).
 *
 * Start-up cost: gRPC, the catalog and the attestation code are imported by the commands that
 * use them (`await import`), so `homeostat --help` and usage errors load only what they print.
 */
import { randomBytes } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import { loadConfig, type StatusClientSettings } from "@homeostat/core/config";
import { priorities, prioritySchema } from "@homeostat/core/contracts";
import { makeKey } from "@homeostat/core/key";
import { mapLimit } from "@homeostat/core/map-limit";
import { builtFromProposal, type KeyStatus } from "@homeostat/core/status";
import type { DeadLetterEntry, Freshness, StatusClient, StatusClientOptions, WatchArgs } from "@homeostat/status-api";
import { maxDeadLetterLimit, maxEnqueueDelayMs, maxKnownFactsPackages, maxPageSize } from "@homeostat/status-api/limits";
import type { EnqueueOutcome, QueueStats } from "@homeostat/workqueue";
import type { ImageVerification } from "@homeostat/attest";
import type { LivePackage, PlanRelease } from "./plan.ts";
import { statusCommand } from "./status.ts";
import { approveCommand, proposalCommand, proposalsCommand, rejectCommand } from "./proposals.ts";
import { answerCommand } from "./answer.ts";
import { columns } from "./table.ts";
import { exitCodes } from "./exit-codes.ts";

// Kept importable from here, where the commands are.
export { columns, exitCodes };

/** The status API module, loaded by the commands that talk to the server. */
const statusApi = () => import("@homeostat/status-api");
type StatusApiModule = Awaited<ReturnType<typeof statusApi>>;

export type Output = { write(text: string): unknown };
export type Io = { stdout: Output; stderr: Output; env: NodeJS.ProcessEnv };

export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>;

export type Context = {
  addr: string;
  json: boolean;
  io: Io;
  /** The status API module and a client, connected on first use and closed when the command ends. */
  status(): Promise<{ api: StatusApiModule; client: StatusClient }>;
  /** Prints a line (or a value as JSON when `--json` was given) to stdout. */
  print(text: string): void;
  printJson(value: unknown): void;
  /** The answer of a command: `value` as JSON with `--json`, else the line `text()`. */
  show(value: unknown, text: () => string): void;
};

export type Command = {
  /** One or more words: "get", "queue stats". */
  name: string;
  /** Positional arguments in the usage line, e.g. "<key>". */
  args?: string;
  summary: string;
  /** More of its help, after the summary (e.g. what its exit code says). */
  details?: string;
  /** Options of this command besides the global ones (--addr, --json, --help). */
  options?: ParseArgsOptionsConfig;
  /** Help lines for `options`, as [flag, description] pairs. */
  optionHelp?: [string, string][];
  /** How many positionals (after the command name) it takes. */
  positionals?: { min: number; max: number };
  run(ctx: Context, positionals: string[], values: OptionValues): Promise<number>;
};

export class UsageError extends Error {
  readonly command: Command | undefined;
  constructor(message: string, command?: Command) {
    super(message);
    this.command = command;
  }
}

const globalOptions = {
  addr: { type: "string" },
  token: { type: "string" },
  "token-file": { type: "string" },
  tls: { type: "boolean" },
  ca: { type: "string" },
  "client-cert": { type: "string" },
  "client-key": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsOptionsConfig;

const globalOptionHelp: [string, string][] = [
  ["--addr host:port", "status API address (default: $HOMEOSTAT_GRPC_ADDR, else 127.0.0.1:50051)"],
  [
    "--token-file FILE",
    "bearer token for the status API, read from FILE (default: $HOMEOSTAT_TOKEN_FILE); needed by enqueue, retry, approve, reject and answer",
  ],
  ["--token T", "the bearer token itself (default: $HOMEOSTAT_TOKEN); visible to other users in the process list, prefer --token-file"],
  ["--ca FILE", "speak TLS, trusting this CA (PEM; default: $HOMEOSTAT_GRPC_CA)"],
  ["--tls", "speak TLS, trusting the system's CAs (default: $HOMEOSTAT_GRPC_TLS=true)"],
  ["--client-cert FILE", "client certificate for mTLS (PEM; default: $HOMEOSTAT_GRPC_CERT), with --client-key"],
  ["--client-key FILE", "its private key (PEM; default: $HOMEOSTAT_GRPC_KEY)"],
  ["--json", "print JSON (field names as in packages/core: status.ts, workqueue.ts) instead of text"],
  ["-h, --help", "show help"],
];

/* ---------------------------------------------------------------- commands */

const watchOption = { watch: { type: "boolean", short: "w" } } as const satisfies ParseArgsOptionsConfig;

const getCommand = keyCommand({
  name: "get",
  summary: "show where one key stands: phase, desired and actual versions, digests, trace",
  options: watchOption,
  optionHelp: [["-w, --watch", "then print a line each time it changes, until interrupted (with --json: one JSON object per line)"]],
  async run(ctx, key, values) {
    if (values.watch) return watchCommand(ctx, { prefix: key }, (k) => k === key);
    const { api, client } = await ctx.status();
    const { status, degraded, freshness } = await api.readKeyStatus(client, key);
    if (degraded) warnDegraded(ctx, degraded);
    ctx.show(freshness ? { ...status, freshness } : status, () => formatStatus(status) + (freshness ? `\n${formatFreshness(freshness)}` : ""));
    return exitCodes.ok;
  },
});

/** How current the answering region's read model is, in one line. */
function formatFreshness(f: Freshness): string {
  const current =
    f.currentAsOf === undefined ? "not yet confirmed current" : `current as of ${f.currentAsOf} (${((f.ageMs ?? 0) / 1000).toFixed(1)} s before this answer)`;
  return `read model: region ${f.region}, state revision ${f.observedRevision}, ${current}`;
}

/** The answer came from the state store, not the read model: say so on stderr; the answer itself stands. */
function warnDegraded(ctx: Context, reason: string): void {
  ctx.io.stderr.write(`homeostat: the read model at ${ctx.addr} is degraded (${reason}); answered from the state store: current, but slower\n`);
}

const whyCommand = keyCommand({
  name: "why",
  summary: "explain why a key is where it is: its cause, then its dependencies' causes, back to the event",
  async run(ctx, key) {
    const { api, client } = await ctx.status();
    const chain = await api.whyKey(client, key);
    ctx.show(chain, () => formatWhy(chain));
    return exitCodes.ok;
  },
});

const planCommand: Command = {
  name: "plan",
  summary: "show, without doing anything, what an advisory or a release would bump, patch, flag and rebuild",
  options: {
    advisory: { type: "string", multiple: true },
    release: { type: "string", multiple: true },
    catalog: { type: "string" },
    live: { type: "boolean" },
  },
  optionHelp: [
    ["--advisory FILE.json", "an OSV advisory (one document, an array, or {advisories: [...]}); repeatable; a sample: examples/advisories/HSEC-2026-0001.json"],
    ["--release pkg@version", "a release upstream published; repeatable"],
    ["--catalog DIR", "the catalog: a directory or git+<repo>#<ref>[:path] (default $HOMEOSTAT_CATALOG)"],
    [
      "--live",
      "plan for the running factory (--addr): also with the releases and advisories it knows, and from the versions it built (default: only the facts given, from the catalog's pins)",
    ],
  ],
  positionals: { min: 0, max: 0 },
  async run(ctx, _positionals, values) {
    const { CatalogSource, parseCatalogLocation } = await import("@homeostat/catalog");
    const { formatPlan, namedPackages, parseAdvisoryFile, parseReleaseArg, plan } = await import("./plan.ts");
    const files = Array.isArray(values.advisory) ? values.advisory.map(String) : [];
    let releases: PlanRelease[];
    try {
      releases = (Array.isArray(values.release) ? values.release.map(String) : []).map(parseReleaseArg);
    } catch (err) {
      throw new UsageError((err as Error).message, planCommand);
    }
    if (files.length === 0 && releases.length === 0) throw new UsageError("give at least one --advisory or --release", planCommand);
    const advisories = [];
    for (const f of files) advisories.push(...parseAdvisoryFile(await readFile(f, "utf8"), f));
    const config = loadConfig({
      HOMEOSTAT_CATALOG: typeof values.catalog === "string" ? values.catalog : ctx.io.env.HOMEOSTAT_CATALOG || undefined,
      HOMEOSTAT_DATA: ctx.io.env.HOMEOSTAT_DATA || undefined,
    });
    const source = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "cli") });
    const catalog = source.current();
    const facts = { advisories, releases };
    const result = plan(catalog, facts, values.live ? await liveFacts(await ctx.status(), namedPackages(catalog, facts).inCatalog) : undefined);
    ctx.show(result, () => formatPlan(result));
    return exitCodes.ok;
  },
};

/** What the factory knows of `names` (catalog packages) for a live plan: known facts, and the versions built. */
async function liveFacts({ api, client }: { api: StatusApiModule; client: StatusClient }, names: string[]): Promise<Map<string, LivePackage>> {
  const live = new Map<string, LivePackage>();
  // An advisory may name more packages than one KnownFacts call may ask about.
  for (let i = 0; i < names.length; i += maxKnownFactsPackages) {
    for (const f of await api.knownFacts(client, names.slice(i, i + maxKnownFactsPackages)))
      live.set(f.package, { releases: f.releases, advisories: f.advisories });
  }
  await mapLimit(names, 16, async (name) => {
    const built = await builtVersion(api, client, name);
    if (built === undefined) return;
    const known = live.get(name);
    if (!known) throw new Error(`KnownFacts answered nothing about ${name}`);
    known.built = built;
  });
  return live;
}

/** The version of the package the factory last built and signed; undefined when it never has. */
async function builtVersion(api: StatusApiModule, client: StatusClient, name: string): Promise<string | undefined> {
  try {
    return (await api.getKeyStatus(client, makeKey("package", name))).actual?.version;
  } catch (err) {
    if (api.isGrpcError(err, api.Status.NOT_FOUND)) return undefined;
    throw err;
  }
}

const listCommand: Command = {
  name: "list",
  summary: "list keys with their phase and versions, in key order",
  options: { prefix: { type: "string" }, limit: { type: "string" }, ...watchOption },
  optionHelp: [
    ["--prefix p", "only keys starting with p, e.g. image/ or package/open"],
    ["--limit n", "show at most n keys (default 100)"],
    ["-w, --watch", "print every key's line, then a line per change, until interrupted; resumes after a lost connection (with --json: JSON lines)"],
  ],
  positionals: { min: 0, max: 0 },
  async run(ctx, _positionals, values) {
    const prefix = typeof values.prefix === "string" ? values.prefix : "";
    if (values.watch) return watchCommand(ctx, { prefix }, () => true);
    const limit = values.limit === undefined ? 100 : parsePositiveInt(String(values.limit), "--limit", listCommand);
    const items: KeyStatus[] = [];
    const { api, client } = await ctx.status();
    let pageToken: string | undefined;
    let degraded: string | undefined;
    // The least current page's: what the whole listing may lag behind by.
    let freshness: Freshness | undefined;
    do {
      const page = await api.listKeyStatuses(client, { prefix, pageSize: Math.min(limit - items.length, maxPageSize), ...(pageToken ? { pageToken } : {}) });
      items.push(...page.items);
      pageToken = page.nextPageToken;
      degraded ??= page.degraded;
      if (page.freshness && (freshness === undefined || (page.freshness.ageMs ?? Infinity) > (freshness.ageMs ?? Infinity))) freshness = page.freshness;
    } while (pageToken && items.length < limit);
    if (degraded) warnDegraded(ctx, degraded);
    // --json: each status carries the listing's freshness, so that the answer stays an array of statuses.
    if (ctx.json) ctx.printJson(freshness ? items.map((s) => ({ ...s, freshness })) : items);
    else {
      ctx.print(formatTable(items));
      if (freshness) ctx.io.stderr.write(`homeostat: ${formatFreshness(freshness)}\n`);
    }
    if (pageToken) ctx.io.stderr.write(`homeostat: showing the first ${items.length} keys; more exist (raise --limit or narrow --prefix)\n`);
    return exitCodes.ok;
  },
};

/**
 * `get -w` and `list -w`: one line per key as it stands, then one per change, until SIGINT or
 * SIGTERM (exit 0). A lost connection is resumed from the last revision received, said on
 * stderr; a server that cannot be reached at all is exit 2, as for every command.
 */
async function watchCommand(ctx: Context, args: WatchArgs, shown: (key: string) => boolean): Promise<number> {
  const { api, client } = await ctx.status();
  const stop = new AbortController();
  const onSignal = () => stop.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  let received = false;
  let unreachable: unknown;
  try {
    const events = api.watchKeysResuming(client, args, {
      signal: stop.signal,
      onInterruption: (err, after, delayMs) => {
        if (!received) {
          unreachable = err;
          stop.abort();
          return;
        }
        const why = api.isGrpcError(err) ? err.details : (err as Error).message;
        ctx.io.stderr.write(
          `homeostat: the watch broke (${why}); ${after === undefined ? "starting over" : `resuming after revision ${after}`} in ${delayMs} ms\n`,
        );
      },
    });
    for await (const e of events) {
      received = true;
      if (ctx.json) {
        if (!("key" in e) || shown(e.key)) ctx.io.stdout.write(`${JSON.stringify(e)}\n`);
      } else if (e.type === "reset") {
        ctx.io.stderr.write(`homeostat: the watch starts over (${e.reason}); the current state follows\n`);
      } else if (e.type !== "synced" && shown(e.key)) {
        ctx.print(e.type === "delete" ? `${e.key}  removed` : formatChange(e.status));
      }
    }
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  if (unreachable) throw unreachable;
  return exitCodes.ok;
}

const verifyCommand: Command = {
  name: "verify",
  args: "<layout dir[:tag] | host[:port]/repository:tag>",
  summary: "check an image's signature and attestations offline against trusted public keys",
  options: { key: { type: "string", multiple: true }, "signature-only": { type: "boolean" } },
  optionHelp: [
    [
      "--key FILE",
      "trusted public keys (PEM; repeatable; default $HOMEOSTAT_TRUSTED_KEYS, else the local signer's cosign.pub: $HOMEOSTAT_SIGNER_DIR, default <data dir>/signer)",
    ],
    ["--signature-only", "do not require the SBOM and provenance attestations (any present are still checked)"],
  ],
  positionals: { min: 1, max: 1 },
  async run(ctx, [target], values) {
    if (target === undefined) throw new UsageError(`missing ${verifyCommand.args ?? "<target>"}`, verifyCommand);
    const { CYCLONEDX_PREDICATE_TYPE, readTrustedKeys, SigningKeyError, SLSA_PROVENANCE_PREDICATE_TYPE, VerificationError, verifyTarget } =
      await import("@homeostat/attest");
    const files = Array.isArray(values.key) && values.key.length > 0 ? values.key.map(String) : defaultTrustedKeyFiles(ctx.io.env);
    // By default, what the signer attaches to every image.
    const required = values["signature-only"] ? [] : [CYCLONEDX_PREDICATE_TYPE, SLSA_PROVENANCE_PREDICATE_TYPE];
    let results: ImageVerification[];
    try {
      const trustedKeys = await readTrustedKeys(files);
      results = await verifyTarget({ target, trustedKeys, require: required });
    } catch (err) {
      if (err instanceof VerificationError || err instanceof SigningKeyError) {
        ctx.io.stderr.write(`homeostat: verification failed: ${err.message}\n`);
        return exitCodes.failed;
      }
      throw err;
    }
    ctx.show(results, () => results.map(formatVerification).join("\n"));
    return exitCodes.ok;
  },
};

const queueStatsCommand: Command = {
  name: "queue stats",
  summary: "show queued keys per priority class, and how many run, wait to retry or are dead letters",
  positionals: { min: 0, max: 0 },
  async run(ctx) {
    const { api, client } = await ctx.status();
    const stats = await api.getQueueStats(client);
    ctx.show(stats, () => formatQueueStats(stats));
    return exitCodes.ok;
  },
};

const outcomeText: Record<EnqueueOutcome, string> = {
  added: "added (queued)",
  deduped: "deduped (merged into the queued request)",
  rerun: "rerun (running now; will run once more afterwards)",
};

const enqueueCommand = keyCommand({
  name: "enqueue",
  summary: "ask for a key to be reconciled (merged with any queued request for it)",
  options: {
    priority: { type: "string" },
    "not-before": { type: "string" },
    floor: { type: "string" },
    detail: { type: "string" },
    force: { type: "boolean" },
  },
  optionHelp: [
    ["--priority P", `${priorities.join(", ")} (default release)`],
    ["--not-before D", "not before D from now: ms, or a duration like 90s, 15m, 1h30m; a later enqueue may pull it earlier"],
    ["--floor D", "not before D from now, and no later enqueue may pull it earlier"],
    ["--detail text", "why, recorded as the key's cause"],
    ["--force", "queue a key the catalog does not declare (exit 1 without it): the reconciler retires a key that left the catalog"],
  ],
  async run(ctx, key, values) {
    const priority = values.priority === undefined ? undefined : String(values.priority);
    if (priority !== undefined && !prioritySchema.safeParse(priority).success) {
      throw new UsageError(`--priority must be one of ${priorities.join(", ")}, got ${JSON.stringify(priority)}`, enqueueCommand);
    }
    const notBefore = values["not-before"] === undefined ? undefined : parseDelay(String(values["not-before"]), "--not-before", enqueueCommand);
    const floor = values.floor === undefined ? undefined : parseDelay(String(values.floor), "--floor", enqueueCommand);
    const { api, client } = await ctx.status();
    const outcome = await api.enqueueKey(client, {
      key,
      ...(priority !== undefined ? { priority } : {}),
      ...(notBefore !== undefined ? { notBeforeDelayMs: notBefore } : {}),
      ...(floor !== undefined ? { floorDelayMs: floor } : {}),
      ...(typeof values.detail === "string" ? { causeDetail: values.detail } : {}),
      force: values.force === true,
    });
    ctx.show({ key, outcome }, () => `${key}: ${outcomeText[outcome]}`);
    return exitCodes.ok;
  },
});

const deadLettersCommand: Command = {
  name: "dead-letters",
  summary: "list the keys in the dead letters, oldest first, with their reason and attempts",
  options: { limit: { type: "string" } },
  optionHelp: [["--limit n", `show at most n keys (default 100, at most ${maxDeadLetterLimit})`]],
  positionals: { min: 0, max: 0 },
  async run(ctx, _positionals, values) {
    const limit = values.limit === undefined ? undefined : parsePositiveInt(String(values.limit), "--limit", deadLettersCommand);
    const { api, client } = await ctx.status();
    const page = await api.listDeadLetters(client, limit === undefined ? {} : { limit });
    ctx.show(page.items, () => formatDeadLetters(page.items));
    if (page.total > page.items.length) ctx.io.stderr.write(`homeostat: showing the oldest ${page.items.length} of ${page.total} dead letters\n`);
    return exitCodes.ok;
  },
};

const retryCommand = keyCommand({
  name: "retry",
  summary: "queue a dead-lettered key again with fresh attempts",
  async run(ctx, key) {
    const { api, client } = await ctx.status();
    await api.retryDeadLetter(client, key);
    ctx.show({ key, retried: true }, () => `${key}: queued again with fresh attempts (listed as a dead letter until a run succeeds)`);
    return exitCodes.ok;
  },
});

const tokenNewCommand: Command = {
  name: "token new",
  summary: "make a random bearer token for the status API and print it with its HOMEOSTAT_GRPC_TOKENS entry",
  options: { name: { type: "string" }, role: { type: "string" } },
  optionHelp: [
    ["--name N", "who the token is for, as the server logs and names it (letters, digits, _ . @ -)"],
    ["--role R", "read or write (default read); write may also enqueue and retry"],
  ],
  positionals: { min: 0, max: 0 },
  async run(ctx, _positionals, values) {
    const name = typeof values.name === "string" ? values.name : "";
    if (!/^[A-Za-z0-9_.@-]{1,64}$/.test(name)) throw new UsageError("--name must be 1 to 64 letters, digits, _ . @ or -", tokenNewCommand);
    const role = values.role === undefined ? "read" : String(values.role);
    if (role !== "read" && role !== "write") throw new UsageError(`--role must be read or write, got ${JSON.stringify(role)}`, tokenNewCommand);
    const { tokenDigest } = await statusApi();
    const token = `hst_${randomBytes(32).toString("base64url")}`;
    const entry = `${name}:${role}:${tokenDigest(token)}`;
    ctx.show(
      { name, role, token, entry },
      () =>
        `token (give it to the client, e.g. in a file for --token-file; it is not stored anywhere):\n  ${token}\nHOMEOSTAT_GRPC_TOKENS entry (for the queue service; comma-separate several):\n  ${entry}`,
    );
    return exitCodes.ok;
  },
};

/** A key argument, or a usage error saying why it is not one. */
/** A command on one `<key>`, which `run` gets parsed (a usage error of the command when it is not a key). */
function keyCommand(
  c: Omit<Command, "args" | "positionals" | "run"> & { run(ctx: Context, key: KeyStatus["key"], values: OptionValues): Promise<number> },
): Command {
  const command: Command = {
    ...c,
    args: "<key>",
    positionals: { min: 1, max: 1 },
    run: async (ctx, [raw], values) => c.run(ctx, await keyArg(raw, command), values),
  };
  return command;
}

async function keyArg(raw: string | undefined, c: Command): Promise<KeyStatus["key"]> {
  if (raw === undefined) throw new UsageError(`missing ${c.args ?? "<key>"}`, c);
  const parsed = (await statusApi()).parseKeyArg(raw);
  if ("error" in parsed) throw new UsageError(parsed.error, c);
  return parsed.key;
}

/** HOMEOSTAT_TRUSTED_KEYS when set, else the key the local signer generated (in its own directory, as the signer finds it). */
function defaultTrustedKeyFiles(env: NodeJS.ProcessEnv): string[] {
  const names = ["HOMEOSTAT_TRUSTED_KEYS", "HOMEOSTAT_DATA", "HOMEOSTAT_SIGNER_DIR"];
  const config = loadConfig(Object.fromEntries(names.map((n) => [n, env[n] || undefined])));
  return config.trustedKeyPaths.length > 0 ? config.trustedKeyPaths : [path.join(config.signerDir, "cosign.pub")];
}

export function formatVerification(v: ImageVerification): string {
  const rows = [
    ["Verified", v.tag],
    ["Digest", v.signature.manifest],
    ["Signature", `${v.signature.signatureTag} by key ${v.signature.keyId}`],
    ["Reference", v.signature.reference],
    ...v.attestations.map((a, i) => [i === 0 ? "Attestations" : "", `${a.predicateType} by key ${a.keyId}`]),
  ];
  const w = Math.max(...rows.map(([label = ""]) => label.length)) + 1;
  return rows.map(([label, value]) => `${(label ? `${label}:` : "").padEnd(w)}  ${value}`).join("\n") + "\n";
}

/** Every subcommand. */
export const commands: Command[] = [
  getCommand,
  whyCommand,
  planCommand,
  listCommand,
  queueStatsCommand,
  enqueueCommand,
  deadLettersCommand,
  retryCommand,
  verifyCommand,
  tokenNewCommand,
  statusCommand,
  proposalsCommand,
  proposalCommand,
  approveCommand,
  rejectCommand,
  answerCommand,
];

/* ---------------------------------------------------------------- formatting */

export function formatTable(items: KeyStatus[]): string {
  const rows = [["KEY", "PHASE", "DESIRED", "ACTUAL", "UPDATED"]];
  for (const s of items) rows.push([s.key, s.phase, s.desiredVersion ?? "-", s.actual?.version ?? "-", shortTime(s.updatedAt)]);
  return columns(rows);
}

/** One line for a key that changed: when, the key, its phase, and the desired and actual versions. */
export function formatChange(s: KeyStatus): string {
  return `${shortTime(s.updatedAt)}  ${s.key.padEnd(24)}  ${s.phase.padEnd(14)}  desired ${s.desiredVersion ?? "-"}  actual ${s.actual?.version ?? "-"}${s.lastError ? `  error: ${s.lastError.replace(/\s*\n\s*/g, " ")}` : ""}`;
}

/** A readable block for one key: everything in the status, absent fields left out. */
export function formatStatus(s: KeyStatus): string {
  const lines: [string, string][] = [
    ["Key", s.key],
    ["Phase", s.phase],
  ];
  const add = (label: string, value: string | number | undefined): void => {
    if (value !== undefined && value !== "") lines.push([label, String(value)]);
  };
  add("Desired version", s.desiredVersion);
  add("Desired input", s.desiredInputDigest);
  const a = s.actual;
  if (!a) lines.push(["Actual", "none (nothing built and signed yet)"]);
  else {
    add("Actual version", a.version);
    add("Actual input", a.inputDigest);
    if (s.desiredInputDigest && s.desiredInputDigest !== a.inputDigest) lines.push(["Drift", "desired input differs from the actual one"]);
    add("Built at", a.builtAt);
    add("Location", a.outputs.location);
    add("Archive", a.outputs.archive);
    add("Diff ID", a.outputs.diffId);
    add("Size", a.outputs.size === undefined ? undefined : `${a.outputs.size} bytes`);
    add("Manifest", a.outputs.manifest);
    add("Config", a.outputs.config);
    add("Metadata", a.outputs.metadata);
    add("SBOM", a.outputs.sbom);
    add("Provenance", a.outputs.provenance);
    const sigs = Object.entries(a.signatures).sort(([x], [y]) => x.localeCompare(y));
    if (sigs.length === 0) lines.push(["Signatures", "none"]);
    else {
      const w = Math.max(...sigs.map(([role]) => role.length));
      sigs.forEach(([role, digest], i) => lines.push([i === 0 ? "Signatures" : "", `${role.padEnd(w)}  ${digest}`]));
    }
    add("Signing key", a.keyId);
    add("Build trace ID", a.traceId);
  }
  add("Attempts", s.attempts);
  add("Last error", s.lastError);
  if (s.cause) add("Cause", [s.cause.type, s.cause.id, s.cause.detail && `(${s.cause.detail})`].filter(Boolean).join(" "));
  add("Waiting for", s.waitingFor);
  add("Advisories", s.advisories?.join(", "));
  add("Agent", s.agent);
  add(
    "Agent proposal",
    s.proposal && `${s.proposal.id}${builtFromProposal(s) === s.proposal.id ? " (the actual artifact was built from it)" : " (its recipe is the catalog's)"}`,
  );
  (s.builds ?? []).forEach((b, i) =>
    lines.push([i === 0 ? "Builds" : "", `${shortTime(b.at)}  ${b.version}  ${b.outcome}  ${b.inputDigest}${b.traceId ? `  trace ${b.traceId}` : ""}`]),
  );
  add("Trace ID", s.traceId);
  add("Fanned out", s.fannedOut);
  add("Updated", s.updatedAt);
  const w = Math.max(...lines.map(([label]) => label.length)) + 1;
  return lines.map(([label, value]) => `${(label ? `${label}:` : "").padEnd(w)}  ${value.replace(/\n/g, `\n${" ".repeat(w + 2)}`)}`).join("\n");
}

/** The causal chain, one link per line: each key, where it stands, and what its cause says. */
export function formatWhy(chain: KeyStatus[]): string {
  const lines = chain.map((s, i) => {
    const version = s.desiredVersion ?? s.actual?.version;
    const c = s.cause;
    const said = c ? `${c.detail ?? c.type}${c.id ? ` (${c.type} ${c.id})` : ""}` : "no recorded cause";
    return `${i === 0 ? "" : "  because "}${s.key} [${s.phase}${version ? ` ${version}` : ""}]: ${said}`;
  });
  const first = chain[0];
  const fromProposal = first && builtFromProposal(first);
  if (fromProposal) lines.push(`  built from the agent's proposal ${fromProposal} (homeostat proposal ${fromProposal})`);
  else if (first?.proposal) lines.push(`  its recipe comes from the agent's proposal ${first.proposal.id}, not built yet`);
  if (first?.waitingFor) lines.push(`  waiting for ${first.waitingFor}`);
  if (first?.builds?.length) {
    lines.push("", `Last builds of ${first.key}:`);
    lines.push(
      columns([
        ["AT", "VERSION", "OUTCOME", "INPUT", "TRACE"],
        ...first.builds.map((b) => [shortTime(b.at), b.version, b.outcome, b.inputDigest.slice(0, 19), b.traceId ?? "-"]),
      ]),
    );
  }
  return lines.join("\n");
}

export function formatQueueStats(s: QueueStats): string {
  const classes = columns([["CLASS", "QUEUED"], ...priorities.map((p) => [p, String(s.depth[p])])]);
  const totals = columns([
    ["Running:", String(s.running)],
    ["Retrying:", String(s.retrying)],
    ["Dead letters:", String(s.deadLetters)],
  ]);
  return `${classes}\n\n${totals}`;
}

export function formatDeadLetters(items: DeadLetterEntry[]): string {
  const rows = [["KEY", "PRIORITY", "ATTEMPTS", "RETRIABLE", "SINCE", "REASON"]];
  // One line per key: a multi-line error would break the columns.
  for (const d of items) rows.push([d.key, d.priority, String(d.attempts), d.nonRetriable ? "no" : "yes", shortTime(d.at), d.reason.replace(/\s*\n\s*/g, " ")]);
  return columns(rows);
}

/** 2026-11-22T07:51:38.123Z -> 2026-11-22T07:51:38Z; anything else as it is. */
function shortTime(iso: string): string {
  return iso.replace(/^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.\d+Z$/, "$1Z");
}

/* ---------------------------------------------------------------- help */

function commandUsage(c: Command): string {
  const opts = (c.optionHelp ?? []).map(([flag]) => ` [${flag}]`).join("");
  return `homeostat ${c.name}${c.args ? ` ${c.args}` : ""}${opts} [--json] [--addr host:port]`;
}

function optionLines(pairs: [string, string][]): string {
  const w = Math.max(...pairs.map(([f]) => f.length));
  return pairs.map(([f, d]) => `  ${f.padEnd(w)}  ${d}`).join("\n");
}

export function help(c?: Command): string {
  if (c) {
    return `Usage: ${commandUsage(c)}\n\n${c.summary}\n${c.details ? `\n${c.details}\n` : ""}\nOptions:\n${optionLines([...(c.optionHelp ?? []), ...globalOptionHelp])}\n`;
  }
  const w = Math.max(...commands.map((x) => (x.name + (x.args ? ` ${x.args}` : "")).length));
  const list = commands.map((x) => `  ${(x.name + (x.args ? ` ${x.args}` : "")).padEnd(w)}  ${x.summary}`).join("\n");
  return [
    "homeostat: ask a Homeostat factory where its keys stand, and steer its work queue.",
    "",
    "Usage: homeostat <command> [options]",
    "",
    "Commands:",
    list,
    "",
    "Options:",
    optionLines(globalOptionHelp),
    "",
    "Run `homeostat <command> --help` for a command's options.",
    "Data directory: every command, service and scripts/demo use $HOMEOSTAT_DATA, default .homeostat/data",
    "(relative to the current directory); the signer keeps its key in $HOMEOSTAT_SIGNER_DIR, default <data>/signer,",
    "where verify finds cosign.pub. After scripts/demo: homeostat verify .homeostat/data/oci/greeter",
    "Exit codes: 0 ok, 1 error reported by the server (e.g. not found), 2 server unreachable, 3 server up but its stores unavailable,",
    "4 (status) a service without a ready instance, 64 usage error,",
    "77 not authenticated (no or a wrong token) or not allowed (a read token on enqueue, retry, approve, reject or answer).",
    "",
  ].join("\n");
}

/* ---------------------------------------------------------------- running */

function parsePositiveInt(raw: string, flag: string, c: Command): number {
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || !Number.isSafeInteger(Number(raw)))
    throw new UsageError(`${flag} must be a positive integer, got ${JSON.stringify(raw)}`, c);
  return Number(raw);
}

const durationUnits: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** A delay from now: plain digits are milliseconds, else unit-suffixed parts (90s, 1h30m). */
function parseDelay(raw: string, flag: string, c: Command): number {
  let ms: number;
  if (/^\d+$/.test(raw)) ms = Number(raw);
  else if (/^(\d+(ms|s|m|h|d))+$/.test(raw))
    ms = [...raw.matchAll(/(\d+)(ms|s|m|h|d)/g)].reduce((sum, [, n, unit = ""]) => {
      const unitMs = durationUnits[unit];
      if (unitMs === undefined) throw new Error(`internal: no duration unit ${JSON.stringify(unit)}`);
      return sum + Number(n) * unitMs;
    }, 0);
  else throw new UsageError(`${flag} must be milliseconds or a duration like 90s, 15m or 1h30m, got ${JSON.stringify(raw)}`, c);
  if (ms > maxEnqueueDelayMs) throw new UsageError(`${flag} must be at most 30 days, got ${JSON.stringify(raw)}`, c);
  return ms;
}

/** The command named by the leading positionals (longest name first) and the rest. */
function findCommand(positionals: string[]): { command: Command; rest: string[] } | undefined {
  const byLength = [...commands].sort((x, y) => y.name.split(" ").length - x.name.split(" ").length);
  for (const c of byLength) {
    const words = c.name.split(" ");
    if (words.every((w, i) => positionals[i] === w)) return { command: c, rest: positionals.slice(words.length) };
  }
  return undefined;
}

/** The CLI's settings from the environment: config.ts holds their defaults; nothing else there matters here. */
function clientConfig(env: NodeJS.ProcessEnv) {
  const names = [
    "HOMEOSTAT_GRPC_ADDR",
    "HOMEOSTAT_TOKEN",
    "HOMEOSTAT_TOKEN_FILE",
    "HOMEOSTAT_GRPC_CA",
    "HOMEOSTAT_GRPC_TLS",
    "HOMEOSTAT_GRPC_CERT",
    "HOMEOSTAT_GRPC_KEY",
    "HOMEOSTAT_GRPC_INSECURE",
  ];
  const config = loadConfig(Object.fromEntries(names.map((n) => [n, env[n] || undefined])));
  return { addr: config.grpcAddr, client: config.statusClient };
}

function resolveAddr(flag: string | undefined, env: NodeJS.ProcessEnv, c?: Command): string {
  const addr = flag ?? clientConfig(env).addr;
  if (!/^(unix:\S+|\[[0-9a-fA-F:.]+\]:\d{1,5}|[^\s:/[\]]+:\d{1,5})$/.test(addr)) {
    throw new UsageError(`invalid address ${JSON.stringify(addr)}: expected host:port (or unix:path)`, c);
  }
  return addr;
}

async function readPem(file: string, what: string, c: Command): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new UsageError(`cannot read the ${what} ${file}: ${(err as Error).message}`, c);
  }
}

/** Token and TLS for the status API: flags first, then the environment (StatusClientSettings). */
async function clientOptions(values: OptionValues, env: StatusClientSettings, c: Command): Promise<StatusClientOptions> {
  const flag = (name: string) => (typeof values[name] === "string" ? (values[name] as string) : undefined);
  const readToken = async (file: string) => {
    const token = (await readPem(file, "token file", c)).toString("utf8").trim();
    if (token === "") throw new UsageError(`the token file ${file} is empty`, c);
    return token;
  };
  const tokenFile = flag("token-file");
  const token =
    flag("token") ??
    (tokenFile !== undefined ? await readToken(tokenFile) : (env.token ?? (env.tokenFile !== undefined ? await readToken(env.tokenFile) : undefined)));
  const ca = flag("ca") ?? env.caPath;
  const cert = flag("client-cert") ?? env.certPath;
  const key = flag("client-key") ?? env.keyPath;
  if ((cert === undefined) !== (key === undefined))
    throw new UsageError("give the client certificate and its key together (--client-cert and --client-key)", c);
  const tls = values.tls === true || env.tls || ca !== undefined || cert !== undefined;
  return {
    ...(token !== undefined ? { token } : {}),
    ...(tls
      ? {
          tls: {
            ...(ca !== undefined ? { ca: await readPem(ca, "CA file", c) } : {}),
            ...(cert !== undefined && key !== undefined
              ? { cert: await readPem(cert, "client certificate", c), key: await readPem(key, "client key", c) }
              : {}),
          },
        }
      : {}),
    insecure: env.insecure,
  };
}

/** Runs the command line `argv` (without node and script) and returns the exit code. */
export async function main(argv: string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  let command: Command | undefined;
  let client: StatusClient | undefined;
  let addr = "";
  try {
    // First pass: find the command, knowing every option so that option values are not taken for it.
    const all: ParseArgsOptionsConfig = { ...globalOptions };
    for (const c of commands) Object.assign(all, c.options);
    const first = parseArgs({ args: argv, options: all, strict: false, allowPositionals: true });
    const found = findCommand(first.positionals);
    if (!found) {
      if (first.values.help || argv.length === 0 || first.positionals[0] === "help") {
        const target = first.positionals[0] === "help" ? findCommand(first.positionals.slice(1))?.command : undefined;
        io[argv.length === 0 ? "stderr" : "stdout"].write(help(target));
        return argv.length === 0 ? exitCodes.usage : exitCodes.ok;
      }
      throw new UsageError(first.positionals.length ? `unknown command ${JSON.stringify(first.positionals.join(" "))}` : "no command given");
    }
    command = found.command;
    const c = command;

    // Second pass: strictly, with this command's options only.
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: { ...globalOptions, ...c.options }, strict: true, allowPositionals: true });
    } catch (err) {
      throw new UsageError((err as Error).message.replace(/\. To specify a positional argument.*$/s, ""), c);
    }
    const values = parsed.values as OptionValues;
    if (values.help) {
      io.stdout.write(help(c));
      return exitCodes.ok;
    }
    const again = findCommand(parsed.positionals);
    if (!again) throw new UsageError("the command's name must come before its arguments", c);
    const { rest } = again;
    const { min, max } = c.positionals ?? { min: 0, max: Infinity };
    if (rest.length < min) throw new UsageError(`missing ${c.args ?? "arguments"}`, c);
    if (rest.length > max) throw new UsageError(`unexpected argument ${JSON.stringify(rest[max])}`, c);

    addr = resolveAddr(typeof values.addr === "string" ? values.addr : undefined, io.env, c);
    const json = values.json === true;
    let connecting: Promise<{ api: StatusApiModule; client: StatusClient }> | undefined;
    const connect = async () => {
      const [api, options] = await Promise.all([statusApi(), clientOptions(values, clientConfig(io.env).client, c)]);
      client = api.statusClient(addr, options);
      return { api, client };
    };
    const ctx: Context = {
      addr,
      json,
      io,
      status: () => (connecting ??= connect()),
      print: (text) => void io.stdout.write(text.endsWith("\n") ? text : `${text}\n`),
      printJson: (value) => void io.stdout.write(`${JSON.stringify(value, null, 2)}\n`),
      show: (value, text) => (json ? ctx.printJson(value) : ctx.print(text())),
    };
    return await c.run(ctx, rest, values);
  } catch (err) {
    return await reportError(err, io, addr, command);
  } finally {
    client?.close();
  }
}

async function reportError(err: unknown, io: Io, addr: string, command: Command | undefined): Promise<number> {
  if (err instanceof UsageError) {
    const c = err.command ?? command;
    io.stderr.write(`homeostat: ${err.message}\n\n`);
    io.stderr.write(c ? `Usage: ${commandUsage(c)}\nRun \`homeostat ${c.name} --help\` for details.\n` : help());
    return exitCodes.usage;
  }
  // Loaded already when a call failed; an error from elsewhere is not one of its classes.
  const { ClientSetupError, ContractViolation, isGrpcError, reportedByServer, Status } = await statusApi();
  if (isGrpcError(err)) {
    if (err.code === Status.UNAVAILABLE && reportedByServer(err)) {
      io.stderr.write(`homeostat: homeostat at ${addr} is up but cannot answer now: ${err.details} (UNAVAILABLE; try again later)\n`);
      return exitCodes.unavailable;
    }
    if (err.code === Status.UNAVAILABLE || err.code === Status.DEADLINE_EXCEEDED) {
      const why = (err.details || Status[err.code] || "")
        .replace(/^No connection established\. Last error: (Error: )?/, "")
        .replace(/\.? ?Resolution note: ?$/, "");
      io.stderr.write(`homeostat: cannot reach homeostat at ${addr}: ${why}\n`);
      return exitCodes.unreachable;
    }
    if (err.code === Status.UNAUTHENTICATED) {
      io.stderr.write(
        `homeostat: not authenticated by ${addr}: ${err.details}\n  give a token with --token-file FILE or HOMEOSTAT_TOKEN_FILE (or --token, HOMEOSTAT_TOKEN); the factory's operator makes them (homeostat token new)\n`,
      );
      return exitCodes.denied;
    }
    if (err.code === Status.PERMISSION_DENIED) {
      io.stderr.write(`homeostat: not allowed by ${addr}: ${err.details}\n`);
      return exitCodes.denied;
    }
    const detail = err.details || Status[err.code] || `gRPC status ${err.code}`;
    io.stderr.write(err.code === Status.NOT_FOUND ? `homeostat: ${detail}\n` : `homeostat: ${detail} (${Status[err.code] ?? err.code})\n`);
    return exitCodes.failed;
  }
  if (err instanceof ClientSetupError) {
    io.stderr.write(`homeostat: ${err.message}\n`);
    return exitCodes.usage;
  }
  if (err instanceof ContractViolation) {
    io.stderr.write(`homeostat: the server at ${addr} sent a status this CLI does not understand: ${err.message}\n`);
    return exitCodes.failed;
  }
  io.stderr.write(`homeostat: ${err instanceof Error ? err.message : String(err)}\n`);
  return exitCodes.failed;
}

if (import.meta.main) {
  process.exitCode = await main(process.argv.slice(2));
}
