import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { packageRoot } from '../lib/binding.ts';
import { decodePNG, encodePNG } from '../lib/image.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-cli-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));
const cli = (...args: string[]) =>
  spawnSync(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'lib', 'cli', 'main.ts'), ...args], { encoding: 'utf8' });

test('sdnode inspect prints the architecture, parameters and hyperparameters; --json is machine-readable', async () => {
  const made = await generateCheckpoint({ arch: 'sd2', format: 'safetensors', out: path.join(work, 'sd2.safetensors') });
  const text = cli('inspect', made.path);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /architecture:\s+sd2/);
  assert.match(text.stdout, /components:\s+unet, vae, textEncoder/);
  const json = cli('inspect', made.path, '--json');
  assert.equal(json.status, 0, json.stderr);
  const info = JSON.parse(json.stdout);
  assert.equal(info.architecture, 'sd2');
  assert.equal(info.parameters.unet, made.parameters.unet);
});

test('sdnode info prints versions and devices', () => {
  const r = cli('info');
  assert.equal(r.status, 0, r.stderr);
  const info = JSON.parse(r.stdout);
  assert.ok(info.backends.includes('CPU'));
});

test('errors: a missing model exits 1 with the typed error; an unknown command exits 2', () => {
  const missing = cli('inspect', path.join(work, 'missing.safetensors'));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /IoError: .*missing\.safetensors/);
  const unknown = cli('frobnicate');
  assert.equal(unknown.status, 2);
  assert.match(unknown.stderr, /unknown command "frobnicate"/);
  assert.equal(cli('--version').stdout.trim(), JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')).version);
});

test('sdnode generate writes PNGs with metadata; a batch writes numbered files', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'gen.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const out = path.join(work, 'cat.png');
  const r = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--steps', '2', '-s', '5', '-b', '2', '--sampler', 'euler', '-o', out);
  assert.equal(r.status, 0, r.stderr);
  for (const [i, seed] of [[1, 5], [2, 6]]) {
    const png = decodePNG(fs.readFileSync(path.join(work, `cat_${i}.png`)));
    assert.equal(png.width, 64);
    assert.match(png.text.parameters, new RegExp(`^a cat\\nSteps: 2, .*Seed: ${seed}, Size: 64x64, .*Sampler: Euler, Schedule type: Normal`));
  }
  assert.match(r.stdout, /cat_1\.png \(seed 5\)/);
  const bad = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '65');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /InvalidArgumentError: --width must be a multiple of 8/);
  const missing = cli('generate', '-p', 'a cat');
  assert.equal(missing.status, 2);
  assert.match(missing.stderr, /--model must be a model path/);
  // A custom schedule sets the step count; the new samplers are there by name.
  const custom = path.join(work, 'custom.png');
  const c = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--sigmas', '14.6,2,0', '--sampler', 'dpm++2m_sde', '-s', '5', '-o', custom);
  assert.equal(c.status, 0, c.stderr);
  assert.match(decodePNG(fs.readFileSync(custom)).text.parameters, /Steps: 2, .*Sampler: DPM\+\+ 2M SDE, /);
  const badSigmas = cli('generate', '-m', made.path, '-p', 'a cat', '--sigmas', '3,x,0');
  assert.equal(badSigmas.status, 2);
  assertOneLine(badSigmas.stderr, '--sigmas 3,x,0');
  assert.match(badSigmas.stderr, /--sigmas must be a number; received "x"/);
  // --prediction overrides what the file says (edm_v: the exponential scheduler by default).
  const edm = path.join(work, 'edm.png');
  const e = cli('generate', '-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--steps', '2', '--prediction', 'edm_v', '-o', edm);
  assert.equal(e.status, 0, e.stderr);
  assert.match(decodePNG(fs.readFileSync(edm)).text.parameters, /Schedule type: Exponential/);
  const badPrediction = cli('generate', '-m', made.path, '-p', 'a cat', '--prediction', 'flow');
  assert.equal(badPrediction.status, 2);
  assert.match(badPrediction.stderr, /--prediction must be one of "eps", "v", "edm_v"; received "flow"/);
  const prompt2 = cli('generate', '-m', made.path, '-p', 'a cat', '--prompt-2', 'a dog', '-W', '64', '-H', '64', '-o', path.join(work, 'p2.png'));
  assert.equal(prompt2.status, 2);
  assert.match(prompt2.stderr, /--prompt-2 is the text for SDXL's second text encoder \(OpenCLIP bigG\); this sd1 model has one text encoder/);
});

