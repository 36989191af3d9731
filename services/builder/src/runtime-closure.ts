/**
 * Runtime closure: does an image hold everything its programs need to start? Checked on the
 * image's own filesystem (its layers applied in order, as a runtime unpacks them), before
 * anything is written, so an image whose entrypoint cannot start is never built.
 *
 * What a program needs, read from the files themselves (elf.ts, no tool runs):
 * - an ELF program: its loader (PT_INTERP), then each DT_NEEDED library, found the way its
 *   loader searches: DT_RPATH, DT_RUNPATH ($ORIGIN expanded), then the loader's directories
 *   (musl: /etc/ld-musl-<arch>.path in the image, else /lib:/usr/local/lib:/usr/lib, and libc,
 *   libm, libpthread, librt, libdl, libutil, libxnet are the loader itself; glibc: the
 *   multiarch and plain lib directories), each library checked the same way in turn; and it
 *   must be built for x86-64, the image's platform;
 * - a script: the interpreter of its `#!` line (`#!/usr/bin/env NAME` also needs NAME on the
 *   image's PATH), checked in turn;
 * - every program must be a regular file executable by the image's (non-root) user.
 * The entrypoint (else cmd[0], looked up on the config's PATH when it has no slash) must start,
 * and so must every other program in the image: each problem is one line naming the file, the
 * package it comes from and what is missing.
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import path from "node:path";
import { createGunzip } from "node:zlib";
import * as tar from "tar";
import type { ImageConfig } from "@homeostat/core/contracts";
import type { Digest } from "@homeostat/core/digest";
import { EM_X86_64, ElfError, isElf, machineName, parseElf } from "./elf.ts";

export type RootfsEntry = {
  type: "file" | "directory" | "symlink";
  mode: number;
  linkname?: string;
  /** The first bytes, or the whole file when it may be a program or a library. */
  content?: Buffer;
  /** Which layer (package) put it there. */
  from: string;
};

/** Files larger than this are not inspected as programs (none of a sane image's are). */
const MAX_INSPECTED_BYTES = 256 * 1024 * 1024;
const MAX_LINK_HOPS = 40;
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Whether a file's content is needed: it may be a program (executable) or a shared library. */
function inspectable(p: string, mode: number): boolean {
  return (mode & 0o111) !== 0 || /\.so(\.[0-9.]+)?$/.test(p);
}

/** An image's filesystem as its layers make it: path (no leading slash) -> entry, later layers win. */
export class Rootfs {
  readonly entries = new Map<string, RootfsEntry>();

  add(p: string, entry: RootfsEntry): void {
    const clean = normalise(p);
    if (clean === "") return;
    // A non-directory replacing a directory hides what was under it, as a runtime would.
    const old = this.entries.get(clean);
    if (old?.type === "directory" && entry.type !== "directory")
      for (const k of [...this.entries.keys()]) if (k.startsWith(`${clean}/`)) this.entries.delete(k);
    this.entries.set(clean, entry);
    // A layer may leave out parent directories; a runtime creates them when it unpacks.
    for (let dir = path.posix.dirname(clean); dir !== "." && !this.entries.has(dir); dir = path.posix.dirname(dir))
      this.entries.set(dir, { type: "directory", mode: 0o755, from: entry.from });
  }

  /**
   * Applies a gzip tar layer (a package archive or a builder-made layer); returns the sha256
   * digest of the file's bytes, read on the way (so that checking the layer costs no second read).
   */
  async addLayer(file: string, from: string): Promise<Digest> {
    const hash = createHash("sha256");
    const pending: Promise<void>[] = [];
    const parser = new tar.Parser({
      strict: true,
      onReadEntry: (e) => {
        const type =
          e.type === "Directory"
            ? "directory"
            : e.type === "SymbolicLink"
              ? "symlink"
              : e.type === "File" || e.type === "OldFile" || e.type === "ContiguousFile"
                ? "file"
                : undefined;
        const mode = e.mode ?? 0;
        if (type === undefined || type !== "file" || !inspectable(e.path, mode) || (e.size ?? 0) > MAX_INSPECTED_BYTES) {
          if (type) this.add(e.path, { type, mode, ...(e.linkpath ? { linkname: e.linkpath } : {}), from });
          e.resume();
          return;
        }
        const chunks: Buffer[] = [];
        e.on("data", (c: Buffer) => chunks.push(c));
        pending.push(
          new Promise((resolve) =>
            e.on("end", () => {
              this.add(e.path, { type, mode, content: Buffer.concat(chunks), from });
              resolve();
            }),
          ),
        );
      },
    });
    const done = new Promise<void>((resolve, reject) => {
      parser.on("end", () => resolve());
      parser.on("error", reject);
    });
    const source = createReadStream(file)
      .on("error", (e) => parser.emit("error", e))
      .on("data", (c) => hash.update(c));
    source
      .pipe(createGunzip())
      .on("error", (e) => parser.emit("error", e))
      .pipe(parser);
    try {
      await done;
    } finally {
      source.destroy();
    }
    await Promise.all(pending);
    return `sha256:${hash.digest("hex")}`;
  }

