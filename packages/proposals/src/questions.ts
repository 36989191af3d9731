/**
 * The agent's questions to a person (its `ask_human` tool): the conversation parked as a
 * versioned envelope in the proposals bucket (`<prefix>_proposals`, entry
 * `question.<key token>`: the agent and the queue service already hold exactly the access this
 * needs there, and proposal ids never hold a dot, so the two kinds of entry never meet).
 *
 * The agent parks the conversation (the messages so far, secrets redacted, the workspace's
 * edits, the model, a digest of its configuration and the budget left); the queue service
 * records the answer by compare-and-set (gRPC AnswerQuestion), so two answers never both win;
 * the agent resumes from the envelope with the answer and then removes it. The messages are
 * kept opaque here: this package knows keys and records, not the Messages API.
 */
import type { KV } from "@nats-io/kv";
import { z } from "zod";
import { keySchema, keyToken, phases, type Key } from "@homeostat/core";

/** The KV entries of questions start so; proposals' ids never hold a dot. */
export const QUESTION_ENTRY_PREFIX = "question.";

/** A parked envelope bigger than this is refused (NATS's default max payload is 1 MiB). */
export const MAX_QUESTION_BYTES = 900 * 1024;

const digestSchema = z.string().regex(/^sha256:[0-9a-f]{64}$/, "must be sha256:<64 hex>");

export const answerTextSchema = z.string().trim().min(1, "an answer must not be empty").max(16_384, "an answer is at most 16384 characters");

export const questionEnvelopeSchema = z.object({
  v: z.literal(1),
  key: keySchema,
  question: z.string().min(1).max(4096),
  /** The ask_human call the answer is the tool_result of. */
  toolUseId: z.string().min(1).max(256),
  /** What the run was repairing: the resumed run's proposal answers it. */
  trigger: z.string().max(4096),
  /** The key's phase before it waited, given back when the run resumes. */
  previousPhase: z.enum(phases),
  model: z.string().min(1),
  /** Digest of the model, the tool definitions, the system prompt and the limits: any change starts over. */
  configDigest: digestSchema,
  remaining: z.object({ turns: z.number().int().min(0), tokens: z.number().int().min(0), wallMs: z.number().int().min(0) }),
  usage: z.object({ input: z.number().int(), output: z.number().int(), cacheWrite: z.number().int(), cacheRead: z.number().int() }),
  turns: z.number().int().min(0),
  /** The conversation so far (Messages API message params), its last message the tool results of the asking turn but the question's. */
  messages: z.array(z.unknown()).min(1),
  /** The workspace's files the run changed (recipe.yaml, patches/), restored on resume. */
  files: z.array(z.object({ path: z.string().min(1).max(1024), text: z.string() })),
  askedAt: z.string(),
  answer: z.object({ text: answerTextSchema, by: z.string().min(1).max(256), at: z.string() }).optional(),
});
export type QuestionEnvelope = z.infer<typeof questionEnvelopeSchema>;

/** An answer to a key with no open question (none asked, or answered already). */
export class QuestionNotWaiting extends Error {
  override readonly name = "QuestionNotWaiting";
}

const entryOf = (key: Key) => `${QUESTION_ENTRY_PREFIX}${keyToken(key)}`;

export class QuestionStore {
  private readonly kv: KV;
  constructor(kv: KV) {
    this.kv = kv;
  }

  /** Parks a conversation (replacing an older question of the key, which a new run supersedes). */
  async park(q: QuestionEnvelope): Promise<void> {
    const text = JSON.stringify(questionEnvelopeSchema.parse(q));
    if (Buffer.byteLength(text) > MAX_QUESTION_BYTES)
      throw new Error(`the conversation is too large to park (${Buffer.byteLength(text)} bytes, at most ${MAX_QUESTION_BYTES})`);
    await this.kv.put(entryOf(q.key), text);
  }

  async get(key: Key): Promise<{ envelope: QuestionEnvelope; revision: number } | undefined> {
    const e = await this.kv.get(entryOf(key));
    return e && e.operation === "PUT" ? { envelope: questionEnvelopeSchema.parse(e.json()), revision: e.revision } : undefined;
  }

  /** Records the answer by compare-and-set; QuestionNotWaiting when the key has no unanswered question. */
  async answer(key: Key, text: string, by: string): Promise<QuestionEnvelope> {
    const cur = await this.get(key);
    if (!cur) throw new QuestionNotWaiting(`${key} is not waiting for an answer`);
    if (cur.envelope.answer) throw new QuestionNotWaiting(`${key}'s question was answered already (by ${cur.envelope.answer.by} at ${cur.envelope.answer.at})`);
    const next: QuestionEnvelope = { ...cur.envelope, answer: { text: answerTextSchema.parse(text), by, at: new Date().toISOString() } };
    try {
      await this.kv.update(entryOf(key), JSON.stringify(next), cur.revision);
    } catch (err) {
      const now = await this.get(key);
      if (now?.envelope.answer) throw new QuestionNotWaiting(`${key}'s question was answered meanwhile (by ${now.envelope.answer.by})`);
      throw err;
    }
    return next;
  }

  /** Removes the key's question once its run resumed or started over (only the revision read, so a newer one stays). */
  async remove(key: Key, revision: number): Promise<void> {
    await this.kv.delete(entryOf(key), { previousSeq: revision }).catch(() => undefined);
  }
}
