/**
 * `pnpm bench:sign` — how fast Homeostat signs, next to `openssl speed` on the same machine.
 *
 * What it measures: signatures per second through the signer's real signing path,
 * `pemKeyProvider(pem).sign(data)` from @homeostat/key-custody (ECDSA P-256 over
 * SHA-256, DER signature), over a cosign simple-signing payload like the ones the signer
 * makes, each signature awaited before the next, as the signer does. In the same run:
 * `openssl speed -seconds N ecdsap256`, one process, the peer the issue names.
 *
 * Why the comparison is fair: both sides sign with OpenSSL on one core for the same wall
 * time (the signer signs synchronously on its event loop: one core, like one openssl
 * process). If anything it favours openssl, which signs a precomputed 20-byte digest in a
 * tight C loop, whereas Homeostat's figure includes hashing the payload, DER encoding and the
 * promise. Node bundles its own OpenSSL, whose version may differ from the `openssl`
 * binary's; both are printed.
 *
 * Beside it, the cost the signer adds before each signature since it verifies what it signs:
 * opening a builder's DSSE build result (one ECDSA P-256 verification plus JSON), timed alone
 * (`verify build result`, per second and µs each). Re-hashing the artifacts is sha256 over
 * their bytes on top of that, proportional to their size.
 *
 * Every loop is bounded both by wall time (`--seconds`, default 3) and by a count cap
 * (2,000,000 signatures); the openssl children are killed if they overrun. The last line of
 * output is one JSON object for machines.
 *
 * Usage: node benches/sign.ts [--seconds N]
 */
import { execFile } from "node:child_process";
import { generateKeyPairSync, createPublicKey, verify as cryptoVerify } from "node:crypto";
import os from "node:os";
import { performance } from "node:perf_hooks";
import { BUILD_RESULT_PREDICATE_TYPE, openDsse, type Signer, signDsse, statementAbout } from "@homeostat/attest";
import { pemKeyProvider } from "@homeostat/key-custody";
import { table } from "./table.ts";

const MAX_SIGNATURES = 2_000_000;
const WARMUP_SIGNATURES = 2_000;
const WARMUP_MS = 500;
const TARGET_RATIO = 0.8;

type Options = { seconds: number };

