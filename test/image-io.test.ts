import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { deflateSync } from 'node:zlib';
import sharp, { type Sharp } from 'sharp';
import { ImageFormatError, InvalidArgumentError, IoError, SdError } from '../lib/errors.ts';
import { decodeUserComment, findUserComment, userCommentExif } from '../lib/exif.ts';
import { A1111_SAMPLER_NAMES, makeImage, parametersText, type ResolvedGenerateOptions } from '../lib/generate.ts';
import { chunk, encodePNG } from '../lib/image.ts';
import {
  DEFAULT_JPEG_QUALITY,
  DEFAULT_RESIZE_MODE,
  DEFAULT_WEBP_QUALITY,
  MAX_INPUT_PIXELS,
  RESIZE_MODES,
  encodeJPEG,
  encodeWebP,
  readImage,
  readMask,
} from '../lib/image-io.ts';
import * as api from '../lib/index.ts';
import { SAMPLERS, SCHEDULERS } from '../lib/options.ts';
import { HIRES_UPSCALERS } from '../lib/engine-tables.ts';
import { parseParameters, readParameters } from '../lib/parameters.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-image-io-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

type Rgb = [number, number, number];
const RED: Rgb = [255, 0, 0];
const GREEN: Rgb = [0, 255, 0];
const BLUE: Rgb = [0, 0, 255];
const WHITE: Rgb = [255, 255, 255];

/** width x height RGB pixels from a function of (x, y). */
function paint(width: number, height: number, color: (x: number, y: number) => Rgb): Uint8Array {
  const px = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) px.set(color(x, y), (y * width + x) * 3);
  return px;
}
const pixel = (img: { data: Uint8Array; width: number; channels: number }, x: number, y: number) =>
  Array.from(img.data.subarray((y * img.width + x) * img.channels, (y * img.width + x + 1) * img.channels));
/** Each channel within `tol` of the expected. */
function near(actual: number[], expected: number[], tol: number, label: string): void {
  assert.equal(actual.length, expected.length, label);
  for (let i = 0; i < actual.length; i++) {
    assert.ok(Math.abs(actual[i] - expected[i]) <= tol, `${label}: ${JSON.stringify(actual)} is not within ${tol} of ${JSON.stringify(expected)}`);
  }
}
const rawSharp = (px: Uint8Array, width: number, height: number, channels: 1 | 3 | 4 = 3) => sharp(px, { raw: { width, height, channels } });

/** 16x8: left half red, right half blue. */
const halves = paint(16, 8, (x) => (x < 8 ? RED : BLUE));

/** A typed error of `cls`, an SdError, whose message starts with the option name and matches `pattern`. */
const typed = (cls: new (...a: never[]) => SdError, option: string, pattern: RegExp) => (e: unknown) => {
  assert.ok(e instanceof cls, `expected ${cls.name}, got ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`);
  assert.ok((e as Error).message.startsWith(`${option}: `), `the message names the option: ${(e as Error).message}`);
  assert.match((e as Error).message, pattern);
  return true;
};

describe('readImage: every input form', () => {
  test('encoded PNG, JPEG, WebP, GIF, TIFF, AVIF buffers, a Uint8Array, a path, a sharp instance', async () => {
    const encoders: Array<[string, (s: Sharp) => Sharp, number]> = [
      ['png', (s) => s.png(), 0],
      ['jpeg', (s) => s.jpeg({ quality: 95 }), 40],
      ['webp', (s) => s.webp({ quality: 95 }), 40],
      ['gif', (s) => s.gif(), 8],
      ['tiff', (s) => s.tiff({ compression: 'lzw' }), 0], // sharp's default TIFF compression is JPEG
      ['avif', (s) => s.avif({ quality: 90 }), 50],
    ];
    for (const [format, encode, tol] of encoders) {
      const buf = await encode(rawSharp(halves, 16, 8)).toBuffer();
      assert.equal((await sharp(buf).metadata()).format, format === 'avif' ? 'heif' : format);
      const file = path.join(work, `halves.${format}`);
      fs.writeFileSync(file, buf);
      const inputs: Array<[string, api.ImageInput]> = [
        ['Buffer', buf],
        ['Uint8Array', new Uint8Array(buf)],
        ['path', file],
        ['sharp', sharp(buf)],
      ];
      for (const [kind, input] of inputs) {
        const img = await readImage(input, 'initImage');
        const label = `${format} ${kind}`;
        assert.equal(img.width, 16, label);
        assert.equal(img.height, 8, label);
        assert.equal(img.channels, 3, label);
        assert.equal(img.data.length, 16 * 8 * 3, label);
        // Away from the edge between the halves (lossy codecs blur it).
        near(pixel(img, 1, 4), RED, tol, `${label} left`);
        near(pixel(img, 14, 4), BLUE, tol, `${label} right`);
      }
    }
  });

  test('RawImage with 1, 3 and 4 channels; gray is expanded to RGB', async () => {
    const rgb = await readImage({ data: halves, width: 16, height: 8, channels: 3 }, 'initImage');
    assert.deepEqual(Buffer.from(rgb.data), Buffer.from(halves), '3 channels pass through unchanged');
    const gray = new Uint8Array(6).map((_, i) => i * 40);
    const g = await readImage({ data: gray, width: 3, height: 2, channels: 1 }, 'initImage');
    assert.deepEqual(Array.from(g.data), Array.from(gray).flatMap((v) => [v, v, v]));
    const rgba = new Uint8Array([10, 20, 30, 255, 40, 50, 60, 255]);
    const a = await readImage({ data: rgba, width: 2, height: 1, channels: 4 }, 'initImage');
    assert.deepEqual(Array.from(a.data), [10, 20, 30, 40, 50, 60]);
    // A sharp instance's pipeline output is the image.
    const resized = await readImage(rawSharp(halves, 16, 8).resize(4, 2, { fit: 'fill' }), 'initImage');
    assert.equal(resized.width, 4);
    near(pixel(resized, 0, 0), RED, 10, 'sharp pipeline');
    // A gray PNG.
    const grayPng = await rawSharp(new Uint8Array(12).fill(77), 4, 3, 1).png().toBuffer();
    const gp = await readImage(grayPng, 'initImage');
    assert.deepEqual(pixel(gp, 2, 1), [77, 77, 77]);
  });

  test('EXIF orientation is applied (JPEG with orientation 6: rotated 90 degrees clockwise)', async () => {
    // 40x20 stored: left half red, right half blue. Displayed (rotated clockwise): 20x40, red on top.
    const stored = paint(40, 20, (x) => (x < 20 ? RED : BLUE));
    const jpeg = await rawSharp(stored, 40, 20).jpeg({ quality: 95 }).withMetadata({ orientation: 6 }).toBuffer();
    assert.equal((await sharp(jpeg).metadata()).orientation, 6);
    for (const input of [jpeg, sharp(jpeg)]) {
      const img = await readImage(input, 'initImage');
      assert.equal(img.width, 20);
      assert.equal(img.height, 40);
      near(pixel(img, 10, 3), RED, 30, 'top');
      near(pixel(img, 10, 36), BLUE, 30, 'bottom');
    }
  });

  test('transparency is flattened onto white', async () => {
    const rgba = new Uint8Array([255, 0, 0, 0, 255, 0, 0, 128, 0, 0, 255, 255, 0, 0, 0, 64]);
    const expected = [
      [255, 255, 255], // transparent: white
      [255, 127, 127], // half: (v * 128 + 255 * 127) / 255
      [0, 0, 255], // opaque: itself
      [191, 191, 191], // black at alpha 64: 255 * 191 / 255
    ];
    const raw = await readImage({ data: rgba, width: 4, height: 1, channels: 4 }, 'initImage');
    assert.deepEqual([0, 1, 2, 3].map((x) => pixel(raw, x, 0)), expected);
    const png = await rawSharp(rgba, 4, 1, 4).png().toBuffer();
    const fromPng = await readImage(png, 'initImage');
    assert.deepEqual([0, 1, 2, 3].map((x) => pixel(fromPng, x, 0)), expected);
  });
});

