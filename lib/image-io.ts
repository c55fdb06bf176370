/**
 * Image inputs (init images, masks) in any form sharp reads, and JPEG/WebP outputs with the A1111
 * `parameters` text in EXIF UserComment. Decoding, resizing and encoding are sharp's (libvips);
 * flattening, gray expansion and mask luminance are done here, on 8-bit pixels, so their results
 * are exact and documented.
 * @module
 */
import fs from 'node:fs/promises';
import sharp, { type Metadata, type OutputInfo, type Sharp } from 'sharp';
import { ImageFormatError, InvalidArgumentError, IoError, SdError } from './errors.ts';
import { insertJpegExif, insertWebpExif, userCommentExif } from './exif.ts';
import { MAX_PNG_PIXELS } from './image.ts';
import type { RawImage } from './model.ts';
import { describe, isInteger, isObject } from './validate.ts';

/**
 * An image to read: a file path; the bytes of an encoded image (PNG, JPEG, WebP, AVIF, TIFF, GIF:
 * anything sharp reads; an animation's first frame); 8-bit raw pixels ({@link RawImage}); or a
 * sharp instance (its pipeline's output is the image).
 */
export type ImageInput = string | Buffer | Uint8Array | RawImage | Sharp;

/**
 * How an image of another size is fitted to the target size (A1111's img2img "Resize mode"):
 * - `'resize'` ("Just resize"): stretched to the size, the aspect ratio is not kept.
 * - `'crop'` ("Crop and resize"): scaled to cover the size, then center-cropped.
 * - `'fill'` ("Resize and fill"): scaled to fit inside, then the empty bands are filled by
 *   stretching the image's edge pixels outwards.
 */
export type ResizeMode = 'resize' | 'crop' | 'fill';
/** Every {@link ResizeMode}. */
export const RESIZE_MODES: readonly ResizeMode[] = ['resize', 'crop', 'fill'];
/** The resize mode when none is given: `'resize'`, A1111's default ("Just resize"). */
export const DEFAULT_RESIZE_MODE: ResizeMode = 'resize';

/**
 * Largest image read, in pixels (width x height, before and after resizing): 64 Mpx, e.g.
 * 8192 x 8192 (the PNG reader's limit, four times the engine's largest image). Larger images are
 * refused before their pixels are decoded.
 */
export const MAX_INPUT_PIXELS = MAX_PNG_PIXELS;

/** Largest mask blur sigma, in pixels (sharp's limit). */
export const MAX_MASK_BLUR = 1000;
/** Smallest non-zero mask blur sigma, in pixels (sharp's limit). */
export const MIN_MASK_BLUR = 0.3;

/** JPEG quality when none is given (1 to 100). */
export const DEFAULT_JPEG_QUALITY = 90;
/** WebP quality when none is given (1 to 100; ignored when lossless). */
export const DEFAULT_WEBP_QUALITY = 90;

/** The size an input is fitted to. */
export interface ImageTarget {
  width: number;
  height: number;
  /** @default {@link DEFAULT_RESIZE_MODE} ('resize') */
  resizeMode?: ResizeMode;
}

/** Options of {@link readMask}. */
export interface MaskOptions {
  /** Gaussian blur sigma in pixels (A1111's "Mask blur"): 0 (none), or 0.3 to 1000. @default 0 */
  blur?: number;
  /** Flip the mask (255 - value), after blurring. @default false */
  invert?: boolean;
}

/** Decoded pixels: RGBA, 8-bit, row-major. */
interface Rgba {
  data: Uint8Array;
  width: number;
  height: number;
}

/** `<option>: <what> must be <expected>; received <value>`, the one message shape, with the option first. */
function invalidIn(option: string, what: string, expected: string, received: unknown): never {
  throw new InvalidArgumentError(`${option}: ${what} must be ${expected}; received ${describe(received)}`);
}

const isSharp = (v: unknown): v is Sharp => v instanceof (sharp as unknown as new () => Sharp);

const FORMATS = 'PNG, JPEG, WebP, AVIF, TIFF or GIF';

/** A sharp failure as a typed error naming the option; never the raw sharp Error. */
function sharpError(option: string, e: unknown, what = 'cannot decode the image'): SdError {
  if (e instanceof SdError) return e;
  const message = e instanceof Error ? e.message : String(e);
  if (/pixel limit/i.test(message)) {
    return new InvalidArgumentError(`${option}: the image must be at most ${MAX_INPUT_PIXELS} pixels (width x height); sharp: ${message}`, { cause: e });
  }
  return new ImageFormatError(`${option}: ${what} (${message.trim()}); expected an 8-bit ${FORMATS} image`, { cause: e });
}

