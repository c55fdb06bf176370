/**
 * Loading a model and running work on it. A {@link Model} holds the weights in native memory
 * until {@link Model.dispose}; calls on one model run one at a time, in call order.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  callNative,
  callNativeSync,
  native,
  type NativeAbortFlag,
  type NativeCodecOptions,
  type NativeGenerateEvent,
  type NativeGenerated,
  type NativeLoadedInfo,
  type NativeModel,
  type NativeSession,
} from './binding.ts';
import { AbortError, DisposedError, IoError, fromNative } from './errors.ts';
import { checkLoras, extractLoraTags, resolveLoras, type LoraApply, type LoraInspection, type LoraSpec } from './lora.ts';
import type { ResolvedGenerateOptions } from './generate.ts';
import {
  RNGS,
  checkCallback,
  checkImageSide,
  checkPrompt,
  checkSeed,
  checkSignal,
  checkLimitedInteger,
  checkLimitedNumber,
  checkThreads,
  checkWeightType,
  expectOptionsObject,
  throwIfAborted,
  type Rng,
  type WeightType,
} from './options.ts';
import { expectIntegerInRange, expectKnownKeys, expectNonEmptyString, expectOneOf, invalid, isObject, isString } from './validate.ts';
import { ARCH_DEFAULTS, DECODERS, LIMITS, LORA_APPLY_MODES, PREDICTIONS } from './engine-tables.ts';
import { readControlImages } from './controlnet.ts';
import {
  checkGenerateOptions,
  makeImage,
  makeRgbImage,
  parametersText,
  readImageInputs,
  type GenerateEvent,
  type GenerateOptions,
  type GeneratePreview,
  type GenerateProgress,
  type GenerateResult,
} from './generate.ts';
import { version } from './version.ts';
import { checkEmbeddings } from './embeddings.ts';

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /**
   * Convert linear (matmul) weights to this type while loading. Convolution kernels stay f16,
   * norms and biases f32, embeddings keep their type — the rules stable-diffusion.cpp applies.
   * @default the file's own types
   * @example `{ weightType: 'q8_0' }`
   */
  weightType?: WeightType;
  /**
   * CPU threads for loading and computing.
   * @default systemInfo().defaultThreads
   */
  threads?: number;
  /**
   * Where to run: `'auto'` (the first GPU if one was compiled in, else the CPU), `'cpu'`, or a
   * device name from `systemInfo().devices` (e.g. `'CUDA0'`).
   * @default 'auto'
   */
  backend?: string;
  /**
   * A TAESD file (the tiny autoencoder: diffusers AutoencoderTiny names `encoder.layers.N.*` /
   * `decoder.layers.N.*`, e.g. madebyollin/taesd's `diffusion_pytorch_model.safetensors`) loaded
   * next to the model, for `decoder: 'taesd'` in {@link Model.decodeLatents} and
   * {@link Model.encodeImage}: much faster, lower quality. Its latent channels must be the model's.
   * @default none
   * @example `{ taesd: 'models/taesd.safetensors' }`
   */
  taesd?: string;
  /**
   * A standalone VAE file (LDM `encoder.*` / `decoder.*` names, with or without
   * `first_stage_model.`, or diffusers AutoencoderKL names) used instead of the checkpoint's VAE
   * everywhere; its latent channels must be the model's.
   * @default the checkpoint's VAE
   * @example `{ vae: 'models/vae-ft-mse-840000-ema-pruned.safetensors' }`
   */
  vae?: string;
  /**
   * What the UNet predicts, overriding what the file says: `'eps'` (the noise), `'v'`
   * (v-prediction: SD2.x 768-v, v-pred SDXL fine-tunes) or `'edm_v'` (v-prediction on the EDM
   * noise schedule, sigma 0.002 to 120, CosXL: samplers then default to the `exponential`
   * scheduler). Detected from metadata (`modelspec.prediction_type`, diffusers' scheduler config,
   * ...) and from the marker tensors stable-diffusion.cpp reads (`edm_vpred.sigma_max`, `v_pred`);
   * `model.warnings` says when it was assumed.
   * @default as detected
   * @example `{ prediction: 'v' }`
   */
  prediction?: (typeof PREDICTIONS)[number];
  /**
   * A folder of LoRA files: `<lora:name:weight>` in a prompt and `loras: [{ name }]` mean
   * `<loraDir>/<name>` with any of the LoRA extensions (.safetensors, .gguf, .pt, .ckpt, .pth,
   * .bin); names may hold subfolders (`style/ink`). Listed at each generation, so new files are
   * found without reloading.
   * @default none (a tag in a prompt is then an error)
   * @example `{ loraDir: 'models/lora' }`
   */
  loraDir?: string;
  /**
   * A folder of textual-inversion embeddings: every `.safetensors`, `.pt`, `.bin`, `.ckpt` and
   * `.gguf` file in it is an embedding whose trigger word is its file name without the extension
   * (case-insensitive: `EasyNegative.safetensors` answers to `easynegative` in prompts). The
   * folder is listed again for every generate() / encodePrompt() call, so new files are picked
   * up; files are read when a prompt first uses them and cached for the model's lifetime while
   * their size and modification time stay the same. A missing folder is an {@link IoError}.
   * @default none
   * @example `{ embeddingsDir: 'models/embeddings' }`
   */
  embeddingsDir?: string;
  /** Cancels loading; the promise rejects with {@link AbortError}. */
  signal?: AbortSignal;
  /** Loading progress, `fraction` from 0 to 1. */
  onProgress?: (progress: { fraction: number }) => void;
}