describe('resize modes', () => {
  // 200x100: the top 25 rows are green | red | blue (x < 50, < 100, rest), the other rows white.
  const src = paint(200, 100, (x, y) => (y >= 25 ? WHITE : x < 50 ? GREEN : x < 100 ? RED : BLUE));
  const input = { data: src, width: 200, height: 100, channels: 3 as const };

  test('the modes and the default', () => {
    assert.deepEqual([...RESIZE_MODES], ['resize', 'crop', 'fill']);
    assert.equal(DEFAULT_RESIZE_MODE, 'resize');
  });

  test("'resize' stretches to the size (and is the default)", async () => {
    const img = await readImage(input, 'initImage', { width: 100, height: 100, resizeMode: 'resize' });
    assert.equal(img.width, 100);
    assert.equal(img.height, 100);
    near(pixel(img, 10, 5), GREEN, 8, 'squashed green quarter');
    near(pixel(img, 37, 5), RED, 8, 'squashed red quarter');
    near(pixel(img, 80, 5), BLUE, 8, 'blue half');
    near(pixel(img, 10, 60), WHITE, 8, 'white below');
    const byDefault = await readImage(input, 'initImage', { width: 100, height: 100 });
    assert.deepEqual(Buffer.from(byDefault.data), Buffer.from(img.data));
  });

  test("'crop' scales to cover and crops the center", async () => {
    const img = await readImage(input, 'initImage', { width: 100, height: 100, resizeMode: 'crop' });
    assert.equal(img.width, 100);
    assert.equal(img.height, 100);
    // Scale 1 (the height fits), columns 50..149 kept: red | blue, the green quarter cut off.
    near(pixel(img, 0, 5), RED, 8, 'left edge is red');
    near(pixel(img, 40, 5), RED, 8, 'red');
    near(pixel(img, 60, 5), BLUE, 8, 'blue');
    near(pixel(img, 99, 5), BLUE, 8, 'right edge is blue');
    near(pixel(img, 50, 60), WHITE, 8, 'white below');
  });

  test("'fill' fits inside and fills the bands with copies of the edge pixels", async () => {
    // 200x100 into 200x200: no scaling, placed at rows 50..149; rows 0..49 copy row 50, rows 150..199 copy row 149.
    const img = await readImage(input, 'initImage', { width: 200, height: 200, resizeMode: 'fill' });
    assert.equal(img.width, 200);
    assert.equal(img.height, 200);
    const row = (y: number) => Buffer.from(img.data.subarray(y * 600, (y + 1) * 600));
    for (let y = 0; y < 50; y++) assert.deepEqual(row(y), row(50), `row ${y} copies the first image row`);
    for (let y = 150; y < 200; y++) assert.deepEqual(row(y), row(149), `row ${y} copies the last image row`);
    assert.deepEqual(row(50), Buffer.from(src.subarray(0, 600)), 'the image itself is unscaled');
    assert.deepEqual(pixel(img, 20, 10), GREEN);
    assert.deepEqual(pixel(img, 20, 60), GREEN, 'image row 10');
    assert.deepEqual(pixel(img, 20, 80), WHITE, 'image row 30');
    // 'resize' to the same size stretches instead: row 60 is image row 30, white.
    const stretched = await readImage(input, 'initImage', { width: 200, height: 200 });
    near(pixel(stretched, 20, 60), WHITE, 8, 'resize differs');
    // Side bands: a 100x100 image into 200x100, placed at columns 50..149.
    const square = paint(100, 100, (x) => (x < 50 ? RED : BLUE));
    const wide = await readImage({ data: square, width: 100, height: 100, channels: 3 }, 'initImage', { width: 200, height: 100, resizeMode: 'fill' });
    for (const y of [0, 50, 99]) {
      for (let x = 0; x < 50; x++) assert.deepEqual(pixel(wide, x, y), RED, `left band ${x},${y}`);
      for (let x = 150; x < 200; x++) assert.deepEqual(pixel(wide, x, y), BLUE, `right band ${x},${y}`);
    }
    // Scaled: 200x100 into 100x100 is 100x50 at rows 25..74, then bands.
    const scaled = await readImage(input, 'initImage', { width: 100, height: 100, resizeMode: 'fill' });
    const srow = (y: number) => Buffer.from(scaled.data.subarray(y * 300, (y + 1) * 300));
    for (let y = 0; y < 25; y++) assert.deepEqual(srow(y), srow(25));
    for (let y = 75; y < 100; y++) assert.deepEqual(srow(y), srow(74));
    near(pixel(scaled, 10, 10), GREEN, 8, 'scaled top band');
  });

  test('no target or the same size: the image as it is', async () => {
    const same = await readImage(input, 'initImage', { width: 200, height: 100, resizeMode: 'crop' });
    assert.deepEqual(Buffer.from(same.data), Buffer.from(src));
  });
});

