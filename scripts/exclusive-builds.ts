/**
 * Exclusivity observed by the builds themselves, outside the queue, for the regions test and
 * bench:regions: a catalog of independent packages whose every build first runs `exclusive.sh`,
 * which under flock(1) notes any other live run of the same key (a double run) and logs its own.
 * The steps must reach the shared directory, so the builders run them unsandboxed
 * (HOMEOSTAT_BUILD_ISOLATION=none): the sandbox is the isolation suite's matter.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { packAppTarball } from "./app-tarball.ts";

/** The settings a builder and signer need to run and sign the unsandboxed steps. */
export const unsandboxedBuildEnv = {
  HOMEOSTAT_BUILD_ISOLATION: "none",
  HOMEOSTAT_ALLOW_UNSANDBOXED_BUILDS: "true",
  HOMEOSTAT_SIGN_UNSANDBOXED: "true",
} as const;

/**
 * The environment of regions that build `builds` (written under `dir`): its catalog; one
 * artifact store for every region, `<dir>/data` (deploy/README.md says why: a key built in one
 * region is a dependency or a signature away from the others); leases of `leaseMs`; a reconcile
 * that timed out while the fabric elected new leaders retried in seconds, not the default half
 * minute; and the steps unsandboxed, to reach exclusive.sh's shared records.
 */
export function exclusiveRegionsEnv(dir: string, builds: ExclusiveCatalog, leaseMs: number): Record<string, string> {
  return {
    HOMEOSTAT_CATALOG: builds.catalog,
    HOMEOSTAT_DATA: path.join(dir, "data"),
    HOMEOSTAT_LEASE_MS: String(leaseMs),
    HOMEOSTAT_QUEUE_BACKOFF_BASE_MS: "1000",
    ...unsandboxedBuildEnv,
  };
}

export type ExclusiveCatalog = {
  /** The catalog directory (HOMEOSTAT_CATALOG). */
  catalog: string;
  /** The packages' one source, to post releases with. */
  source: { url: string; sha256: string };
  /** Every run of a build step: the package, the step's pid and its builder's pid. */
  runs(): { name: string; pid: number; builder: number }[];
  /** Each double run a step saw: another run of its key still alive as it started. */
  doubleRuns(): string[];
  /** While this file exists, builds of `name` stay in their first step: a build kept in flight. */
  holdFile(name: string): string;
};

/**
 * Writes `names` as independent packages (no dependencies: a build of one key is one build
 * request, so two at once would be a double run) into `<dir>/catalog`, their one source (a shell
 * program, packed reproducibly) and the step, whose records go to `<dir>/steps`.
 */
export function writeExclusiveCatalog(dir: string, names: readonly string[]): ExclusiveCatalog {
  const steps = path.join(dir, "steps");
  const catalog = path.join(dir, "catalog");
  mkdirSync(steps, { recursive: true });
  mkdirSync(path.join(catalog, "packages"), { recursive: true });
  const source = packAppTarball(path.join(catalog, "sources", "app.tar.gz"), {
    "run.sh": { content: '#!/bin/sh\necho "$(basename "$0"): $*"\n', mode: 0o755 },
  });
  const script = path.join(steps, "exclusive.sh");
  // `exclusive.sh <name> <pid of the step's parent>`: the parent is the builder's step spawner
  // (services/builder/src/step-spawner.ts), and its parent the builder, noted as the run's. Under
  // an exclusive lock per key it notes every other run of the key whose process is still alive in
  // `overlaps`, registers itself (a file named by its pid) and logs its start in `runs`; it then
  // holds the key for a second (a window any second run would fall into), or while `hold-<name>`
  // exists, and leaves. A run SIGKILLed with its region leaves its file behind, but its pid is
  // dead: it no longer counts.
  writeFileSync(
    script,
    `#!/bin/sh
set -eu
dir=${steps}
key=$dir/keys/$1
mkdir -p "$key"
exec 9>"$key.lock"
flock 9
for f in "$key"/*; do
  [ -e "$f" ] || continue
  other=\${f##*/}
  if kill -0 "$other" 2>/dev/null; then echo "$1 $$ $other" >> "$dir/overlaps"; fi
done
echo $$ > "$key/$$"
# /proc/<pid>/stat: "pid (comm) state ppid ...".
builder=$(sed 's/.*) //' "/proc/$2/stat" | cut -d' ' -f2)
echo "$1 $$ $builder" >> "$dir/runs"
flock -u 9
sleep 1
i=0
while [ -e "$dir/hold-$1" ] && [ $i -lt 1200 ]; do sleep 0.25; i=$((i + 1)); done
flock 9
rm -f "$key/$$"
`,
    { mode: 0o755 },
  );
  for (const name of names) {
    writeFileSync(
      path.join(catalog, "packages", `${name}.yaml`),
      `name: ${name}\nversion: "1.0.0"\nlicense: MIT\ndescription: package ${name}, built exclusively\nsource:\n  url: sources/app.tar.gz\n  sha256: "${source.sha256}"\nbuild:\n  steps:\n    - ${script} ${name} "$PPID"\n    - install -D -m 755 run.sh $DESTDIR/usr/bin/${name}\ndependencies:\n  build: []\n  runtime: []\n`,
    );
  }
  const lines = (file: string) => (existsSync(path.join(steps, file)) ? readFileSync(path.join(steps, file), "utf8").split("\n").filter(Boolean) : []);
  return {
    catalog,
    source,
    runs: () =>
      lines("runs").map((line) => {
        const [name = "", pid, builder] = line.split(" ");
        return { name, pid: Number(pid), builder: Number(builder) };
      }),
    doubleRuns: () => lines("overlaps"),
    holdFile: (name) => path.join(steps, `hold-${name}`),
  };
}
