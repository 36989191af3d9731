/**
 * Test support (imported by core's *.test.ts only): a private nats-server with JetStream on a
 * free loopback port, its store in a temporary directory, so that a unit test of a JetStream
 * client owns its server, can stop it, and depends on no shared one or its credentials.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer, Socket } from "node:net";
import os from "node:os";
import path from "node:path";

export type TestNatsServer = { url: string; stop(): Promise<void> };

const binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p)) ?? "nats-server";

export async function startTestNatsServer(): Promise<TestNatsServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-core-nats-"));
  const port = await freePort();
  const child = spawn(binary, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir], { stdio: "ignore" });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    child.kill("SIGKILL");
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };
  // Bounded: 100 tries of 50 ms.
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) break;
    if (await answers(port)) return { url: `nats://127.0.0.1:${port}`, stop };
    await new Promise((r) => setTimeout(r, 50));
  }
  await stop();
  throw new Error(`nats-server (${binary}) did not start on 127.0.0.1:${port}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const address = s.address();
      s.close(() => (typeof address === "object" && address ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.connect(port, "127.0.0.1");
  });
}
