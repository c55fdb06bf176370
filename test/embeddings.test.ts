// Textual-inversion embeddings on tiny generated models: embeddingsDir and the per-call
// `embeddings` option, the file formats (safetensors emb_params, A1111 .pt string_to_param, SDXL
// clip_l / clip_g), multi-vector embeddings, emphasis, chunking, the per-model cache, and typed
// errors for bad folders, files and widths. The exact checks use embeddings whose vectors are
// the token-embedding rows of a word, read from the fixture file: the trigger must then give
// exactly that word's conditioning.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { InvalidArgumentError, IoError, ModelFormatError, loadModel, type Model } from '../lib/index.ts';
import { decodePNG } from '../lib/image.ts';
import { packageRoot } from '../lib/binding.ts';
import { generateCheckpoint } from './fixtures/generate.ts';
import { encodeFloats, f16BitsToF32, numel, type FloatDType } from './fixtures/random.ts';
import { Pickler, ValueSource, ZipWriter, writeCkpt, writeGguf } from './fixtures/writers.ts';
import type { TensorEntry } from './fixtures/tensors.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-embeddings-'));
const embDir = path.join(work, 'emb');
const VOCAB = 49408;
let sd1: string;
let sdxl: string;
let plain: Model;     // sd1, no embeddings folder
let withDir: Model;   // sd1 with embDir

type Tensors = Record<string, { shape: number[]; data: Float32Array }>;

/** A safetensors file of the given tensors. */
function writeSafetensors(file: string, tensors: Tensors, dtype: FloatDType = 'f32'): void {
  const header: Record<string, unknown> = {};
  const parts: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = encodeFloats(t.data, dtype);
    header[name] = { dtype: dtype.toUpperCase(), shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    parts.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(json), ...parts]));
}

/** An A1111 textual-inversion .pt: torch.save({string_to_token, string_to_param: {"*": tensor}, name, step}). */
async function writeA1111Pt(file: string, shape: number[], data: Float32Array): Promise<void> {
  const p = new Pickler().proto().emptyDict();
  p.mark();
  p.str('string_to_token').emptyDict().str('*').int(265).setitem();
  p.str('string_to_param').emptyDict().str('*');
  p.global('torch._utils', '_rebuild_tensor_v2');
  p.mark();
  p.mark().str('storage').global('torch', 'FloatStorage').str('0').str('cpu').int(numel(shape)).tuple();
  p.binpersid();
  p.int(0);
  p.intTuple(shape);
  p.intTuple(shape.map((_, d) => numel(shape.slice(d + 1))));
  p.bool(true);  // A1111 saves the trained vector with requires_grad
  p.global('collections', 'OrderedDict').emptyTuple().reduce();
  p.tuple();
  p.reduce();
  p.setitem();
  p.str('name').str(path.basename(file, '.pt'));
  p.str('step').int(3000);
  p.setitems();
  const zip = await ZipWriter.create(file);
  await zip.add('archive/data.pkl', p.stop());
  await zip.add('archive/byteorder', Buffer.from('little'));
  await zip.add('archive/data/0', encodeFloats(data, 'f32'));
  await zip.add('archive/version', Buffer.from('3\n'));
  await zip.finish();
}

/** Rows `ids` of a [vocab, width] f16/f32 tensor of a safetensors fixture, concatenated. */
function tokenRows(file: string, name: string, ids: number[]): Float32Array {
  const buf = fs.readFileSync(file);
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const t = header[name];
  assert.ok(t, `fixture tensor ${name}`);
  const width = t.shape[1]!;
  const out = new Float32Array(ids.length * width);
  const start = 8 + len + t.data_offsets[0];
  ids.forEach((id, r) => {
    for (let i = 0; i < width; i++) {
      const at = id * width + i;
      out[r * width + i] = t.dtype === 'F16' ? f16BitsToF32(buf.readUInt16LE(start + 2 * at)) : buf.readFloatLE(start + 4 * at);
    }
  });
  return out;
}

/** The prompt tokens of `word` (no BOS/EOS/padding). */
function wordIds(model: Model, word: string): number[] {
  const t = model.tokenize(word);
  return t.slice(1, t.indexOf(49407));
}