/** One line on stderr, no stack frames. */
function assertOneLine(stderr: string, label: string): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `${label}: stderr is one line:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at |ERR_PARSE_ARGS/, `${label}: no stack, no raw parseArgs error`);
}

test('command-line mistakes are one line naming the flag, with a pointer to --help, exit code 2', () => {
  const cases: Array<[string[], RegExp]> = [
    [['generate', '--stpes', '2', '-m', 'x.safetensors', '-p', 'a cat'], /unknown option --stpes for "sdnode generate" \(did you mean --steps\?\)/],
    [['generate', '-p', 'a cat', '-m'], /option -m\/--model is missing its value/],
    [['generate', '-m', 'x.safetensors', '-p', 'a cat', '--seed'], /option -s\/--seed is missing its value/],
    [['generate', '-m', '--prompt', 'a cat'], /option -m is missing its value \(a value that starts with "-" is written --model=VALUE\)/],
    [['generate', '-m', 'x.safetensors', '-p', 'a cat', 'stray'], /unexpected argument "stray" for "sdnode generate"/],
    [['generate', '-m', 'x.safetensors', '-p', 'a cat', '--seed', '-x'], /option --seed is missing its value/],
    [['inspect', '--jsno', 'x.safetensors'], /unknown option --jsno for "sdnode inspect" \(did you mean --json\?\)/],
    [['inspect', '--json=yes', 'x.safetensors'], /option --json takes no value/],
    [['inspect', 'a.safetensors', 'b.safetensors'], /"sdnode inspect" takes exactly one model path; received 2/],
  ];
  for (const [args, pattern] of cases) {
    const r = cli(...args);
    const label = args.join(' ');
    assert.equal(r.status, 2, `${label}: ${r.stderr}`);
    assertOneLine(r.stderr, label);
    assert.match(r.stderr, /^sdnode: /, label);
    assert.match(r.stderr, pattern, label);
    assert.match(r.stderr, /run "sdnode --help" for usage$/m, label);
  }
});

test('sdnode generate: negative numbers are values (--seed -1, -s -1, --seed=-1 pick a random seed)', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'neg.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const common = ['-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--steps', '1'];
  for (const seedArgs of [['--seed', '-1'], ['-s', '-1'], ['--seed=-1']]) {
    const out = path.join(work, `neg${seedArgs.length}${seedArgs[0]}.png`);
    const r = cli('generate', ...common, ...seedArgs, '-o', out);
    assert.equal(r.status, 0, `${seedArgs.join(' ')}: ${r.stderr}`);
    const seed = Number(/\(seed (\d+)\)/.exec(r.stdout)?.[1]);
    assert.ok(Number.isSafeInteger(seed) && seed >= 0, `${seedArgs.join(' ')}: a random seed was printed: ${r.stdout}`);
    assert.match(decodePNG(fs.readFileSync(out)).text.parameters, new RegExp(`Seed: ${seed},`));
  }
  // A negative number reaches the API's check; its error names the flag (the API's cfgScale).
  const cfg = cli('generate', ...common, '--cfg-scale', '-1', '-o', path.join(work, 'neg-cfg.png'));
  assert.equal(cfg.status, 2, cfg.stderr);
  assertOneLine(cfg.stderr, '--cfg-scale -1');
  assert.match(cfg.stderr, /--cfg-scale must be a finite number from 0 to 100; received -1/);
});

test('sdnode generate checks the output path before loading the model', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'out-check.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const dir = fs.mkdtempSync(path.join(work, 'outputs-'));
  fs.mkdirSync(path.join(dir, 'taken.png'));
  fs.mkdirSync(path.join(dir, 'batch_2.png'));
  fs.writeFileSync(path.join(dir, 'a-file'), '');
  const cases: Array<[string[], string, RegExp]> = [
    [[], path.join(dir, 'no', 'such', 'folder', 'cat.png'), /--output must be a file in an existing folder \(.*folder is not one\); received ".*cat\.png"/],
    [[], path.join(dir, 'a-file', 'cat.png'), /--output must be a file in an existing folder/],
    [[], path.join(dir, 'taken.png'), /--output must be a file path, not a folder; received ".*taken\.png"/],
    [['-b', '2'], path.join(dir, 'batch.png'), /--output must be a file path, not a folder; received ".*batch_2\.png"/],
  ];
  if (process.getuid?.() !== 0) {
    // root may write anywhere: the permission check is only testable as another user.
    const locked = path.join(dir, 'locked');
    fs.mkdirSync(locked, { mode: 0o555 });
    cases.push([[], path.join(locked, 'cat.png'), /--output must be a file in a writable folder/]);
  }
  const common = ['-p', 'a cat', '-W', '64', '-H', '64', '--steps', '1', '-s', '1'];
  for (const [extra, out, pattern] of cases) {
    const before = fs.readdirSync(dir, { recursive: true }).length;
    const t0 = Date.now();
    const r = cli('generate', '-m', made.path, ...common, ...extra, '-o', out);
    const label = `${extra.join(' ')} -o ${out}`;
    assert.equal(r.status, 2, `${label}: ${r.stderr}`);
    assertOneLine(r.stderr, label);
    assert.match(r.stderr, /^sdnode: InvalidArgumentError: /, label);
    assert.match(r.stderr, pattern, label);
    assert.equal(r.stdout, '', label);
    assert.equal(fs.readdirSync(dir, { recursive: true }).length, before, `${label}: nothing was written`);
    assert.ok(Date.now() - t0 < 30_000, label);
    // Before the model is loaded: a missing model is not what is reported.
    const noModel = cli('generate', '-m', path.join(work, 'missing.safetensors'), ...common, ...extra, '-o', out);
    assert.equal(noModel.status, 2, `${label} (no model): ${noModel.stderr}`);
    assert.match(noModel.stderr, pattern, `${label} (no model)`);
  }
  // A failure while writing is still one line (an IoError naming the file), exit code 1.
  if (fs.existsSync('/dev/full')) {
    const r = cli('generate', '-m', made.path, ...common, '-o', '/dev/full');
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^sdnode: IoError: cannot write \/dev\/full: ENOSPC/m);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    assert.equal(r.stderr.trim().split('\n').filter((l) => /^sdnode: \w*Error\b/.test(l)).length, 1);
  }
});

test('sdnode generate picks the format from the extension (--quality for JPEG/WebP); sdnode info reads the parameters back', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'formats.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const common = ['-m', made.path, '-p', 'a cat, on a mat', '-n', 'dog', '-W', '64', '-H', '64', '--steps', '1', '-s', '7', '--sampler', 'euler'];
  const outputs: Array<[string, string[], number[]]> = [
    ['cat.jpg', ['--quality', '80'], [0xff, 0xd8, 0xff]],
    ['cat.WEBP', [], [0x52, 0x49, 0x46, 0x46]],
  ];
  for (const [name, extra, magic] of outputs) {
    const out = path.join(work, name);
    const r = cli('generate', ...common, ...extra, '-o', out);
    assert.equal(r.status, 0, `${name}: ${r.stderr}`);
    assert.deepEqual([...fs.readFileSync(out).subarray(0, magic.length)], magic, `${name} is of its extension's format`);
    const info = cli('info', out);
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /^a cat, on a mat\nNegative prompt: dog\nSteps: 1, .*Seed: 7, Size: 64x64, .*Sampler: Euler, /);
    const json = cli('info-png', out, '--json');
    assert.equal(json.status, 0, json.stderr);
    const parsed = JSON.parse(json.stdout);
    assert.equal(parsed.text, info.stdout.trimEnd());
    assert.deepEqual(
      { prompt: parsed.options.prompt, negativePrompt: parsed.options.negativePrompt, seed: parsed.options.seed, steps: parsed.options.steps, sampler: parsed.options.sampler },
      { prompt: 'a cat, on a mat', negativePrompt: 'dog', seed: 7, steps: 1, sampler: 'euler' },
    );
    assert.equal(typeof parsed.extra.Version, 'string');
  }
  // A PNG's parameters too; an image without parameters exits 1; a missing file is an IoError.
  const png = path.join(work, 'info.png');
  assert.equal(cli('generate', ...common, '-o', png).status, 0);
  assert.match(cli('info', png).stdout, /^a cat, on a mat\n/);
  const bare = path.join(work, 'bare.png');
  fs.writeFileSync(bare, encodePNG(new Uint8Array(12), 2, 2));
  const none = cli('info', bare);
  assert.equal(none.status, 1);
  assertOneLine(none.stderr, 'info bare.png');
  assert.match(none.stderr, /bare\.png has no parameters text/);
  const missing = cli('info', path.join(work, 'missing.jpg'));
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /^sdnode: IoError: readParameters: cannot open .*missing\.jpg: no such file/);
  const twoFiles = cli('info', bare, png);
  assert.equal(twoFiles.status, 2);
  assert.match(twoFiles.stderr, /"sdnode info" takes exactly one image path; received 2/);
});

