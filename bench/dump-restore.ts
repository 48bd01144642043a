/**
 * End-to-end checkpoint and restore of one process with dirty anonymous memory, several runs,
 * each printed as min / median / max next to the raw limits measured in the same run, on the
 * same memory and file system:
 *   process_vm_readv   reading the process's pages into chunk-sized buffers;
 *   file write+fsync   writing the same bytes (a copy of its memory) to a file next to the
 *                      image, then fsync, through the page cache (best of one before and one
 *                      after the checkpoint); without the fsync (page cache only); and with
 *                      O_DIRECT from aligned memory, then fsync, as a checkpoint writes an
 *                      image file (src/image/direct.ts);
 *   sha256             hashing the same bytes in 4 MiB chunks on one thread, and on two
 *                      threads at once (chunks hash independently: image-format.md);
 *   image file read    reading the image file back (page cache);
 *   /proc/PID/mem      writing the same amount into never-touched memory of a process.
 * Limits: a checkpoint must read, hash and write durably every page, so its limit is the
 * slowest of process_vm_readv, the faster of the two ways to write+fsync, and sha256 on two
 * threads; a restore must read, hash and write into the process: image read, /proc/PID/mem
 * and sha256 on two threads. Each run's figures are divided by that run's own limits, then
 * summarised. Checkpoint and restore times are end to end (the library call, from start to
 * the tree killed or running); the frozen time of the checkpoint is printed apart. The load
 * average is printed before and after: the machine may be shared.
 *
 * Usage: node dist/bench/dump-restore.js [SIZES_MIB] [DIR=/var/tmp] [--runs N=3]
 * SIZES_MIB is a size or a comma-separated list; by default 64,1024, and 4096 too when
 * FERRY_BENCH_4G=1 (a 4 GiB run takes about a minute here, most of it making the workload).
 * Needs root and a built tree (npm run build).
 */
import { execSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { directBuffer } from '../src/image/direct.js';
import { loadConfig } from '../src/config/config.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { parseMaps } from '../src/proc/maps.js';
import { closeInheritedFds } from '../src/proc/inherited.js';

const USAGE = `usage: node dist/bench/dump-restore.js [SIZES_MIB] [DIR=/var/tmp] [--runs N=3]
  SIZES_MIB dirty anonymous memory of the process, MiB, or a comma-separated
            list (default 64,1024; and 4096 with FERRY_BENCH_4G=1)
  DIR       where the image and the raw-write file go (its file system is measured)
  --runs N  runs to summarise as min / median / max (at least 1; 3 by default)`;

const args = process.argv.slice(2);
if (args.includes('--help') || args.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
let runs = 3;
const runsAt = args.indexOf('--runs');
if (runsAt >= 0) {
  runs = Number(args[runsAt + 1]);
  args.splice(runsAt, 2);
}
const sizes = (args[0] ?? `64,1024${process.env.FERRY_BENCH_4G === '1' ? ',4096' : ''}`).split(',').map(Number);
let sizeMib = sizes[0]!;
if (sizes.some((v) => !Number.isInteger(v) || v < 1) || !Number.isInteger(runs) || runs < 1) {
  console.error(USAGE);
  process.exit(2);
}

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const dir = mkdtempSync(join(args[1] ?? '/var/tmp', 'ferry-bench-'));
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const chunk = config.image.chunkSize;
/** Chunk of the hash limit: the image's chunk of page data (image/writer.ts, CHUNK_BYTES). */
const HASH_CHUNK = 4 << 20;

const mbps = (bytes: number, ms: number): number => bytes / 1048576 / (ms / 1000);

async function startBigmem(mode = ''): Promise<number> {
  // stdout must be a regular file: pipes and sockets are not checkpointable yet.
  const log = join(dir, `bigmem-${Date.now()}.log`);
  const fd = openSync(log, 'w');
  const child = spawn(join(PACKAGE_ROOT, 'build', 'bench', 'bigmem'), [String(sizeMib), ...(mode ? [mode] : [])], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  for (let i = 0; i < 600; i++) {
    if (readFileSync(log, 'utf8').includes('ready')) return child.pid!;
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('bigmem did not get ready');
}

/** The big area of bigmem: the largest anonymous mapping. */
function bigArea(pid: number): { start: number; len: number } {
  const vmas = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')).filter((v) => v.inode === 0n && v.path === '');
  vmas.sort((a, b) => Number((b.end - b.start) - (a.end - a.start)));
  const v = vmas[0]!;
  return { start: Number(v.start), len: Number(v.end - v.start) };
}

function readLimit(pid: number): number {
  const { start, len } = bigArea(pid);
  const buf = Buffer.allocUnsafe(chunk);
  const t = performance.now();
  for (let off = 0; off < len; off += chunk) {
    native().readMemory(pid, new Float64Array([start + off, Math.min(chunk, len - off)]), buf);
  }
  return mbps(len, performance.now() - t);
}

/** Flushes dirty pages so each write measurement starts from the same state. */
function flushDirty(): void {
  execSync('sync');
}

/** A copy of the process's big area (the very bytes the checkpoint writes), in shared memory for the hash threads. */
function snapshot(pid: number): Buffer {
  const { start, len } = bigArea(pid);
  const buf = Buffer.from(new SharedArrayBuffer(len));
  // In chunks: one process_vm_readv moves at most about 2 GiB (MAX_RW_COUNT).
  for (let off = 0; off < len; off += chunk) native().readMemory(pid, new Float64Array([start + off, Math.min(chunk, len - off)]), buf, off);
  return buf;
}

function writeLimit(data: Buffer, sync: boolean): number {
  flushDirty();
  const bytes = data.length;
  const path = join(dir, 'raw-write');
  const t = performance.now();
  const fd = openSync(path, 'w');
  for (let off = 0; off < bytes; off += chunk) writeSync(fd, data, off, Math.min(chunk, bytes - off));
  if (sync) fsyncSync(fd);
  closeSync(fd);
  const r = mbps(bytes, performance.now() - t);
  rmSync(path);
  return r;
}

/** The same write with O_DIRECT from aligned memory (a copy of `data` in it), then fsync. */
function directWriteLimit(data: Buffer): number {
  flushDirty();
  const path = join(dir, 'raw-direct');
  const src = directBuffer(Math.min(data.length, 4 * chunk));
  const t = performance.now();
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o600);
  for (let off = 0; off < data.length; off += chunk) {
    const n = Math.min(chunk, data.length - off);
    const at = off % src.length;
    writeSync(fd, src, at, n, off);
  }
  fsyncSync(fd);
  closeSync(fd);
  const r = mbps(data.length, performance.now() - t);
  rmSync(path);
  return r;
}

/** sha256 of `data` in HASH_CHUNK pieces on one thread (this one). */
function hashLimit1(data: Buffer): number {
  const t = performance.now();
  for (let off = 0; off < data.length; off += HASH_CHUNK) createHash('sha256').update(data.subarray(off, off + HASH_CHUNK)).digest();
  return mbps(data.length, performance.now() - t);
}

const HASH_THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.once('message', () => {
  const { sab, from, to, step } = workerData;
  for (let off = from; off < to; off += step) createHash('sha256').update(new Uint8Array(sab, off, Math.min(step, to - off))).digest();
  parentPort.postMessage('done');
});
parentPort.postMessage('ready');`;

/** The same on two worker threads at once, each taking every other half (started before the clock). */
async function hashLimit2(data: Buffer): Promise<number> {
  const sab = data.buffer as SharedArrayBuffer;
  const half = Math.ceil(data.length / HASH_CHUNK / 2) * HASH_CHUNK;
  const workers = [0, 1].map((i) => new Worker(HASH_THREAD, {
    eval: true, workerData: { sab, from: i * half, to: Math.min(data.length, (i + 1) * half), step: HASH_CHUNK },
  }));
  try {
    await Promise.all(workers.map((w) => new Promise((r) => w.once('message', r))));
    const t = performance.now();
    const done = workers.map((w) => new Promise((r) => w.once('message', r)));
    for (const w of workers) w.postMessage('go');
    await Promise.all(done);
    return mbps(data.length, performance.now() - t);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

function fileReadLimit(path: string): number {
  const buf = Buffer.allocUnsafe(chunk);
  const fd = openSync(path, 'r');
  const t = performance.now();
  let total = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, chunk, null);
    if (n <= 0) break;
    total += n;
  }
  closeSync(fd);
  return mbps(total, performance.now() - t);
}

function memWriteLimit(pid: number): number {
  const { start, len } = bigArea(pid);
  const buf = Buffer.alloc(chunk, 0x33);
  const fd = openSync(`/proc/${pid}/mem`, 'r+');
  const t = performance.now();
  for (let off = 0; off < len; off += chunk) writeSync(fd, buf, 0, Math.min(chunk, len - off), start + off);
  const r = mbps(len, performance.now() - t);
  closeSync(fd);
  return r;
}

/** What one run measured. */
interface Run {
  read: number;
  write: number;
  cacheWrite: number;
  direct: number;
  hash1: number;
  hash2: number;
  fileRead: number;
  memWrite: number;
  pagesBytes: number;
  imageBytes: number;
  cpMs: number;
  frozenMs: number;
  rsMs: number;
  verifyMs: number;
  verified: boolean;
}

async function oneRun(pids: number[]): Promise<Run> {
  const fresh = await startBigmem('untouched');
  pids.push(fresh);
  const memWrite = memWriteLimit(fresh); // faults in fresh pages, as restore does
  process.kill(fresh, 'SIGKILL');

  const pid = await startBigmem();
  pids.push(pid);
  const read = readLimit(pid);
  const image = join(dir, 'bigmem.tar');
  let same: Buffer | undefined = snapshot(pid); // the bytes the checkpoint will write
  writeLimit(same, false); // warm-up: the first large write of a run is always slower
  const cacheWrite = writeLimit(same, false);
  const writeA = writeLimit(same, true);
  const direct = directWriteLimit(same);
  const hash1 = hashLimit1(same);
  const hash2 = await hashLimit2(same);
  flushDirty();
  const cp = await checkpoint({ pid, image, leaveRunning: false, config, logger });
  const write = Math.max(writeA, writeLimit(same, true));
  same = undefined;
  const fileRead = fileReadLimit(image);
  await new Promise((r) => setTimeout(r, 200)); // let the parent (us) reap it
  const rs = await restore({ image, config, logger });
  process.kill(rs.pid, 'SIGUSR1');
  const st = native().waitpid(rs.pid);
  const imageBytes = statSync(image).size;
  rmSync(image);
  return {
    read, write, cacheWrite, direct, hash1, hash2, fileRead, memWrite, pagesBytes: cp.pagesBytes, imageBytes,
    cpMs: cp.totalMs, frozenMs: cp.frozenMs, rsMs: rs.totalMs, verifyMs: rs.verifyMs,
    verified: st?.exited === true && st.exitCode === 0,
  };
}

/** min, median, max. */
function summary(values: number[]): [number, number, number] {
  const s = [...values].sort((a, b) => a - b);
  return [s[0]!, s[Math.floor((s.length - 1) / 2)]!, s.at(-1)!];
}

/** Runs and prints the bench for sizeMib. */
async function benchSize(): Promise<boolean> {
  const pids: number[] = [];
  const done: Run[] = [];
  try {
    for (let i = 0; i < runs; i++) done.push(await oneRun(pids));
  } finally {
    for (const p of pids) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  }
  const bestWrite = (r: Run): number => Math.max(r.write, r.direct);
  const cpLimit = (r: Run): number => Math.min(r.read, bestWrite(r), r.hash2);
  const rsLimit = (r: Run): number => Math.min(r.fileRead, r.memWrite, r.hash2);
  const cpRate = (r: Run): number => mbps(r.pagesBytes, r.cpMs);
  const rsRate = (r: Run): number => mbps(r.pagesBytes, r.rsMs);
  const rows: Array<[string, (r: Run) => number, string]> = [
    ['raw    process_vm_readv', (r) => r.read, 'MB/s'],
    ['       file write+fsync (page cache)', (r) => r.write, 'MB/s'],
    ['       file write+fsync (O_DIRECT)', (r) => r.direct, 'MB/s'],
    ['       file write (page cache, no fsync)', (r) => r.cacheWrite, 'MB/s'],
    ['       sha256, 1 thread', (r) => r.hash1, 'MB/s'],
    ['       sha256, 2 threads', (r) => r.hash2, 'MB/s'],
    ['       image file read', (r) => r.fileRead, 'MB/s'],
    ['       /proc/PID/mem write (fresh memory)', (r) => r.memWrite, 'MB/s'],
    ['checkpoint  end to end', (r) => r.cpMs, 'ms'],
    ['            frozen', (r) => r.frozenMs, 'ms'],
    ['            throughput', cpRate, 'MB/s'],
    ['            limit min(read, write+fsync, sha256 x2)', cpLimit, 'MB/s'],
    ['            of the limit', (r) => cpRate(r) / cpLimit(r) * 100, '%'],
    ['            of min(read, write+fsync) alone', (r) => cpRate(r) / Math.min(r.read, bestWrite(r)) * 100, '%'],
    ['restore     end to end', (r) => r.rsMs, 'ms'],
    ['            verification before any process', (r) => r.verifyMs, 'ms'],
    ['            throughput', rsRate, 'MB/s'],
    ['            limit min(image read, mem write, sha256 x2)', rsLimit, 'MB/s'],
    ['            of the limit', (r) => rsRate(r) / rsLimit(r) * 100, '%'],
    ['            of min(image read, mem write) alone', (r) => rsRate(r) / Math.min(r.fileRead, r.memWrite) * 100, '%'],
  ];
  const first = done[0]!;
  console.log(`ferry bench: ${sizeMib} MiB of dirty anonymous memory, ${runs} run(s), chunk ${chunk >> 20} MiB, image in ${dir} `
    + `(${(first.imageBytes / 1048576).toFixed(1)} MiB for ${(first.pagesBytes / 1048576).toFixed(1)} MiB of pages); `
    + `load average ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
  const w = Math.max(...rows.map(([name]) => name.length));
  console.log(`${''.padEnd(w)}  ${'min'.padStart(8)} ${'median'.padStart(8)} ${'max'.padStart(8)}`);
  for (const [name, f, unit] of rows) {
    const [lo, mid, hi] = summary(done.map(f));
    console.log(`${name.padEnd(w)}  ${[lo, mid, hi].map((v) => v.toFixed(0).padStart(8)).join(' ')}  ${unit}`);
  }
  const passed = done.filter((r) => r.verified).length;
  console.log(`restored process verified its memory: ${passed === done.length ? 'PASS' : 'FAIL'} (${passed}/${done.length})\n`);
  return passed === done.length;
}

async function main(): Promise<void> {
  try {
    for (const size of sizes) {
      sizeMib = size;
      if (!await benchSize()) process.exitCode = 1;
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
