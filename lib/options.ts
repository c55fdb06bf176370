/**
 * Options of {@link loadModel} and `model.generate()`: types, defaults and validation. Defaults
 * follow stable-diffusion.cpp for the model's architecture.
 * @module
 */
import { AbortError } from './errors.ts';
import {
  expectIntegerInRange,
  expectOneOf,
  expectOptionsObject,
  invalid,
  isFiniteNumber,
  isInteger,
  isObject,
  isString,
} from './validate.ts';

/** Sampling methods, named as stable-diffusion.cpp names them. */
export const SAMPLERS = [
  'euler',
  'euler_a',
  'heun',
  'dpm2',
  'dpm++2s_a',
  'dpm++2m',
  'dpm++2mv2',
  'ipndm',
  'ipndm_v',
  'lcm',
  'ddim_trailing',
  'tcd',
] as const;
export type Sampler = (typeof SAMPLERS)[number];

/** Sigma schedules, named as stable-diffusion.cpp names them. */
export const SCHEDULERS = [
  'discrete',
  'karras',
  'exponential',
  'ays',
  'gits',
  'sgm_uniform',
  'simple',
  'smoothstep',
  'kl_optimal',
  'lcm',
  'bong_tangent',
] as const;
export type Scheduler = (typeof SCHEDULERS)[number];

/**
 * Noise generators. `cuda`: Philox, the same numbers as A1111's "GPU" seeds (default).
 * `cpu`: torch's CPU mt19937 generator (ComfyUI seeds). `std_default`: C++'s
 * std::default_random_engine as libstdc++ implements it.
 */
export const RNGS = ['cuda', 'cpu', 'std_default'] as const;
export type Rng = (typeof RNGS)[number];

/** Weight types for on-load conversion of linear weights (see README: which tensors stay unquantized). */
export const WEIGHT_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q5_0', 'q5_1', 'q4_0', 'q4_1', 'q2_K', 'q3_K', 'q4_K', 'q5_K', 'q6_K'] as const;
export type WeightType = (typeof WEIGHT_TYPES)[number];

/** Largest width/height accepted (pixels). */
export const MAX_IMAGE_SIDE = 4096;
/** Largest step count accepted. */
export const MAX_STEPS = 1000;
/** Largest batch accepted. */
export const MAX_BATCH = 64;

export function checkSignal(name: string, v: unknown): AbortSignal | undefined {
  if (v === undefined) return undefined;
  if (!(v instanceof AbortSignal)) invalid(name, 'an AbortSignal', v);
  return v;
}

/** Throws the AbortError for an aborted signal, with the signal's reason as `cause`. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new AbortError(`${what} was aborted`, { cause: signal.reason });
}

export function checkCallback<T extends (...args: never[]) => unknown>(name: string, v: unknown): T | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'function') invalid(name, 'a function', v);
  return v as T;
}

export function checkThreads(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  return expectIntegerInRange(name, v, 1, 1024);
}

export function checkWeightType(name: string, v: unknown): WeightType | undefined {
  if (v === undefined) return undefined;
  return expectOneOf(name, v, WEIGHT_TYPES);
}

export function checkImageSide(name: string, v: unknown): number | undefined {
  if (v === undefined) return undefined;
  if (!isInteger(v) || v < 64 || v > MAX_IMAGE_SIDE || v % 8 !== 0) {
    invalid(name, `a multiple of 8 from 64 to ${MAX_IMAGE_SIDE}`, v);
  }
  return v;
}

export function checkSeed(name: string, v: unknown): number | undefined {
  if (v === undefined || (isInteger(v) && v < 0)) return undefined; // negative: pick a random seed
  if (!isInteger(v) || v > Number.MAX_SAFE_INTEGER) invalid(name, 'a safe integer (negative for a random seed)', v);
  return v;
}

export function checkFinite(name: string, v: unknown, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!isFiniteNumber(v) || v < min || v > max) invalid(name, `a finite number from ${min} to ${max}`, v);
  return v;
}

export function checkPrompt(name: string, v: unknown): string | undefined {
  if (v === undefined) return undefined;
  if (!isString(v)) invalid(name, 'a string', v);
  if (v.includes('\0')) invalid(name, 'a string without NUL characters', v);
  if (v.length > 100_000) invalid(name, 'a string of at most 100000 characters', v);
  return v;
}

export { expectOptionsObject, isObject };
