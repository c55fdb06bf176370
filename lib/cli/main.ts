#!/usr/bin/env node
/**
 * The `sdnode` command line.
 *
 *   sdnode info                 versions, backends, devices, CPU features
 *   sdnode inspect <model>      format, architecture, parameters, hyperparameters of a model
 */
import { parseArgs } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { inspectModel, type ModelInspection } from '../inspect.ts';
import { loadModel } from '../model.ts';
import { RNGS, SAMPLERS, SCHEDULERS, WEIGHT_TYPES, type Rng, type Sampler, type Scheduler, type WeightType } from '../options.ts';
import { invalid } from '../validate.ts';
import { systemInfo } from '../system.ts';
import { SdError } from '../errors.ts';
import { version } from '../version.ts';

const USAGE = `Usage: sdnode <command> [options]

Commands:
  info                     show versions, backends, devices and CPU features
  inspect <model> [--json] show a model's format, architecture, components and hyperparameters
  generate -m MODEL -p PROMPT [options] -o OUT.png
                           text to image; a progress bar on stderr, PNGs with A1111 metadata

generate options:
  -m, --model PATH         model file or diffusers folder (required)
  -p, --prompt TEXT        prompt (required)
  -n, --negative-prompt T  negative prompt
  -o, --output FILE        output PNG (default output.png); a batch writes FILE_1.png, FILE_2.png, ...
  -W, --width N            width in pixels (default 512 for SD1.x, 768 for SD2.x)
  -H, --height N           height in pixels
      --steps N            sampling steps (default 20)
      --cfg-scale X        classifier-free guidance scale (default 7)
      --sampler NAME       ${SAMPLERS.join(', ')}
      --scheduler NAME     ${SCHEDULERS.join(', ')}
  -s, --seed N             seed (default: random, printed)
      --rng NAME           ${RNGS.join(', ')} (default cuda)
      --sampler-rng NAME   generator of ancestral noise (default: continue --rng)
  -b, --batch-count N      images to make (default 1)
      --clip-skip N        text-encoder layer from the end
      --eta X              noise of ancestral/DDIM/TCD samplers
      --type TYPE          convert weights on load: ${WEIGHT_TYPES.join(', ')}
  -t, --threads N          CPU threads
      --backend NAME       auto, cpu or a device name

Options:
  -h, --help               show this help
  -v, --version            show the version
`;

const fmtInt = (n: number) => n.toLocaleString('en-US');

function printInspection(info: ModelInspection): void {
  const out: string[] = [];
  out.push(`model:         ${info.path}`);
  out.push(`format:        ${info.format}`);
  out.push(`architecture:  ${info.architecture}${info.hyperparameters.unet?.variant ? ` (${info.hyperparameters.unet.variant})` : ''}`);
  out.push(`components:    ${info.components.join(', ')}`);
  out.push('parameters:');
  for (const c of ['unet', 'vae', 'textEncoder', 'textEncoder2'] as const) {
    if (info.parameters[c] > 0) out.push(`  ${c.padEnd(13)}${fmtInt(info.parameters[c]).padStart(15)}`);
  }
  out.push(`  ${'total'.padEnd(13)}${fmtInt(info.parameters.total).padStart(15)}`);
  out.push(`tensor types:  ${Object.entries(info.dtypes).map(([k, v]) => `${k} x${v}`).join(', ')}`);
  const u = info.hyperparameters.unet;
  if (u) {
    out.push(
      `unet:          ${u.modelChannels} ch x [${u.channelMult}], res blocks [${u.numResBlocks}], ` +
        `attention depth [${u.transformerDepth}] mid ${u.hasMiddleBlock ? u.transformerDepthMiddle : 'none'}, ` +
        `context ${u.contextDim}, in ${u.inChannels}, prediction ${u.prediction}`,
    );
  }
  const v = info.hyperparameters.vae;
  if (v) out.push(`vae:           ${v.ch} ch x [${v.channelMult}], z ${v.zChannels}, scale ${v.scaleFactor}`);
  for (const k of ['textEncoder', 'textEncoder2'] as const) {
    const t = info.hyperparameters[k];
    if (t) out.push(`${(k + ':').padEnd(15)}${t.kind}, width ${t.width}, ${t.layers} layers, ${t.heads} heads, vocab ${t.vocab}`);
  }
  if (info.unknownTensors.length) out.push(`unknown tensors: ${info.unknownTensors.length} (e.g. ${info.unknownTensors.slice(0, 3).join(', ')})`);
  for (const w of info.warnings) out.push(`warning: ${w}`);
  process.stdout.write(out.join('\n') + '\n');
}

/** A number option, or undefined; the API validates ranges and says what is allowed. */
function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) invalid(`--${name}`, 'a number', v);
  return n;
}

