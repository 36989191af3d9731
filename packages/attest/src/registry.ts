/**
 * Registry: copies images between an OCI layout and a registry over the OCI Distribution API
 * (plain HTTP(S), no Docker engine): push = blobs first (a large one HEAD first; then POST an
 * upload and PUT it with its digest, streamed from the layout), manifests after everything they
 * reference, the tag last; pull = the same in reverse, every blob and manifest checked against
 * its digest before it is written to the layout. A manifest's blobs (and an index's manifests)
 * go a few at once, as `docker push` sends layers: one after another, each round trip to the
 * registry added up (bench:storm's latency scenario: 236 ms of a trivial image's 408 ms signing
 * went to them).
 *
 * Each client remembers the blobs and manifests (by digest) it pushed or found in each
 * repository and does not ask again: content-addressed, they stay there (a registry's garbage
 * collection keeps what manifests reference), and every sign pushes three tags sharing them (the
 * image, its signature, its attestations) while images share base layers. If one went all the
 * same (deleted by hand), the registry refuses the manifest that names it: the repository is
 * forgotten and the manifest pushed again once, asking about everything.
 *
 * An image index (such as the referrers fallback tag `sha256-<hex>`) is copied with the
 * manifests it lists, so a signature tag or a referrers tag travels like any other tag.
 * Anonymous access only: a registry that asks for credentials is refused with its answer.
 */
import { createReadStream } from "node:fs";
import { Readable } from "node:stream";
import { sha256Digest } from "@homeostat/core/digest";
import { mapLimit } from "@homeostat/core/map-limit";
import type { z } from "zod";
import { linkedContentSchema, mediaTypes, OciJsonError, OciLayout, parseOciJson, type Descriptor } from "./oci.ts";

export class RegistryError extends Error {
  /** The registry's error codes, when it answered with some (e.g. MANIFEST_BLOB_UNKNOWN). */
  readonly codes: readonly string[];
  constructor(message: string, codes: readonly string[] = []) {
    super(message);
    this.codes = codes;
  }
}

const manifestAccept = [mediaTypes.manifest, mediaTypes.index].join(", ");

/** Blobs (or listed manifests) of one manifest sent at once. */
const PUSH_CONCURRENCY = 4;

/**
 * A blob larger than this is asked about (HEAD) before it is uploaded; a smaller one is uploaded
 * at once. Most small blobs a sign pushes are new (its signature payload, its attestations, the
 * config of a fresh build), and asking about a new blob costs one round trip more than uploading
 * it, while uploading one already there (the registry takes it again, content-addressed) costs
 * one more than asking.
 */
const ASK_FIRST_BYTES = 256 * 1024;

/** Digests remembered as present, over all repositories; beyond this all are forgotten (asked again). */
const MAX_KNOWN = 100_000;

