// Files and options a careless or hostile caller gives: non-regular files, model files changed
// after loading, more threads than CPUs, emphasis that overflows. Each is a typed error (or a
// warning) at once, never a hang, a crash (SIGBUS on a truncated mapping) or a black image.
// Crash-prone cases run in a child process so that a regression fails the test, not the runner.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { packageRoot } from '../lib/binding.ts';
import { InvalidArgumentError, IoError, inspectModel, loadModel, systemInfo } from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-fault-safety-'));
let good: string;
before(async () => {
  good = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors') })).path;
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

const small = { prompt: 'a cat', width: 64, height: 64, steps: 1 } as const;

/** Runs `body` (an ES module's top level, with `sd` the package) in a child Node process. */
function child(body: string, env: Record<string, string> = {}, timeout = 60_000) {
  const entry = pathToFileURL(path.join(packageRoot, 'lib', 'index.ts')).href;
  const script = `const sd = await import(${JSON.stringify(entry)});\n${body}`;
  return spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    encoding: 'utf8',
    timeout,
    env: { ...process.env, ...env },
    cwd: packageRoot,
  });
}

describe('non-regular files', { skip: process.platform === 'win32' && 'no mkfifo on Windows' }, () => {
  test('a FIFO as the model path is an IoError at once for inspectModel and loadModel (nothing opens it for reading)', async () => {
    const fifo = path.join(work, 'model.fifo');
    execFileSync('mkfifo', [fifo]);
    for (const call of [() => inspectModel(fifo), () => loadModel(fifo)]) {
      const t0 = Date.now();
      await assert.rejects(call(), (e: unknown) => e instanceof IoError && /FIFO/.test(e.message) && e.message.includes(fifo));
      assert.ok(Date.now() - t0 < 5000, 'settles at once');
    }
    // Four of them do not take libuv's pool: file reads still complete.
    await Promise.allSettled([1, 2, 3, 4].map(() => loadModel(fifo)));
    assert.ok((await fs.promises.readFile(good)).length > 0);
  });

  test('a character device and a directory without model files are typed errors', async () => {
    await assert.rejects(loadModel('/dev/null'), (e: unknown) => e instanceof IoError && /character device/.test(e.message));
    await assert.rejects(inspectModel('/dev/zero'), (e: unknown) => e instanceof IoError && /not a regular file/.test(e.message));
  });
});

describe('a model file changed after loading', () => {
  test('truncated: the next generate() and encodePrompt() reject with an IoError (no SIGBUS)', () => {
    const file = path.join(work, 'truncated.safetensors');
    fs.copyFileSync(good, file);
    const r = child(`
      const fs = await import('node:fs');
      const model = await sd.loadModel(${JSON.stringify(file)});
      if (model.memory().mapped === 0) throw new Error('expected mapped weights');
      fs.truncateSync(${JSON.stringify(file)}, 1000);
      for (const call of [() => model.generate(${JSON.stringify(small)}), () => model.encodePrompt('a')]) {
        try { await call(); console.log('RESOLVED'); } catch (e) { console.log(e.name + ': ' + e.message); }
      }
      await model.dispose();
    `);
    assert.equal(r.signal, null, `no signal (stderr: ${r.stderr})`);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines.length, 2, r.stdout);
    for (const line of lines) {
      assert.match(line, /^IoError: .*truncated\.safetensors changed since the model was loaded: its size changed from \d+ to 1000 bytes/);
    }
  });

  test('rewritten in place (same size) or replaced by another file: an IoError saying what changed', async () => {
    const file = path.join(work, 'rewritten.safetensors');
    fs.copyFileSync(good, file);
    const model = await loadModel(file);
    try {
      await model.generate(small); // unchanged: runs
      await new Promise((r) => setTimeout(r, 20)); // a later modification time on coarse clocks
      const fd = fs.openSync(file, 'r+');
      fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, fs.statSync(file).size - 8192);
      fs.closeSync(fd);
      await assert.rejects(model.generate(small), (e: unknown) => e instanceof IoError && /modified/.test(e.message));
    } finally {
      await model.dispose();
    }

    fs.copyFileSync(good, file);
    const again = await loadModel(file);
    try {
      const other = path.join(work, 'other.safetensors');
      fs.copyFileSync(good, other);
      fs.renameSync(other, file); // same bytes, another inode
      await assert.rejects(again.generate(small), (e: unknown) => e instanceof IoError && /replaced/.test(e.message));
    } finally {
      await again.dispose();
    }
  });

  test('SDNODE_MMAP=0 copies every weight: the file may change after loading', () => {
    const file = path.join(work, 'copied.safetensors');
    fs.copyFileSync(good, file);
    const r = child(
      `
      const fs = await import('node:fs');
      const model = await sd.loadModel(${JSON.stringify(file)});
      console.log('mapped', model.memory().mapped);
      fs.truncateSync(${JSON.stringify(file)}, 10);
      const out = await model.generate(${JSON.stringify(small)});
      console.log('images', out.images.length);
      await model.dispose();
    `,
      { SDNODE_MMAP: '0' },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /mapped 0\nimages 1/);
  });
});

describe('threads', () => {
  test('more threads than logical CPUs are capped, with a warning naming the cap', async () => {
    const cpus = systemInfo().defaultThreads;
    const model = await loadModel(good, { threads: cpus + 30 });
    try {
      const warning = model.warnings.find((w) => w.startsWith('threads'));
      assert.equal(warning, `threads ${cpus + 30} is more than the ${cpus} logical CPUs this process can use; using ${cpus}`);
      const t0 = Date.now();
      await model.generate(small);
      // Uncapped, 32 threads on 2 CPUs took 84 s for this; capped it is the 2-thread time.
      assert.ok(Date.now() - t0 < 30_000);
    } finally {
      await model.dispose();
    }
    const exact = await loadModel(good, { threads: cpus });
    assert.equal(exact.warnings.some((w) => w.startsWith('threads')), false);
    await exact.dispose();
  });
});

describe('emphasis', () => {
  test('nested brackets whose product overflows are refused like a huge explicit weight', async () => {
    const model = await loadModel(good);
    try {
      const nested = '('.repeat(940) + 'a' + ')'.repeat(940);
      const explicit = '(a:1000000000000000000000000000000000000000)';
      for (const prompt of [nested, explicit, '('.repeat(145) + 'a' + ')'.repeat(145), '(a:1000001)', '(a:-2000000)']) {
        assert.throws(() => model.tokenize(prompt), (e: unknown) =>
          e instanceof InvalidArgumentError && /emphasis weight .* out of range; expected a magnitude of at most 1e\+06/.test(e.message));
        await assert.rejects(model.generate({ ...small, prompt }), InvalidArgumentError);
      }
      // Up to the bound they work (144 levels: 1.1^144 = 9.1e5).
      assert.equal(model.tokenize('('.repeat(144) + 'a' + ')'.repeat(144)).length, 77);
      assert.equal(model.tokenize('(a:1000000)').length, 77);
    } finally {
      await model.dispose();
    }
  });
});
