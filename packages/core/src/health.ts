/**
 * Health: what a service instance says about itself, to its probes (health-http.ts: /healthz,
 * /readyz) and to the factory (heartbeat.ts: `homeostat status`), from one state.
 *
 * An instance is ready once its start-up is over (NATS connected, the topology there, its own
 * `main` done) and while every check passes: NATS answers, plus what the service adds (e.g. the
 * queue's status API listening). Until then it says which start-up step it is on and the last
 * error that step met, so that a service waiting out a full disk is seen waiting, not guessed at.
 */
import type { FailureKind } from "./failure.ts";
import type { ServiceName } from "./service.ts";

/** The services a factory needs ready (`homeostat status` fails without one); the agent is optional (disabled without an API key, or not deployed). */
export const requiredServices: readonly ServiceName[] = ["ingest", "queue", "reconciler", "builder", "signer"];

/** ready; not ready (starting, or a check fails); stopping (SIGTERM received); stopped (the last heartbeat of a clean stop). */
export const instanceHealthStates = ["ready", "not ready", "stopping", "stopped"] as const;
export type InstanceHealth = (typeof instanceHealthStates)[number];

export type LastError = { message: string; at: string; kind?: FailureKind };

export type Readiness = { health: InstanceHealth; ready: boolean; reasons: string[]; lastError?: LastError };

/** A readiness check: resolves to why the instance is not ready, or undefined when this part is fine. */
export type ReadinessCheck = () => Promise<string | undefined> | string | undefined;

/** How long a readiness check may take before it counts as failed (a hung check must not hang the probe). */
const checkTimeoutMs = 2_000;

export class ServiceHealth {
  private phase: "starting" | "started" | "stopping" = "starting";
  private step = "starting";
  private error: LastError | undefined;
  private readonly checks = new Map<string, ReadinessCheck>();
  private readonly details = new Map<string, () => string | undefined>();
  private readonly observers = new Set<(r: Readiness) => void>();

  /** The start-up step under way, said while not ready ("connecting to NATS"). */
  starting(step: string): void {
    this.step = step;
  }

  started(): void {
    if (this.phase === "starting") this.phase = "started";
  }

  stopping(): void {
    this.phase = "stopping";
  }

  get isStarted(): boolean {
    return this.phase === "started";
  }

  /** Records an error worth an operator's eye (a failed start-up step, a lost connection): kept, with its time, until the next one. */
  failed(message: string, kind?: FailureKind, at = new Date()): void {
    this.error = { message: message.slice(0, 2048), at: at.toISOString(), ...(kind ? { kind } : {}) };
  }

  get lastError(): LastError | undefined {
    return this.error;
  }

  /** Adds (or replaces) a readiness check under `name`. */
  check(name: string, check: ReadinessCheck): void {
    this.checks.set(name, check);
  }

  /** A service-specific detail its heartbeat carries (e.g. builds in flight); undefined leaves it out. */
  detail(name: string, value: () => string | undefined): void {
    this.details.set(name, value);
  }

  /** The details now, each cut to the length a heartbeat carries (heartbeat.ts). */
  currentDetails(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [name, value] of this.details) {
      const v = value();
      if (v !== undefined) out[name.slice(0, 64)] = v.slice(0, 512);
    }
    return out;
  }

  /** Told each readiness that is computed (by a probe or a heartbeat): e.g. the queue's gRPC health follows it. */
  observe(observer: (r: Readiness) => void): void {
    this.observers.add(observer);
  }

  async readiness(): Promise<Readiness> {
    const reasons: string[] = [];
    let health: InstanceHealth = "ready";
    if (this.phase === "stopping") {
      health = "stopping";
      reasons.push("stopping");
    } else if (this.phase === "starting") {
      health = "not ready";
      reasons.push(`starting: ${this.step}`);
    } else {
      const results = await Promise.all([...this.checks].map(async ([name, check]) => runCheck(name, check)));
      for (const r of results) if (r !== undefined) reasons.push(r);
      if (reasons.length > 0) health = "not ready";
    }
    const r: Readiness = { health, ready: health === "ready", reasons, ...(this.error ? { lastError: this.error } : {}) };
    for (const o of this.observers) o(r);
    return r;
  }
}

async function runCheck(name: string, check: ReadinessCheck): Promise<string | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve(check()),
      new Promise<string>((resolve) => {
        timer = setTimeout(() => resolve(`${name}: no answer within ${checkTimeoutMs} ms`), checkTimeoutMs);
        timer.unref();
      }),
    ]);
  } catch (err) {
    return `${name}: ${err instanceof Error ? err.message : String(err)}`;
  } finally {
    clearTimeout(timer);
  }
}
