// SDXL base on tiny generated checkpoints: two text encoders side by side, the pooled bigG
// output, the size-conditioned y vector, defaults per architecture; LDM, diffusers and GGUF files.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ARCH_DEFAULTS, loadModel, type Model } from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-sdxl-'));
const tiny = { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 };
let ldm: string;
let model: Model;
const base = { prompt: 'a lighthouse at dusk', width: 64, height: 64, steps: 2, seed: 4, sampler: 'euler' as const, returnLatents: true };

before(async () => {
  ldm = (await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl.safetensors'), seed: 6, tiny })).path;
  model = await loadModel(ldm, { threads: 2 });
});
after(async () => {
  await model.dispose();
  fs.rmSync(work, { recursive: true, force: true });
});

const maxAbs = (a: Float32Array, b: Float32Array) => a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0);

describe('SDXL', () => {
  test('loads as sdxl; the conditioning is CLIP-L and bigG side by side, with a pooled vector', async () => {
    assert.equal(model.architecture, 'sdxl');
    const e = await model.encodePrompt('a lighthouse at dusk');
    // The tiny encoders are 32 wide each: 32 + 32 per token; bigG's pooled output is 32.
    assert.equal(e.dim, 64);
    assert.equal(e.tokens, 77);
    assert.equal(e.pooled?.length, 32);
    // Emphasis weights both halves; a long prompt makes more chunks, one pooled vector.
    const long = await model.encodePrompt(Array(100).fill('cat').join(' ')); // 100 tokens: two chunks
    assert.equal(long.tokens, 154);
    assert.equal(long.pooled?.length, 32);
    const weighted = await model.encodePrompt('a (lighthouse:1.5) at dusk');
    assert.notDeepEqual(weighted.data, e.data);
  });

  test('generates at the size asked; cfgScale 1 runs one pass; an empty negative prompt zeroes the text of the unconditional pass', async () => {
    assert.equal(ARCH_DEFAULTS.sdxl.width, 1024);
    const r = await model.generate(base);
    assert.deepEqual([r.images[0].width, r.images[0].height], [64, 64]);
    assert.equal(r.options.clipSkip, 2);
    assert.ok(r.latents![0].every(Number.isFinite));
    const again = await model.generate(base);
    assert.deepEqual(again.latents![0], r.latents![0], 'deterministic');
    // A negative prompt changes the unconditional pass; "" is not the same as a prompt of spaces,
    // which encodes to the same tokens but is not empty, so its text is not zeroed.
    const neg = await model.generate({ ...base, negativePrompt: 'fog' });
    assert.notDeepEqual(neg.latents![0], r.latents![0]);
    const spaces = await model.generate({ ...base, negativePrompt: '  ' });
    assert.notDeepEqual(spaces.latents![0], r.latents![0]);
    // cfgScale 1: the conditional pass alone, so the negative prompt does not matter.
    const one = await model.generate({ ...base, cfgScale: 1 });
    const oneNeg = await model.generate({ ...base, cfgScale: 1, negativePrompt: 'fog' });
    assert.deepEqual(one.latents![0], oneNeg.latents![0]);
  });

  test('originalSize, cropTopLeft and targetSize condition the UNet; their defaults are the generation size and 0, 0', async () => {
    const r = await model.generate(base);
    assert.deepEqual([r.options.originalSize, r.options.cropTopLeft, r.options.targetSize], [{ width: 64, height: 64 }, { top: 0, left: 0 }, { width: 64, height: 64 }]);
    const same = await model.generate({ ...base, originalSize: { width: 64, height: 64 }, cropTopLeft: { top: 0, left: 0 }, targetSize: { width: 64, height: 64 } });
    assert.deepEqual(same.latents![0], r.latents![0]);
    for (const extra of [{ originalSize: { width: 1024, height: 1024 } }, { cropTopLeft: { top: 32, left: 0 } }, { targetSize: { width: 64, height: 128 } }]) {
      const o = await model.generate({ ...base, ...extra });
      assert.notDeepEqual(o.latents![0], r.latents![0], JSON.stringify(extra));
    }
    // Width and height go to y in that order: swapping them changes the result.
    const swapped = await model.generate({ ...base, originalSize: { width: 64, height: 128 } });
    const swapped2 = await model.generate({ ...base, originalSize: { width: 128, height: 64 } });
    assert.notDeepEqual(swapped.latents![0], swapped2.latents![0]);
    await assert.rejects(model.generate({ ...base, originalSize: { width: -1, height: 64 } }), /originalSize\.width must be an integer from 0 to 16384/);
    await assert.rejects(model.generate({ ...base, cropTopLeft: { top: 1 } as never }), /cropTopLeft\.left must be an integer/);
    await assert.rejects(model.generate({ ...base, targetSize: { width: 64, height: 64, depth: 1 } as never }), /targetSize/);
  });

  test('SD1.x models refuse the SDXL size options', async () => {
    const sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 6, tiny })).path;
    await using m = await loadModel(sd1, { threads: 2 });
    await assert.rejects(m.generate({ ...base, originalSize: { width: 64, height: 64 } }), /originalSize applies to SDXL models only/);
    assert.equal((await m.generate(base)).options.originalSize, undefined);
  });

  test('GGUF files of the same weights give the same numbers as the LDM file; diffusers folders the same hidden states', async () => {
    const ref = await model.encodePrompt('a lighthouse at dusk');
    const gen = await model.generate(base);
    for (const format of ['gguf', 'diffusers'] as const) {
      const made = await generateCheckpoint({ arch: 'sdxl', format, out: path.join(work, `xl-${format}${format === 'gguf' ? '.gguf' : ''}`), seed: 6, tiny });
      await using other = await loadModel(made.path, { threads: 2 });
      assert.equal(other.architecture, 'sdxl', format);
      const e = await other.encodePrompt('a lighthouse at dusk');
      assert.ok(maxAbs(e.data, ref.data) < 1e-5, `${format}: hidden states`);
      if (format === 'diffusers') {
        // diffusers stores bigG's text_projection transposed (HF linear layout) and stable-diffusion.cpp
        // applies each file's tensor as stored, so the pooled vectors differ between the two
        // layouts there and here (docs/accuracy.md).
        assert.equal(e.pooled!.length, ref.pooled!.length);
        continue;
      }
      assert.ok(maxAbs(e.pooled!, ref.pooled!) < 1e-5, `${format}: pooled`);
      const g = await other.generate(base);
      assert.ok(maxAbs(g.latents![0], gen.latents![0]) < 1e-4, `${format}: latent`);
    }
  });

  test("the SDXL checkpoint's VAE decodes extreme latents without f16 overflow (stable-diffusion.cpp's 1/32 convolution scale); a VAE file is used as is", async () => {
    const vae = (await generateCheckpoint({ arch: 'sdxl', format: 'vae', out: path.join(work, 'xl-vae.safetensors'), seed: 6, tiny })).path;
    await using external = await loadModel(ldm, { threads: 2, vae });
    // +-1e4 alternating: past 65504 inside the first convolutions once divided by the 0.13025 scale factor.
    const data = new Float32Array(4 * 8 * 8).map((_, i) => (i % 2 ? 1e4 : -1e4));
    const [own] = await model.decodeLatents({ data, width: 8, height: 8, channels: 4 });
    const [plain] = await external.decodeLatents({ data, width: 8, height: 8, channels: 4 });
    const distinct = (px: Uint8Array) => new Set(px).size;
    assert.ok(distinct(own.data) > 16, 'a real image (NaNs would turn every byte to 0)');
    assert.equal(distinct(plain.data), 1, 'without the scale the same weights overflow to NaN (all bytes 0)');
    assert.equal(plain.data[0], 0);
    // Ordinary latents decode alike both ways but for f16 rounding of the tiniest activations.
    const gen = await model.generate(base);
    const [a] = await model.decodeLatents({ data: gen.latents![0], width: 8, height: 8, channels: 4 });
    const [b] = await external.decodeLatents({ data: gen.latents![0], width: 8, height: 8, channels: 4 });
    assert.ok(a.data.every((v, i) => Math.abs(v - b.data[i]) <= 2));
  });
});

