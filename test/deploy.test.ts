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
import { repoRoot, serviceNodeOptions } from "../scripts/factory.ts";
import { loadCompose, secretsOf, volumesOf } from "./fixtures/compose.ts";
import { dashboards } from "./dashboards.ts";

const compose = loadCompose("compose.yaml");

test("compose: NATS reads the generated authorization and is not published", () => {
  const nats = compose.services.nats!;
  assert.deepEqual(nats.command!.slice(0, 2), ["-c", "/etc/nats/nats-server.conf"]);
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

test("compose: published ports listen on loopback unless HOMEOSTAT_PUBLISH_ADDRESS says otherwise", () => {
  for (const [name, s] of Object.entries(compose.services))
    for (const p of s.ports ?? []) assert.match(p, /^\$\{HOMEOSTAT_PUBLISH_ADDRESS:-127\.0\.0\.1\}:\d+:\d+$/, `${name}: ${p}`);
});

test("compose: every long-running service has a health check, and starts after what it needs is healthy", () => {
  // The collector's image is distroless (nothing to run a check with); an init job and the CLI run and end.
  const unchecked = new Set(["otel-collector", "tempo-init", "cli"]);
  for (const [name, s] of Object.entries(compose.services)) {
    if (!unchecked.has(name)) assert.ok(s.healthcheck?.test && !s.healthcheck.disable, `${name} has a health check`);
    for (const [dep, { condition }] of Object.entries(s.depends_on ?? {}))
      assert.equal(
        condition,
        unchecked.has(dep) ? (dep === "tempo-init" ? "service_completed_successfully" : "service_started") : "service_healthy",
        `${name} waits for ${dep}`,
      );
  }
  // Each service's own readiness: ingest's on its HTTP port, the queue's gRPC health service, the others' health endpoint.
  const check = (name: string) => compose.services[name]!.healthcheck!.test!.join(" ");
  assert.match(check("ingest"), /127\.0\.0\.1:8080\/readyz/);
  assert.match(check("queue"), /services\/queue\/src\/health-probe\.ts/);
  for (const name of ["reconciler", "builder", "signer", "agent"]) {
    assert.match(check(name), new RegExp(`127\\.0\\.0\\.1:${compose.services[name]!.environment!.HOMEOSTAT_HEALTH_PORT}/readyz`), name);
    assert.equal(compose.services[name]!.depends_on!.queue!.condition, "service_healthy", `${name} starts after the queue made the topology`);
  }
  assert.match(compose.services.nats!.image!, /^nats:\d+\.\d+\.\d+/, "NATS pinned to a release");
});

test("image: multi-stage, production dependencies only, bubblewrap in it, a non-root user, the services' Node options; no .env or secrets in the build context", () => {
  const dockerfile = readFileSync(path.join(repoRoot, "deploy", "Dockerfile"), "utf8");
  const stages = dockerfile.split(/^FROM /m).slice(1);
  assert.ok(stages.length >= 2, "more than one stage");
  const final = stages[stages.length - 1]!;
  assert.match(final, /pnpm install [^\n]*--prod\b/, "the image installs production dependencies only");
  assert.match(final, /COPY --from=build /, "it takes only what the build stage made");
  assert.match(final, /apt-get install[^\n]*\bbubblewrap\b/);
  assert.match(final, /^USER node$/m);
  assert.doesNotMatch(final, /^RUN .*(pnpm gen|--prod=false)/m, "no development tools run in the image");
  assert.ok(final.includes(`NODE_OPTIONS=${serviceNodeOptions} `), "the services run with the options a launcher gives them");
  const ignored = readFileSync(path.join(repoRoot, "deploy", "Dockerfile.dockerignore"), "utf8").split("\n");
  for (const p of ["**/.env", "**/.env.*", "deploy/secrets", "**/node_modules"]) assert.ok(ignored.includes(p), `${p} is not in the context`);
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

/** `kubectl kustomize <dir>` (offline), parsed; undefined when kubectl is not installed. */
function rendered(dir: string): K8sObject[] | undefined {
  if (spawnSync("kubectl", ["version", "--client"], { stdio: "ignore" }).status !== 0) return undefined;
  return parseAllDocuments(execFileSync("kubectl", ["kustomize", path.join(repoRoot, dir)], { encoding: "utf8" })).map((d) => d.toJS() as K8sObject);
}

type Probe = { httpGet?: { path: string; port: string | number }; grpc?: { port: number }; tcpSocket?: { port: string | number } };
type Container = {
  name: string;
  image?: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  ports?: { name?: string; containerPort: number }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  securityContext: { readOnlyRootFilesystem?: boolean };
};
const workloads = (docs: K8sObject[]): K8sObject[] => docs.filter((o) => o.kind === "Deployment" || o.kind === "StatefulSet");
const containersOf = (o: K8sObject): Container[] => o.spec.template!.spec.containers as unknown as Container[];

test("kubernetes: every container has readiness and liveness probes; each service's are its own health endpoint or gRPC health", (t) => {
  const docs = rendered("deploy/k8s");
  if (!docs) return t.skip("kubectl is not installed");
  for (const w of workloads(docs))
    for (const c of containersOf(w)) assert.ok(c.readinessProbe && c.livenessProbe, `${w.metadata.name}/${c.name} has readiness and liveness probes`);
  const env = docs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("homeostat-env"))!.data!;
  assert.equal(env.HOMEOSTAT_HEALTH_HOST, "0.0.0.0", "the health endpoint answers the kubelet on the pod's address");
  for (const name of ["reconciler", "builder", "signer", "agent"]) {
    const c: Container = containersOf(docs.find((o) => o.kind === "Deployment" && o.metadata.name === name)!)[0]!;
    const port = c.ports!.find((p) => p.name === c.readinessProbe!.httpGet!.port)!;
    assert.equal(String(port.containerPort), env.HOMEOSTAT_HEALTH_PORT, name);
    assert.equal(c.readinessProbe!.httpGet!.path, "/readyz", name);
    assert.equal(c.livenessProbe!.httpGet!.path, "/healthz", name);
  }
  const queue = containersOf(docs.find((o) => o.kind === "Deployment" && o.metadata.name === "queue")!)[0]!;
  assert.equal(queue.readinessProbe!.grpc!.port, 50051, "the queue is ready when its gRPC health service says so");
  assert.equal(containersOf(docs.find((o) => o.kind === "Deployment" && o.metadata.name === "ingest")!)[0]!.readinessProbe!.httpGet!.path, "/readyz");
});

test("kubernetes telemetry overlay: Tempo, Prometheus and Grafana with Compose's configuration, the three dashboards, no anonymous Grafana, only the flows they need", (t) => {
  const docs = rendered("deploy");
  if (!docs) return t.skip("kubectl is not installed");
  const base = rendered("deploy/k8s")!;
  const named = (kind: string, name: string) => docs.find((o) => o.kind === kind && o.metadata.name === name);
  // (A generated ConfigMap's name ends in a hash of its content, which the overlay may change.)
  const unhashed = (o: K8sObject) => (o.kind === "ConfigMap" ? o.metadata.name.replace(/-[a-z0-9]{10}$/, "") : o.metadata.name);
  for (const b of base)
    assert.ok(
      docs.some((o) => o.kind === b.kind && unhashed(o) === unhashed(b)),
      `the overlay keeps ${b.kind} ${b.metadata.name}`,
    );
  for (const [kind, name] of [
    ["StatefulSet", "tempo"],
    ["StatefulSet", "prometheus"],
    ["Deployment", "grafana"],
  ] as const) {
    const w = named(kind, name);
    assert.ok(w, `${kind} ${name}`);
    assert.equal(w.spec.template!.spec.securityContext.runAsNonRoot, true, name);
    assert.equal(w.spec.template!.spec.automountServiceAccountToken, false, name);
    for (const c of containersOf(w)) {
      assert.equal(c.securityContext.readOnlyRootFilesystem, true, name);
      assert.ok(c.readinessProbe && c.livenessProbe, `${name} probes`);
    }
  }
  // One copy of each configuration: what Compose mounts is what the ConfigMaps hold.
  const configMap = (prefix: string) => docs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith(prefix))!.data!;
  const file = (f: string) => readFileSync(path.join(repoRoot, "deploy", f), "utf8");
  assert.equal(configMap("tempo-config")["tempo.yaml"], file("tempo/tempo.yaml"));
  assert.equal(configMap("prometheus-config")["prometheus.yaml"], file("prometheus/prometheus.yaml"));
  assert.deepEqual(
    Object.keys(configMap("grafana-dashboards")).sort(),
    dashboards()
      .map((d) => d.file)
      .sort(),
    "every dashboard, and only those",
  );
  // The collector sends to Service tempo:4317; Tempo remote-writes to Service prometheus:9090; Grafana's datasources name both.
  assert.ok((named("Service", "tempo")!.spec as unknown as { ports: { port: number }[] }).ports.some((p) => p.port === 4317));
  assert.ok((named("Service", "prometheus")!.spec as unknown as { ports: { port: number }[] }).ports.some((p) => p.port === 9090));
  assert.match(file("tempo/tempo.yaml"), /url: http:\/\/prometheus:9090\/api\/v1\/write/);
  assert.match(file("tempo/tempo.yaml"), /processors: \[service-graphs, span-metrics\]/);
  const grafana = containersOf(named("Deployment", "grafana")!)[0]!;
  const genv = Object.fromEntries(grafana.env!.map((e) => [e.name, e.value]));
  assert.equal(genv.GF_AUTH_ANONYMOUS_ENABLED, "false");
  assert.match(genv.GF_SECURITY_ADMIN_PASSWORD__FILE!, /^\/var\/run\/secrets\//);
  const policies = docs.filter((o) => o.kind === "NetworkPolicy").map((o) => o.metadata.name);
  for (const p of [
    "default-deny-ingress",
    "tempo-from-collector-and-grafana",
    "prometheus-from-grafana-and-tempo",
    "otel-collector-metrics-from-prometheus",
    "grafana-http",
  ])
    assert.ok(policies.includes(p), p);
});

type PodSpec = {
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  securityContext?: SecurityContext & { sysctls?: unknown[] };
  containers: (Container & { securityContext?: SecurityContext & { privileged?: boolean; procMount?: string } })[];
  initContainers?: PodSpec["containers"];
  volumes?: Record<string, unknown>[];
};
type SecurityContext = {
  runAsNonRoot?: boolean;
  runAsUser?: number;
  allowPrivilegeEscalation?: boolean;
  capabilities?: { drop?: string[]; add?: string[] };
  seccompProfile?: { type: string };
  appArmorProfile?: { type: string };
};

/** Why a pod fails the Pod Security Standards' `restricted` profile (its rules as of Kubernetes 1.30); empty when it passes. */
export function restrictedViolations(pod: PodSpec): string[] {
  const out: string[] = [];
  if (pod.hostNetwork || pod.hostPID || pod.hostIPC) out.push("host namespaces");
  if (pod.securityContext?.sysctls?.length) out.push("sysctls");
  const allowedVolumes = ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];
  for (const v of pod.volumes ?? []) {
    const type = Object.keys(v).find((k) => k !== "name");
    if (!type || !allowedVolumes.includes(type)) out.push(`volume ${String(v.name)} of type ${type}`);
  }
  const podSc = pod.securityContext ?? {};
  if (podSc.runAsUser === 0) out.push("pod runs as uid 0");
  for (const c of [...pod.containers, ...(pod.initContainers ?? [])]) {
    const sc = c.securityContext ?? {};
    if (sc.privileged) out.push(`${c.name}: privileged`);
    if (sc.procMount && sc.procMount !== "Default") out.push(`${c.name}: procMount ${sc.procMount}`);
    if (sc.allowPrivilegeEscalation !== false) out.push(`${c.name}: allowPrivilegeEscalation is not false`);
    if (!(sc.capabilities?.drop ?? []).includes("ALL")) out.push(`${c.name}: capabilities do not drop ALL`);
    for (const cap of sc.capabilities?.add ?? []) if (cap !== "NET_BIND_SERVICE") out.push(`${c.name}: adds ${cap}`);
    if ((sc.runAsNonRoot ?? podSc.runAsNonRoot) !== true) out.push(`${c.name}: runAsNonRoot is not true`);
    if (sc.runAsUser === 0) out.push(`${c.name}: runs as uid 0`);
    const seccomp = (sc.seccompProfile ?? podSc.seccompProfile)?.type;
    if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") out.push(`${c.name}: seccomp profile ${seccomp}`);
    const apparmor = (sc.appArmorProfile ?? podSc.appArmorProfile)?.type;
    if (apparmor === "Unconfined") out.push(`${c.name}: AppArmor Unconfined`);
  }
  return out;
}

test("kubernetes: the namespace enforces Pod Security restricted, and every pod of the base and the overlay passes it", (t) => {
  const docs = rendered("deploy");
  if (!docs) return t.skip("kubectl is not installed");
  const ns = docs.find((o) => o.kind === "Namespace")! as unknown as { metadata: { labels: Record<string, string> } };
  for (const mode of ["enforce", "audit", "warn"]) assert.equal(ns.metadata.labels[`pod-security.kubernetes.io/${mode}`], "restricted", mode);
  for (const w of workloads(docs)) assert.deepEqual(restrictedViolations(w.spec.template!.spec as unknown as PodSpec), [], `${w.kind} ${w.metadata.name}`);
  // The check can fail: a pod as the builder's used to be.
  assert.deepEqual(
    restrictedViolations({
      containers: [
        {
          name: "b",
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] }, runAsNonRoot: true, seccompProfile: { type: "Unconfined" } },
        },
      ],
    } as PodSpec),
    ["b: seccomp profile Unconfined"],
  );
});

