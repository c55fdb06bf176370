// ControlNet on tiny generated models: loading (LDM and diffusers names), what it changes, strength,
// the start/end window, several at once, dispose, files that do not fit or are broken, bad options,
// the Canny preprocessor, and img2img / hires / batch.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import sharp from 'sharp';
import {
  ControlNet,
  DisposedError,
  InvalidArgumentError,
  IoError,
  ModelFormatError,
  UnsupportedModelError,
  cannyEdges,
  loadControlNet,
  loadModel,
  readParameters,
  type GenerateOptions,
  type Model,
} from '../lib/index.ts';
import { packageRoot } from '../lib/binding.ts';
import { decodePNG } from '../lib/image.ts';
import { writeControlNet } from './fixtures/controlnet.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-controlnet-'));
// A VAE of factor 8 (the hint block's), as real models have.
const tiny = { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 };
let model: Model;
let ldm: ControlNet;
let hf: ControlNet;
let other: ControlNet;  // same architecture, other weights
let checkpoint: string;
const file = (name: string) => path.join(work, name);
const base = { prompt: 'a red ball', width: 64, height: 64, steps: 4, seed: 5, sampler: 'euler' as const, returnLatents: true };
// A 64x64 control image: a white square on black.
const square = new Uint8Array(64 * 64 * 3);
for (let y = 16; y < 48; y++) for (let x = 16; x < 48; x++) square.fill(255, (y * 64 + x) * 3, (y * 64 + x) * 3 + 3);
const control = { data: square, width: 64, height: 64, channels: 3 as const };

before(async () => {
  const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: file('sd1.safetensors'), seed: 11, tiny });
  checkpoint = made.path;
  model = await loadModel(checkpoint, { threads: 2 });
  await writeControlNet({ out: file('cn-ldm.safetensors'), tiny, seed: 3 });
  await writeControlNet({ out: file('cn-hf.safetensors'), tiny, seed: 3, layout: 'diffusers' });
  await writeControlNet({ out: file('cn-other.safetensors'), tiny, seed: 4 });
  ldm = await loadControlNet(file('cn-ldm.safetensors'));
  hf = await loadControlNet(file('cn-hf.safetensors'));
  other = await loadControlNet(file('cn-other.safetensors'));
  fs.writeFileSync(file('control.png'), await sharp(Buffer.from(square), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer());
  await writeControlNet({ out: file('cn-shape.safetensors'), tiny, reshape: { 'zero_convs.2.0.weight': [32, 16, 1, 1] } });
});
after(async () => {
  await Promise.all([model, ldm, hf, other].map((x) => x?.dispose()));
  fs.rmSync(work, { recursive: true, force: true });
});

function rel(a: Float32Array, b: Float32Array): number {
  let d = 0, n = 0;
  for (let i = 0; i < a.length; i++) { d += (a[i] - b[i]) ** 2; n += b[i] ** 2; }
  return Math.sqrt(d / n);
}
async function latent(options: Partial<GenerateOptions> = {}): Promise<Float32Array> {
  const r = await model.generate({ ...base, ...options });
  return r.latents![0];
}

