/**
 * Start-up: how long `ferry --version`, `ferry help` and `ferry checkpoint --help` take (all
 * three answered by the light bundle, ferry-light.cjs, without the engine's), as the ratio to a bare
 * `node -e 0` measured in the same run — the limit: no Node.js program starts faster than
 * node itself. Each round runs the bare node and every ferry case once, in a new order each
 * round, so a busy machine slows them alike and the ratio of each round stays meaningful even
 * when the times do not. The min, median and max of RUNS rounds are printed.
 *
 * The bare node runs without NODE_EXTRA_CA_CERTS, as the launchers run node (Node.js 20 reads
 * that file at start-up, 40 ms for Debian's bundle); ferry gets the environment as it is and
 * its launcher drops it. When it is set here, a last row shows the bare node with it. The
 * first line says which file bin/ferry runs: the code-cached start of the bundle, or dist/src
 * when the bundle is missing or older than dist/src (after a `tsc` alone; `npm run
 * build:bundle` makes it anew). A row runs the ES module bundle without the code cache, for
 * comparison (node itself, without the launcher).
 *
 * Two measures:
 * - wall: from spawn to exit, through bin/ferry (the shell launcher included), as a user sees it;
 * - in process: from the process's start to its 'exit' event (process.uptime(), read by a
 *   module preloaded with --import through NODE_OPTIONS), split into node's own bootstrap
 *   (performance.nodeTiming.bootstrapComplete) and the rest: for --version, whose own work is
 *   one write, the rest is the ESM loader and ferry's modules, i.e. the time to reach ferry's
 *   code. The bare node gets the same preload (which starts the ESM loader for it too).
 *
 * Usage: node dist/bench/startup.js [IMAGE]   (npm run bench:startup). Needs a built tree;
 * with IMAGE (a small image, e.g. of build/workloads/counter), `ferry inspect --image IMAGE`
 * is measured too. FERRY_BENCH_RUNS=N changes the number of rounds (default 20, at least 10).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { PACKAGE_ROOT } from '../src/native/binding.js';
import { showSpread } from './spread.js';

const RUNS = Math.max(10, Number(process.env.FERRY_BENCH_RUNS ?? 20) || 20);
const WARMUP = 3;
const FERRY = join(PACKAGE_ROOT, 'bin', 'ferry');
const ESM_BUNDLE = join(PACKAGE_ROOT, 'dist', 'bundle', 'ferry', 'ferry.js');

/** Preloaded into every measured process: prints its uptime and node's bootstrap time at exit. */
const PROBE = `data:text/javascript,${encodeURIComponent('process.on("exit", () => process.stderr.write('
  + '`\\nferry-startup-probe ${process.uptime() * 1000} ${performance.nodeTiming.bootstrapComplete}\\n`));')}`;

interface Case {
  name: string;
  file: string;
  args: string[];
  /** Run it without NODE_EXTRA_CA_CERTS (the others get the environment as it is). */
  dropCa?: boolean;
}

const image = process.argv[2];
const BASE: Case = { name: 'node -e 0 (the limit)', file: process.execPath, args: ['-e', '0'], dropCa: true };
const CASES: Case[] = [
  { name: 'ferry --version', file: FERRY, args: ['--version'] },
  { name: 'ferry help', file: FERRY, args: ['help'] },
  { name: 'ferry checkpoint --help', file: FERRY, args: ['checkpoint', '--help'] },
  // The same through the ES module bundle, without the code cache (what bin/ferry ran before).
  ...(existsSync(ESM_BUNDLE) ? [{ name: 'ES module bundle --version', file: process.execPath, args: [ESM_BUNDLE, '--version'], dropCa: true }] : []),
  ...(image !== undefined ? [{ name: 'ferry inspect (small image)', file: FERRY, args: ['inspect', '--image', image] }] : []),
  ...(process.env.NODE_EXTRA_CA_CERTS ? [{ name: 'node -e 0, NODE_EXTRA_CA_CERTS', file: process.execPath, args: ['-e', '0'] }] : []),
];

interface Sample {
  /** Spawn to exit, ms. */
  wall: number;
  /** Process start to its 'exit' event, ms. */
  uptime: number;
  /** Node's bootstrap, from the process start, ms. */
  bootstrap: number;
}