test('sdnode generate: an unknown output extension or a bad --quality fails before the model loads', () => {
  const noModel = ['-m', path.join(work, 'missing.safetensors'), '-p', 'a cat'];
  const cases: Array<[string[], RegExp]> = [
    [['-o', path.join(work, 'cat.bmp')], /--output must be a file name ending in \.png, \.jpg, \.jpeg or \.webp; received ".*cat\.bmp"/],
    [['-o', path.join(work, 'cat.jpg'), '--quality', '0'], /--quality must be an integer from 1 to 100; received "0"/],
    [['-o', path.join(work, 'cat.webp'), '--quality', 'high'], /--quality must be a number; received "high"/],
    [['-o', path.join(work, 'cat.png'), '--quality', '90'], /--quality must be given only for a \.jpg, \.jpeg or \.webp output/],
  ];
  for (const [extra, pattern] of cases) {
    const r = cli('generate', ...noModel, ...extra);
    const label = extra.join(' ');
    assert.equal(r.status, 2, `${label}: ${r.stderr}`);
    assertOneLine(r.stderr, label);
    assert.match(r.stderr, /^sdnode: InvalidArgumentError: /, label);
    assert.match(r.stderr, pattern, label);
  }
  const usage = cli('--help');
  assert.match(usage.stdout, /info IMAGE \[--json\]/);
  assert.match(usage.stdout, /--quality N/);
});