  /** Follows symlinks (relative to their directory, absolute ones from the image's root). */
  resolve(p: string): { path: string; entry: RootfsEntry } | { missing: string } {
    let parts = normalise(p).split("/").filter(Boolean);
    let hops = 0;
    for (let i = 0; i < parts.length; i++) {
      const here = parts.slice(0, i + 1).join("/");
      const e = this.entries.get(here);
      if (!e) return { missing: `/${parts.join("/")}` };
      if (e.type === "symlink") {
        if (++hops > MAX_LINK_HOPS) return { missing: `/${here} (too many levels of symbolic links)` };
        const target = e.linkname ?? "";
        const base = target.startsWith("/") ? [] : parts.slice(0, i);
        parts = [
          ...normalise([...base, target].join("/"))
            .split("/")
            .filter(Boolean),
          ...parts.slice(i + 1),
        ];
        i = -1;
      } else if (i < parts.length - 1 && e.type !== "directory") return { missing: `/${parts.slice(0, i + 2).join("/")} (/${here} is not a directory)` };
    }
    const final = parts.join("/");
    const entry = this.entries.get(final);
    return entry ? { path: `/${final}`, entry } : { missing: `/${final}` };
  }

  /** The first of `dirs` holding `name` (any file type), resolved. */
  find(name: string, dirs: readonly string[]): { path: string; entry: RootfsEntry } | undefined {
    for (const d of dirs) {
      const r = this.resolve(path.posix.join(d, name));
      if ("entry" in r && r.entry.type === "file") return r;
    }
    return undefined;
  }
}

function normalise(p: string): string {
  return path.posix.normalize(`/${p}`).replace(/^\/+/, "").replace(/\/+$/, "");
}

/** Library names musl's loader answers itself (its ldso/dynlink.c reserved names). */
const MUSL_BUILTIN = /^(lib(c|pthread|rt|m|dl|util|xnet)\.so(\.\d+)*|ld-musl-[^/]*\.so\.1)$/;
const GLIBC_DIRS = ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"];
const MUSL_DIRS = ["/lib", "/usr/local/lib", "/usr/lib"];

/** What an image's programs need and lack. */
export class ClosureCheck {
  private readonly fs: Rootfs;
  private readonly pathDirs: string[];
  private readonly checked = new Map<string, string[]>();
  /** The entrypoint's file, reported by `entrypoint` and so skipped by `allPrograms`. */
  private entrypointPath: string | undefined;

  constructor(fs: Rootfs, config: ImageConfig) {
    this.fs = fs;
    this.pathDirs = (config.env.PATH ?? DEFAULT_PATH).split(":").filter((d) => d.startsWith("/"));
  }

  /** Problems with what the image starts: entrypoint, else cmd[0]. */
  entrypoint(config: ImageConfig): string[] {
    const argv0 = config.entrypoint[0] ?? config.cmd[0];
    if (argv0 === undefined) return ["the image has neither an entrypoint nor a cmd: nothing to start"];
    let target = argv0;
    if (!argv0.includes("/")) {
      const found = this.pathDirs.map((d) => path.posix.join(d, argv0)).find((p) => "entry" in this.fs.resolve(p));
      if (!found) return [`entrypoint ${argv0}: not found on the image's PATH (${this.pathDirs.join(":")})`];
      target = found;
    } else if (!argv0.startsWith("/")) target = path.posix.join(config.workdir || "/", argv0);
    const r = this.fs.resolve(target);
    if ("path" in r) this.entrypointPath = r.path;
    return this.program(target, argv0 === target ? `entrypoint ${argv0}` : `entrypoint ${argv0} (${target})`);
  }

