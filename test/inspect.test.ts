// inspectModel on generated tiny checkpoints of every architecture in every format, and on
// broken files: each failure is a typed error naming the file, never a crash.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  InvalidArgumentError,
  IoError,
  ModelFormatError,
  SdError,
  UnsupportedModelError,
  inspectModel,
} from '../lib/index.ts';
import { crc32 } from '../lib/image.ts';
import { ARCHES, generateCheckpoint, layoutOf, modelConfig, tensorList, type Arch, type Format } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-inspect-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const expectedArch: Record<Arch, string> = {
  sd1: 'sd1',
  inpaint: 'sd1',
  ip2p: 'sd1',
  tiny: 'sd1',
  sd2: 'sd2',
  sdxl: 'sdxl',
  'sdxl-refiner': 'sdxl-refiner',
};
const expectedVariant: Record<Arch, string> = {
  sd1: '',
  inpaint: 'inpaint',
  ip2p: 'instruct-pix2pix',
  tiny: 'tiny',
  sd2: '',
  sdxl: '',
  'sdxl-refiner': '',
};

describe('inspectModel on tiny generated checkpoints', () => {
  for (const arch of ARCHES) {
    for (const format of ['safetensors', 'ckpt', 'gguf', 'diffusers'] as Format[]) {
      test(`${arch} as ${format}`, async () => {
        const out = path.join(work, `${arch}-${format}${format === 'diffusers' ? '' : `.${format}`}`);
        const made = await generateCheckpoint({ arch, size: 'tiny', format, out, seed: 7 });
        const info = await inspectModel(made.path);
        assert.equal(info.format, format === 'ckpt' ? 'torch' : format);
        assert.equal(info.architecture, expectedArch[arch]);
        // A .ckpt has no metadata, so a tiny model's family and variant come from its structure:
        // fewer levels than the standard UNet reads as a distilled "small" one.
        const structural = format === 'ckpt' && expectedVariant[arch] === '';
        assert.equal(info.hyperparameters.unet?.variant ?? '', structural ? 'small' : expectedVariant[arch]);
        // Split q/k/v views count once, so counts equal what was written whatever the layout,
        // less what the name table deliberately ignores (OpenCLIP's logit_scale scalar).
        const ignored = tensorList(arch, 'tiny', layoutOf(format)).filter((t) => t.name.endsWith('logit_scale'));
        const ignoredIn = (c: string) => ignored.filter((t) => t.component === c).length;
        assert.deepEqual(
          { unet: info.parameters.unet, vae: info.parameters.vae, te: info.parameters.textEncoder, te2: info.parameters.textEncoder2 },
          {
            unet: made.parameters.unet,
            vae: made.parameters.vae,
            te: made.parameters.textEncoder - ignoredIn('text_encoder'),
            te2: made.parameters.textEncoder2 - ignoredIn('text_encoder_2'),
          },
        );
        const cfg = modelConfig(arch, 'tiny');
        const u = info.hyperparameters.unet!;
        assert.equal(u.modelChannels, cfg.unet.modelChannels);
        assert.deepEqual(u.channelMult, cfg.unet.channelMult);
        assert.equal(u.contextDim, cfg.unet.contextDim);
        assert.equal(u.inChannels, cfg.unet.inChannels);
        assert.equal(u.hasMiddleBlock, cfg.unet.middleDepth !== null);
        assert.equal(u.admInChannels, cfg.unet.admInChannels);
        assert.equal(info.hyperparameters.vae?.scaleFactor.toFixed(5), cfg.vae.scaleFactor.toFixed(5));
        assert.equal(info.unknownTensors.length, 0, `unknown: ${info.unknownTensors.slice(0, 5)}`);
      });
    }
  }

  test('standalone VAE and text encoder files', async () => {
    const vae = await generateCheckpoint({ arch: 'sd1', format: 'vae', out: path.join(work, 'vae.safetensors') });
    const v = await inspectModel(vae.path);
    assert.deepEqual(v.components, ['vae']);
    assert.equal(v.architecture, 'unknown');
    assert.equal(v.parameters.vae, vae.parameters.vae);
    const clip = await generateCheckpoint({ arch: 'sd1', format: 'clip', out: path.join(work, 'clip.safetensors') });
    const c = await inspectModel(clip.path);
    assert.deepEqual(c.components, ['textEncoder']);
    assert.equal(c.parameters.textEncoder, clip.parameters.textEncoder);
  });

  test('f32 and bf16 stores and quantized GGUF report their types', async () => {
    const bf = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', dtype: 'bf16', out: path.join(work, 'bf16.safetensors') });
    assert.deepEqual(Object.keys((await inspectModel(bf.path)).dtypes), ['bf16']);
    const q = await generateCheckpoint({ arch: 'sd1', format: 'gguf', quant: 'q8_0', out: path.join(work, 'q8.gguf') });
    const qi = await inspectModel(q.path);
    assert.ok(qi.dtypes.q8_0 > 0, JSON.stringify(qi.dtypes));
    assert.equal(qi.parameters.unet, q.parameters.unet);
  });
});

// ---------------------------------------------------------------- broken files

