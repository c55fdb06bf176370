/**
 * PNG output with text metadata, and a small PNG reader for round trips. 8-bit RGB only is
 * written; the reader accepts 8-bit gray, RGB and RGBA without interlace (what sdnode and most
 * tools write).
 * @module
 */
import * as zlib from 'node:zlib';
import { deflateSync, inflateSync } from 'node:zlib';

// Node >= 20.15 has a native crc32.
const zlibCrc32 = (zlib as { crc32?: unknown }).crc32;
import { ImageFormatError, InvalidArgumentError } from './errors.ts';

const SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (ISO-HDLC, as zip and PNG use it), continuing from `crc`. */
export function crc32(data: Uint8Array, crc = 0): number {
  const fast = (zlibCrc32 as ((d: Uint8Array, v?: number) => number) | undefined);
  if (fast) return fast(data, crc) >>> 0;
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** One PNG chunk (length, type, data, CRC). */
export function chunk(type: string, data: Uint8Array): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(data.length, 0);
  head.write(type, 4, 'latin1');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(data, crc32(head.subarray(4, 8))), 0);
  return Buffer.concat([head, data, crc]);
}

/** Text chunks: Latin-1 text goes in tEXt (what A1111 readers expect); anything else in iTXt as UTF-8. */
function textChunk(key: string, value: string): Buffer {
  if (!/^[\x20-\x7e\xa1-\xff]{1,79}$/.test(key)) {
    throw new InvalidArgumentError(`PNG text key must be 1-79 Latin-1 characters; received ${JSON.stringify(key)}`);
  }
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\xff]*$/.test(value)) return chunk('tEXt', Buffer.concat([Buffer.from(key, 'latin1'), Buffer.from([0]), Buffer.from(value, 'latin1')]));
  return chunk(
    'iTXt',
    Buffer.concat([Buffer.from(key, 'latin1'), Buffer.from([0, 0, 0, 0, 0]), Buffer.from(value, 'utf8')]),
  );
}

/**
 * Encodes 8-bit RGB pixels (row-major, `width * height * 3` bytes) as PNG with optional text
 * chunks (e.g. `{ parameters: '...' }`, the key A1111 and stable-diffusion.cpp use).
 */
