// Finds or prepares the ggml source tree the native build compiles.
//
// Default: the llama.cpp release that the npm package node-llama-cpp (pinned below) ships as a
// git bundle. The package tarball comes through `npm pack` (so npm's cache and registry settings
// apply and nothing else is contacted), is checked against its registry integrity, and the bundle
// is cloned once into a cache folder. Later builds reuse the cache and need no network.
//
// Override: SDNODE_GGML_DIR pointing at a ggml source tree (a folder with ggml's CMakeLists.txt,
// or a llama.cpp / whisper.cpp checkout with a ggml/ folder) or at a ggml install prefix
// (lib/cmake/ggml/ggml-config.cmake).
//
// Usage as a script prints a JSON object { kind: 'source'|'install', dir, version }.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const PINNED = {
  package: 'node-llama-cpp',
  version: '3.22.1',
  // sha512 integrity of the npm tarball, as the registry publishes it.
  tarballSha512:
    '6e5b488a9b9699cd76dc7eed30880318a4ac4ab866865418795502e3c5d38d55bb5c624988927209d95333343f2e25a83e4183a5c2f816f883a60c3ba9f4e20f',
  bundlePath: 'package/llama/gitRelease.bundle',
  bundleSha256: '5f5d1105d5df040738d87b8290e5d17e7362131cdcfdb0831618e0ea528b4a51',
  // The commit the bundle's HEAD must resolve to (llama.cpp release v0.5.0 as squashed by node-llama-cpp).
  commit: 'de3ff815ea7d559ee917f063901b8986f038abc6',
  ggmlVersion: '0.25.1',
};

const log = (msg) => process.stderr.write(`sdnode: ${msg}\n`);

export function cacheRoot() {
  if (process.env.SDNODE_CACHE_DIR) return path.resolve(process.env.SDNODE_CACHE_DIR);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'sdnode');
}

function hashFile(file, algo) {
  const h = createHash(algo);
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(1 << 20);
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

function fail(msg) {
  const err = new Error(`sdnode: cannot prepare ggml: ${msg}`);
  err.code = 'SDNODE_GGML_SOURCE';
  throw err;
}

/** A user-provided tree: a ggml source folder, a checkout containing ggml/, or an install prefix. */
function fromUserDir(dir) {
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs)) fail(`SDNODE_GGML_DIR=${dir} does not exist`);
  const installCfg = ['lib/cmake/ggml', 'lib64/cmake/ggml'].map((p) => path.join(abs, p));
  for (const cfg of installCfg) {
    if (fs.existsSync(path.join(cfg, 'ggml-config.cmake'))) return { kind: 'install', dir: abs, version: 'user' };
  }
  for (const cand of [abs, path.join(abs, 'ggml')]) {
    if (fs.existsSync(path.join(cand, 'CMakeLists.txt')) && fs.existsSync(path.join(cand, 'include', 'ggml.h'))) {
      return { kind: 'source', dir: cand, version: 'user' };
    }
  }
  fail(
    `SDNODE_GGML_DIR=${dir} is neither a ggml source tree (CMakeLists.txt + include/ggml.h, ` +
      `directly or under ggml/) nor a ggml install prefix (lib/cmake/ggml/ggml-config.cmake)`,
  );
}

function findInstalledPackage(startDir) {
  // A node-llama-cpp that is already installed next to us saves the download.
  let dir = startDir;
  for (;;) {
    const pj = path.join(dir, 'node_modules', PINNED.package, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        const v = JSON.parse(fs.readFileSync(pj, 'utf8')).version;
        const bundle = path.join(path.dirname(pj), 'llama', 'gitRelease.bundle');
        if (v === PINNED.version && fs.existsSync(bundle)) return bundle;
      } catch {
        /* unreadable: ignore and fall back to npm pack */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return null;
    dir = up;
  }
}

function packTarball(tmp) {
  const spec = `${PINNED.package}@${PINNED.version}`;
  log(`fetching ${spec} through npm pack (npm cache first)`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const out = execFileSync(npm, ['pack', spec, '--prefer-offline', '--pack-destination', tmp, '--json'], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    shell: process.platform === 'win32',
  });
  const info = JSON.parse(out)[0];
  const tgz = path.join(tmp, info.filename);
  const got = hashFile(tgz, 'sha512');
  if (got !== PINNED.tarballSha512) fail(`${spec} tarball sha512 mismatch: expected ${PINNED.tarballSha512}, got ${got}`);
  execFileSync('tar', ['-xzf', tgz, '-C', tmp, PINNED.bundlePath], { stdio: 'inherit' });
  return path.join(tmp, PINNED.bundlePath);
}

/** Returns the ggml source folder from the pinned bundle, extracting it into the cache once. */
function fromPinnedBundle() {
  const root = cacheRoot();
  const dest = path.join(root, `llama.cpp-${PINNED.commit.slice(0, 12)}`);
  const marker = path.join(dest, '.sdnode-verified');
  if (fs.existsSync(marker)) return { kind: 'source', dir: path.join(dest, 'ggml'), version: PINNED.ggmlVersion };

  fs.mkdirSync(root, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(root, 'tmp-'));
  try {
    let bundle = findInstalledPackage(path.dirname(fileURLToPath(import.meta.url)));
    if (bundle) log(`using the bundle from the installed ${PINNED.package}@${PINNED.version}`);
    else bundle = packTarball(tmp);
    const got = hashFile(bundle, 'sha256');
    if (got !== PINNED.bundleSha256) fail(`${bundle} sha256 mismatch: expected ${PINNED.bundleSha256}, got ${got}`);

    const work = path.join(tmp, 'src');
    execFileSync('git', ['clone', '--quiet', '--no-checkout', bundle, work], { stdio: 'inherit' });
    const head = execFileSync('git', ['-C', work, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
    if (head !== PINNED.commit) fail(`bundle HEAD is ${head}, expected ${PINNED.commit}`);
    execFileSync('git', ['-C', work, 'checkout', '--quiet', PINNED.commit], { stdio: 'inherit' });
    fs.rmSync(dest, { recursive: true, force: true });
    fs.renameSync(work, dest);
    fs.writeFileSync(marker, `${PINNED.package}@${PINNED.version} ${PINNED.commit}\n`);
    log(`ggml ${PINNED.ggmlVersion} source ready in ${dest}`);
  } catch (e) {
    if (e.code === 'ENOENT' && /git/.test(String(e.path ?? e.message))) {
      fail('git is needed once to unpack the ggml bundle; install git or set SDNODE_GGML_DIR');
    }
    throw e;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { kind: 'source', dir: path.join(dest, 'ggml'), version: PINNED.ggmlVersion };
}

export function ggmlSource() {
  if (process.env.SDNODE_GGML_DIR) return fromUserDir(process.env.SDNODE_GGML_DIR);
  return fromPinnedBundle();
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stdout.write(JSON.stringify(ggmlSource()) + '\n');
}
