/**
 * Upstream resolver: turns an upstream version into a release fact. For a package with an
 * `upstream` (GitHub, a URL template or release-monitoring), the versions announced by feeds
 * (ingest writes an announcement before it accepts a GitHub release or release-monitoring
 * event: UpstreamLedger) and, on a resync, the tags a git upstream lists, are resolved one by
 * one: the source is fetched once under the source path rules (@homeostat/source: the builder's
 * size limit, hosts and no-credentials rules), its sha256 taken — for a git source, the commit
 * the tag points at and the sha256 of its `git archive` — and recorded create-only in the
 * release store, immutable from then on.
 *
 * Where a new version's source is: `upstream.url` with `${version}` (and `${tag}`); else the
 * catalog's `source.url` when it is a template (`${version}` or `${tag}`, a relative path kept
 * as the catalog spells it); else, for a `git+` source, the same repository at the tag's commit;
 * else, for a GitHub upstream, the repository's tarball of the tag from GitHub's archive host
 * (HOMEOSTAT_GITHUB_ARCHIVE_URL, codeload.github.com: its URLs answer without a redirect, which
 * the source rules refuse; a loopback server in tests). The tag of a version follows the
 * package's mapping (`upstream.tag`, catalog.ts). Remote hosts need HOMEOSTAT_SOURCE_ALLOW_REMOTE.
 *
 * A version already recorded is looked at again when a feed announces it anew: a git tag is
 * resolved again (cheap), an archive fetched again; a different commit or digest is a conflict,
 * recorded once in the ledger, logged, counted and shown in the key's status, and the fact
 * stays as it was. A resync's discovery never re-fetches an archive.
 *
 * Fetches are bounded: a time limit each, at most `perHostConcurrency` at once per host, and on
 * an unavailable upstream (network error, HTTP 408/429/5xx) a few tries with exponential backoff
 * that honour `Retry-After`; a longer `Retry-After` closes the host until then for every package.
 * What stays unavailable is kept announced and reported (`unavailable`, with when to look again):
 * the key keeps its last version, Ready, never Failed. What the rules refuse (404, too large, no
 * such tag) is final for that version: reported and dropped.
 */
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import path from "node:path";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import {
  compareVersions,
  ReleaseConflictError,
  tagsOfVersion,
  versionOfTag,
  type Announcement,
  type Catalog,
  type PackageSpec,
  type Release,
  type ReleaseConflict,
  type ReleaseStore,
  type UpstreamLedger,
} from "@homeostat/catalog";
import { errorMessage, meter, type Logger } from "@homeostat/core";
import {
  checkHost,
  exportGitTree,
  gitSourceUrl,
  gitTransport,
  isGitSourceUrl,
  listGitTags,
  openSource,
  resolveGitTag,
  resolveSourceLocation,
  SourceError,
  SourceUnavailableError,
  type RemoteHosts,
} from "@homeostat/source";

export type UpstreamLimits = {
  /** Largest source accepted (HOMEOSTAT_MAX_SOURCE_BYTES, the builder's limit). */
  maxBytes: number;
  /** Hosts beyond loopback (the builder's rule: HOMEOSTAT_SOURCE_ALLOW_REMOTE, HOMEOSTAT_SOURCE_HOSTS). */
  allowRemote: RemoteHosts;
  /** Time limit of one fetch. */
  timeoutMs: number;
  /** Fetches at once per host. */
  perHostConcurrency: number;
  /** Tries of one fetch while its upstream is unavailable. */
  tries: number;
  /** First backoff between tries; doubles each time. */
  backoffMs: number;
  /** A Retry-After up to this long is waited for in place; a longer one closes the host until then. */
  maxWaitMs: number;
};

export type ResolverDeps = {
  releases: ReleaseStore;
  ledger: UpstreamLedger;
  limits: UpstreamLimits;
  /** Base of GitHub's tarball URLs, `<base>/<owner>/<repo>/tar.gz/refs/tags/<tag>` (HOMEOSTAT_GITHUB_ARCHIVE_URL). */
  githubArchiveUrl: string;
  /** Scratch space for git exports (removed after each). */
  scratchDir: string;
  log: Logger;
};

export type Resolution = {
  /** Facts recorded by this resolution. */
  recorded: Release[];
  /** Every conflict known for the package (new ones were logged and counted). */
  conflicts: ReleaseConflict[];
  /** Versions whose source the rules refused, with why (final for them). */
  refused: string[];
  /** Versions whose upstream was unavailable: still announced; look again after `retryAfterMs`. */
  unavailable?: { reason: string; retryAfterMs: number };
};

