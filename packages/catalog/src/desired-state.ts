/**
 * Desired state: for one key, the exact build that the catalog, the known releases, the
 * stored advisories and the dependencies' current artifacts call for, summed up in its input
 * digest — or why there is none yet (a dependency to wait for, advisories needing a human).
 *
 * There is one implementation, used on both sides of a build request: the reconciler computes
 * the plan to decide what to ask for, and the builder computes it again from its own copy of
 * the catalog at the requested revision and the same facts (read-only), and builds only when
 * it arrives at the same input digest. So what a build runs (steps, test, patches, sources)
 * always comes from the catalog, never from a message.
 *
 * Input digest = sha256 of the canonical JSON of: the recipe digest (catalog.recipeDigest:
 * the key's whole declaration), the version chosen (core decision.ts), the source digest, the
 * patches applied, the dependency artifact digests, the builder version and SOURCE_DATE_EPOCH.
 * Equal digests mean equal builds, so a key whose actual input digest equals its desired one
 * is up to date and nothing is rebuilt.
 *
 * The catalog's git commit is deliberately NOT in the digest: every commit changes it, so a
 * commit that edits one recipe would rebuild all 29,000 keys, and a resync after any commit
 * would rebuild everything. What a commit changes that matters to a key is exactly its
 * recipe, which the recipe digest covers. The revision travels in the build request instead
 * (`catalogRevision`) and ends up in the provenance's internal parameters, so every artifact
 * still names the catalog revision it was built from.
 */
import { pathToFileURL } from "node:url";
import { BUILDER_VERSION, type BuildRequest, type ImageConfig, type PackageArtifact, type PatchRef, type Source } from "@homeostat/core/contracts";
import { canonicalJson, sha256Digest, type Digest } from "@homeostat/core/digest";
import { makeKey, type Key } from "@homeostat/core/key";
import type { KeyStatus } from "@homeostat/core/status";
import type { Catalog } from "./catalog.ts";
import { decideVersion, type Decision } from "./decision.ts";
import type { Osv } from "./osv.ts";
import type { Release } from "./releases.ts";

type PlanCommon = {
  key: Key;
  name: string;
  version: string;
  inputDigest: Digest;
  sourceDateEpoch: number;
  /** The catalog revision the plan was computed from (Catalog.revision). */
  catalogRevision: string;
};

/** Everything a package build needs, as the catalog and the facts declare it. Never sent anywhere. */
export type PackageBuildPlan = PlanCommon & {
  kind: "package";
  source: Source;
  /** Applied in order to the unpacked source before the steps. */
  patches?: PatchRef[];
  steps: string[];
  /** Run after the steps, in the same workspace and sandbox; the build fails when it fails. */
  test?: string;
  /** Build dependencies, unpacked into the build's sysroot. */
  dependencies: PackageArtifact[];
  runtimeDependencies: string[];
  license?: string;
};

/** Everything an image build needs. Layers in order: each package (with its runtime closure) is one layer. */
export type ImageBuildPlan = PlanCommon & { kind: "image"; packages: PackageArtifact[]; config: ImageConfig };

export type BuildPlan = PackageBuildPlan | ImageBuildPlan;

/** The build request that asks for `plan`: its name, revision and digest, none of its contents. */
export function buildRequestOf(plan: BuildPlan): BuildRequest {
  return { v: 2, key: plan.key, catalogRevision: plan.catalogRevision, inputDigest: plan.inputDigest, version: plan.version };
}

export type Desired =
  | { state: "build"; version: string; inputDigest: Digest; plan: BuildPlan; decision?: BuildDecision }
  /** Something this key needs is not built yet (or not at its desired inputs). */
  | { state: "waiting"; waitingFor: string }
  /** Advisories affect the version to ship and nothing answers them: a human must. */
  | { state: "attention"; version: string; advisories: string[]; detail: string };

export type DesiredInputs = {
  catalog: Catalog;
  releases: (pkg: string) => Promise<readonly Release[]>;
  advisories: (pkg: string) => Promise<readonly Osv[]>;
  status: (key: Key) => Promise<KeyStatus | undefined>;
  sourceDateEpoch: number;
};

/** A package's decision to build (decision.ts). */
export type BuildDecision = Extract<Decision, { action: "build" }>;

/**
 * Computes desired states, memoised for as long as its inputs answer alike (one reconcile, or
 * every run whose inputs were taken at the same revisions). A computation that failed (a read
 * that did not answer) is not remembered: asked again, it is computed again.
 */
export class DesiredState {
  private readonly memo = new Map<string, Promise<Desired>>();
  readonly in: DesiredInputs;
  constructor(inputs: DesiredInputs) {
    this.in = inputs;
  }

  package(name: string): Promise<Desired> {
    return this.memoised(`package/${name}`, () => this.computePackage(name));
  }

  image(name: string): Promise<Desired> {
    return this.memoised(`image/${name}`, () => this.computeImage(name));
  }

  private memoised(k: string, compute: () => Promise<Desired>): Promise<Desired> {
    const known = this.memo.get(k);
    if (known) return known;
    const computing = compute();
    this.memo.set(k, computing);
    computing.catch(() => {
      if (this.memo.get(k) === computing) this.memo.delete(k);
    });
    return computing;
  }