function checkPixels(option: string, width: number, height: number, what = 'the image'): void {
  if (width * height > MAX_INPUT_PIXELS) {
    throw new InvalidArgumentError(`${option}: ${what} must be at most ${MAX_INPUT_PIXELS} pixels (width x height); received ${width}x${height}`);
  }
}

/** A RawImage, checked: 8-bit data of exactly width * height * channels bytes. Gray and RGB expanded to RGBA. */
function rawToRgba(option: string, v: RawImage): Rgba {
  const o = v as unknown as Record<string, unknown>;
  if (!(o.data instanceof Uint8Array)) invalidIn(option, 'data', 'a Uint8Array (or Buffer) of 8-bit pixels', o.data);
  for (const side of ['width', 'height'] as const) {
    if (!isInteger(o[side]) || (o[side] as number) < 1) invalidIn(option, side, 'a positive integer', o[side]);
  }
  const { width, height, channels } = v;
  if (channels !== 1 && channels !== 3 && channels !== 4) invalidIn(option, 'channels', '1, 3 or 4', channels);
  checkPixels(option, width, height);
  const want = width * height * channels;
  if (v.data.length !== want) invalidIn(option, 'data', `width * height * channels = ${want} bytes`, `${v.data.length} bytes`);
  if (channels === 4) return { data: v.data, width, height };
  const out = new Uint8Array(width * height * 4);
  const src = v.data;
  for (let i = 0, j = 0; j < out.length; i += channels, j += 4) {
    out[j] = src[i];
    out[j + 1] = src[i + (channels === 3 ? 1 : 0)];
    out[j + 2] = src[i + (channels === 3 ? 2 : 0)];
    out[j + 3] = 255;
  }
  return { data: out, width, height };
}

/** Reads a file for an input option; failures are IoErrors naming the option and the file. */
async function readInputFile(option: string, file: string): Promise<Buffer> {
  if (file.length === 0 || file.includes('\0')) invalidIn(option, 'a file path', 'a non-empty string without NUL characters', file);
  try {
    return await fs.readFile(file);
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : code === 'EACCES' ? 'permission denied' : (e as Error).message;
    throw new IoError(`${option}: cannot open ${file}: ${why}; expected an image file (${FORMATS})`, { file, cause: e });
  }
}

/**
 * Any input as 8-bit RGBA at its own size, EXIF orientation applied. 16-bit and CMYK images are
 * refused (ImageFormatError), as are images over {@link MAX_INPUT_PIXELS} (InvalidArgumentError).
 */
async function decodeInput(option: string, input: ImageInput): Promise<Rgba> {
  let s: Sharp;
  let file: string | undefined;
  let encoded: Uint8Array | undefined;
  if (typeof input === 'string') {
    file = input;
    encoded = await readInputFile(option, input);
    s = sharp(encoded, { limitInputPixels: MAX_INPUT_PIXELS });
  } else if (input instanceof Uint8Array) {
    if (input.length === 0) invalidIn(option, 'the image data', 'an encoded image (' + FORMATS + ')', 'an empty buffer');
    encoded = input;
    s = sharp(input, { limitInputPixels: MAX_INPUT_PIXELS });
  } else if (isSharp(input)) {
    s = input.clone();
  } else if (isObject(input)) {
    return rawToRgba(option, input as unknown as RawImage);
  } else {
    return invalidIn(option, 'an image', `a file path, a Buffer/Uint8Array of an encoded image (${FORMATS}), a RawImage { data, width, height, channels } or a sharp instance`, input);
  }
  const where = file === undefined ? '' : ` (${file})`;
  let meta: Metadata;
  try {
    meta = await s.metadata();
  } catch (e) {
    // Over sharp's pixel limit: read the header again without the limit to say the size (header only).
    if (encoded && /pixel limit/i.test(e instanceof Error ? e.message : '')) {
      const size = await sharp(encoded, { limitInputPixels: false }).metadata().catch(() => undefined);
      if (size?.width !== undefined && size.height !== undefined) checkPixels(option, size.width, size.height, `the image${where}`);
    }
    throw sharpError(option, e, `cannot decode the image${where}`);
  }
  if (meta.depth !== undefined && meta.depth !== 'uchar' && meta.depth !== 'char') {
    const bits = meta.depth === 'ushort' || meta.depth === 'short' ? '16-bit' : `${meta.depth} (not 8-bit)`;
    throw new ImageFormatError(`${option}: the image${where} is ${bits}; expected an 8-bit image (8 bits per channel: convert it to 8-bit first)`, { file });
  }
  if (meta.space === 'cmyk') {
    throw new ImageFormatError(`${option}: the image${where} is CMYK; expected an RGB or grayscale image (convert it to RGB first)`, { file });
  }
  if (meta.width !== undefined && meta.height !== undefined) checkPixels(option, meta.width, meta.height, `the image${where}`);
  let out: { data: Buffer; info: OutputInfo };
  try {
    out = await s.autoOrient().toColourspace('srgb').ensureAlpha().raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw sharpError(option, e, `cannot decode the image${where}`);
  }
  const { width, height, channels } = out.info;
  checkPixels(option, width, height);
  if (channels !== 4 || out.data.length !== width * height * 4) {
    throw new ImageFormatError(`${option}: the image${where} decoded to ${channels} channels; expected an RGB, RGBA or grayscale image`, { file });
  }
  return { data: out.data, width, height };
}