/** The registry's error codes for a manifest that names content the repository lacks. */
const missingContentCodes = new Set(["MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "MANIFEST_UNKNOWN"]);

type Linked = z.infer<typeof linkedContentSchema>;

export class Registry {
  /** e.g. `http://127.0.0.1:5000` */
  readonly url: string;
  /** Per repository, the digests of blobs and manifests pushed there or found there. */
  readonly #present = new Map<string, Set<string>>();
  #presentCount = 0;
  /** Blob uploads under way, by `<repository>@<digest>`. */
  readonly #pushing = new Map<string, Promise<void>>();
  constructor(url: string) {
    if (!/^https?:\/\/[^/\s]+\/?$/.test(url)) throw new RegistryError(`registry URL ${JSON.stringify(url)} is not http(s)://host[:port]`);
    this.url = url.replace(/\/$/, "");
  }

  /**
   * Pushes `tag` of the layout, with everything it references, as `<repository>:<tag>`; with
   * `untagged`, its manifest goes by its digest instead, reachable by no tag (a later `push` of the
   * tag then sends that one manifest again, under the tag).
   */
  async push(layout: OciLayout, repository: string, tag: string, o: { untagged?: boolean } = {}): Promise<Descriptor> {
    const d = await this.resolve(layout, tag);
    await this.pushManifest(layout, repository, d, o.untagged ? d.digest : tag);
    return d;
  }

  /**
   * Pushes everything `tag` references but not the manifest `tag` names: its blobs, and for an
   * index the manifests it lists (by digest, with their blobs). None of it is reachable by a tag,
   * so what several tags reference can go up at once, ahead of the tags that must come in order
   * (an image's before its signature's): one round of uploads instead of one per tag.
   */
  async pushReferenced(layout: OciLayout, repository: string, tag: string, o: { uploads?: StartedUploads } = {}): Promise<void> {
    const linked = await this.linkedOf(layout, tag);
    await Promise.all([
      mapLimit(blobsOf(linked), PUSH_CONCURRENCY, (blob) => this.pushBlob(layout, repository, blob, o.uploads)),
      mapLimit(linked.manifests ?? [], PUSH_CONCURRENCY, (child) => this.pushManifest(layout, repository, child, child.digest, o.uploads)),
    ]);
  }

  /**
   * Pushes only the blobs `tag` references, and for an index those of the manifests it lists:
   * what can go up before the manifests that name them, whatever those must wait for (an
   * attestation's manifest, for the image it is about).
   */
  async pushBlobsOf(layout: OciLayout, repository: string, tag: string, o: { uploads?: StartedUploads } = {}): Promise<void> {
    const linked = await this.linkedOf(layout, tag);
    const listed = await Promise.all(
      (linked.manifests ?? []).map(async (child) => parseLinked(await layout.readBlob(child.digest), `manifest ${child.digest}`)),
    );
    const blobs = new Map([linked, ...listed].flatMap(blobsOf).map((b) => [b.digest, b]));
    await mapLimit([...blobs.values()], PUSH_CONCURRENCY, (blob) => this.pushBlob(layout, repository, blob, o.uploads));
  }

  /**
   * Starts `count` blob uploads to `repository` for blobs still being made (a signature and its
   * attestations). An upload is two round trips, a POST that opens it and a PUT of the bytes; the
   * POSTs need no bytes, so they go while the blobs are made, and a push given these uploads
   * (`pushReferenced`) only PUTs. What no blob took is cancelled by `StartedUploads.cancel`.
   */
  startUploads(repository: string, count: number): StartedUploads {
    return new StartedUploads(
      Array.from({ length: count }, () => this.openUpload(repository).catch(() => undefined)),
      (location) => this.request(location.toString(), { method: "DELETE" }).then((res) => res.body?.cancel()),
    );
  }

  /** What the manifest `tag` names links to. */
  private async linkedOf(layout: OciLayout, tag: string): Promise<Linked> {
    return parseLinked(await layout.readBlob((await this.resolve(layout, tag)).digest), `manifest of ${tag}`);
  }

  private async resolve(layout: OciLayout, tag: string): Promise<Descriptor> {
    const d = await layout.resolve(tag);
    if (!d) throw new RegistryError(`tag ${JSON.stringify(tag)} is not in ${layout.dir}`);
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

  /**
   * Everything `d` references (blobs, listed manifests by digest), then `d` itself as
   * `reference`; a manifest by digest known to be there already is not sent again.
   */
  private async pushManifest(layout: OciLayout, repository: string, d: Descriptor, reference: string, uploads?: StartedUploads, again = false): Promise<void> {
    if (reference === d.digest && this.isPresent(repository, d.digest)) return;
    const bytes = await layout.readBlob(d.digest);
    const linked = parseLinked(bytes, `manifest ${d.digest}`);
    await mapLimit(blobsOf(linked), PUSH_CONCURRENCY, (blob) => this.pushBlob(layout, repository, blob, uploads));
    await mapLimit(linked.manifests ?? [], PUSH_CONCURRENCY, (child) => this.pushManifest(layout, repository, child, child.digest, uploads));
    const res = await this.request(`/v2/${repository}/manifests/${reference}`, { method: "PUT", headers: { "content-type": d.mediaType }, body: bytes });
    if (res.status === 400 && !again) {
      const failure = await this.failure(res, `PUT manifest ${repository}:${reference}`);
      if (!failure.codes.some((code) => missingContentCodes.has(code))) throw failure;
      // Something remembered as there is gone: ask about everything, once.
      this.forget(repository);
      return this.pushManifest(layout, repository, d, reference, uploads, true);
    }
    if (res.status !== 201) throw await this.failure(res, `PUT manifest ${repository}:${reference}`);
    this.remember(repository, d.digest);
  }

  /**
   * One upload of a blob at a time per repository: the pushes of a sign's tags share blobs, and
   * two uploads of one blob at once were refused by docker-registry now and then (DIGEST_INVALID,
   * then the manifest naming it MANIFEST_BLOB_UNKNOWN).
   */
  private pushBlob(layout: OciLayout, repository: string, blob: Descriptor, uploads?: StartedUploads): Promise<void> {
    if (this.isPresent(repository, blob.digest)) return Promise.resolve();
    const key = `${repository}@${blob.digest}`;
    let pushing = this.#pushing.get(key);
    if (!pushing) {
      pushing = this.uploadBlob(layout, repository, blob, uploads)
        .then(() => this.remember(repository, blob.digest))
        .finally(() => this.#pushing.delete(key));
      this.#pushing.set(key, pushing);
    }
    return pushing;
  }

  private async uploadBlob(layout: OciLayout, repository: string, blob: Descriptor, uploads?: StartedUploads): Promise<void> {
    if (blob.size > ASK_FIRST_BYTES) {
      const head = await this.request(`/v2/${repository}/blobs/${blob.digest}`, { method: "HEAD" });
      if (head.status === 200) return;
    }
    const target = (await uploads?.take()) ?? (await this.openUpload(repository));
    target.searchParams.set("digest", blob.digest);
    // A blob small enough to upload without asking (ASK_FIRST_BYTES; most a sign pushes) is read
    // whole: a file stream costs an open, reads and a close in the thread pool, and the request a
    // streamed body, for a few kilobytes.
    const body =
      blob.size > ASK_FIRST_BYTES
        ? (Readable.toWeb(createReadStream(layout.blobPath(blob.digest))) as ReadableStream<Uint8Array>)
        : await layout.readBlob(blob.digest);
    const put = await this.request(target.toString(), {
      method: "PUT",
      headers: { "content-type": "application/octet-stream", "content-length": String(blob.size) },
      body,
      duplex: "half",
    });
    if (put.status !== 201) throw await this.failure(put, `upload blob ${blob.digest} to ${repository}`);
  }

  /** Opens a blob upload (POST); where to PUT its bytes. */
  private async openUpload(repository: string): Promise<URL> {
    const start = await this.request(`/v2/${repository}/blobs/uploads/`, { method: "POST" });
    const location = start.headers.get("location");
    if (start.status !== 202 || !location) throw await this.failure(start, `start blob upload to ${repository}`);
    return new URL(location, this.url);
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
    return new RegistryError(`${what}: HTTP ${res.status}${text ? ` ${text}` : ""}`, errorCodes(text));
  }

  private isPresent(repository: string, digest: string): boolean {
    return this.#present.get(repository)?.has(digest) === true;
  }

  private remember(repository: string, digest: string): void {
    if (this.#presentCount >= MAX_KNOWN) {
      this.#present.clear();
      this.#presentCount = 0;
    }
    let digests = this.#present.get(repository);
    if (!digests) this.#present.set(repository, (digests = new Set()));
    if (!digests.has(digest)) {
      digests.add(digest);
      this.#presentCount++;
    }
  }

  private forget(repository: string): void {
    this.#presentCount -= this.#present.get(repository)?.size ?? 0;
    this.#present.delete(repository);
  }
}

/** Blob uploads opened ahead of their blobs (`Registry.startUploads`): each a location to PUT to, or undefined where none opened. */
export class StartedUploads {
  readonly #open: Promise<URL | undefined>[];
  readonly #cancelOne: (location: URL) => Promise<unknown>;
  constructor(open: Promise<URL | undefined>[], cancelOne: (location: URL) => Promise<unknown>) {
    this.#open = open;
    this.#cancelOne = cancelOne;
  }

  /** An upload to PUT a blob to; undefined when none is left (or it did not open): the caller opens one. */
  async take(): Promise<URL | undefined> {
    return this.#open.shift();
  }

  /** Cancels the uploads no blob took (best effort: one the registry forgets costs nothing). */
  async cancel(): Promise<void> {
    const left = this.#open.splice(0);
    await Promise.all(
      left.map(async (open) => {
        const location = await open;
        if (location) await this.#cancelOne(location).catch(() => {});
      }),
    );
  }
}

/** The `code`s of a registry's error body (`{"errors": [{"code": …}]}`); none when it is not one. */
function errorCodes(body: string): string[] {
  try {
    const parsed = JSON.parse(body) as { errors?: { code?: unknown }[] };
    return (parsed.errors ?? []).flatMap((e) => (typeof e.code === "string" ? [e.code] : []));
  } catch {
    return [];
  }
}

/** A manifest or index read for a copy; a malformed one is a RegistryError naming it. */
function parseLinked(bytes: Buffer, what: string): Linked {
  try {
    return parseOciJson(linkedContentSchema, bytes, what);
  } catch (e) {
    throw e instanceof OciJsonError ? new RegistryError(e.message) : e;
  }
}

/** The config and layers, each digest once (two identical layers are one blob). */
function blobsOf(m: Linked): Descriptor[] {
  return [...new Map([...(m.config ? [m.config] : []), ...(m.layers ?? [])].map((d) => [d.digest, d])).values()];
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
