// loadModel and the Model object on tiny generated checkpoints: loading in every format and
// weight type, tokenize, encodePrompt, progress, abort, queueing and dispose.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  AbortError,
  DisposedError,
  InvalidArgumentError,
  IoError,
  UnsupportedModelError,
  loadModel,
  type Model,
} from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-model-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

let sd1: string;
before(async () => {
  sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 3 })).path;
});

describe('loadModel', () => {
  test('loads every format and reports architecture, device and memory', async () => {
    for (const format of ['safetensors', 'ckpt', 'gguf', 'diffusers'] as const) {
      const made = await generateCheckpoint({ arch: 'sd1', format, out: path.join(work, `load-${format}${format === 'diffusers' ? '' : '.' + format}`), seed: 3 });
      const model = await loadModel(made.path, { threads: 2 });
      try {
        assert.equal(model.architecture, 'sd1');
        assert.equal(model.device, 'CPU');
        assert.ok(model.memory().weights > 0);
      } finally {
        await model.dispose();
      }
    }
  });

  test('every format gives the same conditioning (same seed, same weights)', async () => {
    // (.ckpt is left out: it has no metadata, and a tiny encoder's head count cannot be told from shapes.)
    const outputs: Float32Array[] = [];
    for (const format of ['safetensors', 'gguf', 'diffusers'] as const) {
      const made = await generateCheckpoint({ arch: 'sd1', format, out: path.join(work, `same-${format}${format === 'diffusers' ? '' : '.' + format}`), seed: 5, dtype: 'f32' });
      await using model = await loadModel(made.path);
      outputs.push((await model.encodePrompt('a photo of a cat')).data);
    }
    for (const o of outputs.slice(1)) assert.deepEqual(o, outputs[0]);
  });

  test('weightType converts on load (q8_0, q4_0, f16) and still encodes', async () => {
    for (const weightType of ['q8_0', 'q4_0', 'f16', 'f32'] as const) {
      await using model = await loadModel(sd1, { weightType });
      const e = await model.encodePrompt('a cat');
      assert.ok(e.data.every(Number.isFinite), weightType);
    }
  });

  test('reports progress from 0 to 1, in order', async () => {
    const seen: number[] = [];
    await using model = await loadModel(sd1, { onProgress: ({ fraction }) => seen.push(fraction) });
    assert.ok(model);
    assert.ok(seen.length >= 2, `${seen.length} progress events`);
    for (let i = 1; i < seen.length; i++) assert.ok(seen[i] >= seen[i - 1]);
    assert.equal(seen.at(-1), 1);
  });

  test('an already aborted signal rejects with AbortError carrying the reason', async () => {
    const ac = new AbortController();
    ac.abort(new Error('user cancelled'));
    await assert.rejects(loadModel(sd1, { signal: ac.signal }), (e: unknown) => {
      assert.ok(e instanceof AbortError);
      assert.equal((e.cause as Error).message, 'user cancelled');
      return true;
    });
  });

  test('aborting while loading rejects with AbortError', async () => {
    const ac = new AbortController();
    const p = loadModel(sd1, { signal: ac.signal, onProgress: () => ac.abort() });
    await assert.rejects(p, AbortError);
  });

  test('a throwing onProgress aborts the load and its error is what rejects', async () => {
    await assert.rejects(
      loadModel(sd1, {
        onProgress: () => {
          throw new RangeError('from the callback');
        },
      }),
      RangeError,
    );
  });

  test('bad options are InvalidArgumentErrors naming the option', async () => {
    await assert.rejects(loadModel(sd1, { threads: 0 }), /threads must be an integer from 1 to 1024; received 0/);
    await assert.rejects(loadModel(sd1, { weightType: 'q9_9' as never }), (e: unknown) => e instanceof InvalidArgumentError && /weightType must be one of/.test(e.message));
    await assert.rejects(loadModel(sd1, { backend: 'NoSuchGPU0' }), (e: unknown) => e instanceof InvalidArgumentError && /backend must be/.test(e.message) && /CPU/.test(e.message));
    await assert.rejects(loadModel(sd1, { onProgress: 5 as never }), InvalidArgumentError);
    await assert.rejects(loadModel(sd1, 'x' as never), InvalidArgumentError);
    await assert.rejects(loadModel(path.join(work, 'absent.safetensors')), IoError);
  });

  test('a file with only a VAE cannot generate: UnsupportedModelError says what is missing', async () => {
    const vae = await generateCheckpoint({ arch: 'sd1', format: 'vae', out: path.join(work, 'only-vae.safetensors') });
    await assert.rejects(loadModel(vae.path), (e: unknown) => e instanceof UnsupportedModelError && /the model has no UNet and text encoder$/.test(e.message));
  });
});

