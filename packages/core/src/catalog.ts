/**
 * Catalog: the desired state as declared by the users — packages built from upstream source
 * and images assembled from packages — loaded from a directory of YAML files.
 *
 * Loading validates everything at once and fails with every problem, each naming its file,
 * line and field, so a bad edit is rejected whole and the previous catalog keeps serving.
 */
import { readdir, readFile } from "node:fs/promises";
import path from "node:path";
import { LineCounter, parseDocument } from "yaml";
import { z } from "zod";
import { imageConfigSchema } from "./contracts.ts";
import { makeKey, nameSchema, type Key } from "./key.ts";

const versionSchema = z.string().min(1).max(128).regex(/^[A-Za-z0-9][A-Za-z0-9.+_~-]*$/, "letters, digits and . + _ ~ - only");

export const packageSpecSchema = z.strictObject({
  name: nameSchema,
  version: versionSchema,
  license: z.string().max(256).optional(),
  description: z.string().max(4096).optional(),
  source: z.strictObject({
    /** A URL (file://, http://, https://) or a path relative to the catalog directory; `${version}` is substituted. */
    url: z.string().min(1).max(4096),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, "must be 64 lower-case hex characters"),
  }),
  build: z.strictObject({ steps: z.array(z.string().min(1)).min(1) }),
  dependencies: z
    .strictObject({ build: z.array(nameSchema).default([]), runtime: z.array(nameSchema).default([]) })
    .default({ build: [], runtime: [] }),
});
export type PackageSpec = z.infer<typeof packageSpecSchema>;

export const imageSpecSchema = z.strictObject({
  name: nameSchema,
  description: z.string().max(4096).optional(),
  packages: z.array(nameSchema).min(1),
  // The runtime configuration is declared exactly as the builder receives it.
  ...imageConfigSchema.shape,
});
export type ImageSpec = z.infer<typeof imageSpecSchema>;

export class CatalogError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid catalog:\n  ${problems.join("\n  ")}`);
    this.problems = problems;
  }
}

export class Catalog {
  readonly dir: string;
  readonly packages: ReadonlyMap<string, PackageSpec>;
  readonly images: ReadonlyMap<string, ImageSpec>;
  /** package name -> keys that must be reconciled again after it is rebuilt. */
  private readonly dependents: Map<string, Key[]>;

  constructor(dir: string, packages: Map<string, PackageSpec>, images: Map<string, ImageSpec>) {
    this.dir = dir;
    this.packages = packages;
    this.images = images;
    this.dependents = new Map();
    const add = (pkg: string, key: Key) => {
      const list = this.dependents.get(pkg) ?? [];
      if (!list.includes(key)) list.push(key);
      this.dependents.set(pkg, list);
    };
    for (const p of packages.values()) {
      for (const d of [...p.dependencies.build, ...p.dependencies.runtime]) add(d, makeKey("package", p.name));
    }
    for (const img of images.values()) {
      for (const p of this.runtimeClosure(img.packages)) add(p, makeKey("image", img.name));
    }
  }

  keys(): Key[] {
    return [...[...this.packages.keys()].map((n) => makeKey("package", n)), ...[...this.images.keys()].map((n) => makeKey("image", n))];
  }

  /** Keys directly out of date once `pkg` has a new artifact: dependent packages and images. */
  dependentsOf(pkg: string): Key[] {
    return this.dependents.get(pkg) ?? [];
  }

  /** The packages named plus everything they need at run time, each once, in a stable order. */
  runtimeClosure(names: readonly string[]): string[] {
    const out: string[] = [];
    const visit = (n: string) => {
      if (out.includes(n)) return;
      out.push(n);
      for (const d of this.packages.get(n)?.dependencies.runtime ?? []) visit(d);
    };
    names.forEach(visit);
    return out;
  }

  /** A source URL made absolute: `${version}` substituted, relative paths against the catalog dir. */
  resolveSourceUrl(url: string, version: string): string {
    const u = url.replaceAll("${version}", version);
    if (/^[a-z][a-z0-9+.-]*:\/\//i.test(u)) return u;
    return new URL(`file://${path.resolve(this.dir, u)}`).href;
  }
}

export async function loadCatalog(dir: string): Promise<Catalog> {
  const problems: string[] = [];
  const packages = new Map<string, PackageSpec>();
  const images = new Map<string, ImageSpec>();
  const files = new Map<string, string>();
  for (const [sub, schema, into] of [
    ["packages", packageSpecSchema, packages],
    ["images", imageSpecSchema, images],
  ] as const) {
    for (const file of await yamlFiles(path.join(dir, sub))) {
      const rel = path.relative(dir, file);
      const spec = parseSpec(rel, await readFile(file, "utf8"), schema, problems);
      if (!spec) continue;
      const other = files.get(`${sub}/${spec.name}`);
      if (other) problems.push(`${rel}: duplicate ${sub === "packages" ? "package" : "image"} name "${spec.name}" (also in ${other})`);
      else {
        files.set(`${sub}/${spec.name}`, rel);
        (into as Map<string, typeof spec>).set(spec.name, spec);
      }
    }
  }
  for (const p of packages.values()) {
    for (const d of [...p.dependencies.build, ...p.dependencies.runtime]) {
      if (!packages.has(d)) problems.push(`${files.get(`packages/${p.name}`)}: dependencies: unknown package "${d}"`);
    }
  }
  for (const img of images.values()) {
    for (const d of img.packages) if (!packages.has(d)) problems.push(`${files.get(`images/${img.name}`)}: packages: unknown package "${d}"`);
  }
  const cycle = findCycle(packages);
  if (cycle) problems.push(`dependency cycle: ${cycle.join(" -> ")}`);
  if (problems.length) throw new CatalogError(problems);
  return new Catalog(dir, packages, images);
}

async function yamlFiles(dir: string): Promise<string[]> {
  try {
    const names = await readdir(dir);
    return names.filter((n) => /\.ya?ml$/.test(n)).sort().map((n) => path.join(dir, n));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

function parseSpec<S extends z.ZodType>(file: string, text: string, schema: S, problems: string[]): z.infer<S> | undefined {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length) {
    for (const e of doc.errors) problems.push(`${file}:${lineCounter.linePos(e.pos[0]).line}: ${e.message.split("\n")[0]}`);
    return undefined;
  }
  const parsed = schema.safeParse(doc.toJS());
  if (parsed.success) return parsed.data;
  for (const issue of parsed.error.issues) {
    const fieldPath = issue.path.map(String);
    const unknown = issue.code === "unrecognized_keys" ? issue.keys : [];
    const at = unknown.length ? [...fieldPath, unknown[0]!] : fieldPath;
    const line = lineOf(doc, lineCounter, at);
    problems.push(`${file}:${line}: ${at.join(".") || "(document)"}: ${issue.message}`);
  }
  return undefined;
}

function lineOf(doc: ReturnType<typeof parseDocument>, lc: LineCounter, at: string[]): number {
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

function findCycle(packages: ReadonlyMap<string, PackageSpec>): string[] | undefined {
  const state = new Map<string, "visiting" | "done">();
  const stack: string[] = [];
  const visit = (n: string): string[] | undefined => {
    if (state.get(n) === "done") return undefined;
    if (state.get(n) === "visiting") return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, "visiting");
    stack.push(n);
    const p = packages.get(n);
    for (const d of p ? [...p.dependencies.build, ...p.dependencies.runtime] : []) {
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    state.set(n, "done");
    return undefined;
  };
  for (const n of [...packages.keys()].sort()) {
    const c = visit(n);
    if (c) return c;
  }
  return undefined;
}
