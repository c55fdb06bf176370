/**
 * Text-to-image options, their defaults and validation, and the result types. Defaults follow
 * stable-diffusion.cpp for the model's architecture.
 * @module
 */
import type { Sharp } from 'sharp';
import { encodePNG } from './image.ts';
import { DEFAULT_RESIZE_MODE, MAX_MASK_BLUR, MIN_MASK_BLUR, RESIZE_MODES, encodeJPEG, encodeWebP, readImage, readMask, rgbToSharp, type ImageInput, type ResizeMode } from './image-io.ts';
import { HIRES_UPSCALERS, LIMITS, LORA_APPLY_MODES, PREVIEW_MODES } from './engine-tables.ts';
import {
  RNGS,
  SAMPLERS,
  SCHEDULERS,
  SCHEDULER_ALIASES,
  checkCallback,
  checkImageSide,
  checkLimitedInteger,
  checkLimitedNumber,
  checkPrompt,
  checkSeed,
  checkSignal,
  expectOptionsObject,
  type Rng,
  type Sampler,
  type Scheduler,
} from './options.ts';
import { expectKnownKeys, expectOneOf, invalid, isObject } from './validate.ts';
import { checkLoras, extractLoraTags, type LoraApply, type LoraSpec, type NativeLora } from './lora.ts';
import { checkEmbeddings } from './embeddings.ts';
import { checkControlNets, controlNetFields, type ControlNetUnit, type NativeControlNetRequest, type ResolvedControlNet } from './controlnet.ts';

/** One progress report of `generate()`: sent once per sampling step, in order. */
export interface GenerateProgress {
  /** Steps completed, 1 to `steps`. */
  step: number;
  steps: number;
  /** Milliseconds since `generate()` started its native work. */
  elapsedMs: number;
}

/** How previews are made: `proj` (a linear map from latent to colour, latent-sized: 1/8 of the image, nearly free), `taesd` (the TAESD decoder loaded with the model), `vae` (the full VAE decoder, as slow as the final decode). */
export type PreviewMode = (typeof PREVIEW_MODES)[number];

/** An 8-bit RGB image in memory, with encoders. */
export interface RgbImage {
  width: number;
  height: number;
  channels: 3;
  /** Interleaved RGB rows, `height * width * 3` bytes. */
  data: Uint8Array;
  /** PNG bytes (generated images carry the A1111 `parameters` text chunk). */
  toPNG(): Buffer;
  /**
   * JPEG bytes (generated images carry the `parameters` text in EXIF UserComment, as A1111 writes it).
   * @param options.quality 1 to 100. @default 90 (`DEFAULT_JPEG_QUALITY`)
   */
  toJPEG(options?: { quality?: number }): Promise<Buffer>;
  /**
   * WebP bytes (generated images carry the `parameters` text in EXIF UserComment, the RIFF `EXIF` chunk).
   * @param options.quality 1 to 100, lossy only. @default 90 (`DEFAULT_WEBP_QUALITY`)
   * @param options.lossless @default false
   */
  toWebP(options?: { quality?: number; lossless?: boolean }): Promise<Buffer>;
  /** A new sharp instance reading this image's raw RGB pixels, for any other format or processing (no metadata). */
  toSharp(): Sharp;
}

/**
 * A preview while sampling: the sampler's current estimate of the final image (its denoised
 * prediction), every `previewInterval` steps, sent before that step's progress.
 */
export interface GeneratePreview {
  /** As {@link GenerateProgress.step}: steps completed across the batch. */
  step: number;
  steps: number;
  /** Which image of the batch (0-based). */
  index: number;
  /** With `preview: 'proj'` the latent's size (width / 8 x height / 8), else the image's. */
  image: RgbImage;
}

/** What {@link Model.generateStream} yields, in order: progress and previews while sampling, then the result once. */
export type GenerateEvent =
  | ({ type: 'progress' } & GenerateProgress)
  | ({ type: 'preview' } & GeneratePreview)
  | { type: 'result'; result: GenerateResult };

/** The hires fix's upscalers (stable-diffusion.cpp's set): latent-space interpolations, or the decoded image resized and encoded again. */
export type HiresUpscaler = (typeof HIRES_UPSCALERS)[number];

/**
 * The hires fix: a first pass at `width` x `height`, its latent upscaled, then an image-to-image
 * pass at the larger size (stable-diffusion.cpp's `--hires`, A1111's "Hires. fix").
 * @example hires: { scale: 2, steps: 10, strength: 0.5 }
 */
export interface HiresOptions {
  /** Target = round(size x scale), rounded up to the model's multiple; above 0, at most 8. Not with width/height. @default 2 */
  scale?: number;
  /** Target width (one side alone keeps the aspect ratio). */
  width?: number;
  /** Target height (one side alone keeps the aspect ratio). */
  height?: number;
  /**
   * Steps the second pass runs about (A1111's: the schedule has steps / strength steps and is cut
   * by the strength); 0 = as many as the first pass ran. @default 0
   */
  steps?: number;
  /** The second pass's denoising strength, above 0, at most 1. @default 0.7 */
  strength?: number;
  /** `latent` (bilinear), `latent-nearest`, `latent-nearest-exact`, `latent-antialiased`, `latent-bicubic`, `latent-bicubic-antialiased`, or in pixels: `lanczos`, `nearest`. @default 'latent' */
  upscaler?: HiresUpscaler;
}

