/**
 * `homeostat answer <key> "…"`: answers the question the agent asked about a key (it waits in
 * WaitingForAnswer; `homeostat get` shows the question). The agent resumes its repair with
 * the answer. A write token, like enqueue; a key that is not waiting is an error (exit 1).
 */
import { exitCodes, UsageError, type Command } from "./main.ts";

export const answerCommand: Command = {
  name: "answer",
  args: "<key> <answer>",
  summary: "answer the agent's question about a key (WaitingForAnswer): the agent resumes its repair with it",
  positionals: { min: 2, max: 2 },
  async run(ctx, [rawKey, rawAnswer]) {
    if (rawKey === undefined || rawAnswer === undefined) throw new UsageError(`missing ${answerCommand.args ?? "<key> <answer>"}`, answerCommand);
    const { api, client } = await ctx.status();
    const key = api.parseKeyArg(rawKey);
    if ("error" in key) throw new UsageError(key.error, answerCommand);
    const answer = api.parseAnswer(rawAnswer);
    if ("error" in answer) throw new UsageError(answer.error, answerCommand);
    const r = await api.answerQuestion(client, key.key, answer.answer);
    ctx.show(r, () => `${r.key}: answered by ${r.answeredBy}; the agent resumes its repair (it asked: ${r.question})`);
    return exitCodes.ok;
  },
};
