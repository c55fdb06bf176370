/**
 * Reading the A1111 `parameters` text back from an image and parsing it into `generate()`
 * options.
 * @module
 */
import fs from 'node:fs/promises';
import { inflateSync } from 'node:zlib';
import sharp, { type Metadata } from 'sharp';
import { ImageFormatError, IoError } from './errors.ts';
import { decodeUserComment, findJpegExif, findUserComment, findWebpExif } from './exif.ts';
import { A1111_SAMPLER_NAMES, A1111_SCHEDULE_NAMES, A1111_UPSCALER_NAMES, type GenerateOptions, type HiresOptions, type HiresUpscaler } from './generate.ts';
import { HIRES_UPSCALERS } from './engine-tables.ts';
import { RNGS, SAMPLERS, SCHEDULERS, SCHEDULER_ALIASES, type Rng, type Sampler, type Scheduler } from './options.ts';
import { invalid } from './validate.ts';

/** generate() options read from a parameters text. */
export type ParsedGenerateOptions = Partial<GenerateOptions> & {
  /** "Denoising strength" of an img2img run (of a txt2img run with the hires fix, that is `hires.strength`). */
  strength?: number;
  /** The hires fix: "Hires resize" or "Hires upscale", "Hires steps", "Hires upscaler" and its denoising strength. */
  hires?: HiresOptions;
};

/** What {@link readParameters} found. */
export interface ImageParameters {
  /** The parameters text as stored. */
  text: string;
  /** The fields that map to generate() options. */
  options: ParsedGenerateOptions;
  /** Every other field ("Model", "Version", "Model hash", ...), and fields whose value did not parse, as written (unquoted). */
  extra: Record<string, string>;
}

/** Largest text chunk inflated (zTXt, compressed iTXt): 16 MiB. */
const MAX_TEXT_BYTES = 16 << 20;

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** The `parameters` text of a PNG (tEXt, zTXt, iTXt), else its eXIf chunk's UserComment; undefined if neither. */
function pngParameters(buf: Buffer): string | undefined {
  let pos = 8;
  let exif: Buffer | undefined;
  const inflate = (data: Buffer) => inflateSync(data, { maxOutputLength: MAX_TEXT_BYTES });
  while (pos + 12 <= buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    if (pos + 12 + len > buf.length) break;
    const data = buf.subarray(pos + 8, pos + 8 + len);
    pos += 12 + len;
    if (type === 'IEND') break;
    if (type === 'eXIf') exif ??= data;
    if (type !== 'tEXt' && type !== 'zTXt' && type !== 'iTXt') continue;
    const z = data.indexOf(0);
    if (z < 0 || data.toString('latin1', 0, z) !== 'parameters') continue;
    try {
      if (type === 'tEXt') return data.toString('latin1', z + 1);
      if (type === 'zTXt') return inflate(data.subarray(z + 2)).toString('latin1');
      // iTXt: keyword\0 flag method language\0 translated-keyword\0 text (UTF-8)
      const compressed = data[z + 1] === 1;
      const lang = data.indexOf(0, z + 3);
      const trans = lang < 0 ? -1 : data.indexOf(0, lang + 1);
      if (trans < 0) continue;
      const body = data.subarray(trans + 1);
      return (compressed ? inflate(body) : body).toString('utf8');
    } catch {
      continue; // a corrupt chunk: look on
    }
  }
  return exif ? exifParameters(exif) : undefined;
}

function exifParameters(tiff: Buffer | undefined): string | undefined {
  if (!tiff) return undefined;
  const uc = findUserComment(tiff);
  if (!uc) return undefined;
  const text = decodeUserComment(uc.bytes, uc.littleEndian);
  return text.length > 0 ? text : undefined;
}

/** The parameters text of encoded image bytes, or undefined. */
async function textOf(buf: Buffer, file: string | undefined): Promise<string | undefined> {
  if (buf.length >= 8 && buf.subarray(0, 8).equals(PNG_SIGNATURE)) return pngParameters(buf);
  if (buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) return exifParameters(findJpegExif(buf));
  if (buf.length >= 12 && buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') {
    return exifParameters(findWebpExif(buf));
  }
  // Other formats sharp reads (AVIF, TIFF, HEIF, ...): their EXIF block, if any.
  let meta: Metadata;
  try {
    meta = await sharp(buf).metadata();
  } catch (e) {
    throw new ImageFormatError(
      `readParameters: ${file ?? 'the data'} is not an image sharp reads (${e instanceof Error ? e.message : String(e)}); expected a PNG, JPEG, WebP or other image file`,
      { file, cause: e },
    );
  }
  return exifParameters(meta.exif);
}

/**
 * Reads the A1111 `parameters` text of an image and parses it into generate() options. Where it
 * looks: a PNG's `parameters` text chunk (tEXt, zTXt or iTXt), else its eXIf chunk; a JPEG's or
 * WebP's EXIF UserComment (`UNICODE` with UTF-16 in either byte order, `ASCII`, or no prefix);
 * other formats' EXIF UserComment via sharp.
 * @param input a file path, or the file's bytes.
 * @returns null when the image has no parameters text.
 * @throws {IoError} the file cannot be read.
 * @throws {ImageFormatError} the data is not an image.
 * @throws {InvalidArgumentError} `input` is not a string, Buffer or Uint8Array.
 */
