import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import * as zlib from 'node:zlib';
import { MAX_PNG_PIXELS, chunk, crc32, decodePNG, encodePNG } from '../lib/image.ts';
import { ImageFormatError, InvalidArgumentError, SdError } from '../lib/errors.ts';

test('crc32 matches the standard check value', () => {
  assert.equal(crc32(Buffer.from('123456789')), 0xcbf43926);
});

test('PNG round-trips pixels and text metadata (Latin-1 in tEXt, other text in iTXt)', () => {
  const w = 37;
  const h = 23;
  const px = new Uint8Array(w * h * 3);
  for (let i = 0; i < px.length; i++) px[i] = (i * 7919 + (i >> 3)) & 0xff;
  const params = 'a photo of a cat\nSteps: 20, Sampler: euler_a, CFG scale: 7, Seed: 42, Size: 37x23';
  const png = encodePNG(px, w, h, { parameters: params, comment: 'héllo ✓' });
  const back = decodePNG(png);
  assert.equal(back.width, w);
  assert.equal(back.height, h);
  assert.equal(back.channels, 3);
  assert.deepEqual(Buffer.from(back.data), Buffer.from(px));
  assert.equal(back.text.parameters, params);
  assert.equal(back.text.comment, 'héllo ✓');
});

test('PNG written by sdnode is readable by python (zlib + struct parse)', () => {
  const px = new Uint8Array(4 * 3 * 3).map((_, i) => i * 5);
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-png-')), 'x.png');
  fs.writeFileSync(file, encodePNG(px, 4, 3, { parameters: 'p' }));
  // An independent decoder: parse chunks and inflate with python's zlib, undo the Sub filter.
  const py = `
import struct, zlib, sys
d = open(sys.argv[1], 'rb').read()
assert d[:8] == b'\\x89PNG\\r\\n\\x1a\\n'
pos, idat, w, h = 8, b'', 0, 0
while pos < len(d):
    n, = struct.unpack('>I', d[pos:pos+4]); t = d[pos+4:pos+8]; body = d[pos+8:pos+8+n]
    assert zlib.crc32(t + body) == struct.unpack('>I', d[pos+8+n:pos+12+n])[0]
    if t == b'IHDR': w, h = struct.unpack('>II', body[:8])
    if t == b'IDAT': idat += body
    pos += 12 + n
raw = zlib.decompress(idat); out = []
for y in range(h):
    row = raw[y*(w*3+1):(y+1)*(w*3+1)]; f = row[0]; r = list(row[1:])
    for x in range(3, len(r)):
        if f == 1: r[x] = (r[x] + r[x-3]) & 255
    out += r
print(','.join(map(str, out)))
`;
  const out = execFileSync('python3', ['-c', py, file], { encoding: 'utf8' }).trim();
  assert.equal(out, Array.from(px).join(','));
});

test('encodePNG rejects mismatched sizes with a typed error', () => {
  assert.throws(() => encodePNG(new Uint8Array(10), 2, 2), InvalidArgumentError);
  assert.throws(() => encodePNG(new Uint8Array(0), 0, 0), InvalidArgumentError);
  assert.throws(() => decodePNG(new Uint8Array([1, 2, 3])), ImageFormatError);
  assert.throws(() => decodePNG('not bytes' as never), InvalidArgumentError);
});

// --- Malformed and hostile PNGs -------------------------------------------------------------

const SIG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
function ihdr(width: number, height: number, colorType = 2, bitDepth = 8, interlace = 0): Buffer {
  const d = Buffer.alloc(13);
  d.writeUInt32BE(width, 0);
  d.writeUInt32BE(height, 4);
  d[8] = bitDepth;
  d[9] = colorType;
  d[12] = interlace;
  return chunk('IHDR', d);
}
/** A PNG from a header and already-compressed image data. */
const pngOf = (header: Buffer, zdata: Uint8Array, extra: Buffer[] = []) =>
  Buffer.concat([SIG, header, ...extra, chunk('IDAT', zdata), chunk('IEND', new Uint8Array(0))]);