/** Checks a target `{ width, height, resizeMode? }`: positive integers (the engine checks its own limits). */
function checkTarget(option: string, target: unknown, required: boolean): Required<ImageTarget> | undefined {
  if (target === undefined && !required) return undefined;
  if (!isObject(target)) return invalidIn(option, 'target', 'an object { width, height, resizeMode? }', target);
  for (const k of Object.keys(target)) {
    if (k !== 'width' && k !== 'height' && k !== 'resizeMode') invalidIn(option, 'target', 'an object with only width, height and resizeMode', k);
  }
  for (const side of ['width', 'height'] as const) {
    if (!isInteger(target[side]) || (target[side] as number) < 1) invalidIn(option, `target.${side}`, 'a positive integer', target[side]);
  }
  const { width, height } = target as { width: number; height: number };
  checkPixels(option, width, height, 'the target size');
  const mode = target.resizeMode ?? DEFAULT_RESIZE_MODE;
  if (!(RESIZE_MODES as readonly unknown[]).includes(mode)) {
    invalidIn(option, 'target.resizeMode', `one of ${RESIZE_MODES.map((m) => JSON.stringify(m)).join(', ')}`, mode);
  }
  return { width, height, resizeMode: mode as ResizeMode };
}

/**
 * Fits `channels`-channel 8-bit pixels to the target with sharp (Lanczos 3, as A1111's LANCZOS).
 * 'fill' scales to fit inside, centers the image (A1111's offsets: `H/2 - h/2`, floored each) and
 * fills the bands with copies of the edge rows or columns.
 */
async function fit(
  option: string,
  data: Uint8Array,
  width: number,
  height: number,
  channels: 1 | 3,
  target: Required<ImageTarget>,
): Promise<Uint8Array> {
  const { width: W, height: H, resizeMode } = target;
  let s = sharp(data, { raw: { width, height, channels }, limitInputPixels: MAX_INPUT_PIXELS });
  if (resizeMode === 'resize') s = s.resize(W, H, { fit: 'fill' });
  else if (resizeMode === 'crop') s = s.resize(W, H, { fit: 'cover', position: 'centre' });
  else {
    // Fit inside: the side whose ratio is tighter is filled exactly.
    const wide = W / H < width / height;
    const sw = wide ? W : Math.max(1, Math.min(W, Math.round((width * H) / height)));
    const sh = wide ? Math.max(1, Math.min(H, Math.round((height * W) / width))) : H;
    const top = Math.floor(H / 2) - Math.floor(sh / 2);
    const left = Math.floor(W / 2) - Math.floor(sw / 2);
    s = s.resize(sw, sh, { fit: 'fill' });
    if (sw !== W || sh !== H) s = s.extend({ top, bottom: H - sh - top, left, right: W - sw - left, extendWith: 'copy' });
  }
  if (channels === 1) s = s.toColourspace('b-w');
  try {
    const { data: out, info } = await s.raw().toBuffer({ resolveWithObject: true });
    if (info.width !== W || info.height !== H || info.channels !== channels) {
      throw new ImageFormatError(`${option}: resizing gave ${info.width}x${info.height}x${info.channels}; expected ${W}x${H}x${channels}`);
    }
    return out;
  } catch (e) {
    throw sharpError(option, e, 'cannot resize the image');
  }
}

