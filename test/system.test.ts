import assert from 'node:assert/strict';
import { test } from 'node:test';
import { systemInfo, version } from '../lib/index.ts';

test('systemInfo reports versions, the CPU backend and device, CPU features and threads', () => {
  const info = systemInfo();
  assert.equal(info.sdnodeVersion, version);
  assert.equal(info.addonVersion, version, 'the loaded addon was built from this version');
  assert.match(info.ggmlVersion, /^\d+\.\d+\.\d+$/);
  assert.match(info.ggmlCommit, /^[0-9a-f]{7,}$/);
  assert.ok(info.backends.includes('CPU'));
  const cpu = info.devices.find((d) => d.type === 'cpu');
  assert.ok(cpu, 'a CPU device is listed');
  assert.ok(cpu.memoryTotal > 0);
  assert.ok(info.defaultThreads >= 1);
  if (process.arch === 'x64') assert.ok(info.cpuFeatures.includes('SSE3'), `x64 CPU features: ${info.cpuFeatures}`);
  assert.equal(info.platform, process.platform);
});

test("systemInfo says which of sdnode's CPU kernels run, consistently with the CPU", () => {
  const { cpuKernels, cpuFeatures } = systemInfo();
  for (const k of ['f16', 'f32', 'quant', 'activations', 'amx'] as const) assert.equal(typeof cpuKernels[k], 'boolean');
  if (cpuKernels.amx) assert.ok(cpuKernels.f16 && cpuFeatures.includes('AMX_INT8'), `${cpuFeatures}`);
  // The attention and quantized kernels only run where the f16 ones do, and those need AVX-512.
  if (cpuKernels.f32 || cpuKernels.quant) assert.ok(cpuKernels.f16);
  if (cpuKernels.f16 || cpuKernels.activations) assert.equal(process.arch, 'x64');
  if (cpuKernels.quant) assert.ok(cpuFeatures.includes('AVX512_VNNI') || cpuFeatures.some((f) => f.startsWith('AVX512')), `${cpuFeatures}`);
  // On x86-64 builds of this project (GCC/Clang), an AVX-512 CPU runs them all: a kernel that
  // stopped matching ggml would show up here as false.
  if (process.arch === 'x64' && process.platform !== 'win32' && cpuFeatures.includes('AVX512')) {
    const { amx, ...rest } = cpuKernels;
    // f32 is the exception: ggml's f32 products round differently on some CPUs (its builds for
    // AVX512-BF16 Xeons), where the self-check keeps ggml's op.
    const { f32: _f32, ...checked } = rest;
    assert.deepEqual(checked, { f16: true, quant: cpuFeatures.includes('AVX512_VNNI'), activations: true });
    // AMX needs the OS's permission too, so it is not implied by the CPU features alone.
    if (!cpuFeatures.includes('AMX_INT8')) assert.equal(amx, false);
  }
});