function randomRows(n: number, width: number, seed: number): Float32Array {
  const out = new Float32Array(n * width);
  let s = seed >>> 0;
  for (let i = 0; i < out.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 0.1;
  }
  return out;
}

const SD1_TOKENS = 'cond_stage_model.transformer.text_model.embeddings.token_embedding.weight';
const XL_L_TOKENS = 'conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight';
const XL_G_TOKENS = 'conditioner.embedders.1.model.token_embedding.weight';
const WIDTH = 32;  // the tiny text encoders' width
let catIds: number[];
let longWord: string;  // a word of two or more tokens
let longIds: number[];

before(async () => {
  fs.mkdirSync(embDir);
  sd1 = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors'), seed: 11 })).path;
  sdxl = (await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', out: path.join(work, 'xl.safetensors'), seed: 12,
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 } })).path;
  plain = await loadModel(sd1, { threads: 2 });
  catIds = wordIds(plain, 'cat');
  assert.equal(catIds.length, 1);
  longWord = ['lighthouse', 'photorealistic', 'xylophonist'].find((w) => wordIds(plain, w).length >= 2)!;
  longIds = wordIds(plain, longWord);
  // kitty = the rows of "cat"; many = the rows of a multi-token word (an A1111 .pt); rnd = random vectors.
  writeSafetensors(path.join(embDir, 'kitty.safetensors'), { emb_params: { shape: [1, WIDTH], data: tokenRows(sd1, SD1_TOKENS, catIds) } });
  await writeA1111Pt(path.join(embDir, 'many.pt'), [longIds.length, WIDTH], tokenRows(sd1, SD1_TOKENS, longIds));
  writeSafetensors(path.join(embDir, 'rnd.safetensors'), { emb_params: { shape: [2, WIDTH], data: randomRows(2, WIDTH, 1) } });
  // A broken file and a file of the wrong width: errors only when a prompt uses them.
  fs.writeFileSync(path.join(embDir, 'broken.safetensors'), Buffer.from('not a safetensors file at all'));
  writeSafetensors(path.join(embDir, 'wide.safetensors'), { emb_params: { shape: [1, 64], data: randomRows(1, 64, 2) } });
  fs.writeFileSync(path.join(embDir, 'notes.txt'), 'kitty is not an embedding file');
  withDir = await loadModel(sd1, { threads: 2, embeddingsDir: embDir });
});

after(async () => {
  await plain?.dispose();
  await withDir?.dispose();
  fs.rmSync(work, { recursive: true, force: true });
});

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

