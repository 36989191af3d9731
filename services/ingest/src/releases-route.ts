/**
 * POST /v1/releases: a generic "package P released version V at URL with sha256" event.
 * The release is recorded as a fact and the package key enqueued; the reconciler decides.
 * The same release posted again is recognised (event `P@V:sha256`) and enqueues nothing;
 * the same version with another source is refused (a release is immutable).
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { z } from "zod";
import { makeKey, nameSchema, sha256HexSchema } from "@homeostat/core";
import { type Catalog, packageSpecSchema, ReleaseConflictError, type ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import { Problem } from "./problem.ts";
import { routeSchema } from "./route-schema.ts";
import type { Authenticate } from "./server.ts";
import { endOfTurn } from "./turn.ts";

export type ReleasesRouteDeps = { catalog: () => Catalog; releases: ReleaseStore; acceptor: Acceptor; authenticate: Authenticate };

// The package name and version are the catalog's own; the sha256 is core's.
const bodySchema = z.strictObject({
  package: nameSchema,
  version: packageSpecSchema.shape.version,
  url: z
    .string()
    .min(1)
    .max(4096)
    .regex(/^(https?|file):\/\//, "must be an http(s):// or file:// URL"),
  sha256: sha256HexSchema,
});
type ReleaseBody = z.infer<typeof bodySchema>;

export const releasesRoute: FastifyPluginAsync<ReleasesRouteDeps> = async (app, deps) => {
  app.post<{ Body: ReleaseBody }>(
    "/v1/releases",
    { bodyLimit: 64 * 1024, schema: { body: routeSchema(bodySchema) }, onRequest: async (req: FastifyRequest) => deps.authenticate(req) },
    async (req, reply) => {
      const { package: name, version, url, sha256 } = req.body;
      if (!deps.catalog().packages.has(name)) throw new Problem(404, "unknown-package", `unknown package "${name}": it is not in the catalog`);
      let isNew: boolean;
      let revision: number;
      // Recorded together with the other requests of this turn (turn.ts).
      await endOfTurn();
      try {
        ({ isNew, revision } = await deps.releases.record({ package: name, version, url, sha256 }));
      } catch (err) {
        if (err instanceof ReleaseConflictError) throw new Problem(409, "release-conflict", err.message);
        throw err;
      }
      const accepted = await deps.acceptor.accept({
        source: "release",
        ref: `${name}@${version}:${sha256}`,
        summary: `${name} released ${version} at ${url}`,
        keys: [makeKey("package", name)],
        priority: "release",
        cause: "release",
        facts: { releases: revision },
        requestId: req.id,
      });
      return reply.code(202).send({ ...accepted, release: isNew ? "new" : "known" });
    },
  );
};
