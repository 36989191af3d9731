export * from "./attestation.ts";
export * from "./blob-signing.ts";
export * from "./dsse.ts";
export * from "./keys.ts";
export * from "./oci.ts";
export * from "./registry.ts";
export * from "./simple-signing.ts";
export * from "./verify.ts";
