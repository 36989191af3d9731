/**
 * Catalog: the desired state as declared by the users — packages built from upstream source
 * and images assembled from packages — loaded from a directory of YAML files
 * (`packages/**.yaml`, `images/**.yaml`; catalog-source.ts reads one out of a git commit).
 *
 * Loading validates everything at once and fails with every problem, each naming its file,
 * line and field (wrong type, unknown field, unknown dependency, duplicate name, dependency
 * cycle, a patch whose digest is not the declared one), so a bad edit is rejected whole and
 * the previous catalog keeps serving. The zod schemas below are the format's one definition:
 * the JSON Schemas under `schemas/` that editors use are generated from them
 * (scripts/gen-catalog-schema.ts).
 */
import { readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { LineCounter, parseDocument } from "yaml";
import { z } from "zod";
import { imageConfigSchema } from "@homeostat/core/contracts";
import { canonicalJson, sha256Digest, sha256Hex, sha256HexSchema, type Digest } from "@homeostat/core/digest";
import { DependencyGraph, type Impact } from "./graph.ts";
import { makeKey, nameSchema, parseKey, type Key } from "@homeostat/core/key";
import { compilePolicy, versionPolicySchema, type CompiledPolicy } from "./policy.ts";
import { mapLimit } from "@homeostat/core/map-limit";

const versionSchema = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9][A-Za-z0-9.+_~-]*$/, "letters, digits and . + _ ~ - only");
/** A path inside the catalog directory, written with forward slashes. */
const catalogPathSchema = z
  .string()
  .min(1)
  .max(1024)
  .refine((p) => !p.startsWith("/") && !p.includes("\\") && !path.posix.normalize(p).startsWith(".."), "must be a relative path inside the catalog directory");

export const upstreamSchema = z
  .strictObject({
    github: z
      .string()
      .regex(/^[A-Za-z0-9_.-]+\/[A-Za-z0-9_.-]+$/, "must be owner/repo")
      .optional()
      .describe("GitHub repository whose releases are this package's: owner/repo"),
    url: z
      .string()
      .min(1)
      .max(4096)
      .regex(/\$\{version\}/, "must contain ${version}")
      .optional()
      .describe("URL template of a release, ${version} substituted"),
    releaseMonitoring: z
      .strictObject({ id: z.number().int().positive().optional(), name: z.string().min(1).max(256).optional() })
      .refine((r) => r.id !== undefined || r.name !== undefined, "needs id or name")
      .meta({ anyOf: [{ required: ["id"] }, { required: ["name"] }] })
      .optional()
      .describe("release-monitoring.org (Anitya) project, by id and/or name"),
    tag: z
      .string()
      .min(1)
      .max(256)
      .regex(/^[^$]*\$\{version\}[^$]*$/, "must contain ${version} once")
      .optional()
      .describe(
        "How a release tag spells the version: v${version}, release-${version}, ${version}; without one, the tag is the version with a leading v dropped",
      ),
    policy: versionPolicySchema.optional().describe("Which releases the package may move to; without one, the newest"),
    prereleases: z.boolean().default(false).describe("Whether pre-releases (1.0-rc1, 3.0beta2) may be chosen"),
  })
  .superRefine((u, ctx) => {
    const given = (["github", "url", "releaseMonitoring"] as const).filter((k) => u[k] !== undefined);
    if (given.length !== 1)
      ctx.addIssue({ code: "custom", message: `exactly one of github, url, releaseMonitoring is required (got ${given.length ? given.join(", ") : "none"})` });
  })
  .meta({ oneOf: [{ required: ["github"] }, { required: ["url"] }, { required: ["releaseMonitoring"] }] });
export type Upstream = z.infer<typeof upstreamSchema>;

/**
 * The version a release tag names under the package's tag mapping (`upstream.tag`), or
 * undefined when the tag is not one of its releases (another package's tag in a monorepo, a
 * nightly): `v${version}` reads v1.2.3 as 1.2.3, `release-${version}` reads release-1.2.3.
 * Without a mapping a leading v before a digit is dropped. The version must be one the catalog
 * could pin.
 */
export function versionOfTag(upstream: Pick<Upstream, "tag"> | undefined, tag: string): string | undefined {
  let version: string;
  if (upstream?.tag) {
    const [before, after] = upstream.tag.split("${version}") as [string, string];
    if (tag.length <= before.length + after.length || !tag.startsWith(before) || !tag.endsWith(after)) return undefined;
    version = tag.slice(before.length, tag.length - after.length);
  } else version = tag.replace(/^v(?=\d)/, "");
  return versionSchema.safeParse(version).success ? version : undefined;
}

