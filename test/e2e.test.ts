/**
 * The walking skeleton end to end: five real service processes on real NATS and Redis build,
 * sign and record the sample catalog, then react to a release.
 */
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { getKeyStatus, listKeyStatuses, type StatusClient } from "@homeostat/status-api";
import type { KeyStatus } from "@homeostat/core";
import { repoRoot, waitFor } from "../scripts/factory.ts";
import { startTestFactory, testEnv, type TestEnv, type TestFactory } from "./harness.ts";
import { startOtlpReceiver } from "./otlp-receiver.ts";
import { runBundle, unpackImage } from "./fixtures/run-image.ts";

const catalogDir = path.join(repoRoot, "examples", "catalog");
const tarball = (name: string) => path.join(repoRoot, "examples", "sources", `${name}.tar.gz`);
const sha256Of = (file: string) => execFileSync("sha256sum", [file], { encoding: "utf8" }).split(" ")[0]!;
const catalogKeys = ["image/devkit", "image/greeter", "package/busybox", "package/greet", "package/libgreet", "package/motd", "package/musl"];

describe("factory end to end", { timeout: 600_000 }, () => {
  let t: TestEnv;
  let factory: TestFactory;
  let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
  let client: StatusClient;
  const get = (key: string) => getKeyStatus(client, key);

  const post = (body: unknown) =>
    fetch(`${factory.ingestUrl}/v1/releases`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });

  const allReady = async () => {
    const { items } = await listKeyStatuses(client, { pageSize: 100 });
    return items.length === catalogKeys.length && items.every((s) => s.phase === "Ready") ? items : undefined;
  };

  before(async () => {
    otlp = await startOtlpReceiver();
    t = await testEnv();
    factory = await startTestFactory(t, { HOMEOSTAT_CATALOG: catalogDir, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, HOMEOSTAT_LEASE_MS: "5000" });
    client = factory.client;
  });

  after(async () => {
    await factory?.stop();
    await otlp?.close();
    await t?.cleanup();
  });

  test("the sample catalog converges: every key built, signed and Ready", async () => {
    const items = await waitFor("the sample catalog to converge", allReady, 240_000, 250);
    assert.deepEqual(items.map((s) => s.key).sort(), catalogKeys);
    for (const s of items) {
      assert.ok(s.actual, `${s.key} has an actual state`);
      assert.ok(Object.keys(s.actual.signatures).length > 0, `${s.key} is signed`);
    }
  });

  test("a release rebuilds the package, its dependents and the images containing them, as one trace", async () => {
    const before = new Map((await allReady())!.map((s) => [s.key, s]));
    const res = await post({ package: "libgreet", version: "1.1", url: `file://${tarball("libgreet-1.1")}`, sha256: sha256Of(tarball("libgreet-1.1")) });
    assert.equal(res.status, 202, await res.text());

    const rebuilt = ["package/libgreet", "package/greet", "image/greeter", "image/devkit"];
    const after = await waitFor(
      "libgreet 1.1 and its dependents to be rebuilt",
      async () => {
        const items = await allReady();
        if (!items) return undefined;
        const changed = items.filter((s) => s.actual!.inputDigest !== before.get(s.key)!.actual!.inputDigest).map((s) => s.key);
        return changed.length === rebuilt.length ? items : undefined;
      },
      180_000,
      250,
    );
    const byKey = new Map(after.map((s) => [s.key, s]));
    assert.equal(byKey.get("package/libgreet")!.actual!.version, "1.1");
    assert.equal(byKey.get("package/motd")!.actual!.inputDigest, before.get("package/motd")!.actual!.inputDigest, "motd was not rebuilt");

    // The greeter image: a valid OCI layout, unpackable, whose signature verifies with openssl.
    const greeter = byKey.get("image/greeter")!;
    const [layoutDir, tag] = splitLocation(greeter.actual!.outputs.location);
    const inspect = JSON.parse(execFileSync("skopeo", ["inspect", `oci:${layoutDir}:${tag}`], { encoding: "utf8" })) as { Digest: string };
    assert.equal(inspect.Digest, greeter.actual!.outputs.manifest);
    // ... that runs: its entrypoint started by a container runtime in its own rootfs (fixtures/run-image.ts).
    const bundle = path.join(mkdtempSync(path.join(t.dir, "umoci-")), "bundle");
    unpackImage(layoutDir, tag, bundle);
    const ran = await runBundle(bundle, { argv: ["/usr/bin/greet", "tester"] });
    console.log(`# image/greeter:${tag} run by ${ran.runtime}: ${ran.stdout.trim()}`);
    assert.equal(ran.stdout, "Greetings, tester! Have a good day.\n", ran.stderr); // libgreet 1.1's greeting
    verifyCosignSignature(layoutDir, greeter.actual!.outputs.manifest!, path.join(t.env.HOMEOSTAT_DATA!, "signer", "cosign.pub"), t.dir);
    // The SBOM and provenance attestations the signer attached verify offline with the CLI.
    const verified = spawnSync(path.join(repoRoot, "packages", "cli", "bin", "homeostat"), ["verify", `${layoutDir}:${tag}`, "--json"], {
      encoding: "utf8",
      env: { ...process.env, HOMEOSTAT_DATA: t.env.HOMEOSTAT_DATA, HOMEOSTAT_TRUSTED_KEYS: "" },
    });
    assert.equal(verified.status, 0, verified.stderr);
    const [v] = JSON.parse(verified.stdout) as { signature: { manifest: string }; attestations: { predicateType: string }[] }[];
    assert.equal(v!.signature.manifest, greeter.actual!.outputs.manifest);
    assert.deepEqual(v!.attestations.map((a) => a.predicateType).sort(), ["https://cyclonedx.org/bom", "https://slsa.dev/provenance/v1"]);
    assert.ok(greeter.actual!.signatures.sbom && greeter.actual!.signatures.provenance, "the key's status records the attestations");

    // One trace from the HTTP request to the last signature, through all five services.
    const traceId = byKey.get("image/greeter")!.actual!.traceId;
    assert.ok(traceId, "the image records the trace of its rebuild");
    assert.equal(byKey.get("package/libgreet")!.actual!.traceId, traceId, "the package and the image were rebuilt in one trace");
    const services = await waitFor(
      "spans of all five services in the rebuild's trace",
      async () => {
        const names = new Set(otlp.spans.filter((s) => s.traceId === traceId).map((s) => s.service));
        return names.size === 5 ? names : undefined;
      },
      20_000,
      200,
    );
    assert.deepEqual([...services].sort(), ["builder", "ingest", "queue", "reconciler", "signer"]);
    assert.ok(
      otlp.spans.some((s) => s.traceId === traceId && s.service === "ingest" && s.name.startsWith("POST")),
      "the trace starts at the ingest request",
    );
  });

  test("the same release event sent 50 times quickly causes one rebuild", async () => {
    const body = { package: "motd", version: "1.1", url: `file://${tarball("motd-1.1")}`, sha256: sha256Of(tarball("motd-1.1")) };
    const responses = await Promise.all(Array.from({ length: 50 }, () => post(body)));
    assert.ok(responses.every((r) => r.status === 202));
    await waitFor(
      "motd 1.1 to be Ready",
      async () => ((await get("package/motd")).actual?.version === "1.1" && (await allReady()) ? true : undefined),
      120_000,
      250,
    );
    // Let any duplicate that slipped through reach the builder before counting.
    await new Promise((r) => setTimeout(r, 2_000));
    const builds = readFileSync(path.join(t.dir, "logs", "builder.log"), "utf8")
      .split("\n")
      .filter((l) => l.includes('"msg":"building"') && l.includes('"key":"package/motd"') && l.includes('"version":"1.1"'));
    assert.equal(builds.length, 1, `motd 1.1 was built ${builds.length} times`);
  });

  test("bad input is refused with a reason and changes nothing", async () => {
    const missing = await post({ package: "motd", version: "9.9", url: "file:///x.tar.gz" });
    assert.equal(missing.status, 400);
    assert.match(((await missing.json()) as { detail: string }).detail, /sha256/);

    const wrongType = await post({ package: "motd", version: 12, url: "file:///x.tar.gz", sha256: "0".repeat(64) });
    assert.equal(wrongType.status, 400);
    assert.match(((await wrongType.json()) as { detail: string }).detail, /version/);

    const notJson = await post("{not json");
    assert.equal(notJson.status, 400);

    const unknown = await post({ package: "no-such-package", version: "1.0", url: "file:///x.tar.gz", sha256: "0".repeat(64) });
    assert.equal(unknown.status, 404);
    assert.match(((await unknown.json()) as { detail: string }).detail, /unknown package "no-such-package"/);

    const statuses = await allReady();
    assert.ok(statuses, "nothing changed: every key is still Ready");
  });

  test("a source whose sha256 does not match fails the key with that reason and produces nothing", async () => {
    const wrong = "ab".repeat(32);
    const res = await post({ package: "greet", version: "2.0", url: `file://${tarball("greet-1.1")}`, sha256: wrong });
    assert.equal(res.status, 202);
    const failed = await waitFor(
      "greet to fail",
      async () => {
        const s = await get("package/greet");
        return s.phase === "Failed" ? s : undefined;
      },
      60_000,
      200,
    );
    assert.match(failed.lastError ?? "", /sha256/i);
    assert.match(failed.lastError ?? "", new RegExp(wrong));
    assert.equal(failed.desiredVersion, "2.0");
    assert.notEqual(failed.actual?.version, "2.0", "no artifact was recorded for the bad source");

    // The services stay up and keep working.
    assert.equal((await fetch(`${factory.ingestUrl}/readyz`)).status, 200);
    for (const [name, child] of factory.processes) assert.equal(child.exitCode, null, `${name} is still running`);
  });

  test("a build step that fails puts its log tail and the stored logs' digests in the key's status", async () => {
    // A greet 2.1 whose make fails with a message of its own, packed as the builder expects
    // (one top directory), served from a file URL with its real sha256.
    const dir = mkdtempSync(path.join(t.dir, "broken-"));
    mkdirSync(path.join(dir, "greet-2.1"));
    writeFileSync(
      path.join(dir, "greet-2.1", "Makefile"),
      "all:\n\t@echo 'compiling greet.c' && echo 'greet.c:7: error: frobnicator undeclared' >&2 && exit 3\n",
    );
    const archive = path.join(dir, "greet-2.1.tar.gz");
    execFileSync("tar", ["-czf", archive, "-C", dir, "greet-2.1"]);
    const res = await post({ package: "greet", version: "2.1", url: `file://${archive}`, sha256: sha256Of(archive) });
    assert.equal(res.status, 202);
    const failed = await waitFor(
      "greet 2.1 to fail",
      async () => {
        const s = await get("package/greet");
        return s.phase === "Failed" && s.desiredVersion === "2.1" ? s : undefined;
      },
      120_000,
      200,
    );
    const lastError = failed.lastError ?? "";
    assert.match(lastError, /make/, "names the failing step");
    assert.match(lastError, /greet\.c:7: error: frobnicator undeclared/, "carries the step's log tail");
    assert.match(lastError, /step-1\.log sha256:[0-9a-f]{64}/, "says where the full log is stored");
    assert.notEqual(failed.actual?.version, "2.1", "nothing was recorded for the failed build");
  });

  test("homeostat get --json shows the new version, digests and trace id", () => {
    const out = spawnSync(path.join(repoRoot, "packages", "cli", "bin", "homeostat"), ["get", "package/libgreet", "--json", "--addr", factory.grpcAddr], {
      encoding: "utf8",
    });
    assert.equal(out.status, 0, out.stderr);
    const s = JSON.parse(out.stdout) as KeyStatus;
    assert.equal(s.key, "package/libgreet");
    assert.equal(s.actual?.version, "1.1");
    assert.match(s.actual?.outputs.archive ?? "", /^sha256:[0-9a-f]{64}$/);
    assert.match(s.actual?.traceId ?? "", /^[0-9a-f]{32}$/);
  });

  test("an advisory against the newest release rolls the package back to the build before it, in seconds", async () => {
    // motd is Ready at 1.1 (the test above); its build and the image that carries it, as they are now.
    const at11 = await get("package/motd");
    assert.equal(at11.actual?.version, "1.1");
    const devkitAt11 = (await get("image/devkit")).actual!;

    // motd 1.2 is released (a tarball made here from 1.1's tree) and becomes what is served.
    const dir = mkdtempSync(path.join(t.dir, "motd-1.2-"));
    cpSync(path.join(repoRoot, "examples", "sources", "motd-1.1"), path.join(dir, "motd-1.2"), { recursive: true });
    const makefile = path.join(dir, "motd-1.2", "Makefile");
    writeFileSync(makefile, readFileSync(makefile, "utf8").replace("VERSION = 1.1", "VERSION = 1.2"));
    const archive = path.join(dir, "motd-1.2.tar.gz");
    execFileSync("tar", ["-czf", archive, "-C", dir, "motd-1.2"]);
    const released = await post({ package: "motd", version: "1.2", url: `file://${archive}`, sha256: sha256Of(archive) });
    assert.equal(released.status, 202, await released.text());
    await waitFor(
      "motd 1.2 and the devkit image carrying it to be Ready",
      async () => {
        const [motd, devkit] = await Promise.all([get("package/motd"), get("image/devkit")]);
        return motd.phase === "Ready" && motd.actual?.version === "1.2" && devkit.phase === "Ready" && devkit.actual!.inputDigest !== devkitAt11.inputDigest;
      },
      180_000,
      250,
    );

    // An advisory: 1.2 is affected (a regression), 1.1 is not (the earlier hole was fixed in 1.1).
    // The catalog's policy allows any release from the pinned 1.0 on, so the lowest unaffected
    // fixed version, 1.1, is desired again: the input digest built before.
    const advisory = {
      schema_version: "1.6.0",
      id: "HSEC-TEST-MOTD-ROLLBACK",
      modified: new Date().toISOString(),
      summary: "motd 1.2 regression (test)",
      affected: [
        {
          package: { ecosystem: "Generic", name: "motd" },
          ranges: [
            { type: "ECOSYSTEM", events: [{ introduced: "0" }, { fixed: "1.1" }] },
            { type: "ECOSYSTEM", events: [{ introduced: "1.2" }] },
          ],
        },
      ],
    };
    const started = Date.now();
    const res = await fetch(`${factory.ingestUrl}/v1/advisories`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(advisory),
    });
    assert.equal(res.status, 202, await res.text());
    // Seconds, not minutes: the earlier inputs are asked for again at once (a fresh request id,
    // not a duplicate the build stream drops) and answered from the build cache. A minute is
    // the bound on a loaded 2-core machine.
    const back = await waitFor(
      "motd to be Ready at 1.1 again",
      async () => {
        const s = await get("package/motd");
        return s.phase === "Ready" && s.actual?.inputDigest === at11.actual!.inputDigest ? s : undefined;
      },
      60_000,
      100,
    );
    console.log(`# motd rolled back from 1.2 to 1.1 in ${Date.now() - started} ms`);
    assert.equal(back.actual!.version, "1.1", "the served version is no longer the affected 1.2");
    assert.equal(back.actual!.outputs.archive, at11.actual!.outputs.archive, "the same artifact as before 1.2");
    assert.equal(back.desiredVersion, "1.1");
    assert.match(back.cause?.detail ?? "", /bumped from 1\.2 to 1\.1, the lowest release fixing HSEC-TEST-MOTD-ROLLBACK/);
    // The image that carries motd goes back with it.
    await waitFor(
      "the devkit image to be back at its inputs with motd 1.1",
      async () => {
        const s = await get("image/devkit");
        return s.phase === "Ready" && s.actual?.inputDigest === devkitAt11.inputDigest;
      },
      120_000,
      250,
    );
  });
});