/** Options of `model.generate()`. Every field is optional but `prompt`. */
export interface GenerateOptions {
  /** What to draw. Emphasis: `(word)` x1.1, `((word))`, `(word:1.3)`, `[word]` /1.1, `BREAK` starts a new chunk. */
  prompt: string;
  /** What to avoid (classifier-free guidance's unconditional prompt). @default '' */
  negativePrompt?: string;
  /**
   * SDXL: the text for the second text encoder (OpenCLIP bigG, which also makes the pooled
   * embedding), so that the two encoders read different prompts — ComfyUI's `text_g` beside
   * `text_l`, diffusers' `prompt_2`. Each text is then tokenized and weighted on its own; the one
   * with fewer 77-token chunks is padded with empty-prompt chunks. On the SDXL refiner (bigG only)
   * it replaces `prompt`. Refused on SD1.x/SD2.x (one text encoder). `<lora:...>` tags count as in
   * `prompt`.
   * @default prompt (the one-prompt encoding, as stable-diffusion.cpp)
   * @example `{ prompt: 'a watercolor painting', prompt2: 'a lighthouse on a cliff at dusk' }`
   */
  prompt2?: string;
  /** SDXL: the negative prompt for the second text encoder, as `prompt2`. @default negativePrompt */
  negativePrompt2?: string;
  /** Image width in pixels, a multiple of 8 from 64 to 4096. @default 512 (SD1.x), 768 (SD2.x) */
  width?: number;
  /** Image height in pixels, a multiple of 8 from 64 to 4096. @default 512 (SD1.x), 768 (SD2.x) */
  height?: number;
  /** Sampling steps, 1 to 1000. @default 20 */
  steps?: number;
  /** Classifier-free guidance scale; 1 disables the unconditional pass. @default 7 */
  cfgScale?: number;
  /** @default 'euler_a' */
  sampler?: Sampler;
  /**
   * The sigma schedule: discrete, karras, exponential, ays, gits, sgm_uniform, simple,
   * smoothstep, kl_optimal, lcm, bong_tangent, beta (`normal` is `discrete`). Ignored when
   * `sigmas` is given. The beta schedule drops repeated timesteps, so at many steps it can run
   * fewer steps than asked (`result.options.steps` says how many).
   * @default the sampler's own default ('discrete' for most; 'lcm' for lcm and tcd, 'simple' for ddim_trailing)
   */
  scheduler?: Scheduler;
  /**
   * A custom schedule (stable-diffusion.cpp's `--sigmas`): `steps + 1` noise levels, descending,
   * each above 0 but the last (usually 0), at most `LIMITS.sigma.max`. Sets the step count;
   * `steps`, when also given, must equal `sigmas.length - 1`.
   * @default the scheduler's sigmas
   * @example sigmas: [14.61, 5.0, 1.5, 0.3, 0]
   */
  sigmas?: number[];
  /** lms only: how many past derivatives the linear multistep uses, 1 (Euler) to 12. @default 4 */
  lmsMaxOrder?: number;
  /** Noise seed; image i of a batch uses seed + i. Missing or negative: a random seed, reported in the result. */
  seed?: number;
  /** Noise generator. @default 'cuda' (A1111 "GPU" seeds) */
  rng?: Rng;
  /**
   * Generator of ancestral samplers' per-step noise (stable-diffusion.cpp's `--sampler-rng`).
   * @default the `rng` generator, continuing after the initial noise
   */
  samplerRng?: Rng;
  /** Text-encoder layer to stop at, from the end. @default 1 (SD1.x), 2 (SD2.x) */
  clipSkip?: number;
  /** Images to make, 1 to 64, one after another. @default 1 */
  batchSize?: number;
  /**
   * Noise multiplier of the stochastic samplers (euler_a, dpm++2s_a, euler_a_cfg_pp, er_sde,
   * dpm++2m_sde(_bt); ddim_trailing, tcd, res_multistep, res_2s and euler_ge become stochastic
   * above 0). @default the sampler's default: 1 for the first group, 0 for the rest
   */
  eta?: number;
  /** Cancels generation within one step; the promise rejects with AbortError. */
  signal?: AbortSignal;
  /** Called once per sampling step, in order, before the promise settles. */
  onProgress?: (progress: GenerateProgress) => void;
  /** Also return the final latents (before VAE scaling), one Float32Array [C][H][W] per image. @default false */
  returnLatents?: boolean;
  /**
   * Image to image: the image to start from (a file path, encoded bytes, a raw image or a sharp
   * instance; alpha flattened onto white, EXIF orientation applied). It is VAE-encoded and noised
   * to the schedule cut by `strength`. With an instruct-pix2pix model it is the image to edit
   * (sampling starts from noise). Resized to `width` x `height` by `resizeMode`; without them,
   * width and height default to the image's size rounded to the model's multiple.
   * @example initImage: 'photo.jpg', strength: 0.5
   */
  initImage?: ImageInput;
  /**
   * How much of the schedule image to image runs: above 0 (keeps the image nearly as it is), at
   * most 1 (the whole schedule, from the noised init latent). The sampler runs
   * `int(steps x strength) + 1` steps (at most `steps`), as stable-diffusion.cpp.
   * @default 0.75
   */
  strength?: number;
  /**
   * Inpainting: white repaints, black keeps (gray rounds to either in latent space). Any image
   * form; alpha multiplies the luminance (transparent = keep). Resized as `initImage`. Normal
   * models blend the init latent back each step; inpainting models (9 input channels) also see
   * the mask and the masked image. Needs `initImage`.
   */
  mask?: ImageInput;
  /** Gaussian blur of the mask, in pixels (A1111's "Mask blur"; 0 = none, else at least 0.3). @default 0 */
  maskBlur?: number;
  /** Repaint the black part instead. @default false */
  invertMask?: boolean;
  /**
   * When `initImage` or `mask` is not `width` x `height`: `'resize'` stretches, `'crop'` scales
   * to cover and crops the center, `'fill'` scales to fit and fills the bands with the edge pixels
   * (A1111's three modes). @default 'resize'
   */
  resizeMode?: ResizeMode;
  /**
   * instruct-pix2pix models: how strongly to follow the image (stable-diffusion.cpp's
   * `--img-cfg-scale`), 0 to 100; 1 runs no image-unconditional pass. @default 1
   */
  imageCfgScale?: number;
  /** The hires fix; see {@link HiresOptions}. */
  hires?: HiresOptions;
  /**
   * `'vae'`: the model's VAE (or loadModel's `vae` file). `'taesd'`: the TAESD given to loadModel
   * (faster, lower quality; img2img then encodes with it too, as stable-diffusion.cpp).
   * @default 'vae'
   */
  decoder?: import('./model.ts').Decoder;
  /**
   * Decode (and encode) in tiles: `'auto'` when the untiled run would need more than
   * `vaeMemoryBudget`, `true` always (stable-diffusion.cpp's defaults), `false` never, or
   * `{ tileSize, overlap }`. `result.options.vaeTiling` says whether the final decode was tiled.
   * @default 'auto'
   */
  vaeTiling?: import('./model.ts').VaeTiling;
  /** See {@link DecodeLatentsOptions.vaeMemoryBudget}. @default DEFAULTS.vaeMemoryBudget (3 GiB) */
  vaeMemoryBudget?: number;
  /**
   * Called with a preview image every `previewInterval` steps (before that step's progress).
   * Costs what the preview mode costs (proj: nearly nothing).
   * @example onPreview: ({ step, image }) => fs.writeFileSync('preview.png', image.toPNG())
   */
  onPreview?: (preview: GeneratePreview) => void;
  /**
   * SDXL models (base and refiner): the size conditioning the UNet sees (SGM's `original_size_as_tuple`), in pixels.
   * A smaller original size asks for the look of an upscaled small image. Other models refuse it.
   * @default the generation size (stable-diffusion.cpp's)
   * @example originalSize: { width: 4096, height: 4096 }
   */
  originalSize?: { width: number; height: number };
  /** SDXL and the refiner: the crop conditioning (`crop_coords_top_left`), in pixels; non-zero asks for a cropped-looking image. @default { top: 0, left: 0 } */
  cropTopLeft?: { top: number; left: number };
  /** SDXL base: the target size conditioning (`target_size_as_tuple`), in pixels (the refiner refuses it). @default the generation size */
  targetSize?: { width: number; height: number };
  /** The SDXL refiner: the aesthetic score its UNet is conditioned on for the prompt, 0 to 100 (LAION's 1-10 scale). Other models refuse it. @default 6 */
  aestheticScore?: number;
  /** The SDXL refiner: the aesthetic score for the negative prompt's pass. @default 2.5 */
  negativeAestheticScore?: number;
  /**
   * A base → refiner hand-off (A1111's "Refiner", diffusers' denoising_end / denoising_start): this
   * model samples the first `switchAt` of the schedule, then `model` (an already loaded model of
   * the same latent space, e.g. an SDXL refiner for an SDXL base) continues from the still-noisy
   * latents, with the same prompt, seed and sampler, and decodes. Options only one of the models
   * takes (`aestheticScore` for a refiner, `targetSize` for a base) go to that one.
   * @example refiner: { model: refiner, switchAt: 0.8 }
   */
  refiner?: RefinerOptions;
  /** How previews are made (with `onPreview` or {@link Model.generateStream}). @default 'taesd' when loadModel got a TAESD, else 'proj' */
  preview?: PreviewMode;
  /** A preview every this many steps of each image, 1 to 1000. @default 1 */
  previewInterval?: number;
  /**
   * LoRAs for this generation, applied in order, besides the prompt's `<lora:name:weight>` tags
   * (names resolved in loadModel's `loraDir`; the tags are taken out of the prompt before it is
   * tokenized). Changing them between generations never reloads the model: the model's own
   * weights are never written, so leaving a LoRA out gives back the exact base model.
   * @default []
   * @example loras: [{ name: 'add_detail', weight: 0.5 }, { path: 'lcm-lora-sdv1-5.safetensors' }]
   */
  loras?: LoraSpec[];
  /** How LoRAs are applied; see {@link LoraApply}. @default 'auto' */
  loraApply?: LoraApply;
  /**
   * Textual-inversion embeddings for this generation, beside the files of loadModel's
   * `embeddingsDir` (an entry replaces a folder file of the same trigger). Each occurrence of a
   * trigger in the prompt or negative prompt becomes the embedding's vectors (as many tokens as
   * it has vectors); `(trigger:1.2)` weights them like any word. Files are read when a prompt
   * first uses them and cached while unchanged. With a `refiner`, the refiner uses only its own
   * `embeddingsDir`.
   * @default none (only the folder's)
   * @example `embeddings: [{ path: 'emb/rndemb.safetensors' }]` then `prompt: 'a portrait in the style of rndemb'`
   */
  embeddings?: import('./embeddings.ts').EmbeddingOption[];
  /**
   * ControlNets from {@link loadControlNet}, each with its control image (resized to the
   * generation size as `initImage` is), strength, and the fraction of the steps it applies in.
   * Several are summed (each times its strength). Works with img2img, hires (the control image
   * resized to the hires size) and batches.
   * @default none
   * @example controlNets: [{ model: canny, image: 'photo.png', preprocess: 'canny', strength: 0.9 }]
   */
  controlNets?: ControlNetUnit[];
}

