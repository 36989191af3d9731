/**
 * Dependency graph of a catalog: packages depend on packages (build or run time), images on
 * the packages they contain. It answers what the reconciler and `homeostat plan` need at
 * catalog scale (27,000 packages, 2,000 images):
 * - the direct dependents of a package (the reverse-dependency index);
 * - the cycles, each as a path, so a bad catalog is rejected with the cycle named;
 * - the impact of a change: every key that transitively depends on the changed ones, in
 *   waves — a key comes once, in the first wave after all its changed dependencies, and every
 *   image after every package — so a diamond is rebuilt once, last of its branches.
 *
 * Why arrays of integers: the impact of a base package that nearly everything uses touches
 * every node and edge; with adjacency in Int32Arrays (compressed rows) and a generation-stamped
 * visited array, one impact is a few milliseconds instead of hundreds with Maps and Sets of
 * strings. Node ids follow the names' sorted order, so every output is deterministic.
 */
/* eslint-disable @typescript-eslint/no-non-null-assertion -- every index below is a node id
   (< node count) or a row offset from `start`, in range by construction of the compressed rows;
   under noUncheckedIndexedAccess a typed array's element reads as `number | undefined`, and a
   fallback in these loops would hide a bug instead of revealing it. */
import { makeKey, type Key } from "@homeostat/core/key";

export type GraphPackage = { name: string; dependencies: readonly string[] };
export type GraphImage = { name: string; packages: readonly string[] };

/** Keys in the order they can be rebuilt: every key after all the impacted keys it depends on. */
export type Impact = {
  /** waves[0] holds the changed keys that depend on no other impacted key; images come last. */
  waves: Key[][];
  /** The waves flattened. */
  keys: Key[];
  packages: number;
  images: number;
};

/** Compressed rows: the neighbours of node i are items[start[i] .. start[i+1]). */
type Rows = { start: Int32Array; items: Int32Array };

export class DependencyGraph {
  readonly packageCount: number;
  readonly imageCount: number;
  /** Node ids: packages 0..packageCount-1, then images. */
  private readonly keyOf: Key[];
  private readonly nameOf: string[];
  private readonly packageId: Map<string, number>;
  private readonly imageId: Map<string, number>;
  /** node -> the packages it depends on. */
  private readonly deps: Rows;
  /** package -> the nodes (packages, then images) that depend on it. */
  private readonly rdeps: Rows;
  // Scratch space for impact(), reused so that one call allocates only its result.
  private readonly seen: Uint32Array;
  private readonly pending: Int32Array;
  private generation = 0;

  /**
   * Dependencies on names that are not packages of the graph are left out: reporting them,
   * with file and line, is the catalog loader's job.
   */
  constructor(packages: Iterable<GraphPackage>, images: Iterable<GraphImage>) {
    const pkgs = [...packages].sort((a, b) => byName(a.name, b.name));
    const imgs = [...images].sort((a, b) => byName(a.name, b.name));
    this.packageCount = pkgs.length;
    this.imageCount = imgs.length;
    const n = pkgs.length + imgs.length;
    this.nameOf = [...pkgs.map((p) => p.name), ...imgs.map((i) => i.name)];
    this.keyOf = [...pkgs.map((p) => makeKey("package", p.name)), ...imgs.map((i) => makeKey("image", i.name))];
    this.packageId = new Map(pkgs.map((p, i) => [p.name, i]));
    this.imageId = new Map(imgs.map((img, i) => [img.name, pkgs.length + i]));

    const lists: number[][] = [...pkgs.map((p) => p.dependencies), ...imgs.map((i) => i.packages)].map((names) => {
      const ids = new Set<number>();
      for (const d of names) {
        const id = this.packageId.get(d);
        if (id !== undefined) ids.add(id);
      }
      return [...ids].sort((a, b) => a - b);
    });
    this.deps = toRows(lists);
    const reverse: number[][] = Array.from({ length: n }, () => []);
    // Visiting nodes in id order fills every reverse list already sorted: packages, then images.
    for (let v = 0; v < n; v++) for (const d of lists[v]!) reverse[d]!.push(v);
    this.rdeps = toRows(reverse);
    this.seen = new Uint32Array(n);
    this.pending = new Int32Array(n);
  }

  has(key: Key): boolean {
    return this.id(key) !== undefined;
  }

  /** Packages and images that depend directly on package `name` (empty for an unknown name). */
  dependents(name: string): Key[] {
    const id = this.packageId.get(name);
    return id === undefined ? [] : this.row(this.rdeps, id).map((v) => this.keyOf[v]!);
  }

  /** Packages that `key` depends on directly. */
  dependencies(key: Key): Key[] {
    const id = this.id(key);
    return id === undefined ? [] : this.row(this.deps, id).map((v) => this.keyOf[v]!);
  }

  /**
   * Every dependency cycle, one path per strongly connected group of packages, written from
   * its first name in sorted order and back to it: ["a", "b", "a"] when a needs b and b needs a.
   */
  cycles(): string[][] {
    const out: string[][] = [];
    for (const scc of this.stronglyConnected()) {
      const start = scc[0]!;
      const self = this.row(this.deps, start).includes(start);
      if (scc.length === 1 && !self) continue;
      out.push(this.cycleThrough(start, new Set(scc)).map((v) => this.nameOf[v]!));
    }
    return out;
  }

