/**
 * AnswerQuestion: a person's answer to the question the agent asked about a key (its
 * ask_human tool parked the conversation in the proposals bucket, @homeostat/proposals
 * questions, and left the key in WaitingForAnswer). The answer is recorded by compare-and-set,
 * so of two answers exactly one wins, and the key is handed back to the agent (the `repair`
 * class), which resumes the conversation with it. The write role, like Enqueue
 * (status-auth.ts).
 */
import type { Key } from "@homeostat/core/key";
import { QuestionNotWaiting, type QuestionStore } from "@homeostat/proposals/questions";
import { parseAnswer, parseKeyArg, ServerError, Status, type StatusServiceImplementation } from "@homeostat/status-api";
import type { QueueApi } from "./status-api.ts";

export type QuestionsApiDeps = {
  questions: Pick<QuestionStore, "answer">;
  queue: Pick<QueueApi, "enqueue">;
  /** Who is calling, for the record (the bearer token's name). */
  caller: (context: Parameters<StatusServiceImplementation["answerQuestion"]>[1]) => string;
};

export function questionsApi(deps: QuestionsApiDeps): Pick<StatusServiceImplementation, "answerQuestion"> {
  return {
    async answerQuestion({ key, answer }, context) {
      const k = parseKeyArg(key);
      if ("error" in k) throw new ServerError(Status.INVALID_ARGUMENT, k.error);
      const a = parseAnswer(answer);
      if ("error" in a) throw new ServerError(Status.INVALID_ARGUMENT, a.error);
      const by = deps.caller(context);
      let question: string;
      try {
        question = (await deps.questions.answer(k.key, a.answer, by)).question;
      } catch (err) {
        if (err instanceof QuestionNotWaiting) throw new ServerError(Status.FAILED_PRECONDITION, err.message);
        throw err;
      }
      await deps.queue.enqueue({ key: k.key as Key, priority: "repair", cause: { type: "manual", detail: `question answered by ${by}` } });
      return { key: k.key, question, answeredBy: by };
    },
  };
}
