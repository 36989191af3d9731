export * from "./proposal.ts";
export * from "./store.ts";
