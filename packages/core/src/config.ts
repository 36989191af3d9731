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
/** The trace samplers OTEL_TRACES_SAMPLER may name (the OpenTelemetry specification's built-in ones). */
export const traceSamplers = [
  "always_on",
  "always_off",
  "traceidratio",
  "parentbased_always_on",
  "parentbased_always_off",
  "parentbased_traceidratio",
] as const;
/** An optional URL; empty counts as unset (a variable left blank in a manifest). */
const optionalUrl = z.preprocess((v) => (v === "" ? undefined : v), z.url().optional());

const schema = z.object({
  NATS_URL: z.string().default("nats://127.0.0.1:4222"),
  /** This process's NATS identity: a file holding its nkey seed (mode 0600; `pnpm nats-config` writes one per service). Unset: no credentials, which an authenticated server refuses. */
  NATS_NKEY_SEED_FILE: z.string().min(1).optional(),
  /** TLS to NATS: the CA (PEM file) that signed the server's certificate; set: the connection must be TLS. */
  NATS_TLS_CA: z.string().min(1).optional(),
  /** A client certificate and its key (PEM files) for servers that verify clients (`verify: true`); both or neither, with NATS_TLS_CA. */
  NATS_TLS_CERT: z.string().min(1).optional(),
  NATS_TLS_KEY: z.string().min(1).optional(),
  REDIS_URL: z.string().default("redis://127.0.0.1:6379"),
  /**
   * How often the queue service checks that Redis still holds the read model it built (rebuilding
   * it from the state bucket when not), and how long a Redis command may take before a read is
   * answered from the state bucket instead.
   */
  HOMEOSTAT_READ_MODEL_CHECK_MS: positiveMs.default(1_000),
  /** Prefix of every stream, bucket, subject and Redis key: lets several factories (or tests) share servers. */
  HOMEOSTAT_PREFIX: z
    .string()
    .regex(/^[a-zA-Z][a-zA-Z0-9_]{0,31}$/, "letters, digits and _ only, starting with a letter")
    .default("hs"),
  /** Region name: where this process runs; with no HOMEOSTAT_FABRIC, also the region part of every subject. */
  HOMEOSTAT_REGION: z
    .string()
    .regex(/^[a-z][a-z0-9-]{0,31}$/, "lower-case letters, digits and - only")
    .default("local"),
  /**
   * The JetStream fabric this region shares with others (one NATS cluster stretched over the
   * regions, deploy/README.md): the region part of every subject and run-record key, the same in
   * every region of the fabric, so that there is one work queue and one lease per key. Unset: the
   * region's own name (a single-region factory is its own fabric).
   */
  HOMEOSTAT_FABRIC: z
    .string()
    .regex(/^[a-z][a-z0-9-]{0,31}$/, "lower-case letters, digits and - only")
    .optional(),
  /** Replicas of every stream and KV bucket (3 on a fabric over three regions; the servers' unique_tag puts each in another region). */
  HOMEOSTAT_JS_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  HOMEOSTAT_DATA: z.string().default(".homeostat/data"),
  /** The catalog: a directory, or `git+<repository path or URL>#<ref>[:<subdirectory>]` (catalog-source.ts). */
  HOMEOSTAT_CATALOG: z.string().min(1).default("examples/catalog"),
  /** How often the reconciler and ingest look for a changed catalog (a git ref is fetched that often). */
  HOMEOSTAT_CATALOG_RELOAD_MS: positiveMs.default(30_000),
  HOMEOSTAT_INGEST_HOST: z.string().default("127.0.0.1"),
  HOMEOSTAT_INGEST_PORT: port.default(8080),
  /** Bearer tokens accepted on ingest's write endpoints, comma-separated; unset: writes are open only on a loopback listener. */
  HOMEOSTAT_INGEST_TOKENS: z.string().default(""),
  /** The secret of the GitHub webhook (X-Hub-Signature-256); unset: every GitHub delivery is refused. */
  HOMEOSTAT_GITHUB_WEBHOOK_SECRET: z.string().optional(),
  /** GitHub `release` actions that count as a release, comma-separated. */
  HOMEOSTAT_GITHUB_RELEASE_ACTIONS: z
    .string()
    .regex(/^[a-z_]+(,[a-z_]+)*$/, "comma-separated action names")
    .default("published,released"),
  /** Whether GitHub pre-releases count (then add "prereleased" to the actions to hear them early). */
  HOMEOSTAT_GITHUB_PRERELEASES: z.enum(["true", "false"]).default("false"),
  /** Requests per minute one client (a bearer token, else an address) may make to ingest. */
  HOMEOSTAT_INGEST_RATE_LIMIT: z.coerce.number().int().positive().default(60_000),
  /** How long accepted events stay readable (GET /v1/events/:id) and redeliveries are recognised. */
  HOMEOSTAT_INGEST_RETENTION_MS: positiveMs.default(7 * 24 * 3_600_000),
  /** Size and count bounds of the audit stream besides its age; when full, new events get 503 until records age out. */
  HOMEOSTAT_INGEST_RETENTION_MAX_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(1024 * 1024 * 1024),
  HOMEOSTAT_INGEST_RETENTION_MAX_MSGS: z.coerce.number().int().positive().default(5_000_000),
  /** Ingest edge timeouts: complete headers, the whole request with its body, an idle socket, an idle keep-alive connection. */
  HOMEOSTAT_INGEST_HEADERS_TIMEOUT_MS: positiveMs.default(10_000),
  HOMEOSTAT_INGEST_REQUEST_TIMEOUT_MS: positiveMs.default(60_000),
  HOMEOSTAT_INGEST_IDLE_TIMEOUT_MS: positiveMs.default(30_000),
  HOMEOSTAT_INGEST_KEEP_ALIVE_TIMEOUT_MS: positiveMs.default(65_000),
  /** Requests per minute one client address may make before it is authenticated (HOMEOSTAT_INGEST_RATE_LIMIT applies per principal after). */
  HOMEOSTAT_INGEST_ADDRESS_RATE_LIMIT: z.coerce.number().int().positive().default(60_000),
  /** Failed authentications per minute one client address may make; past it every request from it is 429 until the minute ends. */
  HOMEOSTAT_INGEST_AUTH_FAILURE_LIMIT: z.coerce.number().int().positive().default(30),
  /** Ingest processes sharing the port (node:cluster); 1 = a single process. See services/ingest/README.md. */
  HOMEOSTAT_INGEST_WORKERS: z.coerce.number().int().min(1).max(64).default(1),
  /** OSV advisories to follow: a directory of OSV JSON files, or an http(s) base with modified_id.csv (OSV's bucket layout). */
  HOMEOSTAT_OSV_SOURCE: z.string().optional(),
  HOMEOSTAT_OSV_POLL_MS: positiveMs.default(5 * 60_000),
  /** How far in the future an OSV `modified` may lie (clock skew); a later one is refused, and the poller's cursor never passes now + this. */
  HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS: positiveMs.default(24 * 3_600_000),
  HOMEOSTAT_GRPC_ADDR: z.string().default("127.0.0.1:50051"),
  /** Status API TLS: certificate chain and private key (PEM files), both or neither; required beyond loopback. */
  HOMEOSTAT_GRPC_TLS_CERT: z.string().min(1).optional(),
  HOMEOSTAT_GRPC_TLS_KEY: z.string().min(1).optional(),
  /** CA (PEM file) whose client certificates the status API requires (mTLS); unset: no client certificate asked. */
  HOMEOSTAT_GRPC_TLS_CLIENT_CA: z.string().min(1).optional(),
  /** Status API bearer tokens, comma-separated `name:role:sha256-hex-of-token` (role read or write); never the tokens themselves. */
  HOMEOSTAT_GRPC_TOKENS: z.string().default("").transform(parseGrpcTokens),
  /** Whether the status API's read methods need a token: `token` or `none`; unset: none on a loopback address, else token. */
  HOMEOSTAT_GRPC_READ_AUTH: z.enum(["token", "none"]).optional(),
  /** Development only: let the status API start beyond loopback without TLS or tokens (it logs a warning); the CLI may then send a token in plaintext. */
  HOMEOSTAT_GRPC_INSECURE: z.enum(["true", "false"]).default("false"),
  /** The CLI's bearer token for the status API, or a file holding it (the file is safer: the environment leaks into child processes). */
  HOMEOSTAT_TOKEN: z.string().min(1).optional(),
  HOMEOSTAT_TOKEN_FILE: z.string().min(1).optional(),
  /** The CLI speaks TLS to the status API: trusting this CA (PEM file), or with `HOMEOSTAT_GRPC_TLS=true` the system's roots. */
  HOMEOSTAT_GRPC_CA: z.string().min(1).optional(),
  HOMEOSTAT_GRPC_TLS: z.enum(["true", "false"]).default("false"),
  /** The CLI's client certificate and key (PEM files) for mTLS. */
  HOMEOSTAT_GRPC_CERT: z.string().min(1).optional(),
  HOMEOSTAT_GRPC_KEY: z.string().min(1).optional(),
  /** Registry-style reference the signer writes into signatures, e.g. registry.example/homeostat. */
  HOMEOSTAT_IMAGE_REPOSITORY: z.string().default("localhost/homeostat"),
  /** An OCI registry (http(s)://host[:port]) the signer pushes each signed image, signature and attestations to. */
  HOMEOSTAT_REGISTRY_URL: z
    .string()
    .regex(/^https?:\/\/[^/\s]+\/?$/, "http(s)://host[:port]")
    .optional(),
  /** Signing key: a PEM file, or the PEM text itself; generated into HOMEOSTAT_SIGNER_DIR on first run when unset. */
  HOMEOSTAT_SIGNING_KEY: z.string().optional(),
  /** The signer's own directory (0700; its generated key 0600): a volume or Secret mounted into the signer alone. Default <data>/signer. */
  HOMEOSTAT_SIGNER_DIR: z.string().min(1).optional(),
  /** The builder's identity key, which signs build results: a PEM file or the PEM text; generated into HOMEOSTAT_BUILDER_DIR when unset. */
  HOMEOSTAT_BUILDER_KEY: z.string().optional(),
  /** The builder's own directory (0700; its generated key 0600). Default <data>/builder. */
  HOMEOSTAT_BUILDER_DIR: z.string().min(1).optional(),
  /** Public keys of the builders whose results the signer signs: PEM files, comma-separated. Default: <builder dir>/builder.pub. */
  HOMEOSTAT_TRUSTED_BUILDER_KEYS: z.string().default(""),
  /** Development only: the signer also signs builds whose steps ran unsandboxed (isolation none), and says so in what it signs. */
  HOMEOSTAT_SIGN_UNSANDBOXED: z.enum(["true", "false"]).default("false"),
  /**
   * How many signed versions of an image its local OCI layout keeps: the one just signed (the
   * key's actual state) and those signed before it, latest first. Older ones go with their
   * signature, attestations and the blobs nothing kept holds; the registry keeps what was pushed.
   */
  HOMEOSTAT_IMAGE_VERSIONS_KEPT: z.coerce.number().int().min(1).default(3),
  /** Public keys trusted for verification besides the signing key (rotation): PEM files, comma-separated. */
  HOMEOSTAT_TRUSTED_KEYS: z.string().default(""),
  HOMEOSTAT_SOURCE_DATE_EPOCH: z.coerce.number().int().nonnegative().default(0),
  HOMEOSTAT_BUILD_TIMEOUT_MS: positiveMs.default(10 * 60_000),
  /**
   * The builder's artifact store keeps what the keys' statuses name and anything younger than
   * this (services/builder/src/store-collect.ts): at least the build timeout, since a build's
   * blobs are named by no status until its result is signed; a day rides out a signer outage.
   */
  HOMEOSTAT_STORE_GRACE_MS: positiveMs.default(24 * 3_600_000),
  /** How often each builder collects the store. */
  HOMEOSTAT_STORE_COLLECT_INTERVAL_MS: z.coerce.number().int().min(1_000).default(3_600_000),
  HOMEOSTAT_LEASE_MS: positiveMs.default(30_000),
  /** Ack wait of the build and sign consumers, kept alive by msg.working() while work runs: how soon a dead builder's or signer's work is taken over. */
  HOMEOSTAT_STAGE_ACK_WAIT_MS: z.coerce.number().int().min(1_000).default(10_000),
  /** How many times a build that failed for its inputs (a step, a test, a checksum) is retried with backoff before the key is dead-lettered. */
  HOMEOSTAT_BUILD_FAILURE_RETRIES: z.coerce.number().int().min(0).max(100).default(2),
  /** Backoff of those retries: base × 2^(failure-1), capped at the queue's HOMEOSTAT_QUEUE_BACKOFF_MAX_MS. */
  HOMEOSTAT_BUILD_FAILURE_BACKOFF_MS: positiveMs.default(30_000),
  /** How many times a build may take its builder down with it before the key is dead-lettered. */
  HOMEOSTAT_BUILD_CRASH_LIMIT: z.coerce.number().int().min(1).max(100).default(3),
  /** Start-up steps that fail on the environment (disk, keys) are retried with backoff up to this delay between tries, never by exiting. */
  HOMEOSTAT_STARTUP_BACKOFF_MAX_MS: positiveMs.default(30_000),
  /**
   * The health endpoint every service serves when set (GET /healthz: alive; GET /readyz: ready, else 503 with why). Unset:
   * none. Unauthenticated, so on loopback unless HOMEOSTAT_HEALTH_HOST says otherwise (0.0.0.0 inside a pod, for its probes).
   */
  HOMEOSTAT_HEALTH_PORT: z.preprocess((v) => (v === "" ? undefined : v), port.optional()),
  HOMEOSTAT_HEALTH_HOST: z.string().min(1).default("127.0.0.1"),
  /** How often each service instance writes its heartbeat (bucket `<prefix>_services`): stale after 3 missed, gone after 6. */
  HOMEOSTAT_HEARTBEAT_MS: positiveMs.default(5_000),
  /** Failed runs of a key before it moves to the dead letters. */
  HOMEOSTAT_QUEUE_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(1000).default(10),
  /** Retry backoff: base × 2^(attempt-1), capped, with jitter. */
  HOMEOSTAT_QUEUE_BACKOFF_BASE_MS: positiveMs.default(30_000),
  HOMEOSTAT_QUEUE_BACKOFF_MAX_MS: positiveMs.default(10 * 60_000),
  /** The longest not-before floor a reconcile may ask for. */
  HOMEOSTAT_QUEUE_MAX_FLOOR_MS: positiveMs.default(6 * 3_600_000),
  /** On SIGTERM, how long in-flight runs may still finish before they are handed back. */
  HOMEOSTAT_QUEUE_DRAIN_MS: positiveMs.default(5_000),
  /**
   * An advisory's package runs once no further advisory for it came for this long (0: at once),
   * and at the latest HOMEOSTAT_ADVISORY_SETTLE_MAX_MS after the first: a feed import of
   * thousands of advisories for a few packages then costs each package one run, not one per
   * round of them (workqueue merge.ts, settle). Releases, catalog changes and people never wait.
   */
  HOMEOSTAT_ADVISORY_SETTLE_MS: z.coerce.number().int().min(0).max(60_000).default(1_000),
  HOMEOSTAT_ADVISORY_SETTLE_MAX_MS: positiveMs.max(3_600_000).default(30_000),
  /** How often every catalog key is enqueued at resync priority. */
  HOMEOSTAT_RESYNC_MS: positiveMs.default(10 * 60_000),
  HOMEOSTAT_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(4),
  /**
   * Resync runs a reconciler works on at once, in slots of their own beside HOMEOSTAT_CONCURRENCY
   * (the other classes'): a resync's run of an unchanged key mostly waits on NATS round trips, and
   * a sweep of the whole catalog ran four at a time (the storm's resync of 660 keys: 2.4 s, now
   * 0.9 s), while the urgent classes keep their slots throughout.
   */
  HOMEOSTAT_RESYNC_CONCURRENCY: z.coerce.number().int().min(1).max(256).default(32),
  /** Largest source archive the builder downloads. */
  HOMEOSTAT_MAX_SOURCE_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(512 * 1024 * 1024),
  /**
   * Hosts sources may come from, for every fetcher of them (the reconciler's upstream resolver,
   * the builder, the agent): loopback only unless HOMEOSTAT_SOURCE_ALLOW_REMOTE=true, which a
   * deployment following GitHub or any remote upstream needs. HOMEOSTAT_SOURCE_HOSTS then narrows
   * it to the hosts listed (comma-separated; `.example.org` is that domain and its subdomains).
   */
  HOMEOSTAT_SOURCE_ALLOW_REMOTE: z.enum(["true", "false"]).default("false"),
  HOMEOSTAT_SOURCE_HOSTS: z
    .string()
    .default("")
    .transform((v) =>
      v
        .split(",")
        .map((h) => h.trim().toLowerCase())
        .filter((h) => h !== ""),
    )
    .refine((hosts) => hosts.every((h) => /^\.?[a-z0-9-]+(\.[a-z0-9-]+)*$/.test(h)), "must be host names or .domain suffixes, comma-separated"),
  /** Where a GitHub upstream's release tarballs come from when the catalog gives no source URL template: <base>/<owner>/<repo>/tar.gz/refs/tags/<tag>. */
  HOMEOSTAT_GITHUB_ARCHIVE_URL: z.url().default("https://codeload.github.com"),
  /** The reconciler's upstream resolver: time limit of one fetch, fetches at once per host, tries while unavailable, first backoff, longest Retry-After waited in place (a longer one closes the host until then). */
  HOMEOSTAT_UPSTREAM_TIMEOUT_MS: positiveMs.default(5 * 60_000),
  HOMEOSTAT_UPSTREAM_HOST_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(2),
  HOMEOSTAT_UPSTREAM_TRIES: z.coerce.number().int().min(1).max(10).default(3),
  HOMEOSTAT_UPSTREAM_BACKOFF_MS: positiveMs.default(1_000),
  HOMEOSTAT_UPSTREAM_MAX_WAIT_MS: positiveMs.default(30_000),
  /** Largest uncompressed total of a source (or dependency) archive the builder unpacks. */
  HOMEOSTAT_MAX_UNPACKED_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(4 * 1024 * 1024 * 1024),
  /** Most entries (files, directories, links) in an archive the builder unpacks. */
  HOMEOSTAT_MAX_SOURCE_ENTRIES: z.coerce.number().int().positive().default(200_000),
  /** Sandbox of build steps: `bubblewrap` (required: the builder refuses to start when it does not work), or `none`, for development only, which also needs HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS=true and is recorded in every build's provenance. */
  HOMEOSTAT_BUILD_ISOLATION: z.enum(["bubblewrap", "none"]).default("bubblewrap"),
  HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS: z.enum(["true", "false"]).default("false"),
  /** Host uid and gid of sandboxed steps when the builder runs as root (the process limit counts per uid: give it one nothing else uses). Otherwise steps keep the builder's own uid on the host; inside the sandbox they are always 65534. */
  HOMEOSTAT_BUILD_UID: z.coerce.number().int().min(1).max(4_294_967_294).default(65533),
  /** Limits of every process a build step starts (setrlimit): CPU seconds, address space, processes of the step together, size of one file. */
  HOMEOSTAT_BUILD_CPU_SECONDS: z.coerce.number().int().positive().default(1800),
  HOMEOSTAT_BUILD_MEMORY_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(8 * 1024 ** 3),
  HOMEOSTAT_BUILD_MAX_PROCESSES: z.coerce.number().int().min(8).default(512),
  HOMEOSTAT_BUILD_MAX_FILE_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(4 * 1024 ** 3),
  /** Largest total size of a build's workspace (source, sysroot, outputs, its /tmp); a step that grows it past this is killed. */
  HOMEOSTAT_BUILD_MAX_OUTPUT_BYTES: z.coerce
    .number()
    .int()
    .positive()
    .default(16 * 1024 ** 3),
  /** Builds one builder process runs at the same time. */
  HOMEOSTAT_BUILD_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(2),
  /** The agentic reconciler (services/agent): the Anthropic API key; unset, the agent is disabled and keys it would repair stay as they are. */
  ANTHROPIC_API_KEY: z.string().min(1).optional(),
  /** Where the Messages API is (a local server in tests); unset: the SDK's default. */
  ANTHROPIC_BASE_URL: optionalUrlSetting(),
  HOMEOSTAT_AGENT_MODEL: z.string().min(1).max(128).default("claude-sonnet-4-5"),
  /** One repair's limits: model turns, tokens (input and output together), wall time, output tokens of one turn, tries of one call on 429/5xx. */
  HOMEOSTAT_AGENT_MAX_TURNS: z.coerce.number().int().min(1).max(1000).default(40),
  HOMEOSTAT_AGENT_MAX_TOKENS: z.coerce.number().int().positive().default(2_000_000),
  HOMEOSTAT_AGENT_MAX_WALL_MS: positiveMs.default(30 * 60_000),
  HOMEOSTAT_AGENT_TURN_OUTPUT_TOKENS: z.coerce.number().int().min(256).max(128_000).default(8_192),
  HOMEOSTAT_AGENT_API_TRIES: z.coerce.number().int().min(1).max(20).default(5),
  /** Price of the model in US dollars per million tokens: input, output, cache writes, cache reads (the run's cost is computed from its usage). */
  HOMEOSTAT_AGENT_PRICE_PER_MTOK: z
    .string()
    .regex(/^\d+(\.\d+)?(,\d+(\.\d+)?){3}$/, "input,output,cache-write,cache-read, in USD per million tokens")
    .default("3,15,3.75,0.3"),
  /** What happens to a proposal that passed every validator: `review` waits for a person, `validated` applies it to the (directory) catalog. */
  HOMEOSTAT_AGENT_APPLY: z.enum(["review", "validated"]).default("review"),
  /** Where telemetry goes (the collector): the base URL of OTLP/HTTP (`/v1/traces` and `/v1/metrics` are appended) or the gRPC endpoint. Unset: nothing is exported (spans are still made, so trace ids exist). */
  OTEL_EXPORTER_OTLP_ENDPOINT: optionalUrl,
  /** Signal-specific endpoints, used as given (full URLs); they win over OTEL_EXPORTER_OTLP_ENDPOINT. */
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: optionalUrl,
  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: optionalUrl,
  /**
   * http/json by default, not the specification's http/protobuf (a SHOULD): the exporters'
   * protobuf serializer is JavaScript, JSON.stringify is native, and with every span exported the
   * queue spent 243 µs of CPU per enqueue with http/json against 271 µs with http/protobuf (bench
   * queue, 3 runs each, alternated; 182 µs without telemetry). Collectors, Tempo and Jaeger
   * accept both on OTLP/HTTP; the bodies are larger.
   */
  OTEL_EXPORTER_OTLP_PROTOCOL: z.enum(["http/protobuf", "http/json", "grpc"]).default("http/json"),
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: z.enum(["http/protobuf", "http/json", "grpc"]).optional(),
  OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: z.enum(["http/protobuf", "http/json", "grpc"]).optional(),
  /** service.name; default: the service's own name (ingest, queue, …), with service.namespace=homeostat. */
  OTEL_SERVICE_NAME: z.string().min(1).optional(),
  /** More resource attributes, `key=value,…` (values percent-encoded), e.g. the Kubernetes downward API's pod name; they win over detected ones. */
  OTEL_RESOURCE_ATTRIBUTES: z.string().default(""),
  /** How often metrics are exported. */
  OTEL_METRIC_EXPORT_INTERVAL: positiveMs.default(10_000),
  /** How long finished spans wait to be sent in a batch. */
  OTEL_BSP_SCHEDULE_DELAY: positiveMs.default(500),
  /**
   * Which traces are recorded and exported (the specification's names). Default always_on:
   * every rebuild's trace is kept, an incoming traceparent's flag notwithstanding. At high
   * rates, `parentbased_traceidratio` with a ratio keeps the cost of tracing down (a span not
   * sampled costs almost nothing; a key's status still records its trace id).
   */
  OTEL_TRACES_SAMPLER: z.enum(traceSamplers).default("always_on"),
  /** The ratio of traces the `*traceidratio` samplers keep, 0 to 1 (default 1). */
  OTEL_TRACES_SAMPLER_ARG: z.preprocess((v) => (v === "" ? undefined : v), z.coerce.number().min(0).max(1).default(1)),
});

