/**
 * Test harness: every test gets its own prefix (so its own streams, buckets and Redis keys on
 * the shared NATS and Redis, or on servers of its own when none is configured) and removes
 * exactly what it created, never anything else.
 */
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { randomBytes } from "node:crypto";
import { Redis } from "ioredis";
import { advisoryBucket } from "@homeostat/catalog";
import { bucketNames, connectNats, ensureTopology, eventLedgerNames, loadConfig, stages, type Buckets, type Config, type Nats } from "@homeostat/core";

export const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
export const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";

export type TestEnv = {
  prefix: string;
  dir: string;
  config: Config;
  env: Record<string, string>;
  nats: Nats;
  buckets: Buckets;
  redis: Redis;
  cleanup(): Promise<void>;
};

export async function testEnv(extra: Record<string, string> = {}): Promise<TestEnv> {
  const prefix = `t${randomBytes(5).toString("hex")}`;
  const dir = mkdtempSync(path.join(os.tmpdir(), "homeostat-test-"));
  const env = { NATS_URL: natsUrl, REDIS_URL: redisUrl, HOMEOSTAT_PREFIX: prefix, HOMEOSTAT_DATA: path.join(dir, "data"), ...extra };
  const config = loadConfig(env);
  const nats = await connectNats(config, `test-${prefix}`);
  const buckets = await ensureTopology(nats, config);
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 });
  return {
    prefix, dir, config, env, nats, buckets, redis,
    cleanup: async () => {
      for (const stage of stages) await nats.jsm.streams.delete(nats.topology.stream(stage)).catch(() => {});
      for (const b of bucketNames) await nats.jsm.streams.delete(`KV_${nats.topology.bucket(b)}`).catch(() => {});
      await nats.jsm.streams.delete(`KV_${advisoryBucket(nats)}`).catch(() => {});
      await nats.jsm.streams.delete(eventLedgerNames(nats.topology).stream).catch(() => {});
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
      redis.disconnect();
      await nats.nc.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
