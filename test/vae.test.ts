// TAESD, a standalone VAE file and tiled decoding / encoding on tiny generated files:
// loadModel({ taesd, vae }), decodeLatents / encodeImage with decoder 'taesd' and vaeTiling,
// typed errors for bad inputs, abort during a tiled decode.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AbortError, InvalidArgumentError, IoError, UnsupportedModelError, loadModel, type Latent } from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';
import { writeTaesd } from './fixtures/taesd.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-vae-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

let sd1: string, vaeFile: string, taesd: string;
before(async () => {
  sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 3 })).path;
  vaeFile = (await generateCheckpoint({ arch: 'sd1', format: 'vae', out: path.join(work, 'vae.safetensors'), seed: 9 })).path;
  taesd = path.join(work, 'taesd.safetensors');
  await writeTaesd({ out: taesd, seed: 4 });
});

function latent(w: number, h: number, seed = 1): Latent {
  const data = new Float32Array(4 * w * h);
  let s = seed;
  for (let i = 0; i < data.length; i++) {
    s = (s * 1103515245 + 12345) >>> 0;
    data[i] = ((s >>> 8) / 0x1000000 - 0.5) * 2;
  }
  return { data, width: w, height: h, channels: 4 };
}

function psnr(a: Uint8Array, b: Uint8Array): number {
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i]! - b[i]!) ** 2;
  return se === 0 ? 99 : 10 * Math.log10((255 * 255) / (se / a.length));
}

describe('TAESD', () => {
  test('loads with the model and decodes and encodes', async () => {
    await using model = await loadModel(sd1, { taesd });
    const [img] = await model.decodeLatents(latent(8, 8), { decoder: 'taesd' });
    assert.equal(img!.width, 64);
    assert.equal(img!.height, 64);
    assert.equal(img!.data.length, 64 * 64 * 3);
    const [vae] = await model.decodeLatents(latent(8, 8));
    assert.notDeepEqual(img!.data, vae!.data);
    const z = await model.encodeImage({ data: img!.data, width: 64, height: 64, channels: 3 }, { decoder: 'taesd', seed: 5 });
    assert.deepEqual([z.width, z.height, z.channels], [8, 8, 4]);
    assert.ok(z.data.every(Number.isFinite));
    // No posterior: the seed does not matter.
    const again = await model.encodeImage({ data: img!.data, width: 64, height: 64, channels: 3 }, { decoder: 'taesd' });
    assert.deepEqual(again.data, z.data);
  });

  test("decoder 'taesd' without a TAESD is an InvalidArgumentError naming the option", async () => {
    await using model = await loadModel(sd1);
    await assert.rejects(model.decodeLatents(latent(8, 8), { decoder: 'taesd' }), (e: unknown) => e instanceof InvalidArgumentError && /taesd/.test((e as Error).message));
    await assert.rejects(model.decodeLatents(latent(8, 8), { decoder: 'nope' as 'vae' }), InvalidArgumentError);
  });

  test('a file that is not a TAESD, a missing file, a bad option', async () => {
    await assert.rejects(loadModel(sd1, { taesd: vaeFile }), (e: unknown) => e instanceof UnsupportedModelError && /not a TAESD/.test((e as Error).message));
    await assert.rejects(loadModel(sd1, { taesd: path.join(work, 'missing.safetensors') }), IoError);
    await assert.rejects(loadModel(sd1, { taesd: '' }), InvalidArgumentError);
    await assert.rejects(loadModel(taesd), UnsupportedModelError);
    const broken = path.join(work, 'broken.safetensors');
    fs.writeFileSync(broken, fs.readFileSync(taesd).subarray(0, 2000));
    await assert.rejects(loadModel(sd1, { taesd: broken }));
  });
});

describe('standalone VAE', () => {
  test('replaces the checkpoint VAE', async () => {
    await using own = await loadModel(sd1);
    await using other = await loadModel(sd1, { vae: vaeFile });
    const z = latent(8, 8);
    const [a] = await own.decodeLatents(z);
    const [b] = await other.decodeLatents(z);
    assert.equal(b!.data.length, a!.data.length);
    assert.notDeepEqual(a!.data, b!.data);
    await assert.rejects(loadModel(sd1, { vae: taesd }), UnsupportedModelError);
    await assert.rejects(loadModel(sd1, { vae: 7 as unknown as string }), InvalidArgumentError);
  });
});