export type Config = Readonly<{
  natsUrl: string;
  /** How this process authenticates to NATS (file paths, resolved). */
  nats: { nkeySeedFile: string | undefined; tlsCaFile: string | undefined; tlsCertFile: string | undefined; tlsKeyFile: string | undefined };
  redisUrl: string;
  readModelCheckMs: number;
  prefix: string;
  region: string;
  /** HOMEOSTAT_FABRIC, or the region when unset. */
  fabric: string;
  jsReplicas: number;
  dataDir: string;
  /** The catalog as a directory; for a git catalog, where relative paths would resolve (unused by the loader). */
  catalogDir: string;
  /** HOMEOSTAT_CATALOG as given, for parseCatalogLocation. */
  catalogLocation: string;
  catalogReloadMs: number;
  ingest: {
    host: string;
    port: number;
    tokens: string[];
    githubSecret: string | undefined;
    githubActions: string[];
    githubPrereleases: boolean;
    rateLimitPerMin: number;
    retentionMs: number;
    retentionMaxBytes: number;
    retentionMaxMsgs: number;
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    idleTimeoutMs: number;
    keepAliveTimeoutMs: number;
    addressRateLimitPerMin: number;
    authFailuresPerMin: number;
    workers: number;
    osvSource: string | undefined;
    osvPollMs: number;
    osvMaxFutureSkewMs: number;
  };
  grpcAddr: string;
  /** How the status API (queue service) authenticates; see statusApiSecurity. */
  statusApi: StatusApiSecurity;
  /** How the CLI reaches the status API: credentials from the environment (flags override them). */
  statusClient: StatusClientSettings;
  imageRepository: string;
  registryUrl: string | undefined;
  /** Exactly one of these when a signing key is configured. */
  signingKeyPath: string | undefined;
  signingKeyPem: string | undefined;
  signerDir: string;
  /** Exactly one of these when a builder key is configured. */
  builderKeyPath: string | undefined;
  builderKeyPem: string | undefined;
  builderDir: string;
  trustedBuilderKeyPaths: string[];
  signUnsandboxed: boolean;
  imageVersionsKept: number;
  trustedKeyPaths: string[];
  sourceDateEpoch: number;
  buildTimeoutMs: number;
  /** The artifact store's collection (services/builder/src/store-collect.ts). */
  storeCollection: { graceMs: number; intervalMs: number };
  leaseMs: number;
  stageAckWaitMs: number;
  /** The failure taxonomy's bounds (failure.ts): permanent build failures retried, builder deaths tolerated. */
  buildFailures: { retries: number; backoffMs: number; crashLimit: number };
  startupBackoffMaxMs: number;
  /** The health endpoint (none without a port) and the heartbeats (health.ts, heartbeat.ts). */
  health: { host: string; port: number | undefined; heartbeatMs: number; staleAfterMs: number; heartbeatTtlMs: number };
  queue: {
    maxAttempts: number;
    backoffBaseMs: number;
    backoffMaxMs: number;
    maxFloorMs: number;
    drainMs: number;
    /** How an advisory's enqueue settles (none: runs at once). */
    advisorySettle: { quietMs: number; maxMs: number } | undefined;
  };
  resyncMs: number;
  concurrency: number;
  resyncConcurrency: number;
  maxSourceBytes: number;
  /** Hosts beyond loopback sources may come from: none (false), any (true), or these (@homeostat/source RemoteHosts). */
  sourceHosts: boolean | string[];
  githubArchiveUrl: string;
  upstream: { timeoutMs: number; perHostConcurrency: number; tries: number; backoffMs: number; maxWaitMs: number };
  maxUnpackedBytes: number;
  maxSourceEntries: number;
  buildSandbox: BuildSandboxSettings;
  buildConcurrency: number;
  telemetry: TelemetrySettings;
  agent: AgentSettings;
}>;