function safetensors(header: unknown, data: Buffer, rawHeader?: string): Buffer {
  let h = rawHeader ?? JSON.stringify(header);
  h += ' '.repeat((8 - (h.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(h)));
  return Buffer.concat([len, Buffer.from(h), data]);
}

async function rejectsWith(file: string, Ctor: new (...a: never[]) => SdError, pattern: RegExp): Promise<void> {
  await assert.rejects(inspectModel(file), (e: unknown) => {
    assert.ok(e instanceof Ctor, `expected ${Ctor.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    assert.match((e as SdError).message, pattern);
    assert.ok((e as SdError).message.includes(path.basename(file)) || (e as SdError).file?.includes(path.basename(file)), 'names the file');
    assert.match((e as Error).stack ?? '', /inspect\.test\.ts/, "keeps the caller's stack");
    return true;
  });
}

describe('inspectModel on broken input', () => {
  let good: Buffer;
  before(async () => {
    const made = await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'good.safetensors') });
    good = fs.readFileSync(made.path);
  });
  const file = (name: string, bytes: Buffer) => {
    const p = path.join(work, name);
    fs.writeFileSync(p, bytes);
    return p;
  };

  test('a truncated file', async () => {
    await rejectsWith(file('trunc.safetensors', good.subarray(0, Math.floor(good.length / 2))), ModelFormatError, /past|trunc|end/i);
    await rejectsWith(file('trunc-header.safetensors', good.subarray(0, 20)), ModelFormatError, /header|trunc|short|past/i);
    await rejectsWith(file('empty.safetensors', Buffer.alloc(0)), ModelFormatError, /.+/);
  });
  test('offsets past the end', async () => {
    const f = file('offsets.safetensors', safetensors({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, Buffer.alloc(8)));
    await rejectsWith(f, ModelFormatError, /past|end|bounds/i);
  });
  test('a bad JSON header', async () => {
    await rejectsWith(file('json.safetensors', safetensors(null, Buffer.alloc(0), '{"w": {"dtype": "F32", "shape": [1], ')), ModelFormatError, /json/i);
  });
  test('a shape that disagrees with its byte size', async () => {
    const f = file('shape.safetensors', safetensors({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, Buffer.alloc(16)));
    await rejectsWith(f, ModelFormatError, /shape|bytes|size/i);
  });
  test('an unknown dtype', async () => {
    const f = file('dtype.safetensors', safetensors({ w: { dtype: 'F7', shape: [1], data_offsets: [0, 1] } }, Buffer.alloc(8)));
    await assert.rejects(inspectModel(f), (e: unknown) => e instanceof ModelFormatError || e instanceof UnsupportedModelError);
  });
  test('a pickle that asks for os.system', async () => {
    // A zip with archive/data.pkl = PROTO 2, GLOBAL 'os system', 'echo pwned', TUPLE1, REDUCE, STOP.
    const pkl = Buffer.concat([
      Buffer.from([0x80, 0x02]),
      Buffer.from('cos\nsystem\n', 'latin1'),
      Buffer.from([0x58]), // BINUNICODE
      (() => { const b = Buffer.alloc(4); b.writeUInt32LE(10); return b; })(),
      Buffer.from('echo pwned', 'latin1'),
      Buffer.from([0x85, 0x52, 0x2e]),
    ]);
    const f = file('evil.ckpt', storedZip([{ name: 'archive/data.pkl', data: pkl }]));
    await rejectsWith(f, ModelFormatError, /os\.system|global/);
  });
  test('an empty folder', async () => {
    const dir = path.join(work, 'empty-folder');
    fs.mkdirSync(dir, { recursive: true });
    await rejectsWith(dir, ModelFormatError, /.+/);
  });
  test('a file that is not a model', async () => {
    await rejectsWith(file('text.safetensors', Buffer.from('hello world, this is not a model at all')), ModelFormatError, /.+/);
    const llm = file('llm.safetensors', safetensors({ 'blk.0.attn_q.weight': { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, Buffer.alloc(8)));
    await rejectsWith(llm, UnsupportedModelError, /language model|Stable Diffusion/i);
  });
  test('a missing file is an IoError; a bad argument an InvalidArgumentError', async () => {
    await assert.rejects(inspectModel(path.join(work, 'nope.safetensors')), IoError);
    await assert.rejects(inspectModel('' as string), InvalidArgumentError);
    await assert.rejects(inspectModel(42 as unknown as string), InvalidArgumentError);
  });
});

/** A minimal STORED zip (no compression), enough for the pickle test. */
function storedZip(entries: Array<{ name: string; data: Buffer }>): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const e of entries) {
    const name = Buffer.from(e.name);
    const crc = crc32(e.data);
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(20, 4);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(e.data.length, 18);
    lh.writeUInt32LE(e.data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(20, 4);
    ch.writeUInt16LE(20, 6);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(e.data.length, 20);
    ch.writeUInt32LE(e.data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt32LE(offset, 42);
    locals.push(lh, name, e.data);
    centrals.push(ch, name);
    offset += 30 + name.length + e.data.length;
  }
  const cd = Buffer.concat(centrals);
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(entries.length, 8);
  eocd.writeUInt16LE(entries.length, 10);
  eocd.writeUInt32LE(cd.length, 12);
  eocd.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, eocd]);
}