describe('vaeTiling', () => {
  test('tiled decode is close to the untiled one, with the same shape', async () => {
    await using model = await loadModel(sd1, { taesd });
    const z = latent(24, 16, 3);
    for (const decoder of ['vae', 'taesd'] as const) {
      const [whole] = await model.decodeLatents(z, { decoder });
      const [tiled] = await model.decodeLatents(z, { decoder, vaeTiling: { tileSize: 8, overlap: 0.5 } });
      assert.equal(tiled!.data.length, whole!.data.length);
      assert.notDeepEqual(tiled!.data, whole!.data, decoder);
      const p = psnr(tiled!.data, whole!.data);
      assert.ok(p > 15, `${decoder}: ${p} dB`);
      const [defaults] = await model.decodeLatents(z, { decoder, vaeTiling: true });  // 32: one tile here
      assert.deepEqual(defaults!.data, whole!.data);
    }
    const image = { data: new Uint8Array(128 * 128 * 3).map((_, i) => (i * 7) % 256), width: 128, height: 128, channels: 3 as const };
    // (The tiny fixture's VAE has two levels: x2, not x8.)
    const whole = await model.encodeImage(image);
    const enc = await model.encodeImage(image, { vaeTiling: { tileSize: 4 } });
    assert.deepEqual([enc.width, enc.height, enc.channels], [whole.width, whole.height, 4]);
    assert.notDeepEqual(enc.data, whole.data);
    const t = await model.encodeImage(image, { decoder: 'taesd', vaeTiling: { tileSize: 4 } });
    assert.deepEqual([t.width, t.height, t.channels], [16, 16, 4]);
  });

  test('bad tileSize / overlap are InvalidArgumentErrors naming the option', async () => {
    await using model = await loadModel(sd1);
    for (const [tiling, name] of [
      [{ tileSize: 2 }, 'vaeTiling.tileSize'], [{ tileSize: 8.5 }, 'vaeTiling.tileSize'], [{ tileSize: 1e6 }, 'vaeTiling.tileSize'],
      [{ overlap: 0.6 }, 'vaeTiling.overlap'], [{ overlap: -1 }, 'vaeTiling.overlap'], [{ other: 1 }, 'vaeTiling'],
    ] as const) {
      await assert.rejects(model.decodeLatents(latent(8, 8), { vaeTiling: tiling as object }), (e: unknown) => e instanceof InvalidArgumentError && (e as Error).message.includes(name), JSON.stringify(tiling));
    }
  });

  test('an AbortSignal stops a tiled decode with AbortError', async () => {
    await using model = await loadModel(sd1);
    const controller = new AbortController();
    const run = model.decodeLatents(latent(64, 64), { vaeTiling: { tileSize: 8 }, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('stop')), 50);
    await assert.rejects(run, AbortError);
  });

  test('an AbortSignal stops an encode (whole, tiled, and generate()\'s init image) with AbortError', async () => {
    await using model = await loadModel(sd1);
    const side = 1024;
    const image = { data: new Uint8Array(side * side * 3).map((_, i) => (i * 13) % 256), width: side, height: side, channels: 3 as const };
    for (const vaeTiling of [false, { tileSize: 8 }]) {
      const controller = new AbortController();
      const t0 = Date.now();
      const run = model.encodeImage(image, { seed: 1, vaeTiling, signal: controller.signal });
      setTimeout(() => controller.abort(new Error('stop')), 30);
      await assert.rejects(run, (e: unknown) => e instanceof AbortError && (e as Error).cause instanceof Error, JSON.stringify(vaeTiling));
      // A whole 1024x1024 encode of this model takes minutes on 2 threads: the abort lands inside it.
      const aborted = Date.now() - t0;
      assert.ok(aborted < 10_000, `aborted after ${aborted} ms`);
    }
    const controller = new AbortController();
    const run = model.generate({ prompt: 'x', initImage: image, strength: 0.5, steps: 2, signal: controller.signal });
    setTimeout(() => controller.abort(new Error('stop')), 30);
    await assert.rejects(run, AbortError);
    assert.equal((await model.decodeLatents(latent(8, 8))).length, 1, 'the model works after the aborts');
  });
});
