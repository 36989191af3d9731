/**
 * Transcripts of agent runs, kept by content (`<dir>/<sha256 hex>`, 0700) and named in the
 * proposal by digest. Before anything is stored, secrets are redacted: the values the agent
 * was given (its API key), and anything shaped like a private key, an nkey seed or an
 * Anthropic key, should a source file or a tool ever have put one in front of the model.
 */
import { mkdir, writeFile } from "node:fs/promises";
import path from "node:path";
import { sha256Hex } from "@homeostat/core";

const SECRET_SHAPES = [
  /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----/g,
  /\bS[UOAC][A-Z2-7]{56}\b/g, // nkey seeds (user, operator, account, cluster)
  /\bsk-ant-[A-Za-z0-9_-]{8,}/g,
];

export function redactSecrets(text: string, known: readonly string[]): string {
  let out = text;
  for (const secret of known) if (secret) out = out.split(secret).join("[redacted]");
  for (const shape of SECRET_SHAPES) out = out.replace(shape, "[redacted]");
  return out;
}

export class TranscriptStore {
  readonly dir: string;
  private readonly secrets: readonly string[];
  constructor(dir: string, secrets: readonly string[]) {
    this.dir = dir;
    this.secrets = secrets;
  }

  /** The text with the secrets redacted, as put() stores it (for what is kept elsewhere, e.g. a parked conversation). */
  redact(text: string): string {
    return redactSecrets(text, this.secrets);
  }

  /** Stores the transcript, redacted; returns its digest. */
  async put(text: string): Promise<string> {
    const redacted = redactSecrets(text, this.secrets);
    const hex = sha256Hex(redacted);
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeFile(path.join(this.dir, hex), redacted, { mode: 0o600 });
    return `sha256:${hex}`;
  }
}
