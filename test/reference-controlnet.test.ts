// stable-diffusion.cpp's ControlNet case (../shared/reference/sd15-adapters/controlnet-euler) through
// the public API: the seeded random SD1.5 ControlNet on the random SD1.5 checkpoint, the reference's
// control image, strength 0.9. Opt-in: SDNODE_REFERENCE=1. The 13 step-0 ControlNet outputs are
// compared by the engine's own reference test (native/tests/reference_test.cpp).
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { loadControlNet, loadModel } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { readTensor, referenceCases, referenceEnabled, psnrOf, referenceModel, relativeL2, sharedDir, caseGenerateOptions, noiseMaxDiff } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'set SDNODE_REFERENCE=1 (needs ../shared and python3 with numpy)';
const adapters = path.join(sharedDir, 'reference', 'sd15-adapters');

describe('reference: ControlNet against stable-diffusion.cpp', { skip }, () => {
  const figures: string[] = [];
  after(() => {
    if (figures.length) console.log(`reference figures (ControlNet):\n${figures.join('\n')}`);
  });
  for (const c of referenceEnabled ? referenceCases([adapters]).filter((k) => /--control-net/.test(k.extraReferenceArgs)) : []) {
    test(c.name, { timeout: 1_200_000 }, async () => {
      const args = c.extraReferenceArgs;
      const arg = (flag: string) => new RegExp(`(?:^|\\s)${flag}\\s+(\\S+)`).exec(args)?.[1];
      await using model = await loadModel(referenceModel(c.model ?? 'sd15-random-f16.safetensors'));
      await using net = await loadControlNet(referenceModel(path.basename(arg('--control-net')!)));
      const image = path.join(sharedDir, 'reference', 'images', arg('--control-image')!.replace(/^img\//, ''));
      const maxNoise = noiseMaxDiff(c);
      const condErr = relativeL2((await model.encodePrompt(c.prompt)).data, readTensor(c.dir, 'cond_crossattn').data);
      const r = await model.generate({
        ...caseGenerateOptions(c),
        controlNets: [{ model: net, image, strength: Number(arg('--control-strength')), ...(/--canny/.test(args) ? { preprocess: 'canny' as const } : {}) }],
      });
      const latentErr = relativeL2(r.latents![0], readTensor(c.dir, 'final_latent').data);
      const ref = decodePNG(fs.readFileSync(path.join(c.dir, 'image.png')));
      assert.deepEqual([r.images[0].width, r.images[0].height], [ref.width, ref.height]);
      const psnr = psnrOf(r.images[0].data, ref.data);
      figures.push(`${c.name}: noise max|diff| ${maxNoise.toExponential(2)}, cond ${(condErr * 100).toFixed(3)}%, ` +
        `final latent ${(latentErr * 100).toFixed(3)}% (rel L2 ${latentErr.toExponential(2)}), image ${psnr.toFixed(2)} dB, generate ${(r.timings.total / 1000).toFixed(1)} s`);
      assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
      assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
      assert.ok(latentErr < 0.01, `latent rel L2 ${latentErr}`);
      assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
      assert.equal(r.options.controlNets?.[0]?.strength, 0.9);
    });
  }
});