/** See {@link GenerateOptions.refiner}. */
export interface RefinerOptions {
  /** The model that finishes the schedule; its architecture's latent space must be this model's. */
  model: import('./model.ts').Model;
  /** The fraction of the steps this model runs, above 0 and below 1. @default 0.8 */
  switchAt?: number;
}

/** A generated image: 8-bit RGB, row-major, whose encoders carry the A1111 `parameters` text (PNG text chunk, JPEG/WebP EXIF UserComment; `readParameters()` reads it back). */
export interface GeneratedImage extends RgbImage {
  /** The seed this image was drawn from. */
  seed: number;
}

/** Milliseconds spent per stage. */
export interface GenerateTimings {
  textEncode: number;
  /** The init image (and an inpainting model's masked image) through the encoder; 0 without one. */
  vaeEncode: number;
  sampling: number;
  vaeDecode: number;
  total: number;
  /** Making the LoRAs active (merging or uploading them); 0 when the same set was active already. */
  loraApply: number;
}

export interface GenerateResult {
  images: GeneratedImage[];
  /** One per image: seed + i. */
  seeds: number[];
  timings: GenerateTimings;
  /** With `returnLatents: true`: per image, the final latent before VAE scaling, [C][H][W]. */
  latents?: Float32Array[];
  /** What was used: every option with its default filled in (the engine's, for this model). */
  options: ResolvedGenerateOptions;
  /** What the run noticed but went on with, e.g. a LoRA's tensors that adapt nothing in this model. */
  warnings: string[];
}

