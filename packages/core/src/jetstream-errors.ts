/**
 * JetStream API error codes (the server's `err_code`) that Homeostat acts on, defined once, and
 * the one way to test an error for them: by code, never by message text (texts differ between
 * server versions; codes are the server's contract).
 *
 * Where @nats-io/jetstream names a code (`JetStreamApiCodes`) its value is used; the others are
 * named after nats-server's `server/errors.json`. Both the client's calls and the lean pipe
 * (jetstream-pipe.ts) reject a server's API error with a `JetStreamApiError` carrying the code.
 */
import { JetStreamApiCodes, JetStreamApiError } from "@nats-io/jetstream";

export const JetStreamErrorCode = {
  /**
   * JSStreamStoreFailedF: the stream refused to store a message. With `discard: new` that is
   * either the subject holding its one message (`max_msgs_per_subject: 1` and
   * `discard_new_per_subject`: how the work queue deduplicates and the audit ledger refuses a
   * repeated event) or the whole stream at its `max_msgs` / `max_bytes`; only the description
   * tells the two apart. The work stream has no stream-wide limit, so there it means the former.
   */
  StoreFailed: 10077,
  /** A compare-and-set lost: the subject's last sequence is not the expected one (KV create and update too). */
  WrongLastSequence: JetStreamApiCodes.StreamWrongLastSequence,
  /** The same conflict as newer servers (2.11+) report it, without the sequence. */
  WrongLastSequenceUnknown: JetStreamApiCodes.StreamWrongLastSequenceUnknown,
  /** A get or delete of a message that is not there. */
  NoMessageFound: JetStreamApiCodes.NoMessageFound,
  /** JSSequenceNotFoundErrF: a sequence the stream does not hold. */
  SequenceNotFound: 10043,
  /** JSStreamMsgDeleteFailedF: a delete by sequence failed; 2.9 answers it for a message already gone. */
  MessageDeleteFailed: 10057,
  /** JSStreamNotFoundErr: no stream of that name (yet). */
  StreamNotFound: JetStreamApiCodes.StreamNotFound,
} as const;

export type JetStreamErrorCode = (typeof JetStreamErrorCode)[keyof typeof JetStreamErrorCode];

/** True when `err` is a JetStream API error with one of `codes`. */
export function hasJetStreamCode(err: unknown, ...codes: readonly number[]): boolean {
  return err instanceof JetStreamApiError && codes.includes(err.code);
}

/** The stream refused to store the message (see `JetStreamErrorCode.StoreFailed`). */
export function isStoreFailed(err: unknown): boolean {
  return hasJetStreamCode(err, JetStreamErrorCode.StoreFailed);
}

/** A compare-and-set (an expected last sequence, KV create or update) lost to another writer. */
export function isRevisionConflict(err: unknown): boolean {
  return err instanceof JetStreamApiError && isRevisionConflictCode(err.code);
}

/** `isRevisionConflict` for an API error's `err_code` returned rather than thrown (JetStreamPipe.tryPublish). */
export function isRevisionConflictCode(code: number): boolean {
  return code === JetStreamErrorCode.WrongLastSequence || code === JetStreamErrorCode.WrongLastSequenceUnknown;
}

/** A message read or deleted by sequence was not there (already deleted, acked or never stored). */
export function isMessageGone(err: unknown): boolean {
  return hasJetStreamCode(err, JetStreamErrorCode.NoMessageFound, JetStreamErrorCode.SequenceNotFound, JetStreamErrorCode.MessageDeleteFailed);
}
