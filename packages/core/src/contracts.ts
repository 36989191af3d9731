/**
 * Contracts: the one typed, versioned schema of every message on every subject.
 *
 * Producers build messages through these types and consumers parse them with `decodeMessage`,
 * so a malformed or foreign message is rejected at the edge with a reason instead of
 * travelling inward. Each schema carries `v`; a new incompatible shape gets a new version.
 */
import { z } from "zod";
import { keySchema, nameSchema } from "./key.ts";

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/, "must be sha256:<64 hex>");
const sha256Hex = z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex characters");

/** Why a key may have drifted. Informational: reconcile decisions never depend on it. */
export const causeSchema = z.object({
  type: z.enum(["release", "catalog", "dependency", "built", "resync", "manual", "advisory"]),
  id: z.string().max(512).optional(),
  detail: z.string().max(2048).optional(),
});
export type Cause = z.infer<typeof causeSchema>;

/**
 * Enqueue priority classes, most urgent first (brief: advisory > release > resync). `repair` is
 * the agentic reconciler's (services/agent): the traditional reconciler hands a key over by
 * queueing it there, and it is the least urgent, so any other enqueue of the key merges it back
 * to the traditional reconciler, which decides again (and hands it over again if it still must).
 * One key, one run record: the two never work a key at once.
 */
export const priorities = ["advisory", "release", "dependency", "resync", "repair"] as const;
export const prioritySchema = z.enum(priorities);
export type Priority = z.infer<typeof prioritySchema>;
/** The classes the traditional reconciler takes; the agent takes `repair` alone. */
export const reconcilerPriorities = priorities.filter((p): p is Exclude<Priority, "repair"> => p !== "repair");
/** The reconciler's classes but resync, which has slots of its own (HOMEOSTAT_RESYNC_CONCURRENCY). */
export const urgentReconcilerPriorities = reconcilerPriorities.filter((p) => p !== "resync");

const epochMs = z.number().int().nonnegative();

/** A W3C traceparent (version 00): the span context of an enqueue, kept so that the run it causes can link to it. */
export const traceparentSchema = z.string().regex(/^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/, "a W3C traceparent");

/** A bound on a traceparent's length (version 00 has 55 characters; a later version may add fields). */
const traceparentMaxLength = 256;

/** A run links to at most this many of the enqueues it answers: a storm of enqueues of one key must not grow its message. */
export const maxLinkedEnqueues = 8;

/**
 * Revisions of the fact stores a reconcile decides from (the advisories and releases buckets:
 * `<prefix>_advisories`, `<prefix>_releases`, whose revisions every region shares).
 *
 * An enqueue caused by a stored fact says where it was stored (`facts`: the revision of its
 * entry in that bucket); a run says up to which revision it read each store (ReconcileResult
 * `read`). An enqueue that finds its key running marks the run for a rerun; when every enqueue
 * behind the mark stated facts that the run had read, the run already answered them and no
 * rerun follows (workqueue invariant 3). Why: in a burst, advisories for a package arrive while
 * its run goes on, and each round of them cost one more run that found nothing new
 * (bench:storm, "advisory/unchanged").
 */
export const factStores = ["advisories", "releases"] as const;
export type FactStore = (typeof factStores)[number];
const revision = z.number().int().positive();
export const factRevisionsSchema = z.strictObject({ advisories: revision.optional(), releases: revision.optional() });
export type FactRevisions = z.infer<typeof factRevisionsSchema>;

/**
 * The facts two requests stem from together: every store either names, at the later revision.
 * Undefined when either states none: a request without facts (a resync, a dependency, a person)
 * may ask for anything, and only a run can answer it.
 */
export function mergeFacts(a: FactRevisions | undefined, b: FactRevisions | undefined): FactRevisions | undefined {
  if (!a || !b) return undefined;
  const merged: FactRevisions = {};
  for (const store of factStores) {
    const revision = Math.max(a[store] ?? 0, b[store] ?? 0);
    if (revision > 0) merged[store] = revision;
  }
  return merged;
}

/** ingest, reconciler, signer -> queue: "this key may have drifted". */
export const enqueueRequestSchema = z.object({
  v: z.literal(1),
  key: keySchema,
  priority: prioritySchema,
  cause: causeSchema,
  /** Not before this time (ms since the epoch); a later enqueue may pull it earlier. */
  notBefore: epochMs.optional(),
  /** Not before this time, and no enqueue may pull it earlier. */
  floor: epochMs.optional(),
  /**
   * What this enqueue reports as done (the signer: a build, by its input digest). When all the
   * key has queued is a requeue-after that looks whether exactly that is done (WorkItem.watch),
   * the look is withdrawn and nothing is queued: nothing is left to look at. Otherwise the key
   * is queued as asked.
   */
  completes: z.string().min(1).max(256).optional(),
});
export type EnqueueRequest = z.infer<typeof enqueueRequestSchema>;

