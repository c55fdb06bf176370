// lib/engine-tables.ts is generated from the engine's option tables: it must be current, so
// TypeScript and C++ check the same limits and names; and the engine checks them itself, for
// callers that reach the addon without lib/.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { callNative, native } from '../lib/binding.ts';
import { LIMITS } from '../lib/engine-tables.ts';
import { InvalidArgumentError } from '../lib/index.ts';
// @ts-expect-error: a plain .mjs build script without types
import { renderTables, tablesFile } from '../scripts/gen-tables.mjs';
import { generateCheckpoint } from './fixtures/generate.ts';

test('lib/engine-tables.ts equals what the engine reports (npm run gen:tables regenerates it)', () => {
  assert.equal(fs.readFileSync(tablesFile, 'utf8'), renderTables(native().optionTables()));
});

test('the engine checks the same limits on its side of the boundary', async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-tables-'));
  try {
    const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors') });
    const model = await callNative((a) => a.NativeModel.load(made.path, {}));
    const session = model.createSession();
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ steps: 0 }, new RegExp(`steps must be an integer from ${LIMITS.steps.min} to ${LIMITS.steps.max}; received 0`)],
      [{ cfgScale: LIMITS.cfgScale.max + 1 }, new RegExp(`cfgScale must be a finite number from ${LIMITS.cfgScale.min} to ${LIMITS.cfgScale.max}`)],
      [{ width: 65 }, /width must be a multiple of \d+ from 64 to 4096; received 65/],
      [{ sampler: 'euler_b' }, /sampler "euler_b" is not known/],
      [{ batchSize: LIMITS.batchSize.max + 1 }, /batchSize must be an integer from 1 to 64/],
    ];
    for (const [extra, pattern] of bad) {
      await assert.rejects(callNative(() => session.generate({ prompt: 'x', ...extra })), (e: unknown) => e instanceof InvalidArgumentError && pattern.test(e.message));
    }
    await session.dispose();
    model.dispose();
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
});
