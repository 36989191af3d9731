/**
 * Log: one JSON line per event on stderr, with the service name and, when inside a span, the
 * trace id, so logs and traces join up in Grafana.
 */
import { trace } from "@opentelemetry/api";

export type Logger = {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
};

export function createLogger(service: string): Logger {
  const write = (level: string, msg: string, fields?: Record<string, unknown>) => {
    const traceId = trace.getActiveSpan()?.spanContext().traceId;
    process.stderr.write(JSON.stringify({ t: new Date().toISOString(), level, service, msg, ...(traceId ? { traceId } : {}), ...fields }) + "\n");
  };
  return {
    info: (m, f) => write("info", m, f),
    warn: (m, f) => write("warn", m, f),
    error: (m, f) => write("error", m, f),
  };
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