/** The tags that may name `version` upstream, most likely first: the mapping's, else v1.2.3 then 1.2.3. */
export function tagsOfVersion(upstream: Pick<Upstream, "tag"> | undefined, version: string): [string, ...string[]] {
  return upstream?.tag ? [upstream.tag.replace("${version}", version)] : [`v${version}`, version];
}

/** A package URL (github.com/package-url/purl-spec): `pkg:<type>/<namespace/name>@<version>[?qualifiers]`. */
const purlSchema = z
  .string()
  .max(2048)
  .regex(/^pkg:[a-z][a-z0-9.+-]*\/[^\s@?#]+@[^\s?#]+(\?[^\s#]*)?$/, "must be a package URL with a version: pkg:<type>/<name>@<version>[?qualifiers]");

/**
 * An image's default user: `uid` or `uid:gid`, numeric and not root. The builder writes its
 * /etc/passwd and /etc/group entries (image-build.ts), so no package has to ship them.
 */
const imageUserSchema = z
  .string()
  .regex(/^\d{1,10}(:\d{1,10})?$/, "must be a numeric uid or uid:gid (the builder writes the matching /etc/passwd and /etc/group entries)")
  .refine((u) => Number(u.split(":")[0]) !== 0, "must not be root (uid 0): images run as an unprivileged user")
  .default("65532")
  .describe("Default user, uid or uid:gid, not root; default 65532 (nonroot)");

export const patchSchema = z.strictObject({
  path: catalogPathSchema.describe("The patch file, relative to the catalog directory; applied with patch -p1 in order"),
  sha256: sha256HexSchema.describe("sha256 of the patch file, checked at load"),
  fixes: z.array(z.string().min(1).max(128)).default([]).describe("Advisory ids (GHSA-…, CVE-…) this patch fixes"),
});
export type Patch = z.infer<typeof patchSchema>;

export const packageSpecSchema = z.strictObject({
  name: nameSchema,
  version: versionSchema.describe("The pinned upstream version (quote it: 1.10 is not 1.1)"),
  epoch: z
    .number()
    .int()
    .min(0)
    .max(1_000_000)
    .default(0)
    .describe(
      "The package revision (as melange's epoch): raise it to rebuild the same upstream version; it is part of the recipe, so it changes the input digest",
    ),
  license: z.string().max(256).optional().describe("SPDX expression"),
  purl: purlSchema
    .optional()
    .describe(
      "The package's identity in SBOMs and advisories when it is imported rather than built from source, e.g. pkg:deb/debian/musl@${version}?arch=amd64 (${version} is substituted); default pkg:generic/<name>@<version>",
    ),
  description: z.string().max(4096).optional(),
  upstream: upstreamSchema.optional(),
  source: z.strictObject({
    /** A URL (file://, http://, https://) or a path relative to the catalog directory; `${version}` is substituted. */
    url: z.string().min(1).max(4096).describe("URL or path relative to the catalog directory; ${version} is substituted"),
    sha256: sha256HexSchema,
  }),
  patches: z.array(patchSchema).max(1000).default([]),
  build: z.strictObject({ steps: z.array(z.string().min(1)).min(1).describe("Shell commands run in order in the unpacked source") }),
  test: z.string().min(1).max(65536).optional().describe("Shell command run after the build steps; the build fails when it fails"),
  dependencies: z.strictObject({ build: z.array(nameSchema).default([]), runtime: z.array(nameSchema).default([]) }).default({ build: [], runtime: [] }),
});
export type PackageSpec = z.infer<typeof packageSpecSchema>;

export const imageSpecSchema = z.strictObject({
  name: nameSchema,
  description: z.string().max(4096).optional(),
  packages: z.array(nameSchema).min(1),
  // The runtime configuration is declared exactly as the builder receives it.
  ...imageConfigSchema.shape,
  user: imageUserSchema,
});
export type ImageSpec = z.infer<typeof imageSpecSchema>;

/** The JSON Schemas editors validate catalog files with, by file name under `schemas/`. */
export function catalogJsonSchemas(): Record<string, unknown> {
  const make = (schema: z.ZodType, name: string, title: string) => ({
    $id: `https://homeostat.dev/schemas/${name}`,
    title,
    ...z.toJSONSchema(schema, { io: "input", target: "draft-2020-12" }),
  });
  return {
    "catalog-package.schema.json": make(packageSpecSchema, "catalog-package.schema.json", "Homeostat catalog package (packages/<name>.yaml)"),
    "catalog-image.schema.json": make(imageSpecSchema, "catalog-image.schema.json", "Homeostat catalog image (images/<name>.yaml)"),
  };
}

export class CatalogError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid catalog:\n  ${problems.join("\n  ")}`);
    this.problems = problems;
  }
}

export type CatalogOptions = {
  /** The git commit the catalog was read from (catalog-source.ts); undefined for a plain directory. */
  commit?: string;
  /** key -> file relative to the catalog directory, for messages. */
  files?: ReadonlyMap<Key, string>;
  /** The dependency graph, if the loader already built it. */
  graph?: DependencyGraph;
  /** What relative source paths are resolved against; default the catalog directory (a snapshot's is its origin's, catalog-source.ts). */
  sourceBase?: string;
};

export class Catalog {
  readonly dir: string;
  /** The git commit this catalog was read at; part of what a build came from. */
  readonly commit: string | undefined;
  readonly packages: ReadonlyMap<string, PackageSpec>;
  readonly images: ReadonlyMap<string, ImageSpec>;
  readonly graph: DependencyGraph;
  private readonly files: ReadonlyMap<Key, string>;
  /** What relative source paths are resolved against (CatalogOptions.sourceBase). */
  readonly sourceBase: string;
  private readonly recipes = new Map<Key, string>();
  private readonly policies = new Map<string, CompiledPolicy>();
  private githubIndex: Map<string, string[]> | undefined;
  private contentDigest: Digest | undefined;
  private buildOrder: readonly Key[] | undefined;

  constructor(dir: string, packages: Map<string, PackageSpec>, images: Map<string, ImageSpec>, opts: CatalogOptions = {}) {
    this.dir = dir;
    this.commit = opts.commit;
    this.packages = packages;
    this.images = images;
    this.files = opts.files ?? new Map();
    this.sourceBase = opts.sourceBase ?? dir;
    this.graph = opts.graph ?? catalogGraph(packages, images);
  }

  keys(): Key[] {
    return [...[...this.packages.keys()].map((n) => makeKey("package", n)), ...[...this.images.keys()].map((n) => makeKey("image", n))];
  }

  /**
   * Every key, each after the keys its inputs are built from (graph.ts impact waves: packages
   * by dependency depth, then the images). A pass over the catalog in this order, such as a
   * resync round, reaches a key when what it needs has had its turn: in file order, a fresh
   * factory ran most of 29,000 keys only to find each waiting for glibc (late in its shard), and
   * each such run reads its whole closure.
   */
  keysInBuildOrder(): readonly Key[] {
    return (this.buildOrder ??= this.impact(this.keys()).keys);
  }

  /** The file a key is declared in, relative to the catalog directory. */
  fileOf(key: Key): string | undefined {
    return this.files.get(key);
  }

  /** Keys directly out of date once `pkg` has a new artifact: dependent packages, then images. */
  dependentsOf(pkg: string): Key[] {
    return this.graph.dependents(pkg);
  }

  /** The keys whose builds `key`'s inputs are made of: a package's build dependencies, an image's packages with their runtime closure. */
  inputsOf(key: Key): Key[] {
    const { kind, name } = parseKey(key);
    const names = kind === "package" ? (this.packages.get(name)?.dependencies.build ?? []) : this.runtimeClosure(this.images.get(name)?.packages ?? []);
    return names.map((n) => makeKey("package", n));
  }

  /** The changed keys and everything depending on them, in the order they can be rebuilt (graph.ts). */
  impact(changed: Iterable<Key>): Impact {
    return this.graph.impact(changed);
  }

  /** The packages named plus everything they need at run time, each once, in a stable order. */
  runtimeClosure(names: readonly string[]): string[] {
    return runtimeClosure(this.packages, names);
  }

  /** A source URL made absolute: `${version}` substituted, relative paths against the catalog dir (or its snapshot's origin). */
  resolveSourceUrl(url: string, version: string): string {
    const u = url.replaceAll("${version}", version);
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(u)) return u;
    return new URL(`file://${path.resolve(this.sourceBase, u)}`).href;
  }

  /** Absolute path of a patch file (its sha256 was checked at load). */
  patchPath(patch: Patch): string {
    return path.join(this.dir, patch.path);
  }

  /** The package's version policy, compiled once (policy.ts); without an upstream, any release. */
  policyOf(name: string): CompiledPolicy {
    let p = this.policies.get(name);
    if (!p) {
      const upstream = this.packages.get(name)?.upstream;
      p = compilePolicy(upstream?.policy, { prereleases: upstream?.prereleases ?? false });
      this.policies.set(name, p);
    }
    return p;
  }

  /** Packages whose upstream is this GitHub repository (GitHub names are case-insensitive). */
  packagesForGithub(repo: string): string[] {
    if (!this.githubIndex) {
      this.githubIndex = new Map();
      for (const p of this.packages.values()) {
        const gh = p.upstream?.github?.toLowerCase();
        if (gh) this.githubIndex.set(gh, [...(this.githubIndex.get(gh) ?? []), p.name]);
      }
    }
    return this.githubIndex.get(repo.toLowerCase()) ?? [];
  }

  /**
   * What identifies this catalog in a build request: its git commit, or for a directory the
   * digest of its content (every key's recipe, which covers each patch through its sha256).
   * Two directory catalogs with equal content have equal revisions wherever they are mounted.
   */
  get revision(): string {
    if (this.commit) return this.commit;
    this.contentDigest ??= sha256Digest(
      canonicalJson(
        this.keys()
          .sort()
          .map((k) => [k, this.recipe(k)]),
      ),
    );
    return this.contentDigest;
  }

  /**
   * Digest of everything in the key's declaration that affects its build: the whole spec but
   * its description (patch contents are in through their sha256). Equal digests, equal recipes.
   */
  recipeDigest(key: Key): Digest | undefined {
    const text = this.recipe(key);
    return text === undefined ? undefined : sha256Digest(text);
  }

  /** Canonical JSON of the recipe (see recipeDigest), memoised: diffs compare these. */
  recipe(key: Key): string | undefined {
    let r = this.recipes.get(key);
    if (r === undefined) {
      const slash = key.indexOf("/");
      const name = key.slice(slash + 1);
      const spec = key.startsWith("package/") ? this.packages.get(name) : this.images.get(name);
      if (!spec) return undefined;
      const { description: _, ...recipe } = spec;
      r = canonicalJson(recipe);
      this.recipes.set(key, r);
    }
    return r;
  }
}

