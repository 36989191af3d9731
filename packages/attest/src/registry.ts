/**
 * Registry: copies images between an OCI layout and a registry over the OCI Distribution API
 * (plain HTTP(S), no Docker engine): push = blobs first (HEAD, then POST an upload and PUT it
 * with its digest, streamed from the layout), manifests after everything they reference, the
 * tag last; pull = the same in reverse, every blob and manifest checked against its digest
 * before it is written to the layout.
 *
 * An image index (such as the referrers fallback tag `sha256-<hex>`) is copied with the
 * manifests it lists, so a signature tag or a referrers tag travels like any other tag.
 * Anonymous access only: a registry that asks for credentials is refused with its answer.
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { sha256Digest } from "@homeostat/core/digest";
import type { z } from "zod";
import { linkedContentSchema, mediaTypes, OciJsonError, OciLayout, parseOciJson, type Descriptor } from "./oci.ts";

export class RegistryError extends Error {}

const manifestAccept = [mediaTypes.manifest, mediaTypes.index].join(", ");

type Linked = z.infer<typeof linkedContentSchema>;

export class Registry {
  /** e.g. `http://127.0.0.1:5000` */
  readonly url: string;
  constructor(url: string) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(url)) throw new RegistryError(`registry URL ${JSON.stringify(url)} is not http(s)://host[:port]`);
    this.url = url.replace(/\/$/, "");
  }

  /** Pushes `tag` of the layout, with everything it references, as `<repository>:<tag>`. */
  async push(layout: OciLayout, repository: string, tag: string): Promise<Descriptor> {
    const d = await layout.resolve(tag);
    if (!d) throw new RegistryError(`tag ${JSON.stringify(tag)} is not in ${layout.dir}`);
    await this.pushManifest(layout, repository, d, tag);
    return d;
  }

  /** Pulls `<repository>:<reference>` with everything it references into the layout, tagged `tag`. */
  async pull(layout: OciLayout, repository: string, reference: string, tag: string): Promise<Descriptor | undefined> {
    const got = await this.fetchManifest(repository, reference);
    if (!got) return undefined;
    await this.pullLinked(layout, repository, got.bytes);
    const d = await layout.writeBlob(got.bytes, got.mediaType);
    await layout.tag(tag, d);
    return d;
  }

  /** Everything `d` references (blobs, listed manifests by digest), then `d` itself as `reference`. */
  private async pushManifest(layout: OciLayout, repository: string, d: Descriptor, reference: string): Promise<void> {
    const bytes = await layout.readBlob(d.digest);
    const linked = parseLinked(bytes, `manifest ${d.digest}`);
    for (const blob of blobsOf(linked)) await this.pushBlob(layout, repository, blob);
    for (const child of linked.manifests ?? []) await this.pushManifest(layout, repository, child, child.digest);
    const res = await this.request(`/v2/${repository}/manifests/${reference}`, { method: "PUT", headers: { "content-type": d.mediaType }, body: bytes });
    if (res.status !== 201) throw await this.failure(res, `PUT manifest ${repository}:${reference}`);
  }

  private async pushBlob(layout: OciLayout, repository: string, blob: Descriptor): Promise<void> {
    const head = await this.request(`/v2/${repository}/blobs/${blob.digest}`, { method: "HEAD" });
    if (head.status === 200) return;
    const start = await this.request(`/v2/${repository}/blobs/uploads/`, { method: "POST" });
    const location = start.headers.get("location");
    if (start.status !== 202 || !location) throw await this.failure(start, `start blob upload to ${repository}`);
    const target = new URL(location, this.url);
    target.searchParams.set("digest", blob.digest);
    const body = Readable.toWeb(createReadStream(layout.blobPath(blob.digest))) as ReadableStream<Uint8Array>;
    const put = await this.request(target.toString(), {
      method: "PUT",
      headers: { "content-type": "application/octet-stream", "content-length": String(blob.size) },
      body,
      duplex: "half",
    });
    if (put.status !== 201) throw await this.failure(put, `upload blob ${blob.digest} to ${repository}`);
  }

  private async pullLinked(layout: OciLayout, repository: string, manifest: Buffer): Promise<void> {
    const linked = parseLinked(manifest, `manifest of ${repository}`);
    for (const blob of blobsOf(linked)) {
      if (await layout.hasBlob(blob.digest)) continue;
      const res = await this.request(`/v2/${repository}/blobs/${blob.digest}`, { method: "GET" });
      if (res.status !== 200) throw await this.failure(res, `GET blob ${blob.digest} from ${repository}`);
      await writeChecked(layout, Buffer.from(await res.arrayBuffer()), blob);
    }
    for (const child of linked.manifests ?? []) {
      const got = await this.fetchManifest(repository, child.digest);
      if (!got) throw new RegistryError(`${repository}@${child.digest} is listed but missing`);
      await this.pullLinked(layout, repository, got.bytes);
      await writeChecked(layout, got.bytes, child);
    }
  }

  private async fetchManifest(repository: string, reference: string): Promise<{ bytes: Buffer; mediaType: string } | undefined> {
    const res = await this.request(`/v2/${repository}/manifests/${reference}`, { method: "GET", headers: { accept: manifestAccept } });
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw await this.failure(res, `GET manifest ${repository}:${reference}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    if (reference.startsWith("sha256:") && sha256Digest(bytes) !== reference)
      throw new RegistryError(`${repository}@${reference}: the registry sent bytes hashing to ${sha256Digest(bytes)}`);
    return { bytes, mediaType: (res.headers.get("content-type") ?? mediaTypes.manifest).split(";", 1)[0]?.trim() ?? mediaTypes.manifest };
  }

  private async request(pathOrUrl: string, init: RequestInit & { duplex?: "half" }): Promise<Response> {
    const url = pathOrUrl.startsWith("http") ? pathOrUrl : `${this.url}${pathOrUrl}`;
    try {
      return await fetch(url, { ...init, redirect: "follow" });
    } catch (e) {
      throw new RegistryError(
        `registry ${this.url} is unreachable: ${(e as Error).cause instanceof Error ? ((e as Error).cause as Error).message : (e as Error).message}`,
      );
    }
  }

  private async failure(res: Response, what: string): Promise<RegistryError> {
    const text = (await res.text().catch(() => "")).slice(0, 500).trim();
    return new RegistryError(`${what}: HTTP ${res.status}${text ? ` ${text}` : ""}`);
  }
}

/** The blobs a manifest references: its config and its layers (an index has neither). */
/** A manifest or index read for a copy; a malformed one is a RegistryError naming it. */
function parseLinked(bytes: Buffer, what: string): Linked {
  try {
    return parseOciJson(linkedContentSchema, bytes, what);
  } catch (e) {
    throw e instanceof OciJsonError ? new RegistryError(e.message) : e;
  }
}

function blobsOf(m: Linked): Descriptor[] {
  return [...(m.config ? [m.config] : []), ...(m.layers ?? [])];
}

/** Writes a pulled blob only when its bytes match the descriptor that named it. */
async function writeChecked(layout: OciLayout, bytes: Buffer, expected: Descriptor): Promise<void> {
  const actual = sha256Digest(bytes);
  if (actual !== expected.digest) throw new RegistryError(`blob ${expected.digest}: the registry sent bytes hashing to ${actual}`);
  await layout.writeBlob(bytes, expected.mediaType);
}

/** `<host>/<path>` of an image repository reference -> the registry's repository name `<path>/<name>`. */
export function registryRepository(imageRepository: string, name: string): string {
  const slash = imageRepository.indexOf("/");
  const path = slash < 0 ? "" : imageRepository.slice(slash + 1).replace(/\/+$/, "");
  return path ? `${path}/${name}` : name;
}
