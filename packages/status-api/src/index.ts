export * from "./grpc.ts";
export * from "./limits.ts";