/** The agentic reconciler's settings; `apiKey` goes to the Anthropic client alone, never into a model's context. */
export type AgentSettings = {
  apiKey: string | undefined;
  baseUrl: string | undefined;
  model: string;
  maxTurns: number;
  maxTokens: number;
  maxWallMs: number;
  turnOutputTokens: number;
  apiTries: number;
  pricePerMTok: { input: number; output: number; cacheWrite: number; cacheRead: number };
  apply: "review" | "validated";
};

export type OtlpProtocol = "http/protobuf" | "http/json" | "grpc";
/** Where one signal is exported: a full URL for OTLP/HTTP, the endpoint for gRPC; undefined: not exported. */
export type OtlpTarget = { url: string; protocol: OtlpProtocol } | undefined;
export type TelemetrySettings = {
  serviceName: string | undefined;
  /** OTEL_RESOURCE_ATTRIBUTES, decoded. */
  resourceAttributes: Record<string, string>;
  traces: OtlpTarget;
  metrics: OtlpTarget;
  metricExportIntervalMs: number;
  spanBatchDelayMs: number;
  /** OTEL_TRACES_SAMPLER and its ratio (OTEL_TRACES_SAMPLER_ARG). */
  sampler: { name: (typeof traceSamplers)[number]; ratio: number };
};