describe('readMask', () => {
  test('luminance of gray and RGB images, times alpha for RGBA (transparent = keep)', async () => {
    const gray = new Uint8Array([0, 64, 128, 255]);
    const g = await readMask({ data: gray, width: 4, height: 1, channels: 1 }, 'mask', { width: 4, height: 1 });
    assert.equal(g.channels, 1);
    assert.deepEqual(Array.from(g.data), [0, 64, 128, 255]);
    const rgb = new Uint8Array([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255]);
    const c = await readMask({ data: rgb, width: 4, height: 1, channels: 3 }, 'mask', { width: 4, height: 1 });
    assert.deepEqual(Array.from(c.data), [76, 150, 29, 255], '(299 R + 587 G + 114 B) / 1000');
    const rgba = new Uint8Array([255, 255, 255, 255, 255, 255, 255, 128, 255, 255, 255, 0, 0, 0, 0, 0]);
    const a = await readMask({ data: rgba, width: 4, height: 1, channels: 4 }, 'mask', { width: 4, height: 1 });
    assert.deepEqual(Array.from(a.data), [255, 128, 0, 0]);
    // The same from an encoded RGBA PNG.
    const png = await rawSharp(rgba, 4, 1, 4).png().toBuffer();
    assert.deepEqual(Array.from((await readMask(png, 'mask', { width: 4, height: 1 })).data), [255, 128, 0, 0]);
  });

  test('resized with the resize modes; blur and invert', async () => {
    // 64x32: left half white (repaint), right half black.
    const half = paint(64, 32, (x) => (x < 32 ? WHITE : [0, 0, 0]));
    const input = { data: half, width: 64, height: 32, channels: 3 as const };
    const m = await readMask(input, 'mask', { width: 32, height: 32 });
    assert.equal(m.width, 32);
    assert.equal(m.height, 32);
    assert.equal(m.data.length, 32 * 32);
    assert.ok(m.data[5] > 245 && m.data[28] < 10, 'resized: left white, right black');
    const crop = await readMask(input, 'mask', { width: 32, height: 32, resizeMode: 'crop' });
    assert.ok(crop.data[1] > 245 && crop.data[30] < 10, 'crop: columns 16..47');
    const fill = await readMask(input, 'mask', { width: 64, height: 64, resizeMode: 'fill' });
    assert.equal(fill.data[0], 255, 'fill: the band copies the edge');
    assert.equal(fill.data[63], 0);
    const sharpEdge = await readMask(input, 'mask', { width: 64, height: 32 });
    assert.deepEqual([sharpEdge.data[30], sharpEdge.data[31], sharpEdge.data[32], sharpEdge.data[33]], [255, 255, 0, 0]);
    const blurred = await readMask(input, 'mask', { width: 64, height: 32 }, { blur: 4 });
    const b = (x: number) => blurred.data[16 * 64 + x];
    assert.ok(b(31) > 128 && b(31) < 220 && b(32) > 35 && b(32) < 128, `blurred edge: ${b(31)}, ${b(32)}`);
    assert.ok(b(2) > 250 && b(61) < 5, 'far from the edge, unchanged');
    const inverted = await readMask(input, 'mask', { width: 64, height: 32 }, { blur: 4, invert: true });
    assert.deepEqual(Array.from(inverted.data), Array.from(blurred.data).map((v) => 255 - v));
    const noBlur = await readMask(input, 'mask', { width: 64, height: 32 }, { blur: 0, invert: false });
    assert.deepEqual(Buffer.from(noBlur.data), Buffer.from(sharpEdge.data));
  });
});

/** A PNG header claiming `width` x `height`, with a tiny (wrong) IDAT: enough for sharp's metadata. */
function hugePngHeader(width: number, height: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8;
  ihdr[9] = 2;
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.alloc(100))), chunk('IEND', new Uint8Array(0))]);
}

