/**
 * Debian binary packages (`.deb`) as sources: how the catalog imports a pinned binary that it
 * cannot build from source offline (the base's C library and shell, examples/sources/debian).
 *
 * A .deb is an `ar` archive (`!<arch>\n`, then 60-byte member headers) whose members are
 * `debian-binary` (`2.0\n`), `control.tar.*` and `data.tar.*` (deb(5)). Its identity is the
 * sha256 the source pins (checked before this module reads a byte), the digest Debian's signed
 * Release -> Packages chain names. `extractDebData` writes the data member, decompressed, as a
 * plain tar next to it; that tar then goes through the same checked unpacking as any source
 * archive (source.ts: no absolute paths, no `..`, no link out of the tree, entry and byte limits).
 *
 * xz and zstd are decompressed by the system's `xz` / `zstd` (Node has neither), reading only
 * the member's bytes, their output capped at the unpack limit; gzip by zlib.
 */
import { spawn } from "node:child_process";
import { createReadStream, createWriteStream } from "node:fs";
import { open } from "node:fs/promises";
import { Transform, type Readable, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createGunzip } from "node:zlib";
import { BuildFailure } from "./errors.ts";

const AR_MAGIC = "!<arch>\n";
const AR_HEADER = 60;

/** One member of an ar archive: its name and where its bytes are. */
export type ArMember = { name: string; offset: number; size: number };

/** Whether `file` starts like a Debian binary package (ar magic, then the `debian-binary` member). */
export async function isDebianPackage(file: string): Promise<boolean> {
  const head = Buffer.alloc(AR_MAGIC.length + 16);
  const fh = await open(file, "r");
  try {
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return bytesRead === head.length && head.toString("latin1", 0, 8) === AR_MAGIC && head.toString("latin1", 8, 24).trimEnd() === "debian-binary";
  } finally {
    await fh.close();
  }
}

/** The members of an ar archive held in `file` (common format, as dpkg writes it). */
export async function arMembers(file: string, what: string): Promise<ArMember[]> {
  const fh = await open(file, "r");
  try {
    const { size: total } = await fh.stat();
    const magic = Buffer.alloc(8);
    await fh.read(magic, 0, 8, 0);
    if (magic.toString("latin1") !== AR_MAGIC) throw new BuildFailure(`${what}: not an ar archive`);
    const members: ArMember[] = [];
    const header = Buffer.alloc(AR_HEADER);
    for (let at = 8; at < total;) {
      const { bytesRead } = await fh.read(header, 0, AR_HEADER, at);
      if (bytesRead !== AR_HEADER || header.toString("latin1", 58, 60) !== "`\n") throw new BuildFailure(`${what}: malformed ar member header at byte ${at}`);
      const name = header.toString("latin1", 0, 16).trimEnd().replace(/\/$/, "");
      const size = Number(header.toString("latin1", 48, 58).trim());
      if (!Number.isSafeInteger(size) || size < 0 || at + AR_HEADER + size > total)
        throw new BuildFailure(`${what}: ar member ${JSON.stringify(name)} has a bad size`);
      members.push({ name, offset: at + AR_HEADER, size });
      at += AR_HEADER + size + (size % 2); // members are 2-byte aligned
    }
    return members;
  } finally {
    await fh.close();
  }
}

/** Counts bytes going through and fails past `max`. */
class Cap extends Transform {
  private seen = 0;
  private readonly max: number;
  private readonly what: string;
  constructor(max: number, what: string) {
    super();
    this.max = max;
    this.what = what;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.seen += chunk.length;
    if (this.seen > this.max) cb(new BuildFailure(`${this.what}: data.tar unpacks to more than ${this.max} bytes (the limit)`));
    else cb(null, chunk);
  }
}

/** The system tool that decompresses a data member, for the formats Node cannot read itself. */
const TOOLS: Record<string, { tool: string; apt: string }> = { "data.tar.xz": { tool: "xz", apt: "xz-utils" }, "data.tar.zst": { tool: "zstd", apt: "zstd" } };

/** Decompresses the member's bytes (`input`) into `out` through `cap`, with zlib or a system tool. */
function decompress(member: string, input: Readable, cap: Cap, out: NodeJS.WritableStream, what: string): Promise<unknown>[] {
  if (member === "data.tar") return [pipeline(input, cap, out)];
  if (member === "data.tar.gz") return [pipeline(input, createGunzip(), cap, out)];
  const t = TOOLS[member];
  if (!t) throw new BuildFailure(`${what}: unsupported data member ${JSON.stringify(member)} (data.tar, .gz, .xz or .zst)`);
  const child = spawn(t.tool, ["-dc"], { stdio: ["pipe", "pipe", "pipe"], env: { PATH: "/usr/bin:/bin", LC_ALL: "C" } });
  let stderr = "";
  child.stderr.on("data", (b: Buffer) => void (stderr = (stderr + b.toString("utf8")).slice(-2000)));
  const exited = new Promise<void>((resolve, reject) => {
    child.on("error", (e: NodeJS.ErrnoException) =>
      reject(new BuildFailure(`${what}: cannot run ${t.tool} to decompress ${member} (${e.code ?? e.message}; apt-get install ${t.apt})`)),
    );
    child.on("close", (code, signal) =>
      code === 0 ? resolve() : reject(new BuildFailure(`${what}: ${t.tool} failed on ${member} (${code ?? signal}): ${stderr.trim()}`)),
    );
  });
  // What the tool says, or the cap, explains a failure better than the broken pipe it causes.
  return [
    exited,
    pipeline(child.stdout, cap, out).catch((e: unknown) => {
      child.kill("SIGKILL");
      throw e;
    }),
    pipeline(input, child.stdin),
  ];
}

/**
 * Writes the package's filesystem tree (its data member, decompressed) as a plain tar at
 * `outTar`, at most `maxBytes` bytes. Throws BuildFailure when `file` is not a well-formed .deb.
 */
export async function extractDebData(file: string, outTar: string, what: string, maxBytes: number): Promise<void> {
  const members = await arMembers(file, what);
  if (members[0]?.name !== "debian-binary") throw new BuildFailure(`${what}: not a Debian binary package (no debian-binary member first)`);
  const data = members.filter((m) => m.name.startsWith("data.tar"));
  const [member] = data;
  if (member === undefined || data.length !== 1) throw new BuildFailure(`${what}: expected exactly one data.tar member, found ${data.length}`);
  if (member.size === 0) throw new BuildFailure(`${what}: ${member.name} is empty`);
  const input = createReadStream(file, { start: member.offset, end: member.offset + member.size - 1 });
  const results = await Promise.allSettled(decompress(member.name, input, new Cap(maxBytes, what), createWriteStream(outTar), what));
  const failures = results.filter((r): r is PromiseRejectedResult => r.status === "rejected").map((r) => r.reason as Error);
  const e = failures.find((f) => f instanceof BuildFailure) ?? failures[0];
  if (e === undefined) return;
  throw e instanceof BuildFailure ? e : new BuildFailure(`${what}: cannot decompress ${member.name}: ${e.message}`, { cause: e });
}
