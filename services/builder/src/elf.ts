/**
 * A small ELF reader: what a program needs from the filesystem before its first instruction
 * runs, read from the file itself (no readelf, no ldd: the builder never runs what it inspects).
 *
 * From the ELF header: class (32/64-bit), byte order, type and machine. From the program
 * headers: PT_INTERP (the dynamic loader's path) and PT_DYNAMIC, whose entries give DT_NEEDED
 * (shared libraries by name), DT_RPATH / DT_RUNPATH (extra search directories) and DT_SONAME,
 * their strings read from DT_STRTAB, a virtual address mapped to a file offset through the
 * PT_LOAD segment that holds it. Anything out of bounds is an ElfError, never a crash.
 */

export const EM_X86_64 = 62;

export type ElfInfo = {
  bits: 32 | 64;
  littleEndian: boolean;
  /** e_type: 2 executable, 3 shared object (also position-independent executables). */
  type: number;
  machine: number;
  /** The program interpreter (PT_INTERP), for a dynamically linked program. */
  interpreter?: string;
  needed: string[];
  rpath: string[];
  runpath: string[];
  soname?: string;
};

export class ElfError extends Error {
  override name = "ElfError";
}

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const PT_INTERP = 3;
const DT_NULL = 0;
const DT_NEEDED = 1;
const DT_STRTAB = 5;
const DT_SONAME = 14;
const DT_RPATH = 15;
const DT_RUNPATH = 29;

export function isElf(data: Uint8Array): boolean {
  return data.length >= 4 && data[0] === 0x7f && data[1] === 0x45 && data[2] === 0x4c && data[3] === 0x46;
}

/** Machine names for messages (e_machine). */
export function machineName(machine: number): string {
  return ({ 3: "i386", 40: "arm", 62: "x86-64", 183: "aarch64", 243: "riscv" } as Record<number, string>)[machine] ?? `machine ${machine}`;
}

export function parseElf(data: Buffer): ElfInfo {
  if (!isElf(data)) throw new ElfError("not an ELF file");
  const cls = data[4];
  const enc = data[5];
  if (cls !== 1 && cls !== 2) throw new ElfError(`bad ELF class ${cls}`);
  if (enc !== 1 && enc !== 2) throw new ElfError(`bad ELF data encoding ${enc}`);
  const bits = cls === 2 ? 64 : 32;
  const le = enc === 1;
  const need = (off: number, len: number, what: string): void => {
    if (!Number.isSafeInteger(off) || off < 0 || off + len > data.length) throw new ElfError(`${what} lies outside the file`);
  };
  const u16 = (o: number): number => (need(o, 2, "a field"), le ? data.readUInt16LE(o) : data.readUInt16BE(o));
  const u32 = (o: number): number => (need(o, 4, "a field"), le ? data.readUInt32LE(o) : data.readUInt32BE(o));
  const word = (o: number): number => {
    if (bits === 32) return u32(o);
    need(o, 8, "a field");
    const v = le ? data.readBigUInt64LE(o) : data.readBigUInt64BE(o);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ElfError("an offset or address is too large");
    return Number(v);
  };
  const type = u16(16);
  const machine = u16(18);
  const phoff = bits === 64 ? word(32) : u32(28);
  const phentsize = u16(bits === 64 ? 54 : 42);
  const phnum = u16(bits === 64 ? 56 : 44);
  if (phnum > 0 && phentsize < (bits === 64 ? 56 : 32)) throw new ElfError(`program header size ${phentsize} is too small`);
  need(phoff, phnum * phentsize, "the program header table");

  type Segment = { type: number; offset: number; vaddr: number; filesz: number };
  const segments: Segment[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    segments.push(
      bits === 64
        ? { type: u32(at), offset: word(at + 8), vaddr: word(at + 16), filesz: word(at + 32) }
        : { type: u32(at), offset: u32(at + 4), vaddr: u32(at + 8), filesz: u32(at + 16) },
    );
  }
  const info: ElfInfo = { bits, littleEndian: le, type, machine, needed: [], rpath: [], runpath: [] };

  const interp = segments.find((s) => s.type === PT_INTERP);
  if (interp) {
    need(interp.offset, interp.filesz, "PT_INTERP");
    info.interpreter = cString(data, interp.offset, interp.offset + interp.filesz);
  }
  const dynamic = segments.find((s) => s.type === PT_DYNAMIC);
  if (!dynamic) return info;
  need(dynamic.offset, dynamic.filesz, "PT_DYNAMIC");
  const entrySize = bits === 64 ? 16 : 8;
  const tags: { tag: number; value: number }[] = [];
  for (let at = dynamic.offset; at + entrySize <= dynamic.offset + dynamic.filesz; at += entrySize) {
    const tag = bits === 64 ? word(at) : u32(at);
    if (tag === DT_NULL) break;
    tags.push({ tag, value: bits === 64 ? word(at + 8) : u32(at + 4) });
  }
  const strtabAddr = tags.find((t) => t.tag === DT_STRTAB)?.value;
  if (strtabAddr === undefined) return info;
  const load = segments.find((s) => s.type === PT_LOAD && strtabAddr >= s.vaddr && strtabAddr < s.vaddr + s.filesz);
  if (!load) throw new ElfError("DT_STRTAB is in no loaded segment");
  const strtab = load.offset + (strtabAddr - load.vaddr);
  const str = (off: number): string => {
    need(strtab + off, 1, "a dynamic string");
    return cString(data, strtab + off, data.length);
  };
  for (const t of tags) {
    if (t.tag === DT_NEEDED) info.needed.push(str(t.value));
    else if (t.tag === DT_RPATH) info.rpath.push(...str(t.value).split(":").filter(Boolean));
    else if (t.tag === DT_RUNPATH) info.runpath.push(...str(t.value).split(":").filter(Boolean));
    else if (t.tag === DT_SONAME) info.soname = str(t.value);
  }
  return info;
}

function cString(data: Buffer, from: number, to: number): string {
  const end = data.indexOf(0, from);
  return data.toString("utf8", from, end === -1 || end > to ? to : end);
}
