// The full-size random SD1.5 checkpoint of ../shared/tools/make-sd15-random.py and the
// reference outputs of stable-diffusion.cpp on it (../shared/reference/sd15-random/).
// Opt-in: these suites run when SDNODE_REFERENCE=1.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../lib/binding.ts';
import { randn, type GenerateOptions, type Rng, type Sampler, type Scheduler } from '../../lib/index.ts';

export const referenceEnabled = process.env.SDNODE_REFERENCE === '1';
export const sharedDir = process.env.SDNODE_SHARED_DIR ?? path.resolve(packageRoot, '..', 'shared');
/** The SD1.5 text-to-image case sets (README in ../shared/reference/). */
export const referenceCaseDirs = ['sd15-random', 'sd15-random-2'].map((d) => path.join(sharedDir, 'reference', d));
/** The image-to-image case set. */
export const img2imgCaseDir = path.join(sharedDir, 'reference', 'sd15-img2img');
export const sdxlCaseDir = path.join(sharedDir, 'reference', 'sdxl-random');

const modelCache = () => process.env.SDNODE_MODEL_CACHE ?? path.join(os.homedir(), '.cache', 'sdnode', 'models');

/** Runs a ../shared/tools generator once into the cache (python3 with numpy) and returns the file. */
function cachedModel(file: string, script: string, args: string[]): string {
  const out = path.join(modelCache(), file);
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(modelCache(), { recursive: true });
  const tmp = `${out}.partial-${process.pid}`;
  execFileSync('python3', [path.join(sharedDir, 'tools', script), tmp, ...args], { stdio: 'inherit' });
  fs.renameSync(tmp, out);
  return out;
}

/** Makes the checkpoint once into the cache (2.1 GB, ~20 s; needs python3 with numpy). */
export function sd15RandomCheckpoint(): string {
  return cachedModel('sd15-random-f16-seed1234.safetensors', 'make-sd15-random.py', ['--seed', '1234']);
}

/** The reference's other models, by the file name its cases give (`models/<file>`). */
export function referenceModel(file: string): string {
  switch (file) {
    case 'sd15-random-f16.safetensors': return sd15RandomCheckpoint();
    case 'sd15-inpaint-random-f16.safetensors': return cachedModel(file, 'make-sd15-inpaint-random.py', []);
    case 'sd15-ip2p-random-f16.safetensors': return cachedModel(file, 'make-sd15-inpaint-random.py', ['--in-channels', '8']);
    case 'taesd-random-f16.safetensors': return cachedModel(file, 'make-taesd-random.py', []);
    case 'controlnet-random-f16.safetensors': return cachedModel(file, 'make-controlnet-random.py', []);
    // 6.9 GB, a few minutes.
    case 'sdxl-random-f16.safetensors': return cachedModel(file, 'make-sdxl-random.py', []);
    case 'controlnet-random-f16.safetensors': return cachedModel(file, 'make-controlnet-random.py', []);
    case 'testlora.safetensors': return cachedModel(file, 'make-sd15-lora.py', []);
    case 'rndemb.safetensors': return cachedModel(file, 'make-embedding-random.py', []);
    default: throw new Error(`no generator known for ${file}`);
  }
}

export interface ReferenceCase {
  name: string;
  dir: string;
  prompt: string;
  negativePrompt: string;
  seed: number;
  width: number;
  height: number;
  steps: number;
  sampler: string;
  scheduler: string;
  cfgScale: number;
  rng: string;
  extraReferenceArgs: string;
  model?: string;
}

export function referenceCases(dirs: string[] = referenceCaseDirs): ReferenceCase[] {
  return dirs.filter((dir) => fs.existsSync(dir)).flatMap((dir) =>
    fs
      .readdirSync(dir)
      .filter((d) => fs.existsSync(path.join(dir, d, 'case.json')))
      .sort()
      .map((d) => ({ ...JSON.parse(fs.readFileSync(path.join(dir, d, 'case.json'), 'utf8')), dir: path.join(dir, d) })),
  );
}

/** Reads `<name>.f32` with its `.shape` (dimensions fastest-first). */
export function readTensor(dir: string, name: string): { data: Float32Array; shape: number[] } {
  const shape = fs.readFileSync(path.join(dir, `${name}.shape`), 'utf8').trim().split(/\s+/).map(Number);
  const buf = fs.readFileSync(path.join(dir, `${name}.f32`));
  return { data: new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4), shape };
}

/** ||a - b|| / ||b|| over the whole tensor. */
export function relativeL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** PSNR of two 8-bit images of the same size, in dB (Infinity when equal). */
export function psnrOf(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) throw new Error(`length mismatch: ${a.length} vs ${b.length}`);
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i] - b[i]) ** 2;
  const mse = se / a.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

/** The largest difference between the noise a case's seed and RNG give here and the reference's. */
export function noiseMaxDiff(c: ReferenceCase, dir = c.dir): number {
  const noiseRef = readTensor(dir, 'noise');
  const noise = randn({ seed: c.seed, rng: c.rng as Rng, count: noiseRef.data.length });
  let max = 0;
  for (let i = 0; i < noise.length; i++) max = Math.max(max, Math.abs(noise[i]! - noiseRef.data[i]!));
  return max;
}

/** A case's text-to-image options as generate() takes them, final latents returned. */
export function caseGenerateOptions(c: ReferenceCase): GenerateOptions {
  return {
    prompt: c.prompt, negativePrompt: c.negativePrompt, width: c.width, height: c.height, steps: c.steps, cfgScale: c.cfgScale,
    sampler: c.sampler as Sampler, scheduler: c.scheduler as Scheduler, seed: c.seed, rng: c.rng as Rng, returnLatents: true,
  };
}