describe('textual-inversion embeddings (SD1.x)', () => {
  test('an embedding of a word\'s token rows gives exactly that word\'s conditioning', async () => {
    const viaEmb = await withDir.encodePrompt('a photo of a kitty');
    const viaWord = await plain.encodePrompt('a photo of a cat');
    assert.ok(same(viaEmb.data, viaWord.data), 'kitty = cat, bit for bit');
    // Without the folder "kitty" is text, and the conditioning differs.
    const asText = await plain.encodePrompt('a photo of a kitty');
    assert.ok(!same(asText.data, viaWord.data));
    // The trigger became one custom id past the vocabulary.
    const ids = [...viaEmb.tokenIds];
    assert.deepEqual(ids.slice(0, 6), [...plain.tokenize('a photo of a').slice(0, 5), VOCAB]);
    assert.equal(ids[6], 49407);
  });

  test('multi-vector: an A1111 .pt of several vectors becomes as many tokens', async () => {
    const viaEmb = await withDir.encodePrompt(`many, in a field`);
    const viaWord = await plain.encodePrompt(`${longWord}, in a field`);
    assert.ok(same(viaEmb.data, viaWord.data), `many = ${longWord} (${longIds.length} tokens)`);
    assert.deepEqual([...viaEmb.tokenIds].slice(1, 1 + longIds.length), longIds.map((_, k) => VOCAB + k));
  });

  test('other containers and types: f16 safetensors, GGUF, a .ckpt state dict, bf16', async () => {
    const rows = tokenRows(sd1, SD1_TOKENS, catIds);
    const entry: TensorEntry = { name: 'emb_params', shape: [1, WIDTH], component: 'text_encoder', source: 'emb_params', sourceShape: [1, WIDTH] };
    const values = { values: () => rows } as unknown as ValueSource;
    const files = {
      f16: path.join(work, 'f16.safetensors'),
      gguf: path.join(work, 'gg.gguf'),
      ckpt: path.join(work, 'sd.ckpt'),
    };
    writeSafetensors(files.f16, { emb_params: { shape: [1, WIDTH], data: rows } }, 'f16');
    await writeGguf(files.gguf, [entry], 'f16', values);
    await writeCkpt(files.ckpt, [entry], 'f32', values);
    const cat = (await plain.encodePrompt('a photo of a cat')).data;
    for (const [kind, file] of Object.entries(files)) {
      const e = await plain.encodePrompt('a photo of a moggy', { embeddings: [{ path: file, trigger: 'moggy' }] });
      assert.ok(same(e.data, cat), kind);
    }
    // bf16 rounds the rows: close to the word, not equal.
    const bf16 = path.join(work, 'bf.safetensors');
    writeSafetensors(bf16, { emb_params: { shape: [1, WIDTH], data: rows } }, 'bf16');
    const e = await plain.encodePrompt('a photo of a bf', { embeddings: [{ path: bf16 }] });
    assert.equal(e.tokenIds[5], VOCAB);
    let num = 0, den = 0;
    for (let i = 0; i < cat.length; i++) { num += (e.data[i]! - cat[i]!) ** 2; den += cat[i]! ** 2; }
    assert.ok(Math.sqrt(num / den) < 0.05, `bf16 relative difference ${Math.sqrt(num / den)}`);
  });

  test('the trigger changes the conditioning; a prompt without one is unchanged', async () => {
    const a = await withDir.encodePrompt('a portrait in the style of rnd');
    const b = await plain.encodePrompt('a portrait in the style of rnd');
    assert.ok(!same(a.data, b.data));
    assert.deepEqual([...a.tokenIds].slice(7, 10), [VOCAB, VOCAB + 1, 49407]);
    const none = await withDir.encodePrompt('a photo of a dog');
    const ref = await plain.encodePrompt('a photo of a dog');
    assert.ok(same(none.data, ref.data));
    assert.deepEqual([...none.tokenIds], [...ref.tokenIds]);
  });

  test('emphasis weights apply to embedding tokens like any word', async () => {
    const weighted = await withDir.encodePrompt('a (kitty:1.3) on a [[mat]]');
    const ref = await plain.encodePrompt('a (cat:1.3) on a [[mat]]');
    assert.ok(same(weighted.data, ref.data));
    const unweighted = await withDir.encodePrompt('a kitty on a [[mat]]');
    assert.ok(!same(weighted.data, unweighted.data));
    const multi = await withDir.encodePrompt('((many)) here');
    assert.ok(same(multi.data, (await plain.encodePrompt(`((${longWord})) here`)).data));
  });

  test('triggers match case-insensitively, inside words, the longest first; repeats reuse their ids', async () => {
    const upper = await withDir.encodePrompt('a photo of a KITTY');
    assert.ok(same(upper.data, (await plain.encodePrompt('a photo of a cat')).data));
    // "rndkitty": rnd then kitty, both found inside one word.
    const joined = [...(await withDir.encodePrompt('rndkitty rnd')).tokenIds].slice(1, 7);
    assert.deepEqual(joined, [VOCAB, VOCAB + 1, VOCAB + 2, VOCAB, VOCAB + 1, 49407]);
    // With both "rnd" (2 vectors) and "rndx" (3 vectors), "rndx" is the longer match at that place.
    const extra = path.join(work, 'rndx.safetensors');
    writeSafetensors(extra, { emb_params: { shape: [3, WIDTH], data: randomRows(3, WIDTH, 3) } });
    const both = await withDir.encodePrompt('rndx', { embeddings: [{ path: extra }] });
    assert.deepEqual([...both.tokenIds].slice(0, 5), [49406, VOCAB, VOCAB + 1, VOCAB + 2, 49407]);
  });

  test('chunking and BREAK count the embedding tokens', async () => {
    // 74 words then the two vectors of rnd: 76 tokens, past one chunk of 75.
    const words = Array(74).fill('dog').join(' ');
    const long = await withDir.encodePrompt(`${words} rnd`);
    assert.equal(long.tokens, 154);
    assert.deepEqual([long.tokenIds[75], long.tokenIds[76], long.tokenIds[77], long.tokenIds[78]], [VOCAB, 49407, 49406, VOCAB + 1]);
    const broken = await withDir.encodePrompt('rnd BREAK kitty');
    assert.equal(broken.tokens, 154);
    assert.deepEqual([broken.tokenIds[1], broken.tokenIds[2], broken.tokenIds[3]], [VOCAB, VOCAB + 1, 49407]);
    assert.equal(broken.tokenIds[78], VOCAB + 2);
  });

  test('the embeddings option: the trigger defaults to the file stem, can be renamed, and replaces a folder file', async () => {
    const kitty = path.join(embDir, 'kitty.safetensors');
    const cat = (await plain.encodePrompt('a photo of a cat')).data;
    assert.ok(same((await plain.encodePrompt('a photo of a kitty', { embeddings: [{ path: kitty }] })).data, cat));
    assert.ok(same((await plain.encodePrompt('a photo of a Moggy', { embeddings: [{ path: kitty, trigger: 'MOGGY' }] })).data, cat));
    // In withDir, "rnd" now stands for kitty's vector.
    const replaced = await withDir.encodePrompt('a photo of a rnd', { embeddings: [{ path: kitty, trigger: 'rnd' }] });
    assert.ok(same(replaced.data, cat));
    // Relative paths are taken from the working directory.
    const rel = path.relative(process.cwd(), kitty);
    assert.ok(same((await plain.encodePrompt('a photo of a kitty', { embeddings: [{ path: rel }] })).data, cat));
  });

  test('the folder is listed per call and changed files are read again', async () => {
    const file = path.join(embDir, 'fresh.safetensors');
    const before = await withDir.encodePrompt('a fresh cat');
    assert.equal(before.tokenIds.indexOf(VOCAB), -1, 'no such embedding yet');
    writeSafetensors(file, { emb_params: { shape: [1, WIDTH], data: tokenRows(sd1, SD1_TOKENS, catIds) } });
    const added = await withDir.encodePrompt('a fresh cat');
    assert.ok(same(added.data, (await plain.encodePrompt('a cat cat')).data));
    // Rewritten with other values (and size): the cache notices.
    writeSafetensors(file, { emb_params: { shape: [2, WIDTH], data: tokenRows(sd1, SD1_TOKENS, [...catIds, ...catIds]) } });
    const changed = await withDir.encodePrompt('a fresh cat');
    assert.ok(same(changed.data, (await plain.encodePrompt('a cat cat cat')).data));
    fs.rmSync(file);
    const removed = await withDir.encodePrompt('a fresh cat');
    assert.ok(same(removed.data, before.data));
  });

  test('generate(): the trigger works in the prompt and the negative prompt, exactly as the word', async () => {
    const base = { width: 64, height: 64, steps: 2, seed: 5, sampler: 'euler' as const, returnLatents: true };
    const a = await withDir.generate({ ...base, prompt: 'a kitty in the snow', negativePrompt: 'blurry many' });
    const b = await plain.generate({ ...base, prompt: 'a cat in the snow', negativePrompt: `blurry ${longWord}` });
    assert.ok(same(a.latents![0], b.latents![0]));
    assert.deepEqual(a.images[0].data, b.images[0].data);
    const c = await withDir.generate({ ...base, prompt: 'a rnd in the snow' });
    const d = await plain.generate({ ...base, prompt: 'a rnd in the snow' });
    assert.ok(!same(c.latents![0], d.latents![0]));
    const e = await plain.generate({ ...base, prompt: 'a rnd in the snow', embeddings: [{ path: path.join(embDir, 'rnd.safetensors') }] });
    assert.ok(same(c.latents![0], e.latents![0]));
  });

  test('bad folders, files and widths are typed errors', async () => {
    await assert.rejects(loadModel(sd1, { embeddingsDir: path.join(work, 'missing') }), (e: unknown) => e instanceof IoError && /missing/.test(e.message));
    await assert.rejects(loadModel(sd1, { embeddingsDir: sd1 }), IoError);
    await assert.rejects(withDir.encodePrompt('a broken thing'), (e: unknown) =>
      e instanceof ModelFormatError && e.message.includes('broken.safetensors'));
    await assert.rejects(withDir.encodePrompt('a wide thing'), (e: unknown) =>
      e instanceof ModelFormatError && e.message.includes('wide.safetensors') && e.message.includes("'emb_params'") &&
      /64 wide/.test(e.message) && /takes 32/.test(e.message));
    await assert.rejects(withDir.generate({ prompt: 'x', negativePrompt: 'wide', width: 64, height: 64, steps: 1 }), ModelFormatError);
    const file = (name: string, bytes: Buffer | string) => {
      const p = path.join(work, name);
      fs.writeFileSync(p, bytes);
      return p;
    };
    const use = (p: string) => plain.encodePrompt(`x ${path.basename(p).replace(/\..*$/, '')}`, { embeddings: [{ path: p }] });
    await assert.rejects(use(file('empty.safetensors', Buffer.alloc(0))), ModelFormatError);
    const good = fs.readFileSync(path.join(embDir, 'kitty.safetensors'));
    await assert.rejects(use(file('cut.safetensors', good.subarray(0, good.length - 10))), ModelFormatError);
    const pt = fs.readFileSync(path.join(embDir, 'many.pt'));
    await assert.rejects(use(file('cutpt.pt', pt.subarray(0, Math.floor(pt.length / 2)))), ModelFormatError);
    await assert.rejects(use(file('junk.pt', 'junk')), ModelFormatError);
    const two = path.join(work, 'two.safetensors');
    writeSafetensors(two, { a: { shape: [1, WIDTH], data: randomRows(1, WIDTH, 4) }, b: { shape: [1, WIDTH], data: randomRows(1, WIDTH, 5) } });
    await assert.rejects(use(two), (e: unknown) => e instanceof ModelFormatError && /none is an embedding/.test(e.message));
    const zero = path.join(work, 'zero.safetensors');
    writeSafetensors(zero, { emb_params: { shape: [0, WIDTH], data: new Float32Array(0) } });
    await assert.rejects(use(zero), (e: unknown) => e instanceof ModelFormatError && /no vectors/.test(e.message));
    const nan = path.join(work, 'nan.safetensors');
    writeSafetensors(nan, { emb_params: { shape: [1, WIDTH], data: new Float32Array(WIDTH).fill(NaN) } });
    await assert.rejects(use(nan), (e: unknown) => e instanceof ModelFormatError && /finite/.test(e.message));
    // The option itself.
    await assert.rejects(plain.encodePrompt('x', { embeddings: [{ path: path.join(work, 'nope.pt') }] }), IoError);
    await assert.rejects(plain.encodePrompt('x', { embeddings: [{ path: '' }] }), InvalidArgumentError);
    await assert.rejects(plain.encodePrompt('x', { embeddings: [{ path: two, trigger: '' }] }), InvalidArgumentError);
    await assert.rejects(plain.encodePrompt('x', { embeddings: [{ path: two, weight: 1 }] as never }), InvalidArgumentError);
    await assert.rejects(plain.encodePrompt('x', { embeddings: 'emb.pt' as never }), InvalidArgumentError);
    await assert.rejects(plain.generate({ prompt: 'x', embeddings: [{}] as never }), InvalidArgumentError);
    // The model still works afterwards.
    assert.equal((await withDir.encodePrompt('a kitty')).tokenIds[2], VOCAB);
  });
});