export function encodePNG(
  pixels: Uint8Array,
  width: number,
  height: number,
  text: Record<string, string> = {},
  channels: 3 | 4 = 3,
): Buffer {
  if (!Number.isSafeInteger(width) || !Number.isSafeInteger(height) || width < 1 || height < 1) {
    throw new InvalidArgumentError(`PNG size must be positive integers; received ${width}x${height}`);
  }
  const stride = width * channels;
  if (pixels.length !== stride * height) {
    throw new InvalidArgumentError(
      `PNG pixel data must be ${stride * height} bytes for ${width}x${height}x${channels}; received ${pixels.length}`,
    );
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = channels === 3 ? 2 : 6; // color type: RGB / RGBA
  // Filter each row with "Sub" (type 1): cheap and compresses photos well.
  const raw = Buffer.alloc((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    const o = y * (stride + 1);
    const row = y * stride;
    raw[o] = 1;
    for (let x = 0; x < stride; x++) {
      const left = x >= channels ? pixels[row + x - channels] : 0;
      raw[o + 1 + x] = (pixels[row + x] - left) & 0xff;
    }
  }
  const parts = [SIGNATURE, chunk('IHDR', ihdr)];
  for (const [k, v] of Object.entries(text)) parts.push(textChunk(k, v));
  parts.push(chunk('IDAT', deflateSync(raw, { level: 6 })), chunk('IEND', new Uint8Array(0)));
  return Buffer.concat(parts);
}

/** A decoded PNG: pixels row-major, `channels` bytes per pixel. */
export interface DecodedPNG {
  width: number;
  height: number;
  channels: 1 | 3 | 4;
  data: Uint8Array;
  text: Record<string, string>;
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/**
 * Largest image {@link decodePNG} accepts, in pixels (width x height): 64 Mpx, e.g. 8192 x 8192,
 * four times the engine's largest image (4096 x 4096). A header claiming more is rejected before
 * anything is inflated, so a small file cannot make the decoder allocate more than about
 * 256 MB (64 Mpx of RGBA).
 */
export const MAX_PNG_PIXELS = 8192 * 8192;

/**
 * Decodes an 8-bit, non-interlaced gray/RGB/RGBA PNG and its text chunks.
 *
 * Image data is inflated only up to what the header's size needs, so a compression bomb (a small
 * file whose data inflates to gigabytes) costs no more memory than an honest image of that size.
 * @throws {ImageFormatError} the data is not a PNG, is truncated or corrupt (bad CRC, bad zlib
 *   data, unknown filter), larger than {@link MAX_PNG_PIXELS}, or of a kind this reader does not
 *   read (palette, 16-bit, interlaced).
 * @throws {InvalidArgumentError} `png` is not a Uint8Array.
 */
export function decodePNG(png: Uint8Array): DecodedPNG {
  if (!(png instanceof Uint8Array)) {
    throw new InvalidArgumentError(`png must be a Uint8Array or Buffer; received ${png === null ? 'null' : typeof png}`);
  }
  const buf = Buffer.from(png.buffer, png.byteOffset, png.byteLength);
  const bad = (why: string, cause?: unknown): never => {
    throw new ImageFormatError(`not a PNG sdnode can read: ${why}`, cause === undefined ? undefined : { cause });
  };
  if (buf.length < 8 || !buf.subarray(0, 8).equals(SIGNATURE)) bad('missing PNG signature');
  let pos = 8;
  let width = 0;
  let height = 0;
  let channels: 1 | 3 | 4 = 3;
  const idat: Buffer[] = [];
  const text: Record<string, string> = {};
  let ended = false;
  while (pos < buf.length) {
    if (pos + 12 > buf.length) bad(`truncated chunk header at byte ${pos}`);
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    if (!/^[A-Za-z]{4}$/.test(type)) bad(`invalid chunk type at byte ${pos}`);
    if (len > 0x7fffffff || pos + 12 + len > buf.length) bad(`chunk ${type} runs past the end`);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (crc32(data, crc32(buf.subarray(pos + 4, pos + 8))) !== buf.readUInt32BE(pos + 8 + len)) bad(`chunk ${type} CRC mismatch`);
    if (pos === 8 && type !== 'IHDR') bad(`the first chunk is ${type}, not IHDR`);
    if (type === 'IHDR') {
      if (pos !== 8) bad('more than one IHDR');
      if (len !== 13) bad(`IHDR is ${len} bytes, not 13`);
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      if (width === 0 || height === 0 || width > 0x7fffffff || height > 0x7fffffff) bad(`invalid size ${width}x${height}`);
      if (width * height > MAX_PNG_PIXELS) bad(`${width}x${height} is more than ${MAX_PNG_PIXELS} pixels`);
      if (data[8] !== 8) bad(`bit depth ${data[8]}`);
      const ct = data[9];
      channels = ct === 0 ? 1 : ct === 2 ? 3 : ct === 6 ? 4 : bad(`color type ${ct}`);
      if (data[10] !== 0) bad(`compression method ${data[10]}`);
      if (data[11] !== 0) bad(`filter method ${data[11]}`);
      if (data[12] !== 0) bad(data[12] === 1 ? 'interlaced' : `interlace method ${data[12]}`);
    } else if (type === 'IDAT') {
      idat.push(data);
    } else if (type === 'tEXt') {
      const z = data.indexOf(0);
      if (z > 0) text[data.toString('latin1', 0, z)] = data.toString('latin1', z + 1);
    } else if (type === 'iTXt') {
      const z = data.indexOf(0);
      if (z > 0 && data[z + 1] === 0) {
        const lang = data.indexOf(0, z + 3);
        const trans = lang >= 0 ? data.indexOf(0, lang + 1) : -1;
        if (trans >= 0) text[data.toString('latin1', 0, z)] = data.toString('utf8', trans + 1);
      }
    } else if (type === 'IEND') {
      ended = true;
      break;
    }
    pos += 12 + len;
  }
  if (width === 0 || height === 0) bad('no IHDR');
  if (idat.length === 0) bad('no IDAT');
  if (!ended) bad('truncated: no IEND chunk');
  const stride = width * channels;
  const expected = (stride + 1) * height;
  let raw: Buffer;
  try {
    // Inflate no more than the header's size needs: a compression bomb stops here.
    raw = inflateSync(Buffer.concat(idat), { maxOutputLength: expected });
  } catch (e) {
    if ((e as { code?: unknown }).code === 'ERR_BUFFER_TOO_LARGE') {
      return bad(`image data inflates to more than the ${expected} bytes a ${width}x${height} image needs`, e);
    }
    return bad(`corrupt image data (${e instanceof Error ? e.message : String(e)})`, e);
  }
  if (raw.length < expected) bad(`image data too short: ${raw.length} of ${expected} bytes`);
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    if (f > 4) bad(`filter type ${f} in row ${y}`);
    const src = y * (stride + 1) + 1;
    const dst = y * stride;
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[dst + x - channels] : 0;
      const b = y > 0 ? out[dst - stride + x] : 0;
      const c = x >= channels && y > 0 ? out[dst - stride + x - channels] : 0;
      const v = raw[src + x];
      out[dst + x] = (f === 0 ? v : f === 1 ? v + a : f === 2 ? v + b : f === 3 ? v + ((a + b) >> 1) : v + paeth(a, b, c)) & 0xff;
    }
  }
  return { width, height, channels, data: out, text };
}
