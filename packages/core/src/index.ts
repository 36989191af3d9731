/** @homeostat/core: what every service shares, one module per concept (see ../README.md). */
export * from "./config.ts";
export * from "./contracts.ts";
export * from "./digest.ts";
export * from "./events.ts";
export * from "./failure.ts";
export * from "./jetstream-errors.ts";
export * from "./jetstream-pipe.ts";
export * from "./key.ts";
export * from "./log.ts";
export * from "./map-limit.ts";
export * from "./messaging.ts";
export * from "./nats-access.ts";
export * from "./service.ts";
export * from "./state.ts";
export * from "./status.ts";
export * from "./telemetry.ts";
export * from "./topology.ts";
