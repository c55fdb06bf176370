// stable-diffusion.cpp's image-to-image cases (../shared/reference/sd15-img2img) through the
// public API: img2img, inpainting with a normal and an inpainting model, instruct-pix2pix, the
// hires fix, TAESD decodes and the tiled VAE. Opt-in: SDNODE_REFERENCE=1.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { loadModel, type GenerateOptions, type Rng } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { img2imgCaseDir, readTensor, referenceCases, referenceEnabled, psnrOf, referenceModel, relativeL2, sharedDir, caseGenerateOptions, noiseMaxDiff } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'set SDNODE_REFERENCE=1 (needs ../shared and python3 with numpy)';
const img = (rel: string) => path.join(sharedDir, 'reference', 'images', rel.replace(/^img\//, ''));


describe('reference: image to image against stable-diffusion.cpp', { skip }, () => {
  const figures: string[] = [];
  after(() => {
    if (figures.length) console.log(`reference figures (img2img):\n${figures.join('\n')}`);
  });
  for (const c of referenceEnabled ? referenceCases([img2imgCaseDir]) : []) {
    test(c.name, { timeout: 1_200_000 }, async () => {
      const args = c.extraReferenceArgs;
      const arg = (flag: string) => new RegExp(`(?:^|\\s)${flag}\\s+(\\S+)`).exec(args)?.[1];
      const modelFile = path.basename(arg('-m') ?? c.model ?? 'sd15-random-f16.safetensors');
      const taesd = arg('--taesd');
      await using model = await loadModel(referenceModel(modelFile), taesd ? { taesd: referenceModel(path.basename(taesd)) } : {});
      const options: GenerateOptions = {
        ...caseGenerateOptions(c),
      };
      const init = arg('-i') ?? arg('-r');
      if (init) options.initImage = img(init);
      if (arg('--strength') && !arg('-r')) options.strength = Number(arg('--strength'));
      if (arg('--mask')) options.mask = img(arg('--mask')!);
      if (arg('--img-cfg-scale')) options.imageCfgScale = Number(arg('--img-cfg-scale'));
      if (taesd) options.decoder = 'taesd';
      if (/--vae-tiling/.test(args)) options.vaeTiling = true;
      const hires = /--hires(\s|$)/.test(args);
      if (hires) {
        options.hires = {
          scale: Number(arg('--hires-scale')),
          steps: Number(arg('--hires-steps')),
          strength: Number(arg('--hires-denoising-strength')),
          upscaler: arg('--hires-upscaler')!.toLowerCase() as 'latent',
        };
      }
      const maxNoise = noiseMaxDiff(c);
      const condErr = relativeL2((await model.encodePrompt(c.prompt)).data, readTensor(c.dir, 'cond_crossattn').data);
      const parts = [`noise max|diff| ${maxNoise.toExponential(2)}`, `cond ${(condErr * 100).toFixed(3)}%`];
      let initErr = 0;
      if (fs.existsSync(path.join(c.dir, 'init_latent.f32'))) {
        const latent = await model.encodeImage(decodeRaw(img(init!)), { seed: c.seed, rng: c.rng as Rng, ...(taesd ? { decoder: 'taesd' as const } : {}) });
        initErr = relativeL2(latent.data, readTensor(c.dir, 'init_latent').data);
        parts.push(`init latent ${(initErr * 100).toFixed(3)}%`);
      }
      const r = await model.generate(options);
      let latentErr = 0;
      if (hires) {
        // The first pass alone: the same options without the hires fix.
        const first = await model.generate({ ...options, hires: undefined });
        latentErr = relativeL2(first.latents![0], readTensor(c.dir, 'firstpass_latent').data);
        parts.push(`first-pass latent ${(latentErr * 100).toFixed(3)}%`);
      } else {
        latentErr = relativeL2(r.latents![0], readTensor(c.dir, 'final_latent').data);
        parts.push(`final latent ${(latentErr * 100).toFixed(3)}%`);
      }
      const ref = decodePNG(fs.readFileSync(path.join(c.dir, 'image.png')));
      assert.deepEqual([r.images[0].width, r.images[0].height], [ref.width, ref.height]);
      const psnr = psnrOf(r.images[0].data, ref.data);
      parts.push(`image ${psnr.toFixed(2)} dB`, `mode ${r.options.mode}`, `generate ${(r.timings.total / 1000).toFixed(1)} s`);
      figures.push(`${c.name}: ${parts.join(', ')}`);
      assert.ok(maxNoise < 1e-5, `noise max abs diff ${maxNoise}`);
      assert.ok(condErr < 0.005, `cond rel L2 ${condErr}`);
      assert.ok(initErr < 0.005, `init latent rel L2 ${initErr}`);
      assert.ok(latentErr < 0.01, `latent rel L2 ${latentErr}`);
      assert.ok(psnr > 40, `image PSNR ${psnr} dB`);
    });
  }
});

function decodeRaw(file: string) {
  const p = decodePNG(fs.readFileSync(file));
  return { data: p.data, width: p.width, height: p.height, channels: p.channels as 1 | 3 | 4 };
}