  /**
   * The artifact of a package if its actual build is the one it should have now, else what it
   * waits for. Its status is read while its desired state is worked out (each read answers as
   * of its own moment, in either order: see the reconciler's waiting marks).
   */
  private async upToDateArtifact(name: string): Promise<PackageArtifact | string> {
    const key = makeKey("package", name);
    const [desired, status] = await Promise.all([this.package(name), this.in.status(key)]);
    if (desired.state === "waiting") return desired.waitingFor;
    if (desired.state === "attention") return `${key}, which needs attention (${desired.advisories.join(", ")})`;
    const actual = status?.actual;
    if (!actual || actual.inputDigest !== desired.inputDigest) return `${key} to be built at ${desired.version}`;
    const { archive, diffId, size } = actual.outputs;
    if (!archive || !diffId || size === undefined) return `${key} has no package archive`;
    const spec = this.in.catalog.packages.get(name);
    return {
      name,
      version: actual.version,
      archive,
      diffId,
      size,
      ...(spec?.license ? { license: spec.license } : {}),
      ...(spec?.purl ? { purl: spec.purl.replaceAll("${version}", actual.version) } : {}),
    };
  }

  private async computePackage(name: string): Promise<Desired> {
    const { catalog } = this.in;
    const spec = catalog.packages.get(name);
    if (!spec) return { state: "waiting", waitingFor: `package "${name}" to be in the catalog` };
    const [releases, advisories] = await Promise.all([this.in.releases(name), this.in.advisories(name)]);
    const decision = decideVersion({
      name,
      pinned: spec.version,
      releases: releases.map((r) => r.version),
      policy: catalog.policyOf(name),
      advisories,
      patches: spec.patches,
    });
    if (decision.action === "attention") return { state: "attention", version: decision.version, advisories: decision.advisories, detail: decision.detail };
    const version = decision.version;
    const release = releases.find((r) => r.version === version);
    const source =
      release && version !== spec.version
        ? // A release resolved from the catalog's own source template keeps a relative path as
          // the catalog spells it: each service resolves it against its own copy of the catalog.
          { url: catalog.resolveSourceUrl(release.url, version), sha256: release.sha256 }
        : { url: catalog.resolveSourceUrl(spec.source.url, version), sha256: spec.source.sha256 };
    const patches = decision.patches.map((p) => ({ url: pathToFileURL(catalog.patchPath(p)).href, sha256: p.sha256 }));

    const dependencies = await this.upToDateArtifacts(spec.dependencies.build);
    if (typeof dependencies === "string") return { state: "waiting", waitingFor: dependencies };
    const key = makeKey("package", name);
    const inputDigest = this.inputDigest(key, {
      version,
      source: source.sha256,
      patches: patches.map((p) => p.sha256),
      dependencies: dependencies.map((d) => ({ name: d.name, archive: d.archive })),
    });
    return {
      state: "build",
      version,
      inputDigest,
      decision,
      plan: {
        kind: "package",
        ...this.planCommon(key, name, version, inputDigest),
        source,
        ...(patches.length ? { patches } : {}),
        steps: spec.build.steps,
        ...(spec.test ? { test: spec.test } : {}),
        dependencies,
        runtimeDependencies: spec.dependencies.runtime,
        ...(spec.license ? { license: spec.license } : {}),
      },
    };
  }

  private async computeImage(name: string): Promise<Desired> {
    const { catalog } = this.in;
    const spec = catalog.images.get(name);
    if (!spec) return { state: "waiting", waitingFor: `image "${name}" to be in the catalog` };
    const packages = await this.upToDateArtifacts(catalog.runtimeClosure(spec.packages));
    if (typeof packages === "string") return { state: "waiting", waitingFor: packages };
    const key = makeKey("image", name);
    const config = { entrypoint: spec.entrypoint, cmd: spec.cmd, env: spec.env, user: spec.user, workdir: spec.workdir, annotations: spec.annotations };
    const inputDigest = this.inputDigest(key, { packages: packages.map((p) => ({ name: p.name, archive: p.archive })) });
    // An image's version is its content: the short input digest (a tag that never moves).
    const version = inputDigest.slice("sha256:".length, "sha256:".length + 12);
    return {
      state: "build",
      version,
      inputDigest,
      plan: { kind: "image", ...this.planCommon(key, name, version, inputDigest), packages, config },
    };
  }

  /**
   * The artifacts of `names` in their order, or what the first of them that is not up to date
   * waits for: looked at one after another, so that the rest are not worked out once one is
   * found waiting. Every read here is memory (the reconciler's and the builder's statuses come
   * from their mirror, the facts from scans read once a run), so working them out a few at once
   * gained nothing, and cost whole closures: in a fresh factory's bring-up every key waits for
   * the C library, and each of its runs worked out its whole closure to say so.
   */
  private async upToDateArtifacts(names: readonly string[]): Promise<PackageArtifact[] | string> {
    const artifacts: PackageArtifact[] = [];
    for (const name of names) {
      const found = await this.upToDateArtifact(name);
      if (typeof found === "string") return found;
      artifacts.push(found);
    }
    return artifacts;
  }

  /** The digest of all a build of `key` reads: the builder, the key's recipe, the source date epoch and `inputs`. */
  private inputDigest(key: Key, inputs: Record<string, unknown>): Digest {
    return sha256Digest(canonicalJson({ builder: BUILDER_VERSION, recipe: this.in.catalog.recipeDigest(key), ...inputs, epoch: this.in.sourceDateEpoch }));
  }

  /** What every plan of `key` says besides its kind and what it is built from. */
  private planCommon(key: Key, name: string, version: string, inputDigest: Digest): PlanCommon {
    return { key, name, version, inputDigest, sourceDateEpoch: this.in.sourceDateEpoch, catalogRevision: this.in.catalog.revision };
  }
}
