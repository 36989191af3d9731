/**
 * SBOM: CycloneDX 1.6 JSON for an image, built with `@cyclonedx/cyclonedx-library`.
 *
 * - metadata.component: the image (type container, name, version; with its manifest digest as
 *   a `pkg:oci` purl and a hash when known), depending on every package;
 * - components: every package (type library, name, version, purl `pkg:generic/<name>@<version>`,
 *   or the catalog's purl for a package imported from a distribution, e.g.
 *   `pkg:deb/debian/musl@1.2.3-1?arch=amd64`, SHA-256 of its archive, its declared licence when
 *   given, its layer diff_id as a property);
 * - metadata.tools: the builder (name and version from BUILDER_VERSION);
 * - metadata.timestamp: SOURCE_DATE_EPOCH;
 * - serialNumber: `urn:uuid:` of a UUID (RFC 9562 version 8, i.e. custom) made from the sha256
 *   of the BOM serialised without it, so the same inputs give the same bytes, and any change
 *   of content gives another serial number.
 *
 * Lists are sorted by the serializer and every bom-ref is set explicitly (the library would
 * otherwise invent random ones), so the output depends on nothing but the inputs.
 */
import { createHash } from "node:crypto";
import { Enums, Models, Serialize, Spec, SPDX } from "@cyclonedx/cyclonedx-library";
import { BUILDER_VERSION } from "@homeostat/core/contracts";
import type { Digest } from "@homeostat/core/digest";
import { hexOfDigest } from "./store.ts";

/** The media type of a CycloneDX JSON document (IANA registration). */
export const SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json";

export type SbomPackage = {
  name: string;
  version: string;
  /** Digest of the package archive (tar.gz). */
  archive: Digest;
  /** Digest of the uncompressed archive (the layer's diff_id). */
  diffId?: Digest;
  /** Declared licence: an SPDX id, an SPDX expression, or a free-form name. */
  license?: string;
  /** Its package URL when it is not `pkg:generic/<name>@<version>` (an imported binary package). */
  purl?: string;
};

export type ImageSbomInput = {
  name: string;
  version: string;
  /** SOURCE_DATE_EPOCH in seconds: the BOM's timestamp. */
  epoch: number;
  packages: SbomPackage[];
  /** The image's manifest digest, when known. */
  manifest?: Digest;
  /** `<name>/<version>` of the tool that made the image; defaults to BUILDER_VERSION. */
  tool?: string;
};

/** A UUID (version 8, RFC 9562 variant) made from the sha256 of `data`. */
export function uuidFromSha256(data: string | Uint8Array): string {
  const b = createHash("sha256").update(data).digest().subarray(0, 16);
  b.writeUInt8((b.readUInt8(6) & 0x0f) | 0x80, 6);
  b.writeUInt8((b.readUInt8(8) & 0x3f) | 0x80, 8);
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** `pkg:generic/<name>@<version>` with name and version percent-encoded as the purl spec asks. */
export function genericPurl(name: string, version: string): string {
  return `pkg:generic/${purlEncode(name)}@${purlEncode(version)}`;
}

function purlEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function declaredLicense(license: string): Models.License {
  let l: Models.License;
  if (SPDX.isSupportedSpdxId(license)) l = new Models.SpdxLicense(license);
  else if (/\s(AND|OR|WITH)\s/.test(license) || /[()]/.test(license)) l = new Models.LicenseExpression(license);
  else l = new Models.NamedLicense(license);
  l.acknowledgement = Enums.LicenseAcknowledgement.Declared;
  return l;
}

const serializer = new Serialize.JsonSerializer(new Serialize.JSON.Normalize.Factory(Spec.Spec1dot6));

/** The CycloneDX 1.6 JSON of an image: the same input always gives the same string. */
export function imageSbom(input: ImageSbomInput): string {
  if (!Number.isInteger(input.epoch) || input.epoch < 0) throw new Error(`bad epoch ${input.epoch}`);
  const [toolName = "homeostat-builder", toolVersion] = (input.tool ?? BUILDER_VERSION).split("/");

  const image = new Models.Component(Enums.ComponentType.Container, input.name, {
    version: input.version,
    bomRef: `image:${input.name}@${input.version}`,
  });
  if (input.manifest) {
    image.purl = `pkg:oci/${purlEncode(input.name)}@${purlEncode(input.manifest)}?tag=${purlEncode(input.version)}`;
    image.hashes.set(Enums.HashAlgorithm["SHA-256"], hexOfDigest(input.manifest));
  }

  const bom = new Models.Bom();
  bom.version = 1;
  bom.metadata.timestamp = new Date(input.epoch * 1000);
  bom.metadata.component = image;
  bom.metadata.tools.components.add(
    new Models.Component(Enums.ComponentType.Application, toolName, { ...(toolVersion ? { version: toolVersion } : {}), bomRef: `tool:${toolName}` }),
  );

  const seen = new Map<string, number>();
  for (const p of input.packages) {
    const purl = p.purl ?? genericPurl(p.name, p.version);
    // Two packages with the same name and version but different archives keep distinct refs.
    const n = seen.get(purl) ?? 0;
    seen.set(purl, n + 1);
    const c = new Models.Component(Enums.ComponentType.Library, p.name, {
      version: p.version,
      purl,
      bomRef: n === 0 ? purl : `${purl}#${hexOfDigest(p.archive)}`,
    });
    c.hashes.set(Enums.HashAlgorithm["SHA-256"], hexOfDigest(p.archive));
    if (p.license) c.licenses.add(declaredLicense(p.license));
    if (p.diffId) c.properties.add(new Models.Property("homeostat:layer:diff_id", p.diffId));
    bom.components.add(c);
    image.dependencies.add(c.bomRef);
  }

  const unsigned = serializer.serialize(bom, { sortLists: true });
  bom.serialNumber = `urn:uuid:${uuidFromSha256(unsigned)}`;
  return serializer.serialize(bom, { sortLists: true });
}