export class ConfigError extends Error {}

/** Limits applied to every build step (see HOMEOSTAT_BUILD_CPU_SECONDS and the following settings). */
export type BuildLimits = { cpuSeconds: number; memoryBytes: number; maxProcesses: number; maxFileBytes: number; maxOutputBytes: number };

/** How the builder sandboxes build steps (services/builder/src/isolation.ts). */
export type BuildSandboxSettings = { isolation: "bubblewrap" | "none"; allowUnsandboxed: boolean; uid: number; limits: BuildLimits };

/** A status API role: `read` may call the read methods, `write` every method. */
export type GrpcRole = "read" | "write";
/** One status API bearer token, as configured: who it is, what it may do, and the SHA-256 of the token. */
export type GrpcToken = { name: string; role: GrpcRole; sha256: string };

export type StatusApiSecurity = {
  /** PEM file paths; undefined: plaintext. */
  tls: { certPath: string; keyPath: string; clientCaPath: string | undefined } | undefined;
  tokens: GrpcToken[];
  readAuth: "token" | "none";
  insecure: boolean;
};

export type StatusClientSettings = {
  token: string | undefined;
  tokenFile: string | undefined;
  /** TLS with the system's roots (also implied by a CA, certificate or key). */
  tls: boolean;
  caPath: string | undefined;
  certPath: string | undefined;
  keyPath: string | undefined;
  /** Send a token in plaintext beyond loopback (to a server started with HOMEOSTAT_GRPC_INSECURE). */
  insecure: boolean;
};