/** Runs `c` once (with the probe when `probe`) and returns its times. */
function once(c: Case, probe: boolean): Sample {
  const env = { ...process.env };
  if (c.dropCa === true) delete env.NODE_EXTRA_CA_CERTS;
  if (probe) env.NODE_OPTIONS = `${env.NODE_OPTIONS ?? ''} --import=${PROBE}`.trim();
  else delete env.NODE_OPTIONS;
  const start = process.hrtime.bigint();
  const r = spawnSync(c.file, c.args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const wall = Number(process.hrtime.bigint() - start) / 1e6;
  if (r.status !== 0) throw new Error(`${c.name} exited with ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  if (!probe) return { wall, uptime: NaN, bootstrap: NaN };
  const m = /^ferry-startup-probe (\S+) (\S+)$/m.exec(r.stderr);
  if (!m) throw new Error(`${c.name}: no probe line in its stderr: ${r.stderr.trim()}`);
  return { wall, uptime: Number(m[1]), bootstrap: Number(m[2]) };
}

/** A random order of `items` (Fisher-Yates). */
function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** "min / median / max" of `values`, with `digits` decimals. */
const shown = (values: number[], digits: number): string => showSpread(values, (v) => v.toFixed(digits).padStart(6), ' /');

/** RUNS rounds of the base and every case in a random order; the samples per case name. */
function measure(probe: boolean): Map<string, Sample[]> {
  const all = [BASE, ...CASES];
  const samples = new Map<string, Sample[]>(all.map((c) => [c.name, []]));
  for (let round = 0; round < WARMUP + RUNS; round++) {
    for (const c of shuffled(all)) {
      const s = once(c, probe);
      if (round >= WARMUP) samples.get(c.name)!.push(s);
    }
  }
  return samples;
}

const width = Math.max(...[BASE, ...CASES].map((c) => c.name.length)) + 2;
const row = (name: string, text: string): void => { console.log(`  ${name.padEnd(width)}${text}`); };

/**
 * What bin/ferry runs, by its own rule: the code-cached start of the bundle unless dist/src is
 * newer (in whole seconds), and whether the code cache is there.
 */
function entry(): string {
  const bundle = join('dist', 'bundle', 'ferry', 'start.cjs');
  const src = join('dist', 'src', 'cli', 'main.js');
  const seconds = (p: string): number => Math.floor(statSync(join(PACKAGE_ROOT, p)).mtimeMs / 1000);
  if (!existsSync(join(PACKAGE_ROOT, bundle))) return `${src} (no bundle: npm run build:bundle)`;
  if (seconds(src) > seconds(bundle)) return `${src} (the bundle is older: npm run build:bundle)`;
  const cache = join('dist', 'bundle', 'ferry', 'ferry.cjs.cache');
  const light = join('dist', 'bundle', 'ferry', 'ferry-light.cjs');
  return `${bundle} (${existsSync(join(PACKAGE_ROOT, cache)) ? 'with' : 'without'} its code cache; `
    + `${existsSync(join(PACKAGE_ROOT, light)) ? 'help and version from ferry-light.cjs' : 'no light bundle: help and version load the engine\'s'})`;
}

console.log(`ferry start-up, Node.js ${process.version}, bin/ferry runs ${entry()}, ${RUNS} rounds (min / median / max)`);
console.log('wall, spawn to exit (ms); ratio to node -e 0 of the same round:');
const wall = measure(false);
const base = wall.get(BASE.name)!;
row(BASE.name, `${shown(base.map((s) => s.wall), 1)} ms`);
for (const c of CASES) {
  const own = wall.get(c.name)!;
  row(c.name, `${shown(own.map((s) => s.wall), 1)} ms   ratio ${shown(own.map((s, i) => s.wall / base[i]!.wall), 2)}`);
}

console.log("in process, start to the 'exit' event (ms): node's bootstrap, then the rest (loader, modules, the command):");
const inside = measure(true);
for (const c of [BASE, ...CASES]) {
  const s = inside.get(c.name)!;
  row(c.name, `${shown(s.map((x) => x.uptime), 1)} ms   bootstrap ${shown(s.map((x) => x.bootstrap), 1)}   rest ${shown(s.map((x) => x.uptime - x.bootstrap), 1)}`);
}
