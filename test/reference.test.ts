// Opt-in (SDNODE_REFERENCE=1): checks sdnode against stable-diffusion.cpp's outputs on the
// full-size random SD1.5 checkpoint. See test/helpers/reference.ts.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { inspectModel } from '../lib/index.ts';
import { referenceEnabled, sd15RandomCheckpoint } from './helpers/reference.ts';

const skip = referenceEnabled ? false : 'opt-in: set SDNODE_REFERENCE=1 (makes a 2.1 GB checkpoint once)';

describe('reference: full-size random SD1.5 checkpoint', { skip }, () => {
  test('inspectModel reports SD1.x with the published parameter counts', async () => {
    const info = await inspectModel(sd15RandomCheckpoint());
    assert.equal(info.format, 'safetensors');
    assert.equal(info.architecture, 'sd1');
    assert.deepEqual(info.components, ['unet', 'vae', 'textEncoder']);
    assert.equal(info.parameters.unet, 859_520_964);
    assert.equal(info.parameters.vae, 83_653_863);
    assert.equal(info.parameters.textEncoder, 123_060_480);
    assert.deepEqual(info.dtypes, { f16: info.tensorCount });
    const u = info.hyperparameters.unet!;
    assert.equal(u.modelChannels, 320);
    assert.deepEqual(u.channelMult, [1, 2, 4, 4]);
    assert.deepEqual(u.numResBlocks, [2, 2, 2, 2]);
    assert.deepEqual(u.transformerDepth, [1, 1, 1, 0]);
    assert.equal(u.contextDim, 768);
    assert.equal(u.inChannels, 4);
    assert.equal(info.hyperparameters.textEncoder!.layers, 12);
    assert.equal(info.hyperparameters.vae!.scaleFactor.toFixed(5), '0.18215');
  });
});
