// `npm run demo`: sdnode end to end on a model it makes itself (no download). Writes a tiny,
// randomly initialized SD1.x checkpoint into a temp folder, inspects it, and generates an image
// with it (noise to the eye: the weights are random) into demo.png.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inspectModel, loadModel, systemInfo } from '../lib/index.ts';
import { generateCheckpoint } from '../test/fixtures/generate.ts';

const info = systemInfo();
console.log(`sdnode ${info.sdnodeVersion} on ggml ${info.ggmlVersion} (${info.ggmlCommit})`);
console.log(`backends: ${info.backends.join(', ')}; devices: ${info.devices.map((d) => `${d.name} (${d.description})`).join(', ')}`);
console.log(`CPU features: ${info.cpuFeatures.join(' ')}; default threads: ${info.defaultThreads}\n`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-demo-'));
try {
  const made = await generateCheckpoint({
    arch: 'sd1',
    size: 'tiny',
    format: 'safetensors',
    out: path.join(dir, 'tiny-sd1.safetensors'),
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  });
  console.log(`wrote ${made.path} (${(made.bytes / 1e6).toFixed(1)} MB, ${made.tensors} tensors)`);
  const inspected = await inspectModel(made.path);
  console.log(`inspectModel: ${inspected.format}, ${inspected.architecture}, ${inspected.components.join(' + ')}, ` +
    `${inspected.parameters.total.toLocaleString('en-US')} parameters`);

  await using model = await loadModel(made.path);
  const result = await model.generate({
    prompt: 'a photo of a cat',
    width: 128,
    height: 128,
    steps: 8,
    seed: 42,
    onProgress: ({ step, steps }) => process.stdout.write(`\rsampling step ${step}/${steps}`),
  });
  fs.writeFileSync('demo.png', result.images[0].toPNG());
  console.log(`\nwrote demo.png (seed ${result.seeds[0]}, ${result.timings.total.toFixed(0)} ms)`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