function fail(message: string): never {
  process.stderr.write(`bench:sign: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv: readonly string[]): Options {
  let seconds = 3;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? "";
    const [flag, inline] = arg.includes("=") ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)] : [arg, undefined];
    const value = (): string => {
      const v = inline ?? argv[++i];
      if (v === undefined) fail(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case "--seconds": {
        const v = value();
        seconds = Number(v);
        if (!Number.isInteger(seconds) || seconds < 1 || seconds > 600) fail(`--seconds must be a whole number from 1 to 600, got ${JSON.stringify(v)}`);
        break;
      }
      case "--help":
      case "-h":
        process.stdout.write("usage: node benches/sign.ts [--seconds N (default 3)]\n");
        process.exit(0);
      default:
        fail(`unknown argument ${JSON.stringify(arg)} (try --help)`);
    }
  }
  return { seconds };
}

/** A cosign simple-signing payload in the signer's canonical form (sorted keys), ~300 bytes. */
function samplePayload(keyId: string): Buffer {
  const manifest = "sha256:" + "3f".repeat(32);
  // Key order is already canonical (sorted), matching services/signer/src/simple-signing.ts.
  const payload = {
    critical: {
      identity: { "docker-reference": "registry.example.com/homeostat/nginx" },
      image: { "docker-manifest-digest": manifest },
      type: "cosign container image signature",
    },
    optional: { creator: "homeostat", "homeostat.key": "image/nginx", "homeostat.keyId": keyId },
  };
  return Buffer.from(JSON.stringify(payload), "utf8");
}

type Measured = { signatures: number; elapsedS: number; perS: number };

/** Signs `data` one signature at a time until the deadline or `maxCount`, over the real elapsed time. */
async function measure(signer: Signer, data: Uint8Array, durationMs: number, maxCount: number): Promise<Measured> {
  let done = 0;
  const t0 = performance.now();
  const deadline = t0 + durationMs;
  while (done < maxCount && performance.now() < deadline) {
    await signer.sign(data);
    done++;
  }
  const elapsedS = (performance.now() - t0) / 1000;
  return { signatures: done, elapsedS, perS: done / elapsedS };
}

/** Opens (verifies) a package build result envelope, as the signer does before each signature, until the deadline. */
async function measureVerify(builder: Signer, durationMs: number): Promise<Measured> {
  const d = (c: string) => `sha256:${c.repeat(64)}`;
  const outputs = { archive: d("a"), diffId: d("b"), size: 1234, metadata: d("c"), provenance: d("e") };
  const predicate = {
    key: "package/nginx",
    kind: "package",
    name: "nginx",
    version: "1.27.0",
    inputDigest: d("f"),
    catalogRevision: d("1"),
    isolation: "bubblewrap",
    builder: "homeostat-builder/0.2.0",
    outputs,
  };
  const envelope = Buffer.from(await signDsse(statementAbout([{ name: "archive", digest: outputs.archive }], BUILD_RESULT_PREDICATE_TYPE, predicate), builder));
  const trusted = [builder.publicKeyPem];
  if (openDsse(envelope, trusted, BUILD_RESULT_PREDICATE_TYPE).keyId !== builder.keyId) fail("the build result did not verify");
  let done = 0;
  const t0 = performance.now();
  while (done < MAX_SIGNATURES && performance.now() < t0 + durationMs) {
    openDsse(envelope, trusted, BUILD_RESULT_PREDICATE_TYPE);
    done++;
  }
  const elapsedS = (performance.now() - t0) / 1000;
  return { signatures: done, elapsedS, perS: done / elapsedS };
}

type OpensslSpeed = { signPerS: number; verifyPerS: number; raw: string };

function run(file: string, args: readonly string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: 16 * 1024 * 1024, encoding: "utf8" }, (err, stdout, stderr) => {
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === "ENOENT") reject(new Error(`'${file}' not found on PATH; install OpenSSL (e.g. apt-get install openssl) to run this benchmark`));
        else if (e.killed) reject(new Error(`'${file} ${args.join(" ")}' did not finish within ${timeoutMs / 1000}s and was killed`));
        else reject(new Error(`'${file} ${args.join(" ")}' failed: ${e.message.trim()}\n${stderr}`));
        return;
      }
      resolve({ stdout, stderr });
    });
  });
}

const NUMBER = String.raw`(\d+(?:\.\d+)?)`;

/**
 * Parses `openssl speed ... ecdsap256` output. The summary table row looks like
 * ` 256 bits ecdsa (nistp256)   0.0000s   0.0001s  41234.0  12345.0` (sign/s and verify/s are
 * the last two numbers) in OpenSSL 1.1 and 3.x, single or -multi (where it is the sum over the
 * children). As a fallback for -multi, the children's `Got: +F4:<idx>:256:<sign/s>:<verify/s>`
 * lines are summed; for a single process, the `Doing ...: N 256 bits ECDSA signs in T s` lines.
 */
export function parseOpensslSpeed(output: string): OpensslSpeed | undefined {
  const row = new RegExp(String.raw`^\s*256\s+bits?\s+ecdsa\s*\(\s*nistp256\s*\)\s+[\d.]+s\s+[\d.]+s\s+${NUMBER}\s+${NUMBER}\s*$`, "im").exec(output);
  if (row) return { signPerS: Number(row[1]), verifyPerS: Number(row[2]), raw: row[0].trim() };

  const f4 = [...output.matchAll(new RegExp(String.raw`^Got:\s*\+F4:\d+:256:${NUMBER}:${NUMBER}\b.*$`, "gm"))];
  if (f4.length > 0) {
    return {
      signPerS: f4.reduce((s, m) => s + Number(m[1]), 0),
      verifyPerS: f4.reduce((s, m) => s + Number(m[2]), 0),
      raw: f4.map((m) => m[0].trim()).join(" | "),
    };
  }

  const doing = (what: string): number | undefined => {
    const m = new RegExp(String.raw`:\s*(\d+)\s+256\s+bits?\s+ECDSA\s+(?:${what})\s+in\s+${NUMBER}\s*s`, "i").exec(output);
    return m && Number(m[2]) > 0 ? Number(m[1]) / Number(m[2]) : undefined;
  };
  const sign = doing("signs?");
  const verify = doing("verify|verifies|verifys");
  if (sign !== undefined) return { signPerS: sign, verifyPerS: verify ?? NaN, raw: "(from 'Doing ...' lines)" };
  return undefined;
}

async function opensslSpeed(seconds: number): Promise<OpensslSpeed> {
  const args = ["speed", "-seconds", String(seconds), "ecdsap256"];
  // speed runs sign then verify for `seconds` each; allow generous slack before killing it.
  const { stdout, stderr } = await run("openssl", args, (2 * seconds + 60) * 1000);
  const parsed = parseOpensslSpeed(`${stdout}\n${stderr}`);
  if (!parsed || !(parsed.signPerS > 0)) {
    throw new Error(`could not find the ECDSA P-256 sign/s figure in the output of 'openssl ${args.join(" ")}':\n${stdout}${stderr}`);
  }
  return parsed;
}

async function opensslVersion(): Promise<string> {
  const { stdout } = await run("openssl", ["version"], 10_000);
  return stdout.trim();
}

const fmtRate = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "n/a");
const fmtRatio = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) + "x" : "n/a");
const round1 = (n: number): number => Math.round(n * 10) / 10;
const round3 = (n: number): number => Math.round(n * 1000) / 1000;

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const durationMs = opts.seconds * 1000;

  // Fail early and clearly if openssl is missing.
  let osslVersion: string;
  try {
    osslVersion = await opensslVersion();
  } catch (e) {
    fail((e as Error).message);
  }

  // Key and signer, exactly as the signer service builds it from a PEM.
  const { privateKey } = generateKeyPairSync("ec", {
    namedCurve: "P-256",
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });
  const signer = pemKeyProvider(privateKey, "bench key");
  const payload = samplePayload(signer.keyId);

  // Correctness, once: the signer's DER signature verifies with node:crypto.
  const sig = await signer.sign(payload);
  const ok = cryptoVerify("sha256", payload, { key: createPublicKey(signer.publicKeyPem), dsaEncoding: "der" }, sig);
  const tampered = Buffer.from(payload);
  tampered.writeUInt8(tampered.readUInt8(tampered.length - 2) ^ 1, tampered.length - 2);
  const rejectsTampered = !cryptoVerify("sha256", tampered, { key: createPublicKey(signer.publicKeyPem), dsaEncoding: "der" }, sig);
  if (!ok || !rejectsTampered || sig[0] !== 0x30) {
    fail(`correctness check failed: verify(original)=${ok}, verify(tampered)=${!rejectsTampered}, DER sequence tag=${sig[0] === 0x30}`);
  }

  console.log(`bench:sign — ECDSA P-256 / SHA-256, ${opts.seconds}s per measurement`);
  console.log(`node ${process.version} (bundled OpenSSL ${process.versions.openssl}), ${osslVersion}, ${os.availableParallelism()} CPUs`);
  console.log(`payload: ${payload.length}-byte cosign simple-signing JSON; signature verified with node:crypto (DER, ${sig.length} bytes)`);

  // Warm-up (bounded by count and time), then Homeostat, then openssl (never alongside).
  process.stdout.write("warming up ... ");
  await measure(signer, payload, WARMUP_MS, WARMUP_SIGNATURES);
  process.stdout.write("homeostat ... ");
  const homeostat = await measure(signer, payload, durationMs, MAX_SIGNATURES);
  process.stdout.write("verify build result ... ");
  const verify = await measureVerify(signer, durationMs);
  process.stdout.write("openssl speed ... ");
  let openssl: OpensslSpeed;
  try {
    openssl = await opensslSpeed(opts.seconds);
  } catch (e) {
    process.stdout.write("\n");
    fail((e as Error).message);
  }
  process.stdout.write("done\n\n");

  const ratio = homeostat.perS / openssl.signPerS;
  const met = ratio >= TARGET_RATIO;
  console.log(
    table([
      ["measurement", "signs/s", "signatures", "seconds"],
      ["homeostat signer.sign", fmtRate(homeostat.perS), String(homeostat.signatures), homeostat.elapsedS.toFixed(2)],
      ["openssl speed ecdsap256", fmtRate(openssl.signPerS), "", String(opts.seconds)],
      ["ratio homeostat / openssl", fmtRatio(ratio), "", ""],
      ["verify build result (per sign request)", fmtRate(verify.perS), String(verify.signatures), verify.elapsedS.toFixed(2)],
    ]),
  );
  console.log("");
  console.log(`verification before signing: ${(1e6 / verify.perS).toFixed(1)} µs per build result (openssl verify/s: ${fmtRate(openssl.verifyPerS)})`);
  console.log(`openssl: ${openssl.raw}`);
  console.log(`target homeostat >= ${TARGET_RATIO} x openssl: ${met ? "MET" : "NOT MET"} (${fmtRatio(ratio)})`);
  console.log(
    JSON.stringify({
      bench: "sign",
      signs_per_s: { homeostat: round1(homeostat.perS), openssl: round1(openssl.signPerS) },
      ratio: round3(ratio),
      verify_build_result_per_s: round1(verify.perS),
      verify_build_result_us: round1(1e6 / verify.perS),
      target: TARGET_RATIO,
      target_met: met,
      seconds: opts.seconds,
      payload_bytes: payload.length,
      node: process.version,
      node_openssl: process.versions.openssl,
      openssl: osslVersion,
    }),
  );
}

main().then(
  () => process.exit(0),
  (e: unknown) => fail(e instanceof Error ? (e.stack ?? e.message) : String(e)),
);