const same = (img: { width: number; height: number }, t: { width: number; height: number } | undefined) =>
  t === undefined || (t.width === img.width && t.height === img.height);

/**
 * Reads an image input as 8-bit RGB: decoded (any {@link ImageInput}), EXIF orientation
 * applied, transparency flattened onto **white** (A1111's img2img background; a pixel with
 * alpha `a` becomes `(v * a + 255 * (255 - a)) / 255`, rounded), gray expanded to RGB, and
 * fitted to `target` with its resize mode when given and of another size (no target: the image's
 * own size).
 * @param option the option's name, for error messages (e.g. `'initImage'`).
 * @throws {InvalidArgumentError} a bad RawImage (zero size, wrong data length, channels not 1, 3
 *   or 4), a bad target, an image over {@link MAX_INPUT_PIXELS}.
 * @throws {ImageFormatError} data that is not an image sharp reads, a 16-bit or CMYK image.
 * @throws {IoError} a path that cannot be read.
 */
export async function readImage(input: ImageInput, option: string, target?: ImageTarget): Promise<RawImage & { channels: 3 }> {
  const t = checkTarget(option, target, false);
  const img = await decodeInput(option, input);
  const n = img.width * img.height;
  let rgb: Uint8Array = new Uint8Array(n * 3);
  const src = img.data;
  for (let i = 0, j = 0; i < n * 4; i += 4, j += 3) {
    const a = src[i + 3];
    if (a === 255) {
      rgb[j] = src[i];
      rgb[j + 1] = src[i + 1];
      rgb[j + 2] = src[i + 2];
    } else {
      const bg = 255 * (255 - a);
      rgb[j] = Math.round((src[i] * a + bg) / 255);
      rgb[j + 1] = Math.round((src[i + 1] * a + bg) / 255);
      rgb[j + 2] = Math.round((src[i + 2] * a + bg) / 255);
    }
  }
  if (t && !same(img, t)) rgb = await fit(option, rgb, img.width, img.height, 3, t);
  return { data: rgb, width: t?.width ?? img.width, height: t?.height ?? img.height, channels: 3 };
}

/**
 * Reads an inpainting mask as one 8-bit channel: white (255) = repaint, black (0) = keep. The
 * value is the luminance `(299 R + 587 G + 114 B) / 1000` (ITU-R 601, as PIL's `convert('L')`
 * that A1111 uses; a gray image's own values), times `alpha / 255` when the image has
 * transparency (transparent = keep), rounded. Then it is fitted to `target` with the same resize
 * mode rules as {@link readImage}, blurred, and inverted when asked.
 * @param option the option's name, for error messages (e.g. `'mask'`).
 * @throws the errors of {@link readImage}; InvalidArgumentError for bad `opts`.
 */
export async function readMask(input: ImageInput, option: string, target: ImageTarget, opts?: MaskOptions): Promise<RawImage & { channels: 1 }> {
  const t = checkTarget(option, target, true)!;
  if (opts !== undefined && !isObject(opts)) invalidIn(option, 'mask options', 'an object { blur?, invert? }', opts);
  for (const k of Object.keys(opts ?? {})) {
    if (k !== 'blur' && k !== 'invert') invalidIn(option, 'mask options', 'an object with only blur and invert', k);
  }
  const blur = opts?.blur ?? 0;
  if (typeof blur !== 'number' || !Number.isFinite(blur) || (blur !== 0 && (blur < MIN_MASK_BLUR || blur > MAX_MASK_BLUR))) {
    invalidIn(option, 'blur', `0 (no blur) or a number of pixels from ${MIN_MASK_BLUR} to ${MAX_MASK_BLUR}`, blur);
  }
  const invert = opts?.invert ?? false;
  if (typeof invert !== 'boolean') invalidIn(option, 'invert', 'a boolean', invert);
  const img = await decodeInput(option, input);
  const n = img.width * img.height;
  let mask: Uint8Array = new Uint8Array(n);
  const src = img.data;
  for (let i = 0, j = 0; j < n; i += 4, j++) {
    mask[j] = Math.round(((299 * src[i] + 587 * src[i + 1] + 114 * src[i + 2]) * src[i + 3]) / 255000);
  }
  if (!same(img, t)) mask = await fit(option, mask, img.width, img.height, 1, t);
  if (blur > 0) {
    try {
      mask = await sharp(mask, { raw: { width: t.width, height: t.height, channels: 1 } }).blur(blur).toColourspace('b-w').raw().toBuffer();
    } catch (e) {
      throw sharpError(option, e, 'cannot blur the mask');
    }
  }
  if (invert) for (let i = 0; i < mask.length; i++) mask[i] = 255 - mask[i];
  return { data: mask, width: t.width, height: t.height, channels: 1 };
}

