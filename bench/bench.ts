// `npm run bench`: txt2img speed and memory on the full-size random SD1.5 checkpoint.
//
//   npm run bench                          # f16, q8_0, q4_0, q4_K, q5_0 at 256x256, 4 steps, cfg 7, 2 threads
//   npm run bench -- --size 512 --threads 4 --runs 5 --types f16,q8_0
//   npm run bench -- --baseline            # also each type on ggml's own ops, side by side
//
// Each weight type runs in its own child process (so peak RSS is that type's own): model load,
// then one warm-up generation and `runs` measured ones. Reported per stage: model load, text
// encode, UNet step (a step is both CFG evaluations; median over all steps of all runs), VAE
// decode, whole generate(), the JavaScript API's share of it (wall time of generate() over the
// native pipeline's own total), peak RSS. Figures are medians; the fastest step and decode are
// shown too (on a shared, noisy machine, what it does undisturbed). Writes bench/results/<date>.json.
// --baseline adds, per type, a run with SDNODE_CPU_KERNELS=0 SDNODE_MMAP=0: the same pipeline on
// ggml's own ops (im2col + ggml_mul_mat, as stable-diffusion.cpp runs them) and copied weights.
//
//   npm run bench -- --vae                 # VAE / TAESD stages at 512 and 1024 (--sizes 512,1024)
//   npm run bench -- --model sdxl --size 512 --steps 2 --types f16,q8_0   # the random SDXL base (6.9 GB)
//   npm run bench -- --model sdxl --size 1024 --steps 2 --runs 1 --warmup 0   # no warm-up run: minutes saved at 1024
//
// --vae times the decoders and encoders alone (decodeLatents / encodeImage on random latents and
// images, f16 file as is): full VAE decode (untiled), tiled decode (the defaults), TAESD decode,
// VAE encode, TAESD encode; each stage and size in its own child process, so peak RSS and the
// compute buffer are that stage's own. Makes the random TAESD once too.
//
//   npm run bench -- --lora                # LoRAs on SD1.5: 0, 1 and 3, merged and at run time
//   npm run bench -- --lora --types f16,q8_0 --size 256 --steps 4
//
// --lora uses three seeded random kohya LoRAs of the reference's generator (rank 8, every attention
// and feed-forward layer of the UNet and the text encoder: 792 tensors each). Per weight type, in
// one child process: for each set (none; 1 and 3 LoRAs merged; 1 and 3 at run time) a first
// generation (which applies the set) and `runs` measured ones (the set reused); then the cost of
// switching: generations alternating between two single-LoRA sets, each one applying its set.
// Reported: UNet step, text encode, the time to make a set active, and the bytes it holds.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));

