export * from "./grpc.ts";
export * from "./limits.ts";
export * from "./watch.ts";