/** What changed between two catalogs, and what must be reconciled because of it. */
export type CatalogDiff = {
  added: Key[];
  modified: Key[];
  removed: Key[];
  /**
   * Added and modified keys with every key that depends on them in the new catalog, in
   * rebuild order (waves, packages before images), then the removed keys.
   */
  keys: Key[];
};

export function diffCatalogs(old: Catalog, next: Catalog): CatalogDiff {
  const added: Key[] = [];
  const modified: Key[] = [];
  const removed: Key[] = [];
  for (const key of next.keys()) {
    const before = old.recipe(key);
    if (before === undefined) added.push(key);
    else if (before !== next.recipe(key)) modified.push(key);
  }
  for (const key of old.keys()) if (next.recipe(key) === undefined) removed.push(key);
  const impact = next.impact([...added, ...modified]);
  return { added: added.sort(), modified: modified.sort(), removed: removed.sort(), keys: [...impact.keys, ...removed.sort()] };
}

/** Exactly the keys to reconcile after a catalog change: changed recipes and their dependents. */
export function changedKeys(old: Catalog, next: Catalog): Key[] {
  return diffCatalogs(old, next).keys;
}

/**
 * Packages depend on their build and runtime dependencies; an image on every package it
 * installs, its packages' runtime closure. That last part matters: a package that only needs
 * a rebuilt one at run time is not rebuilt itself (its inputs name the dependency, they do not
 * hold its archive), so the images installing the rebuilt one must hear of it directly.
 */
