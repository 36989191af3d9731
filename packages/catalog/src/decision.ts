/**
 * Decision: which version of a package to build, and with which patches, given the catalog's
 * declaration (pinned version, version policy, patches), the releases known and the OSV
 * advisories stored for it. Pure, so that the reconciler and `homeostat plan` decide alike.
 *
 * 1. The candidate versions are the pinned one and every known release the policy accepts;
 *    the newest is the one to ship.
 * 2. When advisories affect it: the lowest version an affecting advisory names as fixed that
 *    is a candidate (a release upstream published and Homeostat has a verified source for,
 *    allowed by the policy), not below the pinned version and itself affected by nothing ->
 *    bump to it. Skipping a newer but vulnerable release is the point: "newest" loses to
 *    "not known vulnerable".
 * 3. Otherwise, when catalog patches list every affecting advisory (by id or alias) in their
 *    `fixes` -> build the newest with those patches.
 * 4. Otherwise the key needs attention, with the advisory ids; nothing is built.
 *
 * Patches: one with an empty `fixes` is part of the recipe and always applied. One that fixes
 * advisories is a backport, applied only while an advisory it fixes affects the version being
 * built — so a bump past the fix drops it without a catalog edit, and an advisory arriving
 * adds it (a new input digest, hence the rebuild).
 */
import type { Patch } from "./catalog.ts";
import { answerFor } from "./answers.ts";
import { fixedVersions, isAffected, type Osv } from "./osv.ts";
import type { CompiledPolicy } from "./policy.ts";
import { compareVersions } from "./version.ts";

export type DecisionInput = {
  name: string;
  /** The catalog's pinned version. */
  pinned: string;
  /** Versions of the known releases, as recorded. */
  releases: readonly string[];
  policy: CompiledPolicy;
  /** Stored advisories for the package (withdrawn ones are ignored). */
  advisories: readonly Osv[];
  patches: readonly Patch[];
};

export type Decision =
  | {
      action: "build";
      /** A known release (or the pinned version), exactly as recorded. */
      version: string;
      /** newest: the newest candidate, unaffected; bump: the lowest fixed version; patch: the newest with backports. */
      reason: "newest" | "bump" | "patch";
      /** Patches to apply, in catalog order. */
      patches: Patch[];
      /** The advisories this build answers: affecting the newest (bump), or fixed by the patches (patch). */
      advisories: string[];
      /** The newest candidate, when the build is not of it (a bump). */
      newest: string;
    }
  | {
      action: "attention";
      /** The newest candidate, which stays unbuilt. */
      version: string;
      /** Advisories affecting it that no bump or patch answers. */
      advisories: string[];
      detail: string;
    };

/**
 * The advisories of a list that affect a package's version, by list, package and version. A
 * store's list is shared while the package's advisories do not change (kv-scan.ts CachedScan),
 * and every run whose key builds on the package decides it again: a base package with thousands
 * of advisories (a kernel's) would cost each of them a pass over all of its ranges.
 */
const hitsByList = new WeakMap<readonly Osv[], Map<string, readonly Osv[]>>();

function affecting(advisories: readonly Osv[], name: string, version: string): readonly Osv[] {
  // isAffected counts a withdrawn advisory as affecting nothing.
  return answerFor(hitsByList, advisories, name, version, () => advisories.filter((a) => isAffected(a, name, version)));
}

export function decideVersion(input: DecisionInput): Decision {
  const candidates = new Map<string, string>([[input.pinned, input.pinned]]);
  for (const raw of input.releases) {
    const v = input.policy.accept(raw);
    if (v !== undefined && compareVersions(raw, input.pinned) >= 0 && !candidates.has(v)) candidates.set(v, raw);
  }
  const sorted = [...candidates.values()].sort(compareVersions);
  // The pinned version is always a candidate.
  const newest = sorted.at(-1) ?? input.pinned;
  const affectingVersion = (v: string) => affecting(input.advisories, input.name, v);
  const always = input.patches.filter((p) => p.fixes.length === 0);

  const hit = affectingVersion(newest);
  if (hit.length === 0) return { action: "build", version: newest, reason: "newest", patches: always, advisories: [], newest };
  const ids = hit.map((a) => a.id);

  // 2. Bump: the lowest fixed version among the candidates that nothing affects.
  const fixes = [...new Set(hit.flatMap((a) => fixedVersions(a, input.name)))].sort(compareVersions);
  for (const f of fixes) {
    const raw = sorted.find((c) => compareVersions(c, f) === 0);
    if (raw === undefined || affectingVersion(raw).length > 0) continue;
    return { action: "build", version: raw, reason: "bump", patches: always, advisories: ids, newest };
  }

  // 3. Patch: every affecting advisory is fixed by a catalog patch.
  const fixing = (a: Osv) => input.patches.filter((p) => p.fixes.some((id) => id === a.id || (a.aliases ?? []).includes(id)));
  const unpatched = hit.filter((a) => fixing(a).length === 0);
  if (unpatched.length === 0) {
    const chosen = new Set(hit.flatMap(fixing));
    return {
      action: "build",
      version: newest,
      reason: "patch",
      patches: input.patches.filter((p) => p.fixes.length === 0 || chosen.has(p)),
      advisories: ids,
      newest,
    };
  }

  // 4. Attention: say what is missing, so a human knows whether to wait, patch or pin.
  const unknownFixes = fixes.filter((f) => compareVersions(f, newest) > 0);
  const detail =
    `${input.name} ${newest} is affected by ${unpatched.map((a) => a.id).join(", ")}: ` +
    (unknownFixes.length ? `fixed in ${unknownFixes.join(", ")}, which is not a known release the policy allows; ` : "no fixed release is known; ") +
    "no catalog patch fixes it";
  return { action: "attention", version: newest, advisories: unpatched.map((a) => a.id), detail };
}