/** Every generation option with its default filled in, as the engine reports what it used. */
export interface ResolvedGenerateOptions {
  prompt: string;
  negativePrompt: string;
  /** SDXL, when given: the second text encoder's texts. */
  prompt2?: string;
  negativePrompt2?: string;
  width: number;
  height: number;
  steps: number;
  cfgScale: number;
  sampler: Sampler;
  /** The scheduler's name (an alias resolved); with custom `sigmas`, the default it replaced. */
  scheduler: (typeof SCHEDULERS)[number];
  /** The schedule the sampler ran: `steps + 1` noise levels. */
  sigmas: number[];
  lmsMaxOrder: number;
  eta: number;
  seed: number;
  rng: Rng;
  /** Absent: ancestral noise continues `rng`. */
  samplerRng?: Rng;
  clipSkip: number;
  batchSize: number;
  returnLatents: boolean;
  /** What the run was: the UNet's extra inputs and the init image decide it. */
  mode: 'txt2img' | 'img2img' | 'inpaint' | 'edit';
  /** img2img and inpainting. */
  strength?: number;
  /** instruct-pix2pix. */
  imageCfgScale?: number;
  /** With the hires fix: its resolved target and the second pass's schedule. */
  hires?: { width: number; height: number; steps: number; strength: number; upscaler: HiresUpscaler; sigmas: number[] };
  /** With an image input: how it was fitted (lib's, not the engine's). */
  resizeMode?: ResizeMode;
  /** With a mask. */
  maskBlur?: number;
  invertMask?: boolean;
  decoder: import('./model.ts').Decoder;
  /** Whether the final decode ran in tiles (asked, or chosen by `vaeTiling: 'auto'`). */
  vaeTiling: boolean;
  /** SDXL base: the size conditioning used. */
  originalSize?: { width: number; height: number };
  cropTopLeft?: { top: number; left: number };
  targetSize?: { width: number; height: number };
  /** With a refiner hand-off: the step the refiner took over at (of `steps`), and its model's file name. */
  refiner?: { switchAt: number; switchStep: number; model: string };
  /** @internal The native side's hand-off step (folded into `refiner`). */
  switchStep?: number;
  /** SDXL refiner: the aesthetic scores used. */
  aestheticScore?: number;
  negativeAestheticScore?: number;
  /** With previews. */
  preview?: PreviewMode;
  previewInterval?: number;
  /** With LoRAs: the files and weights used (the prompt's tags resolved, weights summed per file), and how they were applied. */
  loras?: NativeLora[];
  loraApply?: Exclude<LoraApply, 'auto'>;
  /** The ControlNets applied, defaults filled in. */
  controlNets?: ResolvedControlNet[];
}

