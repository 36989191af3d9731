/**
 * Releases: the upstream releases Homeostat has heard of, one immutable fact per package
 * version, kept in JetStream KV so that every reconciler sees the same facts.
 *
 * A release is never rewritten: the same version announced again with the same source is a
 * duplicate; with a different source it is a conflict (someone moved a tag — refuse it).
 */
import type { KV } from "@nats-io/kv";
import { z } from "zod";
import { escapeToken } from "@homeostat/core/key";

export const releaseSchema = z.object({
  package: z.string(),
  version: z.string(),
  url: z.string(),
  sha256: z.string(),
  receivedAt: z.string(),
});
export type Release = z.infer<typeof releaseSchema>;

export class ReleaseConflictError extends Error {}

export class ReleaseStore {
  readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  /** Records a release; `isNew` is false when exactly this release was already known. */
  async record(r: Omit<Release, "receivedAt">): Promise<{ isNew: boolean; release: Release }> {
    const k = `${escapeToken(r.package)}.${escapeToken(r.version)}`;
    const release: Release = { ...r, receivedAt: new Date().toISOString() };
    try {
      await this.kv.create(k, JSON.stringify(release));
      return { isNew: true, release };
    } catch {
      const existing = await this.kv.get(k);
      if (!existing || existing.operation !== "PUT") throw new Error(`could not record release ${r.package}@${r.version}`);
      const known = releaseSchema.parse(existing.json());
      if (known.url !== r.url || known.sha256 !== r.sha256) {
        throw new ReleaseConflictError(`${r.package}@${r.version} is already known with source ${known.url} (sha256 ${known.sha256}); a release is immutable`);
      }
      return { isNew: false, release: known };
    }
  }

  async list(pkg: string): Promise<Release[]> {
    const out: Release[] = [];
    const keys = await this.kv.keys(`${escapeToken(pkg)}.*`);
    for await (const k of keys) {
      const e = await this.kv.get(k);
      if (e && e.operation === "PUT") out.push(releaseSchema.parse(e.json()));
    }
    return out;
  }
}
