/**
 * POST /v1/releases: a generic "package P released version V at URL with sha256" event.
 * The release is recorded as a fact and the package key enqueued; the reconciler decides.
 */
import type { FastifyPluginAsync } from "fastify";
import { makeKey, ReleaseConflictError, type Catalog, type EnqueueRequest, type ReleaseStore } from "@homeostat/core";

export type ReleasesRouteDeps = {
  catalog: () => Catalog;
  releases: ReleaseStore;
  enqueue: (req: EnqueueRequest, msgId: string) => Promise<void>;
};

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
  app.post<{ Body: ReleaseBody }>("/v1/releases", { schema: { body: bodySchema } }, async (req, reply) => {
    const { package: name, version, url, sha256 } = req.body;
    if (!deps.catalog().packages.has(name)) {
      return reply.code(404).send({ statusCode: 404, error: "Not Found", message: `unknown package "${name}": it is not in the catalog` });
    }
    let isNew: boolean;
    try {
      ({ isNew } = await deps.releases.record({ package: name, version, url, sha256 }));
    } catch (err) {
      if (err instanceof ReleaseConflictError) return reply.code(409).send({ statusCode: 409, error: "Conflict", message: err.message });
      throw err;
    }
    const key = makeKey("package", name);
    // Enqueued even for a known release: enqueueing is idempotent and a lost earlier enqueue is repaired.
    await deps.enqueue({ v: 1, key, priority: "release", cause: { type: "release", id: `${name}@${version}`, detail: url } }, `release:${name}@${version}:${sha256}`);
    return reply.code(202).send({ accepted: true, key, release: isNew ? "new" : "known" });
  });
};