/** An image as the native side receives it: decoded, resized, 8-bit. */
export interface NativeImage { data: Uint8Array; width: number; height: number; channels: number }

/** What the native side receives: only the options the caller gave (the engine fills in the rest). */
export type NativeGenerateRequest = Partial<
  Omit<ResolvedGenerateOptions, 'prompt' | 'prompt2' | 'scheduler' | 'mode' | 'hires' | 'resizeMode' | 'maskBlur' | 'invertMask' | 'decoder' | 'vaeTiling' | 'refiner' | 'switchStep' | 'loraApply' | 'controlNets'>
> & import('./binding.ts').NativeCodecOptions & {
  prompt: string;
  prompt2?: string;
  scheduler?: Scheduler;
  /** Send previews to the callback. */
  previews?: boolean;
  /** Refiner hand-off: run this fraction of the steps and return the noisy latents (no decode). */
  denoiseEnd?: number;
  /** Refiner hand-off: the latents to continue from (batchSize of them), with `sigmas`. */
  startLatent?: Float32Array;
  initImage?: NativeImage;
  mask?: NativeImage;
  hires?: HiresOptions;
  loraApply?: LoraApply;
  /** Textual-inversion embeddings, paths absolute. */
  embeddings?: import('./embeddings.ts').NativeEmbedding[];
  controlNets?: NativeControlNetRequest[];
};

/** The image options, read (decoded, resized) before the native call. */
export interface ImageRequest {
  initImage?: ImageInput;
  mask?: ImageInput;
  resizeMode: ResizeMode;
  maskBlur: number;
  invertMask: boolean;
  /** The ControlNets, their images read with the others. */
  controlNets?: ReturnType<typeof checkControlNets>;
}

const KNOWN_KEYS = new Set([
  'prompt', 'negativePrompt', 'prompt2', 'negativePrompt2', 'width', 'height', 'steps', 'cfgScale', 'sampler', 'scheduler', 'seed', 'rng', 'samplerRng',
  'clipSkip', 'batchSize', 'eta', 'signal', 'onProgress', 'returnLatents', 'sigmas', 'lmsMaxOrder',
  'initImage', 'strength', 'mask', 'maskBlur', 'invertMask', 'resizeMode', 'imageCfgScale', 'hires', 'decoder', 'vaeTiling',
  'vaeMemoryBudget', 'onPreview', 'preview', 'previewInterval', 'originalSize', 'cropTopLeft', 'targetSize',
  'aestheticScore', 'negativeAestheticScore', 'refiner', 'loras', 'loraApply',
  'controlNets',
]);

KNOWN_KEYS.add('embeddings');

/** A { a, b } object of integers in the size-conditioning range. */
function checkPair<A extends string, B extends string>(name: string, v: unknown, a: A, b: B): Record<A | B, number> | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) invalid(name, `an object { ${a}, ${b} }`, v);
  const o = v as Record<string, unknown>;
  expectKnownKeys(name, o, [a, b]);
  const out = {} as Record<A | B, number>;
  for (const k of [a, b] as const) {
    const x = checkLimitedInteger('sizeConditioning', o[k], `${name}.${k}`);
    if (x === undefined) invalid(`${name}.${k}`, 'an integer', o[k]);
    out[k] = x;
  }
  return out;
}
/** A1111's default "Switch at". */
export const DEFAULT_REFINER_SWITCH_AT = 0.8;
const HIRES_KEYS = new Set(['scale', 'width', 'height', 'steps', 'strength', 'upscaler']);

function checkHires(v: unknown): HiresOptions | undefined {
  if (v === undefined) return undefined;
  if (!isObject(v)) invalid('hires', 'an object { scale?, width?, height?, steps?, strength?, upscaler? }', v);
  const h = v as Record<string, unknown>;
  expectKnownKeys('hires', h, HIRES_KEYS);
  const out: HiresOptions = {};
  const put = <K extends keyof HiresOptions>(k: K, x: HiresOptions[K] | undefined) => {
    if (x !== undefined) out[k] = x;
  };
  put('scale', checkLimitedNumber('hiresScale', h.scale, 'hires.scale'));
  put('width', checkImageSide('width', h.width, 'hires.width'));
  put('height', checkImageSide('height', h.height, 'hires.height'));
  if (out.scale !== undefined && (out.width !== undefined || out.height !== undefined)) {
    invalid('hires', 'a scale or a width and height, not both', v);
  }
  put('steps', checkLimitedInteger('hiresSteps', h.steps, 'hires.steps'));
  put('strength', checkLimitedNumber('strength', h.strength, 'hires.strength'));
  put('upscaler', h.upscaler === undefined ? undefined : expectOneOf('hires.upscaler', h.upscaler, HIRES_UPSCALERS));
  return out;
}