export async function readParameters(input: string | Buffer | Uint8Array): Promise<ImageParameters | null> {
  let buf: Buffer;
  let file: string | undefined;
  if (typeof input === 'string') {
    if (input.length === 0 || input.includes('\0')) invalid('readParameters input', 'a file path without NUL characters', input);
    file = input;
    try {
      buf = await fs.readFile(input);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      const why = code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : (e as Error).message;
      throw new IoError(`readParameters: cannot open ${input}: ${why}`, { file: input, cause: e });
    }
  } else if (input instanceof Uint8Array) {
    buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  } else {
    return invalid('readParameters input', 'a file path, a Buffer or a Uint8Array', input);
  }
  const text = await textOf(buf, file);
  if (text === undefined) return null;
  return { text, ...parseParameters(text) };
}

/**
 * One `Key: value` field of the last line: the key starts with a word character and holds word
 * characters, spaces, `-` and `/` (as A1111's `re_param`); the value is a double-quoted JSON-style
 * string (A1111 quotes values with commas) or runs to the next comma.
 */
const FIELD = /\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)/g;

function fields(line: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  FIELD.lastIndex = 0;
  for (let m = FIELD.exec(line); m !== null; m = FIELD.exec(line)) {
    if (m[0] === '') {
      FIELD.lastIndex++;
      continue;
    }
    let value = m[2].trim();
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
      try {
        const v: unknown = JSON.parse(value);
        if (typeof v === 'string') value = v;
      } catch {
        // A1111 keeps a value that does not unquote as written.
      }
    }
    out.push([m[1].trim(), value]);
  }
  return out;
}

const invert = <K extends string>(table: Partial<Record<K, string>>): Map<string, K> =>
  new Map(Object.entries(table).map(([k, v]) => [(v as string).toLowerCase(), k as K]));
const SAMPLER_BY_A1111 = invert(A1111_SAMPLER_NAMES);
const SCHEDULE_BY_A1111 = invert(A1111_SCHEDULE_NAMES);
const UPSCALER_BY_A1111 = invert(A1111_UPSCALER_NAMES);
/** A1111's RNG names ("GPU", "CPU", "NV": NV is the GPU generator's numbers on the CPU). */
const RNG_BY_A1111: Record<string, Rng> = { gpu: 'cuda', nv: 'cuda', cpu: 'cpu' };

function sampler(v: string): Sampler | undefined {
  if ((SAMPLERS as readonly string[]).includes(v)) return v as Sampler;
  return SAMPLER_BY_A1111.get(v.toLowerCase());
}

function scheduler(v: string): Scheduler | undefined {
  if ((SCHEDULERS as readonly string[]).includes(v) || v in SCHEDULER_ALIASES) return v as Scheduler;
  return SCHEDULE_BY_A1111.get(v.toLowerCase());
}

function upscaler(v: string): HiresUpscaler | undefined {
  if ((HIRES_UPSCALERS as readonly string[]).includes(v)) return v as HiresUpscaler;
  return UPSCALER_BY_A1111.get(v.toLowerCase());
}

/** The fields that say a run used the hires fix (A1111 writes "Hires upscaler" and a size with every one). */
const HIRES_FIELDS = new Set(['Hires resize', 'Hires upscale', 'Hires steps', 'Hires upscaler']);

const int = (v: string) => (/^-?\d+$/.test(v) && Number.isSafeInteger(Number(v)) ? Number(v) : undefined);
const num = (v: string) => (/^-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(v) ? Number(v) : undefined);

/**
 * Parses an A1111 parameters text: the prompt lines, then lines after `Negative prompt: `, then
 * a last line of `Key: value` fields (taken as fields only when it holds at least 3, as A1111
 * does). Fields that map to generate() options are converted (A1111 sampler, schedule and RNG
 * names to sdnode's); the rest go to `extra`, as are mapped fields whose value does not parse.
 * An old-style sampler name with the schedule in it ("DPM++ 2M Karras") is split when no
 * "Schedule type" is given.
 *
 * The hires fix: "Hires resize: WxH" gives `hires.width` / `hires.height` (a 0 side is left out:
 * A1111's "keep the aspect ratio"), else "Hires upscale" gives `hires.scale` (with both, the
 * scale stays in `extra`); "Hires steps" `hires.steps`; "Hires upscaler" (A1111's or sdnode's
 * names) `hires.upscaler`. Its strength: A1111 writes a txt2img run's hires strength as
 * "Denoising strength" (there is no other), sdnode writes "Hires denoising strength" when the
 * run also had an img2img strength; so with a hires field and no "Hires denoising strength",
 * "Denoising strength" is `hires.strength`, otherwise it is `strength`. "Image CFG scale" is
 * `imageCfgScale`, "Mask blur" `maskBlur`.
 */
