/**
 * The native boundary, typed in one place. Everything the C++ addon exports is declared here;
 * the rest of lib/ only talks to the addon through {@link native} and {@link callNative}.
 * @module
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PREDICTIONS } from './engine-tables.ts';
import { NativeLoadError, fromNative } from './errors.ts';

/** Root of the installed package (lib/ or dist/ sit one level below it). */
/** What a UNet predicts (diffusion/prediction.h). */
export type Prediction = (typeof PREDICTIONS)[number];

export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// ------------------------------------------------------------------ shapes crossing the boundary

export interface NativeDevice {
  /** ggml's device name, e.g. `"CPU"`, `"CUDA0"`, `"Vulkan0"`. */
  name: string;
  /** Human-readable description, e.g. the CPU or GPU model. */
  description: string;
  /** The backend that drives it: `"CPU"`, `"CUDA"`, `"Vulkan"`, `"Metal"`, ... */
  backend: string;
  type: 'cpu' | 'gpu' | 'igpu' | 'accel';
  /** Total device memory in bytes (0 when unknown). */
  memoryTotal: number;
  /** Free device memory in bytes at the time of the call (0 when unknown). */
  memoryFree: number;
}

export interface NativeSystemInfo {
  ggmlVersion: string;
  ggmlCommit: string;
  dynamicBackends: boolean;
  defaultThreads: number;
  backends: string[];
  devices: NativeDevice[];
  cpuFeatures: Record<string, string>;
  cpuKernels: CpuKernels;
}

/** Which of sdnode's own CPU kernels run (see README, *Speed and memory*). */
export interface CpuKernels {
  /** f16 convolutions and linear layers. */
  f16: boolean;
  /** f32 attention products. */
  f32: boolean;
  /** q8_0 / q4_0 linear layers (AVX-512 VNNI). */
  quant: boolean;
  /** Group norm (+ SiLU), attention softmax and GEGLU, each in one pass (AVX-512 DQ). */
  activations: boolean;
  /**
   * f16 models' convolutions and linear layers on AMX tiles (Intel Sapphire Rapids and later):
   * ggml's exact products summed in another order, so results differ from ggml's in the last
   * bits. Off with the environment variable `SDNODE_CPU_AMX=0` (then bit for bit ggml's);
   * models with quantized weights keep the exact kernels unless `SDNODE_CPU_AMX=all`.
   */
  amx: boolean;
}

export interface NativeUnetParams {
  inChannels: number;
  outChannels: number;
  modelChannels: number;
  channelMult: number[];
  numResBlocks: number[];
  transformerDepth: number[];
  transformerDepthMiddle: number;
  hasMiddleBlock: boolean;
  contextDim: number;
  numHeads: number;
  numHeadChannels: number;
  useLinearProjection: boolean;
  admInChannels: number;
  timeEmbedDim: number;
  prediction: Prediction;
  variant: string;
}

export interface NativeVaeParams {
  hasEncoder: boolean;
  hasDecoder: boolean;
  ch: number;
  channelMult: number[];
  numResBlocks: number;
  zChannels: number;
  inChannels: number;
  scaleFactor: number;
}

export interface NativeTextEncoderParams {
  kind: string;
  width: number;
  layers: number;
  heads: number;
  intermediate: number;
  vocab: number;
  maxPositions: number;
  projectionDim: number;
  activation: string;
}

export interface NativeModelInfo {
  format: 'safetensors' | 'gguf' | 'torch' | 'diffusers';
  architecture: 'sd1' | 'sd2' | 'sdxl' | 'sdxl-refiner' | 'unknown';
  components: string[];
  parameters: { unet: number; vae: number; textEncoder: number; textEncoder2: number };
  dtypes: Record<string, number>;
  unet: NativeUnetParams | null;
  vae: NativeVaeParams | null;
  textEncoder: NativeTextEncoderParams | null;
  textEncoder2: NativeTextEncoderParams | null;
  tensorCount: number;
  unknownTensors: string[];
  /** Known tensors that no component uses, as `<component>.<name>`. */
  unusedTensors: string[];
  ignoredTensors: number;
  metadata: Record<string, string>;
  warnings: string[];
}