/** An image option's presence; its content is read (and checked) by image-io. */
function checkImageInput(name: string, v: unknown): ImageInput | undefined {
  if (v === undefined) return undefined;
  if (v === null || (typeof v !== 'string' && typeof v !== 'object')) invalid(name, 'a file path, an encoded image buffer, a raw image or a sharp instance', v);
  return v as ImageInput;
}
const SCHEDULER_NAMES: readonly Scheduler[] = [...SCHEDULERS, ...(Object.keys(SCHEDULER_ALIASES) as Array<keyof typeof SCHEDULER_ALIASES>)];

/** A custom schedule: steps + 1 finite noise levels in the engine's range, only the last may be 0. */
function checkSigmas(v: unknown, steps: number | undefined): number[] | undefined {
  if (v === undefined) return undefined;
  const { min, max } = LIMITS.steps;
  const what = `an array of ${min + 1} to ${max + 1} numbers from 0 to ${LIMITS.sigma.max}, only the last 0`;
  if (!Array.isArray(v) || v.length < min + 1 || v.length > max + 1) invalid('sigmas', what, v);
  v.forEach((x, i) => {
    const last = i === v.length - 1;
    if (typeof x !== 'number' || !Number.isFinite(x) || x > LIMITS.sigma.max || (last ? x < 0 : x <= 0)) {
      invalid(`sigmas[${i}]`, last ? `a number from 0 to ${LIMITS.sigma.max}` : `a number above 0, at most ${LIMITS.sigma.max}`, x);
    }
  });
  if (steps !== undefined && steps !== v.length - 1) invalid('steps', `sigmas.length - 1 (${v.length - 1}) when sigmas are given`, steps);
  return [...v] as number[];
}

/**
 * Checks every option against the engine's limits and names (lib/engine-tables.ts) and the
 * model's size multiple. Throws InvalidArgumentError naming the option, the value and what is
 * allowed; unknown option names are errors too (a typo must not be silently ignored). Defaults
 * are the engine's to fill in: only given options are passed on.
 */
