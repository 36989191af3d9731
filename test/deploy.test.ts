/**
 * The deployments, checked statically (no Docker engine or cluster here): Compose and the
 * Kubernetes base run NATS with authentication, hand each service its own NATS identity and
 * nothing of another's, keep the signing key with the signer alone, run services as non-root
 * with read-only root filesystems, and publish nothing beyond loopback (Compose) or the cluster.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { parse, parseAllDocuments } from "yaml";
import { serviceIdentities } from "@homeostat/core";
import { repoRoot } from "../scripts/factory.ts";

type ComposeService = {
  command?: string[];
  user?: string;
  read_only?: boolean;
  cap_drop?: string[];
  environment?: Record<string, string>;
  secrets?: (string | { source: string; target?: string })[];
  volumes?: (string | { type: string; target: string })[];
  ports?: string[];
};
const compose = parse(readFileSync(path.join(repoRoot, "deploy", "compose.yaml"), "utf8"), { merge: true }) as {
  services: Record<string, ComposeService>;
  secrets: Record<string, { file: string }>;
};
const secretsOf = (s: ComposeService) => (s.secrets ?? []).map((x) => (typeof x === "string" ? x : x.source));
const volumesOf = (s: ComposeService) => (s.volumes ?? []).map((v) => (typeof v === "string" ? v.split(":")[0] : v.target));

test("compose: NATS reads the generated authorization and is not published", () => {
  const nats = compose.services.nats!;
  assert.deepEqual(nats.command, ["-c", "/etc/nats/nats-server.conf"]);
  assert.ok(nats.volumes?.includes("./secrets/nats/nats-server.conf:/etc/nats/nats-server.conf:ro"));
  assert.equal(nats.ports, undefined);
  assert.equal(compose.services.redis!.ports, undefined);
});

test("compose: each service gets its own NATS seed and no other's, non-root and read-only", () => {
  for (const name of serviceIdentities) {
    const s = compose.services[name]!;
    const nats = secretsOf(s).filter((x) => x.startsWith("nats-"));
    assert.deepEqual(nats, [`nats-${name}`], name);
    assert.equal(s.environment?.NATS_NKEY_SEED_FILE, "/run/secrets/nats-seed", name);
    assert.equal(compose.secrets[`nats-${name}`]!.file, `./secrets/nats/${name}.nk`);
    assert.equal(s.user, "1000:1000", name);
    assert.equal(s.read_only, true, name);
    assert.deepEqual(s.cap_drop, ["ALL"], name);
  }
});

test("compose: the signing key's volume is the signer's alone; builder and signer share only the artifact store", () => {
  for (const [name, s] of Object.entries(compose.services)) {
    const volumes = volumesOf(s);
    if (name === "signer") assert.ok(volumes.includes("signer-key") && s.environment?.HOMEOSTAT_SIGNER_DIR === "/signer");
    else assert.ok(!volumes.includes("signer-key"), name);
    if (name !== "builder" && name !== "signer") assert.ok(!volumes.includes("artifacts"), name);
    if (name !== "builder") assert.ok(!secretsOf(s).includes("builder-key"), name);
  }
});

test("compose: published ports listen on loopback only", () => {
  for (const [name, s] of Object.entries(compose.services)) for (const p of s.ports ?? []) assert.match(p, /^127\.0\.0\.1:/, `${name}: ${p}`);
});

test("kubernetes: the base builds, each Deployment mounts only its own NATS Secret, the signing key only the signer", (t) => {
  if (spawnSync("kubectl", ["version", "--client"], { stdio: "ignore" }).status !== 0)
    return t.skip("kubectl is not installed (it builds the kustomize base offline)");
  const docs = parseAllDocuments(execFileSync("kubectl", ["kustomize", path.join(repoRoot, "deploy", "k8s")], { encoding: "utf8" })).map(
    (d) => d.toJS() as K8sObject,
  );
  const secretsIn = (o: K8sObject) => (o.spec.template?.spec.volumes ?? []).flatMap((v) => (v.secret ? [v.secret.secretName] : []));
  for (const name of serviceIdentities) {
    const deployment = docs.find((o) => o.kind === "Deployment" && o.metadata.name === name)!;
    const pod = deployment.spec.template!.spec;
    assert.deepEqual(
      secretsIn(deployment).filter((s) => s.startsWith("homeostat-nats-")),
      [`homeostat-nats-${name}`],
      name,
    );
    assert.equal(secretsIn(deployment).includes("homeostat-signing-key"), name === "signer", name);
    assert.equal(pod.securityContext.runAsNonRoot, true, name);
    assert.equal(pod.automountServiceAccountToken, false, name);
    for (const c of pod.containers) assert.equal(c.securityContext.readOnlyRootFilesystem, true, name);
  }
  const nats = docs.find((o) => o.kind === "StatefulSet" && o.metadata.name === "nats")!;
  assert.deepEqual(secretsIn(nats), ["homeostat-nats-server"]);
  assert.ok(nats.spec.template!.spec.containers[0]!.args!.includes("/etc/nats/nats-server.conf"));
  for (const svc of docs.filter((o) => o.kind === "Service")) assert.ok(svc.spec.type === undefined || svc.spec.type === "ClusterIP", svc.metadata.name);
  assert.ok(docs.some((o) => o.kind === "NetworkPolicy" && o.metadata.name === "default-deny-ingress"));
});

type K8sObject = {
  kind: string;
  metadata: { name: string };
  spec: {
    type?: string;
    template?: {
      spec: {
        automountServiceAccountToken?: boolean;
        securityContext: { runAsNonRoot?: boolean };
        containers: { args?: string[]; securityContext: { readOnlyRootFilesystem?: boolean } }[];
        volumes?: { secret?: { secretName: string } }[];
      };
    };
  };
};

const collectorConfig = parse(readFileSync(path.join(repoRoot, "deploy", "k8s", "otel-collector", "config.yaml"), "utf8")) as {
  receivers: { otlp: { protocols: Record<string, unknown> } };
  exporters: Record<string, { endpoint?: string }>;
  service: { pipelines: Record<string, { receivers: string[]; exporters: string[] }> };
};

test("telemetry: every service sends to the collector only, which sends traces to Tempo and metrics to Prometheus", () => {
  for (const name of serviceIdentities) {
    const env = compose.services[name]!.environment ?? {};
    assert.equal(env.OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel-collector:4318", name);
    assert.equal(env.OTEL_SERVICE_NAME, undefined, `${name}: service.name defaults to the service's own name`);
  }
  assert.ok(volumesOf(compose.services["otel-collector"]!).includes("./k8s/otel-collector/config.yaml"));
  assert.deepEqual(compose.services["otel-collector"]!.ports ?? [], [], "the collector is not published");
  assert.deepEqual(Object.keys(collectorConfig.receivers.otlp.protocols).sort(), ["grpc", "http"]);
  assert.deepEqual(collectorConfig.service.pipelines.traces!.exporters, ["otlp/tempo"]);
  assert.equal(collectorConfig.exporters["otlp/tempo"]!.endpoint, "tempo:4317");
  assert.deepEqual(collectorConfig.service.pipelines.metrics!.exporters, ["prometheus"]);
  const scrape = parse(readFileSync(path.join(repoRoot, "deploy", "prometheus", "prometheus.yaml"), "utf8")) as {
    scrape_configs: { static_configs: { targets: string[] }[] }[];
  };
  assert.deepEqual(
    scrape.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets)),
    [`otel-collector:${collectorConfig.exporters.prometheus!.endpoint!.split(":")[1]}`],
  );
});

test("telemetry: Grafana is provisioned with Tempo and Prometheus, linked, and a dashboard whose queries name exported metrics", () => {
  const dir = path.join(repoRoot, "deploy", "grafana");
  const sources = ["tempo.yaml", "prometheus.yaml"].flatMap(
    (f) =>
      (
        parse(readFileSync(path.join(dir, "provisioning", "datasources", f), "utf8")) as {
          datasources: { uid: string; type: string; jsonData?: Record<string, { datasourceUid?: string }> }[];
        }
      ).datasources,
  );
  assert.deepEqual(sources.map((s) => s.type).sort(), ["prometheus", "tempo"]);
  assert.equal(sources.find((s) => s.type === "tempo")!.jsonData!.tracesToMetrics!.datasourceUid, "prometheus");
  assert.ok(volumesOf(compose.services.grafana!).includes("./grafana/dashboards"));
  const dashboard = JSON.parse(readFileSync(path.join(dir, "dashboards", "homeostat.json"), "utf8")) as {
    panels: { title: string; datasource: { uid: string }; targets: { expr: string }[] }[];
  };
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr)).join("\n");
  // Prometheus names of what the services export (the collector adds _total and unit suffixes).
  for (const metric of [
    "homeostat_queue_depth",
    "homeostat_messages_processed_total",
    "messaging_process_duration_seconds_bucket",
    "homeostat_builder_refused_total",
    "homeostat_signer_refused_total",
    "http_server_request_duration_seconds_count",
    "target_info",
  ]) {
    assert.ok(exprs.includes(metric), `the dashboard queries ${metric}`);
  }
  for (const p of dashboard.panels)
    assert.ok(
      sources.some((s) => s.uid === p.datasource.uid),
      p.title,
    );
});

test("telemetry, kubernetes: a collector with its configuration, services pointed at it, pods named in their resource", (t) => {
  if (spawnSync("kubectl", ["version", "--client"], { stdio: "ignore" }).status !== 0) return t.skip("kubectl is not installed");
  const docs = parseAllDocuments(execFileSync("kubectl", ["kustomize", path.join(repoRoot, "deploy", "k8s")], { encoding: "utf8" })).map(
    (d) => d.toJS() as K8sObject & { data?: Record<string, string> },
  );
  const collector = docs.find((o) => o.kind === "Deployment" && o.metadata.name === "otel-collector")!;
  assert.ok(collector, "a collector Deployment");
  const config = docs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("otel-collector-config"))!;
  assert.deepEqual(parse(config.data!["config.yaml"]!), collectorConfig, "the same configuration as compose");
  const env = docs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("homeostat-env"))!;
  assert.equal(env.data!.OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel-collector:4318");
  assert.ok(docs.some((o) => o.kind === "NetworkPolicy" && o.metadata.name === "otel-collector-from-services"));
  for (const name of serviceIdentities) {
    const c = docs.find((o) => o.kind === "Deployment" && o.metadata.name === name)!.spec.template!.spec.containers[0] as unknown as {
      env: { name: string; value?: string }[];
    };
    const names = c.env.map((e) => e.name);
    const attrs = c.env.find((e) => e.name === "OTEL_RESOURCE_ATTRIBUTES")!.value!;
    assert.match(attrs, /k8s\.pod\.name=\$\(K8S_POD_NAME\)/, name);
    // $(VAR) expands only from variables defined earlier in the list.
    for (const v of attrs.match(/\$\((\w+)\)/g)!)
      assert.ok(names.indexOf(v.slice(2, -1)) >= 0 && names.indexOf(v.slice(2, -1)) < names.indexOf("OTEL_RESOURCE_ATTRIBUTES"), `${name}: ${v}`);
    assert.ok(!names.includes("OTEL_SERVICE_NAME"), name);
  }
});
