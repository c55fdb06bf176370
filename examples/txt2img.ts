// Text to image with sdnode.
//
//   npx tsx examples/txt2img.ts MODEL "a photo of a cat" [out.png]
//
// MODEL: any SD1.x / SD2.x checkpoint sdnode reads (safetensors, GGUF, .ckpt, diffusers folder).
import fs from 'node:fs';
import { loadModel } from '../lib/index.ts';

const [modelPath, prompt = 'a photo of a cat', output = 'txt2img.png'] = process.argv.slice(2);
if (!modelPath) {
  console.error('usage: tsx examples/txt2img.ts MODEL [PROMPT] [OUT.png]');
  process.exit(2);
}

const controller = new AbortController();
process.once('SIGINT', () => controller.abort());

await using model = await loadModel(modelPath, {
  weightType: 'q8_0', // smaller and faster on CPU; omit to keep the file's types
  signal: controller.signal,
  onProgress: ({ fraction }) => process.stderr.write(`\rloading ${(fraction * 100).toFixed(0)}%`),
});
process.stderr.write('\n');

const result = await model.generate({
  prompt,
  negativePrompt: 'blurry, lowres',
  steps: 20,
  cfgScale: 7,
  sampler: 'euler_a',
  seed: 42,
  signal: controller.signal,
  onProgress: ({ step, steps, elapsedMs }) => process.stderr.write(`\rstep ${step}/${steps} (${(elapsedMs / 1000).toFixed(1)} s)`),
});
process.stderr.write('\n');
fs.writeFileSync(output, result.images[0].toPNG());
console.log(`${output}: seed ${result.seeds[0]}, ${(result.timings.total / 1000).toFixed(1)} s`);
