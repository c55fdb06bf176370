/**
 * Small validation predicates and one error-message shape:
 * `<name> must be <what is allowed>; received <value>`.
 * @module
 */
import { InvalidArgumentError } from './errors.ts';

export const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
export const isString = (v: unknown): v is string => typeof v === 'string';
export const isNonEmptyString = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
export const isFiniteNumber = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
export const isInteger = (v: unknown): v is number => Number.isSafeInteger(v);
export const isDefined = <T>(v: T | undefined): v is T => v !== undefined;

/** Renders a received value for an error message: short, unambiguous, never throws. */
export function describe(value: unknown): string {
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  try {
    const s = JSON.stringify(value);
    return s && s.length <= 80 ? s : `an object of type ${value.constructor?.name ?? 'Object'}`;
  } catch {
    return 'an object';
  }
}

/** Throws the one-shape InvalidArgumentError. */
export function invalid(name: string, expected: string, received: unknown): never {
  throw new InvalidArgumentError(`${name} must be ${expected}; received ${describe(received)}`);
}

export function expectNonEmptyString(name: string, v: unknown): string {
  if (!isNonEmptyString(v)) invalid(name, 'a non-empty string', v);
  if (v.includes('\0')) invalid(name, 'a string without NUL characters', v);
  return v;
}

export function expectOptionsObject(name: string, v: unknown): Record<string, unknown> {
  if (v === undefined) return {};
  if (!isObject(v)) invalid(name, 'an object', v);
  return v;
}

export function expectIntegerInRange(name: string, v: unknown, min: number, max: number): number {
  if (!isInteger(v) || v < min || v > max) invalid(name, `an integer from ${min} to ${max}`, v);
  return v;
}

export function expectOneOf<T extends string>(name: string, v: unknown, allowed: readonly T[]): T {
  if (!isString(v) || !(allowed as readonly string[]).includes(v)) {
    invalid(name, `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`, v);
  }
  return v as T;
}

/**
 * Unknown option names are errors at every entry point: a typo (`{ thread: 2 }`) must not be
 * silently ignored. Throws InvalidArgumentError naming the first unknown key and the known ones.
 */
export function expectKnownKeys(name: string, obj: Record<string, unknown>, known: ReadonlySet<string> | readonly string[]): void {
  const allowed: ReadonlySet<string> = known instanceof Set ? known : new Set(known as readonly string[]);
  for (const k of Object.keys(obj)) {
    if (!allowed.has(k)) invalid(name, `known option names (${[...allowed].join(', ')})`, k);
  }
}
