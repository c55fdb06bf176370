// Image to image, inpainting, instruct-pix2pix and the hires fix on tiny generated models.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import { ImageFormatError, InvalidArgumentError, loadModel, type Model } from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-img2img-'));
const tiny = { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 };
let model: Model;
const base = { prompt: 'a red ball', width: 64, height: 64, steps: 4, seed: 5, sampler: 'euler' as const, returnLatents: true };
// A 64x64 gradient as PNG bytes.
let initPng: Buffer;

before(async () => {
  const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 11, tiny });
  model = await loadModel(made.path, { threads: 2 });
  const px = Buffer.alloc(64 * 64 * 3);
  for (let i = 0; i < 64 * 64; i++) px.set([(i % 64) * 4, Math.floor(i / 64) * 4, 128], i * 3);
  initPng = await sharp(px, { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
});
after(async () => {
  await model.dispose();
  fs.rmSync(work, { recursive: true, force: true });
});

function rel(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i] - b[i]) ** 2; n += b[i] ** 2; }
  return Math.sqrt(d / n);
}

describe('image to image', () => {
  test('strength cuts the schedule; tiny strengths stay near the init latent; 1.0 runs it all', async () => {
    const init = await model.encodeImage({ data: (await sharp(initPng).raw().toBuffer()), width: 64, height: 64, channels: 3 }, { seed: 5 });
    const half = await model.generate({ ...base, initImage: initPng, strength: 0.5 });
    assert.equal(half.options.mode, 'img2img');
    assert.equal(half.options.strength, 0.5);
    assert.equal(half.options.sigmas.length, 4); // int(4 * 0.5) + 1 = 3 steps
    const full = await model.generate({ ...base, initImage: initPng, strength: 1 });
    assert.equal(full.options.sigmas.length, 5);
    const tinyS = await model.generate({ ...base, initImage: initPng, strength: 0.01 });
    assert.equal(tinyS.options.sigmas.length, 2);
    assert.ok(rel(tinyS.latents![0], init.data) < rel(full.latents![0], init.data), 'a tiny strength keeps more of the init latent');
    assert.match(half.images[0].toPNG().toString('latin1'), /Denoising strength: 0\.500000/);
  });

  test('width and height default to the init image; other sizes are fitted by resizeMode', async () => {
    const r = await model.generate({ ...base, width: undefined, height: undefined, initImage: initPng });
    assert.deepEqual([r.options.width, r.options.height], [64, 64]);
    for (const resizeMode of ['resize', 'crop', 'fill'] as const) {
      const o = await model.generate({ ...base, width: 128, initImage: initPng, resizeMode });
      assert.equal(o.images[0].width, 128);
      assert.equal(o.options.resizeMode, resizeMode);
    }
  });

  test('an all-black mask keeps the init latent; a white one repaints', async () => {
    const init = await model.encodeImage({ data: (await sharp(initPng).raw().toBuffer()), width: 64, height: 64, channels: 3 }, { seed: 5 });
    const black = { data: new Uint8Array(64 * 64), width: 64, height: 64, channels: 1 as const };
    const kept = await model.generate({ ...base, initImage: initPng, mask: black, strength: 1 });
    assert.equal(kept.options.mode, 'inpaint');
    assert.ok(rel(kept.latents![0], init.data) < 1e-4, `kept ${rel(kept.latents![0], init.data)}`);
    const white = await sharp({ create: { width: 32, height: 32, channels: 3, background: '#fff' } }).png().toBuffer();
    const painted = await model.generate({ ...base, initImage: initPng, mask: white, strength: 1 });
    assert.ok(rel(painted.latents![0], init.data) > 1e-2);
  });

  test('bad image inputs are typed errors naming the option', async () => {
    await assert.rejects(model.generate({ ...base, initImage: Buffer.from('not an image') }), (e: Error) => e instanceof ImageFormatError && /initImage/.test(e.message));
    await assert.rejects(model.generate({ ...base, strength: 0.5 }), (e: Error) => e instanceof InvalidArgumentError && /strength/.test(e.message));
    await assert.rejects(model.generate({ ...base, initImage: initPng, strength: 0 }), /strength/);
    await assert.rejects(model.generate({ ...base, mask: initPng }), /mask/);
    await assert.rejects(model.generate({ ...base, initImage: initPng, imageCfgScale: 1.5 }), /imageCfgScale applies to instruct-pix2pix/);
    const sixteen = await sharp(Buffer.alloc(64 * 64 * 6), { raw: { width: 64, height: 64, channels: 3 } }).png({ force: true }).toColourspace('rgb16').toBuffer();
    await assert.rejects(model.generate({ ...base, initImage: sixteen }), /initImage/);
    await assert.rejects(model.generate({ ...base, hires: { scale: 2, width: 128 } }), /scale or a width/);
    await assert.rejects(model.generate({ ...base, hires: { upscaler: 'bogus' as never } }), /hires.upscaler/);
  });

  test('the hires fix makes the larger image', async () => {
    const r = await model.generate({ ...base, hires: { scale: 2, steps: 2, strength: 0.5 } });
    assert.deepEqual([r.images[0].width, r.images[0].height], [128, 128]);
    assert.equal(r.options.hires!.width, 128);
    assert.equal(r.latents![0].length, 4 * 16 * 16);
    const px = await model.generate({ ...base, hires: { width: 128, steps: 1, upscaler: 'lanczos' } });
    assert.deepEqual([px.images[0].width, px.images[0].height], [128, 128]);
  });
});

describe('inpainting and instruct-pix2pix models', () => {
  test('a 9-channel UNet inpaints; an 8-channel UNet edits with image guidance', async () => {
    for (const arch of ['inpaint', 'ip2p'] as const) {
      const made = await generateCheckpoint({ arch, format: 'safetensors', out: path.join(work, `${arch}.safetensors`), seed: 3, tiny });
      await using m = await loadModel(made.path, { threads: 2 });
      const mask = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#fff' } }).png().toBuffer();
      const r = arch === 'inpaint'
        ? await m.generate({ ...base, initImage: initPng, mask })
        : await m.generate({ ...base, initImage: initPng, imageCfgScale: 1.5 });
      assert.equal(r.options.mode, arch === 'inpaint' ? 'inpaint' : 'edit');
      assert.equal(r.images[0].data.length, 64 * 64 * 3);
      if (arch === 'ip2p') await assert.rejects(m.generate({ ...base, initImage: initPng, strength: 0.5 }), /strength does not apply/);
    }
  });
});