/** How many new versions one resync's discovery resolves per package (the newest first); the next resync takes the rest. */
const DISCOVERY_BATCH = 5;

/** The source of one version: where to record it, where to fetch it, and for git the repository and tag. */
type Located = { url: string; git?: { transport: URL; tags: string[] } };

export class UpstreamResolver {
  private readonly deps: ResolverDeps;
  private readonly hosts = new Map<string, { running: number; waiting: (() => void)[]; closedUntil: number }>();
  private readonly conflictCount = meter().createCounter("homeostat.upstream.conflicts", {
    unit: "{release}",
    description: "Recorded releases whose tag was found pointing at another source",
  });
  private readonly resolvedCount = meter().createCounter("homeostat.upstream.resolved", {
    unit: "{release}",
    description: "Release facts recorded by the upstream resolver",
  });
  private readonly failureCount = meter().createCounter("homeostat.upstream.failures", {
    unit: "{fetch}",
    description: "Upstream fetches that failed, by kind (unavailable, refused)",
  });

  constructor(deps: ResolverDeps) {
    this.deps = deps;
  }

  /** Resolves what is announced for `name` (and on `discover`, what a git upstream lists). */
  async resolve(catalog: Catalog, name: string, o: { discover: boolean }): Promise<Resolution> {
    const spec = catalog.packages.get(name);
    const out: Resolution = { recorded: [], conflicts: [], refused: [] };
    if (!spec?.upstream) return out;
    const known = new Map((await this.deps.releases.list(name)).map((r) => [r.version, r]));
    const wanted = await this.deps.ledger.announced(name);
    if (o.discover) wanted.push(...(await this.discover(catalog, spec, known, wanted, out)));
    for (const a of wanted) {
      const prior = known.get(a.version);
      // A resync's discovery never re-fetches what is recorded; a feed's announcement does.
      if (prior && a.origin === "resync") continue;
      try {
        const found = await this.fetchVersion(catalog, spec, a, prior);
        if (!found) continue;
        if (prior) {
          if (prior.sha256 !== found.sha256 || (prior.commit && found.commit && prior.commit !== found.commit)) await this.conflict(spec, prior, found, a.tag);
        } else {
          try {
            const { release } = await this.deps.releases.record({ package: name, version: a.version, ...found });
            out.recorded.push(release);
            this.resolvedCount.add(1);
            this.deps.log.info("release resolved", {
              package: name,
              version: a.version,
              tag: found.tag,
              url: found.url,
              sha256: found.sha256,
              commit: found.commit,
              origin: a.origin,
            });
          } catch (err) {
            if (!(err instanceof ReleaseConflictError)) throw err;
            // Another resolver recorded this version from other bytes a moment ago.
            const other = (await this.deps.releases.list(name)).find((r) => r.version === a.version);
            if (!other) throw err; // a conflict with a record that is not there: not one this resolver can explain
            await this.conflict(spec, other, found, a.tag);
          }
        }
        if (a.origin !== "resync") await this.deps.ledger.settle(name, a.version);
      } catch (err) {
        if (err instanceof SourceError) {
          // Final for this version: say why once, and stop asking.
          this.failureCount.add(1, { kind: "refused" });
          out.refused.push(`${a.version}: ${err.message}`);
          this.deps.log.warn("release source refused", { package: name, version: a.version, reason: err.message });
          if (a.origin !== "resync") await this.deps.ledger.settle(name, a.version);
          continue;
        }
        this.failureCount.add(1, { kind: "unavailable" });
        const retryAfterMs = Math.max(
          err instanceof SourceUnavailableError ? (err.retryAfterMs ?? 0) : 0,
          this.deps.limits.backoffMs * 2 ** this.deps.limits.tries,
        );
        out.unavailable ??= { reason: `${a.version}: ${errorMessage(err)}`, retryAfterMs };
        this.deps.log.warn("upstream unavailable; the package keeps its last version", {
          package: name,
          version: a.version,
          reason: errorMessage(err),
          retryAfterMs,
        });
      }
    }
    out.conflicts = await this.deps.ledger.conflicts(name);
    return out;
  }

