/**
 * Signing with a registry configured: the image, its cosign signature and its attestations
 * reach a real Distribution registry (docker-registry on loopback), where skopeo reads them
 * and `homeostat verify host/repository:tag` verifies them offline after pulling.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { mediaTypes, OciLayout, Registry, RegistryError } from "@homeostat/attest";
import { imageToSign, newSigner } from "../../../test/fixtures/images.ts";
import { countingProxy, startRegistry, type LocalRegistry } from "../../../test/fixtures/registry.ts";
import { requireTools } from "../../../test/fixtures/tools.ts";
import { sign } from "./sign.ts";

const cli = fileURLToPath(new URL("../../../packages/cli/bin/homeostat", import.meta.url));
let registry: LocalRegistry;
let dir: string;

before(async () => {
  requireTools("skopeo");
  registry = await startRegistry();
  dir = await mkdtemp(path.join(tmpdir(), "hs-push-"));
});
after(async () => {
  await registry?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function verify(ref: string, key: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(cli, ["verify", ref, "--key", key], { env: { PATH: process.env.PATH } }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
}

test("a signed image, its signature and its attestations are pushed; skopeo reads them and verify accepts them", async () => {
  const signer = newSigner();
  const pub = path.join(dir, "cosign.pub");
  await writeFile(pub, signer.publicKeyPem);
  const req = await imageToSign(path.join(dir, "greeter"), "1.0", "greeter");
  const result = await sign(req, { dataDir: dir, imageRepository: `${registry.host}/homeostat`, signer, registry: new Registry(registry.url) });

  const inspect = JSON.parse(
    execFileSync("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${registry.host}/homeostat/greeter:1.0`], { encoding: "utf8" }),
  ) as { layers: unknown[] };
  assert.equal(inspect.layers.length, 1);
  const digest = execFileSync("skopeo", ["inspect", "--tls-verify=false", "--format", "{{.Digest}}", `docker://${registry.host}/homeostat/greeter:1.0`], {
    encoding: "utf8",
  }).trim();
  assert.equal(digest, req.outputs.manifest);
  const sigTag = `${req.outputs.manifest!.replace(":", "-")}.sig`;
  const sig = JSON.parse(
    execFileSync("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://${registry.host}/homeostat/greeter:${sigTag}`], { encoding: "utf8" }),
  ) as { layers: { mediaType: string }[] };
  assert.equal(sig.layers[0]!.mediaType, "application/vnd.dev.cosign.simplesigning.v1+json");
  const referrers = JSON.parse(
    execFileSync(
      "skopeo",
      ["inspect", "--raw", "--tls-verify=false", `docker://${registry.host}/homeostat/greeter:${req.outputs.manifest!.replace(":", "-")}`],
      { encoding: "utf8" },
    ),
  ) as { manifests: { digest: string }[] };
  assert.deepEqual(referrers.manifests.map((m) => m.digest).sort(), [result.signatures.sbom, result.signatures.provenance].sort());

  const ok = await verify(`${registry.host}/homeostat/greeter:1.0`, pub);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, new RegExp(`Digest:\\s+${req.outputs.manifest}`));
  assert.match(ok.stdout, /https:\/\/cyclonedx\.org\/bom by key/);
  assert.match(ok.stdout, /https:\/\/slsa\.dev\/provenance\/v1 by key/);
});

test("a sign uploads everything untagged first, each blob once and the image before what names it, then its three tags; uploads opened ahead and not needed are cancelled", async () => {
  const proxy = await countingProxy(registry.url);
  try {
    const req = await imageToSign(path.join(dir, "ordered"), "1.0", "ordered");
    const result = await sign(req, { dataDir: dir, imageRepository: `${registry.host}/homeostat`, signer: newSigner(), registry: new Registry(proxy.url) });
    const puts = proxy.requests.filter((r) => r.startsWith("PUT "));
    const uploads = puts.filter((r) => r.includes("/blobs/uploads/"));
    const manifests = puts.filter((r) => r.includes("/manifests/"));
    const brief = (requests: string[]) => requests.map((r) => r.replace(/\?.*digest=/, " ")).join(", ");
    const digests = uploads.map((r) => new URL(r.slice(4), "http://x").searchParams.get("digest"));
    assert.equal(new Set(digests).size, digests.length, `each blob once: ${brief(uploads)}`);
    assert.ok(uploads.length >= 5, `the image's config and layer, the signature's payload and config, the attestations: ${brief(uploads)}`);
    const image = req.outputs.manifest!;
    const at = (reference: string) => manifests.indexOf(`PUT /v2/homeostat/ordered/manifests/${reference}`);
    const attestations = [result.signatures.sbom!, result.signatures.provenance!];
    for (const reference of [image, ...attestations]) assert.ok(at(reference) >= 0, `${reference} by digest: ${brief(manifests)}`);
    assert.ok(
      attestations.every((a) => at(image) < at(a)),
      `the image before the attestations naming it: ${brief(manifests)}`,
    );
    const tags = ["1.0", `${image.replace(":", "-")}.sig`, image.replace(":", "-")];
    assert.deepEqual(new Set(manifests.slice(-3)), new Set(tags.map((t) => `PUT /v2/homeostat/ordered/manifests/${t}`)), `the tags last: ${brief(manifests)}`);
    assert.equal(manifests.length, 6, `image and attestations by digest, then three tags: ${brief(manifests)}`);
    assert.ok(puts.indexOf(uploads.at(-1)!) < puts.indexOf(manifests.at(-3)!), `every blob before the first tag: ${brief(puts)}`);
    // The signature's and the attestations' uploads were opened ahead: every one opened was used.
    assert.equal(proxy.requests.filter((r) => r.startsWith("POST ")).length, uploads.length, `an upload opened per blob: ${brief(proxy.requests)}`);

    // Signed again, the signature and the attestations are kept: the uploads opened for them are cancelled.
    const again = { dataDir: dir, imageRepository: `${registry.host}/homeostat`, signer: newSigner(), registry: new Registry(proxy.url) };
    await sign(req, again);
    proxy.requests.length = 0;
    await sign(req, again);
    const opened = () => proxy.requests.filter((r) => r.startsWith("POST ")).length;
    const used = () => proxy.requests.filter((r) => r.startsWith("PUT ") && r.includes("/blobs/uploads/")).length;
    const cancelled = () => proxy.requests.filter((r) => r.startsWith("DELETE ") && r.includes("/blobs/uploads/")).length;
    for (const deadline = Date.now() + 5000; opened() !== used() + cancelled() && Date.now() < deadline;) await new Promise((r) => setTimeout(r, 20));
    assert.equal(cancelled(), 4, `the second sign's four uploads cancelled: ${brief(proxy.requests)}`);
    assert.equal(opened(), 4, `no other upload opened: ${brief(proxy.requests)}`);
  } finally {
    await proxy.close();
  }
});

test("an image replaced in the registry without a signature fails verify; an unknown one says so", async () => {
  const signer = newSigner();
  const pub = path.join(dir, "cosign2.pub");
  await writeFile(pub, signer.publicKeyPem);
  const good = await imageToSign(path.join(dir, "web"), "2.0", "web");
  await sign(good, { dataDir: dir, imageRepository: `${registry.host}/homeostat`, signer, registry: new Registry(registry.url) });
  // Someone pushes other bytes under the same tag, unsigned.
  const forged = await imageToSign(path.join(dir, "forged"), "2.0", "forged");
  await new Registry(registry.url).push(await OciLayout.open(path.join(dir, "forged")), "homeostat/web", "2.0");

  const bad = await verify(`${registry.host}/homeostat/web:2.0`, pub);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, new RegExp(`no-signature: ${forged.outputs.manifest} has no signature`));
  const none = await verify(`${registry.host}/homeostat/nothing:1.0`, pub);
  assert.equal(none.code, 1);
  assert.match(none.stderr, /no such image in the registry/);
});

test("an unreachable registry is a RegistryError naming it (the sign request is retried, not dropped)", async () => {
  const req = await imageToSign(path.join(dir, "offline"), "1.0", "offline");
  await assert.rejects(
    sign(req, { dataDir: dir, imageRepository: "127.0.0.1:9/homeostat", signer: newSigner(), registry: new Registry("http://127.0.0.1:9") }),
    (e: unknown) => e instanceof RegistryError && /registry http:\/\/127\.0\.0\.1:9 is unreachable/.test(e.message),
  );
});

test("a client sends each blob once per repository: small ones without asking first, a large one after asking; a second tag sends only its manifest", async () => {
  const proxy = await countingProxy(registry.url);
  const method = (requests: string[], m: string) => requests.filter((r) => r.startsWith(`${m} `)).length;
  try {
    const client = new Registry(proxy.url);
    const layout = await OciLayout.open(path.join(dir, "twice"));
    await imageToSign(path.join(dir, "twice"), "1.0", "twice");
    await layout.tag("1.0-again", (await layout.resolve("1.0"))!);
    await client.push(layout, "homeostat/twice", "1.0");
    const first = proxy.requests.splice(0);
    assert.deepEqual(
      [method(first, "HEAD"), method(first, "POST"), method(first, "PUT")],
      [0, 2, 3],
      `config and layer uploaded, then the manifest: ${first.join(", ")}`,
    );
    await client.push(layout, "homeostat/twice", "1.0-again");
    assert.deepEqual(proxy.requests.splice(0), ["PUT /v2/homeostat/twice/manifests/1.0-again"]);

    // A layer over 256 KiB is asked about first: uploaded when missing, not sent again when there.
    const big = await OciLayout.open(path.join(dir, "big"));
    const layer = await big.writeBlob(randomBytes(300 * 1024), mediaTypes.layer);
    const config = await big.writeBlob("{}", mediaTypes.config);
    const manifest = await big.writeBlob(JSON.stringify({ schemaVersion: 2, mediaType: mediaTypes.manifest, config, layers: [layer] }), mediaTypes.manifest);
    await big.tag("1.0", manifest);
    await client.push(big, "homeostat/big", "1.0");
    const asked = proxy.requests.splice(0);
    assert.deepEqual([method(asked, "HEAD"), method(asked, "POST")], [1, 2], asked.join(", "));
    await new Registry(proxy.url).push(big, "homeostat/big", "1.0");
    const again = proxy.requests.splice(0);
    assert.ok(
      again.includes(`HEAD /v2/homeostat/big/blobs/${layer.digest}`) &&
        !again.some((r) => r.startsWith("PUT /v2/homeostat/big/blobs/uploads/") && r.includes(layer.digest.replace(":", "%3A"))),
      again.join(", "),
    );
  } finally {
    await proxy.close();
  }
});

test("a blob remembered as pushed but gone from the registry: the manifest is refused, the client asks again and pushes it", async () => {
  const client = new Registry(registry.url);
  const req = await imageToSign(path.join(dir, "gone"), "1.0", "gone");
  const layout = await OciLayout.open(path.join(dir, "gone"));
  await client.push(layout, "homeostat/gone", "1.0");
  // The layer's link in the repository removed behind the client's back (as a hand-made cleanup would).
  const manifest = JSON.parse((await layout.readBlob((await layout.resolve("1.0"))!.digest)).toString()) as { layers: { digest: string }[] };
  const layerHex = manifest.layers[0]!.digest.replace("sha256:", "");
  await rm(path.join(registry.dataDir, "docker/registry/v2/repositories/homeostat/gone/_layers/sha256", layerHex), { recursive: true });
  await layout.tag("1.1", (await layout.resolve("1.0"))!);
  await client.push(layout, "homeostat/gone", "1.1");
  const pulled = await OciLayout.open(path.join(dir, "gone-pulled"));
  assert.equal((await client.pull(pulled, "homeostat/gone", "1.1", "1.1"))?.digest, req.outputs.manifest);
});
