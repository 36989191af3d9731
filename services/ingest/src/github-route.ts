/**
 * POST /v1/webhooks/github: GitHub webhook deliveries.
 *
 * The body is kept as received and its X-Hub-Signature-256 checked before anything is parsed,
 * so unauthenticated bytes never reach the JSON parser. Then by X-GitHub-Event:
 * `ping` -> 200; `release` -> the packages whose `upstream.github` is `repository.full_name`
 * are enqueued, when the action is in the policy (HOMEOSTAT_GITHUB_RELEASE_ACTIONS, drafts
 * never, pre-releases only with HOMEOSTAT_GITHUB_PRERELEASES); anything else -> 202, ignored.
 * GitHub gives no digest of the tarball, so the release is not a fact yet: for each mapped
 * package whose tag mapping (`upstream.tag`) reads a version from the tag, an announcement is
 * written (UpstreamLedger) before the event is accepted, and the reconciler's upstream resolver
 * fetches the source, hashes it and records the fact when it reconciles the key.
 * Idempotency is by X-GitHub-Delivery: a redelivery (GitHub's "Redeliver") enqueues nothing.
 */
import type { FastifyPluginAsync } from "fastify";
import { eventId, makeKey } from "@homeostat/core";
import { UpstreamLedger, versionOfTag, type Catalog, type ReleaseStore } from "@homeostat/catalog";
import type { Acceptor } from "./accept.ts";
import { verifyGithubSignature } from "./auth.ts";
import { Problem } from "./problem.ts";
import type { Authenticated } from "./server.ts";
import { endOfTurn } from "./turn.ts";

export type GithubRouteDeps = {
  catalog: () => Catalog;
  acceptor: Acceptor;
  /** The release facts' bucket, where announcements are written. */
  releases: ReleaseStore;
  /** Marks a delivery whose signature verified: its rate limit counts by the webhook, not by address. */
  authenticated: Authenticated;
  secret: string | undefined;
  /** Release actions that count (published, released, prereleased…). */
  actions: readonly string[];
  prereleases: boolean;
  bodyLimit: number;
};

const headersSchema = {
  type: "object",
  required: ["x-github-event", "x-github-delivery"],
  properties: {
    "x-github-event": { type: "string", minLength: 1, maxLength: 64, pattern: "^[a-z0-9_]+$" },
    "x-github-delivery": { type: "string", minLength: 1, maxLength: 128, pattern: "^[A-Za-z0-9-]+$" },
  },
} as const;

// Only what Homeostat reads is constrained; GitHub adds fields freely.
const bodySchema = {
  type: "object",
  properties: {
    action: { type: "string", maxLength: 64 },
    release: {
      type: "object",
      properties: {
        tag_name: { type: "string", minLength: 1, maxLength: 256 },
        draft: { type: "boolean" },
        prerelease: { type: "boolean" },
        tarball_url: { type: ["string", "null"], maxLength: 4096 },
      },
    },
    repository: { type: "object", properties: { full_name: { type: "string", minLength: 3, maxLength: 256, pattern: "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$" } } },
  },
} as const;

type GithubBody = {
  action?: string;
  release?: { tag_name?: string; draft?: boolean; prerelease?: boolean; tarball_url?: string | null };
  repository?: { full_name?: string };
  zen?: string;
};

export const githubRoute: FastifyPluginAsync<GithubRouteDeps> = async (app, deps) => {
  const ledger = new UpstreamLedger(deps.releases.kv);
  // In this plugin only: keep the raw bytes; the signature is over them, not over re-serialised JSON.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser(["application/json", "application/x-www-form-urlencoded"], { parseAs: "buffer", bodyLimit: deps.bodyLimit }, (_req, body, done) =>
    done(null, body),
  );

  app.post<{ Body: GithubBody; Headers: { "x-github-event": string; "x-github-delivery": string } }>(
    "/v1/webhooks/github",
    {
      bodyLimit: deps.bodyLimit,
      schema: { headers: headersSchema, body: bodySchema },
      preValidation: async (req) => {
        const raw = req.body as unknown;
        if (!Buffer.isBuffer(raw)) throw new Problem(400, "missing-body", "a GitHub delivery has a body");
        verifyGithubSignature(deps.secret, raw, req.headers["x-hub-signature-256"]);
        deps.authenticated(req, "github-webhook");
        req.body = parseDelivery(raw, req.headers["content-type"] ?? "");
      },
    },
    async (req, reply) => {
      const event = req.headers["x-github-event"];
      const delivery = req.headers["x-github-delivery"];
      if (event === "ping") return reply.code(200).send({ pong: true, zen: typeof req.body.zen === "string" ? req.body.zen.slice(0, 256) : undefined });
      if (event !== "release") return reply.code(202).send({ ignored: true, reason: `event "${event}" is not one Homeostat acts on` });

      const { action, release, repository } = req.body;
      if (!action || !release?.tag_name || !repository?.full_name) {
        throw new Problem(400, "invalid-release-event", "a release event needs action, release.tag_name and repository.full_name");
      }
      const why = skipReason(action, release, deps);
      if (why) return reply.code(202).send({ ignored: true, reason: why });

      const catalog = deps.catalog();
      const names = catalog.packagesForGithub(repository.full_name);
      // Announced together with the other requests of this turn (turn.ts).
      if (names.length > 0) await endOfTurn();
      for (const name of names) {
        const version = versionOfTag(catalog.packages.get(name)?.upstream, release.tag_name);
        if (version) await ledger.announce({ package: name, version, tag: release.tag_name, origin: "github", event: eventId("github", delivery) });
      }
      const accepted = await deps.acceptor.accept({
        source: "github",
        ref: delivery,
        summary: `${repository.full_name} ${action} release ${release.tag_name}`,
        keys: names.map((n) => makeKey("package", n)),
        priority: "release",
        cause: "release",
        requestId: req.id,
      });
      return reply.code(202).send(accepted);
    },
  );
};

function skipReason(action: string, release: NonNullable<GithubBody["release"]>, deps: GithubRouteDeps): string | undefined {
  if (!deps.actions.includes(action)) return `release action "${action}" is not in the policy (${deps.actions.join(", ")})`;
  if (release.draft === true) return "the release is a draft";
  if (release.prerelease === true && !deps.prereleases) return "the release is a pre-release and pre-releases are not followed";
  return undefined;
}

/** GitHub sends JSON, or with content type form the JSON in a `payload` field. */
function parseDelivery(raw: Buffer, contentType: string): GithubBody {
  let text = raw.toString("utf8");
  if (contentType.startsWith("application/x-www-form-urlencoded")) {
    const payload = new URLSearchParams(text).get("payload");
    if (payload === null) throw new Problem(400, "malformed-body", "a form-encoded delivery carries its JSON in the payload field");
    text = payload;
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new Problem(400, "malformed-json", `the body is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new Problem(400, "invalid-body", "the delivery must be a JSON object");
  return body as GithubBody;
}
