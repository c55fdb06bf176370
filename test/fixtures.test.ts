// Checks the checkpoint fixture generator (test/fixtures/) by reading every file it writes back
// with small independent readers (safetensors header, GGUF header, zip central directory with
// CRCs, diffusers folders), and by python3 where it is available (safetensors header, zipfile +
// pickle for .ckpt, the SD1.5 reference script's tensor list).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as zlib from 'node:zlib';

import {
  ARCHES, FORMATS, fixturePath, generateCheckpoint, layoutOf, modelConfig, tensorEntries, tensorList,
  type Arch, type Format,
} from './fixtures/generate.js';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits, initTensor, numel } from './fixtures/random.js';
import { ggmlNe, quantizeQ4_0, quantizeQ8_0, safetensorsHeader, writeCkpt, ValueSource } from './fixtures/writers.js';
import { referenceEnabled, sharedDir } from './helpers/reference.ts';

const HAVE_PYTHON = spawnSync('python3', ['-c', 'import numpy'], { stdio: 'ignore' }).status === 0;
// The reference checkpoint script beside the project (../shared), read only under SDNODE_REFERENCE=1.
const SD15_SCRIPT = referenceEnabled ? join(sharedDir, 'tools', 'make-sd15-random.py') : '';

let tmp = '';
before(() => { tmp = mkdtempSync(join(tmpdir(), 'sdnode-fixtures-test-')); });
after(() => { rmSync(tmp, { recursive: true, force: true }); });

// ---- small readers ----

interface StTensor { name: string; dtype: string; shape: number[]; begin: number; end: number }
function readSafetensors(path: string) {
  const buf = readFileSync(path);
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as Record<string, any>;
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  delete header.__metadata__;
  const tensors: StTensor[] = Object.entries(header).map(([name, v]) => ({ name, dtype: v.dtype, shape: v.shape, begin: v.data_offsets[0], end: v.data_offsets[1] }));
  const dataStart = 8 + len;
  return { buf, metadata, tensors, dataStart, headerLen: len };
}

function floatsOf(buf: Buffer, dataStart: number, t: StTensor): Float32Array {
  const n = numel(t.shape);
  const out = new Float32Array(n);
  const at = dataStart + t.begin;
  for (let i = 0; i < n; i++) {
    out[i] = t.dtype === 'F32' ? buf.readFloatLE(at + 4 * i) : t.dtype === 'F16' ? f16BitsToF32(buf.readUInt16LE(at + 2 * i)) : bf16BitsToF32(buf.readUInt16LE(at + 2 * i));
  }
  return out;
}

interface GgufTensor { name: string; ne: number[]; type: number; offset: number }
function readGguf(path: string) {
  const buf = readFileSync(path);
  let p = 0;
  const u32 = () => { const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { const v = Number(buf.readBigUInt64LE(p)); p += 8; return v; };
  const str = () => { const n = u64(); const s = buf.subarray(p, p + n).toString('utf8'); p += n; return s; };
  assert.equal(buf.subarray(0, 4).toString('ascii'), 'GGUF');
  p = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const kv: Record<string, unknown> = {};
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    if (type === 8) kv[key] = str();
    else if (type === 5) { kv[key] = buf.readInt32LE(p); p += 4; }
    else if (type === 6) { kv[key] = buf.readFloatLE(p); p += 4; }
    else if (type === 7) { kv[key] = buf[p] !== 0; p += 1; }
    else throw new Error(`gguf kv type ${type} not expected in fixtures`);
  }
  const tensors: GgufTensor[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(u64());
    tensors.push({ name, ne, type: u32(), offset: u64() });
  }
  const dataStart = Math.ceil(p / 32) * 32;
  return { buf, version, kv, tensors, dataStart };
}

const GGML_SIZE: Record<number, [block: number, bytes: number]> = { 0: [1, 4], 1: [1, 2], 30: [1, 2], 8: [32, 34], 2: [32, 18] };

