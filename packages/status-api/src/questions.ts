/**
 * AnswerQuestion's wire: the agent's question on a key answered by a person (`homeostat answer`).
 * The envelope itself lives in @homeostat/proposals/questions; this is the call and its checks.
 */
import { answerTextSchema } from "@homeostat/proposals/questions";
import { callOptions, type CallOptions, type StatusClient } from "./grpc.ts";
import type { AnswerQuestionResponse } from "./generated/homeostat/v1/status.ts";

/** The answer as given, checked (not empty, at most 16384 characters), or why not. */
export function parseAnswer(raw: string): { answer: string } | { error: string } {
  const r = answerTextSchema.safeParse(raw);
  return r.success ? { answer: r.data } : { error: r.error.issues.map((i) => i.message).join("; ") };
}

export async function answerQuestion(client: StatusClient, key: string, answer: string, opts: CallOptions = {}): Promise<AnswerQuestionResponse> {
  return client.rpc.answerQuestion({ key, answer }, callOptions(opts));
}
