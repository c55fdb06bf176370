// LoRAs on tiny generated models: every naming convention and module kind loads and changes the
// output by what its delta says; weight 0, switching and merge vs run time are exact or within
// float rounding; bad files and bad options are typed errors naming what is wrong.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  InvalidArgumentError, IoError, ModelFormatError, UnsupportedModelError, extractLoraTags, inspectLora, loadModel,
  type GenerateOptions, type Model,
} from '../lib/index.ts';
import { packageRoot } from '../lib/binding.ts';
import { decodePNG } from '../lib/image.ts';
import { fixturePath } from './fixtures/generate.ts';
import { initTensor } from './fixtures/random.ts';
import { denseDelta, diffTensor, loraLayers, moduleTensors, writeLora, type LoraKind, type LoraLayer, type LoraTensor } from './fixtures/lora.ts';
import { relativeL2 } from './helpers/reference.ts';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-lora-test-'));
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const base: GenerateOptions = { prompt: 'a photo of a cat', width: 64, height: 64, steps: 2, seed: 11, sampler: 'euler', returnLatents: true };

let model: Model;
let layers: LoraLayer[];
let plain: Float32Array;
// Attention, feed-forward and projection linears, a 3x3 resnet convolution and text-encoder layers.
const pick = (l: LoraLayer) =>
  /attn[12]\.to_[qkvo]|ff\.net|proj_(in|out)|resnets\.0\.conv1$|self_attn\.(q|v)_proj|mlp\.fc1/.test(l.diffusers);

async function file(name: string, tensors: LoraTensor[], container: 'safetensors' | 'gguf' | 'pt' = 'safetensors') {
  const p = path.join(dir, name);
  await writeLora(p, tensors, container);
  return p;
}
const modules = (kind: LoraKind, filter: (l: LoraLayer) => boolean = pick, opts: Parameters<typeof moduleTensors>[2] = {}) =>
  layers.filter(filter).flatMap((l) => moduleTensors(l, kind, opts));
const latent = async (o: Partial<GenerateOptions> = {}, m: Model = model) => (await m.generate({ ...base, ...o })).latents![0];

before(async () => {
  model = await loadModel(await fixturePath({ arch: 'sd1', format: 'safetensors', dtype: 'f32' }), { loraDir: dir });
  layers = loraLayers('sd1');
  plain = await latent();
});
after(() => model?.dispose());