function catalogGraph(packages: ReadonlyMap<string, PackageSpec>, images: ReadonlyMap<string, ImageSpec>): DependencyGraph {
  return new DependencyGraph(
    [...packages.values()].map((p) => ({ name: p.name, dependencies: [...p.dependencies.build, ...p.dependencies.runtime] })),
    [...images.values()].map((i) => ({ name: i.name, packages: runtimeClosure(packages, i.packages) })),
  );
}

/** The packages named plus everything they need at run time, each once, depth first in declared order. */
function runtimeClosure(packages: ReadonlyMap<string, PackageSpec>, names: readonly string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  const stack = [...names].reverse();
  // Each name is expanded once, so the loop runs at most once per package plus once per edge.
  for (let n = stack.pop(); n !== undefined; n = stack.pop()) {
    if (seen.has(n)) continue;
    seen.add(n);
    out.push(n);
    const deps = packages.get(n)?.dependencies.runtime ?? [];
    stack.push(...deps.toReversed());
  }
  return out;
}

// ---- loading ----------------------------------------------------------------------------

/** A problem found after parsing, located by field path; its line is looked up only if it occurs. */
type Located = { file: string; at: (string | number)[]; message: string };

/** Files parsed between two turns of the event loop (about 30 ms of work). */
const CHUNK = 256;
/** Patch files read at once: enough to keep the disk busy, few enough to stay under the fd limit. */
const READ_CONCURRENCY = 64;

