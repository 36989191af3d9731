export * from "./workqueue.ts";