test('sdnode generate: image to image, inpainting and the hires fix from the command line', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'img2img.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const px = new Uint8Array(64 * 64 * 3);
  for (let i = 0; i < 64 * 64; i++) px.set([(i % 64) * 4, Math.floor(i / 64) * 4, 128], i * 3);
  const init = path.join(work, 'init.png');
  fs.writeFileSync(init, encodePNG(px, 64, 64));
  // White (repaint) on the left half, black (keep) on the right.
  const maskPx = new Uint8Array(64 * 64 * 3).map((_, i) => (Math.floor(i / 3) % 64 < 32 ? 255 : 0));
  const mask = path.join(work, 'mask.png');
  fs.writeFileSync(mask, encodePNG(maskPx, 64, 64));
  const common = ['-m', made.path, '-p', 'a cat', '--steps', '2', '-s', '9', '--sampler', 'euler'];
  const params = (file: string) => decodePNG(fs.readFileSync(file)).text.parameters;

  // img2img: the size comes from the init image.
  const a = path.join(work, 'img2img.png');
  const r = cli('generate', ...common, '--init-img', init, '--strength', '0.5', '-o', a);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(decodePNG(fs.readFileSync(a)).width, 64);
  assert.match(params(a), /Size: 64x64, .*Denoising strength: 0\.500000/);
  assert.match(r.stderr, /text [\d.]+ s, VAE encode [\d.]+ s, sampling [\d.]+ s, VAE [\d.]+ s, total [\d.]+ s/);

  // Inpainting: the default strength, the mask blur in the metadata.
  const b = path.join(work, 'inpaint.png');
  const m = cli('generate', ...common, '--init-img', init, '--mask', mask, '--mask-blur', '2', '--invert-mask', '--resize-mode', 'crop', '-o', b);
  assert.equal(m.status, 0, m.stderr);
  assert.match(params(b), /Denoising strength: 0\.750000, Mask blur: 2/);

  // The hires fix: the output is the larger size.
  const c = path.join(work, 'hires.png');
  const h = cli('generate', ...common, '-W', '64', '-H', '64', '--steps', '1', '--hires-scale', '2', '--hires-steps', '1', '-o', c);
  assert.equal(h.status, 0, h.stderr);
  const big = decodePNG(fs.readFileSync(c));
  assert.deepEqual([big.width, big.height], [128, 128]);
  assert.match(big.text.parameters, /Size: 64x64, .*Hires resize: 128x128, Hires steps: 1, Hires upscaler: Latent, Denoising strength: 0\.700000/);
  // sdnode info --json reads the hires fields back as generate() options.
  const info = cli('info', c, '--json');
  assert.equal(info.status, 0, info.stderr);
  assert.deepEqual(JSON.parse(info.stdout).options.hires, { width: 128, height: 128, steps: 1, strength: 0.7, upscaler: 'latent' });

  // Bad values: the API's check, in the flag's name, one line, exit code 2 (as every InvalidArgumentError).
  const bad: Array<[string[], RegExp]> = [
    [['--init-img', init, '--strength', '0'], /--strength must be a finite number above 0, at most 1; received 0/],
    [['--init-img', init, '--resize-mode', 'bogus'], /--resize-mode must be one of "resize", "crop", "fill"; received "bogus"/],
    [['--init-img', init, '--mask', mask, '--mask-blur', '0.1'], /--mask-blur must be 0 or a number of pixels from 0\.3/],
    [['--strength', '0.5'], /--strength must be given with an initImage \(--init-img\)/],
    [['--mask', mask], /--mask must be given with an initImage \(--init-img\)/],
    [['--hires-steps', '1.5'], /--hires-steps must be an integer from 0 to 1000; received 1\.5/],
    [['--hires-upscaler', 'bogus'], /--hires-upscaler must be one of "latent", /],
    [['--vae-tile-overlap', '0.9'], /--vae-tile-overlap must be a finite number from 0 to 0\.5; received 0\.9/],
    [['--decoder', 'taesd'], /--decoder 'taesd' needs a TAESD: pass --taesd/],
    [['--hires-strength', 'lots'], /--hires-strength must be a number; received "lots"/],
  ];
  for (const [extra, pattern] of bad) {
    const label = extra.join(' ');
    const e = cli('generate', ...common, '-W', '64', '-H', '64', ...extra, '-o', path.join(work, 'bad.png'));
    assert.equal(e.status, 2, `${label}: ${e.stderr}`);
    assertOneLine(e.stderr, label);
    assert.match(e.stderr, /^sdnode: InvalidArgumentError: /, label);
    assert.match(e.stderr, pattern, label);
  }
  assert.equal(fs.existsSync(path.join(work, 'bad.png')), false);

  // A missing input image: an IoError naming the flag and the file, exit code 1, before the model loads.
  for (const flag of ['--init-img', '--mask']) {
    const missing = path.join(work, 'no-such-image.png');
    const args = flag === '--mask' ? ['--init-img', init, '--mask', missing] : ['--init-img', missing];
    for (const model of [made.path, path.join(work, 'missing.safetensors')]) {
      const e = cli('generate', '-m', model, '-p', 'a cat', ...args, '-o', path.join(work, 'bad.png'));
      assert.equal(e.status, 1, `${flag}: ${e.stderr}`);
      assertOneLine(e.stderr, flag);
      assert.match(e.stderr, new RegExp(`^sdnode: IoError: ${flag}: cannot open .*no-such-image\\.png: no such file`), flag);
    }
  }
  // A file that is not an image: the image reader's error, in the flag's name.
  const notImage = cli('generate', ...common, '--init-img', made.path, '-o', path.join(work, 'bad.png'));
  assert.equal(notImage.status, 1, notImage.stderr);
  assert.match(notImage.stderr, /^sdnode: ImageFormatError: --init-img: cannot decode the image/m);
});

