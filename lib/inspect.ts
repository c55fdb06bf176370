import path from 'node:path';
import {
  callNative,
  type NativeTextEncoderParams,
  type NativeUnetParams,
  type NativeVaeParams,
} from './binding.ts';
import { expectNonEmptyString } from './validate.ts';

/** Model families sdnode recognizes. `unknown` is used for files holding only a VAE or a text encoder. */
export type Architecture = 'sd1' | 'sd2' | 'sdxl' | 'sdxl-refiner' | 'unknown';
/** Container formats sdnode reads. `torch` is a PyTorch zip checkpoint (.ckpt/.pt/.pth). */
export type ModelFormat = 'safetensors' | 'gguf' | 'torch' | 'diffusers';
export type ComponentName = 'unet' | 'vae' | 'textEncoder' | 'textEncoder2';

/** UNet hyperparameters, read from tensor shapes (heads and prediction type from metadata or the architecture's standard). */
export type UnetHyperparameters = NativeUnetParams;
/** VAE hyperparameters, read from tensor shapes. */
export type VaeHyperparameters = NativeVaeParams;
/** Text-encoder hyperparameters, read from tensor shapes. */
export type TextEncoderHyperparameters = NativeTextEncoderParams;

/** What {@link inspectModel} reports about a model file or folder. */
export interface ModelInspection {
  /** Absolute path of what was inspected. */
  path: string;
  format: ModelFormat;
  architecture: Architecture;
  /** Components present, in the order unet, vae, textEncoder, textEncoder2. */
  components: ComponentName[];
  /** Parameter counts per component (0 when absent) and their sum. */
  parameters: { unet: number; vae: number; textEncoder: number; textEncoder2: number; total: number };
  /** Stored tensor types and how many tensors have each, e.g. `{ f16: 1131 }`. */
  dtypes: Record<string, number>;
  hyperparameters: {
    unet?: UnetHyperparameters;
    vae?: VaeHyperparameters;
    textEncoder?: TextEncoderHyperparameters;
    textEncoder2?: TextEncoderHyperparameters;
  };
  /** Number of tensors stored in the file(s). */
  tensorCount: number;
  /** Stored tensor names sdnode does not know (ignored when loading). */
  unknownTensors: string[];
  /** Known tensors that no component uses (`<component>.<name>`), ignored when loading. */
  unusedTensors: string[];
  /** Text metadata: safetensors `__metadata__`, GGUF key/values, diffusers config files. */
  metadata: Record<string, string>;
  /** Assumptions made where the file was silent, e.g. the prediction type. */
  warnings: string[];
}

/**
 * Reads a model's headers (nothing is loaded into memory beyond a memory map) and reports its
 * format, architecture, components, parameter counts, tensor types and hyperparameters.
 *
 * Accepts safetensors (single or a sharded `*.safetensors.index.json`), GGUF, PyTorch zip
 * checkpoints (`.ckpt`, `.pt`, `.pth`; read through a restricted unpickler, nothing in the file
 * is executed) and diffusers folders.
 *
 * @throws {InvalidArgumentError} `modelPath` is not a non-empty string.
 * @throws {IoError} the file cannot be opened or mapped.
 * @throws {ModelFormatError} the file is corrupt, truncated or inconsistent.
 * @throws {UnsupportedModelError} the file is well-formed but not a model sdnode runs.
 * @example
 * ```ts
 * const info = await inspectModel('v1-5-pruned-emaonly.safetensors');
 * console.log(info.architecture, info.parameters.unet); // 'sd1' 859520964
 * ```
 */
export async function inspectModel(modelPath: string): Promise<ModelInspection> {
  const abs = path.resolve(expectNonEmptyString('modelPath', modelPath));
  const n = await callNative((a) => a.inspectModel(abs));
  const p = n.parameters;
  const hyperparameters: ModelInspection['hyperparameters'] = {};
  if (n.unet) hyperparameters.unet = n.unet;
  // The scale is stored as a float32; report the decimal it was written as (0.18215, not 0.18215000629).
  if (n.vae) hyperparameters.vae = { ...n.vae, scaleFactor: Number(n.vae.scaleFactor.toPrecision(7)) };
  if (n.textEncoder) hyperparameters.textEncoder = n.textEncoder;
  if (n.textEncoder2) hyperparameters.textEncoder2 = n.textEncoder2;
  return {
    path: abs,
    format: n.format,
    architecture: n.architecture,
    components: n.components as ComponentName[],
    parameters: { ...p, total: p.unet + p.vae + p.textEncoder + p.textEncoder2 },
    dtypes: n.dtypes,
    hyperparameters,
    tensorCount: n.tensorCount,
    unknownTensors: n.unknownTensors,
    unusedTensors: n.unusedTensors,
    metadata: n.metadata,
    warnings: n.warnings,
  };
}
