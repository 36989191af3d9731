export * from "./grpc.ts";