describe('separate prompts for the two SDXL text encoders (text_l / text_g)', () => {
  test('prompt2 feeds bigG and the pooled embedding; each text is weighted on its own; the shorter is padded with empty chunks', async () => {
    const half = (e: { data: Float32Array; dim: number }, part: 'l' | 'g') => {
      // Tiny encoders: 32 CLIP-L then 32 bigG values per token.
      const out: number[] = [];
      for (let t = 0; t < e.data.length / e.dim; t++) for (let i = 0; i < 32; i++) out.push(e.data[t * e.dim + (part === 'l' ? i : 32 + i)]!);
      return out;
    };
    const l = await model.encodePrompt('a watercolor painting');
    const g = await model.encodePrompt('a lighthouse at dusk');
    const both = await model.encodePrompt('a watercolor painting', { prompt2: 'a lighthouse at dusk' });
    assert.equal(both.tokens, 77);
    assert.deepEqual(both.tokenIds, l.tokenIds);  // CLIP-L's ids
    assert.deepEqual(both.pooled, g.pooled);
    assert.deepEqual(half(both, 'l'), half(l, 'l'));
    assert.deepEqual(half(both, 'g'), half(g, 'g'));
    // Emphasis in one text weights that encoder's half only.
    const weighted = await model.encodePrompt('a watercolor painting', { prompt2: 'a (lighthouse:1.4) at dusk' });
    assert.deepEqual(half(weighted, 'l'), half(l, 'l'));
    assert.ok(maxAbs(new Float32Array(half(weighted, 'g')), new Float32Array(half(g, 'g'))) > 1e-3);
    // The same text twice is the one-prompt encoding, exactly.
    assert.deepEqual((await model.encodePrompt('a lighthouse at dusk', { prompt2: 'a lighthouse at dusk' })).data, g.data);
    // A two-chunk bigG text beside a one-chunk CLIP-L text: CLIP-L gets an empty-prompt chunk.
    const long = Array(100).fill('cat').join(' ');
    const padded = await model.encodePrompt('a lighthouse at dusk', { prompt2: long });
    assert.equal(padded.tokens, 154);
    assert.deepEqual(half(padded, 'g'), half(await model.encodePrompt(long), 'g'));
    const empty = half(await model.encodePrompt(''), 'l');
    assert.deepEqual(half(padded, 'l').slice(77 * 32), empty);
    assert.deepEqual(half(padded, 'l').slice(0, 77 * 32), half(g, 'l'));
  });

  test('generate takes prompt2 and negativePrompt2 (reported, passed to the refiner); SD1.x refuses them; the refiner reads prompt2', async () => {
    const plain = await model.generate(base);
    const r = await model.generate({ ...base, prompt2: 'a stormy sea' });
    assert.equal(r.options.prompt2, 'a stormy sea');
    assert.equal(plain.options.prompt2, undefined);
    assert.notDeepEqual(r.latents![0], plain.latents![0]);
    assert.deepEqual((await model.generate({ ...base, prompt2: base.prompt })).latents![0], plain.latents![0]);
    // An empty negative prompt zeroes the unconditional text only when bigG's is empty too.
    const neg2 = await model.generate({ ...base, negativePrompt2: 'blurry' });
    assert.equal(neg2.options.negativePrompt2, 'blurry');
    assert.notDeepEqual(neg2.latents![0], plain.latents![0]);
    assert.deepEqual((await model.generate({ ...base, negativePrompt2: '' })).latents![0], plain.latents![0]);
    const sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1-p2.safetensors'), seed: 6, tiny })).path;
    await using one = await loadModel(sd1, { threads: 2 });
    for (const key of ['prompt2', 'negativePrompt2'] as const) {
      await assert.rejects(one.generate({ ...base, [key]: 'x' }), (e: Error) => e.name === 'InvalidArgumentError' &&
        new RegExp(`^${key} is the text for SDXL's second text encoder \\(OpenCLIP bigG\\); this sd1 model has one text encoder`).test(e.message));
    }
    await assert.rejects(one.encodePrompt('x', { prompt2: 'y' }), /prompt2 is the text for SDXL's second text encoder/);
    await assert.rejects(model.generate({ ...base, prompt2: 42 as never }), /prompt2 must be a string/);
    // The refiner has bigG alone: prompt2 is its text.
    const made = await generateCheckpoint({ arch: 'sdxl-refiner', format: 'safetensors', out: path.join(work, 'refiner-p2.safetensors'), seed: 7, tiny });
    await using refiner = await loadModel(made.path, { threads: 2 });
    assert.deepEqual((await refiner.encodePrompt('x', { prompt2: 'a stormy sea' })).data, (await refiner.encodePrompt('a stormy sea')).data);
    // The hand-off gives the refiner the same texts: with the model itself and euler, the single run.
    const whole = await model.generate({ ...base, prompt2: 'a stormy sea', steps: 4 });
    const split = await model.generate({ ...base, prompt2: 'a stormy sea', steps: 4, refiner: { model, switchAt: 0.5 } });
    assert.deepEqual(split.latents![0], whole.latents![0]);
  });
});

describe('SDXL refiner', () => {
  test('bigG alone; y holds the aesthetic score instead of the target size; the options are checked per model', async () => {
    const made = await generateCheckpoint({ arch: 'sdxl-refiner', format: 'safetensors', out: path.join(work, 'refiner.safetensors'), seed: 7, tiny });
    await using refiner = await loadModel(made.path, { threads: 2 });
    assert.equal(refiner.architecture, 'sdxl-refiner');
    assert.equal(ARCH_DEFAULTS['sdxl-refiner'].width, 512);
    const e = await refiner.encodePrompt('a lighthouse at dusk');
    assert.equal(e.dim, 32);
    assert.equal(e.pooled?.length, 32);
    const r = await refiner.generate(base);
    assert.equal(r.options.aestheticScore, 6);
    assert.equal(r.options.negativeAestheticScore, 2.5);
    assert.deepEqual(r.options.originalSize, { width: 64, height: 64 });
    assert.equal(r.options.targetSize, undefined);
    assert.ok(r.latents![0].every(Number.isFinite));
    const same = await refiner.generate({ ...base, aestheticScore: 6, negativeAestheticScore: 2.5 });
    assert.deepEqual(same.latents![0], r.latents![0]);
    const higher = await refiner.generate({ ...base, aestheticScore: 9 });
    assert.notDeepEqual(higher.latents![0], r.latents![0]);
    const neg = await refiner.generate({ ...base, negativeAestheticScore: 1 });
    assert.notDeepEqual(neg.latents![0], r.latents![0]);
    // cfgScale 1: no negative pass, so its score does not matter.
    const a = await refiner.generate({ ...base, cfgScale: 1 });
    const b = await refiner.generate({ ...base, cfgScale: 1, negativeAestheticScore: 1 });
    assert.deepEqual(a.latents![0], b.latents![0]);
    await assert.rejects(refiner.generate({ ...base, targetSize: { width: 64, height: 64 } }), /targetSize does not apply to the SDXL refiner/);
    await assert.rejects(refiner.generate({ ...base, aestheticScore: 101 }), /aestheticScore must be a finite number from 0 to 100/);
    await assert.rejects(model.generate({ ...base, aestheticScore: 6 }), /aestheticScore applies to the SDXL refiner only/);
  });
});

describe('base -> refiner hand-off', () => {
  test('the refiner continues the schedule from the noisy latents; with the model itself and euler it is the single run, exactly', async () => {
    const steps: number[] = [];
    const whole = await model.generate({ ...base, steps: 4 });
    const split = await model.generate({ ...base, steps: 4, refiner: { model, switchAt: 0.5 }, onProgress: (p) => steps.push(p.step * 100 + p.steps) });
    assert.deepEqual(split.latents![0], whole.latents![0]);
    assert.deepEqual(split.images[0].data, whole.images[0].data);
    assert.deepEqual(steps, [104, 204, 304, 404], 'progress counts the whole schedule, in order');
    assert.deepEqual(split.options.refiner, { switchAt: 0.5, switchStep: 2, model: 'xl.safetensors' });
    assert.equal(split.options.steps, 4);
    assert.match(split.images[0].toPNG().toString('latin1'), /Refiner: xl\.safetensors, Refiner switch at: 0\.5/);
    // A batch: each image continues from its own latent.
    const batch = await model.generate({ ...base, steps: 4, batchSize: 2 });
    const batchSplit = await model.generate({ ...base, steps: 4, batchSize: 2, refiner: { model, switchAt: 0.75 } });
    assert.deepEqual(batchSplit.latents, batch.latents);
    assert.deepEqual(batchSplit.seeds, [4, 5]);
  });

  test('an SDXL refiner takes the aesthetic score, the base the target size; previews and the stream follow the hand-off', async () => {
    const made = await generateCheckpoint({ arch: 'sdxl-refiner', format: 'safetensors', out: path.join(work, 'refiner2.safetensors'), seed: 7, tiny });
    await using refiner = await loadModel(made.path, { threads: 2 });
    const r = await model.generate({ ...base, steps: 4, refiner: { model: refiner }, aestheticScore: 7, targetSize: { width: 64, height: 64 } });
    assert.equal(r.options.refiner?.switchStep, 3); // round(4 x 0.8)
    assert.equal(r.options.aestheticScore, 7);
    assert.deepEqual(r.options.targetSize, { width: 64, height: 64 });
    const other = await model.generate({ ...base, steps: 4, refiner: { model: refiner }, aestheticScore: 3 });
    assert.notDeepEqual(other.latents![0], r.latents![0]);
    const events: string[] = [];
    for await (const e of model.generateStream({ ...base, steps: 4, refiner: { model: refiner }, preview: 'proj' })) {
      events.push(e.type === 'result' ? 'result' : `${e.type} ${e.step}/${e.steps}`);
    }
    assert.deepEqual(events, [1, 2, 3, 4].flatMap((s) => [`preview ${s}/4`, `progress ${s}/4`]).concat('result'));
  });

  test('bad hand-offs are InvalidArgumentErrors naming the option', async () => {
    const sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1-b.safetensors'), seed: 6, tiny })).path;
    await using other = await loadModel(sd1, { threads: 2 });
    await assert.rejects(model.generate({ ...base, refiner: { model: other } }), /refiner\.model must be a model of this model's latent space \(SDXL/);
    await assert.rejects(model.generate({ ...base, refiner: { model, switchAt: 1 } }), /refiner\.switchAt must be a number above 0 and below 1/);
    await assert.rejects(model.generate({ ...base, refiner: { model: {} as Model } }), /refiner\.model must be a model from loadModel/);
    await assert.rejects(model.generate({ ...base, steps: 1, refiner: { model } }), /a refiner hand-off needs at least 2 sampling steps/);
    await assert.rejects(model.generate({ ...base, refiner: { model }, hires: { scale: 2 } }), /does not go with hires/);
  });
});

describe('SDXL prediction types', () => {
  test("a v_pred marker tensor means v-prediction (as stable-diffusion.cpp reads it); loadModel's prediction overrides", async () => {
    const v = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl-v.safetensors'), seed: 6, tiny, extraTensors: [{ name: 'v_pred', shape: [0] }] });
    await using vModel = await loadModel(v.path, { threads: 2 });
    assert.equal(model.prediction, 'eps');
    assert.equal(vModel.prediction, 'v');
    assert.deepEqual(vModel.unusedTensors, []);
    await using forced = await loadModel(ldm, { threads: 2, prediction: 'v' });
    assert.equal(forced.prediction, 'v');
    // Same weights, v- against eps-prediction: another result; the marker and the option agree.
    const a = await vModel.generate(base);
    const b = await forced.generate(base);
    assert.deepEqual(a.latents![0], b.latents![0]);
    assert.notDeepEqual(a.latents![0], (await model.generate(base)).latents![0]);
    await using back = await loadModel(v.path, { threads: 2, prediction: 'eps' });
    assert.equal(back.prediction, 'eps');
    await assert.rejects(loadModel(ldm, { prediction: 'flow' as never }), /prediction must be one of "eps", "v"/);
    await using edmAsV = await loadModel(v.path, { threads: 2, prediction: 'edm_v' });
    assert.equal(edmAsV.prediction, 'edm_v');
  });

  test('EDM v-prediction (CosXL: edm_vpred.* tensors) samples on the EDM schedule, exponential by default', async () => {
    const sigmaTensors = (min: number, max: number) => [
      { name: 'edm_vpred.sigma_max', shape: [], values: new Float32Array([max]) },
      { name: 'edm_vpred.sigma_min', shape: [], values: new Float32Array([min]) },
    ];
    const out = (name: string) => path.join(work, name);
    // f32, so that the stored range is exactly the reference's 0.002f and 120.
    const edm = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: out('xl-edm.safetensors'), seed: 6, tiny, dtype: 'f32', extraTensors: sigmaTensors(0.002, 120) });
    const plain = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: out('xl-f32.safetensors'), seed: 6, tiny, dtype: 'f32' });
    await using edmModel = await loadModel(edm.path, { threads: 2 });
    assert.equal(edmModel.prediction, 'edm_v');
    assert.deepEqual(edmModel.noiseSchedule, { kind: 'edm', sigmaMin: Math.fround(0.002), sigmaMax: 120, fromFile: false });
    assert.deepEqual(edmModel.unusedTensors, []);
    assert.doesNotMatch(edmModel.warnings.join('\n'), /sigma/);
    assert.equal(model.noiseSchedule.kind, 'discrete');

    const r = await edmModel.generate(base);
    assert.equal(r.options.scheduler, 'exponential');  // the reference's default for EDM models
    assert.ok(r.latents![0].every(Number.isFinite));
    // The marker and loadModel's prediction agree (the file's range is the reference's 0.002..120).
    assert.ok(Math.abs(r.options.sigmas[0]! - 120) < 1e-4 && Math.abs(r.options.sigmas[1]! - 0.002) < 1e-9);
    await using forced = await loadModel(plain.path, { threads: 2, prediction: 'edm_v' });
    assert.equal(forced.noiseSchedule.kind, 'edm');
    assert.deepEqual((await forced.generate(base)).latents![0], r.latents![0]);
    // EDM against v on the same weights and sigmas: the UNet timesteps differ (0.25 ln sigma).
    await using vModel = await loadModel(plain.path, { threads: 2, prediction: 'v' });
    const sigmas = [...(await edmModel.generate({ ...base, returnLatents: false })).options.sigmas];
    const byV = await vModel.generate({ ...base, sigmas });
    const byEdm = await edmModel.generate({ ...base, sigmas });
    assert.deepEqual(byEdm.latents![0], r.latents![0]);
    assert.ok(maxAbs(byV.latents![0], r.latents![0]) > 1e-3);
    // A scheduler still applies, drawn from the EDM range (ays: its fixed SDXL levels, as the reference).
    const ays = await edmModel.generate({ ...base, scheduler: 'ays', steps: 10 });
    assert.deepEqual(ays.options.sigmas.slice(1, 4).map((x) => +x.toFixed(4)), [6.3184, 3.7682, 2.1811]);
    const karras = await edmModel.generate({ ...base, scheduler: 'karras' });
    assert.equal(karras.options.scheduler, 'karras');
    assert.ok(Math.abs(karras.options.sigmas[0]! - 120) < 1e-4);
    // A file with its own range is used as stored and said in the warnings; v_pred with it is still EDM.
    const other = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: out('xl-edm-80.safetensors'), seed: 6, tiny, dtype: 'f32',
      extraTensors: [...sigmaTensors(0.01, 80), { name: 'v_pred', shape: [0] }] });
    await using otherModel = await loadModel(other.path, { threads: 2 });
    assert.equal(otherModel.prediction, 'edm_v');
    assert.equal(otherModel.noiseSchedule.sigmaMax, 80);
    assert.match(otherModel.warnings.join('\n'), /EDM sigma range 0\.01 to 80 from the file/);
    assert.ok(Math.abs((await otherModel.generate(base)).options.sigmas[0]! - 80) < 1e-4);
  });

  test("a checkpoint's own alphas_cumprod (zero-terminal-SNR fine-tunes) replaces the standard noise table", async () => {
    // LDM's table in float64 (betas scaled-linear from 0.00085 to 0.012), as checkpoints store it.
    const standard = new Float64Array(1000);
    let p = 1;
    for (let i = 0; i < 1000; i++) {
      const b = Math.sqrt(0.00085) + (Math.sqrt(0.012) - Math.sqrt(0.00085)) * (i / 999);
      p *= 1 - b * b;
      standard[i] = p;
    }
    // Zero terminal SNR (Lin et al. 2023): sqrt(ac) shifted to end at 0 and rescaled to keep the
    // start, with diffusers' 2^-24 floor at the end.
    const s = standard.map(Math.sqrt);
    const [s0, sT] = [s[0]!, s[999]!];
    const ztsnr = new Float32Array(s.map((v) => Math.max(((v - sT) * s0 / (s0 - sT)) ** 2, 2 ** -24)));
    const withTable = (name: string, values: Float32Array) =>
      generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, name), seed: 6, tiny, dtype: 'f32', extraTensors: [{ name: 'alphas_cumprod', shape: [1000], values }] });
    const plain = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl-f32-b.safetensors'), seed: 6, tiny, dtype: 'f32' });
    await using plainModel = await loadModel(plain.path, { threads: 2, prediction: 'v' });
    await using stdModel = await loadModel((await withTable('xl-ac.safetensors', new Float32Array(standard))).path, { threads: 2, prediction: 'v' });
    await using zModel = await loadModel((await withTable('xl-ztsnr.safetensors', ztsnr)).path, { threads: 2, prediction: 'v' });
    assert.equal(plainModel.noiseSchedule.fromFile, false);
    assert.equal(stdModel.noiseSchedule.fromFile, true);
    assert.equal(zModel.noiseSchedule.fromFile, true);
    assert.deepEqual(zModel.unusedTensors, []);
    // sigma_max = sqrt((1 - ac) / ac) of the last entry: 14.61 for the standard table, 4096 here.
    assert.ok(Math.abs(stdModel.noiseSchedule.sigmaMax - plainModel.noiseSchedule.sigmaMax) < 1e-3);
    assert.ok(Math.abs(zModel.noiseSchedule.sigmaMax - Math.sqrt(2 ** 24 - 1)) < 1);
    const a = await plainModel.generate(base);
    const b = await stdModel.generate(base);
    const z = await zModel.generate(base);
    // The float64 table and the float one the engine computes differ in the last bits only.
    assert.ok(maxAbs(a.latents![0], b.latents![0]) < 1e-3);
    assert.ok(Math.abs(z.options.sigmas[0]! - zModel.noiseSchedule.sigmaMax) < 1);
    assert.ok(z.latents![0].every(Number.isFinite));
    assert.ok(maxAbs(a.latents![0], z.latents![0]) > 1e-2);
    // Its schedule, given back as custom sigmas (from 4096), runs the same.
    assert.deepEqual((await zModel.generate({ ...base, sigmas: z.options.sigmas })).latents![0], z.latents![0]);
    // A table that cannot be one is passed over, and said.
    const broken = new Float32Array(standard);
    broken[10] = 0;
    await using brokenModel = await loadModel((await withTable('xl-ac-bad.safetensors', broken)).path, { threads: 2 });
    assert.equal(brokenModel.noiseSchedule.fromFile, false);
    assert.match(brokenModel.warnings.join('\n'), /alphas_cumprod \[10\] is 0\.0+; expected a number in \(0, 1\]; the standard noise schedule is used/);
  });
});