function parseGrpcTokens(raw: string, ctx: z.core.$RefinementCtx): GrpcToken[] {
  const tokens: GrpcToken[] = [];
  for (const entry of raw
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t !== "")) {
    const [, name, role, sha256] = /^([A-Za-z0-9_.@-]{1,64}):(read|write):([0-9a-f]{64})$/.exec(entry) ?? [];
    if (name === undefined || sha256 === undefined) {
      // The entry may be a token pasted by mistake: say where, never echo it.
      ctx.addIssue({
        code: "custom",
        message: `entry ${tokens.length + 1} is not name:read|write:<64 lower-case hex sha256 of the token> (see homeostat token new)`,
      });
      return z.NEVER;
    }
    if (tokens.some((t) => t.name === name)) {
      ctx.addIssue({ code: "custom", message: `token name ${name} given twice` });
      return z.NEVER;
    }
    tokens.push({ name, role: role === "write" ? "write" : "read", sha256 });
  }
  return tokens;
}

function sourceHosts(allowRemote: boolean, hosts: string[]): boolean | string[] {
  if (!allowRemote && hosts.length) throw new ConfigError("invalid configuration:\n  HOMEOSTAT_SOURCE_HOSTS needs HOMEOSTAT_SOURCE_ALLOW_REMOTE=true");
  return allowRemote && hosts.length ? hosts : allowRemote;
}