/**
 * queue -> reconciler: a queued key. The queue holds keys, not payloads: besides the key there
 * is only its schedule (priority class, not-before, floor) and the failures so far.
 */
export const workItemSchema = z.object({
  v: z.literal(1),
  key: keySchema,
  priority: prioritySchema,
  cause: causeSchema,
  notBefore: epochMs.default(0),
  floor: epochMs.default(0),
  attempts: z.number().int().nonnegative().default(0),
  enqueuedAt: epochMs.default(0),
  /**
   * The enqueues this schedule answers, as their traceparents (oldest first): its own, and those
   * merged into it (deduplicated while queued, or folded into a rerun). Its run's span links to
   * each, so a trace of an absorbed event still leads to the run that served it.
   */
  enqueues: z.array(traceparentSchema).max(maxLinkedEnqueues).optional(),
  /**
   * The trace context of the publish that put this message in the stream (its PRODUCER span,
   * sampled or not): the run's span is its child. In the body rather than in headers, which cost
   * the queue's hottest path (an enqueue) more than the span itself. Its format is checked where
   * it is read (the W3C propagator ignores a malformed one), not on every decode.
   */
  trace: z.string().max(traceparentMaxLength).optional(),
  /**
   * Set on a requeue-after that stands for nothing but a look at whether `watch` happened (a
   * build's completion, by its input digest): whoever sees it happen may withdraw the message
   * (WorkQueue.withdraw) instead of letting it run. A merge with anything else drops it, so a
   * message that stands for an enqueue too is never withdrawn.
   */
  watch: z.string().min(1).max(256).optional(),
  /** The facts this schedule's enqueues stem from (factRevisionsSchema), when every one of them stated its own. */
  facts: factRevisionsSchema.optional(),
  /**
   * A settle window, when every enqueue this schedule stands for asked to settle (QueueRequest
   * `settle`): the key is due at `until` (its last such enqueue plus the quiet period), which
   * never passes `latest` (its first such enqueue plus the longest wait, or sooner when a
   * schedule merged into it was due sooner). A burst of one key's events then costs one run
   * after the burst instead of one per round of events.
   */
  settle: z.object({ until: epochMs, latest: epochMs }).optional(),
});
export type WorkItem = z.infer<typeof workItemSchema>;

export const sourceSchema = z.object({
  url: z.string().min(1).max(4096),
  sha256: sha256Hex,
});
export type Source = z.infer<typeof sourceSchema>;

/**
 * A patch applied to the unpacked source (`patch -p1`), fetched and verified like a source:
 * `url` is a path relative to the catalog directory or a file:// URL.
 */
export const patchRefSchema = z.object({
  url: z.string().min(1).max(4096),
  sha256: sha256Hex,
});
export type PatchRef = z.infer<typeof patchRefSchema>;

/** A built package as other builds consume it. */
export const packageArtifactSchema = z.object({
  name: nameSchema,
  version: z.string().min(1).max(128),
  /** The deterministic tar.gz, which is also the package's OCI layer. */
  archive: digestSchema,
  /** sha256 of the uncompressed tar (the OCI diff_id). */
  diffId: digestSchema,
  size: z.number().int().nonnegative(),
  license: z.string().max(256).optional(),
  /** The package's identity in SBOMs when it is not built from source (e.g. `pkg:deb/debian/musl@1.2.3-1?arch=amd64`). */
  purl: z.string().max(2048).optional(),
});
export type PackageArtifact = z.infer<typeof packageArtifactSchema>;

export const imageConfigSchema = z.object({
  entrypoint: z.array(z.string()).default([]),
  cmd: z.array(z.string()).default([]),
  env: z.record(z.string(), z.string()).default({}),
  user: z.string().default(""),
  workdir: z.string().default(""),
  annotations: z.record(z.string(), z.string()).default({}),
});
export type ImageConfig = z.infer<typeof imageConfigSchema>;

/**
 * What identifies a catalog revision: a git commit (40 or 64 hex), or for a directory catalog
 * the digest of its content (catalog.ts `Catalog.revision`).
 */
export const catalogRevisionSchema = z.string().regex(/^([0-9a-f]{40}|[0-9a-f]{64}|sha256:[0-9a-f]{64})$/, "must be a git commit id or sha256:<64 hex>");

