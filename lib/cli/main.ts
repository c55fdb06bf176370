#!/usr/bin/env node
/**
 * The `sdnode` command line.
 *
 *   sdnode info                 versions, backends, devices, CPU features
 *   sdnode info <image>         the A1111 parameters text of an image (PNG, JPEG, WebP)
 *   sdnode inspect <model>      format, architecture, parameters, hyperparameters of a model
 *   sdnode generate ...         text to image, image to image, inpainting, the hires fix
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { inspectModel, type ModelInspection } from '../inspect.ts';
import { loadModel, type Decoder } from '../model.ts';
import { DECODERS, DEFAULTS, HIRES_UPSCALERS, LIMITS, LORA_APPLY_MODES, PREDICTIONS, PREVIEW_MODES } from '../engine-tables.ts';
import type { LoraApply, LoraSpec } from '../lora.ts';
import type { GeneratePreview, HiresOptions, HiresUpscaler, PreviewMode } from '../generate.ts';
import { DEFAULT_RESIZE_MODE, MIN_MASK_BLUR, MAX_MASK_BLUR, RESIZE_MODES, type ResizeMode } from '../image-io.ts';
import { MAX_BATCH, RNGS, SAMPLERS, SCHEDULERS, WEIGHT_TYPES, type Rng, type Sampler, type Scheduler, type WeightType } from '../options.ts';
import { invalid } from '../validate.ts';
import { systemInfo } from '../system.ts';
import { IoError, SdError } from '../errors.ts';
import { readParameters } from '../parameters.ts';
import { version } from '../version.ts';
import { loadControlNet, type ControlNet, type ControlNetUnit } from '../controlnet.ts';

const USAGE = `Usage: sdnode <command> [options]

Commands:
  info                     show versions, backends, devices and CPU features
  info IMAGE [--json]      show an image's A1111 parameters text (--json: parsed as generate options);
                           also "info-png"; exit 1 when the image has none
  inspect <model> [--json] show a model's format, architecture, components and hyperparameters
  generate -m MODEL -p PROMPT [options] -o OUT.png
                           text to image, image to image, inpainting; a progress bar on stderr,
                           images with A1111 metadata

generate options:
  -m, --model PATH         model file or diffusers folder (required)
  -p, --prompt TEXT        prompt (required)
  -n, --negative-prompt T  negative prompt
      --prompt-2 TEXT      SDXL: the prompt of the second text encoder (bigG; default: --prompt)
      --negative-prompt-2 T  SDXL: its negative prompt (default: --negative-prompt)
  -o, --output FILE        output image (default output.png); the extension picks the format: .png,
                           .jpg/.jpeg or .webp (parameters in EXIF UserComment), none: PNG;
                           a batch writes FILE_1.png, FILE_2.png, ...
      --quality N          JPEG/WebP quality, 1 to 100 (default 90)
  -W, --width N            width in pixels (default 512 for SD1.x, 768 for SD2.x)
  -H, --height N           height in pixels
      --steps N            sampling steps (default 20)
      --cfg-scale X        classifier-free guidance scale (default 7)
      --sampler NAME       ${SAMPLERS.join(', ')}
      --scheduler NAME     ${SCHEDULERS.join(', ')} (normal = discrete)
      --sigmas A,B,...     custom schedule: steps + 1 noise levels, descending, last usually 0
      --lms-max-order N    lms history length, 1 to 12 (default 4)
  -s, --seed N             seed (default or negative: random, printed)
      --rng NAME           ${RNGS.join(', ')} (default cuda)
      --sampler-rng NAME   generator of ancestral noise (default: continue --rng)
  -b, --batch-count N      images to make (default 1)
      --clip-skip N        text-encoder layer from the end
      --eta X              noise of the stochastic samplers (euler_a, dpm++2m_sde, er_sde, ...; 0 for ODE ones)
      --type TYPE          convert weights on load: ${WEIGHT_TYPES.join(', ')}
  -t, --threads N          CPU threads
      --backend NAME       auto, cpu or a device name
      --prediction NAME    what the UNet predicts: ${PREDICTIONS.join(', ')} (default: as the file says)

image to image:
      --init-img FILE      start from this image (PNG, JPEG, WebP, ...); -W and -H default to its size
                           (default none: text to image)
      --strength X         how much to repaint, above 0, at most 1 (default ${DEFAULTS.strength})
      --mask FILE          inpainting mask, white repaints, black keeps; needs --init-img (default none)
      --mask-blur X        blur of the mask in pixels, 0 or ${MIN_MASK_BLUR} to ${MAX_MASK_BLUR} (default 0)
      --invert-mask        repaint the black part instead (default off)
      --resize-mode MODE   how the images are fitted to -W x -H: ${RESIZE_MODES.join(', ')} (default ${DEFAULT_RESIZE_MODE})
      --img-cfg-scale X    instruct-pix2pix models: image guidance, 1 = none (default ${DEFAULTS.imageCfgScale})

hires fix (any --hires-* flag turns it on):
      --hires              sample, upscale, then sample again (image to image) at the larger size
                           (default off)
      --hires-scale X      target = size x X (default ${DEFAULTS.hiresScale}); not with --hires-width/--hires-height
      --hires-width N      target width (default: from --hires-scale; one side alone keeps the aspect)
      --hires-height N     target height (default: from --hires-scale)
      --hires-steps N      steps of the second pass (default 0: as many as the first)
      --hires-strength X   denoising strength of the second pass (default ${DEFAULTS.hiresStrength})
      --hires-upscaler U   ${HIRES_UPSCALERS.slice(0, 4).join(', ')},
                           ${HIRES_UPSCALERS.slice(4).join(', ')} (default ${DEFAULTS.hiresUpscaler})

decoding:
      --vae FILE           a standalone VAE instead of the model's (default: the model's)
      --taesd FILE         a TAESD (tiny autoencoder) loaded with the model, for --decoder taesd
                           (default none)
      --decoder NAME       ${DECODERS.join(' or ')}; taesd also encodes the init image (default vae)
      --vae-tiling         always decode (and encode) in tiles (default: only when the whole
                           image would need more than --vae-memory-budget)
      --no-vae-tiling      never tile (default: tile past the budget)
      --vae-memory-budget MIB  compute memory an untiled decode may take before it tiles
                           (default ${DEFAULTS.vaeMemoryBudget / 1024 ** 2}: 1024x1024 runs whole)
      --vae-tile-size N    tile side in latent pixels, ${LIMITS['vaeTiling.tileSize'].min} to ${LIMITS['vaeTiling.tileSize'].max} (default 32); implies --vae-tiling
      --vae-tile-overlap X fraction of a tile shared with the next, 0 to 0.5 (default 0.5);
                           implies --vae-tiling

LoRA:
      --lora-dir DIR       where <lora:name:weight> in the prompt and --lora name:weight look
                           (default none)
      --lora NAME[:W]      a LoRA by name in --lora-dir, or a file path, weight W (default 1);
                           repeatable (default none)
      --lora-apply MODE    ${LORA_APPLY_MODES.join(', ')}: merge into copies of float weights, add at run
                           time, or runtime for quantized models (default auto)

embeddings:
      --embeddings-dir DIR textual-inversion embeddings: each file's name without its extension
                           is a trigger word in prompts (default none)
      --embedding FILE[:TRIGGER]  one embedding file, trigger = its name without the extension
                           unless given; repeatable (default none)

previews:
      --preview FILE       write the latest preview to FILE while sampling, .png, .jpg or .webp
                           (default none)
      --preview-method M   ${PREVIEW_MODES.join(', ')} (default taesd with --taesd, else proj: latent-sized)
      --preview-interval N a preview every N steps (default ${DEFAULTS.previewInterval})

ControlNet:
      --control-net FILE   a ControlNet (SD1.x/SD2.x, LDM or diffusers names) (default none)
      --control-image IMG  its control image, fitted to -W x -H as --init-img (needs --control-net)
      --control-strength X how much it steers, 0 to ${LIMITS['controlNets.strength'].max} (default 0.9)
      --control-start X    fraction of the steps at which it starts (default 0)
      --control-end X      fraction of the steps at which it stops (default 1)
      --canny              make the control image an edge map first (the reference's --canny)

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

/**
 * A mistake on the command line (unknown flag, missing value, stray argument): reported as one
 * line with a pointer to the help, exit code 2.
 */