function checkRgb(rgb: unknown, width: unknown, height: unknown): asserts rgb is Uint8Array {
  for (const [name, v] of [['width', width], ['height', height]] as const) {
    if (!isInteger(v) || (v as number) < 1) invalidIn('image', name, 'a positive integer', v);
  }
  if (!(rgb instanceof Uint8Array)) invalidIn('image', 'rgb', 'a Uint8Array of 8-bit RGB pixels', rgb);
  const want = (width as number) * (height as number) * 3;
  if (rgb.length !== want) invalidIn('image', 'rgb', `width * height * 3 = ${want} bytes`, `${rgb.length} bytes`);
}

function checkQuality(v: unknown, fallback: number): number {
  if (v === undefined) return fallback;
  if (!isInteger(v) || v < 1 || v > 100) invalidIn('image', 'quality', 'an integer from 1 to 100', v);
  return v;
}

function checkParameters(v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string') invalidIn('image', 'parameters', 'a string', v);
  return v;
}

const rawRgb = (rgb: Uint8Array, width: number, height: number) => sharp(rgb, { raw: { width, height, channels: 3 } });

/**
 * Encodes 8-bit RGB pixels (row-major, `width * height * 3` bytes) as JPEG (4:2:0, sharp's
 * libjpeg) with, when given, the `parameters` text in EXIF UserComment as A1111 writes it
 * (`UNICODE\0` + UTF-16BE in a big-endian TIFF), which A1111's PNG Info reads.
 * @param options.quality 1 to 100. @default {@link DEFAULT_JPEG_QUALITY} (90)
 * @throws {InvalidArgumentError} a bad size, data length or quality; parameters too long for a
 *   JPEG's 64 KB EXIF segment (about 32,700 characters).
 */
export async function encodeJPEG(rgb: Uint8Array, width: number, height: number, options: { quality?: number; parameters?: string } = {}): Promise<Buffer> {
  checkRgb(rgb, width, height);
  const quality = checkQuality(options.quality, DEFAULT_JPEG_QUALITY);
  const parameters = checkParameters(options.parameters);
  let jpeg: Buffer;
  try {
    jpeg = await rawRgb(rgb, width, height).jpeg({ quality }).toBuffer();
  } catch (e) {
    throw sharpError('image', e, 'cannot encode JPEG');
  }
  return parameters === undefined ? jpeg : insertJpegExif(jpeg, userCommentExif(parameters));
}

/**
 * Encodes 8-bit RGB pixels as WebP with, when given, the `parameters` text in EXIF UserComment
 * (A1111's layout, in the RIFF `EXIF` chunk of an extended-format file).
 * @param options.quality 1 to 100 (lossy only). @default {@link DEFAULT_WEBP_QUALITY} (90)
 * @param options.lossless @default false
 * @throws {InvalidArgumentError} a bad size, data length, quality or lossless flag.
 */
export async function encodeWebP(
  rgb: Uint8Array,
  width: number,
  height: number,
  options: { quality?: number; lossless?: boolean; parameters?: string } = {},
): Promise<Buffer> {
  checkRgb(rgb, width, height);
  const quality = checkQuality(options.quality, DEFAULT_WEBP_QUALITY);
  const lossless = options.lossless ?? false;
  if (typeof lossless !== 'boolean') invalidIn('image', 'lossless', 'a boolean', lossless);
  const parameters = checkParameters(options.parameters);
  if (width > 16383 || height > 16383) invalidIn('image', 'size', 'at most 16383 x 16383 for WebP', `${width}x${height}`);
  let webp: Buffer;
  try {
    webp = await rawRgb(rgb, width, height).webp({ quality, lossless }).toBuffer();
  } catch (e) {
    throw sharpError('image', e, 'cannot encode WebP');
  }
  return parameters === undefined ? webp : insertWebpExif(webp, userCommentExif(parameters), width, height);
}

/** A sharp instance reading 8-bit RGB pixels (row-major, `width * height * 3` bytes). */
export function rgbToSharp(rgb: Uint8Array, width: number, height: number): Sharp {
  checkRgb(rgb, width, height);
  return rawRgb(rgb, width, height);
}
