// stable-diffusion.cpp's SDXL base cases (../shared/reference/sdxl-random) through the public
// API: noise, both text conditionings, the pooled part of the y vector, the final latent and the
// image. Opt-in: SDNODE_REFERENCE=1 (makes the 6.9 GB checkpoint once, python3 with numpy).
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { loadModel, randn, type Rng, type Sampler, type Scheduler } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { psnrOf, readTensor, referenceCases, referenceEnabled, referenceModel, relativeL2, sdxlCaseDir } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'set SDNODE_REFERENCE=1 (needs ../shared and python3 with numpy)';

describe('reference: SDXL against stable-diffusion.cpp', { skip }, () => {
  const figures: string[] = [];
  after(() => {
    if (figures.length) console.log(`reference figures (SDXL):\n${figures.join('\n')}`);
  });
  for (const c of referenceEnabled ? referenceCases([sdxlCaseDir]) : []) {
    test(c.name, { timeout: 1_800_000 }, async () => {
      await using model = await loadModel(referenceModel('sdxl-random-f16.safetensors'));
      assert.equal(model.architecture, 'sdxl');
      const noiseRef = readTensor(c.dir, 'noise');
      const noise = randn({ seed: c.seed, rng: c.rng as Rng, count: noiseRef.data.length });
      let maxNoise = 0;
      for (let i = 0; i < noise.length; i++) maxNoise = Math.max(maxNoise, Math.abs(noise[i] - noiseRef.data[i]));
      const cond = await model.encodePrompt(c.prompt);
      const uncond = await model.encodePrompt(c.negativePrompt);
      const condErr = relativeL2(cond.data, readTensor(c.dir, 'cond_crossattn').data);
      const vector = readTensor(c.dir, 'cond_vector').data;
      const pooledErr = relativeL2(cond.pooled!, vector.subarray(0, 1280));
      const uvector = readTensor(c.dir, 'uncond_vector').data;
      const upooledErr = relativeL2(uncond.pooled!, uvector.subarray(0, 1280));
      const r = await model.generate({
        prompt: c.prompt, negativePrompt: c.negativePrompt, width: c.width, height: c.height, steps: c.steps, cfgScale: c.cfgScale,
        sampler: c.sampler as Sampler, scheduler: c.scheduler as Scheduler, seed: c.seed, rng: c.rng as Rng, returnLatents: true,
      });
      const latentErr = relativeL2(r.latents![0], readTensor(c.dir, 'final_latent').data);
      const ref = decodePNG(fs.readFileSync(path.join(c.dir, 'image.png')));
      assert.deepEqual([r.images[0].width, r.images[0].height], [ref.width, ref.height]);
      const psnr = psnrOf(r.images[0].data, ref.data);
      const pct = (x: number) => `${(x * 100).toFixed(3)}%`;
      figures.push(
        `${c.name}: noise max|diff| ${maxNoise.toExponential(2)}, cond ${pct(condErr)}, pooled ${pct(pooledErr)} / uncond ${pct(upooledErr)}, ` +
          `final latent ${pct(latentErr)}, image ${psnr.toFixed(2)} dB, generate ${(r.timings.total / 1000).toFixed(1)} s`,
      );
      assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
      assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
      assert.ok(pooledErr < 0.005 && upooledErr < 0.005, `pooled rel L2 ${pooledErr} / ${upooledErr}`);
      assert.ok(latentErr < 0.01, `latent rel L2 ${latentErr}`);
      assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
    });
  }
});
