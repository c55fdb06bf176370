#!/usr/bin/env node
/**
 * The `sdnode` command line.
 *
 *   sdnode info                 versions, backends, devices, CPU features
 *   sdnode inspect <model>      format, architecture, parameters, hyperparameters of a model
 */
import { parseArgs } from 'node:util';
import { inspectModel, type ModelInspection } from '../inspect.ts';
import { systemInfo } from '../system.ts';
import { SdError } from '../errors.ts';
import { version } from '../version.ts';

const USAGE = `Usage: sdnode <command> [options]

Commands:
  info                     show versions, backends, devices and CPU features
  inspect <model> [--json] show a model's format, architecture, components and hyperparameters

Options:
  -h, --help               show this help
  -v, --version            show the version
`;

const fmtInt = (n: number) => n.toLocaleString('en-US');

function printInspection(info: ModelInspection): void {
  const out: string[] = [];
  out.push(`model:         ${info.path}`);
  out.push(`format:        ${info.format}`);
  out.push(`architecture:  ${info.architecture}${info.hyperparameters.unet?.variant ? ` (${info.hyperparameters.unet.variant})` : ''}`);
  out.push(`components:    ${info.components.join(', ')}`);
  out.push('parameters:');
  for (const c of ['unet', 'vae', 'textEncoder', 'textEncoder2'] as const) {
    if (info.parameters[c] > 0) out.push(`  ${c.padEnd(13)}${fmtInt(info.parameters[c]).padStart(15)}`);
  }
  out.push(`  ${'total'.padEnd(13)}${fmtInt(info.parameters.total).padStart(15)}`);
  out.push(`tensor types:  ${Object.entries(info.dtypes).map(([k, v]) => `${k} x${v}`).join(', ')}`);
  const u = info.hyperparameters.unet;
  if (u) {
    out.push(
      `unet:          ${u.modelChannels} ch x [${u.channelMult}], res blocks [${u.numResBlocks}], ` +
        `attention depth [${u.transformerDepth}] mid ${u.hasMiddleBlock ? u.transformerDepthMiddle : 'none'}, ` +
        `context ${u.contextDim}, in ${u.inChannels}, prediction ${u.prediction}`,
    );
  }
  const v = info.hyperparameters.vae;
  if (v) out.push(`vae:           ${v.ch} ch x [${v.channelMult}], z ${v.zChannels}, scale ${v.scaleFactor}`);
  for (const k of ['textEncoder', 'textEncoder2'] as const) {
    const t = info.hyperparameters[k];
    if (t) out.push(`${(k + ':').padEnd(15)}${t.kind}, width ${t.width}, ${t.layers} layers, ${t.heads} heads, vocab ${t.vocab}`);
  }
  if (info.unknownTensors.length) out.push(`unknown tensors: ${info.unknownTensors.length} (e.g. ${info.unknownTensors.slice(0, 3).join(', ')})`);
  for (const w of info.warnings) out.push(`warning: ${w}`);
  process.stdout.write(out.join('\n') + '\n');
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined ? 1 : 0;
  }
  if (command === '-v' || command === '--version') {
    process.stdout.write(`${version}\n`);
    return 0;
  }
  switch (command) {
    case 'info': {
      process.stdout.write(JSON.stringify(systemInfo(), null, 2) + '\n');
      return 0;
    }
    case 'inspect': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { json: { type: 'boolean' } } });
      if (positionals.length !== 1) {
        process.stderr.write('sdnode inspect: expected exactly one model path\n' + USAGE);
        return 2;
      }
      const info = await inspectModel(positionals[0]);
      if (values.json) process.stdout.write(JSON.stringify(info, null, 2) + '\n');
      else printInspection(info);
      return 0;
    }
    default:
      process.stderr.write(`sdnode: unknown command ${JSON.stringify(command)}\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof SdError) process.stderr.write(`sdnode: ${err.name}: ${err.message}\n`);
    else process.stderr.write(`sdnode: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = err instanceof SdError && err.code === 'InvalidArgument' ? 2 : 1;
  },
);
