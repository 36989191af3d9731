/**
 * ListServices: every service instance's latest heartbeat (KV `<prefix>_services`, written by
 * each instance: core heartbeat.ts), aged by the server's clock and marked stale past
 * HOMEOSTAT_HEARTBEAT_MS × 3. Read on each call: the bucket holds one small entry per instance,
 * and a read that never stops (a watcher) would be one more consumer to keep alive across NATS
 * restarts for a command an operator runs now and then.
 */
import type { KV } from "@nats-io/kv";
import { readHeartbeats } from "@homeostat/core/heartbeat";
import type { Logger } from "@homeostat/core/log";
import { toProtoServiceInstance, type ListServicesResponseMessage } from "@homeostat/status-api";

export class ServiceDirectory {
  private readonly kv: KV;
  private readonly staleAfterMs: number;
  private readonly log: Pick<Logger, "warn">;

  constructor(kv: KV, o: { staleAfterMs: number; log: Pick<Logger, "warn"> }) {
    this.kv = kv;
    this.staleAfterMs = o.staleAfterMs;
    this.log = o.log;
  }

  /** The ListServices answer. An entry that does not parse (another version's, or not a heartbeat) is logged and left out. */
  async list(): Promise<ListServicesResponseMessage> {
    const instances = await readHeartbeats(this.kv, {
      staleAfterMs: this.staleAfterMs,
      invalid: (key, reason) => this.log.warn("a heartbeat that does not parse is left out of ListServices", { key, reason }),
    });
    return { instances: instances.map(toProtoServiceInstance), staleAfterMs: String(this.staleAfterMs) };
  }
}