class UsageError extends Error {}

const HELP_HINT = 'run "sdnode --help" for usage';

type Options = NonNullable<ParseArgsConfig['options']>;

/** Edit distance with transpositions (optimal string alignment), for "did you mean" on a mistyped flag. */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

const looksNegativeNumber = (v: string) => /^-[\d.]/.test(v) && Number.isFinite(Number(v));

/**
 * parseArgs takes `--seed -1` for two flags; joins a negative number to the string option before
 * it (`--seed=-1`) so that it is read as the value. Stops at `--`.
 */
function joinNegativeValues(args: readonly string[], options: Options): string[] {
  const byShort = new Map(Object.entries(options).filter(([, o]) => o.short).map(([name, o]) => [o.short!, name]));
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--') {
      out.push(...args.slice(i));
      break;
    }
    const name = a.startsWith('--') ? (a.includes('=') ? undefined : a.slice(2)) : /^-[^-]$/.test(a) ? byShort.get(a[1]) : undefined;
    const next = args[i + 1];
    if (name !== undefined && options[name]?.type === 'string' && next !== undefined && looksNegativeNumber(next)) {
      out.push(`--${name}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

/** parseArgs, strict, with its failures turned into one-line UsageErrors naming the flag. */
function parseCommandLine<T extends Omit<ParseArgsConfig, 'args' | 'strict'> & { options: Options }>(
  command: string,
  args: readonly string[],
  config: T,
): ReturnType<typeof parseArgs<T & { args: string[]; strict: true }>> {
  try {
    return parseArgs({ ...config, args: joinNegativeValues(args, config.options), strict: true });
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    if (typeof code !== 'string' || !code.startsWith('ERR_PARSE_ARGS_')) throw e;
    const message = (e as Error).message;
    const quoted = /'([^']*)'/.exec(message)?.[1] ?? '';
    // "-m, --model <value>" -> the flag as typed is not in the message for a missing value; name both spellings.
    const flag = quoted.replace(/ <value>$/, '').replace(', ', '/');
    let what: string;
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
      const typed = quoted.replace(/^-+/, '').split('=')[0];
      const near = Object.keys(config.options)
        .map((name) => [name, distance(typed, name)] as const)
        .filter(([name, d]) => d <= (name.length >= 4 ? 2 : 1))
        .sort((x, y) => x[1] - y[1])[0];
      what = `unknown option ${quoted} for "sdnode ${command}"${near ? ` (did you mean --${near[0]}?)` : ''}`;
    } else if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      if (/does not take an argument/.test(message)) what = `option ${flag} takes no value`;
      else if (/ambiguous/.test(message)) {
        const long = /'--([^'=]+)=-XYZ'/.exec(message)?.[1] ?? flag.replace(/^-+/, '');
        what = `option ${flag} is missing its value (a value that starts with "-" is written --${long}=VALUE)`;
      } else what = `option ${flag} is missing its value`;
    } else if (code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
      what = `unexpected argument ${JSON.stringify(quoted)} for "sdnode ${command}"`;
    } else {
      what = message.split('\n')[0];
    }
    throw new UsageError(`${what}; ${HELP_HINT}`, { cause: e });
  }
}

/**
 * Checks, before anything is loaded, that every output file can be written: its folder exists
 * and is writable, and the path is not a folder. Throws InvalidArgumentError naming the path.
 */
function checkOutputs(names: readonly string[]): void {
  for (const name of names) {
    const abs = path.resolve(name);
    const dir = path.dirname(abs);
    let dirStat: fs.Stats | undefined;
    try {
      dirStat = fs.statSync(dir);
    } catch {
      dirStat = undefined;
    }
    if (!dirStat?.isDirectory()) invalid('--output', `a file in an existing folder (${dir} is not one)`, name);
    let stat: fs.Stats | undefined;
    try {
      stat = fs.statSync(abs);
    } catch {
      stat = undefined;
    }
    if (stat?.isDirectory()) invalid('--output', 'a file path, not a folder', name);
    try {
      fs.accessSync(stat ? abs : dir, fs.constants.W_OK);
    } catch {
      invalid('--output', stat ? 'a writable file' : `a file in a writable folder (${dir} is not writable)`, name);
    }
  }
}

/** A number option, or undefined; the API validates ranges and says what is allowed. */
function num(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) invalid(`--${name}`, 'a number', v);
  return n;
}

/**
 * Checks, before the model is loaded, that the input image files can be read. Throws an
 * IoError naming the flag and the file.
 */
function checkInputs(files: Record<string, string | undefined>): void {
  for (const [flag, file] of Object.entries(files)) {
    if (file === undefined) continue;
    let why: string | undefined;
    try {
      if (fs.statSync(file).isDirectory()) why = 'is a folder, not a file';
      else fs.accessSync(file, fs.constants.R_OK);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : e instanceof Error ? e.message : String(e);
    }
    if (why !== undefined) throw new IoError(`${flag}: cannot open ${file}: ${why}`, { file });
  }
}

/**
 * The image-to-image, hires fix and decoding options of generate(), only those given. Numbers
 * go through num(); ranges and names are the API's to check.
 */
function imageToImageOptions(values: GenerateValues) {
  const hires: HiresOptions = {};
  const put = <K extends keyof HiresOptions>(k: K, v: HiresOptions[K] | undefined) => {
    if (v !== undefined) hires[k] = v;
  };
  put('scale', num('hires-scale', values['hires-scale']));
  put('width', num('hires-width', values['hires-width']));
  put('height', num('hires-height', values['hires-height']));
  put('steps', num('hires-steps', values['hires-steps']));
  put('strength', num('hires-strength', values['hires-strength']));
  put('upscaler', values['hires-upscaler'] as HiresUpscaler | undefined);
  const tileSize = num('vae-tile-size', values['vae-tile-size']);
  const overlap = num('vae-tile-overlap', values['vae-tile-overlap']);
  const tiling = tileSize !== undefined || overlap !== undefined
    ? { ...(tileSize !== undefined ? { tileSize } : {}), ...(overlap !== undefined ? { overlap } : {}) }
    : values['vae-tiling'] ? true : values['no-vae-tiling'] ? false : undefined;
  if (values['no-vae-tiling'] && (values['vae-tiling'] || tileSize !== undefined || overlap !== undefined)) {
    invalid('--no-vae-tiling', 'given without --vae-tiling, --vae-tile-size and --vae-tile-overlap', true);
  }
  const budgetMiB = num('vae-memory-budget', values['vae-memory-budget']);
  if (budgetMiB !== undefined && tiling !== undefined) {
    invalid('--vae-memory-budget', 'given without --vae-tiling, --no-vae-tiling, --vae-tile-size and --vae-tile-overlap (it decides when to tile)', values['vae-memory-budget']);
  }
  const o = {
    initImage: values['init-img'],
    strength: num('strength', values.strength),
    mask: values.mask,
    maskBlur: num('mask-blur', values['mask-blur']),
    invertMask: values['invert-mask'],
    resizeMode: values['resize-mode'] as ResizeMode | undefined,
    imageCfgScale: num('img-cfg-scale', values['img-cfg-scale']),
    hires: values.hires || Object.keys(hires).length > 0 ? hires : undefined,
    decoder: values.decoder as Decoder | undefined,
    vaeTiling: tiling,
    vaeMemoryBudget: budgetMiB === undefined ? undefined : Math.round(budgetMiB * 1024 ** 2),
    preview: values['preview-method'] as PreviewMode | undefined,
    previewInterval: num('preview-interval', values['preview-interval']),
  };
  // Leave out what was not given, so that the API fills in its defaults.
  for (const k of Object.keys(o) as Array<keyof typeof o>) if (o[k] === undefined) delete o[k];
  return o;
}

/**
 * onPreview for --preview FILE: each preview replaces the file (written beside it, then renamed,
 * so a viewer never reads half a file). Encoding is asynchronous for JPEG and WebP: a preview
 * that arrives while the last one is still being written is skipped (the next one follows).
 */
function previewWriter(file: string, format: 'png' | 'jpeg' | 'webp'): (p: GeneratePreview) => void {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  let busy = false;
  const write = (bytes: Buffer) => {
    try {
      fs.writeFileSync(temp, bytes);
      fs.renameSync(temp, file);
    } catch (e) {
      throw new IoError(`cannot write the preview ${file}: ${e instanceof Error ? e.message : String(e)}`, { file, cause: e });
    }
  };
  return ({ image }) => {
    if (format === 'png') return write(image.toPNG());
    if (busy) return;
    busy = true;
    (format === 'jpeg' ? image.toJPEG() : image.toWebP()).then(
      (bytes) => {
        busy = false;
        try {
          write(bytes);
        } catch (e) {
          process.stderr.write(`sdnode: ${(e as Error).message}\n`);
        }
      },
      () => (busy = false),
    );
  };
}

/** The command-line flag of each API option name that errors of loadModel() and generate() start with. */
const FLAG_OF: Record<string, string> = {
  modelPath: '--model', prompt: '--prompt', negativePrompt: '--negative-prompt', prompt2: '--prompt-2', negativePrompt2: '--negative-prompt-2', width: '--width', height: '--height',
  steps: '--steps', cfgScale: '--cfg-scale', sampler: '--sampler', scheduler: '--scheduler', sigmas: '--sigmas',
  lmsMaxOrder: '--lms-max-order', seed: '--seed', rng: '--rng', samplerRng: '--sampler-rng', batchSize: '--batch-count',
  clipSkip: '--clip-skip', eta: '--eta', weightType: '--type', threads: '--threads', backend: '--backend', prediction: '--prediction',
  initImage: '--init-img', strength: '--strength', mask: '--mask', maskBlur: '--mask-blur', invertMask: '--invert-mask',
  resizeMode: '--resize-mode', imageCfgScale: '--img-cfg-scale',
  hires: '--hires-*', 'hires.scale': '--hires-scale', 'hires.width': '--hires-width', 'hires.height': '--hires-height',
  'hires.steps': '--hires-steps', 'hires.strength': '--hires-strength', 'hires.upscaler': '--hires-upscaler',
  decoder: '--decoder', vaeTiling: '--vae-tiling', 'vaeTiling.tileSize': '--vae-tile-size', 'vaeTiling.overlap': '--vae-tile-overlap',
  taesd: '--taesd', vae: '--vae', vaeMemoryBudget: '--vae-memory-budget', preview: '--preview-method',
  previewInterval: '--preview-interval',
};

FLAG_OF.embeddingsDir = '--embeddings-dir';
FLAG_OF.loraDir = '--lora-dir';
FLAG_OF.loras = '--lora';
FLAG_OF.loraApply = '--lora-apply';

/** --lora NAME[:W] / FILE[:W]: a weight is what follows the last ':' when it is a number (a path may hold ':'). */
function loraArgs(values: string[] | undefined): LoraSpec[] | undefined {
  if (!values?.length) return undefined;
  return values.map((v) => {
    const at = v.lastIndexOf(':');
    const tail = at > 0 ? v.slice(at + 1) : '';
    const hasWeight = tail !== '' && Number.isFinite(Number(tail));
    const target = hasWeight ? v.slice(0, at) : v;
    const weight = hasWeight ? Number(tail) : undefined;
    const isPath = /[\\/]/.test(target) || /\.(safetensors|gguf|pt|ckpt|pth|bin)$/i.test(target);
    return { ...(isPath ? { path: target } : { name: target }), ...(weight !== undefined ? { weight } : {}) };
  });
}
FLAG_OF.embeddings = '--embedding';

/** --embedding FILE[:TRIGGER]: the trigger is what follows the last ':' unless that holds a path separator (C:\x.pt). */
function embeddingArgs(values: string[] | undefined): Array<{ path: string; trigger?: string }> | undefined {
  if (values === undefined) return undefined;
  return values.map((v) => {
    const at = v.lastIndexOf(':');
    const trigger = at > 0 ? v.slice(at + 1) : '';
    if (trigger === '' || /[\\/]/.test(trigger)) return { path: v };
    return { path: v.slice(0, at), trigger };
  });
}

/**
 * Says an API error in the command line's words: the option name it starts with becomes the
 * flag ("maskBlur must be ..." -> "--mask-blur must be ..."), as does an option name in
 * backticks further on; a camelCase or dotted option name further on gets its flag after it
 * ("an initImage (--init-img)"); an error about a file given by a flag (its `file`) starts with
 * that flag. The error keeps its class, so the exit code stays the same.
 */
function withFlagNames(e: unknown, files: Record<string, string | undefined>): unknown {
  if (!(e instanceof SdError) || e.message.startsWith('-')) return e;
  const subject = /^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z]+)?)(?=[ :[])/.exec(e.message)?.[1];
  const flag = subject === undefined ? undefined : FLAG_OF[subject];
  let head = '';
  let rest = e.message;
  if (flag !== undefined) {
    head = flag;
    rest = rest.slice(subject!.length);
  } else if (e.file !== undefined) {
    const byFile = Object.entries(files).find(([, f]) => f !== undefined && path.resolve(f) === path.resolve(e.file!))?.[0];
    if (byFile !== undefined) head = `${byFile}: `;
  }
  rest = rest.replace(/(?<![\w./-])(`?)([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z]+)?)\1(?![\w/-]|\.\w)/g, (m, quote: string, name: string) =>
    FLAG_OF[name] === undefined ? m : quote !== '' ? FLAG_OF[name] : /[A-Z.]/.test(name) ? `${m} (${FLAG_OF[name]})` : m,
  );
  e.message = head + rest;
  return e;
}