export async function loadCatalog(dir: string, opts: { commit?: string; sourceBase?: string } = {}): Promise<Catalog> {
  const problems: string[] = [];
  const located: Located[] = [];
  const packages = new Map<string, PackageSpec>();
  const images = new Map<string, ImageSpec>();
  const files = new Map<Key, string>();
  for (const [sub, kind, schema, into] of [
    ["packages", "package", packageSpecSchema, packages],
    ["images", "image", imageSpecSchema, images],
  ] as const) {
    const rels = await yamlFiles(dir, sub);
    for (let from = 0; from < rels.length; from += CHUNK) {
      // Yielding between chunks keeps the service responsive while a big catalog loads.
      if (from > 0) await new Promise((resolve) => setImmediate(resolve));
      // Parsing is CPU work that blocks anyway, and a synchronous read of a small file costs a
      // twentieth of an asynchronous one.
      const chunk = rels.slice(from, from + CHUNK);
      const parsed = withPlainEnv(() => chunk.map((rel) => ({ rel, ...parseSpec(rel, readFileSync(path.join(dir, rel), "utf8"), schema) })));
      for (const { rel, spec, problems: own } of parsed) {
        problems.push(...own);
        if (!spec) continue;
        const key = makeKey(kind, spec.name);
        const other = files.get(key);
        if (other) located.push({ file: rel, at: ["name"], message: `duplicate ${kind} name "${spec.name}" (also in ${other})` });
        else {
          files.set(key, rel);
          (into as Map<string, typeof spec>).set(spec.name, spec);
        }
      }
    }
  }
  // Every spec kept in `packages` and `images` was recorded with its file just above.
  const fileOf = (key: Key): string => {
    const file = files.get(key);
    if (file === undefined) throw new Error(`loadCatalog: no file recorded for ${key}`);
    return file;
  };
  for (const p of packages.values()) {
    const file = fileOf(makeKey("package", p.name));
    for (const field of ["build", "runtime"] as const) {
      for (const [i, d] of p.dependencies[field].entries()) {
        if (!packages.has(d)) located.push({ file, at: ["dependencies", field, i], message: `unknown package "${d}"` });
      }
    }
  }
  for (const img of images.values()) {
    const file = fileOf(makeKey("image", img.name));
    for (const [i, d] of img.packages.entries()) if (!packages.has(d)) located.push({ file, at: ["packages", i], message: `unknown package "${d}"` });
  }
  await checkPatches(dir, packages, fileOf, located);
  const graph = catalogGraph(packages, images);
  for (const cycle of graph.cycles()) {
    // A cycle is written from its first package to the next one and back: ["a", "b", "a"].
    const [first = "", next = ""] = cycle;
    const from = packages.get(first);
    if (!from) continue;
    const field = from.dependencies.build.includes(next) ? "build" : "runtime";
    located.push({
      file: fileOf(makeKey("package", from.name)),
      at: ["dependencies", field, from.dependencies[field].indexOf(next)],
      message: `dependency cycle: ${cycle.join(" -> ")}`,
    });
  }
  problems.push(...(await locate(dir, located)));
  if (problems.length) throw new CatalogError(problems);
  return new Catalog(dir, packages, images, {
    graph,
    files,
    ...(opts.commit ? { commit: opts.commit } : {}),
    ...(opts.sourceBase ? { sourceBase: opts.sourceBase } : {}),
  });
}

