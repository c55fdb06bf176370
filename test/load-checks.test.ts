// Checks at load: a tensor of the wrong shape is a ModelFormatError from loadModel naming the
// tensor, the expected and the found shape; tensors nothing uses load and are reported.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ModelFormatError, inspectModel, loadModel } from '../lib/index.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-load-checks-'));
let good: string;
before(async () => {
  good = (await generateCheckpoint({ arch: 'sd1', format: 'safetensors', out: path.join(work, 'sd1.safetensors') })).path;
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

type Header = Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;

/** Rewrites a safetensors file's header with `edit`, appending `extraData` after the tensors. */
function rewrite(src: string, out: string, edit: (h: Header, dataEnd: number) => void, extraData = Buffer.alloc(0)): void {
  const file = fs.readFileSync(src);
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString('utf8')) as Header;
  const data = file.subarray(8 + n);
  edit(header, data.length);
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(out, Buffer.concat([head, Buffer.from(json), data, extraData]));
}

describe('checks at load', () => {
  test('a UNet tensor of the wrong shape fails in loadModel, naming it with the expected and found shape', async () => {
    const bad = path.join(work, 'bad-shape.safetensors');
    let swapped = '';
    rewrite(good, bad, (h) => {
      // A time-embedding-to-channels projection of a res block: [out, in] stored as [in, out]
      // (the same bytes, so the file itself is consistent).
      const name = Object.keys(h).find((k) => /diffusion_model\.input_blocks\.1\.0\.emb_layers\.1\.weight$/.test(k))!;
      const t = h[name] as { shape: number[] };
      assert.notEqual(t.shape[0], t.shape[1]);
      t.shape = [t.shape[1]!, t.shape[0]!];
      swapped = name;
    });
    assert.ok(swapped);
    await assert.rejects(loadModel(bad), (e: unknown) => {
      assert.ok(e instanceof ModelFormatError, String(e));
      assert.match(e.message, /unet: tensor 'input_blocks\.1\.0\.emb_layers\.1\.weight' has shape \[\d+, \d+\]; expected \[out, \d+\]/);
      return true;
    });
    // inspectModel describes the file and says the component cannot run as it is.
    const info = await inspectModel(bad);
    assert.ok(info.warnings.some((w) => /cannot run as it is: unet: tensor 'input_blocks\.1\.0\.emb_layers\.1\.weight'/.test(w)), info.warnings.join('\n'));
  });

  test('a file with an extra tensor loads, and the tensor is reported', async () => {
    const extra = path.join(work, 'extra.safetensors');
    rewrite(good, extra, (h, end) => {
      h['model.diffusion_model.extra_adapter.weight'] = { dtype: 'F32', shape: [4], data_offsets: [end, end + 16] };
    }, Buffer.alloc(16));
    const info = await inspectModel(extra);
    assert.ok(info.unknownTensors.includes('model.diffusion_model.extra_adapter.weight'));
    const model = await loadModel(extra);
    try {
      assert.ok(model.warnings.some((w) => /name table does not know.*extra_adapter/.test(w)), model.warnings.join('\n'));
      const r = await model.generate({ prompt: 'x', width: 64, height: 64, steps: 1, seed: 1 });
      assert.equal(r.images.length, 1);
    } finally {
      await model.dispose();
    }
  });

  test('a complete model uses every tensor it has', async () => {
    const info = await inspectModel(good);
    assert.deepEqual(info.unusedTensors, []);
    const model = await loadModel(good);
    assert.deepEqual(model.unusedTensors, []);
    await model.dispose();
  });
});