/**
 * reconciler -> builder: which build to make, never how. It carries no code: the builder
 * loads the recipe of `key` from the catalog at `catalogRevision` itself, recomputes the
 * desired build and its input digest from the catalog and the facts (exactly as the
 * reconciler did, @homeostat/catalog desired-state.ts) and refuses a request whose
 * `inputDigest` or `version` is not what it finds. Unknown fields (steps, sources) are refused.
 */
export const buildRequestSchema = z.strictObject({
  v: z.literal(2),
  key: keySchema,
  catalogRevision: catalogRevisionSchema,
  inputDigest: digestSchema,
  version: z.string().min(1).max(128),
});
export type BuildRequest = z.infer<typeof buildRequestSchema>;

/**
 * A trial build's outcome (the agent asks with a build request naming a catalog snapshot, on
 * the trial subject; the builder answers on the reply subject). A trial is built in the
 * sandbox like any build but stored apart, never vouched for, never signed, and changes no
 * key's state. `detail` says why it failed (or what it built), `logTail` is the end of the
 * failing command's log.
 */
export const trialOutcomeSchema = z.strictObject({
  v: z.literal(1),
  passed: z.boolean(),
  detail: z.string().max(8192),
  logTail: z.string().max(16384).optional(),
});
export type TrialOutcome = z.infer<typeof trialOutcomeSchema>;

/** What a build produced, by role. Digests name blobs in the artifact store. */
export const buildOutputsSchema = z.object({
  archive: digestSchema.optional(),
  diffId: digestSchema.optional(),
  size: z.number().int().nonnegative().optional(),
  metadata: digestSchema.optional(),
  manifest: digestSchema.optional(),
  config: digestSchema.optional(),
  sbom: digestSchema.optional(),
  /** SLSA v1 provenance predicate (JSON), a blob beside the artifact. */
  provenance: digestSchema.optional(),
  /** Where consumers find it: an OCI layout path and tag, or a store path. */
  location: z.string().max(4096),
});
export type BuildOutputs = z.infer<typeof buildOutputsSchema>;

/**
 * builder -> signer: a finished build to sign and record. It names, never locates: the signer
 * reads the build result (a DSSE envelope signed by the builder, @homeostat/attest
 * build-result.ts) from its own content-addressed store by digest, and everything the result
 * names from there too.
 */
export const signRequestSchema = z.strictObject({
  v: z.literal(2),
  key: keySchema,
  inputDigest: digestSchema,
  /** The build result envelope, a blob in `<data>/store/blobs/sha256/`. */
  buildResult: digestSchema,
});
export type SignRequest = z.infer<typeof signRequestSchema>;

/** How a build's steps were sandboxed (the builder's isolation.ts); `none` only by a development setting. */
export const buildIsolations = ["bubblewrap", "none"] as const;
export type BuildIsolationKind = (typeof buildIsolations)[number];

/** The build outputs a build result vouches for: BuildOutputs without the builder's local paths. */
export const resultOutputsSchema = buildOutputsSchema.omit({ location: true }).strict();
export type ResultOutputs = z.infer<typeof resultOutputsSchema>;

/**
 * The predicate of a build result: the builder's signed word that these outputs are what it
 * built for this key from these inputs, and how its steps were sandboxed.
 */
export const buildResultPredicateSchema = z.strictObject({
  key: keySchema,
  kind: z.enum(["package", "image"]),
  name: nameSchema,
  version: z.string().min(1).max(128),
  inputDigest: digestSchema,
  catalogRevision: catalogRevisionSchema,
  isolation: z.enum(buildIsolations),
  builder: z.string().min(1).max(128),
  outputs: resultOutputsSchema,
});
export type BuildResultPredicate = z.infer<typeof buildResultPredicateSchema>;

/**
 * The version of the build behaviour. Part of every input digest: changing how the builder
 * turns inputs into bytes must bump it, so that every key is rebuilt once.
 */
export const BUILDER_VERSION = "homeostat-builder/0.4.0";

export class ContractError extends Error {}

/** Parses a message body against its subject's schema; a ContractError names the bad fields. */
export function decodeMessage<S extends z.ZodType>(schema: S, data: Uint8Array | string): z.infer<S> {
  let json: unknown;
  try {
    json = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
  } catch {
    throw new ContractError("message is not JSON");
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    throw new ContractError(parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; "));
  }
  return parsed.data;
}

export function encodeMessage<T>(value: T): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}