describe('distilled SDXL and image to image on SDXL', () => {
  test('UNets that drop transformer layers or whole attentions block by block (SSD-1B, Vega) load from their shapes and run', async () => {
    // The tiny SDXL has 2 transformer layers per attention block: drop one layer of input block 4,
    // and output block 1's whole attention.
    const dropped = (n: string) =>
      n.includes('input_blocks.4.1.transformer_blocks.1.') || n.startsWith('model.diffusion_model.output_blocks.1.1.');
    const made = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl-distilled.safetensors'), seed: 6, tiny, dropTensors: dropped });
    await using distilled = await loadModel(made.path, { threads: 2 });
    assert.equal(distilled.architecture, 'sdxl');
    assert.deepEqual(distilled.unusedTensors, []);
    const r = await distilled.generate(base);
    assert.ok(r.latents![0].every(Number.isFinite));
    assert.notDeepEqual(r.latents![0], (await model.generate(base)).latents![0]);
  });

  test('img2img, inpainting and the hires fix run on SDXL', async () => {
    const init = { data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 5) % 256), width: 64, height: 64, channels: 3 as const };
    const i2i = await model.generate({ ...base, initImage: init, strength: 0.5 });
    assert.equal(i2i.options.mode, 'img2img');
    const mask = { data: new Uint8Array(64 * 64).map((_, i) => (i % 64 < 32 ? 255 : 0)), width: 64, height: 64, channels: 1 as const };
    const inpaint = await model.generate({ ...base, initImage: init, mask, strength: 0.8 });
    assert.equal(inpaint.options.mode, 'inpaint');
    const hires = await model.generate({ ...base, hires: { scale: 2, steps: 1, strength: 0.5 } });
    assert.deepEqual([hires.images[0].width, hires.images[0].height], [128, 128]);
    for (const r of [i2i, inpaint, hires]) assert.ok(r.latents![0].every(Number.isFinite));
  });
});