  /** Problems of every other program in the image (each executable ELF file or `#!` script). */
  allPrograms(): string[] {
    const out: string[] = [];
    for (const [p, e] of [...this.fs.entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (e.type !== "file" || (e.mode & 0o111) === 0 || !e.content) continue;
      if ((!isElf(e.content) && !startsWithShebang(e.content)) || `/${p}` === this.entrypointPath) continue;
      out.push(...this.program(`/${p}`, `/${p}`));
    }
    return [...new Set(out)];
  }

  /** Problems starting the program at `p`; `label` is how messages name it. */
  private program(p: string, label: string, depth = 0): string[] {
    const r = this.fs.resolve(p);
    if ("missing" in r) return [`${label}: ${r.missing} is not in the image`];
    const { entry } = r;
    const what = `${label}${r.path !== path.posix.normalize(p) ? ` (${r.path})` : ""}, from package ${entry.from}`;
    if (entry.type !== "file") return [`${what}: is a ${entry.type}, not a program`];
    if ((entry.mode & 0o001) === 0) return [`${what}: is not executable by the image's user (mode ${(entry.mode & 0o7777).toString(8)})`];
    const memo = this.checked.get(r.path);
    if (memo) return memo.map((m) => `${what}: ${m}`);
    this.checked.set(r.path, []);
    const needs = this.needs(r.path, entry, depth);
    this.checked.set(r.path, needs);
    return needs.map((m) => `${what}: ${m}`);
  }

  /** What the file at `p` lacks, as phrases ("needs its loader /lib/ld-musl-x86_64.so.1, which is not in the image"). */
  private needs(p: string, entry: RootfsEntry, depth: number): string[] {
    const content = entry.content;
    if (!content) return [];
    if (depth > 8) return ["its interpreters nest more than 8 deep"];
    if (startsWithShebang(content)) return this.scriptNeeds(content, depth);
    if (!isElf(content)) return ["is neither an ELF program nor a #! script: the kernel cannot execute it"];
    let elf;
    try {
      elf = parseElf(content);
    } catch (e) {
      return [`is a malformed ELF file (${(e as ElfError).message})`];
    }
    if (elf.machine !== EM_X86_64 || elf.bits !== 64) return [`is built for ${machineName(elf.machine)} (${elf.bits}-bit), not the image's linux/amd64`];
    const out: string[] = [];
    let musl = false;
    if (elf.interpreter !== undefined) {
      const loader = this.fs.resolve(elf.interpreter);
      if ("missing" in loader || loader.entry.type !== "file") return [`needs its loader ${elf.interpreter}, which is not in the image`];
      musl = /ld-musl-/.test(path.posix.basename(elf.interpreter)) || /ld-musl-/.test(path.posix.basename(loader.path));
      if (loader.entry.content) {
        try {
          if (parseElf(loader.entry.content).machine !== EM_X86_64) out.push(`its loader ${elf.interpreter} is not an x86-64 program`);
        } catch (e) {
          out.push(`its loader ${elf.interpreter} is not a well-formed ELF program (${(e as ElfError).message})`);
        }
      }
    }
    out.push(...this.libraryNeeds(p, elf.needed, elf.rpath, elf.runpath, musl, new Set([p])));
    return out;
  }

  private libraryNeeds(
    from: string,
    needed: readonly string[],
    rpath: readonly string[],
    runpath: readonly string[],
    musl: boolean,
    seen: Set<string>,
  ): string[] {
    const out: string[] = [];
    const origin = path.posix.dirname(from);
    const expand = (dirs: readonly string[]) => dirs.map((d) => d.replaceAll("$ORIGIN", origin).replaceAll("${ORIGIN}", origin));
    for (const lib of needed) {
      if (musl && MUSL_BUILTIN.test(lib)) continue;
      const dirs = lib.includes("/") ? [] : [...expand(rpath), ...expand(runpath), ...this.loaderDirs(musl)];
      const found = lib.includes("/")
        ? (() => {
            const r = this.fs.resolve(lib);
            return "entry" in r ? r : undefined;
          })()
        : this.fs.find(lib, dirs);
      if (!found) {
        out.push(`needs the library ${lib}, which is not in the image (searched ${dirs.join(":") || lib})`);
        continue;
      }
      if (seen.has(found.path) || !found.entry.content || !isElf(found.entry.content)) continue;
      seen.add(found.path);
      try {
        const sub = parseElf(found.entry.content);
        out.push(...this.libraryNeeds(found.path, sub.needed, sub.rpath, sub.runpath, musl, seen).map((m) => `${m} (for ${lib})`));
      } catch (e) {
        out.push(`needs ${lib}, and ${found.path} is a malformed ELF file (${(e as ElfError).message})`);
      }
    }
    return out;
  }

  private loaderDirs(musl: boolean): string[] {
    if (!musl) return GLIBC_DIRS;
    const conf = this.fs.resolve("/etc/ld-musl-x86_64.path");
    if (!("entry" in conf) || !conf.entry.content) return MUSL_DIRS;
    return conf.entry.content
      .toString("utf8")
      .split(/[\n:]/)
      .map((l) => l.trim())
      .filter((l) => l.startsWith("/"));
  }

  private scriptNeeds(content: Buffer, depth: number): string[] {
    const [firstLine = ""] = content.subarray(0, Math.min(content.length, 256)).toString("utf8").split("\n");
    const line = firstLine.slice(2).trim();
    const [interpreter, ...args] = line.split(/\s+/);
    if (!interpreter) return ["has an empty #! line"];
    const out = this.program(interpreter, `its interpreter ${interpreter}`, depth + 1).map((m) => `needs ${m}`);
    if (path.posix.basename(interpreter) === "env" && args[0] !== undefined && !args[0].startsWith("-")) {
      const name = args[0];
      const hit = this.pathDirs.map((d) => path.posix.join(d, name)).find((p) => "entry" in this.fs.resolve(p));
      if (!hit) out.push(`needs ${name} (through ${interpreter}), which is not on the image's PATH (${this.pathDirs.join(":")})`);
      else out.push(...this.program(hit, `its interpreter ${name}`, depth + 1).map((m) => `needs ${m}`));
    }
    return out;
  }
}

function startsWithShebang(b: Buffer): boolean {
  return b.length >= 2 && b[0] === 0x23 && b[1] === 0x21;
}

/** Every reason the image built from `fs` and `config` could not start its programs; empty when none. */
export function runtimeProblems(fs: Rootfs, config: ImageConfig): string[] {
  const check = new ClosureCheck(fs, config);
  const first = check.entrypoint(config);
  return [...new Set([...first, ...check.allPrograms()])];
}