/** The output format of a file name, by its extension (none: PNG); undefined for an extension sdnode does not write. */
export function outputFormat(file: string): 'png' | 'jpeg' | 'webp' | undefined {
  const ext = path.extname(file).toLowerCase();
  return ext === '' || ext === '.png' ? 'png' : ext === '.jpg' || ext === '.jpeg' ? 'jpeg' : ext === '.webp' ? 'webp' : undefined;
}

/** Output file names: OUT for one image; OUT_1, OUT_2, ... (before the extension) for a batch. */
export function outputNames(output: string, count: number): string[] {
  if (count === 1) return [output];
  const ext = path.extname(output) || '.png';
  const stem = output.slice(0, output.length - path.extname(output).length);
  return Array.from({ length: count }, (_, i) => `${stem}_${i + 1}${ext}`);
}

function parseGenerateArgs(args: string[]) {
  return parseCommandLine('generate', args, {
    options: {
      model: { type: 'string', short: 'm' },
      prompt: { type: 'string', short: 'p' },
      'negative-prompt': { type: 'string', short: 'n' },
      'prompt-2': { type: 'string' },
      'negative-prompt-2': { type: 'string' },
      output: { type: 'string', short: 'o', default: 'output.png' },
      width: { type: 'string', short: 'W' },
      height: { type: 'string', short: 'H' },
      steps: { type: 'string' },
      'cfg-scale': { type: 'string' },
      sampler: { type: 'string' },
      scheduler: { type: 'string' },
      sigmas: { type: 'string' },
      'lms-max-order': { type: 'string' },
      seed: { type: 'string', short: 's' },
      rng: { type: 'string' },
      'sampler-rng': { type: 'string' },
      'batch-count': { type: 'string', short: 'b' },
      'clip-skip': { type: 'string' },
      eta: { type: 'string' },
      type: { type: 'string' },
      threads: { type: 'string', short: 't' },
      backend: { type: 'string' },
      prediction: { type: 'string' },
      quality: { type: 'string' },
      'init-img': { type: 'string' },
      strength: { type: 'string' },
      mask: { type: 'string' },
      'mask-blur': { type: 'string' },
      'invert-mask': { type: 'boolean' },
      'resize-mode': { type: 'string' },
      'img-cfg-scale': { type: 'string' },
      hires: { type: 'boolean' },
      'hires-scale': { type: 'string' },
      'hires-width': { type: 'string' },
      'hires-height': { type: 'string' },
      'hires-steps': { type: 'string' },
      'hires-strength': { type: 'string' },
      'hires-upscaler': { type: 'string' },
      vae: { type: 'string' },
      taesd: { type: 'string' },
      decoder: { type: 'string' },
      'vae-tiling': { type: 'boolean' },
      'vae-tile-size': { type: 'string' },
      'vae-tile-overlap': { type: 'string' },
      'no-vae-tiling': { type: 'boolean' },
      'vae-memory-budget': { type: 'string' },
      preview: { type: 'string' },
      'preview-method': { type: 'string' },
      'preview-interval': { type: 'string' },
      'lora-dir': { type: 'string' },
      lora: { type: 'string', multiple: true },
      'lora-apply': { type: 'string' },
      'embeddings-dir': { type: 'string' },
      embedding: { type: 'string', multiple: true },
      'control-net': { type: 'string' },
      'control-image': { type: 'string' },
      'control-strength': { type: 'string' },
      'control-start': { type: 'string' },
      'control-end': { type: 'string' },
      canny: { type: 'boolean' },
    },
  });
}