describe('bad inputs are typed errors naming the option', () => {
  test('not an image, empty, missing file, truncated', async () => {
    await assert.rejects(readImage(Buffer.from('hello, not an image'), 'initImage'), typed(ImageFormatError, 'initImage', /cannot decode the image .*expected an 8-bit PNG, JPEG/));
    await assert.rejects(readMask(Buffer.from('nope'), 'mask', { width: 8, height: 8 }), typed(ImageFormatError, 'mask', /cannot decode/));
    await assert.rejects(readImage(Buffer.alloc(0), 'initImage'), typed(InvalidArgumentError, 'initImage', /empty buffer/));
    const missing = path.join(work, 'no-such.png');
    await assert.rejects(readImage(missing, 'initImage'), (e: unknown) => {
      typed(IoError, 'initImage', /cannot open .*no-such\.png: no such file/)(e);
      assert.equal((e as IoError).file, missing);
      return true;
    });
    await assert.rejects(readImage(work, 'initImage'), typed(IoError, 'initImage', /is a folder/));
    const png = await rawSharp(halves, 16, 8).png().toBuffer();
    await assert.rejects(readImage(png.subarray(0, 60), 'initImage'), typed(ImageFormatError, 'initImage', /cannot decode/));
    await assert.rejects(readImage(42 as never, 'initImage'), typed(InvalidArgumentError, 'initImage', /an image must be a file path, a Buffer/));
    await assert.rejects(readImage(null as never, 'initImage'), typed(InvalidArgumentError, 'initImage', /received null/));
  });

  test('16-bit and CMYK images ask for 8-bit RGB', async () => {
    const png16 = await rawSharp(halves, 16, 8).toColourspace('rgb16').png().toBuffer();
    assert.equal((await sharp(png16).metadata()).depth, 'ushort');
    await assert.rejects(readImage(png16, 'initImage'), typed(ImageFormatError, 'initImage', /16-bit; expected an 8-bit image/));
    await assert.rejects(readMask(sharp(png16), 'mask', { width: 4, height: 4 }), typed(ImageFormatError, 'mask', /16-bit/));
    const cmyk = await rawSharp(halves, 16, 8).toColourspace('cmyk').jpeg().toBuffer();
    assert.equal((await sharp(cmyk).metadata()).space, 'cmyk');
    await assert.rejects(readImage(cmyk, 'initImage'), typed(ImageFormatError, 'initImage', /CMYK; expected an RGB or grayscale image/));
  });

  test('bad RawImages: zero size, wrong data length, bad channels, not bytes', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ data: new Uint8Array(0), width: 0, height: 4, channels: 3 }, /width must be a positive integer; received 0/],
      [{ data: new Uint8Array(12), width: 2, height: 2.5, channels: 3 }, /height must be a positive integer; received 2.5/],
      [{ data: new Uint8Array(11), width: 2, height: 2, channels: 3 }, /data must be width \* height \* channels = 12 bytes; received "11 bytes"/],
      [{ data: new Uint8Array(8), width: 2, height: 2, channels: 2 }, /channels must be 1, 3 or 4; received 2/],
      [{ data: [1, 2, 3], width: 1, height: 1, channels: 3 }, /data must be a Uint8Array/],
    ];
    for (const [input, pattern] of cases) {
      await assert.rejects(readImage(input as never, 'initImage'), typed(InvalidArgumentError, 'initImage', pattern));
      await assert.rejects(readMask(input as never, 'mask', { width: 8, height: 8 }), typed(InvalidArgumentError, 'mask', pattern));
    }
  });

  test('images over the pixel limit', async () => {
    assert.equal(MAX_INPUT_PIXELS, 8192 * 8192);
    const limit = new RegExp(`must be at most ${MAX_INPUT_PIXELS} pixels .*received 8193x8192`);
    await assert.rejects(readImage({ data: new Uint8Array(1), width: 8193, height: 8192, channels: 1 }, 'initImage'), typed(InvalidArgumentError, 'initImage', limit));
    const huge = hugePngHeader(8193, 8192);
    await assert.rejects(readImage(huge, 'initImage'), typed(InvalidArgumentError, 'initImage', limit));
    await assert.rejects(readImage(sharp(huge), 'initImage'), typed(InvalidArgumentError, 'initImage', limit));
    await assert.rejects(readImage({ data: halves, width: 16, height: 8, channels: 3 }, 'initImage', { width: 8193, height: 8192 }), typed(InvalidArgumentError, 'initImage', /the target size must be at most/));
  });

  test('bad targets and mask options', async () => {
    const img = { data: halves, width: 16, height: 8, channels: 3 as const };
    const cases: Array<[unknown, RegExp]> = [
      [{ width: 0, height: 8 }, /target.width must be a positive integer; received 0/],
      [{ width: 8, height: 1.5 }, /target.height must be a positive integer; received 1.5/],
      [{ width: 8, height: '8' }, /target.height must be a positive integer; received "8"/],
      [{ width: 8, height: 8, resizeMode: 'stretch' }, /target.resizeMode must be one of "resize", "crop", "fill"; received "stretch"/],
      [{ width: 8, height: 8, mode: 'crop' }, /target must be an object with only width, height and resizeMode; received "mode"/],
      [[8, 8], /target must be an object/],
    ];
    for (const [target, pattern] of cases) {
      await assert.rejects(readImage(img, 'initImage', target as never), typed(InvalidArgumentError, 'initImage', pattern));
      await assert.rejects(readMask(img, 'mask', target as never), typed(InvalidArgumentError, 'mask', pattern));
    }
    await assert.rejects(readMask(img, 'mask', undefined as never), typed(InvalidArgumentError, 'mask', /target must be an object/));
    for (const blur of [-1, 0.1, 1001, Number.NaN, '2']) {
      await assert.rejects(readMask(img, 'mask', { width: 8, height: 8 }, { blur: blur as never }), typed(InvalidArgumentError, 'mask', /blur must be 0 \(no blur\) or a number of pixels from 0.3 to 1000/));
    }
    await assert.rejects(readMask(img, 'mask', { width: 8, height: 8 }, { invert: 1 as never }), typed(InvalidArgumentError, 'mask', /invert must be a boolean; received 1/));
    await assert.rejects(readMask(img, 'mask', { width: 8, height: 8 }, { feather: 2 } as never), typed(InvalidArgumentError, 'mask', /only blur and invert; received "feather"/));
  });
});

