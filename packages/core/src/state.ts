/**
 * State: the durable per-key status (JetStream KV, the source of truth). Its query-side read
 * model (Redis) belongs to the queue service (services/queue/src/read-model.ts).
 *
 * Writers change a key's status only through `StateStore.update`, a compare-and-set loop on
 * the KV revision, so concurrent writers (reconciler, builder, signer) never lose each
 * other's fields. Readers that serve users (gRPC, CLI) read Redis, which the queue service
 * rebuilds from KV at every start: losing Redis loses nothing.
 */
import type { KV } from "@nats-io/kv";
import { isRevisionConflict } from "./jetstream-errors.ts";
import { keyToken, type Key } from "./key.ts";
import { keyStatusSchema, type KeyStatus } from "./status.ts";

export class StateStore {
  readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  async get(key: Key): Promise<KeyStatus | undefined> {
    const e = await this.kv.get(keyToken(key));
    if (!e || e.operation !== "PUT") return undefined;
    return keyStatusSchema.parse(e.json());
  }

  /**
   * Applies `change` to the current status and writes the result if nobody wrote in between;
   * otherwise re-reads and applies again. `change` returning undefined writes nothing.
   */
  async update(key: Key, change: (current: KeyStatus | undefined) => KeyStatus | undefined): Promise<KeyStatus | undefined> {
    const token = keyToken(key);
    for (let attempt = 0; ; attempt++) {
      const e = await this.kv.get(token);
      const current = e && e.operation === "PUT" ? keyStatusSchema.parse(e.json()) : undefined;
      const next = change(current);
      if (!next) return current;
      const body = JSON.stringify({ ...next, key, updatedAt: new Date().toISOString() });
      try {
        if (e) await this.kv.update(token, body, e.revision);
        else await this.kv.create(token, body);
        return keyStatusSchema.parse(JSON.parse(body));
      } catch (err) {
        if (attempt >= 50 || !isRevisionConflict(err)) throw err;
      }
    }
  }

  /**
   * Deletes the key's status (a key that left the catalog); false when it had none. The delete
   * is a KV tombstone, so the read model drops the key too.
   */
  async remove(key: Key): Promise<boolean> {
    const e = await this.kv.get(keyToken(key));
    if (!e || e.operation !== "PUT") return false;
    await this.kv.delete(keyToken(key));
    return true;
  }

  /** A fresh status for a key that has none yet. */
  static initial(key: Key): KeyStatus {
    return { key, phase: "Pending", attempts: 0, updatedAt: new Date().toISOString() };
  }
}
