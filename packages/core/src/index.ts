/** @homeostat/core: what the five services share, one module per concept. */
export * from "./catalog.ts";
export * from "./config.ts";
export * from "./contracts.ts";
export * from "./digest.ts";
export * from "./key.ts";
export * from "./log.ts";
export * from "./messaging.ts";
export * from "./releases.ts";
export * from "./service.ts";
export * from "./state.ts";
export * from "./status.ts";
export * from "./telemetry.ts";
export * from "./topology.ts";
export * from "./version.ts";
export * from "./workqueue.ts";