describe('textual-inversion embeddings (SDXL)', () => {
  let xl: Model;
  let xlDir: string;
  before(async () => {
    xlDir = path.join(work, 'xl-emb');
    fs.mkdirSync(xlDir);
    const ids = wordIds(plain, 'cat');
    writeSafetensors(path.join(xlDir, 'kitty.safetensors'), {
      clip_l: { shape: [1, WIDTH], data: tokenRows(sdxl, XL_L_TOKENS, ids) },
      clip_g: { shape: [1, WIDTH], data: tokenRows(sdxl, XL_G_TOKENS, ids) },
    });
    // An SD1.x-style embedding: CLIP-L rows only.
    writeSafetensors(path.join(xlDir, 'lonly.safetensors'), { emb_params: { shape: [1, WIDTH], data: tokenRows(sdxl, XL_L_TOKENS, ids) } });
    writeSafetensors(path.join(xlDir, 'gwide.safetensors'), {
      clip_l: { shape: [1, WIDTH], data: randomRows(1, WIDTH, 6) },
      clip_g: { shape: [1, 64], data: randomRows(1, 64, 7) },
    });
    xl = await loadModel(sdxl, { threads: 2, embeddingsDir: xlDir });
  });
  after(async () => {
    await xl?.dispose();
  });

  test('clip_l / clip_g pairs: each encoder gets its own rows (context and pooled exact)', async () => {
    const viaEmb = await xl.encodePrompt('a kitty at dusk');
    const viaWord = await xl.encodePrompt('a cat at dusk');
    assert.ok(same(viaEmb.data, viaWord.data));
    assert.ok(same(viaEmb.pooled!, viaWord.pooled!));
    assert.equal(viaEmb.tokenIds[2], VOCAB);
  });

  test('an SD1.x embedding on SDXL feeds CLIP-L; bigG gets zero rows there', async () => {
    const viaEmb = await xl.encodePrompt('a lonly at dusk');
    const viaWord = await xl.encodePrompt('a cat at dusk');
    // Per token: CLIP-L's 32 features, then bigG's 32. CLIP-L's half matches "cat" exactly.
    const dim = viaEmb.dim;
    assert.equal(dim, 2 * WIDTH);
    let bigDiffers = false;
    for (let t = 0; t < viaEmb.tokens; t++) {
      assert.ok(same(viaEmb.data.subarray(t * dim, t * dim + WIDTH), viaWord.data.subarray(t * dim, t * dim + WIDTH)), `token ${t} CLIP-L`);
      if (!same(viaEmb.data.subarray(t * dim + WIDTH, (t + 1) * dim), viaWord.data.subarray(t * dim + WIDTH, (t + 1) * dim))) bigDiffers = true;
    }
    assert.ok(bigDiffers, 'bigG saw zeros, not the cat row');
  });

  test('a clip_g of the wrong width is a typed error naming it', async () => {
    await assert.rejects(xl.encodePrompt('a gwide'), (e: unknown) =>
      e instanceof ModelFormatError && e.message.includes('gwide.safetensors') && e.message.includes("'clip_g'") && /64 wide/.test(e.message));
  });

  test('generate() with an SDXL pair equals the word', async () => {
    const base = { width: 64, height: 64, steps: 1, seed: 3, sampler: 'euler' as const, returnLatents: true };
    const a = await xl.generate({ ...base, prompt: 'a kitty' });
    const b = await xl.generate({ ...base, prompt: 'a cat' });
    assert.ok(same(a.latents![0], b.latents![0]));
  });
});

