// npm install hook: use the prebuilt binary when one loads on this machine, otherwise build
// from source (cmake, a C++17 compiler and git needed; ggml comes from the pinned
// node-llama-cpp bundle or SDNODE_GGML_DIR). With install scripts disabled this never runs, and
// a matching prebuild is still found at run time by node-gyp-build.
//
// SDNODE_FORCE_BUILD=1 always builds from source; SDNODE_SKIP_BUILD=1 never does.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const log = (m) => process.stderr.write(`sdnode: ${m}\n`);

// Loads the addon in a child process, so a crash while loading cannot take npm down with it.
function prebuildLoads() {
  const prebuilds = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(prebuilds)) return false;
  const probe = `process.env.PREBUILDS_ONLY='1';const b=require('node-gyp-build')(${JSON.stringify(root)});b.systemInfo();`;
  const r = spawnSync(process.execPath, ['-e', probe], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) log(`the prebuilt binary in ${prebuilds} does not load here: ${(r.stderr || '').trim().split('\n').pop()}`);
  return r.status === 0;
}

if (process.env.SDNODE_FORCE_BUILD !== '1' && prebuildLoads()) {
  log(`using the prebuilt binary for ${process.platform}-${process.arch}`);
  process.exit(0);
}
if (process.env.SDNODE_SKIP_BUILD === '1') {
  log('SDNODE_SKIP_BUILD=1: not building from source; the addon will not load until it is built');
  process.exit(0);
}
log(`building the native addon from source for ${process.platform}-${process.arch}`);
const { buildNative } = await import('./build-native.mjs');
try {
  buildNative([]);
} catch (e) {
  log(e.message);
  log('the source build needs cmake >= 3.18, a C++17 compiler and git; see the README (Building from source)');
  process.exit(1);
}
