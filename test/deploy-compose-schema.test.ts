/**
 * deploy/compose.yaml and deploy/compose.regions.yaml validated against the Compose
 * Specification's JSON schema, offline (no Docker engine here to run `docker compose config`):
 * the schema is vendored in test/fixtures/compose-spec (its README says where it comes from).
 * test/deploy.test.ts and test/deploy-regions.test.ts check what the files mean; this checks
 * that Compose would accept their shape at all, and that it would refuse a broken one.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { Ajv, type ErrorObject } from "ajv";
import { parse } from "yaml";
import { repoRoot } from "../scripts/factory.ts";

const composeSchema = JSON.parse(readFileSync(path.join(import.meta.dirname, "fixtures", "compose-spec", "compose-spec.json"), "utf8")) as { $schema: string };
// strictTypes is ajv's lint of schema style (a `type` beside every `additionalProperties`, no
// union types); the upstream schema does not follow it and it changes no verdict. The rest of
// strict mode stays on, so a keyword ajv does not know fails the compile instead of being ignored.
const ajv = new Ajv({ allErrors: true, strictTypes: false });
// The schema names the draft-07 meta-schema by its https address, ajv registers it under http:
// aliasing it keeps the schema itself checked against draft 07.
const draft07 = ajv.getSchema("http://json-schema.org/draft-07/schema");
assert.ok(draft07 && typeof draft07.schema === "object", "ajv ships the draft-07 meta-schema");
ajv.addMetaSchema({ ...draft07.schema, $id: composeSchema.$schema });
const validateCompose = ajv.compile(composeSchema);

type ComposeDocument = { name?: unknown; services: Record<string, Record<string, unknown>> } & Record<string, unknown>;
// Compose resolves YAML merge keys before validating; variables are left as written, where the
// schema accepts strings for them.
const loadCompose = (file: string): ComposeDocument => {
  const doc: unknown = parse(readFileSync(path.join(repoRoot, "deploy", file), "utf8"), { merge: true });
  assert.ok(doc && typeof doc === "object" && "services" in doc && doc.services && typeof doc.services === "object", `${file} declares services`);
  return doc as ComposeDocument;
};
const errorsOf = (doc: unknown): ErrorObject[] => (validateCompose(doc) ? [] : (validateCompose.errors ?? []));
const describe = (errors: ErrorObject[]) => errors.map((e) => `${e.instancePath || "/"}: ${e.message ?? e.keyword} ${JSON.stringify(e.params)}`).join("\n");

for (const file of ["compose.yaml", "compose.regions.yaml"]) {
  test(`compose schema: deploy/${file} is a valid Compose file`, () => {
    const doc = loadCompose(file);
    // An empty document is valid Compose too: make sure there was something to validate.
    assert.equal(typeof doc.name, "string", "the project is named (top-level `name`, Compose 2022 on)");
    assert.ok(Object.keys(doc.services).length >= 5, "services were read");
    assert.deepEqual(errorsOf(doc), [], describe(errorsOf(doc)));
  });
}

test("compose schema: a broken compose file is refused, at the place it is broken", () => {
  const valid = loadCompose("compose.yaml");
  const broken = (change: (doc: ComposeDocument) => void) => {
    const doc = structuredClone(valid);
    change(doc);
    return errorsOf(doc);
  };
  const failsAt = (errors: ErrorObject[], instancePath: string, keyword: string, what: string) =>
    assert.ok(
      errors.some((e) => e.instancePath === instancePath && e.keyword === keyword),
      `${what}: expected ${keyword} at ${instancePath || "/"}, got\n${describe(errors)}`,
    );

  failsAt(
    broken((doc) => (doc.services.nats!.ports = 5)),
    "/services/nats/ports",
    "type",
    "ports as a number",
  );
  const unknownTopLevel = broken((doc) => (doc.servics = {}));
  failsAt(unknownTopLevel, "", "additionalProperties", "an unknown top-level key");
  assert.ok(
    unknownTopLevel.some((e) => e.params.additionalProperty === "servics"),
    describe(unknownTopLevel),
  );
  failsAt(
    broken((doc) => (doc.services.nats!.healtcheck = doc.services.nats!.healthcheck)),
    "/services/nats",
    "additionalProperties",
    "a misspelt service key",
  );
  failsAt(
    broken((doc) => (doc.services.queue!.depends_on = { nats: { condition: "service_ready" } })),
    "/services/queue/depends_on/nats/condition",
    "enum",
    "an unknown depends_on condition",
  );
  failsAt(
    broken((doc) => (doc.services["bad name!"] = { image: "nats" })),
    "/services",
    "additionalProperties",
    "a service name Compose does not allow",
  );
});