/** Seeded PRNG (mulberry32): the same mutants every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rejects = (png: Uint8Array, pattern: RegExp) =>
  assert.throws(() => decodePNG(png), (e: unknown) => e instanceof ImageFormatError && e.code === 'ImageFormat' && pattern.test(e.message));

test('a compression bomb (16x16 header, 256 MiB of zeros in IDAT) is rejected without inflating it', async () => {
  // Deflate 256 MiB of zeros through a stream, 1 MiB at a time: the test itself stays small.
  const zero = Buffer.alloc(1 << 20);
  const parts: Buffer[] = [];
  for await (const part of Readable.from((function* () {
    for (let i = 0; i < 256; i++) yield zero;
  })()).pipe(zlib.createDeflate({ level: 9 }))) parts.push(part as Buffer);
  const bomb = pngOf(ihdr(16, 16), Buffer.concat(parts));
  assert.ok(bomb.length < 1 << 20, `the bomb is small: ${bomb.length} bytes`);
  const rss0 = process.memoryUsage().rss;
  const t0 = performance.now();
  rejects(bomb, /inflates to more than the 784 bytes a 16x16 image needs/);
  const ms = performance.now() - t0;
  const grown = process.memoryUsage().rss - rss0;
  assert.ok(grown < 100 * 1024 * 1024, `RSS grew by ${(grown / 1048576).toFixed(1)} MiB`);
  assert.ok(ms < 1000, `rejected in ${ms.toFixed(0)} ms`);
  // The same header with honest data decodes.
  const honest = pngOf(ihdr(16, 16), zlib.deflateSync(Buffer.alloc(16 * (1 + 48))));
  assert.equal(decodePNG(honest).data.length, 16 * 16 * 3);
});

test('headers claiming absurd sizes are rejected before inflating', () => {
  const tiny = zlib.deflateSync(Buffer.alloc(1));
  rejects(pngOf(ihdr(0x7fffffff, 0x7fffffff), tiny), /more than 67108864 pixels/);
  rejects(pngOf(ihdr(65536, 65536), tiny), /more than/);
  rejects(pngOf(ihdr(MAX_PNG_PIXELS + 1, 1), tiny), /more than/);
  rejects(pngOf(ihdr(0, 16), tiny), /invalid size 0x16/);
  rejects(pngOf(ihdr(0x80000000, 1), tiny), /invalid size/);
  // At the limit the header is fine; the (short) data is what fails.
  rejects(pngOf(ihdr(8192, 8192, 0), tiny), /image data too short/);
});

test('malformed PNGs are rejected with ImageFormatError naming what is wrong', () => {
  const good = encodePNG(new Uint8Array(4 * 3 * 3).map((_, i) => i * 7), 4, 3, { parameters: 'p' });
  assert.equal(decodePNG(good).width, 4);
  const raw = (rows: number[][]) => zlib.deflateSync(Buffer.from(rows.flat()));
  const row = (filter: number) => [filter, ...new Array(4 * 3).fill(9)];
  rejects(Buffer.alloc(0), /missing PNG signature/);
  rejects(Buffer.concat([Buffer.from('GIF89a..'), good.subarray(8)]), /missing PNG signature/);
  rejects(good.subarray(0, 8), /no IHDR/);
  rejects(good.subarray(0, 20), /truncated chunk header|runs past the end/);
  rejects(good.subarray(0, good.length - 12), /no IEND/);
  rejects(good.subarray(0, good.length - 20), /runs past the end|truncated/);
  const badCrc = Buffer.from(good);
  badCrc[20] ^= 1; // inside IHDR's data
  rejects(badCrc, /IHDR CRC mismatch/);
  rejects(pngOf(ihdr(4, 3), Buffer.from('this is not zlib data')), /corrupt image data/);
  rejects(pngOf(ihdr(4, 3), zlib.deflateSync(Buffer.alloc(3 * 13)).subarray(0, 6)), /corrupt image data/);
  rejects(pngOf(ihdr(4, 3), raw([row(0), row(5), row(0)])), /filter type 5 in row 1/);
  rejects(pngOf(ihdr(4, 3), raw([row(0), row(0)])), /image data too short: 26 of 39 bytes/);
  rejects(pngOf(ihdr(4, 3), raw([row(0), row(0), row(0), row(0)])), /inflates to more than the 39 bytes/);
  rejects(Buffer.concat([SIG, chunk('IHDR', Buffer.alloc(5)), chunk('IEND', new Uint8Array(0))]), /IHDR is 5 bytes, not 13/);
  rejects(Buffer.concat([SIG, chunk('tEXt', Buffer.from('a\0b')), ihdr(4, 3)]), /first chunk is tEXt, not IHDR/);
  rejects(pngOf(ihdr(4, 3), raw([row(0), row(0), row(0)]), [ihdr(4, 3)]), /more than one IHDR/);
  rejects(Buffer.concat([SIG, ihdr(4, 3), chunk('IEND', new Uint8Array(0))]), /no IDAT/);
  rejects(pngOf(ihdr(4, 3, 3), raw([row(0)])), /color type 3/);
  rejects(pngOf(ihdr(4, 3, 2, 16), raw([row(0)])), /bit depth 16/);
  rejects(pngOf(ihdr(4, 3, 2, 8, 1), raw([row(0)])), /interlaced/);
});

test('fuzz: mutated and truncated PNGs decode or throw an SdError, never anything else', () => {
  const w = 9;
  const h = 7;
  const px = new Uint8Array(w * h * 4).map((_, i) => (i * 131) & 0xff);
  const seeds = [encodePNG(px.subarray(0, w * h * 3), w, h, { parameters: 'a cat', comment: 'héllo ✓' }), encodePNG(px, w, h, {}, 4)];
  const random = rng(1234);
  const pick = (n: number) => Math.floor(random() * n);
  const counts = { decoded: 0, rejected: 0 };
  /** Re-computes every chunk's CRC so that mutations reach the parser past the CRC check. */
  const fixCrcs = (b: Buffer) => {
    for (let pos = 8; pos + 12 <= b.length; ) {
      const len = b.readUInt32BE(pos);
      if (pos + 12 + len > b.length) break;
      b.writeUInt32BE(crc32(b.subarray(pos + 8, pos + 8 + len), crc32(b.subarray(pos + 4, pos + 8))), pos + 8 + len);
      pos += 12 + len;
    }
  };
  for (let i = 0; i < 3000; i++) {
    const m = Buffer.from(seeds[i % seeds.length]);
    let mutant: Buffer;
    switch (pick(4)) {
      case 0: // truncate
        mutant = m.subarray(0, pick(m.length));
        break;
      case 1: // flip bytes, CRCs left as they are
        for (let k = 1 + pick(4); k > 0; k--) m[pick(m.length)] = pick(256);
        mutant = m;
        break;
      case 2: // flip bytes past the signature, then fix the CRCs (reaches IHDR fields, zlib data, filters)
        for (let k = 1 + pick(3); k > 0; k--) m[8 + pick(m.length - 8)] = pick(256);
        fixCrcs(m);
        mutant = m;
        break;
      default: // splice: insert or delete a few bytes, then fix the CRCs
        {
          const at = 8 + pick(m.length - 8);
          const n = 1 + pick(8);
          mutant = random() < 0.5
            ? Buffer.concat([m.subarray(0, at), Buffer.from(Array.from({ length: n }, () => pick(256))), m.subarray(at)])
            : Buffer.concat([m.subarray(0, at), m.subarray(Math.min(m.length, at + n))]);
          fixCrcs(mutant);
        }
    }
    try {
      const d = decodePNG(mutant);
      assert.equal(d.data.length, d.width * d.height * d.channels);
      counts.decoded++;
    } catch (e) {
      assert.ok(e instanceof SdError, `case ${i}: ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`);
      assert.ok(e instanceof ImageFormatError, `case ${i}: ${e.name}: ${e.message}`);
      counts.rejected++;
    }
  }
  assert.ok(counts.rejected > 1500, `mutations must exercise the error paths: ${JSON.stringify(counts)}`);
});
