/**
 * Writes the JSON Schemas of the catalog format (`schemas/catalog-*.schema.json`) from the
 * zod schemas in packages/catalog/src/catalog.ts, their one definition, so that editors
 * validate catalog files as the loader does. catalog.test.ts fails when the committed files
 * are stale: run `pnpm gen:catalog-schema` after changing the format.
 */
import { writeFile } from "node:fs/promises";
import path from "node:path";
import { catalogJsonSchemas } from "@homeostat/catalog";

const dir = path.join(import.meta.dirname, "..", "schemas");
for (const [name, schema] of Object.entries(catalogJsonSchemas())) {
  await writeFile(path.join(dir, name), `${JSON.stringify(schema, null, 2)}\n`);
  process.stdout.write(`wrote schemas/${name}\n`);
}