/** The ControlNet flags, checked before anything loads; undefined without --control-net. */
function controlNetFlags(values: GenerateValues): (Omit<ControlNetUnit, 'model'> & { file: string }) | undefined {
  const file = values['control-net'];
  if (file === undefined) {
    for (const flag of ['control-image', 'control-strength', 'control-start', 'control-end', 'canny'] as const) {
      if (values[flag] !== undefined) invalid(`--${flag}`, 'given with --control-net FILE', values[flag]);
    }
    return undefined;
  }
  const image = values['control-image'];
  if (image === undefined) invalid('--control-image', 'a control image for --control-net', undefined);
  checkInputs({ '--control-net': file, '--control-image': image });
  const o: Omit<ControlNetUnit, 'model'> & { file: string } = { file, image };
  const strength = num('control-strength', values['control-strength']);
  const start = num('control-start', values['control-start']);
  const end = num('control-end', values['control-end']);
  if (strength !== undefined) o.strength = strength;
  if (start !== undefined) o.start = start;
  if (end !== undefined) o.end = end;
  if (values.canny) o.preprocess = 'canny';
  return o;
}

/** generate()'s controlNets[0] errors in the flags' words ("controlNets[0].strength" -> "--control-strength"). */
function withControlNetFlags(e: unknown): unknown {
  if (!(e instanceof SdError)) return e;
  const flags: Array<[RegExp, string]> = [
    [/controlNets\[0\]\.preprocess(\.\w+)?/g, '--canny'], [/controlNets\[0\]\.strength/g, '--control-strength'],
    [/controlNets\[0\]\.start/g, '--control-start'], [/controlNets\[0\]\.end/g, '--control-end'],
    [/controlNets\[0\]\.image/g, '--control-image'], [/controlNets\[0\](\.model)?/g, '--control-net'],
  ];
  for (const [re, flag] of flags) e.message = e.message.replace(re, flag);
  return e;
}