describe('LoRA', () => {
  test('kohya LoRA: weight 0 is the base model exactly, weights scale the change, merge == run time within rounding', async () => {
    const p = await file('kohya.safetensors', modules('lora'));
    const info = await inspectLora(p, { model });
    assert.equal(info.naming, 'kohya');
    assert.deepEqual(info.kinds, ['locon', 'lora']);
    assert.deepEqual(info.ignored, []);
    assert.ok(info.targets.some((t) => t.component === 'text_encoder') && info.targets.some((t) => t.target.endsWith('in_layers.2.weight')));
    assert.deepEqual(await latent({ loras: [{ path: p, weight: 0 }] }), plain);
    const r1 = await model.generate({ ...base, loras: [{ path: p, weight: 1 }] });
    assert.equal(r1.options.loraApply, 'merge');
    assert.deepEqual(r1.options.loras, [{ path: p, weight: 1 }]);
    const d1 = relativeL2(r1.latents![0], plain), dh = relativeL2(await latent({ loras: [{ path: p, weight: 0.5 }] }), plain);
    assert.ok(d1 > 0.01, `the LoRA changes the output (${d1})`);
    assert.ok(dh > 0.1 * d1 && dh < d1, `half the weight, a smaller change (${dh} vs ${d1})`);
    // The text encoder's weights are f32 here: run time and merged agree to float rounding. (The
    // tiny random UNet turns any change of its f16 convolutions' rounding into ~0.4% of the latent,
    // so latents are compared with the change's size below.)
    const te = await file('kohya-te.safetensors', modules('lora', (l) => l.component === 'text_encoder'));
    const merged = (await model.encodePrompt(base.prompt, { loras: [{ path: te }] })).data;
    const atRuntime = (await model.encodePrompt(base.prompt, { loras: [{ path: te }], loraApply: 'runtime' })).data;
    assert.ok(relativeL2(merged, (await model.encodePrompt(base.prompt)).data) > 0.05);
    assert.ok(relativeL2(atRuntime, merged) < 1e-4, `run time vs merged: ${relativeL2(atRuntime, merged)}`);
    const runtime = await model.generate({ ...base, loras: [{ path: p, weight: 1 }], loraApply: 'runtime' });
    assert.equal(runtime.options.loraApply, 'runtime');
    assert.ok(relativeL2(runtime.latents![0], r1.latents![0]) < 0.2 * d1, `run time vs merged latent: ${relativeL2(runtime.latents![0], r1.latents![0])} (change ${d1})`);
  });

  test('switching A -> B -> none gives back the exact base model, and B after A equals B alone', async () => {
    const a = await file('switch-a.safetensors', modules('lora', pick, { seed: 1 }));
    const b = await file('switch-b.safetensors', modules('lora', pick, { seed: 2 }));
    const withA = await latent({ loras: [{ path: a }] });
    const withB = await latent({ loras: [{ path: b }] });
    assert.deepEqual(await latent(), plain);
    assert.deepEqual(await latent({ loras: [{ path: b }] }), withB);
    assert.deepEqual(await latent({ loras: [{ path: a }] }), withA);
    const both = await model.generate({ ...base, loras: [{ path: a }, { path: b, weight: 0.5 }] });
    assert.ok(relativeL2(both.latents![0], withA) > 1e-3);
    // The same set again is reused, not merged again.
    const again = await model.generate({ ...base, loras: [{ path: a }, { path: b, weight: 0.5 }] });
    assert.equal(again.timings.loraApply, 0);
    assert.deepEqual(again.latents![0], both.latents![0]);
  });

  test('every naming convention of the same factors gives the same image', async () => {
    const unetOnly = (l: LoraLayer) => pick(l) && l.component === 'unet' && !l.diffusers.includes('conv1');
    const kohya = await latent({ loras: [{ path: await file('n-kohya.safetensors', modules('lora', unetOnly, { naming: 'kohya' })) }] });
    for (const naming of ['kohya-ldm', 'peft', 'diffusers'] as const) {
      const p = await file(`n-${naming}.safetensors`, modules('lora', unetOnly, { naming }));
      const info = await inspectLora(p, { model });
      assert.deepEqual(info.ignored, [], naming);
      assert.deepEqual(await latent({ loras: [{ path: p }] }), kohya, naming);
    }
  });

  test('GGUF and .pt files hold the same LoRA', async () => {
    const tensors = modules('lora');
    const st = await latent({ loras: [{ path: await file('c.safetensors', tensors) }] });
    assert.deepEqual(await latent({ loras: [{ path: await file('c.gguf', tensors, 'gguf') }] }), st);
    assert.deepEqual(await latent({ loras: [{ path: await file('c.pt', tensors, 'pt') }] }), st);
  });

  test('LoCon, Tucker LoCon, LoHa, LoKr and DoRA change the weights by the delta they define', async () => {
    // Against a file of full diffs holding that delta, computed here in f64 from the formulas:
    // on the text encoder's f32 linears to float rounding, on the UNet's f16 3x3 convolutions
    // against the change they make.
    const te = (l: LoraLayer) => l.component === 'text_encoder';
    const conv = (l: LoraLayer) => l.shape.length === 4 && l.shape[2] === 3;
    const source = (l: LoraLayer) => (l.component === 'unet' ? `model.diffusion_model.${l.ldm}.weight` : `cond_stage_model.transformer.${l.ldm}.weight`);
    const cases: Array<[LoraKind, (l: LoraLayer) => boolean]> = [
      ['lora', te], ['loha', te], ['lokr', te], ['dora', te], ['lora', conv], ['locon-tucker', conv], ['loha', conv], ['lokr', conv]];
    for (const [kind, filter] of cases) {
      const chosen = layers.filter(filter);
      const per = chosen.map((l) => moduleTensors(l, kind));
      const weights = chosen.map((l) => (kind === 'dora' ? initTensor(1234, source(l), l.shape) : undefined));
      const name = `kind-${kind}-${chosen[0]!.component}`;
      const p = await file(`${name}.safetensors`, per.flat());
      const q = await file(`${name}-diff.safetensors`, per.map((t, i) => diffTensor(t[0]!, chosen[i]!, denseDelta(chosen[i]!, t, weights[i]))));
      const info = await inspectLora(p, { model });
      assert.deepEqual(info.ignored, [], name);
      assert.deepEqual((await inspectLora(q, { model })).ignored, [], name);
      assert.ok(info.kinds.includes(kind === 'locon-tucker' || (kind === 'lora' && filter === conv) ? 'locon' : kind), `${name}: ${info.kinds}`);
      if (filter === te) {
        const enc = async (path?: string, apply?: 'runtime') => (await model.encodePrompt(base.prompt, path ? { loras: [{ path }], loraApply: apply } : {})).data;
        const [none, got, want, rt] = [await enc(), await enc(p), await enc(q), await enc(p, 'runtime')];
        assert.ok(relativeL2(got, none) > 0.02, `${name} changes the conditioning`);
        assert.ok(relativeL2(got, want) < 1e-4, `${name}: merged vs its delta ${relativeL2(got, want)}`);
        assert.ok(relativeL2(rt, want) < 1e-3, `${name}: at run time vs its delta ${relativeL2(rt, want)}`);
      } else {
        const got = await latent({ loras: [{ path: p }] });
        const change = relativeL2(got, plain);
        assert.ok(change > 0.03, `${name} changes the output (${change})`);
        assert.ok(relativeL2(got, await latent({ loras: [{ path: q }] })) < 0.2 * change, `${name}: merged vs its delta`);
        const rt = await latent({ loras: [{ path: p }], loraApply: 'runtime' });
        assert.ok(relativeL2(rt, got) < 0.2 * change, `${name}: run time vs merged ${relativeL2(rt, got)} (change ${change})`);
      }
    }
  });

  test('a full diff (diff and diff_b) applies to the weight and the bias', async () => {
    const p = await file('diff.safetensors', modules('diff', (l) => pick(l) && l.component === 'unet'));
    const info = await inspectLora(p, { model });
    assert.ok(info.targets.some((t) => t.target.endsWith('.bias')));
    assert.ok(relativeL2(await latent({ loras: [{ path: p }] }), plain) > 1e-3);
  });

  test('prompt tags resolve in loraDir, are removed from the prompt and sum with the option', async () => {
    const p = await file('tagged.safetensors', modules('lora'));
    assert.deepEqual(extractLoraTags('a cat <lora:tagged:0.7>, sitting'), { prompt: 'a cat , sitting', tags: [{ name: 'tagged', weight: 0.7 }] });
    const byTag = await model.generate({ ...base, prompt: `${base.prompt} <lora:tagged:0.7>` });
    assert.equal(byTag.options.prompt, `${base.prompt} <lora:tagged:0.7>`);
    assert.deepEqual(byTag.options.loras, [{ path: p, weight: 0.7 }]);
    assert.deepEqual(byTag.latents![0], await latent({ loras: [{ name: 'tagged', weight: 0.7 }] }));
    const summed = await model.generate({ ...base, prompt: `${base.prompt} <lora:tagged:0.3>`, loras: [{ path: p, weight: 0.4 }] });
    assert.equal(summed.options.loras!.length, 1);
    assert.ok(Math.abs(summed.options.loras![0]!.weight - 0.7) < 1e-12);
    // encodePrompt honours the tags (text-encoder modules) too.
    const tagged = await model.encodePrompt('a cat <lora:tagged:1>');
    const untagged = await model.encodePrompt('a cat');
    assert.ok(relativeL2(tagged.data, untagged.data) > 1e-3);
    assert.deepEqual((await model.encodePrompt('a cat', { loras: [{ name: 'tagged' }] })).data, tagged.data);
  });

  test('quantized weights: auto applies at run time; merge requantizes a copy', async () => {
    await using q = await loadModel(await fixturePath({ arch: 'sd1', format: 'safetensors', dtype: 'f32' }), { weightType: 'q8_0' });
    const p = await file('q.safetensors', modules('lora'));
    const qPlain = await latent({}, q);
    const auto = await q.generate({ ...base, loras: [{ path: p }] });
    assert.equal(auto.options.loraApply, 'runtime');
    const merged = await q.generate({ ...base, loras: [{ path: p }], loraApply: 'merge' });
    assert.equal(merged.options.loraApply, 'merge');
    assert.ok(relativeL2(auto.latents![0], qPlain) > 1e-3);
    assert.ok(relativeL2(merged.latents![0], qPlain) > 1e-3);
    assert.deepEqual(await latent({}, q), qPlain);
  });

  test('SDXL: lora_te1 / lora_te2 / lora_unet all apply', async () => {
    await using xl = await loadModel(await fixturePath({ arch: 'sdxl', format: 'safetensors', dtype: 'f32' }));
    const xlLayers = loraLayers('sdxl').filter((l) => /attn[12]\.to_[qk]|self_attn\.q_proj/.test(l.diffusers));
    const p = path.join(dir, 'xl.safetensors');
    await writeLora(p, xlLayers.flatMap((l) => moduleTensors(l, 'lora', { arch: 'sdxl' })));
    const info = await inspectLora(p, { model: xl });
    assert.deepEqual(info.ignored, []);
    assert.deepEqual(new Set(info.targets.map((t) => t.component)), new Set(['unet', 'text_encoder', 'text_encoder_2']));
    const o: GenerateOptions = { ...base, width: 64, height: 64 };
    const x0 = (await xl.generate(o)).latents![0];
    const x1 = (await xl.generate({ ...o, loras: [{ path: p }] })).latents![0];
    assert.ok(relativeL2(x1, x0) > 1e-3);
  });

  test('SD2.x (OpenCLIP text encoder, linear projections): kohya names apply; mapped weights stay mapped', async () => {
    await using sd2 = await loadModel(await fixturePath({ arch: 'sd2', format: 'safetensors', dtype: 'f16' }));
    const sd2Layers = loraLayers('sd2').filter((l) => /attn[12]\.to_[qv]|proj_in|self_attn\.(q|k|v|out)_proj|mlp\.fc2/.test(l.diffusers));
    const p = path.join(dir, 'sd2.safetensors');
    await writeLora(p, sd2Layers.flatMap((l) => moduleTensors(l, 'lora', { arch: 'sd2' })));
    const info = await inspectLora(p, { model: sd2 });
    assert.deepEqual(info.ignored, []);
    assert.ok(info.targets.some((t) => t.target.endsWith('self_attn.k_proj.weight')), 'OpenCLIP q/k/v split views take their own LoRA');
    const mappedBefore = sd2.memory().mapped;
    const o: GenerateOptions = { ...base, width: 64, height: 64 };
    const x0 = (await sd2.generate(o)).latents![0];
    const x1 = (await sd2.generate({ ...o, loras: [{ path: p }] })).latents![0];
    assert.ok(relativeL2(x1, x0) > 1e-3);
    assert.equal(sd2.memory().mapped, mappedBefore);
    assert.deepEqual((await sd2.generate(o)).latents![0], x0);
  });

  test('inspectLora without a model: naming, kinds, rank, prefixes', async () => {
    const p = await file('inspect.safetensors', [...modules('lora'), { name: 'not_a_lora.weight', shape: [2], values: new Float32Array(2) }]);
    const info = await inspectLora(p);
    assert.equal(info.format, 'safetensors');
    assert.equal(info.naming, 'kohya');
    assert.deepEqual(info.rank, { min: 4, max: 4 });
    assert.ok(info.targets.every((t) => t.shape === undefined));
    assert.ok(info.targets.some((t) => t.component === 'text_encoder'));
    assert.equal(info.ignored.length, 1);
    assert.match(info.ignored[0]!.reason, /not a LoRA tensor/);
  });

  test('tensors for layers the model lacks are ignored with a warning', async () => {
    const extra: LoraTensor[] = [
      { name: 'lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight', shape: [4, 32], values: new Float32Array(128) },
      { name: 'lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight', shape: [32, 4], values: new Float32Array(128) },
    ];
    const p = await file('partial.safetensors', [...modules('lora'), ...extra]);
    const r = await model.generate({ ...base, loras: [{ path: p }] });
    assert.equal(r.warnings.length, 1);
    assert.match(r.warnings[0]!, /2 tensor\(s\) ignored.*down_blocks_9/);
    assert.equal((await inspectLora(p, { model })).ignored.length, 2);
  });

  test('bad files and bad options are typed errors', async () => {
    const good = modules('lora');
    // A factor of the wrong width: named with both shapes.
    const wrong = good.map((t) => (t.name.endsWith('attn1_to_q.lora_down.weight') && t.name.includes('down_blocks_0_attentions_0')
      ? { ...t, shape: [4, 48], values: new Float32Array(4 * 48) } : t));
    const wrongP = await file('wrong.safetensors', wrong);
    await assert.rejects(model.generate({ ...base, loras: [{ path: wrongP }] }),
      (e: unknown) => e instanceof ModelFormatError && /attn1_to_q\.lora_down\.weight' has shape \[4, 48\].*of shape \[32, 32\]/.test(e.message));
    // Truncated.
    const full = await file('trunc.safetensors', good);
    const truncated = path.join(dir, 'truncated.safetensors');
    fs.writeFileSync(truncated, fs.readFileSync(full).subarray(0, 5000));
    await assert.rejects(model.generate({ ...base, loras: [{ path: truncated }] }), ModelFormatError);
    await assert.rejects(inspectLora(truncated), ModelFormatError);
    // Nothing in it fits this model.
    const other = await file('other.safetensors', [
      { name: 'lora_unet_input_blocks_4_1_transformer_blocks_5_attn1_to_q.lora_down.weight', shape: [4, 640], values: new Float32Array(2560) },
      { name: 'lora_unet_input_blocks_4_1_transformer_blocks_5_attn1_to_q.lora_up.weight', shape: [640, 4], values: new Float32Array(2560) },
    ]);
    await assert.rejects(model.generate({ ...base, loras: [{ path: other }] }), (e: unknown) => e instanceof UnsupportedModelError && /adapts nothing/.test(e.message));
    // Missing names: the folder and close matches.
    await file('detail_tweaker.safetensors', good);
    await assert.rejects(model.generate({ ...base, prompt: 'x <lora:detail_tweakr:1>' }),
      (e: unknown) => e instanceof IoError && e.message.includes(dir) && /close matches: detail_tweaker/.test(e.message));
    await assert.rejects(model.generate({ ...base, loras: [{ path: path.join(dir, 'missing.safetensors') }] }), IoError);
    await using noDir = await loadModel(await fixturePath({ arch: 'sd1', format: 'safetensors', dtype: 'f32' }));
    await assert.rejects(noDir.generate({ ...base, prompt: 'x <lora:a:1>' }), (e: unknown) => e instanceof InvalidArgumentError && /loraDir/.test(e.message));
    for (const bad of [
      { loras: 'x' }, { loras: [{}] }, { loras: [{ path: 'a', name: 'b' }] }, { loras: [{ path: 'a', weight: 'x' }] },
      { loras: [{ path: 'a', weight: 1000 }] }, { loras: [{ path: 'a', extra: 1 }] }, { loraApply: 'fast' }, { prompt: 'x <lora:a:abc>' },
    ]) {
      await assert.rejects(model.generate({ ...base, ...bad } as GenerateOptions), InvalidArgumentError, JSON.stringify(bad));
    }
    await assert.rejects(loadModel('x.safetensors', { loraDir: path.join(dir, 'nope') }), IoError);
    // The model is unharmed.
    assert.deepEqual(await latent(), plain);
  });
});

describe('LoRA on the command line', () => {
  const cliRun = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'lib', 'cli', 'main.ts'), ...args], { encoding: 'utf8' });

  test('--lora-dir, --lora NAME:W and prompt tags give the API numbers; a missing name names the flag', { timeout: 300_000 }, async () => {
    const p = await file('cli.safetensors', modules('lora'));
    const want = await model.generate({ ...base, loras: [{ name: 'cli', weight: 0.7 }] });
    const args = ['generate', '-m', model.path, '-W', '64', '-H', '64', '--steps', '2', '-s', '11', '--sampler', 'euler', '--lora-dir', dir];
    for (const [extra, prompt] of [[['--lora', 'cli:0.7'], base.prompt], [[], `${base.prompt} <lora:cli:0.7>`], [['--lora', `${p}:0.7`], base.prompt]] as const) {
      const out = path.join(dir, `cli-${extra.length}-${prompt.length}.png`);
      const r = cliRun(...args, '-p', prompt, ...extra, '-o', out);
      assert.equal(r.status, 0, r.stderr);
      const png = decodePNG(fs.readFileSync(out));
      assert.deepEqual(png.data, want.images[0]!.data, `${extra.join(' ')} ${prompt}`);
      assert.match(r.stderr, /LoRA merge/);
    }
    const missing = cliRun(...args, '-p', 'x', '--lora', 'nope:1', '-o', path.join(dir, 'x.png'));
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /IoError: --lora.*no LoRA named "nope"/);
    const badMode = cliRun(...args, '-p', 'x', '--lora', 'cli', '--lora-apply', 'fast', '-o', path.join(dir, 'x.png'));
    assert.match(badMode.stderr, /--lora-apply must be one of "auto", "merge", "runtime"/);
  });
});