test("kubernetes: the single-region install runs NATS as a cluster of three, pinned to a release, streams at three replicas", (t) => {
  const docs = rendered("deploy");
  if (!docs) return t.skip("kubectl is not installed");
  const nats = docs.find((o) => o.kind === "StatefulSet" && o.metadata.name === "nats")! as unknown as K8sObject & { spec: { replicas: number } };
  assert.equal(nats.spec.replicas, 3);
  const c = containersOf(nats)[0]!;
  assert.match(c.image!, /^nats:\d+\.\d+\.\d+/, "a release, not a moving tag");
  const routes = c.args!.find((a) => a.startsWith("--routes="))!;
  assert.deepEqual(
    routes.slice("--routes=".length).split(","),
    [0, 1, 2].map((i) => `nats://nats-${i}.nats-headless:6222`),
  );
  assert.ok(c.args!.includes("--name=$(POD_NAME)") && c.env!.some((e) => e.name === "POD_NAME"), "each server named after its pod");
  assert.equal(docs.find((o) => o.kind === "ConfigMap" && o.metadata.name.startsWith("homeostat-env"))!.data!.HOMEOSTAT_JS_REPLICAS, "3");
  assert.ok(docs.some((o) => o.kind === "NetworkPolicy" && o.metadata.name === "nats-cluster-routes"));
});

