export * from "./providers.ts";