describe('SDXL inpainting and instruct-pix2pix UNets, BREAK', () => {
  test('9- and 8-channel SDXL UNets get the mask / image latents concatenated, as the SD1.x ones', async () => {
    const init = { data: new Uint8Array(64 * 64 * 3).map((_, i) => (i * 3) % 256), width: 64, height: 64, channels: 3 as const };
    const mask = { data: new Uint8Array(64 * 64).map((_, i) => (i < 2048 ? 255 : 0)), width: 64, height: 64, channels: 1 as const };
    const inpaintFile = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl-inpaint.safetensors'), seed: 6, tiny: { ...tiny, unetInChannels: 9 } });
    await using inpaint = await loadModel(inpaintFile.path, { threads: 2 });
    const r = await inpaint.generate({ ...base, initImage: init, mask, strength: 1 });
    assert.equal(r.options.mode, 'inpaint');
    assert.ok(r.latents![0].every(Number.isFinite));
    const editFile = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl-ip2p.safetensors'), seed: 6, tiny: { ...tiny, unetInChannels: 8 } });
    await using edit = await loadModel(editFile.path, { threads: 2 });
    const e = await edit.generate({ ...base, initImage: init, imageCfgScale: 1.5 });
    assert.equal(e.options.mode, 'edit');
    assert.equal(e.options.imageCfgScale, 1.5);
    assert.ok(e.latents![0].every(Number.isFinite));
  });

  test('BREAK starts a new chunk for both encoders', async () => {
    const e = await model.encodePrompt('a lighthouse BREAK at dusk');
    assert.equal(e.tokens, 154);
    assert.equal(e.dim, 64);
  });
});

describe('few-step SDXL (Turbo, Lightning, LCM)', () => {
  test('1-4 steps with cfgScale 1 and the lcm / tcd samplers with their default lcm schedule', async () => {
    const turbo = await model.generate({ ...base, steps: 1, cfgScale: 1, sampler: 'euler_a' });
    assert.equal(turbo.options.steps, 1);
    assert.ok(turbo.latents![0].every(Number.isFinite));
    for (const sampler of ['lcm', 'tcd'] as const) {
      const r = await model.generate({ ...base, steps: 4, cfgScale: 1, sampler });
      assert.equal(r.options.scheduler, 'lcm', sampler);
      assert.equal(r.options.sigmas.length, 5, sampler);
      assert.ok(r.latents![0].every(Number.isFinite), sampler);
    }
    // sgm_uniform, as Lightning checkpoints are run.
    const lightning = await model.generate({ ...base, steps: 4, cfgScale: 1, sampler: 'euler', scheduler: 'sgm_uniform' });
    assert.equal(lightning.options.scheduler, 'sgm_uniform');
    assert.ok(lightning.latents![0].every(Number.isFinite));
  });
});