/**
 * What the Kubernetes OpenAPI schema of `o`'s apiVersion and kind (kubernetes-models, validators
 * generated from those schemas) finds wrong with it: types, enums, required fields; an apiVersion
 * and kind it does not know is itself an error. The schemas allow unknown fields, so a misspelt
 * field passes here as it would pass client-side validation.
 */
async function openApiErrors(o: { apiVersion?: string; kind: string }): Promise<string[]> {
  let Model: new (data: unknown) => { validate(): void };
  try {
    Model = ((await import(`kubernetes-models/${o.apiVersion}/${o.kind}`)) as Record<string, typeof Model>)[o.kind]!;
  } catch {
    return [`no Kubernetes schema for ${o.apiVersion} ${o.kind}`];
  }
  try {
    new Model(o).validate();
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}

test("kubernetes: every object of the base, the telemetry overlay and each region validates against the Kubernetes OpenAPI schemas", async (t) => {
  const dirs = ["deploy/k8s", "deploy", ...["a", "b", "c"].map((r) => `deploy/regions/k8s/region-${r}`)];
  let checked = 0;
  for (const dir of dirs) {
    const docs = rendered(dir);
    if (!docs) return t.skip("kubectl is not installed");
    for (const o of docs) {
      assert.deepEqual(await openApiErrors(o), [], `${dir}: ${o.kind} ${o.metadata.name}`);
      checked++;
    }
  }
  assert.ok(checked > 50, `${checked} objects`);
  // The same check refuses what the API server would: a field of the wrong type, an unknown kind.
  const deployment = rendered("deploy/k8s")!.find((o) => o.kind === "Deployment")!;
  assert.notDeepEqual(await openApiErrors({ ...deployment, spec: { ...deployment.spec, replicas: "three" } } as K8sObject), []);
  assert.deepEqual(await openApiErrors({ apiVersion: "apps/v1", kind: "Deplyment" }), ["no Kubernetes schema for apps/v1 Deplyment"]);
});

test("kubernetes: a PodDisruptionBudget for every workload", (t) => {
  const docs = rendered("deploy");
  if (!docs) return t.skip("kubectl is not installed");
  const budgets = docs.filter((o) => o.kind === "PodDisruptionBudget") as unknown as { spec: { selector: { matchLabels: Record<string, string> } } }[];
  for (const w of workloads(docs)) {
    const labels = (w.spec.template as unknown as { metadata: { labels: Record<string, string> } }).metadata.labels;
    assert.ok(
      budgets.some((b) => Object.entries(b.spec.selector.matchLabels).every(([k, v]) => labels[k] === v)),
      `${w.kind} ${w.metadata.name} has a PodDisruptionBudget`,
    );
  }
});

type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string };
  data?: Record<string, string>;
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