describe('CLI: --embeddings-dir and --embedding', () => {
  const cli = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', path.join(packageRoot, 'lib', 'cli', 'main.ts'), 'generate', ...args], { encoding: 'utf8' });
  const common = ['-W', '64', '-H', '64', '--steps', '1', '--seed', '9', '-t', '2'];

  test('the trigger from the folder or from --embedding FILE:TRIGGER gives the word\'s image', () => {
    const out = (name: string) => path.join(work, name);
    const word = cli('-m', sd1, '-p', 'a cat', '-o', out('word.png'), ...common);
    assert.equal(word.status, 0, word.stderr);
    const dir = cli('-m', sd1, '-p', 'a kitty', '--embeddings-dir', embDir, '-o', out('dir.png'), ...common);
    assert.equal(dir.status, 0, dir.stderr);
    const one = cli('-m', sd1, '-p', 'a moggy', '--embedding', `${path.join(embDir, 'kitty.safetensors')}:moggy`, '-o', out('one.png'), ...common);
    assert.equal(one.status, 0, one.stderr);
    const pixels = (f: string) => decodePNG(fs.readFileSync(out(f))).data;
    assert.deepEqual(pixels('dir.png'), pixels('word.png'));
    assert.deepEqual(pixels('one.png'), pixels('word.png'));
  });

  test('a missing folder or a bad file is an error naming the flag or the file', () => {
    const missing = cli('-m', sd1, '-p', 'a cat', '--embeddings-dir', path.join(work, 'nowhere'), '-o', path.join(work, 'x.png'), ...common);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /--embeddings-dir .*nowhere/);
    const wide = cli('-m', sd1, '-p', 'a wide cat', '--embeddings-dir', embDir, '-o', path.join(work, 'y.png'), ...common);
    assert.notEqual(wide.status, 0);
    assert.match(wide.stderr, /wide\.safetensors.*64 wide/);
  });
});

