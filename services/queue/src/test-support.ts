/** What the status API's tests share (not part of the service). */
import assert from "node:assert/strict";
import { type ClientError, isGrpcError } from "@homeostat/status-api";

/** The gRPC error `p` rejects with; fails the test when it resolves, rethrows any other error. */
export async function grpcError(p: Promise<unknown>): Promise<ClientError> {
  try {
    await p;
  } catch (err) {
    if (isGrpcError(err)) return err;
    throw err;
  }
  assert.fail("expected a gRPC error");
}
