// Previews while sampling (onPreview, generateStream, preview modes and interval) and automatic
// VAE tiling, on tiny generated models.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AbortError, InvalidArgumentError, loadModel, type GenerateEvent, type GeneratePreview, type Model } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { generateCheckpoint } from './fixtures/generate.ts';
import { writeTaesd } from './fixtures/taesd.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-preview-'));
const tiny = { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 };
let model: Model; // with a TAESD
let plain: Model; // without
// euler's last step lands on its denoised prediction, so the last preview is the final latent.
const base = { prompt: 'a lighthouse', width: 64, height: 64, steps: 4, seed: 9, sampler: 'euler' as const, returnLatents: true };

before(async () => {
  const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 3, tiny });
  const taesd = path.join(work, 'taesd.safetensors');
  await writeTaesd({ out: taesd, seed: 4 });
  model = await loadModel(made.path, { threads: 2, taesd });
  plain = await loadModel(made.path, { threads: 2 });
});
after(async () => {
  await model.dispose();
  await plain.dispose();
  fs.rmSync(work, { recursive: true, force: true });
});

// stable-diffusion.cpp's SD1.x/SD2.x latent-to-RGB table (runtime/latent-preview.h), as test data.
const PROJ = [
  [0.337366, 0.216344, 0.257386],
  [0.165636, 0.386828, 0.046994],
  [-0.267803, 0.237036, 0.223517],
  [-0.178022, -0.200862, -0.678514],
];
const BIAS = [-0.017478, -0.055834, -0.105825];
function project(latent: Float32Array, w: number, h: number): Uint8Array {
  const plane = w * h;
  const out = new Uint8Array(plane * 3);
  for (let i = 0; i < plane; i++) {
    for (let k = 0; k < 3; k++) {
      let v = Math.fround(BIAS[k]);
      for (let c = 0; c < 4; c++) v = Math.fround(v + Math.fround(latent[c * plane + i] * Math.fround(PROJ[c][k])));
      v = Math.min(1, Math.max(0, Math.fround(Math.fround(v * 0.5) + 0.5)));
      out[i * 3 + k] = Math.trunc(Math.fround(v * 255));
    }
  }
  return out;
}
const maxDiff = (a: Uint8Array, b: Uint8Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('previews', () => {
  test("'vae' previews every step; the last one is the final image; previews come before their step's progress", async () => {
    const events: string[] = [];
    const previews: GeneratePreview[] = [];
    const r = await model.generate({
      ...base,
      preview: 'vae',
      onPreview: (p) => {
        previews.push(p);
        events.push(`preview ${p.step}`);
      },
      onProgress: (p) => events.push(`progress ${p.step}`),
    });
    assert.deepEqual(events, [1, 2, 3, 4].flatMap((s) => [`preview ${s}`, `progress ${s}`]));
    assert.deepEqual(previews.map((p) => [p.step, p.steps, p.index, p.image.width, p.image.height]), [1, 2, 3, 4].map((s) => [s, 4, 0, 64, 64]));
    assert.deepEqual(previews[3].image.data, r.images[0].data);
    assert.notDeepEqual(previews[0].image.data, r.images[0].data);
    assert.equal(r.options.preview, 'vae');
    assert.equal(r.options.previewInterval, 1);
    const png = decodePNG(previews[0].image.toPNG());
    assert.deepEqual([png.width, png.height], [64, 64]);
    assert.equal(png.text.parameters, undefined, 'previews carry no generation parameters');
  });

  test("'proj' is the linear latent-to-RGB map at the latent's size; previewInterval picks the steps; a batch numbers them per image", async () => {
    const previews: GeneratePreview[] = [];
    const r = await model.generate({ ...base, batchSize: 2, preview: 'proj', previewInterval: 2, onPreview: (p) => previews.push(p) });
    assert.deepEqual(previews.map((p) => [p.step, p.steps, p.index]), [[2, 8, 0], [4, 8, 0], [6, 8, 1], [8, 8, 1]]);
    for (const p of previews) assert.deepEqual([p.image.width, p.image.height, p.image.data.length], [8, 8, 8 * 8 * 3]);
    // Float rounding of the sum's order may move a byte by one.
    assert.ok(maxDiff(previews[1].image.data, project(r.latents![0], 8, 8)) <= 1);
    assert.ok(maxDiff(previews[3].image.data, project(r.latents![1], 8, 8)) <= 1);
  });

  test("the default is 'taesd' with a TAESD loaded (its decode of the final latent last), else 'proj'", async () => {
    const withTaesd: GeneratePreview[] = [];
    const r = await model.generate({ ...base, onPreview: (p) => withTaesd.push(p) });
    assert.equal(r.options.preview, 'taesd');
    const [decoded] = await model.decodeLatents({ data: r.latents![0], width: 8, height: 8, channels: 4 }, { decoder: 'taesd' });
    assert.deepEqual(withTaesd.at(-1)!.image.data, decoded.data);
    const without: GeneratePreview[] = [];
    const p = await plain.generate({ ...base, onPreview: (e) => without.push(e) });
    assert.equal(p.options.preview, 'proj');
    assert.equal(without[0].image.width, 8);
    // Without onPreview there are no previews and the result says nothing of them.
    const none = await model.generate(base);
    assert.equal(none.options.preview, undefined);
    assert.deepEqual(none.images[0].data, r.images[0].data, 'previews do not change the result');
  });

  test('previews in img2img, inpainting and the hires fix (the second pass at its size)', async () => {
    const init = { data: new Uint8Array(64 * 64 * 3).fill(120), width: 64, height: 64, channels: 3 as const };
    const steps: number[] = [];
    await model.generate({ ...base, initImage: init, strength: 0.5, preview: 'proj', onPreview: (p) => steps.push(p.step) });
    assert.deepEqual(steps, [1, 2, 3]);
    const mask = { data: new Uint8Array(64 * 64).fill(255), width: 64, height: 64, channels: 1 as const };
    const masked: GeneratePreview[] = [];
    await model.generate({ ...base, initImage: init, mask, strength: 0.5, preview: 'proj', onPreview: (p) => masked.push(p) });
    assert.equal(masked.length, 3);
    const hires: GeneratePreview[] = [];
    const h = await model.generate({ ...base, steps: 2, hires: { scale: 2, steps: 2, strength: 0.5 }, preview: 'vae', onPreview: (p) => hires.push(p) });
    const second = h.options.hires!.sigmas.length - 1;
    assert.deepEqual(
      hires.map((p) => [p.step, p.steps, p.image.width]),
      Array.from({ length: 2 + second }, (_, i) => [i + 1, 2 + second, i < 2 ? 64 : 128]),
    );
    assert.deepEqual(hires.at(-1)!.image.data, h.images[0].data);
  });

  test('bad preview options are InvalidArgumentErrors naming the option', async () => {
    await assert.rejects(model.generate({ ...base, preview: 'jpeg' as never, onPreview: () => {} }), /preview must be one of "proj", "taesd", "vae"/);
    await assert.rejects(model.generate({ ...base, previewInterval: 0 }), /previewInterval must be an integer from 1 to 1000/);
    await assert.rejects(model.generate({ ...base, onPreview: 'yes' as never }), /onPreview must be a function/);
    await assert.rejects(plain.generate({ ...base, preview: 'taesd', onPreview: () => {} }), (e: Error) => e instanceof InvalidArgumentError && /preview 'taesd' needs a TAESD/.test(e.message));
  });

  test('an onPreview that throws aborts the generation with its error', async () => {
    const boom = new Error('preview handler failed');
    await assert.rejects(model.generate({ ...base, onPreview: () => { throw boom; } }), (e) => e === boom);
    // The model still works afterwards.
    assert.equal((await model.generate(base)).images.length, 1);
  });
});

describe('generateStream', () => {
  test('yields progress and previews in order, then the result, the same as generate()', async () => {
    const events: GenerateEvent[] = [];
    for await (const e of model.generateStream({ ...base, preview: 'proj', previewInterval: 2 })) events.push(e);
    assert.deepEqual(
      events.map((e) => (e.type === 'result' ? 'result' : `${e.type} ${e.step}`)),
      ['progress 1', 'preview 2', 'progress 2', 'progress 3', 'preview 4', 'progress 4', 'result'],
    );
    const last = events.at(-1)!;
    assert.equal(last.type, 'result');
    const direct = await model.generate(base);
    assert.deepEqual(last.type === 'result' && last.result.images[0].data, direct.images[0].data);
  });

  test('leaving the loop early stops the generation; the model runs the next call', async () => {
    let seen = 0;
    const t0 = Date.now();
    for await (const e of model.generateStream({ ...base, steps: 200, preview: 'proj' })) {
      if (e.type === 'progress' && ++seen === 2) break;
    }
    assert.equal(seen, 2);
    assert.ok(Date.now() - t0 < 60_000);
    assert.equal((await model.generate(base)).images.length, 1);
  });

  test("a signal aborts it with AbortError (the signal's reason as cause); bad options throw at the first next()", async () => {
    const controller = new AbortController();
    const reason = new Error('user stop');
    const run = async () => {
      for await (const e of model.generateStream({ ...base, steps: 200, signal: controller.signal })) {
        if (e.type === 'progress' && e.step === 1) controller.abort(reason);
      }
    };
    await assert.rejects(run, (e) => e instanceof AbortError && (e as Error).cause === reason);
    await assert.rejects(async () => {
      for await (const _ of model.generateStream({ ...base, steps: 0 })) void _;
    }, /steps must be an integer from 1 to 1000/);
    await assert.rejects(async () => {
      for await (const _ of model.generateStream({ ...base, onPreview: () => {} })) void _;
    }, /onPreview must be left out with generateStream/);
  });
});

describe('automatic VAE tiling', () => {
  test("'auto' (the default) decodes whole under the budget and in tiles above it, as vaeTiling: true does", async () => {
    const big = { ...base, width: 320, height: 320, steps: 1 }; // past the default 256-pixel tile
    const auto = await model.generate(big);
    assert.equal(auto.options.vaeTiling, false);
    const forced = await model.generate({ ...big, vaeTiling: true });
    assert.equal(forced.options.vaeTiling, true);
    const small = await model.generate({ ...big, vaeMemoryBudget: 1024 });
    assert.equal(small.options.vaeTiling, true);
    assert.deepEqual(small.images[0].data, forced.images[0].data, 'automatic tiling uses the default tiles');
    assert.notDeepEqual(small.images[0].data, auto.images[0].data);
    const off = await model.generate({ ...big, vaeTiling: false });
    assert.deepEqual(off.images[0].data, auto.images[0].data);
    // decodeLatents and encodeImage take the same choice.
    const latent = { data: auto.latents![0], width: 40, height: 40, channels: 4 };
    const [tiled] = await model.decodeLatents(latent, { vaeMemoryBudget: 0 });
    assert.deepEqual(tiled.data, forced.images[0].data);
    // Encode tiles are 512 pixels by default: a larger image.
    const pixels = { data: new Uint8Array(640 * 640 * 3).map((_, i) => (i * 7) % 251), width: 640, height: 640, channels: 3 as const };
    const encodedTiled = await model.encodeImage(pixels, { vaeTiling: true });
    assert.deepEqual((await model.encodeImage(pixels, { vaeMemoryBudget: 0 })).data, encodedTiled.data);
    assert.notDeepEqual((await model.encodeImage(pixels)).data, encodedTiled.data);
  });

  test('bad budgets are InvalidArgumentErrors', async () => {
    await assert.rejects(model.generate({ ...base, vaeMemoryBudget: -1 }), /vaeMemoryBudget must be an integer from 0 to/);
    await assert.rejects(model.generate({ ...base, vaeMemoryBudget: 1.5 }), /vaeMemoryBudget must be an integer/);
    await assert.rejects(model.generate({ ...base, vaeTiling: true, vaeMemoryBudget: 1 }), /vaeMemoryBudget must be given only with vaeTiling 'auto'/);
    await assert.rejects(model.generate({ ...base, vaeTiling: 'sometimes' as never }), /vaeTiling must be a boolean, 'auto' or/);
  });
});
