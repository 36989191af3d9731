/**
 * Advisories: OSV documents in, package keys out, at advisory priority — from
 * POST /v1/advisories (one document, an array, or {advisories: [...]}) and from the OSV poller.
 *
 * Mapping rule: an advisory names catalog package P when one of its `affected[].package`
 * entries has name P, or a purl `pkg:generic/[namespace/]P` (core osv.ts, `namesPackage`).
 * The ecosystem is not compared and the version is not evaluated here: the reconciler decides
 * whether the version it built is affected (osv.ts `isAffected`), because an extra reconcile
 * costs little and a missed one leaves a vulnerability shipped.
 * Each advisory is stored (core advisory-store.ts) for the catalog packages it names before
 * they are enqueued, so the reconcile it causes reads it.
 * One event per advisory, identified by `<id>@<modified>`: the same revision twice enqueues
 * nothing; a new `modified` is a new event. A batch is validated whole before anything is
 * enqueued: one bad document refuses the batch, naming it.
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { advisoryPackageNames, type AdvisoryStore, type Catalog, type Osv, osvSchema } from "@homeostat/catalog";
import { makeKey } from "@homeostat/core";
import type { Accepted, Acceptor } from "./accept.ts";
import type { BearerAuth } from "./auth.ts";
import { Problem, type FieldError } from "./problem.ts";

export const MAX_BATCH = 10_000;

export type AdvisoryResult = Accepted & { advisory: string; modified: string };

/** Accepts each advisory as one event, a few at a time; results in input order. */
export async function ingestAdvisories(advisories: readonly Osv[], catalog: Catalog, acceptor: Acceptor, store: AdvisoryStore, requestId?: string): Promise<AdvisoryResult[]> {
  const results: AdvisoryResult[] = new Array(advisories.length);
  let next = 0;
  const worker = async () => {
    while (next < advisories.length) {
      const i = next++;
      const a = advisories[i]!;
      const names = advisoryPackageNames(a).filter((n) => catalog.packages.has(n));
      await store.record(a, names);
      const keys = names.map((n) => makeKey("package", n));
      const accepted = await acceptor.accept({
        source: "advisory",
        ref: `${a.id}@${a.modified}`,
        summary: `advisory ${a.id} (modified ${a.modified})${a.summary ? `: ${a.summary}` : ""}`,
        keys,
        priority: "advisory",
        cause: "advisory",
        ...(requestId ? { requestId } : {}),
      });
      results[i] = { ...accepted, advisory: a.id, modified: a.modified };
    }
  };
  await Promise.all(Array.from({ length: Math.min(32, advisories.length) }, worker));
  return results;
}

/** Parses every document with the OSV schema; all problems are reported, each with its JSON Pointer. */
export function parseAdvisories(docs: readonly unknown[], pointerOf: (i: number) => string): Osv[] {
  const out: Osv[] = [];
  const errors: FieldError[] = [];
  docs.forEach((d, i) => {
    const r = osvSchema.safeParse(d);
    if (r.success) out.push(r.data);
    else for (const issue of r.error.issues.slice(0, 5)) errors.push({ pointer: `${pointerOf(i)}${issue.path.map((p) => `/${String(p)}`).join("")}` || "/", detail: issue.message });
  });
  if (errors.length) {
    const shown = errors.slice(0, 100);
    throw new Problem(400, "invalid-advisory", `not a valid OSV document: ${shown.slice(0, 3).map((e) => `${e.pointer} ${e.detail}`).join("; ")}${errors.length > 3 ? ` (and ${errors.length - 3} more)` : ""}`, { errors: shown });
  }
  return out;
}

// The shape of the three accepted forms; each document is then checked against the OSV schema.
const bodySchema = {
  anyOf: [
    { type: "object", required: ["id", "modified"], properties: { id: { type: "string" }, modified: { type: "string" } } },
    { type: "array", minItems: 1, maxItems: MAX_BATCH, items: { type: "object" } },
    { type: "object", required: ["advisories"], additionalProperties: false, properties: { advisories: { type: "array", minItems: 1, maxItems: MAX_BATCH, items: { type: "object" } } } },
  ],
} as const;

export type AdvisoriesRouteDeps = { catalog: () => Catalog; acceptor: Acceptor; advisories: AdvisoryStore; auth: BearerAuth; bodyLimit: number };

export const advisoriesRoute: FastifyPluginAsync<AdvisoriesRouteDeps> = async (app, deps) => {
  app.post<{ Body: unknown }>(
    "/v1/advisories",
    { bodyLimit: deps.bodyLimit, schema: { body: bodySchema }, onRequest: async (req: FastifyRequest) => deps.auth.check(req) },
    async (req, reply) => {
      const body = req.body;
      const advisories = Array.isArray(body)
        ? parseAdvisories(body, (i) => `/${i}`)
        : typeof body === "object" && body !== null && "advisories" in body
          ? parseAdvisories((body as { advisories: unknown[] }).advisories, (i) => `/advisories/${i}`)
          : parseAdvisories([body], () => "");
      const results = await ingestAdvisories(advisories, deps.catalog(), deps.acceptor, deps.advisories, req.id);
      const keys = [...new Set(results.flatMap((r) => r.keys))].sort();
      return reply.code(202).send({ accepted: results.filter((r) => !r.duplicate).length, duplicates: results.filter((r) => r.duplicate).length, keys, results });
    },
  );
};
