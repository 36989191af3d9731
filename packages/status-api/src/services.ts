/**
 * ListServices on both sides of the wire: the heartbeats the queue service reads (core
 * heartbeat.ts) as proto ServiceInstance messages, and back, validated, for `homeostat status`.
 */
import { serviceInstanceSchema, type ServiceInstance } from "@homeostat/core/heartbeat";
import { callOptions, ContractViolation, parseCount, type CallOptions, type StatusClient } from "./grpc.ts";
import type { ListServicesResponse, ServiceInstance as ProtoServiceInstance } from "./generated/homeostat/v1/status.ts";

export function toProtoServiceInstance(s: ServiceInstance): ProtoServiceInstance {
  return {
    service: s.service,
    instance: s.instance,
    version: s.version,
    region: s.region,
    host: s.host,
    pid: String(s.pid),
    startedAt: s.startedAt,
    heartbeatAt: s.at,
    health: s.health,
    reasons: s.reasons,
    lastError: s.lastError?.message,
    lastErrorAt: s.lastError?.at,
    details: s.details,
    ageMs: String(s.ageMs),
    stale: s.stale,
  };
}

export function fromProtoServiceInstance(m: ProtoServiceInstance): ServiceInstance {
  const parsed = serviceInstanceSchema.safeParse({
    v: 1,
    service: m.service,
    instance: m.instance,
    version: m.version,
    region: m.region,
    host: m.host,
    pid: parseCount(m.pid, "pid"),
    startedAt: m.startedAt,
    at: m.heartbeatAt,
    health: m.health,
    reasons: m.reasons,
    ...(m.lastError !== undefined ? { lastError: { message: m.lastError, at: m.lastErrorAt ?? m.heartbeatAt } } : {}),
    details: m.details,
    ageMs: parseCount(m.ageMs, "age_ms"),
    stale: m.stale,
  });
  if (!parsed.success) {
    const where = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    throw new ContractViolation(`invalid ServiceInstance ${m.service}.${m.instance}: ${where}`);
  }
  return parsed.data;
}

/** The wire message ListServices answers with. */
export type ListServicesResponseMessage = ListServicesResponse;

export type ServiceList = { instances: ServiceInstance[]; staleAfterMs: number };

/** ListServices: every instance that wrote a heartbeat lately, validated. */
export async function listServices(client: StatusClient, opts: CallOptions = {}): Promise<ServiceList> {
  const res: ListServicesResponse = await client.rpc.listServices({}, callOptions(opts));
  return { instances: res.instances.map(fromProtoServiceInstance), staleAfterMs: parseCount(res.staleAfterMs, "stale_after_ms") };
}