interface ZipEntry { name: string; crc: number; size: number; dataOffset: number; localHeader: number }
// Walks the central directory (zip64 aware), checks each local header against it and each CRC.
function readZip(path: string): ZipEntry[] {
  const buf = readFileSync(path);
  const eocd = buf.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  assert.ok(eocd >= 0, 'end of central directory record');
  let count = buf.readUInt16LE(eocd + 10);
  let cdOffset = buf.readUInt32LE(eocd + 16);
  if (cdOffset === 0xffffffff || count === 0xffff) {
    assert.equal(buf.readUInt32LE(eocd - 20), 0x07064b50, 'zip64 locator');
    const z = Number(buf.readBigUInt64LE(eocd - 20 + 8));
    assert.equal(buf.readUInt32LE(z), 0x06064b50, 'zip64 end record');
    count = Number(buf.readBigUInt64LE(z + 32));
    cdOffset = Number(buf.readBigUInt64LE(z + 48));
  }
  const entries: ZipEntry[] = [];
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    assert.equal(buf.readUInt32LE(p), 0x02014b50, 'central header signature');
    assert.equal(buf.readUInt16LE(p + 10), 0, 'stored');
    const crc = buf.readUInt32LE(p + 16);
    let size = buf.readUInt32LE(p + 24);
    const nameLen = buf.readUInt16LE(p + 28);
    const extraLen = buf.readUInt16LE(p + 30);
    const commentLen = buf.readUInt16LE(p + 32);
    let local = buf.readUInt32LE(p + 42);
    const name = buf.subarray(p + 46, p + 46 + nameLen).toString('utf8');
    let q = p + 46 + nameLen;
    while (q < p + 46 + nameLen + extraLen) {
      const id = buf.readUInt16LE(q);
      const len = buf.readUInt16LE(q + 2);
      if (id === 1) {
        let r = q + 4;
        if (size === 0xffffffff) { size = Number(buf.readBigUInt64LE(r)); r += 16; }
        if (local === 0xffffffff) { local = Number(buf.readBigUInt64LE(r)); r += 8; }
      }
      q += 4 + len;
    }
    assert.equal(buf.readUInt32LE(local), 0x04034b50, `local header of ${name}`);
    assert.equal(buf.readUInt32LE(local + 14), crc, `local crc of ${name}`);
    const localName = buf.subarray(local + 30, local + 30 + buf.readUInt16LE(local + 26)).toString('utf8');
    assert.equal(localName, name);
    const dataOffset = local + 30 + buf.readUInt16LE(local + 26) + buf.readUInt16LE(local + 28);
    const data = buf.subarray(dataOffset, dataOffset + size);
    assert.equal(data.length, size, `data of ${name} inside the file`);
    assert.equal(crc32(data), crc, `crc of ${name}`);
    entries.push({ name, crc, size, dataOffset, localHeader: local });
    p += 46 + nameLen + extraLen + commentLen;
  }
  return entries;
}

