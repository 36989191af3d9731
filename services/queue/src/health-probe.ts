/**
 * `node services/queue/src/health-probe.ts`: a container health check of the status API's
 * standard grpc.health.v1 service (Compose has no gRPC probe of its own; Kubernetes uses its
 * built-in one). Asks the queue in the same container (127.0.0.1, the port of
 * HOMEOSTAT_GRPC_ADDR) over plaintext, as probes do on loopback, and exits 0 when it answers
 * SERVING, 1 otherwise (with the reason on stderr). A server with TLS on is probed at /readyz.
 */
import { loadConfig } from "@homeostat/core/config";
import { grpc } from "@homeostat/status-api";
import { HealthDefinition } from "nice-grpc-server-health";

const probeTimeoutMs = 5_000;
const port = loadConfig().grpcAddr.split(":").pop();
const check = HealthDefinition.methods.check;
const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
client.makeUnaryRequest(
  `/${HealthDefinition.fullName}/${check.name}`,
  (req: { service: string }) => Buffer.from(check.requestType.encode(req).finish()),
  (bytes: Buffer) => check.responseType.decode(bytes),
  { service: "" }, // "": the server as a whole
  { deadline: Date.now() + probeTimeoutMs },
  (err, res) => {
    client.close();
    const serving = !err && res?.status === 1; // HealthCheckResponse.ServingStatus.SERVING
    if (!serving) process.stderr.write(`not serving: ${err ? err.message : `status ${res?.status}`}\n`);
    process.exit(serving ? 0 : 1);
  },
);
