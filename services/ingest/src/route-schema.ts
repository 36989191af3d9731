/**
 * Route schemas made from the zod contracts (issue 11): a route's JSON Schema is generated
 * from the zod schema that states the shape once, so a pattern such as a sha256's is written in
 * one place (core digest.ts) and Fastify's validator checks exactly what the contract says.
 * JSON Schema draft-07 is what Fastify's Ajv reads.
 */
import { z } from "zod";

export function routeSchema(schema: z.ZodType): Record<string, unknown> {
  const { $schema: _, ...json } = z.toJSONSchema(schema, { target: "draft-7", io: "input", unrepresentable: "throw" }) as Record<string, unknown>;
  return json;
}
