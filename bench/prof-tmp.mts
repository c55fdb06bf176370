import { loadModel } from '/work/main/lib/index.ts';
const type = process.argv[2] ?? 'f16';
const m = await loadModel(process.env.HOME + '/.cache/sdnode/models/sd15-random-f16-seed1234.safetensors', { weightType: type as never, threads: 2 });
for (let r = 0; r < Number(process.argv[3] ?? 2); r++) {
  const res = await m.generate({ prompt: 'a photo of a cat', width: 256, height: 256, steps: 4, cfgScale: 7, sampler: 'euler_a', seed: 42 + r });
  console.log(JSON.stringify(res.timings));
}
await m.dispose();