/** Every patch must exist inside the catalog and have the declared digest. */
async function checkPatches(dir: string, packages: ReadonlyMap<string, PackageSpec>, fileOf: (key: Key) => string, located: Located[]): Promise<void> {
  const checks = [...packages.values()].flatMap((p) => p.patches.map((patch, i) => ({ file: fileOf(makeKey("package", p.name)), patch, i })));
  await mapLimit(checks, READ_CONCURRENCY, async ({ file, patch, i }) => {
    let data: Buffer;
    try {
      data = await readFile(path.join(dir, patch.path));
    } catch (err) {
      located.push({
        file,
        at: ["patches", i, "path"],
        message: `cannot read ${patch.path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      });
      return;
    }
    const actual = sha256Hex(data);
    if (actual !== patch.sha256) located.push({ file, at: ["patches", i, "sha256"], message: `${patch.path} has sha256 ${actual}` });
  });
}

/**
 * Runs `fn` with process.env as a plain object. The yaml parser reads process.env.LOG_TOKENS
 * for every token, and process.env is a native lookup: a third of the parse time of a big
 * catalog. `fn` is synchronous, so nothing else runs before the real one is back.
 */
function withPlainEnv<T>(fn: () => T): T {
  const env = process.env;
  process.env = { ...env };
  try {
    return fn();
  } finally {
    process.env = env;
  }
}

/** `file:line: field: message` for each problem, reading again only the files that have one. */
async function locate(dir: string, located: Located[]): Promise<string[]> {
  const byFile = Map.groupBy(located, (l) => l.file);
  const out: string[] = [];
  for (const [file, list] of [...byFile].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    const lineCounter = new LineCounter();
    const doc = parseDocument(await readFile(path.join(dir, file), "utf8"), { lineCounter, prettyErrors: false });
    const lines = list.map((l) => ({ line: lineOf(doc, lineCounter, l.at), l }));
    // Checks finish in any order; a file's problems are listed top to bottom.
    lines.sort((a, b) => a.line - b.line || (a.l.message < b.l.message ? -1 : 1));
    for (const { line, l } of lines) out.push(`${file}:${line}: ${fieldName(l.at)}: ${l.message}`);
  }
  return out;
}

/** Files under `dir/sub` (recursively, so large catalogs may shard into subdirectories), sorted, relative to dir. */
async function yamlFiles(dir: string, sub: string): Promise<string[]> {
  try {
    const names = await readdir(path.join(dir, sub), { recursive: true });
    return names
      .filter((n) => /\.ya?ml$/.test(n))
      .map((n) => path.join(sub, n))
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

function parseSpec<S extends z.ZodType>(file: string, text: string, schema: S): { spec?: z.infer<S>; problems: string[] } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const problems: string[] = [];
  if (doc.errors.length) {
    for (const e of doc.errors) problems.push(`${file}:${lineCounter.linePos(e.pos[0]).line}: ${e.message.split("\n")[0]}`);
    return { problems };
  }
  const parsed = schema.safeParse(doc.toJS());
  if (parsed.success) return { spec: parsed.data, problems };
  for (const issue of parsed.error.issues) {
    const fieldPath = issue.path.map((p) => (typeof p === "number" ? p : String(p)));
    const unknown = issue.code === "unrecognized_keys" ? issue.keys : [];
    const [firstUnknown] = unknown;
    const at = firstUnknown !== undefined ? [...fieldPath, firstUnknown] : fieldPath;
    const message = unknown.length > 1 ? `unrecognized keys: ${unknown.join(", ")}` : issue.message;
    problems.push(`${file}:${lineOf(doc, lineCounter, at)}: ${fieldName(at)}: ${message}`);
  }
  return { problems };
}

/** dependencies.build[2], or (document) for the file as a whole. */
function fieldName(at: readonly (string | number)[]): string {
  let s = "";
  for (const p of at) s += typeof p === "number" ? `[${p}]` : s ? `.${p}` : p;
  return s || "(document)";
}

function lineOf(doc: ReturnType<typeof parseDocument>, lc: LineCounter, at: readonly (string | number)[]): number {
  // Walk up until a node exists (a missing field is reported at its parent).
  for (let n = at.length; n >= 0; n--) {
    const node = doc.getIn(at.slice(0, n), true) as { range?: [number, number, number] } | undefined;
    if (node?.range) return lc.linePos(node.range[0]).line;
    if (n > 0) {
      const parent = doc.getIn(at.slice(0, n - 1), true) as { items?: { key?: { value?: unknown; range?: [number, number, number] } }[] } | undefined;
      const pair = parent?.items?.find((i) => i.key?.value === at[n - 1]);
      if (pair?.key?.range) return lc.linePos(pair.key.range[0]).line;
    }
  }
  return 1;
}
