import { callNativeSync, native, type CpuKernels, type NativeDevice } from './binding.ts';
import { version as packageVersion } from './version.ts';

/** A compute device ggml found (see `NativeDevice` for the fields). */
export type DeviceInfo = NativeDevice;

/** What {@link systemInfo} reports. */
export interface SystemInfo {
  /** This package's version. */
  sdnodeVersion: string;
  /** The version compiled into the native addon (equals `sdnodeVersion` unless the install is mixed). */
  addonVersion: string;
  ggmlVersion: string;
  ggmlCommit: string;
  /** Backends compiled in (or loaded as modules in a portable build), e.g. `["CPU"]` or `["CUDA", "CPU"]`. */
  backends: string[];
  devices: DeviceInfo[];
  /** CPU features the CPU backend uses, e.g. `["AVX2", "F16C", "FMA"]`. */
  cpuFeatures: string[];
  /**
   * Which of sdnode's own CPU kernels run on this machine, each after a self-check against ggml's
   * op it replaces (same numbers, bit for bit); where false, ggml's op runs. All false off x86-64,
   * without AVX-512, or with `SDNODE_CPU_KERNELS=0`.
   */
  cpuKernels: CpuKernels;
  /** Threads used when `threads` is not given. */
  defaultThreads: number;
  /** True for portable builds, whose CPU variant and backends are picked at run time. */
  dynamicBackends: boolean;
  platform: string;
  arch: string;
  nodeVersion: string;
}

/**
 * Versions, compiled backends, devices and CPU features.
 * @example
 * ```ts
 * import { systemInfo } from 'sdnode';
 * const info = systemInfo();
 * console.log(info.backends, info.devices.map((d) => d.description));
 * ```
 */
export function systemInfo(): SystemInfo {
  const n = callNativeSync((a) => a.systemInfo());
  return {
    sdnodeVersion: packageVersion,
    addonVersion: native().version,
    ggmlVersion: n.ggmlVersion,
    ggmlCommit: n.ggmlCommit,
    backends: n.backends,
    devices: n.devices,
    cpuFeatures: Object.entries(n.cpuFeatures)
      .filter(([, v]) => v !== '0' && v !== '')
      .map(([k, v]) => (v === '1' ? k : `${k}=${v}`)),
    cpuKernels: { ...n.cpuKernels },
    defaultThreads: n.defaultThreads,
    dynamicBackends: n.dynamicBackends,
    platform: process.platform,
    arch: process.arch,
    nodeVersion: process.version,
  };
}
