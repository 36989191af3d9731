/**
 * agent: the agentic reconciler. Takes keys of the `repair` class from the work queue (the
 * traditional reconciler hands them over: a failed build of a new version, a package left in
 * NeedsAttention by an advisory), runs a tool-using model on the key's workspace (repair.ts),
 * and records proposals (KV `<prefix>_proposals`). Without ANTHROPIC_API_KEY it starts, logs
 * `agent disabled`, says so on each key handed to it and leaves the key as it was.
 */
import path from "node:path";
import { AdvisoryStore, CatalogSource, parseCatalogLocation, ReleaseStore } from "@homeostat/catalog";
import { openBucket, runService, StateStore } from "@homeostat/core";
import { WorkQueue, workQueueOptions } from "@homeostat/workqueue";
import { ProposalStore } from "@homeostat/proposals";
import { QuestionStore } from "@homeostat/proposals/questions";
import { messagesClient } from "./loop.ts";
import { createRepairer, disabledRepair } from "./repair.ts";
import { TranscriptStore } from "./transcripts.ts";
import { trialRunner } from "./trial.ts";

await runService("agent", async ({ config, log, nats, buckets, signal, health }) => {
  const state = new StateStore(buckets.state);
  const queue = new WorkQueue(
    nats,
    workQueueOptions(config, {
      log,
      owner: `agent-${process.pid}`,
      onDeadLetter: async (letter) =>
        void (await state.update(letter.key, (cur) => ({ ...(cur ?? StateStore.initial(letter.key)), phase: "DeadLettered", lastError: letter.reason }))),
    }),
  );
  const { apiKey } = config.agent;
  let reconcile;
  if (!apiKey) {
    log.warn("agent disabled: ANTHROPIC_API_KEY is not set; keys handed to the agent stay in NeedsAttention, failed builds are dead-lettered as before");
    reconcile = disabledRepair(state);
    health.detail("agent", () => "disabled (no ANTHROPIC_API_KEY)");
  } else {
    const source = await CatalogSource.open(parseCatalogLocation(config.catalogLocation), { cacheDir: path.join(config.dataDir, "catalog", "agent") });
    const releases = new ReleaseStore(buckets.releases);
    const advisories = await AdvisoryStore.open(nats);
    const trials = {
      nats,
      catalog: () => source.current(),
      releases: (pkg: string) => releases.list(pkg),
      advisories: (pkg: string) => advisories.list(pkg),
      status: (key: Parameters<StateStore["get"]>[0]) => state.get(key),
      sourceDateEpoch: config.sourceDateEpoch,
      snapshots: path.join(config.dataDir, "agent", "snapshots"),
      timeoutMs: config.buildTimeoutMs + 60_000,
    };
    const proposalsBucket = await openBucket(nats, "proposals");
    reconcile = createRepairer({
      client: messagesClient(apiKey, config.agent.baseUrl),
      settings: config.agent,
      catalog: () => source.current(),
      source,
      scratch: path.join(config.dataDir, "agent", "snapshots"),
      state,
      advisories: (pkg) => advisories.list(pkg),
      releases: (pkg) => releases.list(pkg),
      proposals: new ProposalStore(proposalsBucket),
      questions: new QuestionStore(proposalsBucket),
      workRoot: path.join(config.dataDir, "agent", "work"),
      sourceRules: { maxBytes: config.maxSourceBytes, allowRemote: config.sourceHosts, timeoutMs: config.buildTimeoutMs },
      trial: (name) => trialRunner(trials, name),
      transcripts: new TranscriptStore(path.join(config.dataDir, "agent", "blobs", "sha256"), [apiKey]),
      log,
    });
    log.info("agent enabled", { model: config.agent.model, maxTurns: config.agent.maxTurns, apply: config.agent.apply });
  }
  const running = queue.run({ concurrency: 1, signal, reconcile, classes: ["repair"] });
  return () => running;
});
