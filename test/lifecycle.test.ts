// Process and thread lifecycle around running native jobs: worker_threads terminated (or exiting)
// while a model loads or generates, the main thread exiting or throwing mid-generation, abort
// latency inside one long step, and many workers torn down at random moments. The failure modes
// are crashes (SIGSEGV / SIGABRT) and hangs of the whole process, so every scenario runs in a
// child process that the test kills if it outlives its limit.
//
// Timings measured on the 2-core development machine with the tiny model below (threads: 2):
// load ~0.15 s; 64x64 1 step ~0.1 s; 512x512 ~1.1 s per step (10 steps + decode: ~11 s);
// 1024x1024 ~22 s for the first step alone. The failure these guard against is terminate() / exit
// / abort waiting for the native job to finish (many seconds) or hanging, so the bounds below are
// generous yet far below it. Uninterrupted 512x512 10-step generation: ~11 s (not run here).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { pathToFileURL } from 'node:url';
import { packageRoot } from '../lib/binding.ts';
import { generateCheckpoint } from './fixtures/generate.ts';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sdnode-lifecycle-'));
const distEntry = path.join(packageRoot, 'dist', 'index.js');
const entry = pathToFileURL(distEntry).href;
let modelPath: string;

/** terminate() / a worker's process.exit / abort must settle within this (ms). */
const SETTLE_MS = 2000;
/** How long a process may take to go away after its last job was cut short (ms). */
const EXIT_LAG_MS = 3000;
/** A child that outlives this is a hang: it is killed and the test fails (ms). */
const CHILD_LIMIT_MS = 40_000;

// ---------------------------------------------------------------- scripts the children run

/** Runs inside a worker_thread; reports what it does to its parent, stamped with Date.now(). */
const WORKER = `
import { parentPort, workerData } from 'node:worker_threads';
const { entry, model, mode, size = 512, steps = 10, exitOn } = workerData;
const post = (type, extra) => parentPort.postMessage({ type, at: Date.now(), ...extra });
const { loadModel } = await import(entry);
if (mode === 'load-loop') {
  // Load over and over, so a terminate lands in a load whenever it comes.
  for (;;) {
    post('loading');
    const m = await loadModel(model, { threads: 2 });
    post('loaded');
    await m.dispose();
  }
}
const m = await loadModel(model, { threads: 2 });
post('loaded');
if (mode === 'loop') {
  for (let i = 0; ; i++) {
    await m.generate({ prompt: 'x', width: 64, height: 64, steps: 1, seed: i });
    post('generated');
  }
}
if (exitOn === 'time') setTimeout(() => { post('exiting'); process.exit(0); }, 500);
post('generating');
await m.generate({
  prompt: 'x', width: size, height: size, steps, seed: 1,
  onProgress: (e) => {
    post('progress', { step: e.step });
    if (exitOn === 'progress') { post('exiting'); process.exit(0); }
  },
});
post('done');
`;

