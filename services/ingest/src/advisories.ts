/**
 * Advisories: OSV documents in, package keys out, at advisory priority — from
 * POST /v1/advisories (one document, an array, or {advisories: [...]}) and from the OSV poller.
 *
 * Mapping rule: an advisory names catalog package P when one of its `affected[].package`
 * entries has name P, or a purl `pkg:generic/[namespace/]P` (catalog osv.ts, `namesPackage`),
 * or when a package-less entry's GIT range is P's repository (its `upstream.github`, or the
 * repository of its `git+` source). The ecosystem is not compared and the version is not
 * evaluated here: the reconciler decides whether the version it built is affected (osv.ts
 * `assessAdvisory`), because an extra reconcile costs little and a missed one leaves a
 * vulnerability shipped. Each advisory is stored (catalog advisory-store.ts) for the catalog
 * packages it names before they are enqueued, so the reconcile it causes reads it.
 *
 * One event per advisory, identified by `<id>@<modified>`: the same revision twice enqueues
 * nothing; a new `modified` is a new event. Ordering is by `modified`, so a `modified` more
 * than HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS in the future is refused (it would win over every later
 * real revision of the id). A withdrawal is an event like any other revision; its summary says
 * it was withdrawn, which is the cause text its keys are reconciled with.
 *
 * A batch is answered record by record: each is accepted, a duplicate, or refused with its
 * reason and the JSON Pointers of its problems; one bad record never refuses the others.
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { z } from "zod";
import {
  advisoryPackageNames,
  advisoryRepositories,
  type AdvisoryStore,
  type Catalog,
  type Osv,
  osvSchema,
  severities,
  type SeverityScore,
} from "@homeostat/catalog";
import { makeKey, mapLimit } from "@homeostat/core";
import type { Accepted, Acceptor } from "./accept.ts";
import { Problem, type FieldError } from "./problem.ts";
import { routeSchema } from "./route-schema.ts";
import type { Authenticate } from "./server.ts";
import { endOfTurn } from "./turn.ts";

export const MAX_BATCH = 10_000;

export type AdvisoryResult = Accepted & { advisory: string; modified: string; withdrawn: boolean; severity: SeverityScore[] };
export type RefusedAdvisory = { refused: true; advisory?: string; reason: string; errors: FieldError[] };

/** Why `a` may not be accepted now, or undefined: its `modified` lies beyond now + the allowed skew. */
export function futureModified(a: Pick<Osv, "modified">, maxFutureSkewMs: number, now = Date.now()): string | undefined {
  const ahead = Date.parse(a.modified) - now;
  if (ahead <= maxFutureSkewMs) return undefined;
  return `modified ${a.modified} is ${Math.round(ahead / 3_600_000)} h in the future, more than the allowed clock skew of ${Math.round(maxFutureSkewMs / 60_000)} min (HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS): it would outrank every later revision`;
}

/** The catalog packages an advisory names: by package name or generic purl, and by the repository of package-less GIT ranges. */
export function advisoryCatalogPackages(a: Osv, catalog: Catalog): string[] {
  const names = new Set(advisoryPackageNames(a).filter((n) => catalog.packages.has(n)));
  const repos = advisoryRepositories(a).map(normalizeRepo);
  if (repos.length) {
    for (const spec of catalog.packages.values()) {
      const own = [
        spec.upstream?.github ? `github.com/${spec.upstream.github}` : undefined,
        spec.source.url.startsWith("git+") ? spec.source.url.slice(4).split("#")[0] : undefined,
      ];
      if (own.some((r) => r !== undefined && repos.includes(normalizeRepo(r)))) names.add(spec.name);
    }
  }
  return [...names];
}