export function checkGenerateOptions(
  options: unknown,
  model: { spatialMultiple: number },
): {
  request: NativeGenerateRequest;
  images: ImageRequest;
  signal?: AbortSignal;
  onProgress?: (p: GenerateProgress) => void;
  onPreview?: (p: GeneratePreview) => void;
  refiner?: { model: import('./model.ts').Model; switchAt: number };
  /** The `loras` option and the prompt's tags (the request's prompt is without them), resolved per model. */
  loras: { specs?: LoraSpec[]; tags: Array<{ name: string; weight: number }> };
} {
  if (!isObject(options)) invalid('options', 'an object with at least a prompt', options);
  const o = expectOptionsObject('options', options);
  expectKnownKeys('options', o, KNOWN_KEYS);
  const prompt = checkPrompt('prompt', o.prompt);
  if (prompt === undefined) invalid('prompt', 'a string', o.prompt);
  const tagged = extractLoraTags(prompt);
  const request: NativeGenerateRequest = { prompt: tagged.prompt };
  const prompt2 = checkPrompt('prompt2', o.prompt2);
  if (prompt2 !== undefined) {
    const tagged2 = extractLoraTags(prompt2);
    request.prompt2 = tagged2.prompt;
    tagged.tags.push(...tagged2.tags);
  }
  const set = <K extends keyof NativeGenerateRequest>(key: K, v: NativeGenerateRequest[K] | undefined) => {
    if (v !== undefined) request[key] = v;
  };
  for (const name of ['width', 'height'] as const) {
    const v = checkImageSide(name, o[name]);
    if (v !== undefined && v % model.spatialMultiple !== 0) invalid(name, `a multiple of ${model.spatialMultiple} for this model`, v);
    set(name, v);
  }
  const steps = checkLimitedInteger('steps', o.steps);
  set('steps', steps);
  set('sigmas', checkSigmas(o.sigmas, steps));
  set('lmsMaxOrder', checkLimitedInteger('lmsMaxOrder', o.lmsMaxOrder));
  set('cfgScale', checkLimitedNumber('cfgScale', o.cfgScale));
  set('sampler', o.sampler === undefined ? undefined : expectOneOf('sampler', o.sampler, SAMPLERS));
  set('scheduler', o.scheduler === undefined ? undefined : expectOneOf('scheduler', o.scheduler, SCHEDULER_NAMES));
  set('rng', o.rng === undefined ? undefined : expectOneOf('rng', o.rng, RNGS));
  set('samplerRng', o.samplerRng === undefined ? undefined : expectOneOf('samplerRng', o.samplerRng, RNGS));
  set('clipSkip', checkLimitedInteger('clipSkip', o.clipSkip));
  const batchSize = checkLimitedInteger('batchSize', o.batchSize);
  set('batchSize', batchSize);
  set('eta', checkLimitedNumber('eta', o.eta));
  if (o.returnLatents !== undefined && typeof o.returnLatents !== 'boolean') invalid('returnLatents', 'a boolean', o.returnLatents);
  set('returnLatents', o.returnLatents as boolean | undefined);
  const seed = checkSeed('seed', o.seed);
  // Not `seed + batchSize - 1 > MAX_SAFE_INTEGER`: that sum rounds (2^53 - 1 + 2 - 1 is 2^53 - 1 in doubles).
  if (seed !== undefined && seed > Number.MAX_SAFE_INTEGER - ((batchSize ?? 1) - 1)) {
    invalid('seed', 'small enough that seed + batchSize - 1 is a safe integer', seed);
  }
  set('seed', seed);
  set('negativePrompt', checkPrompt('negativePrompt', o.negativePrompt));
  set('negativePrompt2', checkPrompt('negativePrompt2', o.negativePrompt2));
  const initImage = checkImageInput('initImage', o.initImage);
  const mask = checkImageInput('mask', o.mask);
  const strength = checkLimitedNumber('strength', o.strength);
  if (strength !== undefined && initImage === undefined) invalid('strength', 'given with an initImage', strength);
  if (mask !== undefined && initImage === undefined) invalid('mask', 'given with an initImage (the image to inpaint)', 'a mask alone');
  set('strength', strength);
  set('imageCfgScale', checkLimitedNumber('imageCfgScale', o.imageCfgScale));
  set('hires', checkHires(o.hires));
  const resizeMode = o.resizeMode === undefined ? DEFAULT_RESIZE_MODE : expectOneOf('resizeMode', o.resizeMode, RESIZE_MODES);
  const maskBlur = o.maskBlur === undefined ? 0 : checkMaskBlur(o.maskBlur);
  if (o.invertMask !== undefined && typeof o.invertMask !== 'boolean') invalid('invertMask', 'a boolean', o.invertMask);
  set('preview', o.preview === undefined ? undefined : expectOneOf('preview', o.preview, PREVIEW_MODES));
  set('loraApply', o.loraApply === undefined ? undefined : expectOneOf('loraApply', o.loraApply, LORA_APPLY_MODES));
  set('previewInterval', checkLimitedInteger('previewInterval', o.previewInterval));
  set('originalSize', checkPair('originalSize', o.originalSize, 'width', 'height'));
  set('cropTopLeft', checkPair('cropTopLeft', o.cropTopLeft, 'top', 'left'));
  set('targetSize', checkPair('targetSize', o.targetSize, 'width', 'height'));
  set('aestheticScore', checkLimitedNumber('aestheticScore', o.aestheticScore));
  set('negativeAestheticScore', checkLimitedNumber('aestheticScore', o.negativeAestheticScore, 'negativeAestheticScore'));
  set('embeddings', checkEmbeddings('embeddings', o.embeddings));
  const onPreview = checkCallback<(p: GeneratePreview) => void>('onPreview', o.onPreview);
  if (onPreview) request.previews = true;
  let refiner: { model: import('./model.ts').Model; switchAt: number } | undefined;
  if (o.refiner !== undefined) {
    if (!isObject(o.refiner)) invalid('refiner', 'an object { model, switchAt? }', o.refiner);
    const r = o.refiner as Record<string, unknown>;
    expectKnownKeys('refiner', r, ['model', 'switchAt']);
    const m = r.model as { generate?: unknown } | undefined;
    if (!isObject(m) || typeof m.generate !== 'function') invalid('refiner.model', 'a model from loadModel()', r.model);
    const switchAt = r.switchAt === undefined ? DEFAULT_REFINER_SWITCH_AT : r.switchAt;
    if (typeof switchAt !== 'number' || !Number.isFinite(switchAt) || switchAt <= 0 || switchAt >= 1) {
      invalid('refiner.switchAt', 'a number above 0 and below 1', switchAt);
    }
    refiner = { model: r.model as import('./model.ts').Model, switchAt };
  }
  const controlNets = checkControlNets(o.controlNets);
  if (controlNets) request.controlNets = controlNets.requests;
  return {
    request,
    images: { initImage, mask, resizeMode, maskBlur, invertMask: o.invertMask === true, controlNets },
    signal: checkSignal('signal', o.signal),
    onProgress: checkCallback<(p: GenerateProgress) => void>('onProgress', o.onProgress),
    onPreview,
    refiner,
    loras: { specs: checkLoras(o.loras), tags: tagged.tags },
  };
}

function checkMaskBlur(v: unknown): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (v > 0 && v < MIN_MASK_BLUR) || v > MAX_MASK_BLUR) {
    invalid('maskBlur', `0 or a number of pixels from ${MIN_MASK_BLUR} to ${MAX_MASK_BLUR}`, v);
  }
  return v;
}

/**
 * Reads the image options into the native request: decoded, fitted to width x height (which
 * default to the init image's size, rounded to the model's multiple). Errors name the option.
 */
export async function readImageInputs(
  images: ImageRequest,
  request: NativeGenerateRequest,
  model: { spatialMultiple: number },
): Promise<void> {
  if (images.initImage === undefined) return;
  let width = request.width, height = request.height;
  if (width === undefined || height === undefined) {
    const own = await readImage(images.initImage, 'initImage');
    const fit = (side: number) => {
      const m = model.spatialMultiple;
      return Math.min(Math.floor(LIMITS.width.max / m) * m, Math.max(Math.ceil(LIMITS.width.min / m) * m, Math.round(side / m) * m));
    };
    width ??= fit(own.width);
    height ??= fit(own.height);
    request.width = width;
    request.height = height;
  }
  const target = { width, height, resizeMode: images.resizeMode };
  const init = await readImage(images.initImage, 'initImage', target);
  request.initImage = { data: init.data, width: init.width, height: init.height, channels: init.channels };
  if (images.mask !== undefined) {
    const m = await readMask(images.mask, 'mask', target, { blur: images.maskBlur, invert: images.invertMask });
    request.mask = { data: m.data, width: m.width, height: m.height, channels: 1 };
  }
}