/** Output file names: OUT for one image; OUT_1, OUT_2, ... (before the extension) for a batch. */
export function outputNames(output: string, count: number): string[] {
  if (count === 1) return [output];
  const ext = path.extname(output) || '.png';
  const stem = output.slice(0, output.length - path.extname(output).length);
  return Array.from({ length: count }, (_, i) => `${stem}_${i + 1}${ext}`);
}

async function generate(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string', short: 'm' },
      prompt: { type: 'string', short: 'p' },
      'negative-prompt': { type: 'string', short: 'n' },
      output: { type: 'string', short: 'o', default: 'output.png' },
      width: { type: 'string', short: 'W' },
      height: { type: 'string', short: 'H' },
      steps: { type: 'string' },
      'cfg-scale': { type: 'string' },
      sampler: { type: 'string' },
      scheduler: { type: 'string' },
      seed: { type: 'string', short: 's' },
      rng: { type: 'string' },
      'sampler-rng': { type: 'string' },
      'batch-count': { type: 'string', short: 'b' },
      'clip-skip': { type: 'string' },
      eta: { type: 'string' },
      type: { type: 'string' },
      threads: { type: 'string', short: 't' },
      backend: { type: 'string' },
    },
  });
  if (!values.model) invalid('--model', 'a model path', undefined);
  if (values.prompt === undefined) invalid('--prompt', 'a prompt', undefined);
  const bar = new cliProgress.SingleBar(
    { stream: process.stderr, format: '{stage} [{bar}] {value}/{total} {extra}', hideCursor: true, clearOnComplete: false },
    cliProgress.Presets.shades_classic,
  );
  const controller = new AbortController();
  const onSigint = () => controller.abort(new Error('interrupted'));
  process.once('SIGINT', onSigint);
  try {
    bar.start(100, 0, { stage: 'load', extra: '' });
    const model = await loadModel(values.model, {
      weightType: values.type as WeightType | undefined,
      threads: num('threads', values.threads),
      backend: values.backend,
      signal: controller.signal,
      onProgress: ({ fraction }) => bar.update(Math.round(fraction * 100)),
    });
    try {
      const t0 = Date.now();
      const result = await model.generate({
        prompt: values.prompt,
        negativePrompt: values['negative-prompt'],
        width: num('width', values.width),
        height: num('height', values.height),
        steps: num('steps', values.steps),
        cfgScale: num('cfg-scale', values['cfg-scale']),
        sampler: values.sampler as Sampler | undefined,
        scheduler: values.scheduler as Scheduler | undefined,
        seed: num('seed', values.seed),
        rng: values.rng as Rng | undefined,
        samplerRng: values['sampler-rng'] as Rng | undefined,
        batchSize: num('batch-count', values['batch-count']),
        clipSkip: num('clip-skip', values['clip-skip']),
        eta: num('eta', values.eta),
        signal: controller.signal,
        onProgress: ({ step, steps }) => {
          if (step === 1) bar.start(steps, 0, { stage: 'sample', extra: '' });
          bar.update(step, { extra: `${((Date.now() - t0) / step / 1000).toFixed(2)} s/step` });
        },
      });
      bar.stop();
      const names = outputNames(values.output, result.images.length);
      result.images.forEach((img, i) => {
        fs.writeFileSync(names[i], img.toPNG());
        process.stdout.write(`${names[i]} (seed ${img.seed})\n`);
      });
      const t = result.timings;
      process.stderr.write(
        `text ${(t.textEncode / 1000).toFixed(2)} s, sampling ${(t.sampling / 1000).toFixed(2)} s, ` +
          `VAE ${(t.vaeDecode / 1000).toFixed(2)} s, total ${(t.total / 1000).toFixed(2)} s\n`,
      );
      return 0;
    } finally {
      await model.dispose();
    }
  } finally {
    bar.stop();
    process.removeListener('SIGINT', onSigint);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 1 : 0;
  }
  if (command === '-v' || command === '--version') {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  switch (command) {
    case 'info': {
      process.stdout.write(JSON.stringify(systemInfo(), null, 2) + '\n');
      return 0;
    }
    case 'inspect': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { json: { type: 'boolean' } } });
      if (positionals.length !== 1) {
        process.stderr.write('sdnode inspect: expected exactly one model path\n' + USAGE);
        return 2;
      }
      const info = await inspectModel(positionals[0]);
      if (values.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      else printInspection(info);
      return 0;
    }
    case 'generate':
      return generate(rest);
    default:
      process.stderr.write(`sdnode: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof SdError) process.stderr.write(`sdnode: ${err.name}: ${err.message}\n`);
    else process.stderr.write(`sdnode: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = err instanceof SdError && err.code === 'InvalidArgument' ? 2 : 1;
  },
);