  /** New versions a git upstream lists (the newest the policy accepts, above the pinned one), as resync announcements. */
  private async discover(
    catalog: Catalog,
    spec: PackageSpec,
    known: Map<string, Release>,
    announced: Announcement[],
    out: Resolution,
  ): Promise<Announcement[]> {
    if (!isGitSourceUrl(spec.source.url)) return [];
    let tags: Map<string, string>;
    try {
      tags = await this.withScratch((dir, signal) => this.gated(gitTransport(spec.source.url), () => listGitTags(gitTransport(spec.source.url), dir, signal)));
    } catch (err) {
      if (err instanceof SourceError) out.refused.push(err.message);
      else out.unavailable ??= { reason: errorMessage(err), retryAfterMs: this.deps.limits.backoffMs * 2 ** this.deps.limits.tries };
      return [];
    }
    const policy = catalog.policyOf(spec.name);
    const fresh: Announcement[] = [];
    for (const tag of tags.keys()) {
      const version = versionOfTag(spec.upstream, tag);
      if (!version || known.has(version) || announced.some((a) => a.version === version) || fresh.some((a) => a.version === version)) continue;
      if (policy.accept(version) === undefined || compareVersions(version, spec.version) <= 0) continue;
      fresh.push({ package: spec.name, version, tag, origin: "resync", at: new Date().toISOString() });
    }
    return fresh.sort((a, b) => compareVersions(b.version, a.version)).slice(0, DISCOVERY_BATCH);
  }

  /** Where version `a` of `spec` comes from; undefined when the catalog gives no way to know. */
  private locate(spec: PackageSpec, a: Announcement): Located | undefined {
    const tags: [string, ...string[]] = a.tag ? [a.tag] : tagsOfVersion(spec.upstream, a.version);
    const [tag] = tags;
    const fill = (template: string) => template.replaceAll("${version}", a.version).replaceAll("${tag}", tag);
    if (spec.upstream?.url) return { url: fill(spec.upstream.url) };
    if (isGitSourceUrl(spec.source.url)) return { url: spec.source.url, git: { transport: gitTransport(spec.source.url), tags } };
    if (/\$\{(version|tag)\}/.test(spec.source.url)) return { url: fill(spec.source.url) };
    if (spec.upstream?.github) {
      const ref = tag.split("/").map(encodeURIComponent).join("/");
      return { url: `${this.deps.githubArchiveUrl}/${spec.upstream.github}/tar.gz/refs/tags/${ref}` };
    }
    return undefined;
  }

  /** The source of `a`, fetched once and hashed (for git: its tag's commit and archive). */
  private async fetchVersion(
    catalog: Catalog,
    spec: PackageSpec,
    a: Announcement,
    prior: Release | undefined,
  ): Promise<Omit<Release, "package" | "version" | "receivedAt"> | undefined> {
    const where = this.locate(spec, a);
    if (!where) {
      this.deps.log.warn("no source for a new version: the catalog's source.url has no ${version} and the upstream no url template or GitHub repository", {
        package: spec.name,
        version: a.version,
      });
      await this.deps.ledger.settle(spec.name, a.version);
      return undefined;
    }
    const { limits } = this.deps;
    if (where.git) {
      const { transport, tags } = where.git;
      if (transport.protocol !== "file:") checkHost(`git repository ${transport.href}`, transport, limits.allowRemote);
      return this.withScratch(async (dir, signal) => {
        let tag: string | undefined;
        let commit: string | undefined;
        for (const candidate of tags) {
          commit = await this.gated(transport, () => resolveGitTag(transport, candidate, dir, signal)).catch((err: unknown) =>
            err instanceof SourceError ? undefined : Promise.reject(err),
          );
          if (commit) {
            tag = candidate;
            break;
          }
        }
        if (!commit || !tag) throw new SourceError(`git repository ${transport.href} has no tag ${tags.map((t) => JSON.stringify(t)).join(" or ")}`);
        // The same commit as recorded: nothing moved, nothing to fetch.
        if (prior?.commit === commit) return { url: prior.url, sha256: prior.sha256, tag, commit };
        const url = gitSourceUrl(transport, commit);
        const sha256 = await this.gated(transport, async () => {
          const { tar, done } = await exportGitTree({ transport, commit }, dir, signal, limits.maxBytes);
          const digest = await sha256Of(tar, limits.maxBytes, `source ${url}`).catch(async (err: unknown) => {
            await done.catch(() => {});
            throw err;
          });
          await done;
          return digest;
        });
        return { url, sha256, tag, commit };
      });
    }
    const location = catalog.resolveSourceUrl(where.url, a.version);
    const at = resolveSourceLocation(location, catalog.dir);
    const sha256 = await this.gated(at.kind === "http" ? at.url : undefined, () =>
      openSource(location, `source ${where.url}`, {
        baseDir: catalog.dir,
        maxBytes: limits.maxBytes,
        allowRemote: limits.allowRemote,
        timeoutMs: limits.timeoutMs,
      }).then((body) => sha256Of(body, limits.maxBytes, `source ${where.url}`)),
    );
    return { url: where.url, sha256, ...(a.tag ? { tag: a.tag } : {}) };
  }

