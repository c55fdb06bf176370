// The full-size random SD1.5 checkpoint of ../shared/tools/make-sd15-random.py and the
// reference outputs of stable-diffusion.cpp on it (../shared/reference/sd15-random/).
// Opt-in: these suites run when SDNODE_REFERENCE=1.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../lib/binding.ts';

export const referenceEnabled = process.env.SDNODE_REFERENCE === '1';
export const sharedDir = process.env.SDNODE_SHARED_DIR ?? path.resolve(packageRoot, '..', 'shared');
/** The SD1.5 text-to-image case sets (README in ../shared/reference/). */
export const referenceCaseDirs = ['sd15-random', 'sd15-random-2'].map((d) => path.join(sharedDir, 'reference', d));

/** Makes the checkpoint once into the cache (2.1 GB, ~20 s; needs python3 with numpy). */
export function sd15RandomCheckpoint(): string {
  const cache = process.env.SDNODE_MODEL_CACHE ?? path.join(os.homedir(), '.cache', 'sdnode', 'models');
  const file = path.join(cache, 'sd15-random-f16-seed1234.safetensors');
  if (fs.existsSync(file)) return file;
  fs.mkdirSync(cache, { recursive: true });
  const tmp = `${file}.partial-${process.pid}`;
  const script = path.join(sharedDir, 'tools', 'make-sd15-random.py');
  execFileSync('python3', [script, tmp, '--seed', '1234'], { stdio: 'inherit' });
  fs.renameSync(tmp, file);
  return file;
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
}

export function referenceCases(): ReferenceCase[] {
  return referenceCaseDirs.filter((dir) => fs.existsSync(dir)).flatMap((dir) =>
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