/** What inspectLora() finds in a LoRA file (the public `LoraInspection`). */
export interface NativeLoraInfo {
  /** Absolute path of the file. */
  path: string;
  /** The container: safetensors, gguf or torch. */
  format: string;
  /** The name convention(s) found: `kohya`, `diffusers`, `peft`, `ldm` (joined with `+` when mixed). */
  naming: string;
  /** Module kinds found: `lora`, `locon` (convolutions), `loha`, `lokr`, `diff` (full deltas), and `dora`. */
  kinds: string[];
  /** The smallest and largest rank of its low-rank modules (0 when it has none). */
  rank: { min: number; max: number };
  tensorCount: number;
  /**
   * The weights it adapts. With a model: canonical names (`unet` + `input_blocks.1.1.proj_in.weight`)
   * and their shapes, every module checked against them; without one, the component its prefix
   * names and the stored module key.
   */
  targets: Array<{ key: string; component: string; target: string; kind: string; rank: number; shape?: number[] }>;
  /** Tensors that would be ignored (for the given model, or as not LoRA tensors at all), and why. */
  ignored: Array<{ tensor: string; reason: string }>;
  metadata: Record<string, string>;
}

/** A shared flag native work polls (between steps and inside graph computation). */
export interface NativeAbortFlag {
  abort(): void;
  readonly aborted: boolean;
}

export interface NativeLoadOptions {
  weightType?: string;
  threads?: number;
  device?: string;
  /** A TAESD file loaded next to the model. */
  taesd?: string;
  /** A standalone VAE file used instead of the checkpoint's. */
  vae?: string;
  /** Overrides the detected prediction type. */
  prediction?: string;
  /** A folder of textual-inversion embeddings (trigger = file name without extension). */
  embeddingsDir?: string;
}

/** Which decoder turns latents into images and back, and its tiling (checked by the engine). */
export interface NativeCodecOptions {
  decoder?: string;
  /** Absent: automatic (by vaeMemoryBudget); true or an object: always tiled (fields left out take the reference's defaults); false: never. */
  vaeTiling?: boolean | { tileSize?: number; overlap?: number };
  /** Bytes an untiled run may take before automatic tiling tiles it. */
  vaeMemoryBudget?: number;
}

export interface NativeLoadedInfo {
  architecture: 'sd1' | 'sd2' | 'sdxl' | 'sdxl-refiner';
  device: string;
  weightBytes: number;
  /** Weights used in place from the memory-mapped model file (not in weightBytes). */
  mappedBytes: number;
  threads: number;
  contextDim: number;
  latentChannels: number;
  prediction: Prediction;
  /** The UNet's noise levels (model.ts `NoiseScheduleInfo`). */
  noiseSchedule: { kind: 'discrete' | 'edm'; sigmaMin: number; sigmaMax: number; fromFile: boolean };
  /** Image width/height must be multiples of this. */
  spatialMultiple: number;
  /** Tensors that no component uses (`<component>.<name>`): ignored. */
  unusedTensors: string[];
  /** What loading assumed or ignored. */
  warnings: string[];
}

export interface NativeEncoded {
  /** Hidden states, [tokens][dim] row-major. */
  data: Float32Array;
  tokens: number;
  dim: number;
  /** SDXL: the pooled bigG output (1280). */
  pooled?: Float32Array;
  /** The token ids encoded (tokens of them); embedding vectors are ids past the vocabulary. */
  tokenIds: Int32Array;
}

