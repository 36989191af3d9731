import { readFile } from "node:fs/promises";
import { test } from "node:test";
import assert from "node:assert/strict";
import { ElfError, parseElf, EM_X86_64 } from "./elf.ts";
import { Rootfs, runtimeProblems } from "./runtime-closure.ts";

/** The host's /bin/sh: a dynamically linked glibc program on Debian (dash). */
const sh = await readFile("/bin/sh");
const config = { entrypoint: ["/bin/sh"], cmd: [], env: { PATH: "/usr/bin:/bin" }, user: "65532", workdir: "/", annotations: {} };

test("the ELF reader finds the loader and the needed libraries of a real program", () => {
  const elf = parseElf(sh);
  assert.equal(elf.bits, 64);
  assert.equal(elf.machine, EM_X86_64);
  assert.equal(elf.interpreter, "/lib64/ld-linux-x86-64.so.2");
  assert.ok(elf.needed.includes("libc.so.6"), elf.needed.join(","));
});

test("malformed ELF input is an ElfError, never a crash", () => {
  assert.throws(() => parseElf(Buffer.from("not elf")), ElfError);
  for (const cut of [20, 64, 200, 1000]) assert.throws(() => parseElf(sh.subarray(0, cut)), ElfError);
  const bad = Buffer.from(sh);
  bad.writeBigUInt64LE(0xffffffffn, 32); // e_phoff far past the end
  assert.throws(() => parseElf(bad), /outside the file/);
});

test("a program's loader and libraries must be in the image, found through symlinks as the loader would", () => {
  const fs = new Rootfs();
  fs.add("bin", { type: "directory", mode: 0o755, from: "sh" });
  fs.add("bin/sh", { type: "file", mode: 0o755, content: sh, from: "sh@1" });
  assert.deepEqual(runtimeProblems(fs, config), [
    "entrypoint /bin/sh, from package sh@1: needs its loader /lib64/ld-linux-x86-64.so.2, which is not in the image",
  ]);
  fs.add("lib64", { type: "symlink", mode: 0o777, linkname: "lib/x86_64-linux-gnu", from: "libc@1" });
  fs.add("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", { type: "file", mode: 0o755, content: Buffer.from("\x7fELF"), from: "libc@1" });
  assert.deepEqual(runtimeProblems(fs, config), [
    "entrypoint /bin/sh, from package sh@1: its loader /lib64/ld-linux-x86-64.so.2 is not a well-formed ELF program (bad ELF class undefined)",
    "entrypoint /bin/sh, from package sh@1: needs the library libc.so.6, which is not in the image (searched /lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/usr/lib64:/lib:/usr/lib)",
    "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2, from package libc@1: is a malformed ELF file (bad ELF class undefined)",
  ]);
  fs.add("lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", { type: "file", mode: 0o755, content: sh, from: "libc@1" });
  fs.add("lib/x86_64-linux-gnu/libc.so.6", { type: "file", mode: 0o644, from: "libc@1" });
  assert.deepEqual(runtimeProblems(fs, config), []);
});

test("scripts need their interpreter; programs must be executable by the image's user", () => {
  const fs = new Rootfs();
  fs.add("usr/bin/motd", { type: "file", mode: 0o755, content: Buffer.from("#!/bin/sh\necho hi\n"), from: "motd@1" });
  fs.add("usr/bin/tool", { type: "file", mode: 0o755, content: Buffer.from("#!/usr/bin/env python3\n"), from: "tool@1" });
  fs.add("usr/bin/env", { type: "file", mode: 0o750, content: Buffer.from("#!/bin/sh\n"), from: "env@1" });
  assert.deepEqual(runtimeProblems(fs, { ...config, entrypoint: ["motd"] }), [
    "entrypoint motd (/usr/bin/motd), from package motd@1: needs its interpreter /bin/sh: /bin/sh is not in the image",
    "/usr/bin/env, from package env@1: is not executable by the image's user (mode 750)",
    "/usr/bin/tool, from package tool@1: needs its interpreter /usr/bin/env, from package env@1: is not executable by the image's user (mode 750)",
    "/usr/bin/tool, from package tool@1: needs python3 (through /usr/bin/env), which is not on the image's PATH (/usr/bin:/bin)",
  ]);
  assert.deepEqual(runtimeProblems(new Rootfs(), { ...config, entrypoint: [] }), ["the image has neither an entrypoint nor a cmd: nothing to start"]);
});