function tlsFiles(cert: string | undefined, key: string | undefined, clientCa: string | undefined): StatusApiSecurity["tls"] {
  if ((cert === undefined) !== (key === undefined))
    throw new ConfigError("invalid configuration:\n  HOMEOSTAT_GRPC_TLS_CERT and HOMEOSTAT_GRPC_TLS_KEY: set both or neither");
  if (cert === undefined || key === undefined) {
    if (clientCa !== undefined)
      throw new ConfigError("invalid configuration:\n  HOMEOSTAT_GRPC_TLS_CLIENT_CA needs HOMEOSTAT_GRPC_TLS_CERT and HOMEOSTAT_GRPC_TLS_KEY");
    return undefined;
  }
  return { certPath: path.resolve(cert), keyPath: path.resolve(key), clientCaPath: clientCa === undefined ? undefined : path.resolve(clientCa) };
}

/** True for a loopback host name or address (localhost, 127.0.0.0/8, ::1). */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[(.*)\]$/, "$1");
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** True when a listen or dial address (`host:port`, `[v6]:port`, `unix:path`) stays on this machine. */
export function isLoopbackAddress(addr: string): boolean {
  if (addr.startsWith("unix:")) return true;
  const m = /^(\[[^\]]*\]|[^:]*):\d+$/.exec(addr);
  const host = m?.[1];
  return host !== undefined && isLoopbackHost(host);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join(".")}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join("\n")}`);
  }
  const e = parsed.data;
  if (e.HOMEOSTAT_STORE_GRACE_MS < e.HOMEOSTAT_BUILD_TIMEOUT_MS)
    throw new ConfigError(
      `invalid configuration:\n  HOMEOSTAT_STORE_GRACE_MS (${e.HOMEOSTAT_STORE_GRACE_MS}) is shorter than HOMEOSTAT_BUILD_TIMEOUT_MS (${e.HOMEOSTAT_BUILD_TIMEOUT_MS}): a running build's blobs could be collected before its result is signed`,
    );
  return {
    natsUrl: e.NATS_URL,
    nats: natsSecurity(e.NATS_NKEY_SEED_FILE, e.NATS_TLS_CA, e.NATS_TLS_CERT, e.NATS_TLS_KEY),
    redisUrl: e.REDIS_URL,
    readModelCheckMs: e.HOMEOSTAT_READ_MODEL_CHECK_MS,
    prefix: e.HOMEOSTAT_PREFIX,
    region: e.HOMEOSTAT_REGION,
    fabric: e.HOMEOSTAT_FABRIC ?? e.HOMEOSTAT_REGION,
    jsReplicas: e.HOMEOSTAT_JS_REPLICAS,
    dataDir: path.resolve(e.HOMEOSTAT_DATA),
    catalogDir: path.resolve(e.HOMEOSTAT_CATALOG),
    catalogLocation: e.HOMEOSTAT_CATALOG,
    catalogReloadMs: e.HOMEOSTAT_CATALOG_RELOAD_MS,
    ingest: {
      host: e.HOMEOSTAT_INGEST_HOST,
      port: e.HOMEOSTAT_INGEST_PORT,
      tokens: e.HOMEOSTAT_INGEST_TOKENS.split(",")
        .map((t) => t.trim())
        .filter((t) => t !== ""),
      githubSecret: e.HOMEOSTAT_GITHUB_WEBHOOK_SECRET || undefined,
      githubActions: e.HOMEOSTAT_GITHUB_RELEASE_ACTIONS.split(","),
      githubPrereleases: e.HOMEOSTAT_GITHUB_PRERELEASES === "true",
      rateLimitPerMin: e.HOMEOSTAT_INGEST_RATE_LIMIT,
      retentionMs: e.HOMEOSTAT_INGEST_RETENTION_MS,
      retentionMaxBytes: e.HOMEOSTAT_INGEST_RETENTION_MAX_BYTES,
      retentionMaxMsgs: e.HOMEOSTAT_INGEST_RETENTION_MAX_MSGS,
      headersTimeoutMs: e.HOMEOSTAT_INGEST_HEADERS_TIMEOUT_MS,
      requestTimeoutMs: e.HOMEOSTAT_INGEST_REQUEST_TIMEOUT_MS,
      idleTimeoutMs: e.HOMEOSTAT_INGEST_IDLE_TIMEOUT_MS,
      keepAliveTimeoutMs: e.HOMEOSTAT_INGEST_KEEP_ALIVE_TIMEOUT_MS,
      addressRateLimitPerMin: e.HOMEOSTAT_INGEST_ADDRESS_RATE_LIMIT,
      authFailuresPerMin: e.HOMEOSTAT_INGEST_AUTH_FAILURE_LIMIT,
      workers: e.HOMEOSTAT_INGEST_WORKERS,
      osvSource: e.HOMEOSTAT_OSV_SOURCE || undefined,
      osvPollMs: e.HOMEOSTAT_OSV_POLL_MS,
      osvMaxFutureSkewMs: e.HOMEOSTAT_OSV_MAX_FUTURE_SKEW_MS,
    },
    grpcAddr: e.HOMEOSTAT_GRPC_ADDR,
    statusApi: {
      tls: tlsFiles(e.HOMEOSTAT_GRPC_TLS_CERT, e.HOMEOSTAT_GRPC_TLS_KEY, e.HOMEOSTAT_GRPC_TLS_CLIENT_CA),
      tokens: e.HOMEOSTAT_GRPC_TOKENS,
      readAuth: e.HOMEOSTAT_GRPC_READ_AUTH ?? (isLoopbackAddress(e.HOMEOSTAT_GRPC_ADDR) ? "none" : "token"),
      insecure: e.HOMEOSTAT_GRPC_INSECURE === "true",
    },
    statusClient: {
      token: e.HOMEOSTAT_TOKEN,
      tokenFile: e.HOMEOSTAT_TOKEN_FILE,
      tls: e.HOMEOSTAT_GRPC_TLS === "true",
      caPath: e.HOMEOSTAT_GRPC_CA,
      certPath: e.HOMEOSTAT_GRPC_CERT,
      keyPath: e.HOMEOSTAT_GRPC_KEY,
      insecure: e.HOMEOSTAT_GRPC_INSECURE === "true",
    },
    imageRepository: e.HOMEOSTAT_IMAGE_REPOSITORY,
    registryUrl: e.HOMEOSTAT_REGISTRY_URL,
    ...signingKey(e.HOMEOSTAT_SIGNING_KEY),
    signerDir: path.resolve(e.HOMEOSTAT_SIGNER_DIR ?? path.join(e.HOMEOSTAT_DATA, "signer")),
    ...builderKey(e.HOMEOSTAT_BUILDER_KEY),
    builderDir: path.resolve(e.HOMEOSTAT_BUILDER_DIR ?? path.join(e.HOMEOSTAT_DATA, "builder")),
    trustedBuilderKeyPaths: pathList(
      e.HOMEOSTAT_TRUSTED_BUILDER_KEYS,
      path.join(e.HOMEOSTAT_BUILDER_DIR ?? path.join(e.HOMEOSTAT_DATA, "builder"), "builder.pub"),
    ),
    signUnsandboxed: e.HOMEOSTAT_SIGN_UNSANDBOXED === "true",
    imageVersionsKept: e.HOMEOSTAT_IMAGE_VERSIONS_KEPT,
    trustedKeyPaths: e.HOMEOSTAT_TRUSTED_KEYS.split(",")
      .map((p) => p.trim())
      .filter((p) => p !== "")
      .map((p) => path.resolve(p)),
    sourceDateEpoch: e.HOMEOSTAT_SOURCE_DATE_EPOCH,
    buildTimeoutMs: e.HOMEOSTAT_BUILD_TIMEOUT_MS,
    storeCollection: { graceMs: e.HOMEOSTAT_STORE_GRACE_MS, intervalMs: e.HOMEOSTAT_STORE_COLLECT_INTERVAL_MS },
    leaseMs: e.HOMEOSTAT_LEASE_MS,
    stageAckWaitMs: e.HOMEOSTAT_STAGE_ACK_WAIT_MS,
    buildFailures: { retries: e.HOMEOSTAT_BUILD_FAILURE_RETRIES, backoffMs: e.HOMEOSTAT_BUILD_FAILURE_BACKOFF_MS, crashLimit: e.HOMEOSTAT_BUILD_CRASH_LIMIT },
    startupBackoffMaxMs: e.HOMEOSTAT_STARTUP_BACKOFF_MAX_MS,
    health: {
      host: e.HOMEOSTAT_HEALTH_HOST,
      port: e.HOMEOSTAT_HEALTH_PORT,
      heartbeatMs: e.HOMEOSTAT_HEARTBEAT_MS,
      staleAfterMs: 3 * e.HOMEOSTAT_HEARTBEAT_MS,
      heartbeatTtlMs: 6 * e.HOMEOSTAT_HEARTBEAT_MS,
    },
    queue: {
      maxAttempts: e.HOMEOSTAT_QUEUE_MAX_ATTEMPTS,
      backoffBaseMs: e.HOMEOSTAT_QUEUE_BACKOFF_BASE_MS,
      backoffMaxMs: e.HOMEOSTAT_QUEUE_BACKOFF_MAX_MS,
      maxFloorMs: e.HOMEOSTAT_QUEUE_MAX_FLOOR_MS,
      drainMs: e.HOMEOSTAT_QUEUE_DRAIN_MS,
      advisorySettle:
        e.HOMEOSTAT_ADVISORY_SETTLE_MS > 0
          ? { quietMs: e.HOMEOSTAT_ADVISORY_SETTLE_MS, maxMs: Math.max(e.HOMEOSTAT_ADVISORY_SETTLE_MS, e.HOMEOSTAT_ADVISORY_SETTLE_MAX_MS) }
          : undefined,
    },
    resyncMs: e.HOMEOSTAT_RESYNC_MS,
    concurrency: e.HOMEOSTAT_CONCURRENCY,
    resyncConcurrency: e.HOMEOSTAT_RESYNC_CONCURRENCY,
    maxSourceBytes: e.HOMEOSTAT_MAX_SOURCE_BYTES,
    sourceHosts: sourceHosts(e.HOMEOSTAT_SOURCE_ALLOW_REMOTE === "true", e.HOMEOSTAT_SOURCE_HOSTS),
    githubArchiveUrl: e.HOMEOSTAT_GITHUB_ARCHIVE_URL.replace(/\/+$/, ""),
    upstream: {
      timeoutMs: e.HOMEOSTAT_UPSTREAM_TIMEOUT_MS,
      perHostConcurrency: e.HOMEOSTAT_UPSTREAM_HOST_CONCURRENCY,
      tries: e.HOMEOSTAT_UPSTREAM_TRIES,
      backoffMs: e.HOMEOSTAT_UPSTREAM_BACKOFF_MS,
      maxWaitMs: e.HOMEOSTAT_UPSTREAM_MAX_WAIT_MS,
    },
    maxUnpackedBytes: e.HOMEOSTAT_MAX_UNPACKED_BYTES,
    maxSourceEntries: e.HOMEOSTAT_MAX_SOURCE_ENTRIES,
    buildSandbox: {
      isolation: e.HOMEOSTAT_BUILD_ISOLATION,
      allowUnsandboxed: e.HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS === "true",
      uid: e.HOMEOSTAT_BUILD_UID,
      limits: {
        cpuSeconds: e.HOMEOSTAT_BUILD_CPU_SECONDS,
        memoryBytes: e.HOMEOSTAT_BUILD_MEMORY_BYTES,
        maxProcesses: e.HOMEOSTAT_BUILD_MAX_PROCESSES,
        maxFileBytes: e.HOMEOSTAT_BUILD_MAX_FILE_BYTES,
        maxOutputBytes: e.HOMEOSTAT_BUILD_MAX_OUTPUT_BYTES,
      },
    },
    buildConcurrency: e.HOMEOSTAT_BUILD_CONCURRENCY,
    agent: agentSettings(e),
    telemetry: {
      serviceName: e.OTEL_SERVICE_NAME,
      resourceAttributes: resourceAttributes(e.OTEL_RESOURCE_ATTRIBUTES),
      traces: otlpTarget(
        "traces",
        e.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        e.OTEL_EXPORTER_OTLP_ENDPOINT,
        e.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? e.OTEL_EXPORTER_OTLP_PROTOCOL,
      ),
      metrics: otlpTarget(
        "metrics",
        e.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
        e.OTEL_EXPORTER_OTLP_ENDPOINT,
        e.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL ?? e.OTEL_EXPORTER_OTLP_PROTOCOL,
      ),
      metricExportIntervalMs: e.OTEL_METRIC_EXPORT_INTERVAL,
      spanBatchDelayMs: e.OTEL_BSP_SCHEDULE_DELAY,
      sampler: { name: e.OTEL_TRACES_SAMPLER, ratio: e.OTEL_TRACES_SAMPLER_ARG },
    },
  };
}