export interface NativeGenerated {
  images: Array<{ data: Uint8Array; seed: number }>;
  /** Per image (with returnLatents): [C][H][W]. */
  latents: Array<Float32Array | undefined>;
  timings: { textEncode: number; vaeEncode: number; sampling: number; vaeDecode: number; total: number; loraApply: number };
  /** What the run noticed but went on with (e.g. LoRA tensors that adapt nothing in this model). */
  warnings: string[];
  /** Bytes the run's LoRAs hold (merged copies and run-time factors). */
  loraBytes: number;
  /** Every option as used, defaults filled in. */
  options: import('./generate.ts').ResolvedGenerateOptions;
  /** [C, H, W] of each latent. */
  latentShape: [number, number, number];
  /** The images' size (the hires target with hires). */
  imageWidth: number;
  imageHeight: number;
}

/** What generate()'s callback receives. */
export type NativeGenerateEvent =
  | { kind: 'progress'; step: number; steps: number; elapsedMs: number }
  | { kind: 'preview'; step: number; steps: number; index: number; width: number; height: number; data: Uint8Array };

/** A loaded model: immutable, shared by its sessions. */
export interface NativeModel {
  info(): NativeLoadedInfo;
  tokenize(text: string): { tokens: number[]; weights: number[] };
  /** A session: its own thread and compute buffers; its jobs run one at a time, in call order. */
  createSession(): NativeSession;
  dispose(): void;
}

export interface NativeSession {
  info(): { computeBytes: number };
  /** `onEvent` gets each step's progress and, with `options.previews`, the previews (before that step's progress). */
  generate(
    options: import('./generate.ts').NativeGenerateRequest,
    onEvent?: (e: NativeGenerateEvent) => void,
    abort?: NativeAbortFlag,
  ): Promise<NativeGenerated>;
  encodePrompt(
    text: string, clipSkip?: number, abort?: NativeAbortFlag, embeddings?: import('./embeddings.ts').NativeEmbedding[],
    adapters?: { loras?: import('./lora.ts').NativeLora[]; loraApply?: string; prompt2?: string },
  ): Promise<NativeEncoded>;
  encodeImage(
    pixels: Uint8Array, width: number, height: number, channels: number, seed: number | undefined, rng: string,
    abort?: NativeAbortFlag, codec?: NativeCodecOptions,
  ): Promise<{ data: Float32Array; width: number; height: number; channels: number }>;
  /** RGB bytes (height*8 x width*8 x 3) per latent. */
  decodeLatents(
    data: Float32Array, width: number, height: number, channels: number, count: number, abort?: NativeAbortFlag,
    codec?: NativeCodecOptions,
  ): Promise<Uint8Array[]>;
  /** Settles once every job queued before it has; later calls throw Disposed. */
  dispose(): Promise<void>;
}

/** NativeControlNet.info(): what loadControlNet found. */
export interface NativeControlNetInfo {
  path: string;
  /** The family it fits, by its context width. */
  architecture: 'sd1' | 'sd2' | 'sdxl' | 'unknown';
  device: string;
  weightBytes: number;
  mappedBytes: number;
  contextDim: number;
  modelChannels: number;
  latentChannels: number;
  hintChannels: number;
  /** Residuals per evaluation: one per UNet input block, then the middle block's. */
  controlCount: number;
  unusedTensors: string[];
  warnings: string[];
}

/** A loaded ControlNet: immutable, shared by every generation that names it. */
export interface NativeControlNet {
  info(): NativeControlNetInfo;
  dispose(): void;
}

export interface NativeControlNetClass {
  load(
    path: string,
    options: { weightType?: string; threads?: number; device?: string },
    onProgress?: (fraction: number) => void,
    abort?: NativeAbortFlag,
  ): Promise<NativeControlNet>;
}