describe('textual-inversion embeddings (SD2.x, SDXL refiner)', () => {
  test('SD2.x (OpenCLIP, pad 0): an emb_params of the word\'s rows gives the word; a clip_l / clip_g pair of other widths is refused', async () => {
    const sd2 = (await generateCheckpoint({ arch: 'sd2', format: 'safetensors', out: path.join(work, 'sd2.safetensors'), seed: 13 })).path;
    await using model = await loadModel(sd2, { threads: 2 });
    const ids = wordIds(model, 'cat');
    const file = path.join(work, 'sd2cat.safetensors');
    writeSafetensors(file, { emb_params: { shape: [1, WIDTH], data: tokenRows(sd2, 'cond_stage_model.model.token_embedding.weight', ids) } });
    const e = await model.encodePrompt('a photo of a sd2cat', { embeddings: [{ path: file }] });
    assert.ok(same(e.data, (await model.encodePrompt('a photo of a cat')).data));
    assert.equal(e.tokenIds[76], 0, 'OpenCLIP pads with 0');
    const pair = path.join(work, 'pair64.safetensors');
    writeSafetensors(pair, { clip_l: { shape: [1, 48], data: randomRows(1, 48, 8) }, clip_g: { shape: [1, 64], data: randomRows(1, 64, 9) } });
    await assert.rejects(model.encodePrompt('pair64', { embeddings: [{ path: pair }] }), (err: unknown) =>
      err instanceof ModelFormatError && /'clip_l' is 48 wide/.test(err.message) && /takes 32/.test(err.message));
  });

  test('the SDXL refiner (bigG only) takes clip_g; a file without one is refused', async () => {
    const refiner = (await generateCheckpoint({ arch: 'sdxl-refiner', format: 'safetensors', out: path.join(work, 'refiner.safetensors'), seed: 14,
      tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 } })).path;
    await using model = await loadModel(refiner, { threads: 2 });
    const ids = wordIds(model, 'cat');
    const file = path.join(work, 'refcat.safetensors');
    writeSafetensors(file, {
      clip_l: { shape: [1, WIDTH], data: randomRows(1, WIDTH, 10) },
      clip_g: { shape: [1, WIDTH], data: tokenRows(refiner, 'conditioner.embedders.0.model.token_embedding.weight', ids) },
    });
    const e = await model.encodePrompt('a refcat', { embeddings: [{ path: file }] });
    const word = await model.encodePrompt('a cat');
    assert.ok(same(e.data, word.data));
    assert.ok(same(e.pooled!, word.pooled!));
    const lonly = path.join(work, 'lonlyref.safetensors');
    writeSafetensors(lonly, { clip_l: { shape: [1, WIDTH], data: randomRows(1, WIDTH, 11) } });
    await assert.rejects(model.encodePrompt('a lonlyref', { embeddings: [{ path: lonly }] }), (err: unknown) =>
      err instanceof ModelFormatError && /no 'clip_g' tensor/.test(err.message));
  });
});
