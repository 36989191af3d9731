export * from "./errors.ts";
export * from "./fetch.ts";
export * from "./git.ts";
