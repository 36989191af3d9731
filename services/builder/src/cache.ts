/**
 * The build cache: the result of every finished build, keyed by its input digest, at
 * `<dataDir>/store/results/<input hex>.json`.
 *
 * The input digest covers everything a build reads (recipe, source digest, dependency
 * artifact digests, builder version), so a second request with the same digest is answered
 * with the stored outputs and nothing is rebuilt. A record is only trusted when everything it
 * names is still there (the blobs in the artifact store; for an image, the layout's tag still
 * pointing at the manifest, and its blobs), and only for the same key and kind, so a lost or
 * foreign record costs a rebuild, never a wrong answer. Records are written atomically (a
 * temporary file renamed), after the outputs they name. A record that answers is touched with
 * the store blobs it names: the store's collection (store-collect.ts) keeps what is young.
 */
import { randomBytes } from "node:crypto";
import { mkdir, readFile, rename, unlink, utimes, writeFile } from "node:fs/promises";
import path from "node:path";
import { buildOutputsSchema, type BuildOutputs } from "@homeostat/core/contracts";
import { type BuildPlan } from "@homeostat/catalog";
import type { Digest } from "@homeostat/core/digest";
import { OciLayout } from "@homeostat/attest";
import { ArtifactStore, hexOfDigest } from "./store.ts";

type CacheRecord = { v: 1; key: string; kind: "package" | "image"; inputDigest: string; outputs: BuildOutputs };

export class BuildCache {
  private readonly dir: string;
  private readonly store: ArtifactStore;
  private readonly dataDir: string;

  constructor(dataDir: string) {
    this.dataDir = path.resolve(dataDir);
    this.store = new ArtifactStore(this.dataDir);
    this.dir = path.join(this.store.root, "results");
  }

  private file(inputDigest: string): string {
    return path.join(this.dir, `${hexOfDigest(inputDigest)}.json`);
  }

  /** The stored outputs of a finished build of exactly these inputs, if they are all still there. */
  async get(req: BuildPlan): Promise<BuildOutputs | undefined> {
    let record: Partial<CacheRecord>;
    try {
      record = JSON.parse(await readFile(this.file(req.inputDigest), "utf8")) as Partial<CacheRecord>;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT" || e instanceof SyntaxError) return undefined;
      throw e;
    }
    if (record.v !== 1 || record.key !== req.key || record.kind !== req.kind || record.inputDigest !== req.inputDigest) return undefined;
    const outputs = buildOutputsSchema.safeParse(record.outputs);
    if (!outputs.success) return undefined;
    if (!(await this.intact(req, outputs.data))) return undefined;
    const now = new Date();
    const blobs = req.kind === "package" ? packageBlobs(outputs.data) : [];
    try {
      await Promise.all([this.file(req.inputDigest), ...blobs.map((d) => this.store.path(d as Digest))].map((f) => utimes(f, now, now)));
    } catch (e) {
      // Collected since it was checked: built again.
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw e;
    }
    return outputs.data;
  }

  async put(req: BuildPlan, outputs: BuildOutputs): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const record: CacheRecord = { v: 1, key: req.key, kind: req.kind, inputDigest: req.inputDigest, outputs };
    const file = this.file(req.inputDigest);
    const tmp = `${file}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`;
    try {
      await writeFile(tmp, JSON.stringify(record));
      await rename(tmp, file);
    } catch (e) {
      await unlink(tmp).catch(() => {});
      throw e;
    }
  }

  private async intact(req: BuildPlan, o: BuildOutputs): Promise<boolean> {
    if (req.kind === "package") {
      const blobs = packageBlobs(o);
      if (blobs.some((d) => d === undefined)) return false;
      for (const d of blobs) if (!(await this.store.has(d as Digest))) return false;
      return true;
    }
    if (o.manifest === undefined || o.config === undefined || o.sbom === undefined || o.provenance === undefined) return false;
    const layout = await OciLayout.open(path.join(this.dataDir, "oci", req.name));
    if ((await layout.resolve(req.version))?.digest !== o.manifest) return false;
    for (const d of [o.manifest, o.config, o.sbom, o.provenance]) if (!(await layout.hasBlob(d as Digest))) return false;
    return true;
  }
}

/** The store blobs a package's cached result names. */
function packageBlobs(o: BuildOutputs): (string | undefined)[] {
  return [o.archive, o.metadata, o.provenance];
}