describe('Model', () => {
  let model: Model;
  before(async () => {
    model = await loadModel(sd1);
  });
  after(() => model.dispose());

  test('tokenize gives CLIP ids in 77-token chunks', () => {
    const ids = model.tokenize('a photo of a cat');
    assert.deepEqual(ids.slice(0, 7), [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert.equal(ids.length, 77);
    assert.equal(model.tokenize('word '.repeat(100)).length, 154);
    assert.throws(() => model.tokenize(3 as never), InvalidArgumentError);
  });

  test('encodePrompt: deterministic, prompt-dependent, emphasis changes the output', async () => {
    const a = await model.encodePrompt('a photo of a cat');
    const b = await model.encodePrompt('a photo of a cat');
    const c = await model.encodePrompt('a photo of a dog');
    const d = await model.encodePrompt('a photo of a (cat:1.5)');
    assert.equal(a.tokens, 77);
    assert.equal(a.dim, 32);
    assert.equal(a.data.length, 77 * 32);
    assert.deepEqual(a.data, b.data);
    assert.notDeepEqual(a.data, c.data);
    assert.notDeepEqual(a.data, d.data);
    assert.ok(a.data.every(Number.isFinite));
    const long = await model.encodePrompt('word '.repeat(100));
    assert.equal(long.tokens, 154);
  });

  test('clipSkip selects an earlier layer; bad values are rejected', async () => {
    const last = await model.encodePrompt('a cat', { clipSkip: 1 });
    const penultimate = await model.encodePrompt('a cat', { clipSkip: 2 });
    assert.notDeepEqual(last.data, penultimate.data);
    await assert.rejects(model.encodePrompt('a cat', { clipSkip: 0 }), InvalidArgumentError);
    await assert.rejects(model.encodePrompt('a cat', { clipSkip: 99 }), InvalidArgumentError);
  });

  test('calls queue and settle in call order', async () => {
    const order: number[] = [];
    await Promise.all([0, 1, 2, 3].map((i) => model.encodePrompt(`prompt ${i}`).then(() => order.push(i))));
    assert.deepEqual(order, [0, 1, 2, 3]);
  });

  test('an aborted signal rejects encodePrompt and the model stays usable', async () => {
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(model.encodePrompt('a cat', { signal: ac.signal }), AbortError);
    assert.ok((await model.encodePrompt('a cat')).data.length > 0);
  });
});

describe('dispose', () => {
  test('frees the model; later calls reject with DisposedError; dispose is idempotent', async () => {
    const model = await loadModel(sd1);
    const pending = model.encodePrompt('queued before dispose');
    const disposed = model.dispose();
    assert.ok((await pending).data.length > 0, 'work queued before dispose completes');
    await disposed;
    await model.dispose();
    assert.equal(model.disposed, true);
    assert.throws(() => model.tokenize('a'), DisposedError);
    await assert.rejects(model.encodePrompt('a'), DisposedError);
  });

  test('await using disposes at the end of the scope', async () => {
    let escaped: Model;
    {
      await using model = await loadModel(sd1);
      escaped = model;
    }
    assert.equal(escaped.disposed, true);
  });
});