type Datasource = {
  uid: string;
  type: string;
  jsonData?: {
    tracesToMetrics?: { datasourceUid?: string };
    serviceMap?: { datasourceUid?: string };
    exemplarTraceIdDestinations?: { datasourceUid: string }[];
  };
};
const provisionedDatasources = (): Datasource[] =>
  ["tempo.yaml", "prometheus.yaml"].flatMap(
    (f) =>
      (parse(readFileSync(path.join(repoRoot, "deploy", "grafana", "provisioning", "datasources", f), "utf8")) as { datasources: Datasource[] }).datasources,
  );

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

test("telemetry: Grafana is provisioned with Tempo and Prometheus, linked both ways, and the three dashboards use only them", () => {
  const sources = provisionedDatasources();
  assert.deepEqual(sources.map((s) => s.type).sort(), ["prometheus", "tempo"]);
  const tempo = sources.find((s) => s.type === "tempo")!;
  assert.equal(tempo.jsonData!.tracesToMetrics!.datasourceUid, "prometheus", "trace -> metrics");
  assert.equal(tempo.jsonData!.serviceMap!.datasourceUid, "prometheus", "service graph from the metrics generator");
  assert.deepEqual(
    sources.find((s) => s.type === "prometheus")!.jsonData!.exemplarTraceIdDestinations!.map((d) => d.datasourceUid),
    ["tempo"],
    "metrics -> trace",
  );
  assert.ok(volumesOf(compose.services.grafana!).includes("./grafana/dashboards"));
  const boards = dashboards();
  assert.deepEqual(boards.map((d) => d.title).sort(), ["Builds and signing", "Factory overview", "Queue"]);
  assert.equal(new Set(boards.map((d) => d.uid)).size, boards.length, "distinct uids");
  for (const d of boards)
    for (const p of d.panels) {
      assert.ok(p.targets.length > 0, `${d.title} / ${p.title} queries something`);
      for (const ds of [p.datasource, ...p.targets.map((t) => t.datasource)])
        assert.ok(
          sources.some((s) => s.uid === ds.uid && s.type === ds.type),
          `${d.title} / ${p.title}: datasource ${ds.type}/${ds.uid} is provisioned`,
        );
    }
  const titles = (t: string) =>
    boards
      .find((d) => d.title === t)!
      .panels.map((p) => p.title.toLowerCase())
      .join("\n");
  for (const [board, words] of Object.entries({
    "Factory overview": ["keys by phase", "rebuilds by trigger", "failures", "dead letters", "signed"],
    Queue: ["depth per class", "wait", "run time", "retries", "in flight"],
    "Builds and signing": ["build duration", "sign duration", "cache hit", "outcome", "slowest builds"],
  }))
    for (const w of words) assert.ok(titles(board).includes(w), `${board} has a panel on ${w}`);
  // The slowest builds link to their traces: a Tempo search, whose rows open the trace.
  const slowest = boards.flatMap((d) => d.panels).find((p) => p.title.startsWith("Slowest builds"))!;
  assert.equal(slowest.datasource.type, "tempo");
  assert.match(slowest.targets[0]!.query!, /name = "builder\.build"/);
});

test("telemetry: Grafana is not an anonymous admin; its admin password is a secret", () => {
  const env = compose.services.grafana!.environment ?? {};
  assert.notEqual(env.GF_AUTH_ANONYMOUS_ORG_ROLE, "Admin");
  assert.notEqual(env.GF_AUTH_ANONYMOUS_ENABLED, "true");
  assert.equal(env.GF_SECURITY_ADMIN_PASSWORD__FILE, "/run/secrets/grafana-admin-password");
  assert.ok(secretsOf(compose.services.grafana!).includes("grafana-admin-password"));
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
