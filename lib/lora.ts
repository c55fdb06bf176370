/**
 * LoRAs in generate(): `<lora:name:weight>` tags in the prompt (resolved in loadModel's
 * `loraDir`) and the `loras` option, merged into one list of files and weights for the engine.
 * @module
 */
import fs from 'node:fs';
import path from 'node:path';
import { LIMITS, LORA_APPLY_MODES } from './engine-tables.ts';
import { callNative, type NativeLoraInfo } from './binding.ts';
import { IoError } from './errors.ts';
import { expectKnownKeys, expectNonEmptyString, invalid, isObject } from './validate.ts';

/** How LoRAs are applied: `merge` into copies of the float weights they touch, at `runtime` (`W x + s B(A x)`, for quantized weights), or `auto` (stable-diffusion.cpp's rule: runtime when the model has quantized weights, else merge). */
export type LoraApply = (typeof LORA_APPLY_MODES)[number];

/**
 * One LoRA of {@link GenerateOptions.loras}: a file, or a name in loadModel's `loraDir`.
 * @example { name: 'add_detail', weight: 0.6 }
 * @example { path: '/models/lora/lcm-lora-sdv1-5.safetensors' }
 */
export interface LoraSpec {
  /** The LoRA file (safetensors, GGUF, .pt/.ckpt). */
  path?: string;
  /** A file in loadModel's `loraDir`: its name without the extension (as `<lora:name:weight>` in a prompt). */
  name?: string;
  /** Its strength; 0 is no LoRA at all (the exact base model), negative subtracts it. From -100 to 100. @default 1 */
  weight?: number;
}

/** The file extensions a LoRA name may take in `loraDir`, in the order they are tried. */
export const LORA_EXTENSIONS = ['.safetensors', '.gguf', '.pt', '.ckpt', '.pth', '.bin'] as const;

/** A LoRA as the engine receives it. */
export interface NativeLora {
  path: string;
  weight: number;
}

/**
 * `<lora:name:weight>` (A1111's syntax; the weight may be left out for 1) taken out of a prompt,
 * as stable-diffusion.cpp removes them before tokenizing.
 * @example extractLoraTags('a cat <lora:fluffy:0.8>') // { prompt: 'a cat ', tags: [{ name: 'fluffy', weight: 0.8 }] }
 */
export function extractLoraTags(prompt: string): { prompt: string; tags: Array<{ name: string; weight: number }> } {
  const tags: Array<{ name: string; weight: number }> = [];
  const rest = prompt.replace(/<lora:([^:>]+)(?::([^>]*))?>/g, (tag, name: string, weight: string | undefined) => {
    const w = weight === undefined ? 1 : Number(weight.trim());
    if (weight !== undefined && (weight.trim() === '' || !Number.isFinite(w))) invalid(`the prompt's ${tag}`, 'a LoRA tag <lora:name:weight> with a number as its weight', weight);
    tags.push({ name: name.trim(), weight: w });
    return '';
  });
  return { prompt: rest, tags };
}

/** Levenshtein distance, for "did you mean" lists. */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length];
}

/** The LoRA names (file names without extension) in a folder and its subfolders. */
export function loraNames(dir: string): string[] {
  const names: string[] = [];
  const walk = (d: string, prefix: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (e.isDirectory()) walk(path.join(d, e.name), `${prefix}${e.name}/`);
      else if ((LORA_EXTENSIONS as readonly string[]).includes(path.extname(e.name).toLowerCase())) names.push(prefix + e.name.slice(0, -path.extname(e.name).length));
    }
  };
  walk(dir, '');
  return names.sort();
}

/** The file a LoRA name means in `dir` (the name as given, else with each extension). */
export function resolveLoraName(name: string, dir: string | undefined, what: string): string {
  if (path.isAbsolute(name)) {
    if (fs.existsSync(name)) return name;
    for (const ext of LORA_EXTENSIONS) if (fs.existsSync(name + ext)) return name + ext;
    throw new IoError(`${what}: no LoRA file ${name} (with or without ${LORA_EXTENSIONS.join(', ')})`);
  }
  if (dir === undefined) invalid(what, `a LoRA path, or a name with loadModel's loraDir set (none was given) for ${JSON.stringify(name)}`, name);
  const base = path.join(dir, name);
  if (fs.existsSync(base) && fs.statSync(base).isFile()) return base;
  for (const ext of LORA_EXTENSIONS) {
    if (fs.existsSync(base + ext)) return base + ext;
  }
  const names = loraNames(dir);
  const close = names
    .map((n) => ({ n, d: distance(n.toLowerCase(), name.toLowerCase()) }))
    .filter(({ n, d }) => d <= Math.max(2, Math.floor(name.length / 3)) || n.toLowerCase().includes(name.toLowerCase()))
    .sort((a, b) => a.d - b.d)
    .slice(0, 5)
    .map(({ n }) => n);
  const hint = close.length ? `; close matches: ${close.join(', ')}` : names.length ? `; it holds ${names.length} LoRA(s), e.g. ${names.slice(0, 5).join(', ')}` : '; it holds no LoRA files';
  throw new IoError(`${what}: no LoRA named ${JSON.stringify(name)} in ${dir} (looked for ${name}${LORA_EXTENSIONS.join(`, ${name}`)})${hint}`);
}