type GenerateValues = ReturnType<typeof parseGenerateArgs>['values'];

async function generate(args: string[]): Promise<number> {
  const { values } = parseGenerateArgs(args);
  try {
    return await runGenerate(values);
  } catch (e) {
    throw withFlagNames(withControlNetFlags(e), {
      '--model': values.model, '--init-img': values['init-img'], '--mask': values.mask, '--vae': values.vae, '--taesd': values.taesd,
      '--embeddings-dir': values['embeddings-dir'], '--lora-dir': values['lora-dir'], '--control-net': values['control-net'], '--control-image': values['control-image'],
    });
  }
}

async function runGenerate(values: GenerateValues): Promise<number> {
  if (!values.model) invalid('--model', 'a model path', undefined);
  if (values.prompt === undefined) invalid('--prompt', 'a prompt', undefined);
  // Fail before the (slow) load when the images could not be written. The API checks the count.
  const count = num('batch-count', values['batch-count']) ?? 1;
  const names = outputNames(values.output, Number.isSafeInteger(count) && count >= 1 && count <= MAX_BATCH ? count : 1);
  const format = outputFormat(values.output);
  if (format === undefined) invalid('--output', 'a file name ending in .png, .jpg, .jpeg or .webp', values.output);
  const quality = num('quality', values.quality);
  if (quality !== undefined) {
    if (format === 'png') invalid('--quality', 'given only for a .jpg, .jpeg or .webp output', values.quality);
    if (!Number.isSafeInteger(quality) || quality < 1 || quality > 100) invalid('--quality', 'an integer from 1 to 100', values.quality);
  }
  checkOutputs(names);
  const previewFile = values.preview;
  const previewFormat = previewFile === undefined ? undefined : outputFormat(previewFile);
  if (previewFile !== undefined) {
    if (previewFormat === undefined) invalid('--preview', 'a file name ending in .png, .jpg, .jpeg or .webp', previewFile);
    checkOutputs([previewFile]);
  } else if (values['preview-method'] !== undefined || values['preview-interval'] !== undefined) {
    invalid(values['preview-method'] !== undefined ? '--preview-method' : '--preview-interval', 'given with --preview FILE', values['preview-method'] ?? values['preview-interval']);
  }
  checkInputs({ '--init-img': values['init-img'], '--mask': values.mask });
  const imageOptions = imageToImageOptions(values);
  const control = controlNetFlags(values);
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
      prediction: values.prediction as (typeof PREDICTIONS)[number] | undefined,
      vae: values.vae,
      taesd: values.taesd,
      embeddingsDir: values['embeddings-dir'],
      loraDir: values['lora-dir'],
      signal: controller.signal,
      onProgress: ({ fraction }) => bar.update(Math.round(fraction * 100)),
    });
    let net: ControlNet | undefined;
    try {
      if (control) {
        net = await loadControlNet(control.file, {
          weightType: values.type as WeightType | undefined, threads: num('threads', values.threads), backend: values.backend, signal: controller.signal,
        });
      }
      const { file: _, ...unit } = control ?? { file: '' };
      const t0 = Date.now();
      const result = await model.generate({
        ...(net ? { controlNets: [{ ...unit, model: net } as ControlNetUnit] } : {}),
        prompt: values.prompt,
        negativePrompt: values['negative-prompt'],
        prompt2: values['prompt-2'],
        negativePrompt2: values['negative-prompt-2'],
        width: num('width', values.width),
        height: num('height', values.height),
        steps: num('steps', values.steps),
        cfgScale: num('cfg-scale', values['cfg-scale']),
        sampler: values.sampler as Sampler | undefined,
        scheduler: values.scheduler as Scheduler | undefined,
        sigmas: values.sigmas === undefined ? undefined : values.sigmas.split(',').map((v) => num('sigmas', v) as number),
        lmsMaxOrder: num('lms-max-order', values['lms-max-order']),
        seed: num('seed', values.seed),
        rng: values.rng as Rng | undefined,
        samplerRng: values['sampler-rng'] as Rng | undefined,
        batchSize: num('batch-count', values['batch-count']),
        clipSkip: num('clip-skip', values['clip-skip']),
        eta: num('eta', values.eta),
        ...imageOptions,
        embeddings: embeddingArgs(values.embedding),
        loras: loraArgs(values.lora),
        loraApply: values['lora-apply'] as LoraApply | undefined,
        ...(previewFile !== undefined ? { onPreview: previewWriter(previewFile, previewFormat!) } : {}),
        signal: controller.signal,
        onProgress: ({ step, steps }) => {
          if (step === 1) bar.start(steps, 0, { stage: 'sample', extra: '' });
          bar.update(step, { extra: `${((Date.now() - t0) / step / 1000).toFixed(2)} s/step` });
        },
      });
      bar.stop();
      const written = outputNames(values.output, result.images.length);
      for (const [i, img] of result.images.entries()) {
        const bytes = format === 'jpeg' ? await img.toJPEG({ quality }) : format === 'webp' ? await img.toWebP({ quality }) : img.toPNG();
        try {
          fs.writeFileSync(written[i], bytes);
        } catch (e) {
          throw new IoError(`cannot write ${written[i]}: ${e instanceof Error ? e.message : String(e)}`, { file: written[i], cause: e });
        }
        process.stdout.write(`${written[i]} (seed ${img.seed})\n`);
      }
      for (const w of result.warnings) process.stderr.write(`sdnode: warning: ${w}\n`);
      const t = result.timings;
      const s = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
      process.stderr.write(
        `${t.loraApply > 0 ? `LoRA ${result.options.loraApply} ${s(t.loraApply)}, ` : ''}text ${s(t.textEncode)}, ${t.vaeEncode > 0 ? `VAE encode ${s(t.vaeEncode)}, ` : ''}sampling ${s(t.sampling)}, ` +
          `VAE ${s(t.vaeDecode)}${result.options.vaeTiling ? ' (tiled)' : ''}, total ${s(t.total)}\n`,
      );
      return 0;
    } finally {
      await net?.dispose();
      await model.dispose();
    }
  } finally {
    bar.stop();
    process.removeListener('SIGINT', onSigint);
  }
}