/** stable-diffusion.cpp's float formatting in the parameters text (`%f`). */
const f6 = (v: number) => v.toFixed(6);

/** A1111's display names of the samplers it has (the rest keep sdnode's name in the metadata). */
export const A1111_SAMPLER_NAMES: Partial<Record<Sampler, string>> = {
  euler: 'Euler', euler_a: 'Euler a', heun: 'Heun', dpm2: 'DPM2', 'dpm++2s_a': 'DPM++ 2S a', 'dpm++2m': 'DPM++ 2M',
  'dpm++2m_sde': 'DPM++ 2M SDE', lms: 'LMS', lcm: 'LCM', ddim_trailing: 'DDIM',
};
/** A1111's (and stable-diffusion.cpp's) names of the hires upscalers, as the metadata writes them. */
export const A1111_UPSCALER_NAMES: Record<HiresUpscaler, string> = {
  latent: 'Latent', 'latent-nearest': 'Latent (nearest)', 'latent-nearest-exact': 'Latent (nearest-exact)',
  'latent-antialiased': 'Latent (antialiased)', 'latent-bicubic': 'Latent (bicubic)',
  'latent-bicubic-antialiased': 'Latent (bicubic antialiased)', lanczos: 'Lanczos', nearest: 'Nearest',
};
/** A1111's "Schedule type" names of the schedules it has. */
export const A1111_SCHEDULE_NAMES: Partial<Record<(typeof SCHEDULERS)[number], string>> = {
  discrete: 'Normal', karras: 'Karras', exponential: 'Exponential', ays: 'Align Your Steps', sgm_uniform: 'SGM Uniform',
  simple: 'Simple', kl_optimal: 'KL Optimal', beta: 'Beta',
};

/**
 * The A1111 `parameters` text (the line layout and field names that A1111-compatible readers
 * parse), with A1111's sampler and schedule names where A1111 has the method.
 */
export function parametersText(
  o: ResolvedGenerateOptions,
  seed: number,
  modelName: string,
  clipSkipGiven: boolean,
  version: string,
): string {
  const { scheduler, eta } = o;
  const lines = [o.prompt];
  if (o.negativePrompt) lines.push(`Negative prompt: ${o.negativePrompt}`);
  const fields = [
    `Steps: ${o.steps}`,
    `CFG scale: ${f6(o.cfgScale)}`,
    ...(Number.isFinite(eta) && eta > 0 ? [`Eta: ${f6(eta)}`] : []),
    `Seed: ${seed}`,
    `Size: ${o.width}x${o.height}`,
    `Model: ${modelName}`,
    `RNG: ${o.rng}`,
    `Sampler: ${A1111_SAMPLER_NAMES[o.sampler] ?? o.sampler}`,
    `Schedule type: ${A1111_SCHEDULE_NAMES[scheduler] ?? scheduler}`,
    ...(clipSkipGiven ? [`Clip skip: ${o.clipSkip}`] : []),
    ...(o.strength !== undefined ? [`Denoising strength: ${f6(o.strength)}`] : []),
    ...(o.imageCfgScale !== undefined ? [`Image CFG scale: ${f6(o.imageCfgScale)}`] : []),
    ...(o.maskBlur ? [`Mask blur: ${o.maskBlur}`] : []),
    ...(o.hires
      ? [
          `Hires resize: ${o.hires.width}x${o.hires.height}`,
          `Hires steps: ${o.hires.steps}`,
          `Hires upscaler: ${A1111_UPSCALER_NAMES[o.hires.upscaler]}`,
          // A1111 writes the hires pass's strength as "Denoising strength" (txt2img has no other).
          `${o.strength === undefined ? 'Denoising strength' : 'Hires denoising strength'}: ${f6(o.hires.strength)}`,
        ]
      : []),
    ...(o.refiner ? [`Refiner: ${o.refiner.model}`, `Refiner switch at: ${o.refiner.switchAt}`] : []),
    ...controlNetFields(o.controlNets),
    `Version: sdnode ${version}`,
  ];
  lines.push(fields.join(', '));
  return lines.join('\n');
}

/** An RGB image with encoders; `parameters` (the A1111 text) goes into each format's metadata when given. */
export function makeRgbImage(data: Uint8Array, width: number, height: number, parameters?: string): RgbImage {
  return {
    width,
    height,
    channels: 3,
    data,
    toPNG: () => encodePNG(data, width, height, parameters === undefined ? {} : { parameters }),
    toJPEG: (options) => encodeJPEG(data, width, height, { quality: options?.quality, parameters }),
    toWebP: (options) => encodeWebP(data, width, height, { quality: options?.quality, lossless: options?.lossless, parameters }),
    toSharp: () => rgbToSharp(data, width, height),
  };
}

/** Builds the image objects of a result. */
export function makeImage(data: Uint8Array, width: number, height: number, seed: number, parameters: string): GeneratedImage {
  return { ...makeRgbImage(data, width, height, parameters), seed };
}


