/**
 * POST /v1/releases: a generic "package P released version V at URL with sha256" event.
 * The release is recorded as a fact and the package key enqueued; the reconciler decides.
 * The same release posted again is recognised (event `P@V:sha256`) and enqueues nothing;
 * the same version with another source is refused (a release is immutable).
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { makeKey } from "@homeostat/core";
import { type Catalog, ReleaseConflictError, type ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import type { BearerAuth } from "./auth.ts";
import { Problem } from "./problem.ts";

export type ReleasesRouteDeps = { catalog: () => Catalog; releases: ReleaseStore; acceptor: Acceptor; auth: BearerAuth };

const bodySchema = {
  type: "object",
  additionalProperties: false,
  required: ["package", "version", "url", "sha256"],
  properties: {
    package: { type: "string", minLength: 1, maxLength: 128, pattern: "^[a-zA-Z0-9][a-zA-Z0-9._+-]*$" },
    version: { type: "string", minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9][A-Za-z0-9.+_~-]*$" },
    url: { type: "string", minLength: 1, maxLength: 4096, pattern: "^(https?|file)://" },
    sha256: { type: "string", pattern: "^[0-9a-f]{64}$" },
  },
} as const;

type ReleaseBody = { package: string; version: string; url: string; sha256: string };

export const releasesRoute: FastifyPluginAsync<ReleasesRouteDeps> = async (app, deps) => {
  app.post<{ Body: ReleaseBody }>(
    "/v1/releases",
    { bodyLimit: 64 * 1024, schema: { body: bodySchema }, onRequest: async (req: FastifyRequest) => deps.auth.check(req) },
    async (req, reply) => {
      const { package: name, version, url, sha256 } = req.body;
      if (!deps.catalog().packages.has(name)) throw new Problem(404, "unknown-package", `unknown package "${name}": it is not in the catalog`);
      let isNew: boolean;
      try {
        ({ isNew } = await deps.releases.record({ package: name, version, url, sha256 }));
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
        requestId: req.id,
      });
      return reply.code(202).send({ ...accepted, release: isNew ? "new" : "known" });
    },
  );
};
