// stable-diffusion.cpp's textual-inversion case (../shared/reference/sd15-adapters/embedding-euler:
// --embd-dir emb with emb/rndemb.safetensors, trigger "rndemb") through the public API: the
// tokenization against its prompt_parse.json, noise, cond / uncond, final latent and image.
// Opt-in: SDNODE_REFERENCE=1.
import { execFileSync } from 'node:child_process';
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModel } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { psnrOf, readTensor, referenceEnabled, referenceModel, relativeL2, sharedDir, type ReferenceCase, caseGenerateOptions, noiseMaxDiff } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'set SDNODE_REFERENCE=1 (needs ../shared and python3 with numpy)';
const caseDir = path.join(sharedDir, 'reference', 'sd15-adapters', 'embedding-euler');
const VOCAB = 49408;

/** The case's embedding (make-embedding-random.py's defaults), made once into the model cache. */
function rndemb(): string {
  const cache = process.env.SDNODE_MODEL_CACHE ?? path.join(os.homedir(), '.cache', 'sdnode', 'models');
  const out = path.join(cache, 'rndemb.safetensors');
  if (!fs.existsSync(out)) {
    fs.mkdirSync(cache, { recursive: true });
    const tmp = `${out}.partial-${process.pid}`;
    execFileSync('python3', [path.join(sharedDir, 'tools', 'make-embedding-random.py'), tmp], { stdio: 'inherit' });
    fs.renameSync(tmp, out);
  }
  return out;
}

/** Vectors in an emb_params safetensors file. */
function vectorsOf(file: string): number {
  const buf = fs.readFileSync(file);
  const header = JSON.parse(buf.subarray(8, 8 + Number(buf.readBigUInt64LE(0))).toString('utf8')) as Record<string, { shape: number[] }>;
  return header.emb_params!.shape[0]!;
}

describe('reference: textual-inversion embedding against stable-diffusion.cpp', { skip }, () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-ref-emb-'));
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  test('embedding-euler', { timeout: 1_200_000 }, async () => {
    const c = { ...JSON.parse(fs.readFileSync(path.join(caseDir, 'case.json'), 'utf8')), dir: caseDir } as ReferenceCase;
    assert.match(c.extraReferenceArgs, /--embd-dir emb/);
    const embDir = path.join(work, 'emb');
    fs.mkdirSync(embDir);
    const emb = rndemb();
    fs.copyFileSync(emb, path.join(embDir, 'rndemb.safetensors'));
    const vectors = vectorsOf(emb);
    await using model = await loadModel(referenceModel(path.basename(c.model ?? 'sd15-random-f16.safetensors')), { embeddingsDir: embDir });

    // Tokenization: each BPE piece the reference logged is one vocabulary token ("word</w>"),
    // the trigger piece its vectors, custom ids from the vocabulary size on.
    const parse = JSON.parse(fs.readFileSync(path.join(caseDir, 'prompt_parse.json'), 'utf8')) as Array<{
      text: string; segments: Array<[string, number]>; pieces: Array<{ text: string; tokens: string[] }>;
    }>;
    for (const entry of parse) {
      const expected: number[] = [];
      for (const piece of entry.pieces) {
        for (const tok of piece.tokens) {
          if (tok === 'rndemb') {
            for (let k = 0; k < vectors; k++) expected.push(VOCAB + k);
            continue;
          }
          assert.ok(tok.endsWith('</w>'), `piece ${tok}: a whole word`);
          const ids = model.tokenize(tok.slice(0, -4));
          assert.equal(ids[2], 49407, `piece ${tok} is one token`);
          expected.push(ids[1]!);
        }
      }
      assert.deepEqual(entry.segments.map((s) => s[1]), entry.segments.map(() => 1), 'no emphasis in this case');
      const encoded = await model.encodePrompt(entry.text);
      assert.deepEqual([...encoded.tokenIds].slice(0, expected.length + 2), [49406, ...expected, 49407], `tokens of "${entry.text}"`);
    }

    const maxNoise = noiseMaxDiff(c, caseDir);
    const condErr = relativeL2((await model.encodePrompt(c.prompt)).data, readTensor(caseDir, 'cond_crossattn').data);
    const uncondErr = relativeL2((await model.encodePrompt(c.negativePrompt)).data, readTensor(caseDir, 'uncond_crossattn').data);
    // Without the embedding the trigger is plain text: far from the reference's cond.
    await using bare = await loadModel(referenceModel(path.basename(c.model ?? 'sd15-random-f16.safetensors')));
    const bareErr = relativeL2((await bare.encodePrompt(c.prompt)).data, readTensor(caseDir, 'cond_crossattn').data);
    const r = await model.generate({
      ...caseGenerateOptions(c),
    });
    const latentErr = relativeL2(r.latents![0]!, readTensor(caseDir, 'final_latent').data);
    const ref = decodePNG(fs.readFileSync(path.join(caseDir, 'image.png')));
    assert.deepEqual([r.images[0]!.width, r.images[0]!.height], [ref.width, ref.height]);
    const psnr = psnrOf(r.images[0]!.data, ref.data);
    const pct = (x: number) => `${(x * 100).toPrecision(2)}%`;
    console.log(`reference figures (embedding): ${c.name}: noise max|diff| ${maxNoise.toExponential(2)}, cond ${pct(condErr)}, ` +
      `uncond ${pct(uncondErr)}, cond without the embedding ${pct(bareErr)}, final latent ${pct(latentErr)}, ` +
      `image ${psnr.toFixed(2)} dB, generate ${(r.timings.total / 1000).toFixed(1)} s`);
    assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
    assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
    assert.ok(uncondErr < 0.005, `uncond rel L2 ${uncondErr}`);
    assert.ok(bareErr > 0.01, `the embedding matters (${bareErr})`);
    assert.ok(latentErr < 0.01, `latent rel L2 ${latentErr}`);
    assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
  });
});
