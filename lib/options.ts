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

import { IMAGE_SIDE_MULTIPLE, LIMITS, PROMPT_MAX_LENGTH, RNGS, SAMPLERS, SCHEDULERS, SCHEDULER_ALIASES, WEIGHT_TYPES } from './engine-tables.ts';

// Names and limits are the engine's (lib/engine-tables.ts is generated from its tables).
export { RNGS, SAMPLERS, SCHEDULERS, SCHEDULER_ALIASES, WEIGHT_TYPES };
export type Sampler = (typeof SAMPLERS)[number];
/** A schedule name, or an alias the engine maps to one (`normal` = `discrete`, as in stable-diffusion.cpp). */
export type Scheduler = (typeof SCHEDULERS)[number] | keyof typeof SCHEDULER_ALIASES;
/**
 * Noise generators. `cuda`: Philox, the same numbers as A1111's "GPU" seeds (default).
 * `cpu`: torch's CPU mt19937 generator (ComfyUI seeds). `std_default`: C++'s
 * std::default_random_engine as libstdc++ implements it.
 */
export type Rng = (typeof RNGS)[number];
/** Weight types for on-load conversion of linear weights (see README: which tensors stay unquantized). */
export type WeightType = (typeof WEIGHT_TYPES)[number];

/** Largest width/height accepted (pixels). */
export const MAX_IMAGE_SIDE = LIMITS.width.max;
/** Largest step count accepted. */
export const MAX_STEPS = LIMITS.steps.max;
/** Largest batch accepted. */
export const MAX_BATCH = LIMITS.batchSize.max;

/** Checks an integer option against the engine's limit for it. */
export function checkLimitedInteger(name: keyof typeof LIMITS, v: unknown, label: string = name): number | undefined {
  if (v === undefined) return undefined;
  return expectIntegerInRange(label, v, LIMITS[name].min, LIMITS[name].max);
}

/** Checks a number option against the engine's limit for it. */
export function checkLimitedNumber(name: keyof typeof LIMITS, v: unknown, label: string = name): number | undefined {
  const limit: { min: number; max: number; minExclusive?: boolean } = LIMITS[name];
  if (!limit.minExclusive) return checkFinite(label, v, limit.min, limit.max);
  if (v === undefined) return undefined;
  if (!isFiniteNumber(v) || v <= limit.min || v > limit.max) invalid(label, `a finite number above ${limit.min}, at most ${limit.max}`, v);
  return v;
}

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
  return checkLimitedInteger('threads', v, name);
}

export function checkWeightType(name: string, v: unknown): WeightType | undefined {
  if (v === undefined) return undefined;
  return expectOneOf(name, v, WEIGHT_TYPES);
}

export function checkImageSide(name: 'width' | 'height', v: unknown, label: string = name): number | undefined {
  if (v === undefined) return undefined;
  const { min, max } = LIMITS[name];
  if (!isInteger(v) || v < min || v > max || v % IMAGE_SIDE_MULTIPLE !== 0) {
    invalid(label, `a multiple of ${IMAGE_SIDE_MULTIPLE} from ${min} to ${max}`, v);
  }
  return v;
}

export function checkSeed(name: string, v: unknown): number | undefined {
  if (v === undefined || (isInteger(v) && v < 0)) return undefined; // negative: pick a random seed
  if (!isInteger(v) || v > LIMITS.seed.max) invalid(name, 'a safe integer (negative for a random seed)', v);
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
  if (v.length > PROMPT_MAX_LENGTH) invalid(name, `a string of at most ${PROMPT_MAX_LENGTH} characters`, v);
  return v;
}

export { expectOptionsObject, isObject };
