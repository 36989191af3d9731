/**
 * Config: every setting Homeostat reads from the environment, with its default, in one place.
 *
 * Services call `loadConfig()` once at start-up; a bad value stops the process with a message
 * naming the variable instead of surfacing later as a confusing runtime error.
 */
import path from "node:path";
import { z } from "zod";

const port = z.coerce.number().int().min(0).max(65535);
const positiveMs = z.coerce.number().int().positive();

const schema = z.object({
  NATS_URL: z.string().default("nats://127.0.0.1:4222"),
  REDIS_URL: z.string().default("redis://127.0.0.1:6379"),
  /** Prefix of every stream, bucket, subject and Redis key: lets several factories (or tests) share servers. */
  HOMEOSTAT_PREFIX: z.string().regex(/^[a-zA-Z][a-zA-Z0-9_]{0,31}$/, "letters, digits and _ only, starting with a letter").default("hs"),
  /** Region name; part of every subject so that more regions can join without renaming anything. */
  HOMEOSTAT_REGION: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/, "lower-case letters, digits and - only").default("local"),
  HOMEOSTAT_DATA: z.string().default(".homeostat/data"),
  HOMEOSTAT_CATALOG: z.string().default("examples/catalog"),
  HOMEOSTAT_INGEST_HOST: z.string().default("127.0.0.1"),
  HOMEOSTAT_INGEST_PORT: port.default(8080),
  HOMEOSTAT_GRPC_ADDR: z.string().default("127.0.0.1:50051"),
  /** Registry-style reference the signer writes into signatures, e.g. registry.example/homeostat. */
  HOMEOSTAT_IMAGE_REPOSITORY: z.string().default("localhost/homeostat"),
  /** An OCI registry (http(s)://host[:port]) the signer pushes each signed image, signature and attestations to. */
  HOMEOSTAT_REGISTRY_URL: z.string().regex(/^https?:\/\/[^/\s]+\/?$/, "http(s)://host[:port]").optional(),
  /** Signing key: a PEM file, or the PEM text itself; generated into the data directory on first run when unset. */
  HOMEOSTAT_SIGNING_KEY: z.string().optional(),
  /** Public keys trusted for verification besides the signing key (rotation): PEM files, comma-separated. */
  HOMEOSTAT_TRUSTED_KEYS: z.string().default(""),
  HOMEOSTAT_SOURCE_DATE_EPOCH: z.coerce.number().int().nonnegative().default(0),
  HOMEOSTAT_BUILD_TIMEOUT_MS: positiveMs.default(10 * 60_000),
  HOMEOSTAT_LEASE_MS: positiveMs.default(30_000),
  /** How often every catalog key is enqueued at resync priority. */
  HOMEOSTAT_RESYNC_MS: positiveMs.default(10 * 60_000),
  HOMEOSTAT_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(4),
  /** Largest source archive the builder downloads. */
  HOMEOSTAT_MAX_SOURCE_BYTES: z.coerce.number().int().positive().default(512 * 1024 * 1024),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().optional(),
});

export type Config = Readonly<{
  natsUrl: string;
  redisUrl: string;
  prefix: string;
  region: string;
  dataDir: string;
  catalogDir: string;
  ingest: { host: string; port: number };
  grpcAddr: string;
  imageRepository: string;
  registryUrl: string | undefined;
  /** Exactly one of these when a signing key is configured. */
  signingKeyPath: string | undefined;
  signingKeyPem: string | undefined;
  trustedKeyPaths: string[];
  sourceDateEpoch: number;
  buildTimeoutMs: number;
  leaseMs: number;
  resyncMs: number;
  concurrency: number;
  maxSourceBytes: number;
  otlpEndpoint: string | undefined;
}>;

export class ConfigError extends Error {}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  return {
    natsUrl: e.NATS_URL,
    redisUrl: e.REDIS_URL,
    prefix: e.HOMEOSTAT_PREFIX,
    region: e.HOMEOSTAT_REGION,
    dataDir: path.resolve(e.HOMEOSTAT_DATA),
    catalogDir: path.resolve(e.HOMEOSTAT_CATALOG),
    ingest: { host: e.HOMEOSTAT_INGEST_HOST, port: e.HOMEOSTAT_INGEST_PORT },
    grpcAddr: e.HOMEOSTAT_GRPC_ADDR,
    imageRepository: e.HOMEOSTAT_IMAGE_REPOSITORY,
    registryUrl: e.HOMEOSTAT_REGISTRY_URL,
    ...signingKey(e.HOMEOSTAT_SIGNING_KEY),
    trustedKeyPaths: e.HOMEOSTAT_TRUSTED_KEYS.split(",").map((p) => p.trim()).filter((p) => p !== "").map((p) => path.resolve(p)),
    sourceDateEpoch: e.HOMEOSTAT_SOURCE_DATE_EPOCH,
    buildTimeoutMs: e.HOMEOSTAT_BUILD_TIMEOUT_MS,
    leaseMs: e.HOMEOSTAT_LEASE_MS,
    resyncMs: e.HOMEOSTAT_RESYNC_MS,
    concurrency: e.HOMEOSTAT_CONCURRENCY,
    maxSourceBytes: e.HOMEOSTAT_MAX_SOURCE_BYTES,
    otlpEndpoint: e.OTEL_EXPORTER_OTLP_ENDPOINT,
  };
}

/** HOMEOSTAT_SIGNING_KEY holds a path, or (for secrets injected as variables) the PEM itself. */
function signingKey(value: string | undefined): { signingKeyPath: string | undefined; signingKeyPem: string | undefined } {
  if (value === undefined || value.trim() === "") return { signingKeyPath: undefined, signingKeyPem: undefined };
  return value.trimStart().startsWith("-----BEGIN") ? { signingKeyPath: undefined, signingKeyPem: value } : { signingKeyPath: value, signingKeyPem: undefined };
}