function splitLocation(location: string): [string, string] {
  const i = location.lastIndexOf(":");
  return [location.slice(0, i), location.slice(i + 1)];
}

/** Checks the cosign signature of `manifest` with openssl alone, as a consumer would. */
function verifyCosignSignature(layoutDir: string, manifest: string, publicKey: string, tmp: string): void {
  const index = JSON.parse(readFileSync(path.join(layoutDir, "index.json"), "utf8")) as {
    manifests: { digest: string; annotations?: Record<string, string> }[];
  };
  const sigTag = `sha256-${manifest.slice("sha256:".length)}.sig`;
  const sigDesc = index.manifests.find((m) => m.annotations?.["org.opencontainers.image.ref.name"] === sigTag);
  assert.ok(sigDesc, `signature tag ${sigTag} exists`);
  const blob = (d: string) => readFileSync(path.join(layoutDir, "blobs", "sha256", d.slice("sha256:".length)));
  const sigManifest = JSON.parse(blob(sigDesc.digest).toString("utf8")) as {
    layers: { digest: string; mediaType: string; annotations: Record<string, string> }[];
  };
  const layer = sigManifest.layers[0]!;
  assert.equal(layer.mediaType, "application/vnd.dev.cosign.simplesigning.v1+json");
  const payload = blob(layer.digest);
  assert.equal(
    (JSON.parse(payload.toString("utf8")) as { critical: { image: { "docker-manifest-digest": string } } }).critical.image["docker-manifest-digest"],
    manifest,
  );
  const payloadFile = path.join(tmp, "payload.json");
  const sigFile = path.join(tmp, "payload.sig");
  writeFileSync(payloadFile, payload);
  writeFileSync(sigFile, Buffer.from(layer.annotations["dev.cosignproject.cosign/signature"]!, "base64"));
  execFileSync("openssl", ["dgst", "-sha256", "-verify", publicKey, "-signature", sigFile, payloadFile], { stdio: "pipe" });
}
