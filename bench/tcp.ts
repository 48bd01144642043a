/**
 * How checkpoint and restore scale with the number of established TCP connections: a tree of
 * two processes (bench/fixtures/tcpconns.c) holding 100, 300 and 1,000 loopback connections
 * between them, 64 KiB unread in each direction of each (so both ends of every connection
 * are in the image, each with a 64 KiB receive queue), checkpointed with --tcp-established
 * (the network lock included, src/files/tcp-lock.ts) and restored. Each case runs in a fresh
 * node process, RUNS times; the best of each figure is printed in ms and in µs per
 * connection. A base case, the same tree with one connection, gives the fixed cost of the
 * tree; the cost per connection above it is printed for each size, then how flat it is: its
 * value at 1,000 connections over its value at 100 (1.00 is flat; up to about 1.3 is noise
 * and cache effects here, more means something grows faster than the connections).
 *
 * The image goes to a fresh directory under /dev/shm (tmpfs). Every restored tree checks its
 * root's side of every connection (SIGUSR1: PASS) before it is killed; every pid the bench
 * started or restored is killed if anything fails.
 *
 * Usage: node dist/bench/tcp.js (npm run bench:tcp). Needs root, nft(8) (the nftables package)
 * and a built tree (npm run build). FERRY_BENCH_PROFILE=DIR writes a V8 CPU profile of each
 * case process into DIR.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { loadConfig } from '../src/config/config.js';
import { PACKAGE_ROOT } from '../src/native/binding.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { alive, killAll, waitFor } from './procs.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const RUNS = 3;
const SIZES = [100, 300, 1000];

/** `--case DIR RUNS N`: one case, run in a fresh node process. */
const caseArgs = process.argv[2] === '--case' ? process.argv.slice(3) : undefined;
const dir = caseArgs?.[0] ?? mkdtempSync('/dev/shm/ferry-tcp-');
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const fixture = join(PACKAGE_ROOT, 'build', 'bench', 'tcpconns');
const files = { tcpEstablished: true };

const tracked = new Set<number>();
const children: ChildProcess[] = [];
interface Figures { frozenMs: number; checkpointMs: number; restoreMs: number; imageMiB: number }

