#!/usr/bin/env node
// Stands in for node-gyp when prebuildify drives the build (`prebuildify --node-gyp <this>`):
// prebuildify only knows how to spawn node-gyp, so this translates its `rebuild` call into a
// portable cmake-js build. Only the flags prebuildify passes are understood.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildNative } from './build-native.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
if (args[0] !== 'rebuild') {
  process.stderr.write(`node-gyp-shim: only "rebuild" is supported (got ${JSON.stringify(args)})\n`);
  process.exit(1);
}
const extra = [];
for (const a of args.slice(1)) {
  if (a === '--debug') process.env.SDNODE_DEBUG = '1';
  else if (a.startsWith('--arch=')) extra.push(`--arch=${a.slice('--arch='.length)}`);
  // --target / --devdir / --release concern node-gyp's header download; cmake-js uses the
  // Node-API headers package, which is the same for every Node version.
}
fs.rmSync(path.join(root, 'build'), { recursive: true, force: true });
try {
  buildNative(extra, { portable: true });
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(1);
}