/** A repository URL compared without scheme, credentials, case, trailing slash or `.git`. */
function normalizeRepo(url: string): string {
  return url
    .trim()
    .toLowerCase()
    .replace(/^[a-z+]+:\/\//, "")
    .replace(/^[^@/]*@/, "")
    .replace(/\/+$/, "")
    .replace(/\.git$/, "");
}

/**
 * Accepts each advisory as one event, a few at a time; results in input order. Every advisory
 * of the batch is stored before any of its events is recorded: the runs the first events cause
 * then read the whole batch, and the later events' enqueues of the same packages, stating facts
 * those runs have read, are answered by them instead of each costing one more run.
 */
export async function ingestAdvisories(
  advisories: readonly Osv[],
  catalog: Catalog,
  acceptor: Acceptor,
  store: AdvisoryStore,
  opts: { maxFutureSkewMs: number; requestId?: string },
): Promise<AdvisoryResult[]> {
  const { requestId, maxFutureSkewMs } = opts;
  // Stored together with the other requests of this turn (turn.ts).
  await endOfTurn();
  const stored = await mapLimit(advisories, 32, async (a) => {
    const names = advisoryCatalogPackages(a, catalog);
    return { a, names, revision: (await store.record(a, names, maxFutureSkewMs)).revision };
  });
  return mapLimit(stored, 32, async ({ a, names, revision }): Promise<AdvisoryResult> => {
    const withdrawn = a.withdrawn !== undefined;
    const accepted = await acceptor.accept({
      source: "advisory",
      ref: `${a.id}@${a.modified}`,
      summary: withdrawn
        ? `advisory ${a.id} withdrawn ${a.withdrawn} (modified ${a.modified}): it no longer counts against any version`
        : `advisory ${a.id} (modified ${a.modified})${a.summary ? `: ${a.summary}` : ""}`,
      keys: names.map((n) => makeKey("package", n)),
      priority: "advisory",
      cause: "advisory",
      ...(revision > 0 ? { facts: { advisories: revision } } : {}),
      ...(requestId ? { requestId } : {}),
    });
    return { ...accepted, advisory: a.id, modified: a.modified, withdrawn, severity: severities(a) };
  });
}

/** Checks one document: the OSV schema, then the clock; a refusal names each problem by JSON Pointer. */
export function parseAdvisory(doc: unknown, pointer: string, maxFutureSkewMs: number): Osv | RefusedAdvisory {
  const id = typeof doc === "object" && doc !== null && typeof (doc as { id?: unknown }).id === "string" ? (doc as { id: string }).id.slice(0, 256) : undefined;
  const r = osvSchema.safeParse(doc);
  if (!r.success) {
    const errors = r.error.issues.slice(0, 20).map((issue) => ({
      pointer: `${pointer}${issue.path.map((p) => `/${String(p).replaceAll("~", "~0").replaceAll("/", "~1")}`).join("")}` || "/",
      detail: issue.message,
    }));
    return { refused: true, ...(id ? { advisory: id } : {}), reason: "invalid-advisory", errors };
  }
  const future = futureModified(r.data, maxFutureSkewMs);
  if (future) return { refused: true, advisory: r.data.id, reason: "modified-in-future", errors: [{ pointer: `${pointer}/modified` || "/", detail: future }] };
  return r.data;
}

// The three accepted forms; each document is then checked on its own (parseAdvisory).
const batchSchema = z.array(z.looseObject({})).min(1).max(MAX_BATCH);
const bodySchema = z.union([z.looseObject({ id: z.string(), modified: z.string() }), batchSchema, z.strictObject({ advisories: batchSchema })]);

export type AdvisoriesRouteDeps = {
  catalog: () => Catalog;
  acceptor: Acceptor;
  advisories: AdvisoryStore;
  authenticate: Authenticate;
  bodyLimit: number;
  maxFutureSkewMs: number;
};

export const advisoriesRoute: FastifyPluginAsync<AdvisoriesRouteDeps> = async (app, deps) => {
  app.post<{ Body: z.infer<typeof bodySchema> }>(
    "/v1/advisories",
    { bodyLimit: deps.bodyLimit, schema: { body: routeSchema(bodySchema) }, onRequest: async (req: FastifyRequest) => deps.authenticate(req) },
    async (req, reply) => {
      const body = req.body;
      // Without an id the object is the {advisories} wrapper (the schema allows nothing else).
      const single = !Array.isArray(body) && "id" in body;
      const docs: unknown[] = Array.isArray(body) ? body : single ? [body] : (body as { advisories: unknown[] }).advisories;
      const pointerOf = (i: number) => (Array.isArray(body) ? `/${i}` : single ? "" : `/advisories/${i}`);
      const parsed = docs.map((d, i) => parseAdvisory(d, pointerOf(i), deps.maxFutureSkewMs));
      const refused = parsed.flatMap((p, index) => ("refused" in p ? [{ index, ...p }] : []));
      if (refused.length === docs.length) {
        // Nothing to accept: the request as a whole is the client's error.
        const errors = refused.flatMap((r) => r.errors).slice(0, 100);
        const slug = refused.every((r) => r.reason === "modified-in-future") ? "modified-in-future" : "invalid-advisory";
        throw new Problem(
          400,
          slug,
          `${single ? "the advisory was" : `all ${docs.length} advisories were`} refused: ${errors
            .slice(0, 3)
            .map((e) => `${e.pointer || "/"} ${e.detail}`)
            .join("; ")}${errors.length > 3 ? ` (and ${errors.length - 3} more)` : ""}`,
          { errors },
        );
      }
      const valid = parsed.flatMap((p, index) => ("refused" in p ? [] : [{ index, osv: p }]));
      const done = await ingestAdvisories(
        valid.map((v) => v.osv),
        deps.catalog(),
        deps.acceptor,
        deps.advisories,
        { maxFutureSkewMs: deps.maxFutureSkewMs, requestId: req.id },
      );
      const results: Array<{ index: number } & (AdvisoryResult | RefusedAdvisory)> = [
        ...valid.map((v, i) => {
          const result = done[i];
          if (!result) throw new Error(`internal: no result for advisory ${v.index}`);
          return { index: v.index, ...result };
        }),
        ...refused,
      ].sort((a, b) => a.index - b.index);
      const keys = [...new Set(done.flatMap((r) => r.keys))].sort();
      return reply.code(202).send({
        accepted: done.filter((r) => !r.duplicate).length,
        duplicates: done.filter((r) => r.duplicate).length,
        refused: refused.length,
        keys,
        results,
      });
    },
  );
};
