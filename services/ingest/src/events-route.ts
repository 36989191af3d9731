/**
 * GET /v1/events/:id: an accepted event as the audit stream recorded it — its source, the
 * sender's reference, a summary and the keys it enqueued. A key's status carries the id of
 * the event that last changed it (cause.id), so this is how one follows a rebuild back to why.
 */
import type { FastifyPluginAsync, FastifyRequest } from "fastify";
import { z } from "zod";
import { eventIdSchema, type EventLedger } from "@homeostat/core";
import type { Authenticate } from "./server.ts";
import { Problem } from "./problem.ts";
import { routeSchema } from "./route-schema.ts";

export type EventsRouteDeps = { ledger: EventLedger; authenticate: Authenticate };

export const eventsRoute: FastifyPluginAsync<EventsRouteDeps> = async (app, deps) => {
  app.get<{ Params: { id: string } }>(
    "/v1/events/:id",
    {
      schema: { params: routeSchema(z.strictObject({ id: eventIdSchema })) },
      onRequest: async (req: FastifyRequest) => deps.authenticate(req),
    },
    async (req) => {
      const record = await deps.ledger.get(req.params.id);
      if (!record) throw new Problem(404, "unknown-event", `no event ${req.params.id} (never accepted, or older than the retention)`);
      return record;
    },
  );
};
