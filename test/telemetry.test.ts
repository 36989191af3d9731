/**
 * Telemetry seen from outside, as the collector sees it: the five services run as processes and
 * export with their real OTLP exporters (default http/json) to a receiver on loopback. One
 * release, sent with the caller's traceparent, must come back as one connected trace across all
 * five services, each message a PRODUCER span with its CONSUMER child, the builder's download of
 * the source and the status API's Redis reads CLIENT spans of the official instrumentations, a
 * token in a URL's query never exported; a refused build is an
 * ERROR span with its exception; every process names itself distinctly; no span name carries a
 * query string or a token; probes leave no trace; every service exports metrics, durations in
 * seconds.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createReadStream, readdirSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { randomBytes } from "node:crypto";
import path from "node:path";
import { encodeMessage } from "@homeostat/core";
import { getQueueStats, listKeyStatuses, Metadata, statusClient, type StatusClient } from "@homeostat/status-api";
import { repoRoot, waitFor } from "../scripts/factory.ts";
import { startTestFactory, testEnv, type TestEnv, type TestFactory } from "./harness.ts";
import { prometheusNames, SpanKindNumber, startOtlpReceiver, type ReceivedSpan } from "./otlp-receiver.ts";
import { dashboards, queriedMetrics } from "./dashboards.ts";

const services = ["builder", "ingest", "queue", "reconciler", "signer"];
const catalogDir = path.join(repoRoot, "examples", "catalog");
const tarball = path.join(repoRoot, "examples", "sources", "libgreet-1.1.tar.gz");
const secret = `tok${randomBytes(8).toString("hex")}`;

describe("telemetry of the running factory", { timeout: 600_000 }, () => {
  let t: TestEnv;
  let factory: TestFactory;
  let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
  let client: StatusClient;
  /** Serves the release's tarball over HTTP on loopback, to any path, so that the builder downloads it with fetch. */
  let sources: Server;
  const callerTraceId = randomBytes(16).toString("hex");
  /** The release's trace, as the first test saw it. */
  let releaseSpans: ReceivedSpan[] = [];
  const callerSpanId = randomBytes(8).toString("hex");

  before(async () => {
    otlp = await startOtlpReceiver();
    sources = createServer((_req, res) => createReadStream(tarball).pipe(res.writeHead(200, { "content-type": "application/gzip" })));
    await new Promise<void>((resolve) => sources.listen(0, "127.0.0.1", resolve));
    t = await testEnv();
    factory = await startTestFactory(t, {
      HOMEOSTAT_CATALOG: catalogDir,
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_METRIC_EXPORT_INTERVAL: "1000",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment.name=test",
      HOMEOSTAT_LEASE_MS: "5000",
    });
    client = factory.client;
  });

  after(async () => {
    await factory?.stop();
    await otlp?.close();
    await new Promise((resolve) => sources?.close(resolve));
    await t?.cleanup();
  });

  // Every key of the catalog Ready and nothing running or retrying: the release's run is its own,
  // not merged into a convergence run of the same key (which would carry that run's trace).
  const catalogKeys = ["images", "packages"].flatMap((kind) =>
    readdirSync(path.join(catalogDir, kind)).map((f) => `${kind.slice(0, -1)}/${f.replace(/\.yaml$/, "")}`),
  );
  const idle = async () => {
    const { items } = await listKeyStatuses(client, { pageSize: 100 });
    if (items.length !== catalogKeys.length || !items.every((s) => s.phase === "Ready")) return undefined;
    const stats = await getQueueStats(client);
    return stats.running === 0 && stats.retrying === 0 ? items : undefined;
  };

  test("a release sent with a traceparent is one connected trace across all five services", async () => {
    await waitFor("the sample catalog to converge and the queue to be idle", idle, 300_000, 250);
    // Probes and an unmatched route whose query holds a token: neither may show up in a span name.
    for (const probe of ["/healthz", "/readyz", `/no/such/route?token=${secret}`]) await (await fetch(`${factory.ingestUrl}${probe}`)).arrayBuffer();
    const sha256 = execFileSync("sha256sum", [tarball], { encoding: "utf8" }).split(" ")[0]!;
    const sourceUrl = `http://127.0.0.1:${(sources.address() as AddressInfo).port}/libgreet-1.1.tar.gz`;
    const res = await fetch(`${factory.ingestUrl}/v1/releases`, {
      method: "POST",
      headers: { "content-type": "application/json", traceparent: `00-${callerTraceId}-${callerSpanId}-01` },
      body: JSON.stringify({ package: "libgreet", version: "1.1", url: `${sourceUrl}?token=${secret}`, sha256 }),
    });
    assert.equal(res.status, 202, await res.text());

    const inTrace = () => otlp.spans.filter((s) => s.traceId === callerTraceId);
    await waitFor(
      "the release's trace to reach the signer of image/devkit (which includes libgreet)",
      async () =>
        inTrace().some(
          (s) =>
            s.service === "signer" && s.kind === SpanKindNumber.consumer && String(s.attributes["messaging.destination.name"]).endsWith(".sign.image.devkit"),
        )
          ? true
          : undefined,
      300_000,
      250,
    );
    await new Promise((r) => setTimeout(r, 2_000)); // the last batches (500 ms) in flight
    const spans = inTrace();
    releaseSpans = spans;
    console.log(`# ${spans.length} spans in the release's trace: ${[...new Set(spans.map((s) => `${s.service}:${s.name}`))].sort().join(", ")}`);
    assert.deepEqual([...new Set(spans.map((s) => s.service))].sort(), services);

    // The root is the ingest request, a child of the caller's span; every other span's parent is in the trace.
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const root = spans.filter((s) => s.parentSpanId === callerSpanId);
    assert.equal(root.length, 1, "one span continues the caller's traceparent");
    assert.equal(root[0]!.name, "POST /v1/releases");
    assert.equal(root[0]!.kind, SpanKindNumber.server);
    assert.equal(root[0]!.attributes["http.route"], "/v1/releases");
    assert.equal(root[0]!.attributes["http.response.status_code"], 202);
    const orphans = spans.filter((s) => s.parentSpanId !== callerSpanId && !byId.has(s.parentSpanId ?? ""));
    assert.deepEqual(
      orphans.map((s) => `${s.service}:${s.name}`),
      [],
      "no orphan spans",
    );

    // Every message: a PRODUCER span whose child is the CONSUMER span processing it.
    const consumers = spans.filter((s) => s.kind === SpanKindNumber.consumer);
    const producers = spans.filter((s) => s.kind === SpanKindNumber.producer);
    assert.ok(producers.length >= 5 && consumers.length >= 5, `${producers.length} producers, ${consumers.length} consumers`);
    for (const c of consumers) {
      const parent = byId.get(c.parentSpanId!);
      assert.equal(parent?.kind, SpanKindNumber.producer, `${c.service}:${c.name}'s parent is a PRODUCER span (${parent?.service}:${parent?.name})`);
      assert.equal(c.attributes["messaging.system"], "nats");
      assert.equal(c.attributes["messaging.operation.type"], "process");
      assert.equal(c.attributes["messaging.destination.name"], parent!.attributes["messaging.destination.name"]);
    }
    for (const p of producers) assert.equal(p.attributes["messaging.operation.type"], "send");
    // The builder's download of the source: a CLIENT span (undici instrumentation) of its build, the query's token redacted.
    const download = spans.find((s) => s.service === "builder" && s.kind === SpanKindNumber.client && s.attributes["http.request.method"] === "GET");
    assert.ok(download, `a CLIENT span of the source download (${spans.map((s) => `${s.service}:${s.name}:${s.kind}`).join(", ")})`);
    // The build's phases, each an INTERNAL span of it: where a slow build spent its time.
    const fetching = byId.get(download.parentSpanId!);
    assert.equal(fetching?.name, "builder.fetch", "the download is a child of the build's fetch phase");
    const build = byId.get(fetching.parentSpanId!);
    assert.equal(build?.kind, SpanKindNumber.consumer, "the fetch phase is a child of the build");
    const phases = spans.filter((s) => s.parentSpanId === build.spanId && s.kind === SpanKindNumber.internal).map((s) => s.name);
    for (const phase of ["builder.verify-plan", "builder.fetch", "builder.unpack", "builder.steps", "builder.archive", "builder.vouch"])
      assert.ok(phases.includes(phase), `${phase} is a phase of the package build (${phases.join(", ")})`);
    assert.equal(download.attributes["url.full"], `${sourceUrl}?token=REDACTED`);
    assert.equal(download.attributes["server.address"], "127.0.0.1");
    assert.equal(download.attributes["http.response.status_code"], 200);
    for (const s of spans) assert.ok(!JSON.stringify(s.attributes).includes(secret), `${s.service}:${s.name} carries no token`);
    const hops = new Set(consumers.map((c) => `${byId.get(c.parentSpanId!)!.service}->${c.service}`));
    for (const hop of ["ingest->queue", "queue->reconciler", "reconciler->builder", "builder->signer"])
      assert.ok(hops.has(hop), `a message ${hop} (${[...hops].join(", ")})`);
    assert.ok(
      spans.every((s) => !Object.keys(s.attributes).some((k) => k === "http.method" || k === "messaging.destination")),
      "no deprecated attribute names",
    );
  });

  test("the spans of a rebuild carry what one searches traces by: key, version, digests, key id, outcome, isolation, cache hit", () => {
    const consumer = (service: string, key: string) =>
      releaseSpans.find((s) => s.service === service && s.kind === SpanKindNumber.consumer && s.attributes["homeostat.key"] === key);
    for (const key of ["package/libgreet", "image/devkit"]) {
      const build = consumer("builder", key);
      const sign = consumer("signer", key);
      const run = releaseSpans.find((s) => s.service === "reconciler" && s.name.startsWith("reconcile ") && s.attributes["homeostat.key"] === key);
      assert.ok(build && sign && run, `${key}: a reconcile run, a build and a signature in the release's trace`);
      for (const span of [build, sign]) {
        assert.match(String(span.attributes["homeostat.input_digest"]), /^sha256:[0-9a-f]{64}$/, `${span.service} ${key}: input digest`);
        assert.match(String(span.attributes["homeostat.build.isolation"]), /^(bubblewrap|none)$/, `${span.service} ${key}: isolation mode`);
      }
      assert.equal(build.attributes["homeostat.version"], sign.attributes["homeostat.version"]);
      assert.ok(typeof build.attributes["homeostat.build.cache_hit"] === "boolean", `${key}: cache hit`);
      assert.match(String(build.attributes["homeostat.build.outcome"]), /^(built|cached)$/);
      assert.match(String(build.attributes["homeostat.build.result_digest"]), /^sha256:/);
      assert.match(String(sign.attributes["homeostat.signing.key_id"]), /.+/, `${key}: the signing key id`);
      assert.ok(String(run.attributes["homeostat.cause"]).length > 0);
    }
    assert.equal(consumer("builder", "package/libgreet")!.attributes["homeostat.version"], "1.1");
    assert.match(String(consumer("builder", "package/libgreet")!.attributes["homeostat.output_digest"]), /^sha256:/, "a package's output digest");
    assert.match(String(consumer("signer", "image/devkit")!.attributes["homeostat.image.digest"]), /^sha256:/, "an image's digest");
    // The reconciler's decision names its trigger: a release for libgreet, a dependency for devkit.
    const requested = releaseSpans.filter((s) => s.service === "reconciler" && s.attributes["homeostat.build.trigger"] !== undefined);
    assert.deepEqual(
      [...new Set(requested.map((s) => `${String(s.attributes["homeostat.key"])}:${String(s.attributes["homeostat.build.trigger"])}`))]
        .filter((x) => /libgreet|devkit/.test(x))
        .sort(),
      ["image/devkit:dependency", "package/libgreet:release"],
    );
  });

  test("an enqueue deduplicated into a queued key is linked to the run that answers it, across the status API", async () => {
    // Two Enqueue calls, each from its own caller's trace, due in a few seconds: the second finds the first queued.
    const writer = statusClient(factory.grpcAddr);
    const callers = [randomBytes(16).toString("hex"), randomBytes(16).toString("hex")];
    const outcomes: string[] = [];
    try {
      for (const traceId of callers) {
        const traceparent = `00-${traceId}-${randomBytes(8).toString("hex")}-01`;
        const req = { key: "package/busybox", priority: "", notBeforeDelayMs: "5000", causeDetail: "telemetry test", force: false };
        const metadata = Metadata({ traceparent, authorization: `Bearer ${factory.grpcToken}` });
        outcomes.push((await writer.rpc.enqueue(req, { metadata })).outcome);
      }
    } finally {
      writer.close();
    }
    assert.deepEqual(outcomes, ["added", "deduped"]);
    // The first call's message is the one that runs: the run continues its trace and links to its Enqueue span.
    const run = await waitFor(
      "the run of package/busybox that answers both enqueues",
      async () => otlp.spans.find((s) => s.service === "reconciler" && s.name.startsWith("reconcile ") && s.traceId === callers[0]),
      120_000,
      250,
    );
    const [first, second] = callers.map((caller) => {
      const enqueue = otlp.spans.find((s) => s.traceId === caller && s.kind === SpanKindNumber.server && s.name.endsWith("/Enqueue"));
      assert.ok(enqueue, "the Enqueue call's SERVER span continues its caller's trace");
      return enqueue;
    });
    assert.equal(run.attributes["homeostat.key"], "package/busybox");
    assert.ok(
      run.links.some((l) => l.traceId === first!.traceId && l.spanId === first!.spanId),
      "the run links to the first Enqueue's span",
    );
    assert.equal(run.attributes["homeostat.enqueues"], 1);
    // The second found the key queued: its span links to that message, the run's parent.
    assert.deepEqual(
      second!.links,
      [{ traceId: run.traceId, spanId: run.parentSpanId, attributes: { "homeostat.link": "answered_by" } }],
      "the deduplicated Enqueue links to the message its run answers",
    );
  });

  test("a status read from the Redis read model is a CLIENT span of the gRPC call that asked", async () => {
    const traceId = randomBytes(16).toString("hex");
    await client.rpc.getKey({ key: "package/libgreet" }, { metadata: Metadata({ traceparent: `00-${traceId}-${randomBytes(8).toString("hex")}-01` }) });
    const read = await waitFor(
      "the GetKey call's Redis read",
      async () => otlp.spans.find((s) => s.traceId === traceId && s.service === "queue" && s.kind === SpanKindNumber.client),
      30_000,
      250,
    );
    const call = otlp.spans.find((s) => s.spanId === read.parentSpanId);
    assert.equal(call?.name, "homeostat.v1.StatusService/GetKey", "the read is a child of the call's SERVER span");
    assert.equal(read.attributes["db.system.name"], "redis");
    assert.equal(read.attributes["server.address"], "127.0.0.1");
    assert.equal(typeof read.attributes["server.port"], "number");
    assert.match(String(read.attributes["db.operation.name"]), /^(hget|exists)$/);
  });

  test("a refused signature is an ERROR span, counted by reason", async () => {
    const builder = await t.connectAs("builder");
    try {
      const forged = { v: 2, key: "package/motd", inputDigest: `sha256:${"2".repeat(64)}`, buildResult: `sha256:${"3".repeat(64)}` };
      await builder.js.publish(builder.topology.subject("sign", "package/motd"), encodeMessage(forged));
    } finally {
      await builder.nc.close();
    }
    const failed = await waitFor(
      "the signer's span of the refused request",
      async () =>
        otlp.spans.find(
          (s) =>
            s.service === "signer" &&
            s.kind === SpanKindNumber.consumer &&
            s.status === 2 &&
            s.attributes["homeostat.input_digest"] === `sha256:${"2".repeat(64)}`,
        ),
      60_000,
      200,
    );
    assert.ok(failed.events.includes("exception"));
    await waitFor(
      "the refusal counted",
      async () => otlp.metrics.some((m) => m.service === "signer" && m.name === "homeostat.signer.refused") || undefined,
      30_000,
      250,
    );
  });

  test("the queue's gRPC health probe (Compose's health check) says SERVING", () => {
    const probe = spawnSync(process.execPath, [path.join(repoRoot, "services", "queue", "src", "health-probe.ts")], {
      env: { ...process.env, ...t.env, HOMEOSTAT_GRPC_ADDR: factory.grpcAddr },
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(probe.status, 0, probe.stderr);
    const closed = spawnSync(process.execPath, [path.join(repoRoot, "services", "queue", "src", "health-probe.ts")], {
      env: { ...process.env, ...t.env, HOMEOSTAT_GRPC_ADDR: "127.0.0.1:1" },
      encoding: "utf8",
      timeout: 60_000,
    });
    assert.equal(closed.status, 1, "nothing listening: unhealthy");
  });

  test("a refused build is an ERROR span with its exception recorded", async () => {
    const reconciler = await t.connectAs("reconciler");
    try {
      const forged = { v: 2, key: "package/motd", catalogRevision: `sha256:${"7".repeat(64)}`, inputDigest: `sha256:${"1".repeat(64)}`, version: "1.0" };
      await reconciler.js.publish(reconciler.topology.subject("build", "package/motd"), encodeMessage(forged));
    } finally {
      await reconciler.nc.close();
    }
    const failed = await waitFor(
      "the builder's span of the refused request",
      async () => otlp.spans.find((s) => s.service === "builder" && s.kind === SpanKindNumber.consumer && s.status === 2),
      60_000,
      200,
    );
    assert.ok(failed.events.includes("exception"), "the exception is recorded on the span");
    assert.ok(String(failed.attributes["error.type"] ?? "").length > 0);
  });

  test("each process names itself: service.name, namespace, version, a distinct instance id, host and OTEL_RESOURCE_ATTRIBUTES", () => {
    const resources = new Map<string, Record<string, unknown>>();
    for (const s of otlp.spans) resources.set(s.service, s.resource);
    assert.deepEqual([...resources.keys()].sort(), services);
    for (const [service, r] of resources) {
      assert.equal(r["service.namespace"], "homeostat", service);
      assert.match(String(r["service.version"]), /^\d+\.\d+\.\d+/, `${service} has service.version`);
      assert.ok(r["host.name"] && r["process.pid"], `${service} has host and process attributes`);
      assert.equal(r["deployment.environment.name"], "test", `${service} has OTEL_RESOURCE_ATTRIBUTES`);
    }
    const instances = new Set([...resources.values()].map((r) => r["service.instance.id"]));
    assert.equal(instances.size, services.length, "service.instance.id differs per process");
  });

  test("span names carry no query string or token, and probes are not traced", () => {
    const names = new Set(otlp.spans.map((s) => s.name));
    assert.ok(otlp.spans.length > 0);
    for (const n of names) {
      assert.ok(!n.includes("?") && !n.includes(secret), `span name ${n}`);
      assert.ok(!/healthz|readyz/.test(n), `probe span ${n}`);
    }
    assert.ok(
      otlp.spans.some(
        (s) => s.service === "ingest" && s.kind === SpanKindNumber.server && s.name === "GET" && s.attributes["http.response.status_code"] === 404,
      ),
      "an unmatched route's span is named by its method alone",
    );
  });

  test("every service exports metrics; durations are histograms in seconds", async () => {
    const expected: Record<string, string[]> = {
      ingest: ["http.server.request.duration", "homeostat.ingest.events", "homeostat.ingest.refused"],
      queue: ["homeostat.queue.enqueued", "homeostat.queue.depth", "homeostat.queue.oldest_age", "homeostat.keys", "rpc.server.call.duration"],
      reconciler: ["homeostat.queue.process", "homeostat.queue.wait", "homeostat.queue.in_flight", "homeostat.rebuilds"],
      // Builds and signatures by outcome, and their durations: the stage handlers' own figures.
      builder: ["homeostat.messages.processed", "messaging.process.duration", "homeostat.builder.refused", "homeostat.builder.builds"],
      signer: ["homeostat.messages.processed", "messaging.process.duration", "homeostat.rebuild.duration", "homeostat.signer.refused"],
    };
    await waitFor(
      "metrics from every service",
      async () =>
        Object.entries(expected).every(([service, names]) => names.every((n) => otlp.metrics.some((m) => m.service === service && m.name === n))) || undefined,
      30_000,
      250,
    ).catch((err: Error) => {
      const seen = [...new Set(otlp.metrics.map((m) => `${m.service}:${m.name}`))].sort();
      throw new Error(`${err.message}; seen: ${seen.join(", ")}`);
    });
    const durations = otlp.metrics.filter((m) => /duration|\.wait$|\.process$/.test(m.name));
    assert.ok(durations.length > 0);
    for (const m of durations) assert.equal(m.unit, "s", `${m.service}:${m.name} is in seconds`);
    for (const m of otlp.metrics) assert.notEqual(m.unit, "ms", `${m.service}:${m.name}`);
  });

  test("every metric the dashboards query is one the services export (as Prometheus names it)", () => {
    const exported = new Set(otlp.metrics.flatMap(prometheusNames));
    // Not the services' own: the collector's resource series, and what Tempo's metrics generator derives from the spans.
    const derived = /^(target_info|traces_spanmetrics_\w+|traces_service_graph_\w+)$/;
    // Counted only when something fails, which this run does not make happen: declared in the sources instead.
    const onFailure: Record<string, string> = {
      homeostat_queue_retries_total: "homeostat.queue.retries",
      homeostat_queue_dead_lettered_total: "homeostat.queue.dead_lettered",
    };
    const sources = ["packages/workqueue/src/metrics.ts"].map((f) => readFileSync(path.join(repoRoot, f), "utf8")).join("\n");
    const boards = dashboards();
    assert.equal(boards.length, 3);
    for (const d of boards) {
      for (const p of d.panels)
        if (p.datasource.type === "prometheus")
          for (const target of p.targets)
            assert.ok(queriedMetrics({ ...d, panels: [{ ...p, targets: [target] }] }).length > 0, `${d.title} / ${p.title}: names a metric`);
      for (const { panel, metric } of queriedMetrics(d)) {
        if (derived.test(metric)) continue;
        if (onFailure[metric]) assert.ok(sources.includes(`"${onFailure[metric]}"`), `${panel}: ${metric} is declared`);
        else
          assert.ok(
            exported.has(metric),
            `${panel}: ${metric} is exported (seen: ${[...exported]
              .filter((n) => n.startsWith(metric.split("_")[0]!))
              .sort()
              .join(", ")})`,
          );
      }
    }
  });
});
