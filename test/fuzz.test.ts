// Seeded header fuzzing: thousands of mutated safetensors, GGUF and PyTorch zip files, each
// either inspected or rejected with ModelFormatError / UnsupportedModelError / IoError. Every
// run uses the same seeds; a crash names the case (see test/helpers/fuzz-worker.ts).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { generateCheckpoint } from './fixtures/generate.ts';

const CASES = Number(process.env.SDNODE_FUZZ_CASES ?? 3000);
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-fuzz-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const worker = path.join(path.dirname(fileURLToPath(import.meta.url)), 'helpers', 'fuzz-worker.ts');

for (const [container, seed] of [['safetensors', 11], ['gguf', 22], ['ckpt', 33]] as const) {
  test(`${CASES} mutated ${container} headers never crash`, { timeout: 300_000 }, async () => {
    const made = await generateCheckpoint({ arch: 'sd1', format: 'vae', container, out: path.join(work, `vae.${container}`) });
    const r = spawnSync(process.execPath, ['--import', 'tsx', worker, made.path, String(seed), String(CASES)], { encoding: 'utf8' });
    assert.equal(r.signal, null, `the fuzz worker crashed with ${r.signal}:\n${r.stderr.slice(-2000)}`);
    assert.equal(r.status, 0, `fuzz worker failed:\n${r.stderr.slice(-2000)}`);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!);
    assert.equal(summary.cases, CASES);
    // The mutations must exercise the error paths, not just pass through.
    const rejectedCount = Object.values(summary.rejected as Record<string, number>).reduce((a, b) => a + b, 0);
    assert.ok(rejectedCount > CASES / 4, `only ${rejectedCount} of ${CASES} mutants were rejected: ${r.stdout}`);
  });
}
