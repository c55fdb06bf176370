/**
 * sdnode: Stable Diffusion for Node.js.
 * @module
 */
export { systemInfo, type SystemInfo, type DeviceInfo } from './system.ts';
export type { CpuKernels } from './binding.ts';
export {
  inspectModel,
  type ModelInspection,
  type Architecture,
  type ModelFormat,
  type ComponentName,
  type UnetHyperparameters,
  type VaeHyperparameters,
  type TextEncoderHyperparameters,
} from './inspect.ts';
export {
  SdError,
  InvalidArgumentError,
  ModelFormatError,
  ImageFormatError,
  UnsupportedModelError,
  AbortError,
  IoError,
  OutOfMemoryError,
  DisposedError,
  NativeLoadError,
  InternalError,
  type SdErrorCode,
} from './errors.ts';
export {
  loadModel,
  randn,
  Model,
  type LoadModelOptions,
  type EncodedPrompt,
  type EncodePromptOptions,
  type EncodeImageOptions,
  type DecodeLatentsOptions,
  type Decoder,
  type VaeTilingOptions,
  type VaeTiling,
  type RawImage,
  type Latent,
  type RandnOptions,
} from './model.ts';
export {
  loadControlNet,
  cannyEdges,
  ControlNet,
  type LoadControlNetOptions,
  type ControlNetUnit,
  type CannyOptions,
  type ResolvedControlNet,
} from './controlnet.ts';
export type {
  GenerateOptions,
  GenerateResult,
  GeneratedImage,
  GenerateProgress,
  GeneratePreview,
  GenerateEvent,
  GenerateTimings,
  HiresOptions,
  HiresUpscaler,
  PreviewMode,
  RgbImage,
  ResolvedGenerateOptions,
} from './generate.ts';
export { ARCH_DEFAULTS, DECODERS, DEFAULTS, HIRES_UPSCALERS, LIMITS, LORA_APPLY_MODES, PREVIEW_MODES, SAMPLER_DEFAULTS } from './engine-tables.ts';
export {
  SAMPLERS,
  SCHEDULERS,
  SCHEDULER_ALIASES,
  RNGS,
  WEIGHT_TYPES,
  type Sampler,
  type Scheduler,
  type Rng,
  type WeightType,
} from './options.ts';
export { encodePNG, decodePNG, type DecodedPNG } from './image.ts';
export {
  readImage,
  readMask,
  encodeJPEG,
  encodeWebP,
  RESIZE_MODES,
  DEFAULT_RESIZE_MODE,
  MAX_INPUT_PIXELS,
  DEFAULT_JPEG_QUALITY,
  DEFAULT_WEBP_QUALITY,
  type ImageInput,
  type ResizeMode,
  type ImageTarget,
  type MaskOptions,
} from './image-io.ts';
export {
  inspectLora,
  extractLoraTags,
  LORA_EXTENSIONS,
  type LoraInspection,
  type LoraSpec,
  type LoraApply,
} from './lora.ts';
export type { EmbeddingOption } from './embeddings.ts';
export { readParameters, parseParameters, type ImageParameters, type ParsedGenerateOptions } from './parameters.ts';
export { version } from './version.ts';
