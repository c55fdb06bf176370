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
