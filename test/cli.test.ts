import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { packageRoot } from '../lib/binding.ts';
import { decodePNG } from '../lib/image.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-cli-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const cli = (...args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'lib', 'cli', 'main.ts'), ...args], { encoding: 'utf8' });

test('sdnode inspect prints the architecture, parameters and hyperparameters; --json is machine-readable', async () => {
  const made = await generateCheckpoint({ arch: 'sd2', format: 'safetensors', out: path.join(work, 'sd2.safetensors') });
  const text = cli('inspect', made.path);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /architecture:\s+sd2/);
  assert.match(text.stdout, /components:\s+unet, vae, textEncoder/);
  const json = cli('inspect', made.path, '--json');
  assert.equal(json.status, 0, json.stderr);
  const info = JSON.parse(json.stdout);
  assert.equal(info.architecture, 'sd2');
  assert.equal(info.parameters.unet, made.parameters.unet);
});

test('sdnode info prints versions and devices', () => {
  const r = cli('info');
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.ok(info.backends.includes('CPU'));
});

test('errors: a missing model exits 1 with the typed error; an unknown command exits 2', () => {
  const missing = cli('inspect', path.join(work, 'missing.safetensors'));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /IoError: .*missing\.safetensors/);
  const unknown = cli('frobnicate');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  assert.equal(cli('--version').stdout.trim(), JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version);
});

test('sdnode generate writes PNGs with metadata; a batch writes numbered files', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'gen.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const out = path.join(work, 'cat.png');
  const r = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--steps', '2', '-s', '5', '-b', '2', '--sampler', 'euler', '-o', out);
  assert.equal(r.status, 0, r.stderr);
  for (const [i, seed] of [[1, 5], [2, 6]]) {
    const png = decodePNG(fs.readFileSync(path.join(work, `cat_${i}.png`)));
    assert.equal(png.width, 64);
    assert.match(png.text.parameters, new RegExp(`^a cat\\nSteps: 2, .*Seed: ${seed}, Size: 64x64, .*Sampler: euler discrete`));
  }
  assert.match(r.stdout, /cat_1\.png \(seed 5\)/);
  const bad = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '65');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /InvalidArgumentError: width must be a multiple of 8/);
  const missing = cli('generate', '-p', 'a cat');
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--model must be a model path/);
});
