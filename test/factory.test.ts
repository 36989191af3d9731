/**
 * The local launcher (scripts/factory.ts) leaves nothing behind when it dies: a demo or test
 * that is SIGKILLed takes its nats-server and redis-server with it (they are told by the kernel,
 * through util-linux's setpriv, when their parent dies).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { once } from "node:events";
import { portAnswers, repoRoot, waitFor } from "../scripts/factory.ts";

test("a launcher killed with SIGKILL leaves no server running", { timeout: 60_000 }, async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-launcher-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const script = `
    import { startLocalServers } from ${JSON.stringify(path.join(repoRoot, "scripts", "factory.ts"))};
    const s = await startLocalServers(${JSON.stringify(dir)}, { prefix: "tlaunch", region: "local" });
    console.log(JSON.stringify({ nats: s.natsUrl, redis: s.redisUrl }));
    setInterval(() => {}, 1000);
  `;
  const launcher = spawn(process.execPath, ["--input-type=module", "-e", script], { cwd: repoRoot, stdio: ["ignore", "pipe", "inherit"] });
  const [line] = (await once(launcher.stdout!, "data")) as [Buffer];
  const urls = JSON.parse(line.toString("utf8")) as { nats: string; redis: string };
  const ports = [urls.nats, urls.redis].map((u) => Number(new URL(u).port));
  for (const port of ports) assert.ok(await portAnswers(port), `port ${port} answers while the launcher lives`);

  launcher.kill("SIGKILL");
  await once(launcher, "exit");
  for (const port of ports) await waitFor(`the server on port ${port} to end with its launcher`, async () => !(await portAnswers(port)), 15_000, 100);
});
