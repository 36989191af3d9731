/**
 * GET /v1/events/:id: an accepted event as the audit stream recorded it — its source, the
 * sender's reference, a summary and the keys it enqueued. A key's status carries the id of
 * the event that last changed it (cause.id), so this is how one follows a rebuild back to why.
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import type { EventLedger } from "@homeostat/core";
import type { BearerAuth } from "./auth.ts";
import { Problem } from "./problem.ts";

export type EventsRouteDeps = { ledger: EventLedger; auth: BearerAuth };

export const eventsRoute: FastifyPluginAsync<EventsRouteDeps> = async (app, deps) => {
  app.get<{ Params: { id: string } }>(
    "/v1/events/:id",
    {
      schema: { params: { type: "object", required: ["id"], properties: { id: { type: "string", pattern: "^(github|advisory|release|anitya)-[0-9a-f]{32}$" } } } },
      onRequest: async (req: FastifyRequest) => deps.auth.check(req),
    },
    async (req) => {
      const record = await deps.ledger.get(req.params.id);
      if (!record) throw new Problem(404, "unknown-event", `no event ${req.params.id} (never accepted, or older than the retention)`);
      return record;
    },
  );
};