/** The OTLP specification's rule: a signal's own endpoint as given; else, over HTTP, the base endpoint plus `/v1/<signal>`; over gRPC the base endpoint itself. */
function otlpTarget(signal: "traces" | "metrics", own: string | undefined, base: string | undefined, protocol: OtlpProtocol): OtlpTarget {
  if (own !== undefined) return { url: own, protocol };
  if (base === undefined) return undefined;
  return { url: protocol === "grpc" ? base : `${base.replace(/\/$/, "")}/v1/${signal}`, protocol };
}

/** OTEL_RESOURCE_ATTRIBUTES: `k=v` pairs separated by commas, values percent-decoded (W3C Baggage octets). */
function resourceAttributes(value: string): Record<string, string> {
  const attributes: Record<string, string> = {};
  for (const pair of value.split(",")) {
    if (pair.trim() === "") continue;
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new ConfigError(`invalid configuration:\n  OTEL_RESOURCE_ATTRIBUTES: "${pair.trim()}" is not key=value`);
    try {
      attributes[pair.slice(0, eq).trim()] = decodeURIComponent(pair.slice(eq + 1).trim());
    } catch {
      throw new ConfigError(`invalid configuration:\n  OTEL_RESOURCE_ATTRIBUTES: the value of ${pair.slice(0, eq).trim()} is not percent-encoded correctly`);
    }
  }
  return attributes;
}

