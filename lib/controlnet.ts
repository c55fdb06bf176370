/**
 * ControlNet: {@link loadControlNet} loads one (SD1.x / SD2.x, lllyasviel's LDM names or diffusers
 * ControlNetModel names); `generate({ controlNets: [{ model, image, ... }] })` applies it. A loaded
 * ControlNet is shared: by every generation and every model whose UNet it fits.
 * @module
 */
import path from 'node:path';
import { callNative, callNativeSync, type NativeControlNet, type NativeControlNetInfo } from './binding.ts';
import { DisposedError } from './errors.ts';
import { readImage, type ImageInput, type ResizeMode } from './image-io.ts';
import { abortFlagFor, CallbackGuard, withAbortReason } from './model.ts';
import {
  checkCallback,
  checkLimitedNumber,
  checkSignal,
  checkThreads,
  checkWeightType,
  throwIfAborted,
  type WeightType,
} from './options.ts';
import { expectKnownKeys, expectNonEmptyString, expectOptionsObject, invalid, isObject } from './validate.ts';

/** Options of {@link loadControlNet}. */
export interface LoadControlNetOptions {
  /**
   * Convert linear weights on load, as loadModel's `weightType` (convolutions stay f16).
   * @default the file's types
   * @example weightType: 'q8_0'
   */
  weightType?: WeightType;
  /** Threads converting weights on load. @default the logical CPU count */
  threads?: number;
  /**
   * Where the weights live: `'auto'`, `'cpu'` or a device name; must be where the model runs.
   * @default 'auto'
   */
  backend?: string;
  signal?: AbortSignal;
  /** Loading progress, `fraction` from 0 to 1. */
  onProgress?: (p: { fraction: number }) => void;
}

/**
 * The Canny edge detector stable-diffusion.cpp's `--canny` runs (its `preprocess_canny`), on the
 * control image after it is resized to the generation size. Thresholds are fractions of the
 * strongest edge.
 */
export interface CannyOptions {
  /** The preprocessor: `'canny'` (the only one). */
  type: 'canny';
  /** Edges at least this strong (times the strongest) are kept. @default 0.08 */
  highThreshold?: number;
  /** Weak edges: at least `lowThreshold * highThreshold` of the strongest, kept next to a strong one. @default 0.08 */
  lowThreshold?: number;
  /** The value weak edges get before hysteresis. @default 0.8 */
  weak?: number;
  /** The value of an edge pixel in the control image. @default 1 */
  strong?: number;
  /** Dark edges on white. @default false */
  inverse?: boolean;
}

/** One ControlNet of a generation (see {@link GenerateOptions.controlNets}). */
export interface ControlNetUnit {
  /** A ControlNet from {@link loadControlNet} that fits the model (same context width and channels). */
  model: ControlNet;
  /**
   * The control image (edges, depth, pose, ...): anything `initImage` takes, resized to the
   * generation size as `initImage` is (`resizeMode`).
   * @example image: 'edges.png'
   */
  image: ImageInput;
  /** How much of the ControlNet's residuals go into the UNet, 0 to 10 (0: none). @default 0.9 (stable-diffusion.cpp's --control-strength) */
  strength?: number;
  /** The fraction of the sampling steps at which it starts applying, 0 to 1. @default 0 */
  start?: number;
  /** The fraction of the sampling steps at which it stops applying, above `start`, at most 1. @default 1 */
  end?: number;
  /**
   * Make the image an edge map first: `'canny'` (stable-diffusion.cpp's `--canny` settings) or
   * `{ type: 'canny', ...thresholds }`. @default none (the image is the control image)
   * @example preprocess: { type: 'canny', highThreshold: 0.2 }
   */
  preprocess?: 'canny' | CannyOptions;
}

/** What the native side receives for each ControlNet (the image read later). */
export interface NativeControlNetRequest {
  model: NativeControlNet;
  image?: { data: Uint8Array; width: number; height: number; channels: number };
  strength?: number;
  start?: number;
  end?: number;
  canny?: Omit<CannyOptions, 'type'>;
}

/** A ControlNet as result.options reports it. */
export interface ResolvedControlNet {
  /** The file it was loaded from. */
  path: string;
  strength: number;
  start: number;
  end: number;
  /** With a preprocessor: its settings, every default filled in. */
  preprocess?: Required<CannyOptions>;
}

/**
 * A loaded ControlNet. Create with {@link loadControlNet}; free with `dispose()` or `await using`
 * (generations already running keep it until they end).
 * @example
 * ```ts
 * await using canny = await loadControlNet('control_v11p_sd15_canny.safetensors');
 * const r = await model.generate({ prompt: 'a house', controlNets: [{ model: canny, image: 'edges.png' }] });
 * ```
 */
