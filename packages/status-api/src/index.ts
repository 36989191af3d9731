export * from "./grpc.ts";
export * from "./limits.ts";
export * from "./services.ts";
export * from "./watch.ts";
export * from "./proposals.ts";
export * from "./questions.ts";
