/**
 * POST /v1/webhooks/anitya: release-monitoring.org (Anitya) `project.version.update.v2`
 * messages, as fedora-messaging publishes them (the message body: `project`, `message`,
 * `distro`), relayed by a bridge from the bus.
 *
 * Mapping rule: a catalog package is named when its `upstream.releaseMonitoring` has this
 * project's id or name; a package with no releaseMonitoring mapping is named when its own
 * name is the project name (most upstreams are known to Anitya by their own name).
 * One event per project and set of new versions, so the same message relayed twice
 * enqueues nothing. Before the event is accepted, each mapped package's new versions (those its
 * policy accepts above its pinned version, the newest MAX_ANNOUNCED) are announced
 * (UpstreamLedger), for the reconciler's upstream resolver to fetch, hash and record.
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { eventId, makeKey } from "@homeostat/core";
import { compareVersions, UpstreamLedger, type Catalog, type PackageSpec, type ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import type { Authenticate } from "./server.ts";
import { endOfTurn } from "./turn.ts";

const version = { type: "string", minLength: 1, maxLength: 256 } as const;
const project = {
  type: "object",
  required: ["id", "name"],
  properties: {
    id: { type: "integer", minimum: 1 },
    name: { type: "string", minLength: 1, maxLength: 256 },
    homepage: { type: ["string", "null"], maxLength: 4096 },
    version: { anyOf: [version, { type: "null" }] },
    versions: { type: "array", maxItems: 10_000, items: version },
  },
} as const;

const bodySchema = {
  type: "object",
  required: ["project", "message"],
  properties: {
    project,
    message: {
      type: "object",
      required: ["upstream_versions"],
      properties: {
        project,
        old_version: { type: ["string", "null"], maxLength: 256 },
        upstream_versions: { type: "array", minItems: 1, maxItems: 10_000, items: version },
        packages: { type: "array", maxItems: 10_000, items: { type: "object", properties: { distro: { type: "string" }, package_name: { type: "string" } } } },
      },
    },
    distro: { type: "null" },
  },
} as const;

type AnityaBody = {
  project: { id: number; name: string; version?: string | null };
  message: { upstream_versions: string[]; old_version?: string | null };
};

export type AnityaRouteDeps = { catalog: () => Catalog; acceptor: Acceptor; releases: ReleaseStore; authenticate: Authenticate; bodyLimit: number };

/** Versions announced per package and message: a project's history can list thousands. */
const MAX_ANNOUNCED = 5;

export const anityaRoute: FastifyPluginAsync<AnityaRouteDeps> = async (app, deps) => {
  const ledger = new UpstreamLedger(deps.releases.kv);
  app.post<{ Body: AnityaBody }>(
    "/v1/webhooks/anitya",
    { bodyLimit: deps.bodyLimit, schema: { body: bodySchema }, onRequest: async (req: FastifyRequest) => deps.authenticate(req) },
    async (req, reply) => {
      const { project: p, message } = req.body;
      const versions = [...new Set(message.upstream_versions)].sort();
      const catalog = deps.catalog();
      const specs = packagesForProject(catalog, p.id, p.name);
      const ref = `${p.id}:${versions.join(",")}`;
      // Announced together with the other requests of this turn (turn.ts).
      if (specs.length > 0) await endOfTurn();
      for (const spec of specs) {
        const name = spec.name;
        const policy = catalog.policyOf(name);
        const wanted = versions
          .filter((v) => policy.accept(v) !== undefined && compareVersions(v, spec.version) > 0)
          .sort(compareVersions)
          .slice(-MAX_ANNOUNCED);
        for (const version of wanted) await ledger.announce({ package: name, version, origin: "anitya", event: eventId("anitya", ref) });
      }
      const accepted = await deps.acceptor.accept({
        source: "anitya",
        ref,
        summary: `release-monitoring project ${p.name} (${p.id}) found ${versions.join(", ")}`,
        keys: specs.map((s) => makeKey("package", s.name)),
        priority: "release",
        cause: "release",
        requestId: req.id,
      });
      return reply.code(202).send(accepted);
    },
  );
};

function packagesForProject(catalog: Catalog, id: number, name: string): PackageSpec[] {
  return [...catalog.packages.values()].filter((spec) => {
    const rm = spec.upstream?.releaseMonitoring;
    return rm ? rm.id === id || rm.name === name : spec.name === name;
  });
}