/** Child main for the worker scenarios: argv = entry, model, worker file, scenario. */
const WORKERS_MAIN = `
import { Worker } from 'node:worker_threads';
const [entry, model, workerFile, scenario] = process.argv.slice(2);
const report = (key, value) => console.log('@@ ' + key + ' ' + JSON.stringify(value));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function start(mode, extra = {}) {
  const w = new Worker(workerFile, { workerData: { entry, model, mode, ...extra } });
  const waiting = [];
  w.seen = [];
  w.on('message', (m) => {
    w.seen.push(m.type);
    for (const x of waiting.filter((x) => x.type === m.type)) { waiting.splice(waiting.indexOf(x), 1); x.resolve(m); }
  });
  w.on('error', (e) => { console.error('worker error:', e); process.exitCode = 3; });
  w.exited = new Promise((resolve) => w.once('exit', (code) => resolve({ code, at: Date.now() })));
  w.until = (type) => new Promise((resolve) => waiting.push({ type, resolve }));
  return w;
}
async function timedTerminate(w) {
  const t = Date.now();
  const code = await w.terminate();
  return { ms: Date.now() - t, code };
}
const count = (w, type) => w.seen.filter((s) => s === type).length;

if (scenario === 'terminate-load') {
  for (const delay of [0, 40, 90]) {
    const w = start('load-loop');
    await w.until('loading');
    await sleep(delay);
    const r = await timedTerminate(w);
    report('terminate', { delay, ms: r.ms, code: r.code, loadsCompleted: count(w, 'loaded'), last: w.seen.at(-1) });
  }
} else if (scenario === 'terminate-generate') {
  for (const when of ['500ms', 'progress']) {
    const w = start('generate', { size: 512, steps: 10 });
    await w.until('generating');
    if (when === '500ms') await sleep(500); else await w.until('progress');
    const r = await timedTerminate(w);
    report('terminate', { when, ms: r.ms, code: r.code, progress: count(w, 'progress'), done: count(w, 'done') });
  }
} else if (scenario.startsWith('worker-exit-')) {
  // 'time': process.exit(0) from a timer; 'progress': from inside the onProgress callback.
  const exitOn = scenario.slice('worker-exit-'.length);
  const w = start('generate', { size: 512, steps: 10, exitOn });
  const exiting = await w.until('exiting');
  const exit = await w.exited;
  report('exit', { exitOn, ms: exit.at - exiting.at, code: exit.code, progress: count(w, 'progress'), done: count(w, 'done') });
} else if (scenario === 'many') {
  const rss0 = process.memoryUsage().rss;
  let ticks = 0;
  const timer = setInterval(() => ticks++, 20);
  for (let i = 0; i < 6; i++) {
    const runs = [0, 1, 2].map(async () => {
      const delay = Math.floor(Math.random() * 800);
      const w = start('loop');
      await sleep(delay);
      const r = await timedTerminate(w);
      return { delay, ms: r.ms, code: r.code, loaded: count(w, 'loaded'), generated: count(w, 'generated') };
    });
    report('iteration', await Promise.all(runs));
  }
  clearInterval(timer);
  report('ticks', ticks);
  report('rss', { beforeMiB: +(rss0 / 1048576).toFixed(1), afterMiB: +(process.memoryUsage().rss / 1048576).toFixed(1) });
} else {
  throw new Error('unknown scenario ' + scenario);
}
// The main thread lives on after the workers are gone.
await sleep(1000);
console.log('alive');
report('T_DONE', Date.now());
`;

/** Child main: start a 512x512 generation, then exit or throw from a timer 500 ms in. */
const MAIN_EXIT = `
const [entry, model, mode] = process.argv.slice(2);
const report = (key, value) => console.log('@@ ' + key + ' ' + JSON.stringify(value));
const { loadModel } = await import(entry);
const m = await loadModel(model, { threads: 2 });
let steps = 0;
m.generate({ prompt: 'x', width: 512, height: 512, steps: 10, seed: 1, onProgress: () => steps++ }).then(
  () => console.log('GENERATION FINISHED'),
  (e) => console.log('generation rejected: ' + e.name),
);
setTimeout(() => {
  report('steps', steps);
  report('T_EXIT', Date.now());
  if (mode === 'exit') process.exit(0);
  throw new Error('lifecycle: thrown from a timer mid-generation');
}, 500);
`;

/** Child main: abort generations that are inside one long step; the rejection must be prompt. */
const ABORT = `
const [entry, model] = process.argv.slice(2);
const report = (key, value) => console.log('@@ ' + key + ' ' + JSON.stringify(value));
const { loadModel, AbortError } = await import(entry);
const m = await loadModel(model, { threads: 2 });
async function abortLatency(size, when) {
  const ac = new AbortController();
  let abortedAt = 0;
  let progress = 0;
  const abort = () => { abortedAt = Date.now(); ac.abort(); };
  if (typeof when === 'number') setTimeout(abort, when);
  const t0 = Date.now();
  try {
    await m.generate({ prompt: 'x', width: size, height: size, steps: 10, seed: 1, signal: ac.signal, onProgress: () => {
      progress++;
      if (when === 'progress' && progress === 1) abort();
    } });
    return { size, when, resolved: true, ms: Date.now() - t0 };
  } catch (e) {
    return {
      size, when, latencyMs: Date.now() - abortedAt, startToAbortMs: abortedAt - t0, progress,
      name: e?.name, isAbortError: e instanceof AbortError, message: String(e?.message),
    };
  }
}
report('abort', await abortLatency(1024, 1000));
report('abort', await abortLatency(1024, 3000));
report('abort', await abortLatency(512, 'progress'));
// The model stays usable after the aborts.
const r = await m.generate({ prompt: 'x', width: 64, height: 64, steps: 1, seed: 1 });
report('after', r.images.length);
await m.dispose();
`;

// ---------------------------------------------------------------- running a child

interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to close. */
  ms: number;
  /** Date.now() when the child's streams closed. */
  closedAt: number;
  timedOut: boolean;
  /** The `@@ key json` lines the child printed, each key's values in order. */
  values: Record<string, any[]>;
}

function runChild(script: string, args: string[], limitMs = CHILD_LIMIT_MS): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const child = spawn(process.execPath, [path.join(work, script), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, limitMs);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const closedAt = Date.now();
      const values: Record<string, any[]> = {};
      for (const line of stdout.split('\n')) {
        const m = /^@@ (\S+) (.*)$/.exec(line);
        if (m) (values[m[1]] ??= []).push(JSON.parse(m[2]));
      }
      resolve({ code, signal, stdout, stderr, ms: closedAt - t0, closedAt, timedOut, values });
    });
  });
}

/** No hang, no signal, no native abort text; the expected exit code. */
function assertClean(r: ChildResult, code: number, label: string): void {
  const dump = `${label}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
  assert.equal(r.timedOut, false, `hung: killed after ${CHILD_LIMIT_MS} ms: ${dump}`);
  assert.equal(r.signal, null, `died of ${r.signal}: ${dump}`);
  assert.doesNotMatch(r.stderr, /Segmentation fault|Aborted|FATAL ERROR|terminate called|libc\+\+abi|Assertion .* failed|GGML_ASSERT/, dump);
  assert.equal(r.code, code, `exit code ${r.code}, expected ${code}: ${dump}`);
}

const show = (t: TestContext, label: string, value: unknown) => t.diagnostic(`${label}: ${JSON.stringify(value)}`);

before(async () => {
  assert.ok(fs.existsSync(distEntry), `${distEntry} is missing: run npm run build:ts`);
  // The VAE with three upsamplings (as in generate.test.ts): 512x512 is a 64x64 latent.
  modelPath = (await generateCheckpoint({
    arch: 'sd1',
    format: 'safetensors',
    out: path.join(work, 'sd1.safetensors'),
    seed: 11,
    tiny: { vaeChannelMult: [1, 1, 1, 1], vaeResBlocks: 1 },
  })).path;
  fs.writeFileSync(path.join(work, 'worker.mjs'), WORKER);
  fs.writeFileSync(path.join(work, 'workers-main.mjs'), WORKERS_MAIN);
  fs.writeFileSync(path.join(work, 'main-exit.mjs'), MAIN_EXIT);
  fs.writeFileSync(path.join(work, 'abort.mjs'), ABORT);
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

const workers = (scenario: string) => runChild('workers-main.mjs', [entry, modelPath, path.join(work, 'worker.mjs'), scenario]);

/** The child printed "alive" a second after its workers were gone, and then went away promptly. */
function assertAliveAndPromptExit(t: TestContext, r: ChildResult): void {
  assert.match(r.stdout, /^alive$/m, r.stdout);
  const lag = r.closedAt - r.values.T_DONE[0];
  show(t, 'child runtime ms', r.ms);
  show(t, 'exit lag after the last line ms', lag);
  assert.ok(lag < EXIT_LAG_MS, `the child took ${lag} ms to exit after its main script ended`);
}

describe('worker_threads terminated or exiting around native jobs', () => {
  test('terminate() during loadModel settles promptly; the main thread lives on', { timeout: 60_000 }, async (t) => {
    const r = await workers('terminate-load');
    assertClean(r, 0, 'terminate-load');
    const out = r.values.terminate as Array<{ delay: number; ms: number; code: number; loadsCompleted: number }>;
    for (const x of out) show(t, `terminate ${x.delay} ms into loading`, x);
    assert.equal(out.length, 3);
    for (const x of out) {
      assert.equal(x.code, 1, 'terminate() resolves with exit code 1');
      assert.ok(x.ms < SETTLE_MS, `terminate() ${x.delay} ms into loading took ${x.ms} ms`);
    }
    assertAliveAndPromptExit(t, r);
  });

  test('terminate() during a 512x512 generation settles promptly; the process then exits', { timeout: 60_000 }, async (t) => {
    const r = await workers('terminate-generate');
    assertClean(r, 0, 'terminate-generate');
    const out = r.values.terminate as Array<{ when: string; ms: number; code: number; done: number }>;
    for (const x of out) show(t, `terminate during generate (${x.when})`, x);
    assert.equal(out.length, 2);
    for (const x of out) {
      assert.equal(x.code, 1);
      assert.equal(x.done, 0, 'the generation was cut short');
      assert.ok(x.ms < SETTLE_MS, `terminate() (${x.when}) took ${x.ms} ms`);
    }
    assertAliveAndPromptExit(t, r);
    // Two uninterrupted generations would take ~22 s; two cut short plus the 1 s "alive" wait, ~5 s.
    assert.ok(r.ms < 12_000, `child ran ${r.ms} ms`);
  });

  for (const [exitOn, where] of [['time', 'a timer'], ['progress', 'the onProgress callback']]) {
    test(`process.exit(0) from ${where} in a generating worker: its exit event comes promptly, main lives on`, { timeout: 60_000 }, async (t) => {
      const r = await workers(`worker-exit-${exitOn}`);
      assertClean(r, 0, `worker-exit-${exitOn}`);
      const [x] = r.values.exit as Array<{ exitOn: string; ms: number; code: number; done: number }>;
      show(t, 'worker process.exit', x);
      assert.equal(x.code, 0, "the worker's exit code");
      assert.equal(x.done, 0, 'the generation was cut short');
      assert.ok(x.ms < SETTLE_MS, `exit event ${x.ms} ms after process.exit`);
      assertAliveAndPromptExit(t, r);
    });
  }

  test('3 workers loading and generating, terminated at random moments, 6 times over', { timeout: 60_000 }, async (t) => {
    const r = await workers('many');
    assertClean(r, 0, 'many');
    const its = r.values.iteration as Array<Array<{ delay: number; ms: number; code: number; loaded: number; generated: number }>>;
    for (const [i, it] of its.entries()) show(t, `iteration ${i}`, it);
    show(t, 'main RSS', r.values.rss[0]);
    show(t, 'main timer ticks (20 ms) during the loop', r.values.ticks[0]);
    assert.equal(its.length, 6);
    for (const x of its.flat()) assert.ok(x.ms < SETTLE_MS, `terminate() after ${x.delay} ms took ${x.ms} ms`);
    assertAliveAndPromptExit(t, r);
  });
});

describe('the main thread leaving mid-generation', () => {
  test('process.exit(0) from a timer during a 512x512 generation exits 0 promptly', { timeout: 60_000 }, async (t) => {
    const r = await runChild('main-exit.mjs', [entry, modelPath, 'exit']);
    assertClean(r, 0, 'main process.exit');
    const lag = r.closedAt - r.values.T_EXIT[0];
    show(t, 'child runtime ms', r.ms);
    show(t, 'process.exit to close ms', lag);
    assert.doesNotMatch(r.stdout, /GENERATION FINISHED/);
    assert.ok(lag < EXIT_LAG_MS, `${lag} ms from process.exit to the process gone`);
  });

  test('an uncaught exception from a timer during a generation exits 1 promptly with the message', { timeout: 60_000 }, async (t) => {
    const r = await runChild('main-exit.mjs', [entry, modelPath, 'throw']);
    assertClean(r, 1, 'uncaught exception');
    const lag = r.closedAt - r.values.T_EXIT[0];
    show(t, 'child runtime ms', r.ms);
    show(t, 'throw to close ms', lag);
    assert.match(r.stderr, /Error: lifecycle: thrown from a timer mid-generation/);
    assert.doesNotMatch(r.stdout, /GENERATION FINISHED/);
    assert.ok(lag < EXIT_LAG_MS, `${lag} ms from the throw to the process gone`);
  });
});

describe('abort latency', () => {
  test('aborting inside one long step rejects with AbortError within 2 s', { timeout: 60_000 }, async (t) => {
    const r = await runChild('abort.mjs', [entry, modelPath]);
    assertClean(r, 0, 'abort');
    const out = r.values.abort as Array<Record<string, any>>;
    for (const x of out) show(t, `abort ${x.size}x${x.size} at ${x.when}`, x);
    assert.equal(out.length, 3);
    for (const x of out) {
      assert.equal(x.resolved, undefined, `${x.size} at ${x.when}: generation resolved instead of aborting`);
      assert.equal(x.name, 'AbortError', x.message);
      assert.equal(x.isAbortError, true, 'instanceof the package AbortError');
      assert.ok(x.latencyMs < 2000, `${x.size}x${x.size} aborted at ${x.when}: rejected ${x.latencyMs} ms after abort()`);
    }
    assert.equal(out[0].progress, 0, 'the 1024x1024 aborts land inside the first step');
    assert.equal(out[1].progress, 0);
    assert.deepEqual(r.values.after, [1], 'the model generates after the aborts');
  });
});