/** One checkpoint + restore cycle of a fresh tree; the restored tree checks itself and is killed. */
async function cycle(run: string, n: number): Promise<Figures> {
  const log = join(dir, `${run}.log`);
  const fd = openSync(log, 'w');
  // The fixture's first process is a subreaper outside the tree: it reaps the killed tree at once.
  const child = spawn(fixture, [String(n)], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  children.push(child);
  tracked.add(child.pid!);
  let root = 0, peer = 0;
  await waitFor('the fixture to get ready', () => {
    const m = /ready pid=(\d+) child=(\d+)/.exec(readFileSync(log, 'utf8'));
    if (m) [root, peer] = [Number(m[1]), Number(m[2])];
    if (child.exitCode !== null) throw new Error(`tcpconns exited early: ${readFileSync(log, 'utf8').trim()}`);
    return m !== null;
  });
  tracked.add(root).add(peer);
  const image = join(dir, 'tcp.tar');
  const cp = await checkpoint({ pid: root, image, leaveRunning: false, config, logger, files });
  await waitFor('the tree to be gone', () => !alive(root) && !alive(peer) && !alive(child.pid!));
  const rs = await restore({ image, config, logger, files });
  if (rs.pid !== root) throw new Error(`restored pid ${rs.pid}, expected ${root}`);
  process.kill(root, 'SIGUSR1');
  await waitFor('the restored tree to check itself', () => /^(PASS|FAIL.*)$/m.test(readFileSync(log, 'utf8')), 20_000);
  const verdict = /^(PASS|FAIL.*)$/m.exec(readFileSync(log, 'utf8'))![1];
  const imageMiB = Number(readFileSync(image).length) / (1 << 20);
  killAll(tracked, children);
  await waitFor('the restored tree to be gone', () => !alive(root) && !alive(peer), 120_000);
  if (verdict !== 'PASS') throw new Error(`restored tree: ${verdict}`);
  rmSync(image, { force: true });
  return { frozenMs: cp.frozenMs, checkpointMs: cp.totalMs, restoreMs: rs.restoreMs, imageMiB };
}

async function runCaseHere(runs: number, n: number): Promise<void> {
  let best: Figures | undefined;
  try {
    for (let i = 0; i < runs; i++) {
      const f = await cycle(`run${i}`, n);
      best = best ? {
        frozenMs: Math.min(best.frozenMs, f.frozenMs),
        checkpointMs: Math.min(best.checkpointMs, f.checkpointMs),
        restoreMs: Math.min(best.restoreMs, f.restoreMs),
        imageMiB: f.imageMiB,
      } : f;
    }
  } finally {
    killAll(tracked, children);
  }
  console.log(JSON.stringify(best));
}

interface Row extends Figures { label: string; n: number }

function runCase(n: number, runs: number): Row {
  const label = `${n} connection${n > 1 ? 's' : ''}`;
  const prof = process.env.FERRY_BENCH_PROFILE;
  const flags = prof ? ['--cpu-prof', '--cpu-prof-dir', prof, '--cpu-prof-name', `tcp-${n}.cpuprofile`] : [];
  const r = spawnSync(process.execPath, [...flags, fileURLToPath(import.meta.url), '--case', dir, String(runs), String(n)],
    { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !last.startsWith('{')) throw new Error(`case ${label} failed (${r.signal ?? `exit status ${r.status}`})`);
  const row = { label, n, ...(JSON.parse(last) as Figures) };
  printRow(row);
  return row;
}

const ms = (v: number): string => v.toFixed(1).padStart(11);
const us = (v: number, n: number): string => (v * 1000 / n).toFixed(0).padStart(10);

function printRow(r: Row): void {
  console.log(`${r.label.padEnd(18)}${r.imageMiB.toFixed(1).padStart(9)}${ms(r.frozenMs)}${ms(r.checkpointMs)}${ms(r.restoreMs)}   `
    + `${us(r.frozenMs, r.n)}${us(r.checkpointMs, r.n)}${us(r.restoreMs, r.n).padStart(11)}`);
}

async function main(): Promise<void> {
  if (caseArgs) {
    await runCaseHere(Number(caseArgs[1]), Number(caseArgs[2]));
    return;
  }
  try {
    console.log(`ferry bench:tcp: checkpoint --tcp-established and restore per connection, best of ${RUNS} runs, image in ${dir} (tmpfs)`);
    console.log('each connection: both ends in the tree (two processes), 64 KiB unread each way');
    console.log(`${'case'.padEnd(18)}${'image MiB'.padStart(9)}${'frozen ms'.padStart(11)}${'ckpt ms'.padStart(11)}${'restore ms'.padStart(11)}   `
      + `${'frozen µs'.padStart(10)}${'ckpt µs'.padStart(10)}${'restore µs'.padStart(11)}  (µs: per connection)`);
    const base = runCase(1, RUNS);
    const rows = SIZES.map((n) => runCase(n, RUNS));
    type K = 'frozenMs' | 'checkpointMs' | 'restoreMs';
    const above = (r: Row, k: K): number => (r[k] - base[k]) * 1000 / (r.n - base.n);
    for (const r of rows) {
      console.log(`per connection above the base at ${String(r.n).padStart(4)}: frozen ${above(r, 'frozenMs').toFixed(0)} µs, `
        + `checkpoint ${above(r, 'checkpointMs').toFixed(0)} µs, restore ${above(r, 'restoreMs').toFixed(0)} µs`);
    }
    const a = rows[0]!, z = rows[rows.length - 1]!;
    const ratio = (k: K): string => (above(z, k) / above(a, k)).toFixed(2);
    console.log(`per-connection cost at ${z.n} / at ${a.n}: frozen ${ratio('frozenMs')}, checkpoint ${ratio('checkpointMs')}, restore ${ratio('restoreMs')} (1.00 = flat; ≤ 1.3 flat here)`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