const PARAMS = 'a cat, "quoted", ✓ 日本語 🐱\nNegative prompt: dog\nSteps: 2, CFG scale: 7.000000, Seed: 5, Size: 32x16, Model: m, RNG: cuda, Sampler: Euler, Schedule type: Karras, Version: sdnode 0.1.0';

describe('JPEG and WebP outputs', () => {
  const px = paint(32, 16, (x, y) => [x * 8, y * 16, 128]);

  test('decode to pixels near the source; the parameters round-trip through readParameters', async () => {
    const outputs: Array<[string, Buffer, number]> = [
      ['jpeg', await encodeJPEG(px, 32, 16, { parameters: PARAMS }), 12],
      ['jpeg q100', await encodeJPEG(px, 32, 16, { quality: 100, parameters: PARAMS }), 6],
      ['webp', await encodeWebP(px, 32, 16, { parameters: PARAMS }), 16],
      ['webp lossless', await encodeWebP(px, 32, 16, { lossless: true, parameters: PARAMS }), 0],
    ];
    for (const [label, buf, tol] of outputs) {
      const { data, info } = await sharp(buf).raw().toBuffer({ resolveWithObject: true });
      assert.equal(info.width, 32, label);
      assert.equal(info.height, 16, label);
      let worst = 0;
      for (let i = 0; i < px.length; i++) worst = Math.max(worst, Math.abs(data[i] - px[i]));
      assert.ok(worst <= tol + 8, `${label}: largest difference ${worst}`);
      let sum = 0;
      for (let i = 0; i < px.length; i++) sum += Math.abs(data[i] - px[i]);
      assert.ok(sum / px.length <= Math.max(tol / 3, 0.001) + (tol ? 1 : 0), `${label}: mean difference ${sum / px.length}`);
      // sharp (libexif) finds the EXIF block.
      assert.ok((await sharp(buf).metadata()).exif, `${label}: sharp sees the EXIF block`);
      const back = await readParameters(buf);
      assert.ok(back, label);
      assert.equal(back.text, PARAMS, label);
      assert.equal(back.options.prompt, 'a cat, "quoted", ✓ 日本語 🐱');
      assert.equal(back.options.sampler, 'euler');
      // A1111's layout: UNICODE\0 then UTF-16 big-endian.
      const needle = Buffer.concat([Buffer.from('UNICODE\0', 'latin1'), Buffer.from('a cat', 'utf16le').swap16()]);
      assert.ok(buf.includes(needle), `${label}: UNICODE + UTF-16BE in the file`);
    }
  });

  test('WebP: an extended file with the EXIF flag set; JPEG: an Exif APP1 segment after SOI/JFIF', async () => {
    const webp = await encodeWebP(px, 32, 16, { parameters: 'p' });
    assert.equal(webp.toString('latin1', 12, 16), 'VP8X');
    assert.equal(webp[20] & 0x08, 0x08);
    assert.equal(webp.readUIntLE(24, 3), 31, 'canvas width - 1');
    assert.equal(webp.readUIntLE(27, 3), 15, 'canvas height - 1');
    assert.equal(webp.readUInt32LE(4), webp.length - 8, 'RIFF size');
    const jpeg = await encodeJPEG(px, 32, 16, { parameters: 'p' });
    const app1 = jpeg.indexOf(Buffer.from([0xff, 0xe1]));
    assert.ok(app1 >= 2 && app1 < 40);
    assert.equal(jpeg.toString('latin1', app1 + 4, app1 + 10), 'Exif\0\0');
  });

  test('no parameters: no EXIF; defaults: quality 90, lossy WebP', async () => {
    assert.equal(DEFAULT_JPEG_QUALITY, 90);
    assert.equal(DEFAULT_WEBP_QUALITY, 90);
    const plain = await encodeJPEG(px, 32, 16);
    assert.equal((await sharp(plain).metadata()).exif, undefined);
    assert.equal(await readParameters(plain), null);
    assert.deepEqual(plain, await encodeJPEG(px, 32, 16, { quality: 90 }));
    assert.deepEqual(await encodeWebP(px, 32, 16), await encodeWebP(px, 32, 16, { quality: 90, lossless: false }));
    assert.equal(await readParameters(await encodeWebP(px, 32, 16)), null);
  });

  test('bad arguments are InvalidArgumentErrors', async () => {
    await assert.rejects(encodeJPEG(px, 32, 16, { quality: 0 }), /quality must be an integer from 1 to 100; received 0/);
    await assert.rejects(encodeWebP(px, 32, 16, { quality: 101 }), InvalidArgumentError);
    await assert.rejects(encodeWebP(px, 32, 16, { lossless: 'yes' as never }), /lossless must be a boolean/);
    await assert.rejects(encodeJPEG(px, 32, 15), /rgb must be width \* height \* 3 = 1440 bytes; received "1536 bytes"/);
    await assert.rejects(encodeJPEG(px, 32, 16, { parameters: 'x'.repeat(40000) }), /parameters must fit a JPEG's EXIF segment/);
  });
});

function resolved(over: Partial<ResolvedGenerateOptions> = {}): ResolvedGenerateOptions {
  return {
    prompt: 'a red cat, (sitting:1.2)\nsecond line',
    negativePrompt: 'blurry, dog',
    width: 64,
    height: 48,
    steps: 7,
    cfgScale: 6.5,
    sampler: 'dpm++2m',
    scheduler: 'karras',
    sigmas: [],
    lmsMaxOrder: 4,
    eta: 0.25,
    seed: 1234,
    rng: 'cpu',
    clipSkip: 2,
    batchSize: 1,
    returnLatents: false,
    mode: 'txt2img',
    decoder: 'vae',
    vaeTiling: false,
    ...over,
  };
}

describe('readParameters', () => {
  test('a PNG, JPEG, WebP and sharp view from makeImage(): every field parametersText writes round-trips', async () => {
    const o = resolved();
    const text = parametersText(o, 987654321, 'model.safetensors', true, '0.1.0');
    const img = makeImage(paint(8, 8, () => RED), 8, 8, 987654321, text);
    const file = path.join(work, 'made.png');
    fs.writeFileSync(file, img.toPNG());
    for (const [label, input] of [
      ['png', img.toPNG()],
      ['png path', file],
      ['jpeg', await img.toJPEG()],
      ['jpeg q50', await img.toJPEG({ quality: 50 })],
      ['webp', await img.toWebP()],
      ['webp lossless', await img.toWebP({ lossless: true })],
    ] as const) {
      const p = await readParameters(input);
      assert.ok(p, label);
      assert.equal(p.text, text, label);
      assert.deepEqual(p.options, {
        prompt: o.prompt,
        negativePrompt: o.negativePrompt,
        steps: 7,
        cfgScale: 6.5,
        eta: 0.25,
        seed: 987654321,
        width: 64,
        height: 48,
        rng: 'cpu',
        sampler: 'dpm++2m',
        scheduler: 'karras',
        clipSkip: 2,
      }, label);
      assert.deepEqual(p.extra, { Model: 'model.safetensors', Version: 'sdnode 0.1.0' }, label);
    }
    const s = await img.toSharp().raw().toBuffer({ resolveWithObject: true });
    assert.equal(s.info.width, 8);
    assert.deepEqual(Buffer.from(s.data), Buffer.from(img.data));
    assert.deepEqual(Array.from((await readImage(img.toSharp(), 'initImage')).data), Array.from(img.data));
    const webpPixels = await sharp(await img.toWebP({ lossless: true })).raw().toBuffer();
    assert.deepEqual(Buffer.from(webpPixels), Buffer.from(img.data));
  });

  test('every sampler and schedule name sdnode writes maps back', () => {
    for (const sampler of SAMPLERS) {
      for (const scheduler of SCHEDULERS) {
        const text = parametersText(resolved({ sampler, scheduler, eta: 0 }), 1, 'm', false, '0.1.0');
        const { options, extra } = parseParameters(text);
        assert.equal(options.sampler, sampler, text);
        assert.equal(options.scheduler, scheduler, text);
        assert.equal(options.eta, undefined, 'eta 0 is not written');
        assert.equal(options.clipSkip, undefined, 'clip skip not given is not written');
        assert.deepEqual(Object.keys(extra).sort(), ['Model', 'Version']);
      }
    }
    assert.equal(A1111_SAMPLER_NAMES.euler_a, 'Euler a');
  });

  test('A1111 texts: quoted values with commas, unknown fields, old-style sampler names, A1111 RNG and img2img fields', () => {
    const text = [
      'masterpiece, 1girl',
      'second prompt line',
      'Negative prompt: lowres, bad hands',
      'more negative',
      'Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, Model hash: abc123, Model: sd15, ' +
        'Denoising strength: 0.6, Clip skip: 2, RNG: NV, Lora hashes: "a: 1, b: 2", TI hashes: "x: \\"y\\"", ENSD: 31337, Version: v1.6.0',
    ].join('\n');
    const { options, extra } = parseParameters(text);
    assert.deepEqual(options, {
      prompt: 'masterpiece, 1girl\nsecond prompt line',
      negativePrompt: 'lowres, bad hands\nmore negative',
      steps: 30,
      sampler: 'dpm++2m',
      scheduler: 'karras',
      cfgScale: 7.5,
      seed: 42,
      width: 512,
      height: 768,
      strength: 0.6,
      clipSkip: 2,
      rng: 'cuda',
    });
    assert.deepEqual(extra, {
      'Model hash': 'abc123',
      Model: 'sd15',
      'Lora hashes': 'a: 1, b: 2',
      'TI hashes': 'x: "y"',
      ENSD: '31337',
      Version: 'v1.6.0',
    });
    // A sampler A1111 has and sdnode does not stays in extra; a schedule type of A1111's maps.
    const other = parseParameters('p\nSteps: 20, Sampler: UniPC, Schedule type: Align Your Steps, CFG scale: 7, Seed: 1');
    assert.equal(other.options.sampler, undefined);
    assert.equal(other.extra.Sampler, 'UniPC');
    assert.equal(other.options.scheduler, 'ays');
    // A last line with fewer than 3 fields is part of the prompt (as A1111 reads it).
    assert.deepEqual(parseParameters('a cat\nstyle: oil').options, { prompt: 'a cat\nstyle: oil' });
    // A value that does not parse goes to extra.
    const bad = parseParameters('p\nSteps: many, Seed: 3, Size: big, CFG scale: 7');
    assert.deepEqual(bad.options, { prompt: 'p', seed: 3, cfgScale: 7 });
    assert.deepEqual(bad.extra, { Steps: 'many', Size: 'big' });
  });

  test('the hires fix round-trips: txt2img + hires writes its strength as "Denoising strength", img2img + hires as "Hires denoising strength"', () => {
    const hires = { width: 128, height: 96, steps: 3, strength: 0.45, upscaler: 'latent-bicubic' as const, sigmas: [] };
    const txt = parametersText(resolved({ hires }), 1, 'm', false, '0.1.0');
    assert.match(txt, /Hires upscaler: Latent \(bicubic\), Denoising strength: 0\.450000/);
    const t = parseParameters(txt);
    assert.deepEqual(t.options.hires, { width: 128, height: 96, steps: 3, strength: 0.45, upscaler: 'latent-bicubic' });
    assert.equal(t.options.strength, undefined, 'a txt2img + hires text has no img2img strength');
    assert.deepEqual(Object.keys(t.extra).sort(), ['Model', 'Version']);

    const img = parametersText(resolved({ mode: 'img2img', strength: 0.6, maskBlur: 4, hires: { ...hires, upscaler: 'lanczos', strength: 0.3 } }), 1, 'm', false, '0.1.0');
    assert.match(img, /Denoising strength: 0\.600000, Mask blur: 4, .*Hires denoising strength: 0\.300000/);
    const i = parseParameters(img);
    assert.equal(i.options.strength, 0.6);
    assert.equal(i.options.maskBlur, 4);
    assert.deepEqual(i.options.hires, { width: 128, height: 96, steps: 3, strength: 0.3, upscaler: 'lanczos' });
    assert.deepEqual(Object.keys(i.extra).sort(), ['Model', 'Version']);

    // Every upscaler name sdnode writes maps back; so does "Image CFG scale".
    for (const upscaler of HIRES_UPSCALERS) {
      const { options } = parseParameters(parametersText(resolved({ hires: { ...hires, upscaler } }), 1, 'm', false, '0.1.0'));
      assert.equal(options.hires?.upscaler, upscaler);
    }
    assert.equal(parseParameters(parametersText(resolved({ mode: 'edit', imageCfgScale: 1.5 }), 1, 'm', false, '0.1.0')).options.imageCfgScale, 1.5);
    // A txt2img text with a denoising strength and no hires field stays an img2img strength.
    assert.deepEqual(parseParameters('p\nSteps: 20, Seed: 1, Denoising strength: 0.4').options, { prompt: 'p', steps: 20, seed: 1, strength: 0.4 });
  });

  test('A1111 hires texts: "Hires upscale" is the scale, a 0 side of "Hires resize" is left out, other upscalers stay in extra', () => {
    const a1111 = parseParameters(
      'castle on a hill\nNegative prompt: fog\n' +
        'Steps: 25, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 77, Size: 512x512, Model hash: 0123abcd, Model: sd15, ' +
        'Denoising strength: 0.55, Hires upscale: 1.5, Hires steps: 12, Hires upscaler: Latent (nearest-exact), Version: v1.9.4',
    );
    assert.deepEqual(a1111.options, {
      prompt: 'castle on a hill',
      negativePrompt: 'fog',
      steps: 25,
      sampler: 'euler_a',
      scheduler: 'karras',
      cfgScale: 6,
      seed: 77,
      width: 512,
      height: 512,
      hires: { scale: 1.5, steps: 12, strength: 0.55, upscaler: 'latent-nearest-exact' },
    });
    assert.deepEqual(a1111.extra, { 'Model hash': '0123abcd', Model: 'sd15', Version: 'v1.9.4' });
    // A resize with one side computed by A1111 (0), a pixel upscaler sdnode does not have, extra hires fields.
    const other = parseParameters(
      'p\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 3, Size: 512x768, Denoising strength: 0.3, ' +
        'Hires resize: 1024x0, Hires upscaler: R-ESRGAN 4x+, Hires sampler: Euler, Hires CFG Scale: 5',
    );
    assert.deepEqual(other.options.hires, { width: 1024, strength: 0.3 });
    assert.equal(other.options.strength, undefined);
    assert.deepEqual(other.extra, { 'Hires upscaler': 'R-ESRGAN 4x+', 'Hires sampler': 'Euler', 'Hires CFG Scale': '5' });
    // Both a size and a scale: the size is what generate() takes; the scale stays in extra. Bad values go to extra.
    const both = parseParameters('p\nSteps: 20, Seed: 3, Hires upscale: 2, Hires resize: 768x768, Hires steps: many, Image CFG scale: x, Mask blur: 4');
    assert.deepEqual(both.options, { prompt: 'p', steps: 20, seed: 3, maskBlur: 4, hires: { width: 768, height: 768 } });
    assert.deepEqual(both.extra, { 'Hires upscale': '2', 'Hires steps': 'many', 'Image CFG scale': 'x' });
    assert.deepEqual(parseParameters('p\nSteps: 20, Seed: 3, Hires resize: 0x0, Hires upscale: 2').options.hires, { scale: 2 });
  });

  test('PNG text chunks: tEXt, zTXt, iTXt (plain and compressed), eXIf', async () => {
    const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const base = encodePNG(paint(2, 2, () => RED), 2, 2);
    const ihdr = base.subarray(8, 8 + 25);
    const rest = base.subarray(8 + 25);
    const png = (...chunks: Buffer[]) => Buffer.concat([sig, ihdr, ...chunks, rest]);
    const key = Buffer.from('parameters\0', 'latin1');
    const text = 'prompt ✓\nSteps: 3, Seed: 9, CFG scale: 5';
    const cases: Array<[string, Buffer]> = [
      ['zTXt', chunk('zTXt', Buffer.concat([key, Buffer.from([0]), deflateSync(Buffer.from('prompt\nSteps: 3, Seed: 9, CFG scale: 5', 'latin1'))]))],
      ['iTXt', chunk('iTXt', Buffer.concat([key, Buffer.from([0, 0]), Buffer.from('en\0\0'), Buffer.from(text, 'utf8')]))],
      ['iTXt compressed', chunk('iTXt', Buffer.concat([key, Buffer.from([1, 0]), Buffer.from('\0\0'), deflateSync(Buffer.from(text, 'utf8'))]))],
      ['eXIf', chunk('eXIf', userCommentExif(text))],
    ];
    for (const [label, c] of cases) {
      const p = await readParameters(png(chunk('tEXt', Buffer.from('Software\0other', 'latin1')), c));
      assert.ok(p, label);
      assert.equal(p.text, label === 'zTXt' ? 'prompt\nSteps: 3, Seed: 9, CFG scale: 5' : text, label);
      assert.deepEqual({ steps: p.options.steps, seed: p.options.seed, cfgScale: p.options.cfgScale }, { steps: 3, seed: 9, cfgScale: 5 }, label);
    }
    assert.equal((await readParameters(encodePNG(paint(2, 2, () => RED), 2, 2, { parameters: 'x' })))?.text, 'x');
  });

  test('EXIF UserComment variants: UTF-16 in both byte orders and both TIFF orders, ASCII, no prefix', async () => {
    const text = 'a cat ✓\nSteps: 4, Seed: 2, CFG scale: 3';
    /** A TIFF like userCommentExif's, in the given byte order, with the given UserComment bytes. */
    const tiff = (le: boolean, comment: Buffer) => {
      const be = userCommentExif('');
      const out = Buffer.alloc(be.length + comment.length);
      be.copy(out);
      comment.copy(out, be.length - 8);
      // Rewrite the header and the entries' numbers in the wanted order.
      const w16 = (o: number, v: number) => (le ? out.writeUInt16LE(v, o) : out.writeUInt16BE(v, o));
      const w32 = (o: number, v: number) => (le ? out.writeUInt32LE(v, o) : out.writeUInt32BE(v, o));
      out.write(le ? 'II' : 'MM', 0, 'latin1');
      w16(2, 42); w32(4, 8); w16(8, 1); w16(10, 0x8769); w16(12, 4); w32(14, 1); w32(18, 26); w32(22, 0);
      w16(26, 1); w16(28, 0x9286); w16(30, 7); w32(32, comment.length); w32(36, 44); w32(40, 0);
      return out.subarray(0, 44 + comment.length);
    };
    const utf16le = Buffer.from(text, 'utf16le');
    const utf16be = Buffer.from(text, 'utf16le').swap16();
    const U = Buffer.from('UNICODE\0', 'latin1');
    const variants: Array<[string, Buffer]> = [
      ['MM + UTF-16BE (A1111)', tiff(false, Buffer.concat([U, utf16be]))],
      ['II + UTF-16LE', tiff(true, Buffer.concat([U, utf16le]))],
      ['II + UTF-16BE (piexif in a little-endian file)', tiff(true, Buffer.concat([U, utf16be]))],
      ['MM + UTF-16LE', tiff(false, Buffer.concat([U, utf16le]))],
      ['BOM', tiff(false, Buffer.concat([U, Buffer.from([0xff, 0xfe]), utf16le]))],
      ['ASCII prefix (UTF-8 body)', tiff(true, Buffer.concat([Buffer.from('ASCII\0\0\0', 'latin1'), Buffer.from(text, 'utf8')]))],
      ['no prefix', tiff(false, Buffer.from(text, 'utf8'))],
      ['undefined prefix', tiff(false, Buffer.concat([Buffer.alloc(8), Buffer.from(text, 'utf8'), Buffer.alloc(3)]))],
    ];
    const px = paint(8, 8, () => BLUE);
    const jpeg = await encodeJPEG(px, 8, 8, { parameters: 'placeholder' });
    const webp = await encodeWebP(px, 8, 8, { parameters: 'placeholder' });
    const { insertJpegExif, insertWebpExif } = await import('../lib/exif.ts');
    for (const [label, block] of variants) {
      const uc = findUserComment(block);
      assert.ok(uc, label);
      assert.equal(decodeUserComment(uc.bytes, uc.littleEndian), text, label);
      for (const file of [insertJpegExif(jpeg, block), insertWebpExif(webp, block, 8, 8)]) {
        const p = await readParameters(file);
        assert.equal(p?.text, text, label);
        assert.equal(p?.options.steps, 4, label);
      }
    }
    // A WebP EXIF chunk with the "Exif\0\0" prefix some writers add.
    const prefixed = insertWebpExif(webp, Buffer.concat([Buffer.from('Exif\0\0', 'latin1'), userCommentExif(text)]), 8, 8);
    assert.equal((await readParameters(prefixed))?.text, text);
    // Converted by sharp with keepExif: an AVIF (read through sharp's metadata) and a PNG (its eXIf chunk).
    const source = await encodeJPEG(px, 8, 8, { parameters: text });
    assert.equal((await readParameters(await sharp(source).keepExif().avif().toBuffer()))?.text, text, 'AVIF');
    assert.equal((await readParameters(await sharp(source).keepExif().png().toBuffer()))?.text, text, 'PNG eXIf');
  });

  test('null without parameters; errors for a missing file or non-image data', async () => {
    const px = paint(4, 4, () => RED);
    assert.equal(await readParameters(encodePNG(px, 4, 4)), null);
    assert.equal(await readParameters(await rawSharp(px, 4, 4).jpeg().toBuffer()), null);
    assert.equal(await readParameters(await rawSharp(px, 4, 4).webp().toBuffer()), null);
    assert.equal(await readParameters(await rawSharp(px, 4, 4).gif().toBuffer()), null);
    assert.equal(await readParameters(encodePNG(px, 4, 4, { comment: 'not parameters' })), null);
    await assert.rejects(readParameters(path.join(work, 'none.png')), (e: unknown) => e instanceof IoError && /readParameters: cannot open .*none\.png: no such file/.test(e.message));
    await assert.rejects(readParameters(Buffer.from('plain text, not an image')), (e: unknown) => e instanceof ImageFormatError && /^readParameters: /.test(e.message));
    await assert.rejects(readParameters(42 as never), InvalidArgumentError);
  });
});

test('the index exports the image I/O API', () => {
  for (const name of ['readImage', 'readMask', 'readParameters', 'encodeJPEG', 'encodeWebP', 'RESIZE_MODES', 'DEFAULT_RESIZE_MODE', 'MAX_INPUT_PIXELS']) {
    assert.ok(name in api, name);
  }
  assert.equal(api.readImage, readImage);
});
