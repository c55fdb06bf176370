import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { crc32, decodePNG, encodePNG } from '../lib/image.ts';
import { InvalidArgumentError } from '../lib/errors.ts';

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
  assert.throws(() => decodePNG(new Uint8Array([1, 2, 3])), InvalidArgumentError);
});
