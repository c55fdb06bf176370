// Builds the native addon with cmake-js on the pinned ggml (or SDNODE_GGML_DIR).
//
//   node scripts/build-native.mjs [cmake-js options...]
//   npm run build -- --CDSDNODE_CUDA=ON          # any -D option, passed through
//
// Environment: SDNODE_PORTABLE=1 (every CPU variant, loaded at run time; what prebuilds use),
// SDNODE_BUILD_JOBS (parallel jobs, default: CPU count), SDNODE_DEBUG=1 (Debug build).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { ggmlSource } from './ggml-source.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

export function buildNative(extraArgs = [], { portable = process.env.SDNODE_PORTABLE === '1', outDir } = {}) {
  const src = ggmlSource();
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const jobs = process.env.SDNODE_BUILD_JOBS || String(os.availableParallelism?.() ?? os.cpus().length);
  const args = [
    cmakeJs,
    'compile',
    '--directory',
    root,
    '--parallel',
    jobs,
    `--CDSDNODE_VERSION=${pkg.version}`,
    src.kind === 'install' ? `--CDSDNODE_GGML_INSTALL_DIR=${src.dir}` : `--CDSDNODE_GGML_SOURCE_DIR=${src.dir}`,
    `--CDSDNODE_PORTABLE=${portable ? 'ON' : 'OFF'}`,
  ];
  if (outDir) args.push('--out', outDir);
  if (process.env.SDNODE_DEBUG === '1') args.push('--debug');
  args.push(...extraArgs);
  process.stderr.write(`sdnode: cmake-js ${args.slice(1).join(' ')}\n`);
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    throw new Error(`sdnode: native build failed (cmake-js exit ${r.status ?? r.signal})`);
  }
}


/**
 * Builds only the engine and ggml as static libraries with plain cmake, for binding.gyp: node-gyp
 * (and tools that only know node-gyp, like @electron/rebuild) then compiles and links the addon
 * glue itself against them. Prints nothing on stdout (gyp reads action output from files).
 */
export function buildEngineOnly(outDir) {
  const src = ggmlSource();
  if (src.kind !== 'source') throw new Error('sdnode: binding.gyp builds need a ggml source tree (SDNODE_GGML_DIR must not be an install prefix)');
  const jobs = process.env.SDNODE_BUILD_JOBS || String(os.availableParallelism?.() ?? os.cpus().length);
  const run = (args) => {
    const r = spawnSync('cmake', args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
    if (r.status !== 0) throw new Error(`sdnode: cmake ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
  };
  run([
    '-S', root, '-B', outDir, '-DCMAKE_BUILD_TYPE=Release', '-DSDNODE_ENGINE_ONLY=ON',
    `-DSDNODE_GGML_SOURCE_DIR=${src.dir}`, '-DGGML_OPENMP=OFF',
    ...(process.env.SDNODE_NATIVE === '0' ? ['-DSDNODE_NATIVE=OFF'] : []),
  ]);
  run(['--build', outDir, '--config', 'Release', '--parallel', jobs, '--target', 'sd_engine', 'ggml', 'ggml-base', 'ggml-cpu']);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  try {
    const args = process.argv.slice(2);
    if (args[0] === '--engine-only') buildEngineOnly(path.resolve(args[1] ?? path.join(root, 'build', 'engine')));
    else buildNative(args);
  } catch (e) {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  }
}