interface Figures {
  type: string;
  loadS: number;
  textEncodeS: number;
  unetStepS: number;
  /** The fastest step and decode: what the machine does undisturbed (shared machines are noisy). */
  unetStepMinS: number;
  vaeDecodeS: number;
  vaeDecodeMinS: number;
  generateS: number;
  jsOverheadPct: number;
  jsOverheadMs: number;
  peakRssMB: number;
  runs: number;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

async function child(type: string, model: string, size: number, threads: number, runs: number, steps: number, warmup: number): Promise<void> {
  const { loadModel } = await import('../lib/index.ts');
  const t0 = performance.now();
  const m = await loadModel(model, { weightType: type === 'file' ? undefined : (type as never), threads });
  const loadS = (performance.now() - t0) / 1000;
  const text: number[] = [];
  const stepTimes: number[] = [];
  const vae: number[] = [];
  const total: number[] = [];
  const overhead: number[] = [];
  const overheadMs: number[] = [];
  for (let r = 1 - warmup; r <= runs; r++) {
    const marks: number[] = [];
    const wall0 = performance.now();
    const res = await m.generate({
      prompt: 'a photo of a cat',
      width: size,
      height: size,
      steps,
      cfgScale: 7,
      sampler: 'euler_a',
      seed: 42 + r,
      onProgress: ({ elapsedMs }) => marks.push(elapsedMs),
    });
    const wallMs = performance.now() - wall0;
    if (r <= 0) continue; // warm-up
    overhead.push((wallMs / res.timings.total - 1) * 100);
    overheadMs.push(wallMs - res.timings.total);
    text.push(res.timings.textEncode / 1000);
    let prev = res.timings.textEncode;
    for (const t of marks) {
      stepTimes.push((t - prev) / 1000);
      prev = t;
    }
    vae.push(res.timings.vaeDecode / 1000);
    total.push(res.timings.total / 1000);
  }
  await m.dispose();
  const out: Figures = {
    type,
    loadS,
    textEncodeS: median(text),
    unetStepS: median(stepTimes),
    unetStepMinS: Math.min(...stepTimes),
    vaeDecodeS: median(vae),
    vaeDecodeMinS: Math.min(...vae),
    generateS: median(total),
    jsOverheadPct: median(overhead),
    jsOverheadMs: median(overheadMs),
    peakRssMB: process.resourceUsage().maxRSS / 1024,
    runs,
  };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

interface LoraFigures {
  type: string;
  sets: Array<{ label: string; unetStepS: number; textEncodeS: number; applyS: number; loraMB: number; generateS: number }>;
  switchS: number;
  peakRssMB: number;
}

async function loraChild(type: string, model: string, loras: string[], size: number, threads: number, runs: number, steps: number): Promise<void> {
  const { loadModel } = await import('../lib/index.ts');
  const m = await loadModel(model, { weightType: type === 'f16' ? undefined : (type as never), threads });
  const gen = async (set: string[], apply: 'merge' | 'runtime', seed: number) => {
    const marks: number[] = [];
    const r = await m.generate({
      prompt: 'a photo of a cat', width: size, height: size, steps, cfgScale: 7, sampler: 'euler_a', seed,
      loras: set.map((path) => ({ path, weight: 0.8 })), loraApply: apply,
      onProgress: ({ elapsedMs }) => marks.push(elapsedMs),
    });
    const stepTimes: number[] = [];
    let prev = r.timings.loraApply + r.timings.textEncode;
    for (const t of marks) {
      stepTimes.push((t - prev) / 1000);
      prev = t;
    }
    return { r, stepTimes };
  };
  const sets: Array<[string, string[], 'merge' | 'runtime']> = [
    ['no LoRA', [], 'merge'], ['1 LoRA, merged', loras.slice(0, 1), 'merge'], ['3 LoRAs, merged', loras, 'merge'],
    ['1 LoRA, run time', loras.slice(0, 1), 'runtime'], ['3 LoRAs, run time', loras, 'runtime'],
  ];
  const out: LoraFigures = { type, sets: [], switchS: 0, peakRssMB: 0 };
  for (const [label, set, apply] of sets) {
    const first = await gen(set, apply, 1);
    const steps_: number[] = [], text: number[] = [], total: number[] = [];
    for (let i = 0; i < runs; i++) {
      const g = await gen(set, apply, 2 + i);
      steps_.push(...g.stepTimes);
      text.push(g.r.timings.textEncode / 1000);
      total.push(g.r.timings.total / 1000);
    }
    out.sets.push({ label, unetStepS: median(steps_), textEncodeS: median(text), applyS: first.r.timings.loraApply / 1000,
      loraMB: m.memory().compute / 1024 ** 2, generateS: median(total) });
  }
  const switches: number[] = [];
  for (let i = 0; i < runs + 1; i++) {
    const g = await gen([loras[i % 2]!], type === 'f16' ? 'merge' : 'runtime', 10 + i);
    if (i > 0) switches.push(g.r.timings.loraApply / 1000);
  }
  out.switchS = median(switches);
  out.peakRssMB = process.resourceUsage().maxRSS / 1024;
  await m.dispose();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

async function loraMain(model: string, types: string[], size: number, threads: number, runs: number, steps: number): Promise<void> {
  const loras = [99, 100, 101].map((seed) => cachedModel(`testlora-seed${seed}.safetensors`, 'make-sd15-lora.py', ['--seed', String(seed)], '9 MB'));
  const results: LoraFigures[] = [];
  for (const type of types) {
    process.stderr.write(`LoRAs on ${type}: ${size}x${size}, ${steps} steps, ${threads} threads, ${runs} runs per set...\n`);
    const r = spawnSync(
      process.execPath,
      ['--import', 'tsx', fileURLToPath(import.meta.url), '--lora-child', type, '--model', model, '--loras', loras.join(','),
        '--size', String(size), '--threads', String(threads), '--runs', String(runs), '--steps', String(steps)],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
    );
    if (r.status !== 0) throw new Error(`LoRA benchmark of ${type} failed`);
    results.push(JSON.parse(r.stdout.trim().split('\n').pop()!));
  }
  const lines = [
    `| ${size}x${size}, ${steps} steps, ${threads} threads (median of ${runs}) | ${results.map((r) => `${r.type}: UNet step | text encode | apply | compute + LoRA memory`).join(' | ')} |`,
    `| --- |${results.map(() => ' --- | --- | --- | --- |').join('')}`,
  ];
  for (const [i, set] of results[0]!.sets.entries()) {
    lines.push(`| ${set.label} | ${results.map((r) => {
      const s = r.sets[i]!;
      return `${s.unetStepS.toFixed(2)} s | ${s.textEncodeS.toFixed(3)} s | ${s.applyS.toFixed(2)} s | ${s.loraMB.toFixed(0)} MiB`;
    }).join(' | ')} |`);
  }
  lines.push(`| switching A <-> B (f16 merged, quantized at run time) | ${results.map((r) => `${r.switchS.toFixed(2)} s | | | `).join(' | ')} |`);
  lines.push(`| peak RSS of the process | ${results.map((r) => `${(r.peakRssMB / 1024).toFixed(2)} GB | | |`).join(' | ')} |`);
  process.stdout.write(lines.join('\n') + '\n');
  const outDir = path.join(here, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `lora-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ size, steps, threads, runs, cpu: os.cpus()[0]?.model, results }, null, 2));
  process.stdout.write(`wrote ${path.relative(process.cwd(), file)}\n`);
}

const VAE_STAGES = ['vae decode', 'vae decode, tiled', 'taesd decode', 'vae encode', 'taesd encode'] as const;
type VaeStage = (typeof VAE_STAGES)[number];

interface VaeFigures {
  stage: VaeStage;
  size: number;
  seconds: number;
  minSeconds: number;
  computeMB: number;
  peakRssMB: number;
  runs: number;
}

async function vaeChild(stage: VaeStage, model: string, taesd: string, size: number, threads: number, runs: number): Promise<void> {
  const { loadModel } = await import('../lib/index.ts');
  const m = await loadModel(model, { threads, taesd });
  const decoder = stage.startsWith('taesd') ? ('taesd' as const) : ('vae' as const);
  const vaeTiling = stage === 'vae decode, tiled';
  const run = async (side: number) => {
    const t0 = performance.now();
    if (stage.endsWith('encode')) {
      const data = new Uint8Array(side * side * 3).map((_, i) => (i * 37) % 256);
      await m.encodeImage({ data, width: side, height: side, channels: 3 }, { decoder, vaeTiling: false, seed: 1 });
    } else {
      const l = side / 8;
      const data = new Float32Array(4 * l * l).map((_, i) => Math.sin(i * 0.37) * 0.8);
      await m.decodeLatents({ data, width: l, height: l, channels: 4 }, { decoder, vaeTiling });
    }
    return (performance.now() - t0) / 1000;
  };
  await run(64); // faults the weights in
  const times: number[] = [];
  for (let r = 0; r < runs; r++) times.push(await run(size));
  const out: VaeFigures = {
    stage,
    size,
    seconds: median(times),
    minSeconds: Math.min(...times),
    computeMB: m.memory().compute / 1024 ** 2,
    peakRssMB: process.resourceUsage().maxRSS / 1024,
    runs,
  };
  await m.dispose();
  process.stdout.write(`${JSON.stringify(out)}\n`);
}


async function vaeMain(model: string, sizes: number[], threads: number, runs: number): Promise<void> {
  const taesd = ensureTaesd();
  const results: VaeFigures[] = [];
  for (const size of sizes) {
    for (const stage of VAE_STAGES) {
      process.stderr.write(`${stage}: ${size}x${size}, ${threads} threads, ${runs} runs...\n`);
      const r = spawnSync(
        process.execPath,
        ['--import', 'tsx', fileURLToPath(import.meta.url), '--vae-child', stage, '--model', model, '--taesd', taesd,
          '--size', String(size), '--threads', String(threads), '--runs', String(runs)],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
      );
      if (r.status !== 0) throw new Error(`benchmark of ${stage} at ${size} failed`);
      results.push(JSON.parse(r.stdout.trim().split('\n').pop()!));
    }
  }
  const lines = [
    `| ${threads} threads (median of ${runs}) | ${sizes.map((s) => `${s}x${s} time | compute | peak RSS`).join(' | ')} |`,
    `| --- |${sizes.map(() => ' --- | --- | --- |').join('')}`,
  ];
  for (const stage of VAE_STAGES) {
    const cells = sizes.map((size) => {
      const f = results.find((x) => x.stage === stage && x.size === size)!;
      return `${f.seconds.toFixed(2)} s | ${f.computeMB.toFixed(0)} MiB | ${(f.peakRssMB / 1024).toFixed(2)} GB`;
    });
    lines.push(`| ${stage} | ${cells.join(' | ')} |`);
  }
  process.stdout.write(lines.join('\n') + '\n');
  const outDir = path.join(here, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `vae-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ sizes, threads, runs, cpu: os.cpus()[0]?.model, results }, null, 2));
  process.stdout.write(`wrote ${path.relative(process.cwd(), file)}\n`);
}


/** A ../shared/tools generator's model, made once into the cache (python3 with numpy). */
function cachedModel(file: string, script: string, args: string[], what: string): string {
  const cache = process.env.SDNODE_MODEL_CACHE ?? path.join(os.homedir(), '.cache', 'sdnode', 'models');
  const out = path.join(cache, file);
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(cache, { recursive: true });
  const tool = path.resolve(here, '..', '..', 'shared', 'tools', script);
  process.stderr.write(`making ${out} with ${tool} (${what}, once)\n`);
  const r = spawnSync('python3', [tool, `${out}.partial`, ...args], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`could not make ${file} (needs python3 with numpy and ../shared/tools)`);
  fs.renameSync(`${out}.partial`, out);
  return out;
}
const ensureCheckpoint = () => cachedModel('sd15-random-f16-seed1234.safetensors', 'make-sd15-random.py', ['--seed', '1234'], '2.1 GB');
/** `--model sdxl`: the full-size random SDXL base. */
const ensureSdxl = () => cachedModel('sdxl-random-f16.safetensors', 'make-sdxl-random.py', [], '6.9 GB');
const ensureTaesd = () => cachedModel('taesd-random-f16.safetensors', 'make-taesd-random.py', [], '5 MB');


async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      model: { type: 'string' },
      size: { type: 'string', default: '256' },
      threads: { type: 'string', default: '2' },
      runs: { type: 'string' },
      steps: { type: 'string', default: '4' },
      warmup: { type: 'string', default: '1' },
      types: { type: 'string', default: 'f16,q8_0,q4_0,q4_K,q5_0' },
      baseline: { type: 'boolean', default: false },
      vae: { type: 'boolean', default: false },
      'vae-child': { type: 'string' },
      taesd: { type: 'string' },
      sizes: { type: 'string', default: '512,1024' },
      lora: { type: 'boolean', default: false },
      'lora-child': { type: 'string' },
      loras: { type: 'string' },
    },
  });
  const size = Number(values.size);
  const threads = Number(values.threads);
  // --vae's stages are long at 1024 (a full decode is ~45 s on 2 threads): one run by default.
  const runs = Number(values.runs ?? (values.vae ? 1 : 3));
  const steps = Number(values.steps);
  const warmup = Number(values.warmup);
  if (!Number.isInteger(warmup) || warmup < 0) throw new Error(`--warmup must be a whole number of runs, 0 or more; received ${values.warmup}`);
  if (values.child) return child(values.child, values.model!, size, threads, runs, steps, warmup);
  if (values['lora-child']) return loraChild(values['lora-child'], values.model!, values.loras!.split(','), size, threads, runs, steps);
  if (values['vae-child']) return vaeChild(values['vae-child'] as VaeStage, values.model!, values.taesd!, size, threads, runs);

  const model = values.model === 'sdxl' ? ensureSdxl() : values.model ?? ensureCheckpoint();
  if (values.vae) return vaeMain(model, values.sizes.split(',').map(Number), threads, runs);
  if (values.lora) return loraMain(model, values.types === 'f16,q8_0,q4_0,q4_K,q5_0' ? ['f16', 'q8_0'] : values.types.split(','), size, threads, runs, steps);
  const results: Array<Figures & { label: string }> = [];
  const variants = values.baseline
    ? [
        { suffix: ' (ggml ops)', env: { SDNODE_CPU_KERNELS: '0', SDNODE_MMAP: '0' } },
        { suffix: '', env: {} },
      ]
    : [{ suffix: '', env: {} }];
  for (const type of values.types.split(',')) {
    for (const v of variants) {
      const label = `${type}${v.suffix}`;
      process.stderr.write(`${label}: ${size}x${size}, ${steps} steps, ${threads} threads, ${warmup} warm-up + ${runs} runs...\n`);
      const r = spawnSync(
        process.execPath,
        ['--import', 'tsx', fileURLToPath(import.meta.url), '--child', type, '--model', model, '--size', String(size), '--threads', String(threads), '--runs', String(runs), '--steps', String(steps), '--warmup', String(warmup)],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...v.env } },
      );
      if (r.status !== 0) throw new Error(`benchmark of ${label} failed`);
      results.push({ label, ...JSON.parse(r.stdout.trim().split('\n').pop()!) });
    }
  }
  const rows: Array<[string, (f: Figures) => string]> = [
    ['model load', (f) => `${f.loadS.toFixed(2)} s`],
    ['text encode', (f) => `${f.textEncodeS.toFixed(3)} s`],
    ['UNet step (cond+uncond)', (f) => `${f.unetStepS.toFixed(2)} s`],
    ['VAE decode', (f) => `${f.vaeDecodeS.toFixed(2)} s`],
    ['UNet step / VAE decode, fastest', (f) => `${f.unetStepMinS.toFixed(2)} s / ${f.vaeDecodeMinS.toFixed(2)} s`],
    ['whole generate()', (f) => `${f.generateS.toFixed(2)} s`],
    ['JS API share of generate()', (f) => `${f.jsOverheadPct.toFixed(3)}% (${f.jsOverheadMs.toFixed(1)} ms)`],
    ['peak RSS', (f) => `${(f.peakRssMB / 1024).toFixed(2)} GB`],
  ];
  const header = `| ${size}x${size}, ${steps} steps, ${threads} threads (median of ${runs}) | ${results.map((r) => r.label).join(' | ')} |`;
  const lines = [header, `| --- |${results.map(() => ' --- |').join('')}`];
  for (const [name, fmt] of rows) lines.push(`| ${name} | ${results.map(fmt).join(' | ')} |`);
  process.stdout.write(lines.join('\n') + '\n');
  const outDir = path.join(here, 'results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, JSON.stringify({ size, steps, threads, runs, warmup, cpu: os.cpus()[0]?.model, results }, null, 2));
  process.stdout.write(`wrote ${path.relative(process.cwd(), file)}\n`);
}

await main();
