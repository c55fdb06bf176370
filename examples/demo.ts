// `npm run demo`: what sdnode can do so far, on a model it makes itself (no download).
// Writes a tiny, randomly initialized SD1.x checkpoint into a temp folder, then shows the
// machine's backends and what inspectModel reads from the file.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inspectModel, systemInfo } from '../lib/index.ts';
import { generateCheckpoint } from '../test/fixtures/generate.ts';

const info = systemInfo();
console.log(`sdnode ${info.sdnodeVersion} on ggml ${info.ggmlVersion} (${info.ggmlCommit})`);
console.log(`backends: ${info.backends.join(', ')}; devices: ${info.devices.map((d) => `${d.name} (${d.description})`).join(', ')}`);
console.log(`CPU features: ${info.cpuFeatures.join(' ')}; default threads: ${info.defaultThreads}\n`);

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-demo-'));
try {
  const made = await generateCheckpoint({ arch: 'sd1', size: 'tiny', format: 'safetensors', out: path.join(dir, 'tiny-sd1.safetensors') });
  console.log(`wrote ${made.path} (${(made.bytes / 1e6).toFixed(1)} MB, ${made.tensors} tensors)`);
  const model = await inspectModel(made.path);
  console.log(JSON.stringify({ format: model.format, architecture: model.architecture, components: model.components, parameters: model.parameters, dtypes: model.dtypes, unet: model.hyperparameters.unet }, null, 2));
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
