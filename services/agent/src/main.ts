/**
 * agent: the agentic reconciler. Takes keys of the `repair` class from the work queue (the
 * traditional reconciler hands them over: a failed build of a new version, a package left in
 * NeedsAttention by an advisory), runs a tool-using model on the key's workspace (repair.ts),
 * and records proposals (KV `<prefix>_proposals`). Without ANTHROPIC_API_KEY it starts, logs
 * `agent disabled`, says so on each key handed to it and leaves the key as it was.
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { AdvisoryStore, CatalogSource, parseCatalogLocation } from "@homeostat/catalog";
import { runService, sha256Hex, StateStore } from "@homeostat/core";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { ProposalStore } from "./proposals.ts";
import { createRepairer, disabledRepair } from "./repair.ts";

await runService("agent", async ({ config, log, nats, buckets, signal }) => {
  const state = new StateStore(buckets.state);
  const queue = new WorkQueue(nats, workQueueOptions(config, {
    log, owner: `agent-${process.pid}`,
    onDeadLetter: async (letter) =>
      void (await state.update(letter.key, (cur) => ({ ...(cur ?? StateStore.initial(letter.key)), phase: "DeadLettered", lastError: letter.reason }))),
  }));
  const { apiKey } = config.agent;
  let reconcile;
  if (!apiKey) {
    log.warn("agent disabled: ANTHROPIC_API_KEY is not set; keys handed to the agent stay in NeedsAttention, failed builds are dead-lettered as before");
    reconcile = disabledRepair(state);
  } else {
    const source = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "agent") });
    const blobs = path.join(config.dataDir, "agent", "blobs", "sha256");
    reconcile = createRepairer({
      client: new Anthropic({ apiKey, ...(config.agent.baseUrl ? { baseURL: config.agent.baseUrl } : {}), maxRetries: 0 }),
      settings: config.agent,
      catalog: () => source.current(),
      state,
      advisories: async (pkg) => (await AdvisoryStore.open(nats)).list(pkg),
      proposals: new ProposalStore(await nats.kvm.open(nats.topology.bucket("proposals"), { allow_direct: true })),
      workRoot: path.join(config.dataDir, "agent", "work"),
      // Transcripts are kept by content, with the API key redacted should a tool ever have echoed it.
      putBlob: async (text) => {
        const redacted = text.split(apiKey).join("[redacted]");
        const hex = sha256Hex(redacted);
        await mkdir(blobs, { recursive: true, mode: 0o700 });
        await writeFile(path.join(blobs, hex), redacted);
        return `sha256:${hex}`;
      },
      log,
    });
    log.info("agent enabled", { model: config.agent.model, maxTurns: config.agent.maxTurns, apply: config.agent.apply });
  }
  const running = queue.run({ concurrency: 1, signal, reconcile, classes: ["repair"] });
  return () => running;
});