  private async conflict(
    spec: PackageSpec,
    recorded: Release,
    found: { url: string; sha256: string; commit?: string | undefined },
    tag: string | undefined,
  ): Promise<void> {
    const isNew = await this.deps.ledger.conflict({
      package: spec.name,
      version: recorded.version,
      ...(tag ? { tag } : {}),
      recorded: { url: recorded.url, sha256: recorded.sha256, ...(recorded.commit ? { commit: recorded.commit } : {}) },
      found: { url: found.url, sha256: found.sha256, ...(found.commit ? { commit: found.commit } : {}) },
    });
    if (!isNew) return;
    this.conflictCount.add(1, { package: spec.name });
    this.deps.log.error("release conflict: a recorded release's tag points at another source; the recorded fact stays", {
      package: spec.name,
      version: recorded.version,
      tag,
      recorded: recorded.commit ?? recorded.sha256,
      found: found.commit ?? found.sha256,
    });
  }

  /**
   * Runs `fetch` under the host's limits: at most perHostConcurrency at once, not while the host
   * is closed by a Retry-After, and again with exponential backoff while it is unavailable.
   */
  private async gated<T>(where: URL | undefined, fetch: () => Promise<T>): Promise<T> {
    const host = where && where.protocol !== "file:" ? where.host : undefined;
    const { tries, backoffMs, maxWaitMs } = this.deps.limits;
    for (let attempt = 1; ; attempt++) {
      const gate = host ? this.hostGate(host) : undefined;
      if (gate && gate.closedUntil > Date.now())
        throw new SourceUnavailableError(`${host} asked to wait (Retry-After)`, { retryAfterMs: gate.closedUntil - Date.now() });
      const release = gate ? await this.enter(gate) : () => {};
      try {
        return await fetch();
      } catch (err) {
        if (!(err instanceof SourceUnavailableError) && (err instanceof SourceError || !(err instanceof Error))) throw err;
        const wait = err instanceof SourceUnavailableError && err.retryAfterMs !== undefined ? err.retryAfterMs : backoffMs * 2 ** (attempt - 1);
        if (gate && wait > maxWaitMs) gate.closedUntil = Math.max(gate.closedUntil, Date.now() + wait);
        if (attempt >= tries || wait > maxWaitMs) throw err;
        await sleep(wait);
      } finally {
        release();
      }
    }
  }

  private hostGate(host: string) {
    let g = this.hosts.get(host);
    if (!g) this.hosts.set(host, (g = { running: 0, waiting: [], closedUntil: 0 }));
    return g;
  }

  /** Waits for a free slot of the host; resolves with its release. */
  private async enter(g: { running: number; waiting: (() => void)[] }): Promise<() => void> {
    while (g.running >= this.deps.limits.perHostConcurrency) await new Promise<void>((r) => g.waiting.push(r));
    g.running++;
    return () => {
      g.running--;
      g.waiting.shift()?.();
    };
  }

  private async withScratch<T>(fn: (dir: string, signal: AbortSignal) => Promise<T>): Promise<T> {
    await mkdir(this.deps.scratchDir, { recursive: true });
    const dir = await mkdtemp(path.join(this.deps.scratchDir, "git-"));
    try {
      return await fn(dir, AbortSignal.timeout(this.deps.limits.timeoutMs));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

/** The sha256 (hex) of a stream of at most `maxBytes`. */
async function sha256Of(body: Readable, maxBytes: number, what: string): Promise<string> {
  const h = createHash("sha256");
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes) {
      body.destroy();
      throw new SourceError(`${what} exceeds the limit of ${maxBytes} bytes`);
    }
    h.update(chunk);
  }
  return h.digest("hex");
}