/** The engine's option tables (lib/engine-tables.ts is generated from them). */
export interface NativeOptionTables {
  samplers: string[];
  schedulers: string[];
  rngs: string[];
  weightTypes: string[];
  architectures: string[];
  decoders: string[];
  previewModes: string[];
  predictions: string[];
  loraApplyModes: string[];
  limits: Record<string, { min: number; max: number; integer: boolean; minExclusive?: boolean }>;
  imageSideMultiple: number;
  promptMaxLength: number;
  defaults: {
    steps: number; cfgScale: number; sampler: string; rng: string; strength: number; imageCfgScale: number;
    hiresScale: number; hiresStrength: number; hiresUpscaler: string; vaeMemoryBudget: number; previewInterval: number;
  };
  hiresUpscalers: string[];
  archDefaults: Record<string, { width: number; height: number; clipSkip: number; prediction: string; vaeScaleFactor: number }>;
  samplerDefaults: Record<string, { scheduler: string; eta: number }>;
}

export interface NativeModelClass {
  load(
    path: string,
    options: NativeLoadOptions,
    onProgress?: (fraction: number) => void,
    abort?: NativeAbortFlag,
  ): Promise<NativeModel>;
}

export interface NativeAddon {
  /** sdnode's version as compiled into the addon. */
  version: string;
  systemInfo(): NativeSystemInfo;
  inspectModel(path: string): Promise<NativeModelInfo>;
  /** A LoRA file's format and targets; with a model, mapped onto its layers (and checked). */
  inspectLora(path: string, model?: NativeModel): Promise<NativeLoraInfo>;
  /** The noise stream `seed` gives with `rng` (count floats). */
  randn(seed: number, rng: string, count: number): Float32Array;
  optionTables(): NativeOptionTables;
  /** Aborts every running job of this thread's environment and joins the engine's threads. */
  shutdown(): void;
  /** Bytes the addon's objects report to V8 as external memory now (weights, compute buffers, LoRA tensors). */
  externalMemory(): number;
  AbortFlag: new () => NativeAbortFlag;
  NativeModel: NativeModelClass;
  NativeControlNet: NativeControlNetClass;
  /** The Canny preprocessor on a copy of `pixels` (interleaved, 1, 3 or 4 channels), off the JS thread. */
  canny(pixels: Uint8Array, width: number, height: number, channels: number, options: Record<string, unknown>): Promise<Uint8Array>;
}

// ------------------------------------------------------------------ loading

let loaded: NativeAddon | undefined;
let loadError: unknown;

function load(): NativeAddon {
  const require = createRequire(import.meta.url);
  const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
  return nodeGypBuild(packageRoot) as NativeAddon;
}

/** The addon, loaded on first use. Throws {@link NativeLoadError} with what to do when it cannot load. */
export function native(): NativeAddon {
  if (loaded) return loaded;
  if (loadError === undefined) {
    try {
      const addon = load();
      loaded = addon;
      // process.exit() and an uncaught exception on the main thread end the process without
      // tearing its environment down: stop native work while everything it uses still exists.
      process.once('exit', () => addon.shutdown());
      return loaded;
    } catch (e) {
      loadError = e;
    }
  }
  const reason = loadError instanceof Error ? loadError.message : String(loadError);
  throw new NativeLoadError(
    `sdnode's native addon could not be loaded for ${process.platform}-${process.arch} (Node ${process.version}): ${reason}\n` +
      `No prebuilt binary matched and no source build was found. Build it with \`npm rebuild sdnode\` ` +
      `(needs cmake, a C++17 compiler and git), or see the README's build section.`,
    { cause: loadError },
  );
}

/**
 * Calls into the addon and turns native failures into typed errors (see lib/errors.ts). For
 * async calls the typed error is created after the await, so its stack is the caller's.
 */
export async function callNative<T>(fn: (addon: NativeAddon) => Promise<T> | T): Promise<T> {
  const addon = native();
  try {
    return await fn(addon);
  } catch (e) {
    throw fromNative(e);
  }
}

/** Synchronous variant of {@link callNative}. */
export function callNativeSync<T>(fn: (addon: NativeAddon) => T): T {
  const addon = native();
  try {
    return fn(addon);
  } catch (e) {
    throw fromNative(e);
  }
}
