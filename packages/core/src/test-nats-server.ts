/**
 * Test support (imported by core's *.test.ts only): a private nats-server with JetStream on a
 * free loopback port, its store in a temporary directory, so that a unit test of a JetStream
 * client owns its server, can stop it, and depends on no shared one or its credentials.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, Socket } from "node:net";
import os from "node:os";
import path from "node:path";

export type TestNatsServer = { url: string; stop(): Promise<void> };

const binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].find((p) => existsSync(p)) ?? "nats-server";

export async function startTestNatsServer(): Promise<TestNatsServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-core-nats-"));
  const port = await freePort();
  return started(spawn(binary, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", dir], { stdio: "ignore" }), port, dir);
}

/**
 * A cluster of `size` nats-servers with JetStream (no authentication, loopback only), for what
 * only a replicated stream shows. Resolves once every node answers clients; the JetStream meta
 * leader is elected a moment later, so a first stream may need a retry.
 */
export async function startTestNatsCluster(size = 3): Promise<{ urls: string[]; stop(): Promise<void> }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-core-nats-cluster-"));
  const nodes: { port: number; route: number }[] = [];
  for (let i = 0; i < size; i++) nodes.push({ port: await freePort(), route: await freePort() });
  const settled = await Promise.allSettled(
    nodes.map((node, i) => {
      const routes = nodes.filter((other) => other !== node).map((other) => `"nats-route://127.0.0.1:${other.route}"`);
      const config = path.join(dir, `n${i}.conf`);
      writeFileSync(
        config,
        `server_name: n${i}\njetstream { store_dir: "${path.join(dir, `n${i}`)}" }\ncluster { name: test, listen: "127.0.0.1:${node.route}", routes: [${routes.join(", ")}] }\n`,
      );
      return started(spawn(binary, ["-c", config, "-a", "127.0.0.1", "-p", String(node.port)], { stdio: "ignore" }), node.port);
    }),
  );
  const up = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const stop = async () => {
    await Promise.all(up.map((s) => s.stop()));
    rmSync(dir, { recursive: true, force: true });
  };
  const failed = settled.find((s) => s.status === "rejected");
  if (failed) {
    await stop();
    throw failed.reason;
  }
  return { urls: up.map((s) => s.url), stop };
}

/** `child` as a TestNatsServer once it answers on `port` (its store `dir` removed at its stop). */
async function started(child: ChildProcess, port: number, dir?: string): Promise<TestNatsServer> {
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const stop = async () => {
    child.kill("SIGKILL");
    await exited;
    if (dir) rmSync(dir, { recursive: true, force: true });
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
