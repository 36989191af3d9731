/**
 * The key's workspace: the one directory an agent run may read and write. Every path a tool
 * is given is relative to it; an absolute path, a `..` that climbs out, or a symbolic link
 * that leads out is refused with a reason the model can read (a tool error), never followed.
 */
import { lstat, mkdir, open, readdir, realpath, writeFile } from "node:fs/promises";
import path from "node:path";

export class PathRefusedError extends Error {}

export class Workspace {
  readonly root: string;
  constructor(root: string) {
    this.root = path.resolve(root);
  }

  /** The absolute path of `rel`, inside the workspace, or a PathRefusedError. */
  async resolve(rel: string): Promise<string> {
    if (rel.includes("\0")) throw new PathRefusedError("a path may not hold NUL");
    if (path.isAbsolute(rel)) throw new PathRefusedError(`${rel}: paths are relative to the workspace`);
    const abs = path.resolve(this.root, rel);
    if (!inside(this.root, abs)) throw new PathRefusedError(`${rel}: leaves the workspace`);
    // The nearest existing ancestor, resolved, must stay inside too (a symbolic link out is refused).
    let probe = abs;
    while (
      !(await lstat(probe).then(
        () => true,
        () => false,
      ))
    )
      probe = path.dirname(probe);
    const real = await realpath(probe);
    if (!inside(await realpath(this.root), real)) throw new PathRefusedError(`${rel}: leads out of the workspace through a symbolic link`);
    return abs;
  }

  /** At most `maxBytes` of the file from byte `offset` (only those are read), and its size. */
  async read(rel: string, maxBytes: number, offset = 0): Promise<{ text: string; truncated: boolean; size: number }> {
    const abs = await this.resolve(rel);
    const st = await lstat(abs);
    if (!st.isFile()) throw new PathRefusedError(`${rel}: not a regular file`);
    const file = await open(abs, "r");
    try {
      const buf = Buffer.alloc(Math.max(0, Math.min(maxBytes, st.size - offset)));
      const { bytesRead } = buf.length ? await file.read(buf, 0, buf.length, offset) : { bytesRead: 0 };
      return { text: buf.subarray(0, bytesRead).toString("utf8"), truncated: st.size > offset + maxBytes, size: st.size };
    } finally {
      await file.close();
    }
  }

  async write(rel: string, text: string): Promise<void> {
    const abs = await this.resolve(rel);
    await mkdir(path.dirname(abs), { recursive: true });
    await writeFile(abs, text);
  }

  /** Files under `rel` (relative paths, sorted), at most `limit`; directories end in /. */
  async list(rel: string, limit: number): Promise<{ entries: string[]; more: boolean }> {
    const start = await this.resolve(rel);
    const entries: string[] = [];
    const walk = async (dir: string): Promise<void> => {
      for (const e of (await readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
        if (entries.length > limit) return;
        const abs = path.join(dir, e.name);
        entries.push(path.relative(this.root, abs) + (e.isDirectory() ? "/" : ""));
        if (e.isDirectory()) await walk(abs);
      }
    };
    await walk(start);
    return { entries: entries.slice(0, limit), more: entries.length > limit };
  }

  /** Lines matching `pattern` in the files under `rel`, as `path:line: text`, at most `limit`. */
  async search(pattern: RegExp, rel: string, limit: number, maxFileBytes: number): Promise<{ hits: string[]; more: boolean }> {
    const hits: string[] = [];
    for (const file of (await this.list(rel, 100_000)).entries) {
      if (file.endsWith("/")) continue;
      const { text } = await this.read(file, maxFileBytes).catch(() => ({ text: "" }));
      const lines = text.split("\n");
      for (const [i, line] of lines.entries()) {
        if (!pattern.test(line)) continue;
        if (hits.length === limit) return { hits, more: true };
        hits.push(`${file}:${i + 1}: ${line.slice(0, 400)}`);
      }
    }
    return { hits, more: false };
  }
}

function inside(root: string, p: string): boolean {
  const r = path.relative(root, p);
  return r === "" || (!r.startsWith("..") && !path.isAbsolute(r));
}