/** Checks the `loras` option's shape (names are resolved at generate time). */
export function checkLoras(v: unknown): LoraSpec[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) invalid('loras', 'an array of { path | name, weight? }', v);
  if (v.length > LIMITS.loras.max) invalid('loras', `at most ${LIMITS.loras.max} LoRAs`, v);
  return v.map((e, i) => {
    const at = `loras[${i}]`;
    if (!isObject(e)) invalid(at, 'an object { path | name, weight? }', e);
    expectKnownKeys(at, e, ['path', 'name', 'weight']);
    if ((e.path === undefined) === (e.name === undefined)) invalid(at, 'an object with either a path or a name', e);
    const spec: LoraSpec = {};
    if (e.path !== undefined) spec.path = path.resolve(expectNonEmptyString(`${at}.path`, e.path));
    if (e.name !== undefined) spec.name = expectNonEmptyString(`${at}.name`, e.name);
    if (e.weight !== undefined) {
      const { min, max } = LIMITS.loraWeight;
      if (typeof e.weight !== 'number' || !Number.isFinite(e.weight) || e.weight < min || e.weight > max) invalid(`${at}.weight`, `a number from ${min} to ${max}`, e.weight);
      spec.weight = e.weight;
    }
    return spec;
  });
}

/**
 * The engine's LoRA list: the option's entries, then the prompt's tags, each name resolved in
 * `loraDir`; the same file twice has its weights added (as stable-diffusion.cpp does).
 */
export function resolveLoras(specs: LoraSpec[] | undefined, tags: Array<{ name: string; weight: number }>, loraDir: string | undefined): NativeLora[] {
  const out = new Map<string, number>();
  const add = (file: string, weight: number) => out.set(file, (out.get(file) ?? 0) + weight);
  (specs ?? []).forEach((s, i) => {
    const file = s.path ?? resolveLoraName(s.name!, loraDir, `loras[${i}].name`);
    add(file, s.weight ?? 1);
  });
  for (const t of tags) add(resolveLoraName(t.name, loraDir, `the prompt's <lora:${t.name}>`), t.weight);
  const { min, max } = LIMITS.loraWeight;
  return [...out].map(([file, weight]) => {
    if (weight < min || weight > max) invalid(`the weight of LoRA ${file}`, `from ${min} to ${max} in all`, weight);
    return { path: file, weight };
  });
}

/** What {@link inspectLora} reports about a LoRA file (fields described in lib/binding.ts). */
export type LoraInspection = NativeLoraInfo;

/**
 * Reads a LoRA file's names and shapes (nothing is computed) and reports its format, rank and
 * the weights it adapts; with `model`, which of that model's layers each module targets, which of
 * its tensors would be ignored and why, and an error for a module that does not fit.
 * @throws {IoError} / {@link ModelFormatError} the file cannot be read, is corrupt, or (with a model) a module's shape does not fit its layer.
 * @throws {UnsupportedModelError} with a model: nothing in the file adapts it.
 * @example
 * ```ts
 * const info = await inspectLora('lora/add_detail.safetensors', { model });
 * console.log(info.naming, info.rank, info.targets.length, info.ignored);
 * ```
 */
export async function inspectLora(loraPath: string, options?: { model?: import('./model.ts').Model }): Promise<LoraInspection> {
  const abs = path.resolve(expectNonEmptyString('loraPath', loraPath));
  if (options !== undefined && !isObject(options)) invalid('options', 'an object { model? }', options);
  if (options) expectKnownKeys('options', options, ['model']);
  if (options?.model !== undefined) return options.model.inspectLora(abs);
  return callNative((a) => a.inspectLora(abs));
}