  /**
   * The changed keys and every key that transitively depends on them, in waves (see Impact).
   * Unknown keys are ignored: a key removed from the catalog has no dependents left.
   * The graph must be acyclic, as a loaded catalog is.
   */
  impact(changed: Iterable<Key>): Impact {
    const gen = this.nextGeneration();
    const { seen, pending } = this;
    const { start: rs, items: ri } = this.rdeps;
    const { start: ds, items: di } = this.deps;
    // 1. Everything reachable over reverse edges from the changed keys.
    const reached: number[] = [];
    for (const key of changed) {
      const id = this.id(key);
      if (id !== undefined && seen[id] !== gen) {
        seen[id] = gen;
        reached.push(id);
      }
    }
    for (let i = 0; i < reached.length; i++) {
      const u = reached[i]!;
      for (let e = rs[u]!; e < rs[u + 1]!; e++) {
        const v = ri[e]!;
        if (seen[v] !== gen) {
          seen[v] = gen;
          reached.push(v);
        }
      }
    }
    // 2. Kahn's algorithm on the reached packages: a package waits for its reached dependencies.
    const images: number[] = [];
    let wave: number[] = [];
    let packages = 0;
    for (const u of reached) {
      if (u >= this.packageCount) {
        images.push(u);
        continue;
      }
      packages++;
      let count = 0;
      for (let e = ds[u]!; e < ds[u + 1]!; e++) if (seen[di[e]!] === gen) count++;
      pending[u] = count;
      if (count === 0) wave.push(u);
    }
    const waves: Key[][] = [];
    let placed = 0;
    // Each wave places at least one package, so there are at most `packages` waves.
    while (wave.length > 0 && waves.length < packages) {
      wave.sort((a, b) => a - b);
      waves.push(wave.map((v) => this.keyOf[v]!));
      placed += wave.length;
      const next: number[] = [];
      for (const u of wave) {
        for (let e = rs[u]!; e < rs[u + 1]!; e++) {
          const v = ri[e]!;
          if (v < this.packageCount && seen[v] === gen && --pending[v]! === 0) next.push(v);
        }
      }
      wave = next;
    }
    if (placed !== packages) throw new Error("impact: the dependency graph has a cycle (a loaded catalog never does)");
    if (images.length) waves.push(images.sort((a, b) => a - b).map((v) => this.keyOf[v]!));
    return { waves, keys: waves.flat(), packages, images: images.length };
  }

  private id(key: Key): number | undefined {
    const slash = key.indexOf("/");
    const name = key.slice(slash + 1);
    return key.startsWith("package/") ? this.packageId.get(name) : this.imageId.get(name);
  }

  private row(rows: Rows, id: number): number[] {
    return Array.from(rows.items.subarray(rows.start[id]!, rows.start[id + 1]!));
  }

  private nextGeneration(): number {
    // Wrapping around would make stale marks look current: start over with a cleared array.
    if (this.generation === 0xffffffff) {
      this.seen.fill(0);
      this.generation = 0;
    }
    return ++this.generation;
  }

  /** Tarjan's algorithm over the packages, iterative (a long chain would overflow the stack). */
  private stronglyConnected(): number[][] {
    const n = this.packageCount;
    const index = new Int32Array(n).fill(-1);
    const low = new Int32Array(n);
    const onStack = new Uint8Array(n);
    const edgePos = new Int32Array(n);
    const stack: number[] = [];
    const out: number[][] = [];
    const { start, items } = this.deps;
    let counter = 0;
    for (let root = 0; root < n; root++) {
      if (index[root] !== -1) continue;
      const call: number[] = [root];
      index[root] = low[root] = counter++;
      edgePos[root] = start[root]!;
      stack.push(root);
      onStack[root] = 1;
      // Every iteration either follows an edge or finishes a node: bounded by nodes + edges.
      while (call.length > 0) {
        const u = call[call.length - 1]!;
        const pos = edgePos[u]!;
        if (pos < start[u + 1]!) {
          edgePos[u] = pos + 1;
          const v = items[pos]!;
          if (index[v] === -1) {
            index[v] = low[v] = counter++;
            edgePos[v] = start[v]!;
            stack.push(v);
            onStack[v] = 1;
            call.push(v);
          } else if (onStack[v]) low[u] = Math.min(low[u]!, index[v]!);
          continue;
        }
        call.pop();
        const parent = call[call.length - 1];
        if (parent !== undefined) low[parent] = Math.min(low[parent]!, low[u]!);
        if (low[u] === index[u]) {
          const scc: number[] = [];
          let w: number;
          do {
            w = stack.pop()!;
            onStack[w] = 0;
            scc.push(w);
          } while (w !== u);
          out.push(scc.sort((a, b) => a - b));
        }
      }
    }
    return out.sort((a, b) => a[0]! - b[0]!);
  }

  /** A shortest path from `start` back to itself inside one strongly connected group. */
  private cycleThrough(start: number, group: Set<number>): number[] {
    const parent = new Map<number, number>();
    const queue = [start];
    for (let i = 0; i < queue.length; i++) {
      const u = queue[i]!;
      for (const v of this.row(this.deps, u)) {
        if (!group.has(v)) continue;
        if (v === start) {
          const path = [start];
          for (let w = u; w !== start; w = parent.get(w)!) path.push(w);
          path.push(start);
          return [path[0]!, ...path.slice(1, -1).reverse(), start];
        }
        if (!parent.has(v)) {
          parent.set(v, u);
          queue.push(v);
        }
      }
    }
    throw new Error("cycleThrough: the group is not a cycle");
  }
}

/** Byte order of names, the same on every machine (localeCompare is not). */
function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function toRows(lists: number[][]): Rows {
  const start = new Int32Array(lists.length + 1);
  for (let i = 0; i < lists.length; i++) start[i + 1] = start[i]! + lists[i]!.length;
  const items = new Int32Array(start[lists.length]!);
  for (let i = 0; i < lists.length; i++) items.set(lists[i]!, start[i]!);
  return { start, items };
}