/** The networks between latents and images: the model's VAE, or the TAESD loaded with it. */
export type Decoder = (typeof DECODERS)[number];

/**
 * Tiled decoding / encoding, as stable-diffusion.cpp's `--vae-tiling`: the image is processed in
 * overlapping tiles blended with smootherstep weights, so the compute memory stays that of one
 * tile. `true` takes the reference's defaults.
 */
export interface VaeTilingOptions {
  /**
   * Tile side in latent pixels (x8 image pixels) when decoding; encoding uses twice this (as the
   * reference). Clipped to the latent's size.
   * @default 32 (256 image pixels)
   */
  tileSize?: number;
  /**
   * The fraction of a tile shared with its neighbour, 0 to 0.5 (the reference then adjusts it so
   * tiles fit the image exactly).
   * @default 0.5
   */
  overlap?: number;
}

/**
 * Whether latents and images go through the VAE in tiles: `'auto'` tiles only when the untiled
 * run would need more compute memory than `vaeMemoryBudget`; `true` always (the tile defaults),
 * `false` never, or the tile settings (always tiled).
 */
export type VaeTiling = boolean | 'auto' | VaeTilingOptions;

/** Options of {@link Model.decodeLatents}. */
export interface DecodeLatentsOptions {
  /**
   * `'vae'`: the model's VAE (or the `vae` file given to loadModel). `'taesd'`: the TAESD given to
   * loadModel as `taesd` (an InvalidArgumentError without one).
   * @default 'vae'
   */
  decoder?: Decoder;
  /**
   * Decode in tiles: `'auto'` when the whole latent would need more than `vaeMemoryBudget`,
   * `true` always (the defaults), `false` never, or the tile size and overlap.
   * @default 'auto'
   * @example `{ vaeTiling: { tileSize: 48, overlap: 0.25 } }`
   */
  vaeTiling?: VaeTiling;
  /**
   * With `vaeTiling: 'auto'`: the compute-buffer bytes an untiled decode (or encode) may take; past
   * it the image is done in tiles (slightly different numbers, a fraction of the memory). The
   * engine measures the need on the real graph for the size at hand (at the default, SD1.x and
   * SD2.x decode 1024x1024 whole and tile beyond; docs/performance.md lists the bytes per size).
   * @default DEFAULTS.vaeMemoryBudget (3 GiB)
   * @example `{ vaeMemoryBudget: 1024 ** 3 }`
   */
  vaeMemoryBudget?: number;
  signal?: AbortSignal;
}

/** The option names {@link checkCodecOptions} reads. */
export const CODEC_KEYS = ['decoder', 'vaeTiling', 'vaeMemoryBudget'] as const;

/** Checks `decoder`, `vaeTiling` and `vaeMemoryBudget` and gives the native codec options. */
export function checkCodecOptions(o: Record<string, unknown>): NativeCodecOptions {
  const codec: NativeCodecOptions = {};
  if (o.decoder !== undefined) codec.decoder = expectOneOf('decoder', o.decoder, DECODERS);
  const budget = checkLimitedInteger('vaeMemoryBudget', o.vaeMemoryBudget);
  if (budget !== undefined) codec.vaeMemoryBudget = budget;
  const t = o.vaeTiling;
  if (t === undefined || t === 'auto') return codec;
  if (typeof t === 'boolean') {
    if (budget !== undefined) invalid('vaeMemoryBudget', "given only with vaeTiling 'auto' (the default)", budget);
    codec.vaeTiling = t;
    return codec;
  }
  if (!isObject(t)) invalid('vaeTiling', "a boolean, 'auto' or { tileSize?, overlap? }", t);
  const to = t as Record<string, unknown>;
  expectKnownKeys('vaeTiling', to, ['tileSize', 'overlap']);
  const tileSize = checkLimitedInteger('vaeTiling.tileSize', to.tileSize);
  const overlap = checkLimitedNumber('vaeTiling.overlap', to.overlap);
  if (budget !== undefined) invalid('vaeMemoryBudget', "given only with vaeTiling 'auto' (the default)", budget);
  const tiles: { tileSize?: number; overlap?: number } = {};
  if (tileSize !== undefined) tiles.tileSize = tileSize;
  if (overlap !== undefined) tiles.overlap = overlap;
  codec.vaeTiling = tiles;
  return codec;
}

/**
 * Connects an AbortSignal to a native abort flag for the duration of one call.
 * `cleanup()` must be called when the call settles.
 */
export function abortFlagFor(signal: AbortSignal | undefined): { flag: NativeAbortFlag; cleanup: () => void } {
  const flag = new (native().AbortFlag)();
  if (!signal) return { flag, cleanup: () => {} };
  const onAbort = () => flag.abort();
  if (signal.aborted) flag.abort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return { flag, cleanup: () => signal.removeEventListener('abort', onAbort) };
}

/** Re-labels a native abort with the signal's reason as `cause`. */
export function withAbortReason(e: unknown, signal: AbortSignal | undefined, what: string): unknown {
  if (e instanceof AbortError && signal?.aborted) return new AbortError(`${what} was aborted`, { cause: signal.reason });
  return e;
}

/**
 * Wraps a user callback: it never throws into native code; the first error it throws aborts
 * the job (through `flag`) and is rethrown by {@link CallbackGuard.rethrow}.
 */
