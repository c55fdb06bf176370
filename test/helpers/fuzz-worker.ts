// Runs in a child process (so a crash is reported with its case number instead of killing the
// test runner): mutates the headers of one fixture file many times and calls inspectModel on
// each. Prints one JSON line: { cases, ok, rejected: { code: count } } or fails with the case.
// Usage: fuzz-worker.ts <fixture file> <seed> <cases>
import fs from 'node:fs';
import path from 'node:path';
import { inspectModel, SdError } from '../../lib/index.ts';

const [fixture, seedArg, casesArg] = process.argv.slice(2);
const original = fs.readFileSync(fixture);
const ext = path.extname(fixture);
const work = fs.mkdtempSync(path.join(path.dirname(fixture), 'fuzz-'));
const target = path.join(work, `mutant${ext}`);

// xorshift32: small, seeded, reproducible.
let state = (Number(seedArg) >>> 0) || 1;
const next = () => {
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  state >>>= 0;
  return state;
};
const below = (n: number) => next() % n;

// Where the structure lives: the first bytes (safetensors JSON, GGUF header and tensor infos,
// zip local header + pickle) and, for zips, the central directory at the end.
function headerRegion(): [number, number][] {
  if (ext === '.safetensors') return [[0, Math.min(original.length, 8 + Number(original.readBigUInt64LE(0)))]];
  if (ext === '.gguf') return [[0, Math.min(original.length, 64 * 1024)]];
  return [
    [0, Math.min(original.length, 4096)],
    [Math.max(0, original.length - 16 * 1024), original.length],
  ];
}
const regions = headerRegion();
const pick = () => {
  const [a, b] = regions[below(regions.length)];
  return a + below(Math.max(1, b - a));
};

function mutate(): Buffer {
  const buf = Buffer.from(original);
  switch (below(6)) {
    case 0: // flip a few bits
      for (let k = 1 + below(8); k > 0; k--) buf[pick()] ^= 1 << below(8);
      return buf;
    case 1: { // an extreme 8-byte value (sizes, offsets, counts)
      const at = pick();
      const values = [0xff, 0x7f, 0x00, 0x80];
      const v = values[below(values.length)];
      for (let i = 0; i < 8 && at + i < buf.length; i++) buf[at + i] = i === 7 && v === 0x80 ? 0x80 : v;
      return buf;
    }
    case 2: // truncate
      return buf.subarray(0, below(buf.length));
    case 3: { // random bytes over a window
      const at = pick();
      for (let i = 0; i < 1 + below(32) && at + i < buf.length; i++) buf[at + i] = below(256);
      return buf;
    }
    case 4: { // change one ASCII digit (JSON numbers, pickle text)
      for (let tries = 0; tries < 64; tries++) {
        const at = pick();
        if (buf[at] >= 0x30 && buf[at] <= 0x39) {
          buf[at] = 0x30 + below(10);
          break;
        }
      }
      return buf;
    }
    default: { // duplicate or drop a slice of the header region
      const at = pick();
      const len = 1 + below(64);
      return below(2) ? Buffer.concat([buf.subarray(0, at), buf.subarray(at + len)]) : Buffer.concat([buf.subarray(0, at + len), buf.subarray(at)]);
    }
  }
}

const cases = Number(casesArg);
const rejected: Record<string, number> = {};
let ok = 0;
try {
  for (let i = 0; i < cases; i++) {
    fs.writeFileSync(target, mutate());
    try {
      await inspectModel(target);
      ok++;
    } catch (e) {
      const code = e instanceof SdError ? e.code : 'not an SdError';
      if (!['ModelFormat', 'UnsupportedModel', 'Io'].includes(code)) {
        fs.copyFileSync(target, `${fixture}.failing-case-${i}${ext}`);
        throw new Error(`case ${i}: ${code}: ${(e as Error).message}`);
      }
      rejected[code] = (rejected[code] ?? 0) + 1;
    }
  }
} finally {
  fs.rmSync(work, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify({ cases, ok, rejected }) + '\n');
