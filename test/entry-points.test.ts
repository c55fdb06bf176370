// One rule at every entry point: unknown option names are InvalidArgumentErrors naming the key
// (a typo such as `{ thread: 2 }` must not be silently ignored), and seed + batchSize - 1 must
// stay a safe integer.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvalidArgumentError, loadModel, randn, type Model } from '../lib/index.ts';
import { expectKnownKeys } from '../lib/validate.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-entry-'));
let file: string;
let model: Model;
before(async () => {
  file = (await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'sd1.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  })).path;
  model = await loadModel(file, { threads: 2 });
});
after(async () => {
  await model?.dispose();
  fs.rmSync(work, { recursive: true, force: true });
});

/** An InvalidArgumentError whose message names the unknown key and lists the known ones. */
const unknownKey = (key: string, known: string) => (e: unknown) =>
  e instanceof InvalidArgumentError &&
  e.code === 'InvalidArgument' &&
  e.message.includes(`received ${JSON.stringify(key)}`) &&
  e.message.startsWith('options must be known option names (') &&
  e.message.includes(known);

describe('unknown option names are refused everywhere', () => {
  test('expectKnownKeys names the first unknown key and the known ones', () => {
    assert.doesNotThrow(() => expectKnownKeys('options', { a: 1, b: undefined }, ['a', 'b']));
    assert.doesNotThrow(() => expectKnownKeys('options', {}, new Set(['a'])));
    assert.throws(() => expectKnownKeys('opts', { a: 1, zz: 2 }, ['a', 'b']), (e: unknown) =>
      e instanceof InvalidArgumentError && e.message === 'opts must be known option names (a, b); received "zz"');
  });

  test('loadModel', async () => {
    await assert.rejects(loadModel(file, { thread: 2 } as never), unknownKey('thread', 'threads'));
    await assert.rejects(loadModel(file, { threads: 2, weighttype: 'q8_0' } as never), unknownKey('weighttype', 'weightType'));
    // An option that is present but undefined is a known key: fine.
    const m = await loadModel(file, { threads: 2, backend: undefined });
    await m.dispose();
  });

  test('model.generate', async () => {
    await assert.rejects(model.generate({ prompt: 'a cat', stpes: 2 } as never), unknownKey('stpes', 'steps'));
  });

  test('model.encodePrompt', async () => {
    await assert.rejects(model.encodePrompt('a cat', { clip_skip: 2 } as never), unknownKey('clip_skip', 'clipSkip'));
    const ok = await model.encodePrompt('a cat', { clipSkip: 1 });
    assert.equal(ok.tokens, 77);
  });

  test('randn', () => {
    assert.throws(() => randn({ seed: 1, count: 4, rgn: 'cpu' } as never), unknownKey('rgn', 'rng'));
    assert.equal(randn({ seed: 1, count: 4, rng: 'cpu' }).length, 4);
  });
});

describe('seeds near 2^53', () => {
  const base = { prompt: 'a cat', width: 64, height: 64, steps: 1 } as const;
  test('seed + batchSize - 1 must be a safe integer', async () => {
    const max = Number.MAX_SAFE_INTEGER; // 2^53 - 1
    for (const [seed, batchSize] of [[max, 2], [max - 1, 3], [max - 62, 64]] as const) {
      await assert.rejects(model.generate({ ...base, seed, batchSize }), (e: unknown) =>
        e instanceof InvalidArgumentError &&
        e.message === `seed must be small enough that seed + batchSize - 1 is a safe integer; received ${seed}`);
    }
    await assert.rejects(model.generate({ ...base, seed: max + 1 }), (e: unknown) =>
      e instanceof InvalidArgumentError && /seed must be a safe integer/.test(e.message));
  });
  test('the largest seeds that fit are accepted and reported exactly', async () => {
    const max = Number.MAX_SAFE_INTEGER;
    const one = await model.generate({ ...base, seed: max });
    assert.deepEqual(one.seeds, [max]);
    const two = await model.generate({ ...base, seed: max - 1, batchSize: 2 });
    assert.deepEqual(two.seeds, [max - 1, max]);
    assert.deepEqual(two.images[1].data, one.images[0].data, 'image i of a batch is the single run with seed + i');
  });
});