export class ControlNet {
  /** Absolute path it was loaded from. */
  readonly path: string;
  /** The model family it fits, by its context width: `'sd1'`, `'sd2'`, `'sdxl'` or `'unknown'`. */
  readonly architecture: string;
  /** The device its weights live on. */
  readonly device: string;
  /** Known tensors it does not use, ignored. */
  readonly unusedTensors: readonly string[];
  /** What loading ignored. */
  readonly warnings: readonly string[];
  #native: NativeControlNet | undefined;
  readonly #info: NativeControlNetInfo;

  /** @internal Use {@link loadControlNet}. */
  constructor(nativeNet: NativeControlNet, file: string) {
    this.#native = nativeNet;
    this.path = file;
    this.#info = callNativeSync(() => nativeNet.info());
    this.architecture = this.#info.architecture;
    this.device = this.#info.device;
    this.unusedTensors = Object.freeze([...this.#info.unusedTensors]);
    this.warnings = Object.freeze([...this.#info.warnings]);
  }

  /** True after `dispose()`. */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  /** Bytes of weights held (copied to the device, and used in place from the mapped file). */
  get weightBytes(): { copied: number; mapped: number } {
    return { copied: this.#info.weightBytes, mapped: this.#info.mappedBytes };
  }

  /** @internal The native object; throws DisposedError naming `what` once disposed. */
  nativeFor(what: string): NativeControlNet {
    if (!this.#native) throw new DisposedError(`${what}: the ControlNet was disposed`);
    return this.#native;
  }

  /** Frees the native memory (generations already running keep it until they end). Idempotent. */
  dispose(): Promise<void> {
    this.#native?.dispose();
    this.#native = undefined;
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/**
 * Loads a ControlNet file (safetensors, GGUF, .ckpt/.pt; LDM `control_model.*` or bare names,
 * or diffusers ControlNetModel names). Every tensor's shape is checked before a weight is read.
 * @throws {ModelFormatError} a tensor is missing or of the wrong shape (named), the file is corrupt or truncated.
 * @throws {UnsupportedModelError} the file is not a ControlNet.
 * @throws {InvalidArgumentError} an option is wrong.
 * @throws {AbortError} `signal` was aborted.
 * @example
 * ```ts
 * const canny = await loadControlNet('control_v11p_sd15_canny.safetensors');
 * ```
 */
export async function loadControlNet(file: string, options?: LoadControlNetOptions): Promise<ControlNet> {
  const abs = path.resolve(expectNonEmptyString('path', file));
  const o = expectOptionsObject('options', options);
  expectKnownKeys('options', o, ['weightType', 'threads', 'backend', 'signal', 'onProgress']);
  const weightType = checkWeightType('weightType', o.weightType);
  const threads = checkThreads('threads', o.threads);
  const backend = o.backend === undefined ? undefined : expectNonEmptyString('backend', o.backend);
  const signal = checkSignal('signal', o.signal);
  const onProgress = checkCallback<(p: { fraction: number }) => void>('onProgress', o.onProgress);
  throwIfAborted(signal, 'loadControlNet');
  const { flag, cleanup } = abortFlagFor(signal);
  const guard = new CallbackGuard(onProgress, flag);
  const report = guard.callback;
  try {
    const nativeNet = await callNative((a) =>
      a.NativeControlNet.load(abs, { weightType, threads, device: backend }, report ? (fraction: number) => report({ fraction }) : undefined, flag),
    );
    guard.rethrow();
    const net = new ControlNet(nativeNet, abs);
    if (signal?.aborted) {
      await net.dispose();
      throwIfAborted(signal, 'loadControlNet');
    }
    return net;
  } catch (e) {
    guard.rethrow();
    throw withAbortReason(e, signal, 'loadControlNet');
  } finally {
    cleanup();
  }
}

const UNIT_KEYS = ['model', 'image', 'strength', 'start', 'end', 'preprocess'];
const CANNY_KEYS = ['type', 'highThreshold', 'lowThreshold', 'weak', 'strong', 'inverse'];

/** Checks generate()'s `controlNets`; the images are read later ({@link readControlImages}). */
export function checkControlNets(v: unknown): { requests: NativeControlNetRequest[]; images: ImageInput[] } | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) invalid('controlNets', 'an array of { model, image, strength?, start?, end?, preprocess? }', v);
  const requests: NativeControlNetRequest[] = [];
  const images: ImageInput[] = [];
  v.forEach((u, i) => {
    const name = `controlNets[${i}]`;
    if (!isObject(u)) invalid(name, 'an object { model, image, strength?, start?, end?, preprocess? }', u);
    const o = u as Record<string, unknown>;
    expectKnownKeys(name, o, UNIT_KEYS);
    if (!(o.model instanceof ControlNet)) invalid(`${name}.model`, 'a ControlNet from loadControlNet()', o.model);
    const image = o.image;
    if (image === undefined || image === null || (typeof image !== 'string' && typeof image !== 'object')) {
      invalid(`${name}.image`, 'a file path, an encoded image buffer, a raw image or a sharp instance', image);
    }
    const r: NativeControlNetRequest = { model: o.model.nativeFor(`${name}.model`) };
    const strength = checkLimitedNumber('controlNets.strength', o.strength, `${name}.strength`);
    const start = checkLimitedNumber('controlNets.window', o.start, `${name}.start`);
    const end = checkLimitedNumber('controlNets.window', o.end, `${name}.end`);
    if ((start ?? 0) >= (end ?? 1)) invalid(`${name}.start`, `below ${name}.end (${end ?? 1})`, start ?? 0);
    if (strength !== undefined) r.strength = strength;
    if (start !== undefined) r.start = start;
    if (end !== undefined) r.end = end;
    if (o.preprocess !== undefined) r.canny = checkCanny(`${name}.preprocess`, o.preprocess);
    requests.push(r);
    images.push(image as ImageInput);
  });
  return { requests, images };
}

function checkCanny(name: string, v: unknown): Omit<CannyOptions, 'type'> {
  if (v === 'canny') return {};
  if (!isObject(v) || (v as Record<string, unknown>).type !== 'canny') invalid(name, "'canny' or { type: 'canny', highThreshold?, lowThreshold?, weak?, strong?, inverse? }", v);
  const o = v as Record<string, unknown>;
  expectKnownKeys(name, o, CANNY_KEYS);
  const out: Omit<CannyOptions, 'type'> = {};
  for (const k of ['highThreshold', 'lowThreshold', 'weak', 'strong'] as const) {
    const x = checkLimitedNumber('canny', o[k], `${name}.${k}`);
    if (x !== undefined) out[k] = x;
  }
  if (o.inverse !== undefined) {
    if (typeof o.inverse !== 'boolean') invalid(`${name}.inverse`, 'a boolean', o.inverse);
    out.inverse = o.inverse;
  }
  return out;
}

/** Reads each control image, fitted to width x height as the init image is. Errors name the option. */
export async function readControlImages(
  checked: { requests: NativeControlNetRequest[]; images: ImageInput[] },
  width: number,
  height: number,
  resizeMode: ResizeMode,
): Promise<void> {
  for (let i = 0; i < checked.requests.length; i++) {
    const img = await readImage(checked.images[i], `controlNets[${i}].image`, { width, height, resizeMode });
    checked.requests[i].image = { data: img.data, width: img.width, height: img.height, channels: img.channels };
  }
}

/**
 * The Canny edge map generate()'s `preprocess: 'canny'` makes of a control image (the same
 * engine code, on a worker thread): white edges on black (`inverse`: black on white), 3 channels.
 * @throws {InvalidArgumentError} an option is out of range; {@link ImageFormatError} the image cannot be read.
 * @example
 * ```ts
 * const edges = await cannyEdges('photo.png', { highThreshold: 0.2 });
 * fs.writeFileSync('edges.png', encodePNG(edges.data, edges.width, edges.height));
 * ```
 */
export async function cannyEdges(
  image: ImageInput,
  options?: Omit<CannyOptions, 'type'>,
): Promise<{ data: Uint8Array; width: number; height: number; channels: 3 }> {
  const params = checkCanny('options', { type: 'canny', ...expectOptionsObject('options', options) });
  const img = await readImage(image, 'image');
  const data = await callNative((a) => a.canny(img.data, img.width, img.height, img.channels, params));
  return { data, width: img.width, height: img.height, channels: 3 };
}

/** The A1111 parameters fields of the ControlNets (sd-webui-controlnet's "ControlNet N" layout). */
export function controlNetFields(nets: readonly ResolvedControlNet[] | undefined): string[] {
  return (nets ?? []).map((c, i) => {
    const model = path.basename(c.path).replace(/\.[^.]+$/, '');
    return `ControlNet ${i}: "Module: ${c.preprocess ? 'canny' : 'none'}, Model: ${model}, Weight: ${c.strength}, ` +
      `Guidance Start: ${c.start}, Guidance End: ${c.end}"`;
  });
}