function crc32(data: Uint8Array): number {
  const native = (zlib as { crc32?: (d: Uint8Array) => number }).crc32;
  if (native) return native(data) >>> 0;
  let c = 0xffffffff;
  for (const b of data) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

const PY_CKPT = String.raw`
import sys, zipfile, pickle, collections, json, struct
def rebuild(storage, offset, size, stride, requires_grad, hooks):
    return {'storage': storage, 'offset': offset, 'size': list(size), 'stride': list(stride), 'grad': requires_grad, 'hooks': type(hooks).__name__}
class U(pickle.Unpickler):
    def find_class(self, mod, name):
        if (mod, name) == ('torch._utils', '_rebuild_tensor_v2'): return rebuild
        if (mod, name) == ('collections', 'OrderedDict'): return collections.OrderedDict
        if mod == 'torch' and name in ('FloatStorage', 'HalfStorage', 'BFloat16Storage'): return name
        raise pickle.UnpicklingError('unexpected global %s.%s' % (mod, name))
    def persistent_load(self, pid):
        assert pid[0] == 'storage' and pid[3] == 'cpu', pid
        return pid[1:3] + (pid[4],)
esize = {'FloatStorage': 4, 'HalfStorage': 2, 'BFloat16Storage': 2}
result = []
for path in sys.argv[1:]:
    z = zipfile.ZipFile(path)
    assert z.testzip() is None
    root = z.namelist()[0].split('/')[0]
    obj = U(z.open(root + '/data.pkl')).load()
    assert list(obj.keys()) == ['state_dict'] and type(obj['state_dict']) is collections.OrderedDict
    raw = open(path, 'rb')
    tensors = []
    for name, t in obj['state_dict'].items():
        cls, key, n = t['storage']
        info = z.getinfo('%s/data/%s' % (root, key))
        assert info.file_size == n * esize[cls], name
        raw.seek(info.header_offset)
        h = raw.read(30)
        data_at = info.header_offset + 30 + struct.unpack('<H', h[26:28])[0] + struct.unpack('<H', h[28:30])[0]
        assert data_at % 64 == 0, (name, data_at)
        assert t['offset'] == 0 and t['grad'] is False and t['hooks'] == 'OrderedDict'
        tensors.append([name, t['size'], t['stride'], cls])
    result.append({'version': z.read(root + '/version').decode().strip(), 'tensors': tensors})
print(json.dumps(result))
`;

function python(script: string, args: string[]): string {
  return execFileSync('python3', ['-c', script, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
}

// ---- checks per format ----

const EXPECTED_DTYPE = { f32: 'F32', f16: 'F16', bf16: 'BF16' } as const;

function checkSafetensorsFile(path: string, expected: { name: string; shape: number[] }[], dtype: keyof typeof EXPECTED_DTYPE) {
  const st = readSafetensors(path);
  assert.equal(st.dataStart % 8, 0, 'data section 8-byte aligned');
  assert.deepEqual(st.tensors.map((t) => [t.name, t.shape]), expected.map((e) => [e.name, e.shape]));
  let at = 0;
  for (const t of st.tensors) {
    assert.equal(t.dtype, EXPECTED_DTYPE[dtype]);
    assert.equal(t.begin, at, `${t.name} contiguous`);
    assert.equal(t.end - t.begin, numel(t.shape) * (dtype === 'f32' ? 4 : 2), `${t.name} byte size`);
    at = t.end;
  }
  assert.equal(st.buf.length, st.dataStart + at, 'file ends after the last tensor');
  return st;
}

function checkGgufFile(path: string, expected: { name: string; shape: number[] }[], dtype: 'f32' | 'f16' | 'bf16', quant?: 'q8_0' | 'q4_0') {
  const g = readGguf(path);
  assert.equal(g.version, 3);
  assert.deepEqual(g.tensors.map((t) => t.name), expected.map((e) => e.name));
  const dtypeId = { f32: 0, f16: 1, bf16: 30 }[dtype];
  let end = 0;
  g.tensors.forEach((t, i) => {
    const shape = expected[i]!.shape;
    assert.deepEqual(t.ne, ggmlNe(shape), `${t.name} ne`);
    const quantized = quant !== undefined && shape.length === 2 && shape[1]! % 32 === 0;
    assert.equal(t.type, quantized ? { q8_0: 8, q4_0: 2 }[quant!] : dtypeId, `${t.name} type`);
    assert.equal(t.offset % 32, 0, `${t.name} aligned`);
    assert.ok(t.offset >= end, `${t.name} does not overlap`);
    const [block, bytes] = GGML_SIZE[t.type]!;
    end = t.offset + (numel(shape) / block) * bytes;
  });
  assert.equal(g.buf.length, g.dataStart + Math.ceil(end / 32) * 32, 'file ends after the last tensor (padded)');
  return g;
}

function checkCkptFile(path: string, expected: { name: string; shape: number[] }[], dtype: 'f32' | 'f16' | 'bf16') {
  const entries = readZip(path);
  const names = entries.map((e) => e.name);
  assert.equal(names[0], 'archive/data.pkl');
  assert.ok(names.includes('archive/version'));
  const esize = dtype === 'f32' ? 4 : 2;
  expected.forEach((e, i) => {
    const entry = entries.find((z) => z.name === `archive/data/${i}`);
    assert.ok(entry, `storage ${i} for ${e.name}`);
    assert.equal(entry.size, numel(e.shape) * esize, `${e.name} storage bytes`);
    assert.equal(entry.dataOffset % 64, 0, `${e.name} data 64-byte aligned`);
  });
  return entries;
}

function checkDiffusersFolder(dir: string, expected: { name: string; shape: number[] }[], dtype: 'f32' | 'f16' | 'bf16') {
  const files = readdirSync(dir, { recursive: true }).map(String).sort();
  const components = [...new Set(expected.map((e) => e.name.split('/')[0]!))];
  for (const c of components) {
    const file = c.startsWith('text_encoder') ? 'model.safetensors' : 'diffusion_pytorch_model.safetensors';
    assert.ok(files.includes(join(c, file)), `${c}/${file}`);
    assert.ok(files.includes(join(c, 'config.json')), `${c}/config.json`);
    JSON.parse(readFileSync(join(dir, c, 'config.json'), 'utf8'));
    const st = checkSafetensorsFile(join(dir, c, file), expected.filter((e) => e.name.startsWith(`${c}/`)).map((e) => ({ ...e, name: e.name.slice(c.length + 1) })), dtype);
    assert.equal(st.metadata.format, 'pt');
  }
  const index = JSON.parse(readFileSync(join(dir, 'model_index.json'), 'utf8'));
  for (const c of components) assert.ok(Array.isArray(index[c]) && index[c][0] !== null, `model_index lists ${c}`);
  assert.ok(files.includes(join('scheduler', 'scheduler_config.json')));
}

function extensionFor(format: Format): string {
  return format === 'diffusers' ? '' : format === 'ckpt' ? '.ckpt' : format === 'gguf' ? '.gguf' : '.safetensors';
}

// ---- tests ----

describe('every arch x format at tiny size reads back', () => {
  const ckpts: { path: string; expected: { name: string; shape: number[] }[] }[] = [];
  for (const arch of ARCHES) {
    for (const format of FORMATS) {
      if (format === 'clip2' && arch !== 'sdxl') continue;
      test(`${arch} ${format}`, async () => {
        const dtype = format === 'vae' ? 'bf16' : format === 'clip' ? 'f32' : 'f16';
        const out = join(tmp, `${arch}-${format}${extensionFor(format)}`);
        const t0 = performance.now();
        const r = await generateCheckpoint({ arch, size: 'tiny', format, dtype, seed: 7, out, quant: format === 'gguf' ? 'q8_0' : undefined });
        const ms = performance.now() - t0;
        assert.ok(ms < 2000, `tiny ${arch} ${format} took ${ms.toFixed(0)} ms`);
        const expected = tensorList(arch, 'tiny', layoutOf(format));
        assert.equal(r.tensors, expected.length);
        if (format === 'diffusers') {
          checkDiffusersFolder(out, expected, dtype);
        } else {
          assert.ok(statSync(out).size < 16 << 20, 'tiny files stay small');
          if (format === 'gguf') {
            const g = checkGgufFile(out, expected, dtype, 'q8_0');
            assert.equal(g.kv['sdnode.arch'], arch);
          } else if (format === 'ckpt') {
            checkCkptFile(out, expected, dtype);
            ckpts.push({ path: out, expected });
          } else {
            const st = checkSafetensorsFile(out, expected, dtype);
            assert.equal(st.metadata['sdnode.arch'], arch);
          }
        }
      });
    }
  }
  test('python: zipfile CRCs, torch-style pickle, 64-byte alignment of the .ckpt files', { skip: !HAVE_PYTHON && 'python3 not available' }, () => {
    const result = JSON.parse(python(PY_CKPT, ckpts.map((c) => c.path))) as { version: string; tensors: [string, number[], number[], string][] }[];
    assert.equal(result.length, ckpts.length);
    result.forEach((r, i) => {
      assert.equal(r.version, '3');
      assert.deepEqual(r.tensors.map(([n, s]) => [n, s]), ckpts[i]!.expected.map((e) => [e.name, e.shape]));
      for (const [, size, stride, cls] of r.tensors) {
        assert.equal(cls, 'HalfStorage');
        assert.deepEqual(stride, size.map((_, d) => numel(size.slice(d + 1))));
      }
    });
  });
});

describe('full-size tensor lists', () => {
  const counts = (arch: Arch, layout: 'ldm' | 'diffusers' = 'ldm') => {
    const c: Record<string, number> = {};
    for (const e of tensorList(arch, 'full', layout)) c[e.component] = (c[e.component] ?? 0) + numel(e.shape);
    return c;
  };

  test('sd1 matches the published SD1.5 parameter counts', () => {
    assert.deepEqual(counts('sd1'), { text_encoder: 123_060_480, unet: 859_520_964, vae: 83_653_863 });
  });

  test('sd1 names and shapes equal make-sd15-random.py', { skip: !(HAVE_PYTHON && SD15_SCRIPT && statSafe(SD15_SCRIPT)) && 'opt-in (SDNODE_REFERENCE=1), needs python3 and ../shared/tools' }, () => {
    const script = `import importlib.util, json, sys
spec = importlib.util.spec_from_file_location('m', sys.argv[1]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
print(json.dumps([[n, list(s)] for n, s in m.clip_tensors() + m.unet_tensors() + m.vae_tensors()]))`;
    const py = JSON.parse(python(script, [SD15_SCRIPT]));
    assert.deepEqual(tensorList('sd1', 'full', 'ldm').map((e) => [e.name, e.shape]), py);
  });

  test('sd1 full f16 safetensors header is byte-identical to the script\'s (without writing 2 GB)', { skip: !(HAVE_PYTHON && SD15_SCRIPT && statSafe(SD15_SCRIPT)) && 'opt-in (SDNODE_REFERENCE=1), needs python3 and ../shared/tools' }, () => {
    // the script's own header code, run on its own tensor list
    const script = `import importlib.util, json, struct, sys
spec = importlib.util.spec_from_file_location('m', sys.argv[1]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
header, off = {}, 0
for name, shape in m.clip_tensors() + m.unet_tensors() + m.vae_tensors():
    nb = 1
    for d in shape: nb *= d
    nb *= 2
    header[name] = {'dtype': 'F16', 'shape': list(shape), 'data_offsets': [off, off + nb]}
    off += nb
hb = json.dumps(header, separators=(',', ':')).encode()
hb += b' ' * ((8 - len(hb) % 8) % 8)
sys.stdout.write((struct.pack('<Q', len(hb)) + hb).hex())`;
    const py = Buffer.from(python(script, [SD15_SCRIPT]), 'hex');
    const ours = safetensorsHeader(tensorEntries(modelConfig('sd1', 'full'), 'ldm'), 'f16');
    assert.ok(ours.equals(py), 'headers differ');
  });

  test('other archs match published figures', () => {
    // UNets: SD2 865.9M, SDXL 2.567B, BK-SDM-Tiny 323.4M; text encoders as HF counts them
    assert.equal(counts('sd2').unet, 865_910_724);
    assert.equal(counts('sd2', 'diffusers').text_encoder, 340_387_840);  // 23-layer CLIPTextModel
    assert.equal(counts('sdxl').unet, 2_567_463_684);
    assert.equal(counts('sdxl', 'diffusers').text_encoder, 123_060_480);
    assert.equal(counts('sdxl', 'diffusers').text_encoder_2, 694_659_840);  // CLIPTextModelWithProjection bigG
    assert.equal(counts('sdxl').vae, 83_653_863);
    assert.equal(counts('tiny').unet, 323_384_964);
    assert.equal(counts('inpaint').unet, 859_520_964 + 320 * 5 * 9);
    assert.equal(counts('ip2p').unet, 859_520_964 + 320 * 4 * 9);
    assert.equal(counts('sdxl-refiner').text_encoder_2, 694_659_841);  // + logit_scale in the sgm file
  });

  test('key tensors have the shapes of the real files', () => {
    const find = (arch: Arch, layout: 'ldm' | 'sdcpp' | 'diffusers', name: string) => tensorList(arch, 'full', layout).find((e) => e.name === name)?.shape;
    assert.deepEqual(find('sd2', 'ldm', 'cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight'), [3072, 1024]);
    assert.deepEqual(find('sd2', 'ldm', 'model.diffusion_model.input_blocks.1.1.proj_in.weight'), [320, 320]);
    assert.deepEqual(find('sd2', 'sdcpp', 'model.diffusion_model.input_blocks.1.1.proj_in.weight'), [320, 320, 1, 1]);
    assert.deepEqual(find('sd2', 'sdcpp', 'cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight'), [1024, 1024]);
    assert.deepEqual(find('sdxl', 'ldm', 'model.diffusion_model.label_emb.0.0.weight'), [1280, 2816]);
    assert.deepEqual(find('sdxl', 'ldm', 'model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight'), [1280, 2048]);
    assert.deepEqual(find('sdxl', 'ldm', 'model.diffusion_model.output_blocks.2.2.conv.weight'), [1280, 1280, 3, 3]);
    assert.deepEqual(find('sdxl', 'ldm', 'conditioner.embedders.1.model.text_projection'), [1280, 1280]);
    assert.deepEqual(find('sdxl', 'sdcpp', 'cond_stage_model.1.transformer.text_model.text_projection'), [1280, 1280]);
    assert.deepEqual(find('sdxl', 'diffusers', 'unet/down_blocks.2.attentions.1.transformer_blocks.9.attn2.to_k.weight'), [1280, 2048]);
    assert.deepEqual(find('sdxl-refiner', 'ldm', 'model.diffusion_model.label_emb.0.0.weight'), [1536, 2560]);
    assert.deepEqual(find('sdxl-refiner', 'ldm', 'conditioner.embedders.0.model.transformer.resblocks.31.mlp.c_fc.weight'), [5120, 1280]);
    assert.deepEqual(find('sdxl-refiner', 'ldm', 'model.diffusion_model.middle_block.1.transformer_blocks.3.attn2.to_k.weight'), [1536, 1280]);
    assert.deepEqual(find('sd1', 'diffusers', 'vae/decoder.up_blocks.0.resnets.0.conv1.weight'), [512, 512, 3, 3]);
    assert.deepEqual(find('sd1', 'diffusers', 'vae/encoder.mid_block.attentions.0.to_q.weight'), [512, 512]);
    assert.deepEqual(find('sd1', 'diffusers', 'unet/up_blocks.3.attentions.2.proj_out.weight'), [320, 320, 1, 1]);
    assert.deepEqual(find('sd1', 'diffusers', 'unet/up_blocks.0.upsamplers.0.conv.weight'), [1280, 1280, 3, 3]);
    // BK-SDM-Tiny keeps the parent's block numbers; the upsamplers sit where sd.cpp expects them
    const tiny = new Set(tensorList('tiny', 'full', 'ldm').map((e) => e.name));
    for (const n of ['input_blocks.1.1.norm.weight', 'input_blocks.3.0.op.weight', 'input_blocks.7.0.skip_connection.weight',
      'output_blocks.2.1.conv.weight', 'output_blocks.5.2.conv.weight', 'output_blocks.7.1.proj_out.weight']) {
      assert.ok(tiny.has(`model.diffusion_model.${n}`), n);
    }
    for (const n of ['input_blocks.2.0.in_layers.0.weight', 'middle_block.0.in_layers.0.weight', 'output_blocks.8.0.in_layers.0.weight']) {
      assert.ok(!tiny.has(`model.diffusion_model.${n}`), n);
    }
  });
});

describe('values', () => {
  test('seeded, layout independent, finite and non-degenerate', async () => {
    const out = join(tmp, 'values.safetensors');
    await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', dtype: 'f32', seed: 99, out });
    const st = readSafetensors(out);
    for (const t of st.tensors) {
      const v = floatsOf(st.buf, st.dataStart, t);
      let sum = 0;
      let sq = 0;
      for (const x of v) { assert.ok(Number.isFinite(x), t.name); sum += x; sq += x * x; }
      const mean = sum / v.length;
      const std = Math.sqrt(sq / v.length - mean * mean);
      if (v.length < 256) continue;
      if (t.shape.length === 1 && /norm|\.ln_|in_layers\.0|out_layers\.0|out\.0\.weight$/.test(t.name) && t.name.endsWith('.weight')) {
        assert.ok(Math.abs(mean - 1) < 0.02, `${t.name} mean ${mean}`);
      } else if (t.shape.length >= 2 && !t.name.includes('embedding')) {
        const expected = 1 / Math.sqrt(numel(t.shape.slice(1)));
        assert.ok(Math.abs(std / expected - 1) < 0.15, `${t.name} std ${std} vs ${expected}`);
      }
    }
    // same seed and name -> same values; other seed -> other values
    const name = 'model.diffusion_model.input_blocks.0.0.weight';
    const t = st.tensors.find((x) => x.name === name)!;
    assert.deepEqual(floatsOf(st.buf, st.dataStart, t), initTensor(99, name, t.shape));
    assert.notDeepEqual(initTensor(98, name, t.shape), initTensor(99, name, t.shape));
  });

  test('diffusers and sdcpp hold the same numbers as the LDM file', async () => {
    const ldm = readSafetensors((await generateCheckpoint({ arch: 'sdxl', format: 'safetensors', dtype: 'f32', out: join(tmp, 'x-ldm.safetensors') })).path);
    const dir = (await generateCheckpoint({ arch: 'sdxl', format: 'diffusers', dtype: 'f32', out: join(tmp, 'x-diffusers') })).path;
    const te2 = readSafetensors(join(dir, 'text_encoder_2', 'model.safetensors'));
    const vae = readSafetensors(join(dir, 'vae', 'diffusion_pytorch_model.safetensors'));
    const get = (f: ReturnType<typeof readSafetensors>, n: string) => floatsOf(f.buf, f.dataStart, f.tensors.find((t) => t.name === n)!);

    const fused = get(ldm, 'conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight');
    const w = 32;
    ['q', 'k', 'v'].forEach((n, i) => {
      assert.deepEqual(get(te2, `text_model.encoder.layers.1.self_attn.${n}_proj.weight`), fused.subarray(i * w * w, (i + 1) * w * w));
    });
    const proj = get(ldm, 'conditioner.embedders.1.model.text_projection');   // [w, p]
    const hf = get(te2, 'text_projection.weight');                             // [p, w]
    for (let i = 0; i < w; i++) for (let j = 0; j < w; j++) assert.equal(hf[j * w + i], proj[i * w + j]);
    assert.deepEqual(get(vae, 'decoder.mid_block.attentions.0.to_out.0.weight'), get(ldm, 'first_stage_model.decoder.mid.attn_1.proj_out.weight'));
    assert.deepEqual(get(vae, 'decoder.up_blocks.0.resnets.2.conv2.weight'), get(ldm, 'first_stage_model.decoder.up.1.block.2.conv2.weight'));
  });

  test('f16 / bf16 round to nearest even', () => {
    for (const [x, h] of [[1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [65520, 0x7c00], [2 ** -24, 0x0001], [2 ** -25, 0], [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [0.1, 0x2e66]] as const) {
      assert.equal(f32ToF16Bits(x), h, `f16(${x})`);
    }
    assert.equal(f32ToBf16Bits(1), 0x3f80);
    assert.equal(f32ToBf16Bits(1 + 2 ** -8), 0x3f80);  // tie -> even
    assert.equal(f32ToBf16Bits(1 + 3 * 2 ** -8), 0x3f82);
    for (const x of [0.3, -7.25, 1e-3]) {
      assert.ok(Math.abs(f16BitsToF32(f32ToF16Bits(x)) - x) <= Math.abs(x) * 2 ** -11);
      assert.ok(Math.abs(bf16BitsToF32(f32ToBf16Bits(x)) - x) <= Math.abs(x) * 2 ** -8);
    }
  });

  test('q8_0 and q4_0 blocks dequantize close to the values', async () => {
    const x = initTensor(5, 'model.diffusion_model.time_embed.0.weight', [64, 64]);
    const q8 = quantizeQ8_0(x);
    const q4 = quantizeQ4_0(x);
    assert.equal(q8.length, (x.length / 32) * 34);
    assert.equal(q4.length, (x.length / 32) * 18);
    for (let b = 0; b < x.length / 32; b++) {
      const d8 = f16BitsToF32(q8.readUInt16LE(b * 34));
      const d4 = f16BitsToF32(q4.readUInt16LE(b * 18));
      for (let j = 0; j < 32; j++) {
        const v = x[b * 32 + j]!;
        // error <= d / 2 plus 127 x the f16 rounding of d
        assert.ok(Math.abs(q8.readInt8(b * 34 + 2 + j) * d8 - v) <= Math.abs(d8) * 0.57 + 1e-6, 'q8_0');
        const byte = q4[b * 18 + 2 + (j % 16)]!;
        const q = j < 16 ? byte & 15 : byte >> 4;
        assert.ok(Math.abs((q - 8) * d4 - v) <= Math.abs(d4) * 0.51 + 1e-6 || q === 0 || q === 15, 'q4_0');
      }
    }
    // whole files with q4_0
    const out = join(tmp, 'q4.gguf');
    await generateCheckpoint({ arch: 'sd2', format: 'gguf', dtype: 'f32', quant: 'q4_0', out });
    checkGgufFile(out, tensorList('sd2', 'tiny', 'sdcpp'), 'f32', 'q4_0');
  });
});

describe('containers', () => {
  test('zip64 records read back (forced) with this reader and python zipfile', async () => {
    const entries = tensorEntries(modelConfig('sd1', 'tiny'), 'vae');
    const out = join(tmp, 'zip64.ckpt');
    await writeCkpt(out, entries, 'f16', new ValueSource(1), { zip64Threshold: 1 });
    const z = readZip(out);
    assert.equal(z.length, entries.length + 3);
    for (const e of z) if (e.name.includes('/data/')) assert.equal(e.dataOffset % 64, 0);
    if (HAVE_PYTHON) {
      const [r] = JSON.parse(python(PY_CKPT, [out])) as { tensors: [string, number[]][] }[];
      assert.deepEqual(r!.tensors.map(([n, s]) => [n, s]), entries.map((e) => [e.name, e.shape]));
    }
  });

  // torch is not installed by default; point SDNODE_TORCH_PYTHON at a python that has it
  const torchPython = process.env.SDNODE_TORCH_PYTHON;
  test('torch.load reads the .ckpt files bit-exact (SDNODE_TORCH_PYTHON)', { skip: !torchPython && 'SDNODE_TORCH_PYTHON not set' }, async () => {
    const ref = join(tmp, 'torch-ref.safetensors');
    await generateCheckpoint({ arch: 'sd2', format: 'safetensors', dtype: 'f32', seed: 5, out: ref });
    const paths: string[] = [];
    for (const dtype of ['f32', 'f16', 'bf16'] as const) {
      paths.push(join(tmp, `torch-${dtype}.ckpt`));
      await generateCheckpoint({ arch: 'sd2', format: 'ckpt', dtype, seed: 5, out: paths[paths.length - 1]! });
    }
    const script = `import json, struct, sys, torch
b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); h.pop('__metadata__', None)
ref = {k: torch.frombuffer(bytearray(b[8+n+v['data_offsets'][0]:8+n+v['data_offsets'][1]]), dtype=torch.float32).reshape(v['shape']) for k, v in h.items()}
for path, dt in zip(sys.argv[2:], (torch.float32, torch.float16, torch.bfloat16)):
    sd = torch.load(path, map_location='cpu')['state_dict']
    assert list(sd) == list(ref), path
    for k, t in sd.items(): assert t.dtype == dt and torch.equal(t, ref[k].to(dt)), (path, k)
print('ok')`;
    const out = execFileSync(torchPython!, ['-c', script, ref, ...paths], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.equal(out.trim(), 'ok');
  });

  test('safetensors header parses in python', { skip: !HAVE_PYTHON && 'python3 not available' }, async () => {
    const out = join(tmp, 'py.safetensors');
    await generateCheckpoint({ arch: 'sd1', format: 'safetensors', dtype: 'f16', out, metadata: { note: 'hello' } });
    const script = `import json, struct, sys, numpy as np
b = open(sys.argv[1], 'rb').read(); n = struct.unpack('<Q', b[:8])[0]; h = json.loads(b[8:8+n]); meta = h.pop('__metadata__')
t = h['model.diffusion_model.out.2.weight']; s, e = t['data_offsets']
a = np.frombuffer(b[8+n+s:8+n+e], dtype=np.float16).reshape(t['shape'])
print(json.dumps({'note': meta['note'], 'count': len(h), 'shape': list(a.shape), 'finite': bool(np.isfinite(a).all()), 'end': max(v['data_offsets'][1] for v in h.values()) + 8 + n == len(b)}))`;
    const r = JSON.parse(python(script, [out]));
    assert.deepEqual(r, { note: 'hello', count: tensorList('sd1', 'tiny', 'ldm').length, shape: [4, 32, 3, 3], finite: true, end: true });
  });

  test('fixturePath generates once and reuses the file', async () => {
    const saved = process.env.SDNODE_FIXTURE_DIR;
    process.env.SDNODE_FIXTURE_DIR = join(tmp, 'cache');
    try {
      const a = await fixturePath({ arch: 'tiny', format: 'gguf', quant: 'q8_0' });
      const mtime = statSync(a).mtimeMs;
      const b = await fixturePath({ quant: 'q8_0', format: 'gguf', arch: 'tiny' });
      assert.equal(a, b);
      assert.equal(statSync(b).mtimeMs, mtime);
      const c = await fixturePath({ arch: 'tiny', format: 'gguf', quant: 'q8_0', seed: 2 });
      assert.notEqual(c, a);
      assert.deepEqual(readdirSync(join(tmp, 'cache')).filter((f) => f.startsWith('.tmp')), []);
    } finally {
      if (saved === undefined) delete process.env.SDNODE_FIXTURE_DIR;
      else process.env.SDNODE_FIXTURE_DIR = saved;
    }
  });

  test('bad options are refused with a message naming the value', async () => {
    await assert.rejects(generateCheckpoint({ arch: 'sd3' as Arch, format: 'safetensors', out: join(tmp, 'bad') }), /unknown arch "sd3"/);
    await assert.rejects(generateCheckpoint({ arch: 'sd1', format: 'safetensors', quant: 'q8_0', out: join(tmp, 'bad') }), /quant "q8_0" needs format gguf/);
    assert.throws(() => tensorList('sd1', 'tiny', 'clip2'), /clip2/);
    assert.throws(() => modelConfig('sd1', 'tiny', { modelChannels: 48 }), /multiple of 32/);
  });
});

function statSafe(path: string): boolean {
  try { statSync(path); return true; } catch { return false; }
}
