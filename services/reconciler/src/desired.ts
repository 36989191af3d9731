/**
 * Desired state: for one key, the exact build that the catalog, the known releases and the
 * dependencies' current artifacts call for, summed up in its input digest.
 *
 * Input digest = sha256 of the canonical JSON of recipe + version + source digest +
 * dependency artifact digests + builder version. Equal digests mean equal builds, so a key
 * whose actual input digest equals its desired one is up to date and nothing is rebuilt.
 */
import {
  BUILDER_VERSION, canonicalJson, makeKey, maxVersion, sha256Digest,
  type BuildRequest, type Catalog, type Digest, type KeyStatus, type PackageArtifact, type Release,
} from "@homeostat/core";

export type Desired =
  | { ready: true; version: string; inputDigest: Digest; request: BuildRequest }
  /** Something this key needs is not built yet (or not at its desired inputs). */
  | { ready: false; waitingFor: string };

export type DesiredInputs = {
  catalog: Catalog;
  releases: (pkg: string) => Promise<Release[]>;
  status: (key: ReturnType<typeof makeKey>) => Promise<KeyStatus | undefined>;
  sourceDateEpoch: number;
};

/** Computes desired states, memoised for the life of one reconcile. */
export class DesiredState {
  private readonly memo = new Map<string, Promise<Desired>>();
  readonly in: DesiredInputs;
  constructor(inputs: DesiredInputs) {
    this.in = inputs;
  }

  package(name: string): Promise<Desired> {
    const k = `package/${name}`;
    let d = this.memo.get(k);
    if (!d) this.memo.set(k, (d = this.computePackage(name)));
    return d;
  }

  image(name: string): Promise<Desired> {
    const k = `image/${name}`;
    let d = this.memo.get(k);
    if (!d) this.memo.set(k, (d = this.computeImage(name)));
    return d;
  }

  /** The artifact of a package if its actual build is the one it should have now. */
  private async upToDateArtifact(name: string): Promise<PackageArtifact | string> {
    const desired = await this.package(name);
    if (!desired.ready) return desired.waitingFor;
    const key = makeKey("package", name);
    const actual = (await this.in.status(key))?.actual;
    if (!actual || actual.inputDigest !== desired.inputDigest) return `${key} to be built at ${desired.version}`;
    const { archive, diffId, size } = actual.outputs;
    if (!archive || !diffId || size === undefined) return `${key} has no package archive`;
    const license = this.in.catalog.packages.get(name)?.license;
    return { name, version: actual.version, archive, diffId, size, ...(license ? { license } : {}) };
  }

  private async computePackage(name: string): Promise<Desired> {
    const spec = this.in.catalog.packages.get(name);
    if (!spec) return { ready: false, waitingFor: `package "${name}" to be in the catalog` };
    // The newest of the catalog's pinned version and every release heard of.
    const candidates = new Map<string, { url: string; sha256: string }>([[spec.version, { url: this.in.catalog.resolveSourceUrl(spec.source.url, spec.version), sha256: spec.source.sha256 }]]);
    for (const r of await this.in.releases(name)) if (!candidates.has(r.version)) candidates.set(r.version, { url: r.url, sha256: r.sha256 });
    const version = maxVersion(candidates.keys())!;
    const source = candidates.get(version)!;

    const dependencies: PackageArtifact[] = [];
    for (const dep of spec.dependencies.build) {
      const a = await this.upToDateArtifact(dep);
      if (typeof a === "string") return { ready: false, waitingFor: a };
      dependencies.push(a);
    }
    const recipe = { steps: spec.build.steps, runtimeDependencies: spec.dependencies.runtime, license: spec.license };
    const inputDigest = sha256Digest(canonicalJson({
      builder: BUILDER_VERSION, kind: "package", name, version, source: source.sha256, recipe,
      dependencies: dependencies.map((d) => ({ name: d.name, archive: d.archive })), epoch: this.in.sourceDateEpoch,
    }));
    return {
      ready: true, version, inputDigest,
      request: {
        v: 1, kind: "package", key: makeKey("package", name), name, version, inputDigest, sourceDateEpoch: this.in.sourceDateEpoch,
        source, steps: spec.build.steps, dependencies, runtimeDependencies: spec.dependencies.runtime,
        ...(spec.license ? { license: spec.license } : {}),
      },
    };
  }

  private async computeImage(name: string): Promise<Desired> {
    const spec = this.in.catalog.images.get(name);
    if (!spec) return { ready: false, waitingFor: `image "${name}" to be in the catalog` };
    const packages: PackageArtifact[] = [];
    for (const p of this.in.catalog.runtimeClosure(spec.packages)) {
      const a = await this.upToDateArtifact(p);
      if (typeof a === "string") return { ready: false, waitingFor: a };
      packages.push(a);
    }
    const config = { entrypoint: spec.entrypoint, cmd: spec.cmd, env: spec.env, user: spec.user, workdir: spec.workdir, annotations: spec.annotations };
    const inputDigest = sha256Digest(canonicalJson({
      builder: BUILDER_VERSION, kind: "image", name, config,
      packages: packages.map((p) => ({ name: p.name, archive: p.archive })), epoch: this.in.sourceDateEpoch,
    }));
    // An image's version is its content: the short input digest (a tag that never moves).
    const version = inputDigest.slice("sha256:".length, "sha256:".length + 12);
    return {
      ready: true, version, inputDigest,
      request: { v: 1, kind: "image", key: makeKey("image", name), name, version, inputDigest, sourceDateEpoch: this.in.sourceDateEpoch, packages, config },
    };
  }
}