function natsSecurity(seed: string | undefined, ca: string | undefined, cert: string | undefined, key: string | undefined): Config["nats"] {
  if ((cert === undefined) !== (key === undefined)) throw new ConfigError("invalid configuration:\n  NATS_TLS_CERT and NATS_TLS_KEY: set both or neither");
  if (cert !== undefined && ca === undefined) throw new ConfigError("invalid configuration:\n  NATS_TLS_CERT needs NATS_TLS_CA");
  const resolve = (p: string | undefined) => (p === undefined ? undefined : path.resolve(p));
  return { nkeySeedFile: resolve(seed), tlsCaFile: resolve(ca), tlsCertFile: resolve(cert), tlsKeyFile: resolve(key) };
}

/** HOMEOSTAT_BUILDER_KEY, like HOMEOSTAT_SIGNING_KEY: a path or the PEM itself. */
function builderKey(value: string | undefined): { builderKeyPath: string | undefined; builderKeyPem: string | undefined } {
  const k = signingKey(value);
  return { builderKeyPath: k.signingKeyPath, builderKeyPem: k.signingKeyPem };
}

/** Comma-separated paths, resolved; `fallback` when there are none. */
function pathList(value: string, fallback: string): string[] {
  const paths = value
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p !== "");
  return (paths.length > 0 ? paths : [fallback]).map((p) => path.resolve(p));
}

/** HOMEOSTAT_SIGNING_KEY holds a path, or (for secrets injected as variables) the PEM itself. */
function signingKey(value: string | undefined): { signingKeyPath: string | undefined; signingKeyPem: string | undefined } {
  if (value === undefined || value.trim() === "") return { signingKeyPath: undefined, signingKeyPem: undefined };
  return value.trimStart().startsWith("-----BEGIN") ? { signingKeyPath: undefined, signingKeyPem: value } : { signingKeyPath: value, signingKeyPem: undefined };
}

function optionalUrlSetting() {
  return z.preprocess((v) => (v === "" ? undefined : v), z.url().optional());
}

function agentSettings(e: z.infer<typeof schema>): AgentSettings {
  const [input, output, cacheWrite, cacheRead] = e.HOMEOSTAT_AGENT_PRICE_PER_MTOK.split(",").map(Number) as [number, number, number, number];
  return {
    apiKey: e.ANTHROPIC_API_KEY,
    baseUrl: e.ANTHROPIC_BASE_URL,
    model: e.HOMEOSTAT_AGENT_MODEL,
    maxTurns: e.HOMEOSTAT_AGENT_MAX_TURNS,
    maxTokens: e.HOMEOSTAT_AGENT_MAX_TOKENS,
    maxWallMs: e.HOMEOSTAT_AGENT_MAX_WALL_MS,
    turnOutputTokens: e.HOMEOSTAT_AGENT_TURN_OUTPUT_TOKENS,
    apiTries: e.HOMEOSTAT_AGENT_API_TRIES,
    pricePerMTok: { input, output, cacheWrite, cacheRead },
    apply: e.HOMEOSTAT_AGENT_APPLY,
  };
}