describe('ControlNet', () => {
  test('loads both namings; the same weights give the same image; it changes the output', async () => {
    assert.equal(ldm.path, file('cn-ldm.safetensors'));
    assert.deepEqual(ldm.unusedTensors, []);
    assert.deepEqual(ldm.warnings, []);
    assert.deepEqual(hf.unusedTensors, []);
    assert.ok(ldm.weightBytes.copied + ldm.weightBytes.mapped > 0);
    const none = await latent();
    const a = await latent({ controlNets: [{ model: ldm, image: control }] });
    const b = await latent({ controlNets: [{ model: hf, image: control }] });
    assert.deepEqual(a, b, 'LDM and diffusers names of the same weights');
    assert.ok(rel(a, none) > 0.01, `the ControlNet moved the latent by ${rel(a, none)}`);
    // The control image matters.
    const dark = { data: new Uint8Array(64 * 64 * 3), width: 64, height: 64, channels: 3 as const };
    assert.ok(rel(await latent({ controlNets: [{ model: ldm, image: dark }] }), a) > 1e-3);
  });

  test('strength 0 is no ControlNet, exactly; strength scales the effect; defaults reported', async () => {
    const none = await latent();
    assert.deepEqual(await latent({ controlNets: [{ model: ldm, image: control, strength: 0 }] }), none);
    const r = await model.generate({ ...base, controlNets: [{ model: ldm, image: control }] });
    assert.deepEqual(r.options.controlNets, [{ path: ldm.path, strength: 0.9, start: 0, end: 1 }]);
    const weak = await latent({ controlNets: [{ model: ldm, image: control, strength: 0.2 }] });
    const strong = await latent({ controlNets: [{ model: ldm, image: control, strength: 2 }] });
    assert.ok(rel(weak, none) < rel(strong, none), `${rel(weak, none)} < ${rel(strong, none)}`);
    // The A1111 parameters name it.
    const params = (await readParameters(r.images[0].toPNG()))?.text;
    assert.match(params ?? '', /ControlNet 0: "Module: none, Model: cn-ldm, Weight: 0.9, Guidance Start: 0, Guidance End: 1"/);
  });

  test('start / end: the fraction of the steps it applies in', async () => {
    const none = await latent();
    const all = await latent({ controlNets: [{ model: ldm, image: control }] });
    // 4 steps: [0.9, 1) rounds to steps 4..4, none of them.
    assert.deepEqual(await latent({ controlNets: [{ model: ldm, image: control, start: 0.9 }] }), none);
    const late = await latent({ controlNets: [{ model: ldm, image: control, start: 0.5 }] });
    const early = await latent({ controlNets: [{ model: ldm, image: control, end: 0.5 }] });
    for (const x of [late, early]) {
      assert.ok(rel(x, none) > 1e-4 && rel(x, all) > 1e-4, 'a partial window differs from none and from all');
    }
    const r = await model.generate({ ...base, controlNets: [{ model: ldm, image: control, start: 0.25, end: 0.75 }] });
    assert.deepEqual(r.options.controlNets?.map((c) => [c.start, c.end]), [[0.25, 0.75]]);
  });

  test('several ControlNets: residuals summed (two halves of one are the whole, exactly)', async () => {
    const whole = await latent({ controlNets: [{ model: ldm, image: control, strength: 1 }] });
    const halves = await latent({ controlNets: [{ model: ldm, image: control, strength: 0.5 }, { model: hf, image: control, strength: 0.5 }] });
    assert.deepEqual(halves, whole);
    const a = await latent({ controlNets: [{ model: ldm, image: control }] });
    const b = await latent({ controlNets: [{ model: other, image: control }] });
    const both = await latent({ controlNets: [{ model: ldm, image: control }, { model: other, image: control }] });
    assert.ok(rel(both, a) > 1e-3 && rel(both, b) > 1e-3);
    const r = await model.generate({ ...base, controlNets: [{ model: ldm, image: control }, { model: other, image: control, strength: 0.5 }] });
    assert.equal(r.options.controlNets?.length, 2);
    assert.match((await readParameters(r.images[0].toPNG()))?.text ?? '', /ControlNet 1: "Module: none, Model: cn-other, Weight: 0.5/);
  });

  test('img2img, hires, batches and a VAE of another factor', async () => {
    const init = await sharp(Buffer.from(square), { raw: { width: 64, height: 64, channels: 3 } }).png().toBuffer();
    const i0 = await latent({ initImage: init, strength: 0.6 });
    const i1 = await latent({ initImage: init, strength: 0.6, controlNets: [{ model: ldm, image: control }] });
    assert.ok(rel(i1, i0) > 1e-3);
    // The control image is resized to the hires size for the second pass.
    const hires = { scale: 2, steps: 2, strength: 0.5 };
    const h0 = await model.generate({ ...base, hires });
    const h1 = await model.generate({ ...base, hires, controlNets: [{ model: ldm, image: control }] });
    assert.equal(h1.images[0].width, 128);
    assert.ok(rel(h1.latents![0], h0.latents![0]) > 1e-3);
    const batch = await model.generate({ ...base, batchSize: 2, controlNets: [{ model: ldm, image: control }] });
    const single = await model.generate({ ...base, seed: base.seed + 1, controlNets: [{ model: ldm, image: control }] });
    assert.deepEqual(batch.latents![1], single.latents![0]);
    // A control image of another size is fitted like initImage.
    const big = await sharp(Buffer.from(square), { raw: { width: 64, height: 64, channels: 3 } }).resize(128, 128, { kernel: 'nearest' }).png().toBuffer();
    const fitted = await latent({ controlNets: [{ model: ldm, image: big }] });
    assert.ok(rel(fitted, await latent()) > 1e-3);
    // The default tiny VAE halves once: the hint is taken at 8x the latent (the image resized).
    const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: file('sd1-f2.safetensors'), seed: 11 });
    await using m2 = await loadModel(made.path, { threads: 2 });
    const n2 = await m2.generate({ ...base, steps: 2 });
    const c2 = await m2.generate({ ...base, steps: 2, controlNets: [{ model: ldm, image: control }] });
    assert.ok(rel(c2.latents![0], n2.latents![0]) > 1e-3);
  });

  test('dispose: a disposed ControlNet is refused; others and the model go on', async () => {
    const extra = await loadControlNet(file('cn-ldm.safetensors'));
    await using _ = extra;
    // Disposed while a generation runs with it: that generation keeps it to the end.
    let disposedDuring = false;
    const running = await model.generate({
      ...base, controlNets: [{ model: extra, image: control }],
      onProgress: () => {
        if (!disposedDuring) void extra.dispose();
        disposedDuring = true;
      },
    });
    assert.ok(disposedDuring && extra.disposed);
    assert.equal(running.images.length, 1);
    await extra.dispose();  // idempotent
    await assert.rejects(model.generate({ ...base, controlNets: [{ model: extra, image: control }] }), (e: unknown) =>
      e instanceof DisposedError && /controlNets\[0\]\.model: the ControlNet was disposed/.test(e.message));
    assert.equal((await model.generate({ ...base, controlNets: [{ model: ldm, image: control }] })).images.length, 1);
  });

  test('a ControlNet that does not fit the model: typed error at generate() naming both', async () => {
    await writeControlNet({ out: file('cn-wide.safetensors'), tiny: { ...tiny, modelChannels: 64 } });
    await using wide = await loadControlNet(file('cn-wide.safetensors'));
    await assert.rejects(model.generate({ ...base, controlNets: [{ model: wide, image: control }] }), (e: unknown) =>
      e instanceof InvalidArgumentError && /controlNets\[0\].*cn-wide\.safetensors.*channels are 64 x \[1, 2\], the UNet's 32 x \[1, 2\]/.test(e.message));
    await writeControlNet({ out: file('cn-ctx.safetensors'), tiny: { ...tiny, textWidth: 64 } });
    await using ctx = await loadControlNet(file('cn-ctx.safetensors'));
    await assert.rejects(model.generate({ ...base, controlNets: [{ model: ctx, image: control }] }), (e: unknown) =>
      e instanceof InvalidArgumentError && /context width is 64, the UNet's 32/.test(e.message));
  });

  test('broken files: wrong shape, missing tensor, truncated, not a ControlNet', async () => {
    await writeControlNet({ out: file('cn-shape.safetensors'), tiny, reshape: { 'zero_convs.2.0.weight': [32, 16, 1, 1] } });
    await assert.rejects(loadControlNet(file('cn-shape.safetensors')), (e: unknown) =>
      e instanceof ModelFormatError && /zero_convs\.2\.0\.weight/.test(e.message));
    await writeControlNet({ out: file('cn-hint.safetensors'), tiny, reshape: { 'input_hint_block.6.weight': [32, 16, 3, 3] } });
    await assert.rejects(loadControlNet(file('cn-hint.safetensors')), (e: unknown) =>
      e instanceof ModelFormatError && /input_hint_block\.6\.weight/.test(e.message));
    await writeControlNet({ out: file('cn-missing.safetensors'), tiny, omit: ['middle_block_out.0.weight'] });
    await assert.rejects(loadControlNet(file('cn-missing.safetensors')), (e: unknown) =>
      e instanceof ModelFormatError && /middle_block_out\.0\.weight/.test(e.message));
    const bytes = fs.readFileSync(file('cn-ldm.safetensors'));
    fs.writeFileSync(file('cn-truncated.safetensors'), bytes.subarray(0, Math.floor(bytes.length / 2)));
    await assert.rejects(loadControlNet(file('cn-truncated.safetensors')), ModelFormatError);
    fs.writeFileSync(file('cn-garbage.safetensors'), Buffer.from('not a safetensors file at all'));
    await assert.rejects(loadControlNet(file('cn-garbage.safetensors')), ModelFormatError);
    await assert.rejects(loadControlNet(checkpoint), (e: unknown) =>
      e instanceof UnsupportedModelError && /is not a ControlNet.*checkpoint \(load it with loadModel\)/.test(e.message));
  });

  test('loadModel on a ControlNet file says what it is', async () => {
    await assert.rejects(loadModel(file('cn-ldm.safetensors')), (e: unknown) =>
      e instanceof UnsupportedModelError && /is a ControlNet.*loadControlNet\(\)/.test(e.message));
  });

  test('a prompt longer than the negative one (passes run one by one, each with its own context)', async () => {
    const prompt = Array.from({ length: 90 }, (_, i) => `word${i}`).join(' ');
    const none = await latent({ prompt });
    const withNet = await latent({ prompt, controlNets: [{ model: ldm, image: control }] });
    assert.ok(rel(withNet, none) > 1e-3);
    assert.deepEqual(await latent({ prompt, controlNets: [{ model: ldm, image: control, strength: 0 }] }), none);
  });

  test('SDXL-style ControlNets (label embedding): both namings', async () => {
    const made = await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: file('sdxl.safetensors'), seed: 2, tiny });
    await using xl = await loadModel(made.path, { threads: 2 });
    await writeControlNet({ out: file('cn-xl.safetensors'), arch: 'sdxl', tiny });
    await writeControlNet({ out: file('cn-xl-hf.safetensors'), arch: 'sdxl', tiny, layout: 'diffusers' });
    await using a = await loadControlNet(file('cn-xl.safetensors'));
    await using b = await loadControlNet(file('cn-xl-hf.safetensors'));
    const opts = { ...base, steps: 2 };
    const none = (await xl.generate(opts)).latents![0];
    const la = (await xl.generate({ ...opts, controlNets: [{ model: a, image: control }] })).latents![0];
    const lb = (await xl.generate({ ...opts, controlNets: [{ model: b, image: control }] })).latents![0];
    assert.deepEqual(la, lb);
    assert.ok(rel(la, none) > 1e-3);
    // An SD1 ControlNet does not fit an SDXL UNet.
    await assert.rejects(xl.generate({ ...opts, controlNets: [{ model: ldm, image: control }] }), (e: unknown) =>
      e instanceof InvalidArgumentError && /controlNets\[0\].*does not fit this model's UNet/.test(e.message));
  });

  test('SD2-style ControlNets (linear projections, fixed head width)', async () => {
    const made = await generateCheckpoint({ arch: 'sd2', format: 'safetensors', out: file('sd2.safetensors'), seed: 2, tiny });
    await using m = await loadModel(made.path, { threads: 2 });
    await writeControlNet({ out: file('cn-sd2.safetensors'), arch: 'sd2', tiny, layout: 'diffusers' });
    await using c = await loadControlNet(file('cn-sd2.safetensors'));
    const opts = { ...base, steps: 2 };
    const none = (await m.generate(opts)).latents![0];
    const withNet = (await m.generate({ ...opts, controlNets: [{ model: c, image: control }] })).latents![0];
    assert.ok(rel(withNet, none) > 1e-3);
  });

  test('bad options are typed errors naming the option', async () => {
    const bad = async (controlNets: unknown, pattern: RegExp) =>
      assert.rejects(model.generate({ ...base, controlNets } as unknown as GenerateOptions), (e: unknown) =>
        e instanceof InvalidArgumentError && pattern.test(e.message));
    await bad({ model: ldm, image: control }, /controlNets must be an array/);
    await bad([{ model: {}, image: control }], /controlNets\[0\]\.model must be a ControlNet from loadControlNet\(\)/);
    await bad([{ model: ldm }], /controlNets\[0\]\.image must be a file path/);
    await bad([{ model: ldm, image: control, strength: -1 }], /controlNets\[0\]\.strength/);
    await bad([{ model: ldm, image: control, strength: 11 }], /controlNets\[0\]\.strength/);
    await bad([{ model: ldm, image: control, start: 0.6, end: 0.4 }], /controlNets\[0\]\.start must be below controlNets\[0\]\.end/);
    await bad([{ model: ldm, image: control, end: 2 }], /controlNets\[0\]\.end/);
    await bad([{ model: ldm, image: control, weight: 1 }], /controlNets\[0\].*weight/);
    await bad([{ model: ldm, image: control, preprocess: 'sobel' }], /controlNets\[0\]\.preprocess must be 'canny'/);
    await bad([{ model: ldm, image: control, preprocess: { type: 'canny', highThreshold: 2 } }], /controlNets\[0\]\.preprocess\.highThreshold/);
    await assert.rejects(model.generate({ ...base, controlNets: [{ model: ldm, image: 'no-such-file.png' }] }), (e: unknown) =>
      e instanceof IoError && /controlNets\[0\]\.image: cannot open no-such-file\.png/.test(e.message));
    await assert.rejects(loadControlNet(file('cn-ldm.safetensors'), { weightType: 'q9' } as never), InvalidArgumentError);
    await assert.rejects(loadControlNet(file('cn-ldm.safetensors'), { colour: 1 } as never), InvalidArgumentError);
    await assert.rejects(loadControlNet(''), InvalidArgumentError);
  });

  test('q8_0 ControlNet weights run and stay close to f16', async () => {
    await using q = await loadControlNet(file('cn-ldm.safetensors'), { weightType: 'q8_0' });
    const a = await latent({ controlNets: [{ model: ldm, image: control }] });
    const b = await latent({ controlNets: [{ model: q, image: control }] });
    assert.ok(rel(b, a) < 0.05, `q8_0 vs f16: ${rel(b, a)}`);
  });
});

