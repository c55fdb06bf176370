// `npm run build:prebuilds`: makes prebuilds/<platform>-<arch>/ with prebuildify — the addon plus the
// ggml libraries and every CPU-variant module it loads at run time (RUNPATH $ORIGIN), stripped.
// Portable: no -march=native; ggml picks the best CPU variant on the user's machine.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const prebuildify = require.resolve('prebuildify/bin.js');
const shim = path.join(root, 'scripts', 'node-gyp-shim.mjs');

const out = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.rmSync(out, { recursive: true, force: true });
const r = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--node-gyp', shim], {
  cwd: root,
  stdio: 'inherit',
});
if (r.status !== 0) process.exit(r.status ?? 1);
const files = fs.readdirSync(out).sort();
const total = files.reduce((n, f) => n + fs.statSync(path.join(out, f)).size, 0);
process.stdout.write(`prebuilds/${path.basename(out)}: ${files.join(', ')} (${(total / 1048576).toFixed(1)} MiB)\n`);
