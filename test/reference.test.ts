// Opt-in (SDNODE_REFERENCE=1): checks sdnode against stable-diffusion.cpp's outputs on the
// full-size random SD1.5 checkpoint (../shared/reference/sd15-random and sd15-random-2). See
// test/helpers/reference.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { decodePNG } from '../lib/image.ts';
import { inspectModel, loadModel, type WeightType } from '../lib/index.ts';
import { readTensor, referenceCases, referenceEnabled, psnrOf, relativeL2, sd15RandomCheckpoint, caseGenerateOptions, noiseMaxDiff } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'opt-in: set SDNODE_REFERENCE=1 (makes a 2.1 GB checkpoint once)';

describe('reference: full-size random SD1.5 checkpoint', { skip }, () => {
  test('inspectModel reports SD1.x with the published parameter counts', async () => {
    const info = await inspectModel(sd15RandomCheckpoint());
    assert.equal(info.format, 'safetensors');
    assert.equal(info.architecture, 'sd1');
    assert.deepEqual(info.components, ['unet', 'vae', 'textEncoder']);
    assert.equal(info.parameters.unet, 859_520_964);
    assert.equal(info.parameters.vae, 83_653_863);
    assert.equal(info.parameters.textEncoder, 123_060_480);
    assert.deepEqual(info.dtypes, { f16: info.tensorCount });
    const u = info.hyperparameters.unet!;
    assert.equal(u.modelChannels, 320);
    assert.deepEqual(u.channelMult, [1, 2, 4, 4]);
    assert.deepEqual(u.numResBlocks, [2, 2, 2, 2]);
    assert.deepEqual(u.transformerDepth, [1, 1, 1, 0]);
    assert.equal(u.contextDim, 768);
    assert.equal(u.inChannels, 4);
    assert.equal(info.hyperparameters.textEncoder!.layers, 12);
    assert.equal(info.hyperparameters.vae!.scaleFactor.toFixed(5), '0.18215');
  });
});

describe('reference: text-to-image against stable-diffusion.cpp', { skip }, () => {
  const figures: string[] = [];
  after(() => {
    if (figures.length) console.log(`reference figures:\n${figures.join('\n')}`);
  });
  for (const c of referenceEnabled ? referenceCases() : []) {
    test(c.name, { timeout: 1_200_000 }, async () => {
      const weightType = /--type\s+(\S+)/.exec(c.extraReferenceArgs)?.[1] as WeightType | undefined;
      const sigmas = /--sigmas\s+(\S+)/.exec(c.extraReferenceArgs)?.[1]?.split(',').map(Number);
      await using model = await loadModel(sd15RandomCheckpoint(), { weightType });
      const maxNoise = noiseMaxDiff(c);
      const cond = await model.encodePrompt(c.prompt);
      const condErr = relativeL2(cond.data, readTensor(c.dir, 'cond_crossattn').data);
      // cfg 1 runs no unconditional pass: the reference wrote no unconditional conditioning.
      const hasUncond = fs.existsSync(path.join(c.dir, 'uncond_crossattn.f32'));
      assert.equal(hasUncond, c.cfgScale !== 1, 'an unconditional conditioning exactly when cfg != 1');
      const uncondErr = hasUncond ? relativeL2((await model.encodePrompt(c.negativePrompt)).data, readTensor(c.dir, 'uncond_crossattn').data) : 0;
      const r = await model.generate({
        ...caseGenerateOptions(c),
        ...(sigmas ? { sigmas } : {}),
      });
      const latentErr = relativeL2(r.latents![0], readTensor(c.dir, 'final_latent').data);
      const ref = decodePNG(fs.readFileSync(path.join(c.dir, 'image.png')));
      const psnr = psnrOf(r.images[0].data, ref.data);
      figures.push(
        `${c.name}: noise max|diff| ${maxNoise.toExponential(2)}, cond ${(condErr * 100).toFixed(3)}%, uncond ${hasUncond ? (uncondErr * 100).toFixed(3) + '%' : '(cfg 1: none)'}, ` +
          `final latent ${(latentErr * 100).toFixed(3)}%, image ${psnr.toFixed(2)} dB, generate ${(r.timings.total / 1000).toFixed(1)} s`,
      );
      assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
      assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
      assert.ok(uncondErr < 0.005, `uncond rel L2 ${uncondErr}`);
      assert.ok(latentErr < 0.01, `final latent rel L2 ${latentErr}`);
      assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
    });
  }
});