export class CallbackGuard<A> {
  #error: unknown;
  #failed = false;
  constructor(
    private readonly fn: ((arg: A) => void) | undefined,
    private readonly flag: NativeAbortFlag,
  ) {}
  get callback(): ((arg: A) => void) | undefined {
    const fn = this.fn;
    if (!fn) return undefined;
    return (arg: A) => {
      if (this.#failed) return;
      try {
        fn(arg);
      } catch (e) {
        this.#failed = true;
        this.#error = e;
        this.flag.abort();
      }
    };
  }
  rethrow(): void {
    if (this.#failed) throw this.#error;
  }
}

/** What {@link Model.encodePrompt} returns: the conditioning tensor, reusable across generations. */
export interface EncodedPrompt {
  /** Hidden states, `tokens` rows of `dim` floats. */
  data: Float32Array;
  /** 77 per chunk (prompts past 75 tokens use several chunks). */
  tokens: number;
  /** Text-encoder width (768 for SD1.x, 1024 for SD2.x, 2048 for SDXL: CLIP-L's 768 then bigG's 1280 per token). */
  dim: number;
  /** SDXL: the pooled text embedding (bigG's projected end-token state, 1280 values), the first part of the UNet's `y`. */
  pooled?: Float32Array;
  /** The token ids the prompt became (`tokens` of them): an embedding's vectors are ids from 49408 on, in the order the prompt first uses them. */
  tokenIds: Int32Array;
}

/** An 8-bit image in memory: interleaved rows, 1 (gray), 3 (RGB) or 4 (RGBA; alpha ignored) channels. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels: 1 | 3 | 4;
}

/** A latent as the VAE and the sampler see it: `channels` planes of `height` x `width` floats. */
export interface Latent {
  data: Float32Array;
  width: number;
  height: number;
  channels: number;
}

/** Options of {@link Model.encodeImage}. */
export interface EncodeImageOptions {
  /**
   * Draw the posterior sample (mean + std x noise) with noise from this seed's generator, first
   * thing, as stable-diffusion.cpp's img2img does for its init image. Without it: the mean.
   * @default undefined (the mean)
   */
  seed?: number;
  /** The generator for `seed`. @default 'cuda' */
  rng?: Rng;
  /**
   * `'vae'`: the VAE encoder. `'taesd'`: the TAESD encoder given to loadModel as `taesd` — its
   * output is the latent itself (no posterior sample: `seed` is not used, no scale factor).
   * @default 'vae'
   */
  decoder?: Decoder;
  /**
   * Encode in tiles (twice the decode tile size): `'auto'`, `true`, `false` or the tile size and
   * overlap, as {@link DecodeLatentsOptions.vaeTiling}.
   * @default 'auto'
   */
  vaeTiling?: VaeTiling;
  /** See {@link DecodeLatentsOptions.vaeMemoryBudget}. @default DEFAULTS.vaeMemoryBudget (3 GiB) */
  vaeMemoryBudget?: number;
  signal?: AbortSignal;
}

/** Options of {@link Model.encodePrompt}. */
export interface EncodePromptOptions {
  /**
   * SDXL: the text for the second text encoder (bigG) and the pooled embedding, as generate()'s.
   * @default the text
   * @example `model.encodePrompt('a watercolor painting', { prompt2: 'a lighthouse at dusk' })`
   */
  prompt2?: string;
  /**
   * Stop at this layer from the end (1 = last layer).
   * @default 1 for SD1.x, 2 for SD2.x
   */
  clipSkip?: number;
  /** LoRAs whose text-encoder modules apply, as generate()'s (`<lora:...>` tags in the text count too). @default [] */
  loras?: LoraSpec[];
  /** @default 'auto' */
  loraApply?: LoraApply;
  signal?: AbortSignal;
  /**
   * Textual-inversion embeddings beside loadModel's `embeddingsDir`, as generate()'s.
   * @default none (only the folder's)
   * @example `model.encodePrompt('a portrait, mystyle', { embeddings: [{ path: 'emb/v2.pt', trigger: 'mystyle' }] })`
   */
  embeddings?: import('./embeddings.ts').EmbeddingOption[];
}

/**
 * A loaded Stable Diffusion model. Create with {@link loadModel}; free with `dispose()` or
 * `await using`.
 * @example
 * ```ts
 * await using model = await loadModel('v1-5-pruned-emaonly.safetensors', { weightType: 'q8_0' });
 * const tokens = model.tokenize('a photo of a cat');
 * ```
 */
export class Model {
  /** Absolute path the model was loaded from. */
  readonly path: string;
  readonly architecture: NativeLoadedInfo['architecture'];
  /** The device the model runs on, e.g. `'CPU'` or `'CUDA0'`. */
  readonly device: string;
  /** What the UNet predicts: `'eps'`, `'v'` or `'edm_v'` (as detected, or loadModel's `prediction`). */
  readonly prediction: NativeLoadedInfo['prediction'];
  /**
   * The noise levels the UNet was trained with, which schedulers draw sigmas from:
   * `'discrete'` (the 1000-step DDPM table of SD1.x/SD2.x/SDXL; `fromFile` when the checkpoint's
   * own `alphas_cumprod` replaced the standard one, as in zero-terminal-SNR fine-tunes) or
   * `'edm'` (edm_v models). `sigmaMin`/`sigmaMax` bound the schedule.
   * @example `{ kind: 'discrete', sigmaMin: 0.0292, sigmaMax: 14.6146, fromFile: false }`
   */
  readonly noiseSchedule: Readonly<NativeLoadedInfo['noiseSchedule']>;
  /** Known tensors in the file that no component uses (`<component>.<name>`), ignored when loading. */
  readonly unusedTensors: readonly string[];
  /** What loading assumed or ignored (e.g. the prediction type, unused tensors). */
  readonly warnings: readonly string[];
  /** loadModel's `loraDir` (absolute), where LoRA names are looked up. */
  readonly loraDir: string | undefined;
  #native: NativeModel | undefined;
  // The session runs every call: its queue on the engine side keeps them in call order.
  #session: NativeSession | undefined;
  #disposing: Promise<void> | undefined;

  /** @internal Use {@link loadModel}. */
  constructor(nativeModel: NativeModel, modelPath: string, adapters: { loraDir?: string } = {}) {
    this.loraDir = adapters.loraDir;
    this.#native = nativeModel;
    this.#session = callNativeSync(() => nativeModel.createSession());
    this.path = modelPath;
    const info = nativeModel.info();
    this.architecture = info.architecture;
    this.device = info.device;
    this.prediction = info.prediction;
    this.noiseSchedule = Object.freeze({ ...info.noiseSchedule });
    this.unusedTensors = Object.freeze([...info.unusedTensors]);
    this.warnings = Object.freeze([...info.warnings]);
  }

  /** True after `dispose()` was called. */
  get disposed(): boolean {
    return this.#disposing !== undefined;
  }

  /** @internal The native model, or a DisposedError. */
  protected nativeModel(what: string): NativeModel {
    if (this.#disposing || !this.#native) throw new DisposedError(`${what}: the model was disposed`);
    return this.#native;
  }

  /** @internal The native session, or a DisposedError. */
  protected nativeSession(what: string): NativeSession {
    if (this.#disposing || !this.#session) throw new DisposedError(`${what}: the model was disposed`);
    return this.#session;
  }

  /**
   * Native memory, in bytes: `weights` copied into process memory, `compute` buffers, and
   * `mapped` weights used in place from the memory-mapped model file. On the CPU, weights stored
   * as they run (e.g. f16 convolution kernels of an f16 file) are mapped rather than copied:
   * they are read from the OS page cache as each layer runs and leave resident memory after use,
   * so they count toward neither `weights` nor the process's peak RSS. The file must not be
   * changed while the model is loaded; `SDNODE_MMAP=0` in the environment copies everything.
   *
   * @example
   * const { weights, compute, mapped } = model.memory();
   */
  memory(): { weights: number; compute: number; mapped: number } {
    const info = this.nativeModel('memory()').info();
    const { computeBytes } = this.nativeSession('memory()').info();
    return { weights: info.weightBytes, compute: computeBytes, mapped: info.mappedBytes };
  }

  /**
   * {@link inspectLora} against this model: which of its layers each module of the file adapts,
   * what would be ignored, and a typed error for a module whose shape does not fit.
   */
  inspectLora(loraPath: string): Promise<LoraInspection> {
    try {
      const native = this.nativeModel('inspectLora()');
      const abs = path.resolve(expectNonEmptyString('loraPath', loraPath));
      return callNative((a) => a.inspectLora(abs, native));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** @internal Hyperparameters the generation options are checked against. */
  protected loadedInfo(): NativeLoadedInfo {
    return this.nativeModel('model').info();
  }

  /**
   * CLIP token ids of a prompt as the text encoder sees them: emphasis parsed, chunks of 77
   * (start token, up to 75 tokens, end token, padding). Embedding triggers stay text here (no
   * file is read); {@link Model.encodePrompt}'s `tokenIds` has them expanded.
   * @example `model.tokenize('a photo of a cat').slice(0, 7) // [49406, 320, 1125, 539, 320, 2368, 49407]`
   */
  tokenize(text: string): number[] {
    if (!isString(text)) invalid('text', 'a string', text);
    const nativeModel = this.nativeModel('tokenize()');
    try {
      return nativeModel.tokenize(text).tokens;
    } catch (e) {
      throw fromNative(e);
    }
  }

  /**
   * The text encoder's output for a prompt, with emphasis weights applied as
   * stable-diffusion.cpp applies them.
   */
  encodePrompt(text: string, options?: EncodePromptOptions): Promise<EncodedPrompt> {
    try {
      if (!isString(text)) invalid('text', 'a string', text);
      const o = expectOptionsObject('options', options);
      expectKnownKeys('options', o, ['clipSkip', 'loras', 'loraApply', 'signal', 'embeddings', 'prompt2']);
      const clipSkip = checkLimitedInteger('clipSkip', o.clipSkip);
      const signal = checkSignal('signal', o.signal);
      const embeddings = checkEmbeddings('embeddings', o.embeddings);
      const tagged = extractLoraTags(text);
      const prompt2 = o.prompt2 === undefined ? undefined : extractLoraTags(checkPrompt('prompt2', o.prompt2)!);
      const loras = resolveLoras(checkLoras(o.loras), [...tagged.tags, ...(prompt2?.tags ?? [])], this.loraDir);
      const loraApply = o.loraApply === undefined ? undefined : expectOneOf('loraApply', o.loraApply, LORA_APPLY_MODES);
      throwIfAborted(signal, 'encodePrompt');
      const session = this.nativeSession('encodePrompt()');
      const { flag, cleanup } = abortFlagFor(signal);
      return callNative(() => session.encodePrompt(tagged.prompt, clipSkip, flag, embeddings, { loras, loraApply, prompt2: prompt2?.prompt }))
        .catch((e: unknown) => {
          throw withAbortReason(e, signal, 'encodePrompt');
        })
        .finally(cleanup);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * The VAE encoder: an image (width and height multiples of 8, 64 to 4096) to its latent, scaled
   * by the model's VAE scale factor — what image-to-image starts from.
   * @example const latent = await model.encodeImage({ data, width: 512, height: 512, channels: 3 }, { seed: 42 });
   */
  encodeImage(image: RawImage, options?: EncodeImageOptions): Promise<Latent> {
    try {
      const img = checkRawImage('image', image);
      const o = expectOptionsObject('options', options);
      expectKnownKeys('options', o, ['seed', 'rng', ...CODEC_KEYS, 'signal']);
      const seed = checkSeed('seed', o.seed);
      const rng = o.rng === undefined ? 'cuda' : expectOneOf('rng', o.rng, RNGS);
      const codec = checkCodecOptions(o);
      const signal = checkSignal('signal', o.signal);
      throwIfAborted(signal, 'encodeImage');
      const session = this.nativeSession('encodeImage()');
      const { flag, cleanup } = abortFlagFor(signal);
      return callNative(() => session.encodeImage(img.data, img.width, img.height, img.channels, seed, rng, flag, codec))
        .catch((e: unknown) => {
          throw withAbortReason(e, signal, 'encodeImage');
        })
        .finally(cleanup);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * The VAE decoder: latents as `generate({ returnLatents: true })` returns them (or as
   * {@link Model.encodeImage} gives them) to RGB images — the same bytes generate() makes with
   * the same `decoder` and `vaeTiling`.
   * @example const [image] = await model.decodeLatents(latent, { decoder: 'taesd', vaeTiling: true });
   */
  decodeLatents(latents: Latent | Latent[], options?: DecodeLatentsOptions): Promise<Array<{ data: Uint8Array; width: number; height: number; channels: 3 }>> {
    try {
      const list = Array.isArray(latents) ? latents : [latents];
      if (list.length < 1 || list.length > LIMITS.batchSize.max) invalid('latents', `1 to ${LIMITS.batchSize.max} latents`, list.length);
      const first = checkLatent('latents[0]', list[0]);
      const data = new Float32Array(first.data.length * list.length);
      list.forEach((l, i) => {
        const x = checkLatent(`latents[${i}]`, l);
        if (x.width !== first.width || x.height !== first.height || x.channels !== first.channels) {
          invalid(`latents[${i}]`, `the shape of latents[0] (${first.width}x${first.height}x${first.channels})`, `${x.width}x${x.height}x${x.channels}`);
        }
        data.set(x.data, i * first.data.length);
      });
      const o = expectOptionsObject('options', options);
      expectKnownKeys('options', o, [...CODEC_KEYS, 'signal']);
      const codec = checkCodecOptions(o);
      const signal = checkSignal('signal', o.signal);
      throwIfAborted(signal, 'decodeLatents');
      const session = this.nativeSession('decodeLatents()');
      const { flag, cleanup } = abortFlagFor(signal);
      const up = 8;
      return callNative(() => session.decodeLatents(data, first.width, first.height, first.channels, list.length, flag, codec))
        .then((images) => images.map((px) => ({ data: px, width: first.width * up, height: first.height * up, channels: 3 as const })))
        .catch((e: unknown) => {
          throw withAbortReason(e, signal, 'decodeLatents');
        })
        .finally(cleanup);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * Generates images: text to image, or with `initImage` image to image, inpainting (`mask`),
   * instruct-pix2pix edits, and the hires fix. Every option but `prompt` has a default
   * (stable-diffusion.cpp's for the architecture); see {@link GenerateOptions}.
   * @throws {InvalidArgumentError} an option is wrong (the message names it, the value and what is allowed).
   * @throws {AbortError} `signal` was aborted (within one sampling step).
   * @example
   * ```ts
   * const { images, seeds } = await model.generate({ prompt: 'a photo of a cat', steps: 20, seed: 42 });
   * await fs.promises.writeFile('cat.png', images[0].toPNG());
   * ```
   */
  generate(options: GenerateOptions): Promise<GenerateResult> {
    try {
      const checked = checkGenerateOptions(options, this.loadedInfo());
      return this.#generate(options, checked, checked.onProgress, checked.onPreview);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /**
   * generate() as an async iterator: progress and preview events while it samples, then the
   * result, in order. Previews are always on (`preview` and `previewInterval` choose how and how
   * often). Leaving the loop early (`break`, an exception) aborts the generation and waits for
   * it to stop; `onProgress` / `onPreview` are not allowed here (the events are the stream).
   * @example
   * ```ts
   * for await (const event of model.generateStream({ prompt: 'a lighthouse', preview: 'proj', previewInterval: 5 })) {
   *   if (event.type === 'preview') fs.writeFileSync('preview.png', event.image.toPNG());
   *   if (event.type === 'result') fs.writeFileSync('out.png', event.result.images[0].toPNG());
   * }
   * ```
   */
  async *generateStream(options: GenerateOptions): AsyncGenerator<GenerateEvent, void, undefined> {
    if (isObject(options)) {
      for (const key of ['onProgress', 'onPreview'] as const) {
        if ((options as unknown as Record<string, unknown>)[key] !== undefined) {
          invalid(key, 'left out with generateStream() (its events are the progress and the previews)', 'a function');
        }
      }
    }
    const checked = checkGenerateOptions(options, this.loadedInfo());
    checked.request.previews = true;
    // Our own signal, so that leaving the loop stops the work; the caller's aborts it too.
    const stop = new AbortController();
    const user = checked.signal;
    const onUserAbort = () => stop.abort(user?.reason);
    if (user?.aborted) stop.abort(user.reason);
    else user?.addEventListener('abort', onUserAbort, { once: true });
    checked.signal = stop.signal;
    const queue: GenerateEvent[] = [];
    let wake: (() => void) | undefined;
    const push = (e: GenerateEvent) => {
      queue.push(e);
      wake?.();
    };
    let failed = false;
    let failure: unknown;
    let settled = false;
    const work = this.#generate(options, checked, (p) => push({ type: 'progress', ...p }), (p) => push({ type: 'preview', ...p })).then(
      (result) => {
        settled = true;
        push({ type: 'result', result });
      },
      (e: unknown) => {
        settled = true;
        failed = true;
        // The caller's abort keeps its reason, as generate() reports it.
        failure = e instanceof AbortError && user?.aborted ? new AbortError('generate was aborted', { cause: user.reason }) : e;
        wake?.();
      },
    );
    try {
      for (;;) {
        while (queue.length > 0) {
          const e = queue.shift()!;
          yield e;
          if (e.type === 'result') return;
        }
        if (failed) throw failure;
        if (settled && queue.length === 0) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      user?.removeEventListener('abort', onUserAbort);
      if (!settled) stop.abort(new Error('generateStream() was left before the result'));
      await work;
    }
  }

  /** The shared body of generate() and generateStream(): options already checked. */
  #generate(
    options: GenerateOptions,
    checked: ReturnType<typeof checkGenerateOptions>,
    onProgress: ((p: GenerateProgress) => void) | undefined,
    onPreview: ((p: GeneratePreview) => void) | undefined,
  ): Promise<GenerateResult> {
    if (checked.refiner) return this.#generateRefined(options, checked, onProgress, onPreview);
    const modelName = path.basename(this.path);
    return this.#runNative(options, checked, onProgress, onPreview).then((r) => {
      const used = r.options;
      const images = r.images.map((img) =>
        makeImage(img.data, r.imageWidth, r.imageHeight, img.seed, parametersText(used, img.seed, modelName, checked.request.clipSkip !== undefined, version)),
      );
      const result: GenerateResult = { images, seeds: images.map((i) => i.seed), timings: r.timings, options: used, warnings: r.warnings };
      if (used.returnLatents) result.latents = r.latents.map((l) => l ?? new Float32Array(0));
      return result;
    });
  }

  /** One native generate() call: image inputs read, codec options added, events routed. */
  #runNative(
    options: GenerateOptions,
    checked: ReturnType<typeof checkGenerateOptions>,
    onProgress: ((p: GenerateProgress) => void) | undefined,
    onPreview: ((p: GeneratePreview) => void) | undefined,
  ): Promise<NativeGenerated> {
    const info = this.loadedInfo();
    const { request, images: imageRequest, signal } = checked;
    Object.assign(request, checkCodecOptions(options as unknown as Record<string, unknown>));
    throwIfAborted(signal, 'generate');
    const session = this.nativeSession('generate()');
    const loras = resolveLoras(checked.loras.specs, checked.loras.tags, this.loraDir);
    if (loras.length > 0) request.loras = loras;
    return readImageInputs(imageRequest, request, info).then(async () => {
      if (imageRequest.controlNets) {
        const side = ARCH_DEFAULTS[info.architecture];
        await readControlImages(imageRequest.controlNets, request.width ?? side.width, request.height ?? side.height, imageRequest.resizeMode);
      }
      throwIfAborted(signal, 'generate');
      const { flag, cleanup } = abortFlagFor(signal);
      const guard = new CallbackGuard<NativeGenerateEvent>((e) => {
        if (e.kind === 'progress') onProgress?.({ step: e.step, steps: e.steps, elapsedMs: e.elapsedMs });
        else onPreview?.({ step: e.step, steps: e.steps, index: e.index, image: makeRgbImage(e.data, e.width, e.height) });
      }, flag);
      const callback = onProgress || onPreview ? guard.callback : undefined;
      return callNative(() => session.generate(request, callback, flag))
        .then(
          (r) => {
            guard.rethrow();
            const used = r.options;
            // The caller's prompt, tags and all (A1111 keeps them in the metadata too).
            if (typeof options.prompt === 'string') used.prompt = options.prompt;
            if (request.initImage) used.resizeMode = imageRequest.resizeMode;
            if (request.mask) {
              used.maskBlur = imageRequest.maskBlur;
              used.invertMask = imageRequest.invertMask;
            }
            if (request.controlNets && request.initImage === undefined) used.resizeMode = imageRequest.resizeMode;
            return r;
          },
          (e: unknown) => {
            guard.rethrow();
            throw withAbortReason(e, signal, 'generate');
          },
        )
        .finally(cleanup);
    });
  }

  /**
   * The base → refiner hand-off: this model samples the first part of the schedule and returns
   * its noisy latents; the refiner continues the same schedule from them and decodes.
   */
  async #generateRefined(
    options: GenerateOptions,
    checked: ReturnType<typeof checkGenerateOptions>,
    onProgress: ((p: GenerateProgress) => void) | undefined,
    onPreview: ((p: GeneratePreview) => void) | undefined,
  ): Promise<GenerateResult> {
    const { model: refiner, switchAt } = checked.refiner!;
    if (!(refiner instanceof Model)) invalid('refiner.model', 'a model from loadModel()', refiner);
    if (refiner.disposed) throw new DisposedError('refiner.model: the model was disposed');
    const space = (m: Model) => (m.architecture.startsWith('sdxl') ? 'SDXL' : 'SD1.x/SD2.x');
    if (space(refiner) !== space(this) || refiner.loadedInfo().latentChannels !== this.loadedInfo().latentChannels) {
      invalid('refiner.model', `a model of this model's latent space (${space(this)}, ${this.loadedInfo().latentChannels} channels)`, refiner.architecture);
    }
    const o = options as unknown as Record<string, unknown>;
    // Options one architecture takes and the other refuses go where they apply.
    const takes = (m: Model, key: string) =>
      key === 'targetSize' ? m.architecture !== 'sdxl-refiner' : m.architecture === 'sdxl-refiner' || !['aestheticScore', 'negativeAestheticScore'].includes(key);
    const split = ['aestheticScore', 'negativeAestheticScore', 'targetSize'].filter((k) => o[k] !== undefined);
    const request = checked.request as unknown as Record<string, unknown>;
    for (const k of split) if (!takes(this, k) && takes(refiner, k)) delete request[k];
    checked.request.denoiseEnd = switchAt;
    checked.request.returnLatents = true;

    // The base reports its steps of the whole schedule's count; the refiner's follow them.
    const first = await this.#runNative(options, checked, onProgress, onPreview);
    const base = first.options;
    const k = base.switchStep!;
    const n = base.sigmas.length - 1;
    const batch = base.batchSize;
    const firstSteps = k * batch;
    const totalSteps = n * batch;
    throwIfAborted(checked.signal, 'generate');

    // The refiner's request: the same prompt, seed and sampler, the rest of the schedule, the latents.
    const keep = ['prompt', 'negativePrompt', 'prompt2', 'negativePrompt2', 'cfgScale', 'sampler', 'eta', 'rng', 'samplerRng', 'lmsMaxOrder', 'clipSkip', 'returnLatents',
      'decoder', 'vaeTiling', 'vaeMemoryBudget', 'preview', 'previewInterval', 'originalSize', 'cropTopLeft', 'signal',
      'aestheticScore', 'negativeAestheticScore', 'targetSize'];
    const second: Record<string, unknown> = {};
    for (const key of keep) if (o[key] !== undefined && (!split.includes(key) || takes(refiner, key))) second[key] = o[key];
    Object.assign(second, { width: base.width, height: base.height, seed: base.seed, batchSize: batch, sigmas: base.sigmas.slice(k) });
    // The base model's LoRAs are not the refiner's: it gets the prompt without their tags.
    second.prompt = checked.request.prompt;
    if (checked.request.prompt2 !== undefined) second.prompt2 = checked.request.prompt2;
    if (onPreview) second.onPreview = onPreview;
    const checked2 = checkGenerateOptions(second, refiner.loadedInfo());
    checked2.request.startLatent = concatLatents(first.latents);
    const last = await refiner.#runNative(second as unknown as GenerateOptions, checked2,
      onProgress && ((p) => onProgress({ ...p, step: p.step + firstSteps, steps: totalSteps })),
      onPreview && ((p) => onPreview({ ...p, step: p.step + firstSteps, steps: totalSteps })));

    const used: ResolvedGenerateOptions = {
      ...base,
      ...(last.options.aestheticScore !== undefined ? { aestheticScore: last.options.aestheticScore, negativeAestheticScore: last.options.negativeAestheticScore } : {}),
      decoder: last.options.decoder,
      vaeTiling: last.options.vaeTiling,
      returnLatents: o.returnLatents === true,
      refiner: { switchAt, switchStep: k, model: path.basename(refiner.path) },
    };
    delete used.switchStep;
    if (last.options.preview !== undefined) {
      used.preview = last.options.preview;
      used.previewInterval = last.options.previewInterval;
    }
    const modelName = path.basename(this.path);
    const images = last.images.map((img) =>
      makeImage(img.data, last.imageWidth, last.imageHeight, img.seed, parametersText(used, img.seed, modelName, checked.request.clipSkip !== undefined, version)),
    );
    const t1 = first.timings, t2 = last.timings;
    const result: GenerateResult = {
      images,
      seeds: images.map((i) => i.seed),
      timings: {
        textEncode: t1.textEncode + t2.textEncode, vaeEncode: t1.vaeEncode + t2.vaeEncode, sampling: t1.sampling + t2.sampling,
        vaeDecode: t1.vaeDecode + t2.vaeDecode, total: t1.total + t2.total, loraApply: t1.loraApply + t2.loraApply,
      },
      options: used,
      warnings: [...first.warnings, ...last.warnings],
    };
    if (used.returnLatents) result.latents = last.latents.map((l) => l ?? new Float32Array(0));
    return result;
  }

  /**
   * Frees the native memory once every queued call has settled. Later calls reject with
   * {@link DisposedError}. Idempotent.
   */
  dispose(): Promise<void> {
    if (!this.#disposing) {
      // The session settles its dispose after every call queued before it.
      const session = this.#session;
      this.#session = undefined;
      this.#disposing = (session ? session.dispose() : Promise.resolve()).then(() => {
        this.#native?.dispose();
        this.#native = undefined;
      });
    }
    return this.#disposing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }
}

/**
 * Loads a model for generation: any format {@link inspectModel} reads (safetensors, GGUF,
 * .ckpt, diffusers folders). Weights are converted on load when `weightType` is given.
 * @throws {InvalidArgumentError} an option is wrong.
 * @throws {ModelFormatError} / {@link UnsupportedModelError} the file is broken or not runnable.
 * @throws {AbortError} `signal` was aborted.
 * @example
 * ```ts
 * const model = await loadModel('sd-v1-5.safetensors', { weightType: 'q8_0', threads: 4 });
 * ```
 */
export async function loadModel(modelPath: string, options?: LoadModelOptions): Promise<Model> {
  const abs = path.resolve(expectNonEmptyString('modelPath', modelPath));
  const o = expectOptionsObject('options', options);
  expectKnownKeys('options', o, ['weightType', 'threads', 'backend', 'taesd', 'vae', 'prediction', 'loraDir', 'signal', 'onProgress', 'embeddingsDir']);
  const loraDir = o.loraDir === undefined ? undefined : path.resolve(expectNonEmptyString('loraDir', o.loraDir));
  if (loraDir !== undefined && !fs.statSync(loraDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new IoError(`loraDir: ${loraDir} is not a folder`);
  }
  const prediction = o.prediction === undefined ? undefined : expectOneOf('prediction', o.prediction, PREDICTIONS);
  const weightType = checkWeightType('weightType', o.weightType);
  const threads = checkThreads('threads', o.threads);
  const backend = o.backend === undefined ? undefined : expectNonEmptyString('backend', o.backend);
  const taesd = o.taesd === undefined ? undefined : path.resolve(expectNonEmptyString('taesd', o.taesd));
  const vae = o.vae === undefined ? undefined : path.resolve(expectNonEmptyString('vae', o.vae));
  const signal = checkSignal('signal', o.signal);
  const onProgress = checkCallback<(p: { fraction: number }) => void>('onProgress', o.onProgress);
  const embeddingsDir = o.embeddingsDir === undefined ? undefined : path.resolve(expectNonEmptyString('embeddingsDir', o.embeddingsDir));
  throwIfAborted(signal, 'loadModel');
  const { flag, cleanup } = abortFlagFor(signal);
  const guard = new CallbackGuard(onProgress, flag);
  const report = guard.callback;
  try {
    const nativeModel = await callNative((a) =>
      a.NativeModel.load(
        abs,
        { weightType, threads, device: backend, taesd, vae, prediction, embeddingsDir },
        report ? (fraction: number) => report({ fraction }) : undefined,
        flag,
      ),
    );
    guard.rethrow();
    const model = new Model(nativeModel, abs, { loraDir });
    // Aborted after the native load had finished (its progress events arrive after it): still
    // an aborted load, so the promise keeps its word and the model is freed.
    if (signal?.aborted) {
      await model.dispose();
      throwIfAborted(signal, 'loadModel');
    }
    return model;
  } catch (e) {
    guard.rethrow();
    throw withAbortReason(e, signal, 'loadModel');
  } finally {
    cleanup();
  }
}

/** Options of {@link randn}. */
export interface RandnOptions {
  /** The seed, a non-negative safe integer. */
  seed: number;
  /** @default 'cuda' */
  rng?: Rng;
  /** How many floats to draw. */
  count: number;
}

/**
 * The Gaussian noise stream a seed gives: the first `count` values `generate()` draws for an
 * image with this seed (its initial latent noise, before scaling by the first sigma).
 * @example `randn({ seed: 42, rng: 'cuda', count: 4 * 64 * 64 })`
 */
export function randn(options: RandnOptions): Float32Array {
  const o = expectOptionsObject('options', options);
  expectKnownKeys('options', o, ['seed', 'rng', 'count']);
  const seed = checkSeed('seed', o.seed);
  if (seed === undefined) invalid('seed', 'a non-negative safe integer', o.seed);
  const rng = o.rng === undefined ? 'cuda' : expectOneOf('rng', o.rng, RNGS);
  const count = checkLimitedInteger('count', o.count);
  if (count === undefined) invalid('count', 'an integer', o.count);
  return callNativeSync((a) => a.randn(seed, rng, count));
}

/** An 8-bit interleaved image: the shape must match its bytes; sides as generate() allows them. */
function checkRawImage(name: string, v: unknown): RawImage {
  if (!isObject(v)) invalid(name, 'an object { data, width, height, channels }', v);
  const o = v as Record<string, unknown>;
  if (!(o.data instanceof Uint8Array)) invalid(`${name}.data`, 'a Uint8Array (or Buffer) of 8-bit pixels', o.data);
  const width = checkImageSide('width', o.width, `${name}.width`);
  const height = checkImageSide('height', o.height, `${name}.height`);
  const channels = o.channels;
  if (channels !== 1 && channels !== 3 && channels !== 4) invalid(`${name}.channels`, '1, 3 or 4', channels);
  if (width === undefined) invalid(`${name}.width`, 'a width', o.width);
  if (height === undefined) invalid(`${name}.height`, 'a height', o.height);
  const want = width * height * channels;
  if (o.data.length !== want) invalid(`${name}.data`, `width * height * channels = ${want} bytes`, `${o.data.length} bytes`);
  return { data: o.data, width, height, channels };
}

/** A latent: Float32Array of width * height * channels values, sides up to 4096 / 8. */
function checkLatent(name: string, v: unknown): Latent {
  if (!isObject(v)) invalid(name, 'an object { data, width, height, channels }', v);
  const o = v as Record<string, unknown>;
  if (!(o.data instanceof Float32Array)) invalid(`${name}.data`, 'a Float32Array', o.data);
  const side = LIMITS.width.max / 8;
  const width = expectIntegerInRange(`${name}.width`, o.width, 1, side);
  const height = expectIntegerInRange(`${name}.height`, o.height, 1, side);
  const channels = expectIntegerInRange(`${name}.channels`, o.channels, 1, 64);
  const want = width * height * channels;
  if (o.data.length !== want) invalid(`${name}.data`, `width * height * channels = ${want} values`, `${o.data.length} values`);
  return { data: o.data, width, height, channels };
}

/** Latents one after another in one array (the native start latent of a batch). */
function concatLatents(latents: Array<Float32Array | undefined>): Float32Array {
  const parts = latents.map((l) => l ?? new Float32Array(0));
  const out = new Float32Array(parts.reduce((n, l) => n + l.length, 0));
  let at = 0;
  for (const l of parts) {
    out.set(l, at);
    at += l.length;
  }
  return out;
}
