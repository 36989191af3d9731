import { createRequire } from "node:module";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { Spec, Validation } from "@cyclonedx/cyclonedx-library";
import { genericPurl, imageSbom, uuidFromSha256, type ImageSbomInput } from "./sbom.ts";

const d = (c: string) => `sha256:${c.repeat(64)}` as const;
const input: ImageSbomInput = {
  name: "greeter",
  version: "1.1",
  epoch: 1_700_000_000,
  manifest: d("a"),
  packages: [
    { name: "libgreet", version: "1.1", archive: d("b"), diffId: d("c"), license: "MIT" },
    { name: "greet", version: "1.1+b1", archive: d("e"), license: "Apache-2.0 OR MIT" },
    { name: "motd", version: "1.0", archive: d("f"), license: "Some Custom Licence" },
    { name: "nolicense", version: "0.1", archive: d("0") },
  ],
};

/**
 * The library's strict JSON validator. It needs ajv, ajv-formats and ajv-formats-draft2019;
 * the last is not installed in this workspace, so when the library reports it missing the same
 * validation is done here with the library's own schema files and the ajv it resolves, adding
 * the one format ajv-formats-draft2019 would add (`idn-email`).
 */
async function validate(json: string): Promise<unknown> {
  const v = new Validation.JsonStrictValidator(Spec.Version.v1dot6);
  try {
    return await v.validate(json);
  } catch (e) {
    if (!(e instanceof Validation.MissingOptionalDependencyError)) throw e;
  }
  const libRequire = createRequire(createRequire(import.meta.url).resolve("@cyclonedx/cyclonedx-library"));
  const root = path.dirname(libRequire.resolve("@cyclonedx/cyclonedx-library/package.json"));
  const { FILES } = libRequire(path.join(root, "dist.node/resources.node.js")) as {
    FILES: {
      CDX: { JSON_STRICT_SCHEMA: Record<string, string> };
      SPDX: { JSON_SCHEMA: string };
      CryptoDefs: { JSON_SCHEMA: string };
      JSF: { JSON_SCHEMA: string };
    };
  };
  type AjvLike = { compile(schema: unknown): ((data: unknown) => boolean) & { errors?: unknown }; addFormat(name: string, f: unknown): void };
  const Ajv = (libRequire("ajv") as { default: new (o: object) => AjvLike }).default;
  const addFormats = (libRequire("ajv-formats") as { default: (a: AjvLike) => void }).default;
  const load = async (f: string): Promise<unknown> => JSON.parse(await readFile(f, "utf8"));
  const ajv = new Ajv({
    useDefaults: false,
    strict: false,
    strictSchema: false,
    addUsedSchema: false,
    schemas: {
      "http://cyclonedx.org/schema/spdx.SNAPSHOT.schema.json": await load(FILES.SPDX.JSON_SCHEMA),
      "http://cyclonedx.org/schema/cryptography-defs.SNAPSHOT.schema.json": await load(FILES.CryptoDefs.JSON_SCHEMA),
      "http://cyclonedx.org/schema/jsf-0.82.SNAPSHOT.schema.json": await load(FILES.JSF.JSON_SCHEMA),
    },
  });
  addFormats(ajv);
  ajv.addFormat("idn-email", true);
  ajv.addFormat("iri-reference", true);
  const validator = ajv.compile(await load(FILES.CDX.JSON_STRICT_SCHEMA["1.6"]!));
  return validator(JSON.parse(json)) ? null : validator.errors;
}

test("the SBOM is valid CycloneDX 1.6 (strict schema)", async () => {
  assert.equal(await validate(imageSbom(input)), null);
  assert.equal(await validate(imageSbom({ ...input, manifest: undefined as never, packages: [input.packages[3]!] })), null);
  // and the validator does reject a broken document
  const broken = JSON.parse(imageSbom(input)) as { components: { hashes: { alg: string }[] }[] };
  broken.components[0]!.hashes[0]!.alg = "SHA-257";
  assert.notEqual(await validate(JSON.stringify(broken)), null);
});

test("same inputs give the same bytes; any change gives another serial number", () => {
  const a = imageSbom(input);
  const b = imageSbom({ ...input, packages: [...input.packages].reverse() });
  assert.equal(a, b);
  const c = imageSbom({ ...input, packages: input.packages.slice(1) });
  const serial = (s: string) => (JSON.parse(s) as { serialNumber: string }).serialNumber;
  assert.match(serial(a), /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.notEqual(serial(a), serial(c));
  assert.notEqual(serial(a), serial(imageSbom({ ...input, epoch: input.epoch + 1 })));
});

test("content: image, packages with purl, hash, licence; timestamp from the epoch", () => {
  type Bom = {
    specVersion: string;
    metadata: { timestamp: string; component: { type: string; name: string; version: string }; tools: { components: { name: string; version: string }[] } };
    components: { name: string; version: string; purl: string; hashes: { alg: string; content: string }[]; licenses?: Record<string, unknown>[] }[];
    dependencies: { ref: string; dependsOn?: string[] }[];
  };
  const bom = JSON.parse(imageSbom(input)) as Bom;
  assert.equal(bom.specVersion, "1.6");
  assert.equal(bom.metadata.timestamp, "2023-11-14T22:13:20.000Z");
  assert.deepEqual([bom.metadata.component.type, bom.metadata.component.name, bom.metadata.component.version], ["container", "greeter", "1.1"]);
  assert.deepEqual(
    bom.metadata.tools.components.map((t) => [t.name, t.version]),
    [["homeostat-builder", "0.4.0"]],
  );
  assert.equal(bom.components.length, 4);
  const greet = bom.components.find((c) => c.name === "greet")!;
  assert.equal(greet.purl, "pkg:generic/greet@1.1%2Bb1");
  assert.deepEqual(greet.hashes, [{ alg: "SHA-256", content: "e".repeat(64) }]);
  assert.deepEqual(greet.licenses, [{ expression: "Apache-2.0 OR MIT", acknowledgement: "declared" }]);
  assert.deepEqual(bom.components.find((c) => c.name === "libgreet")!.licenses, [{ license: { id: "MIT", acknowledgement: "declared" } }]);
  assert.deepEqual(bom.components.find((c) => c.name === "motd")!.licenses, [{ license: { name: "Some Custom Licence", acknowledgement: "declared" } }]);
  assert.equal(bom.components.find((c) => c.name === "nolicense")!.licenses, undefined);
  assert.equal(bom.dependencies.find((x) => x.ref === "image:greeter@1.1")!.dependsOn!.length, 4);
});

test("helpers", () => {
  assert.equal(genericPurl("libstdc++", "1.0"), "pkg:generic/libstdc%2B%2B@1.0");
  assert.equal(uuidFromSha256("x"), uuidFromSha256("x"));
  assert.notEqual(uuidFromSha256("x"), uuidFromSha256("y"));
});