describe('Canny preprocessor', () => {
  test('edges where the image has them, nothing elsewhere; inverse; thresholds', async () => {
    const edges = await cannyEdges(control);
    assert.equal(edges.channels, 3);
    const at = (e: Uint8Array, x: number, y: number) => e[(y * 64 + x) * 3];
    let onEdge = 0, off = 0;
    for (let y = 0; y < 64; y++) {
      for (let x = 0; x < 64; x++) {
        const v = at(edges.data, x, y);
        assert.ok(v === 0 || v === 255, `binary edge map (${v})`);
        const dist = Math.min(Math.abs(x - 15.5), Math.abs(x - 47.5), Math.abs(y - 15.5), Math.abs(y - 47.5));
        const inside = x >= 12 && x <= 51 && y >= 12 && y <= 51;
        if (v === 255) {
          assert.ok(inside && dist <= 3.5, `edge pixel at ${x},${y} lies on the square's border`);
          onEdge++;
        } else off++;
      }
    }
    assert.ok(onEdge > 60, `edges found: ${onEdge}`);
    assert.ok(off > 3000);
    // The middle of the square and of the background are flat.
    assert.equal(at(edges.data, 32, 32), 0);
    assert.equal(at(edges.data, 5, 5), 0);
    const inverse = await cannyEdges(control, { inverse: true });
    for (let i = 0; i < edges.data.length; i++) assert.equal(inverse.data[i], 255 - edges.data[i]);
    // A threshold above every edge keeps only the strongest ones (the maximum itself).
    const strict = await cannyEdges(control, { highThreshold: 1 });
    assert.ok(strict.data.filter((v) => v === 255).length <= edges.data.filter((v) => v === 255).length);
    await assert.rejects(cannyEdges(control, { weak: -0.5 }), InvalidArgumentError);
  });

  test("generate's preprocess: 'canny' is the edge map as the control image", async () => {
    const edges = await cannyEdges(control);
    const viaEdges = await latent({ controlNets: [{ model: ldm, image: { data: edges.data, width: 64, height: 64, channels: 3 } }] });
    const viaCanny = await latent({ controlNets: [{ model: ldm, image: control, preprocess: 'canny' }] });
    assert.deepEqual(viaCanny, viaEdges);
    const r = await model.generate({ ...base, controlNets: [{ model: ldm, image: control, preprocess: { type: 'canny', highThreshold: 0.3 } }] });
    assert.deepEqual(r.options.controlNets?.[0]?.preprocess, { type: 'canny', highThreshold: 0.3, lowThreshold: 0.08, weak: 0.8, strong: 1, inverse: false });
    assert.match((await readParameters(r.images[0].toPNG()))?.text ?? '', /ControlNet 0: "Module: canny/);
  });
});

describe('command line', () => {
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'lib', 'cli', 'main.ts'), 'generate', ...args], { encoding: 'utf8' });
  const common = () => ['-m', checkpoint, '-p', 'a red ball', '-W', '64', '-H', '64', '--steps', '2', '-s', '5', '--sampler', 'euler', '-t', '2'];

  test('--control-net, --control-image, --control-strength, --canny: the API numbers', async () => {
    const png = file('control.png');
    const out = file('cli-cn.png');
    const r = cli(...common(), '-o', out, '--control-net', file('cn-ldm.safetensors'), '--control-image', png, '--control-strength', '0.7', '--canny');
    assert.equal(r.status, 0, r.stderr);
    const api = await model.generate({ ...base, steps: 2, returnLatents: false, controlNets: [{ model: ldm, image: png, strength: 0.7, preprocess: 'canny' }] });
    assert.deepEqual(decodePNG(fs.readFileSync(out)).data, api.images[0].data);
    assert.match((await readParameters(out))?.text ?? '', /ControlNet 0: "Module: canny, Model: cn-ldm, Weight: 0.7/);
  });

  test('errors use the flag names', async () => {
    const png = file('control.png');
    const missing = cli(...common(), '-o', file('x.png'), '--control-image', png);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /--control-image must be given with --control-net FILE/);
    const noImage = cli(...common(), '-o', file('x.png'), '--control-net', file('cn-ldm.safetensors'));
    assert.match(noImage.stderr, /--control-image must be a control image for --control-net/);
    const strength = cli(...common(), '-o', file('x.png'), '--control-net', file('cn-ldm.safetensors'), '--control-image', png, '--control-strength', '20');
    assert.notEqual(strength.status, 0);
    assert.match(strength.stderr, /--control-strength must be/);
    const window = cli(...common(), '-o', file('x.png'), '--control-net', file('cn-ldm.safetensors'), '--control-image', png, '--control-start', '0.8', '--control-end', '0.2');
    assert.match(window.stderr, /--control-start must be below --control-end/);
    const broken = cli(...common(), '-o', file('x.png'), '--control-net', file('cn-shape.safetensors'), '--control-image', png);
    assert.match(broken.stderr, /ModelFormatError: .*zero_convs\.2\.0\.weight/);
    const gone = cli(...common(), '-o', file('x.png'), '--control-net', file('nope.safetensors'), '--control-image', png);
    assert.match(gone.stderr, /--control-net: cannot open .*nope\.safetensors: no such file/);
  });
});