test('sdnode --help lists the image-to-image, hires fix and decoding flags with their defaults', () => {
  const usage = cli('--help').stdout;
  for (const group of ['image to image:', 'hires fix', 'decoding:', 'previews:']) assert.match(usage, new RegExp(`^${group}`, 'm'));
  const flags = [
    '--init-img', '--strength', '--mask', '--mask-blur', '--invert-mask', '--resize-mode', '--img-cfg-scale',
    '--hires', '--hires-scale', '--hires-width', '--hires-height', '--hires-steps', '--hires-strength', '--hires-upscaler',
    '--vae', '--taesd', '--decoder', '--vae-tiling', '--vae-tile-size', '--vae-tile-overlap', '--no-vae-tiling',
    '--vae-memory-budget', '--preview', '--preview-method', '--preview-interval',
  ];
  for (const flag of flags) {
    const line = new RegExp(`^ +${flag} [^\\n]*(\\n {20,}[^\\n]*)*`, 'm').exec(usage)?.[0];
    assert.ok(line, `${flag} is listed`);
    assert.match(line, /\(default/, `${flag} has its default`);
  }
  assert.match(usage, /--strength X .*\(default 0\.75\)/);
  assert.match(usage, /--hires-strength X .*\(default 0\.7\)/);
});

test('sdnode generate --preview FILE writes the latest preview; --vae-tiling and --vae-memory-budget choose the tiling', { timeout: 300_000 }, async () => {
  const made = await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'preview.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  const common = ['-m', made.path, '-p', 'a cat', '-W', '64', '-H', '64', '--steps', '2', '-s', '3', '--sampler', 'euler'];
  const out = path.join(work, 'final.png');
  const preview = path.join(work, 'preview.png');
  const r = cli('generate', ...common, '--preview', preview, '--preview-method', 'vae', '-o', out);
  assert.equal(r.status, 0, r.stderr);
  // euler's last preview is its final latent: the same pixels as the image.
  const p = decodePNG(fs.readFileSync(preview));
  assert.deepEqual([p.width, p.height], [64, 64]);
  assert.deepEqual(p.data, decodePNG(fs.readFileSync(out)).data);
  assert.deepEqual(fs.readdirSync(work).filter((f) => f.endsWith('.tmp')), [], 'no temporary file is left');
  // proj (the default without a TAESD) at the latent's size, as JPEG.
  const jpg = path.join(work, 'preview.jpg');
  const j = cli('generate', ...common, '--preview', jpg, '--preview-interval', '2', '-o', out);
  assert.equal(j.status, 0, j.stderr);
  assert.equal(fs.readFileSync(jpg).subarray(0, 2).toString('hex'), 'ffd8');
  // Tiling: forced, or past a tiny budget; the summary line says so.
  const t = cli('generate', ...common, '--vae-memory-budget', '0', '-o', out);
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stderr, /VAE [\d.]+ s \(tiled\)/);
  const u = cli('generate', ...common, '-o', out);
  assert.doesNotMatch(u.stderr, /\(tiled\)/);
  const bad: Array<[string[], RegExp]> = [
    [['--preview', path.join(work, 'p.gif')], /--preview must be a file name ending in \.png, \.jpg, \.jpeg or \.webp/],
    [['--preview-method', 'vae'], /--preview-method must be given with --preview FILE/],
    [['--preview', preview, '--preview-method', 'bogus'], /--preview-method must be one of "proj", "taesd", "vae"/],
    [['--preview', preview, '--preview-interval', '0'], /--preview-interval must be an integer from 1 to 1000/],
    [['--vae-tiling', '--no-vae-tiling'], /--no-vae-tiling must be given without --vae-tiling/],
    [['--vae-tiling', '--vae-memory-budget', '10'], /--vae-memory-budget must be given without --vae-tiling, --no-vae-tiling/],
  ];
  for (const [extra, pattern] of bad) {
    const e = cli('generate', ...common, ...extra, '-o', path.join(work, 'bad.png'));
    assert.equal(e.status, 2, `${extra.join(' ')}: ${e.stderr}`);
    assert.match(e.stderr, pattern, extra.join(' '));
  }
});