export function parseParameters(text: string): { options: ParsedGenerateOptions; extra: Record<string, string> } {
  const lines = text.replace(/\r\n?/g, '\n').trim().split('\n');
  const last = lines.pop()!;
  let parsed = fields(last);
  if (parsed.length < 3) {
    lines.push(last);
    parsed = [];
  }
  const prompt: string[] = [];
  const negative: string[] = [];
  let inNegative = false;
  for (const raw of lines) {
    let line = raw;
    if (!inNegative && line.trimStart().startsWith('Negative prompt:')) {
      inNegative = true;
      line = line.trimStart().slice('Negative prompt:'.length).trim();
    }
    (inNegative ? negative : prompt).push(line);
  }
  const options: ParsedGenerateOptions = { prompt: prompt.join('\n').trim() };
  if (inNegative) options.negativePrompt = negative.join('\n').trim();
  const extra: Record<string, string> = {};
  let samplerText: string | undefined;
  let hasSchedule = false;
  const keys = new Set(parsed.map(([key]) => key));
  const isHires = [...keys].some((key) => HIRES_FIELDS.has(key));
  const denoisingIsHires = isHires && !keys.has('Hires denoising strength');
  const hires: HiresOptions = {};
  for (const [key, value] of parsed) {
    let ok = true;
    switch (key) {
      case 'Steps':
        ok = (options.steps = int(value)) !== undefined;
        break;
      case 'CFG scale':
        ok = (options.cfgScale = num(value)) !== undefined;
        break;
      case 'Seed':
        ok = (options.seed = int(value)) !== undefined;
        break;
      case 'Size': {
        const m = /^(\d+)x(\d+)$/.exec(value);
        ok = m !== null;
        if (m) {
          options.width = Number(m[1]);
          options.height = Number(m[2]);
        }
        break;
      }
      case 'Clip skip':
        ok = (options.clipSkip = int(value)) !== undefined;
        break;
      case 'Eta':
        ok = (options.eta = num(value)) !== undefined;
        break;
      case 'Denoising strength':
        if (denoisingIsHires) ok = (hires.strength = num(value)) !== undefined;
        else ok = (options.strength = num(value)) !== undefined;
        break;
      case 'Hires denoising strength':
        ok = (hires.strength = num(value)) !== undefined;
        break;
      case 'Hires resize': {
        // A1111 writes 0 for a side it computes from the aspect ratio.
        const m = /^(\d+)x(\d+)$/.exec(value);
        ok = m !== null && (Number(m[1]) > 0 || Number(m[2]) > 0);
        if (m && ok) {
          if (Number(m[1]) > 0) hires.width = Number(m[1]);
          if (Number(m[2]) > 0) hires.height = Number(m[2]);
        }
        break;
      }
      case 'Hires upscale':
        ok = (hires.scale = num(value)) !== undefined;
        break;
      case 'Hires steps':
        ok = (hires.steps = int(value)) !== undefined;
        break;
      case 'Hires upscaler':
        ok = (hires.upscaler = upscaler(value)) !== undefined;
        break;
      case 'Image CFG scale':
        ok = (options.imageCfgScale = num(value)) !== undefined;
        break;
      case 'Mask blur':
        ok = (options.maskBlur = num(value)) !== undefined;
        break;
      case 'RNG': {
        const r = (RNGS as readonly string[]).includes(value) ? (value as Rng) : RNG_BY_A1111[value.toLowerCase()];
        ok = (options.rng = r) !== undefined;
        break;
      }
      case 'Sampler':
        samplerText = value;
        ok = (options.sampler = sampler(value)) !== undefined;
        break;
      case 'Schedule type':
        hasSchedule = true;
        ok = (options.scheduler = scheduler(value)) !== undefined;
        break;
      default:
        ok = false;
    }
    if (!ok) extra[key] = value;
  }
  // A size wins over a scale (generate() takes one of them); the scale is kept in extra.
  if (hires.scale !== undefined && (hires.width !== undefined || hires.height !== undefined)) {
    extra['Hires upscale'] = parsed.find(([key]) => key === 'Hires upscale')![1];
    delete hires.scale;
  }
  // Failed conversions leave `undefined` behind: drop them.
  for (const k of Object.keys(hires) as Array<keyof HiresOptions>) if (hires[k] === undefined) delete hires[k];
  if (Object.keys(hires).length > 0) options.hires = hires;
  for (const k of Object.keys(options) as Array<keyof ParsedGenerateOptions>) if (options[k] === undefined) delete options[k];
  if (samplerText !== undefined && options.sampler === undefined && !hasSchedule) {
    for (const [name, schedule] of SCHEDULE_BY_A1111) {
      const lower = samplerText.toLowerCase();
      const s = lower.endsWith(` ${name}`) ? sampler(samplerText.slice(0, samplerText.length - name.length - 1)) : undefined;
      if (s) {
        options.sampler = s;
        options.scheduler = schedule;
        delete extra.Sampler;
        break;
      }
    }
  }
  return { options, extra };
}
