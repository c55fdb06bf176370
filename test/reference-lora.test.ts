// stable-diffusion.cpp's LoRA case (../shared/reference/sd15-adapters/lora-euler): a seeded random
// kohya LoRA (../shared/tools/make-sd15-lora.py) in the prompt, merged into the f16 SD1.5
// checkpoint as the reference's auto mode does, through the public API. Opt-in: SDNODE_REFERENCE=1.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModel } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { psnrOf, readTensor, referenceCases, referenceEnabled, referenceModel, relativeL2, sharedDir, caseGenerateOptions, noiseMaxDiff } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'set SDNODE_REFERENCE=1 (needs ../shared and python3 with numpy)';
const adaptersDir = path.join(sharedDir, 'reference', 'sd15-adapters');

describe('reference: LoRA against stable-diffusion.cpp', { skip }, () => {
  const figures: string[] = [];
  after(() => {
    if (figures.length) console.log(`reference figures (LoRA):\n${figures.join('\n')}`);
  });
  for (const c of referenceEnabled ? referenceCases([adaptersDir]).filter((x) => /--lora-model-dir/.test(x.extraReferenceArgs)) : []) {
    test(c.name, { timeout: 1_200_000 }, async () => {
      // The case's lora/ folder: the LoRA its prompt names, made by the reference's generator.
      const loraDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-lora-'));
      fs.symlinkSync(referenceModel('testlora.safetensors'), path.join(loraDir, 'testlora.safetensors'));
      await using model = await loadModel(referenceModel('sd15-random-f16.safetensors'), { loraDir });
      const maxNoise = noiseMaxDiff(c);
      // The text encoder's LoRA modules change the conditioning.
      const condErr = relativeL2((await model.encodePrompt(c.prompt)).data, readTensor(c.dir, 'cond_crossattn').data);
      const uncondErr = relativeL2((await model.encodePrompt(c.negativePrompt, { loras: [{ path: path.join(loraDir, 'testlora.safetensors'), weight: 0.8 }] })).data,
        readTensor(c.dir, 'uncond_crossattn').data);
      const r = await model.generate({
        ...caseGenerateOptions(c),
      });
      const latentErr = relativeL2(r.latents![0], readTensor(c.dir, 'final_latent').data);
      const ref = decodePNG(fs.readFileSync(path.join(c.dir, 'image.png')));
      const psnr = psnrOf(r.images[0].data, ref.data);
      // Without the LoRA the result must differ: the case tests the LoRA, not the base model.
      const base = await model.generate({
        ...caseGenerateOptions(c), prompt: c.prompt.replace(/<lora:[^>]*>/g, ''),
      });
      const baseErr = relativeL2(base.latents![0], readTensor(c.dir, 'final_latent').data);
      figures.push(`${c.name}: noise max|diff| ${maxNoise.toExponential(2)}, cond ${(condErr * 100).toFixed(3)}%, uncond ${(uncondErr * 100).toFixed(3)}%, ` +
        `final latent ${(latentErr * 100).toFixed(3)}% (without the LoRA ${(baseErr * 100).toFixed(1)}%), image ${psnr.toFixed(2)} dB, ` +
        `apply ${r.options.loraApply} ${(r.timings.loraApply / 1000).toFixed(2)} s, generate ${(r.timings.total / 1000).toFixed(1)} s`);
      assert.equal(r.options.loraApply, 'merge');
      assert.deepEqual(r.warnings, []);
      assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
      assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
      assert.ok(uncondErr < 0.005, `uncond rel L2 ${uncondErr}`);
      assert.ok(latentErr < 0.01, `latent rel L2 ${latentErr}`);
      assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
      assert.ok(baseErr > 0.05, `the LoRA changes the result (${baseErr})`);
    });
  }
});