/** `sdnode info IMAGE [--json]`: the parameters text, or with --json `{ text, options, extra }`; exit 1 without parameters. */
async function imageInfo(command: string, args: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(command, args, { allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (positionals.length !== 1) {
    throw new UsageError(`"sdnode ${command}" takes exactly one image path; received ${positionals.length}; ${HELP_HINT}`);
  }
  const found = await readParameters(positionals[0]);
  if (found === null) {
    process.stderr.write(`sdnode: ${positionals[0]} has no parameters text (no A1111 "parameters" PNG text chunk or EXIF UserComment)\n`);
    return 1;
  }
  process.stdout.write(values.json ? JSON.stringify(found, null, 2) + '\n' : found.text.endsWith('\n') ? found.text : `${found.text}\n`);
  return 0;
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
    case 'info':
    case 'info-png': {
      if (command === 'info' && rest.length === 0) {
        process.stdout.write(JSON.stringify(systemInfo(), null, 2) + '\n');
        return 0;
      }
      return imageInfo(command, rest);
    }
    case 'inspect': {
      const { values, positionals } = parseCommandLine('inspect', rest, { allowPositionals: true, options: { json: { type: 'boolean' } } });
      if (positionals.length !== 1) {
        throw new UsageError(`"sdnode inspect" takes exactly one model path; received ${positionals.length}; ${HELP_HINT}`);
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
    if (err instanceof UsageError) process.stderr.write(`sdnode: ${err.message}\n`);
    else if (err instanceof SdError) process.stderr.write(`sdnode: ${err.name}: ${err.message}\n`);
    else process.stderr.write(`sdnode: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = err instanceof UsageError || (err instanceof SdError && err.code === 'InvalidArgument') ? 2 : 1;
  },
);
