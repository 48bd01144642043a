/**
 * End-to-end checkpoint and restore of one process with dirty anonymous memory, several runs
 * per size, each printed as min / median / max next to the raw limits measured in the same run,
 * on the same memory and file system:
 *   process_vm_readv   reading the process's pages into chunk-sized buffers (one thread; the
 *                      buffers faulted in beforehand, as the checkpoint's are);
 *   file write+fsync   writing as many bytes (a copy of its memory, at most SAMPLE_MAX of it
 *                      repeated) to a file next to the image, then fsync, through the page
 *                      cache (best of one before and one after the checkpoint); without the
 *                      fsync (page cache only); and with O_DIRECT from aligned memory, then
 *                      fsync, as a checkpoint writes an image file (src/image/direct.ts);
 *   sha256             hashing that copy in 4 MiB chunks on one thread, and on two threads at
 *                      once (chunks hash independently: image-format.md);
 *   image read         reading the image file with O_DIRECT, several reads in flight (the
 *                      image as a checkpoint leaves it, not in the page cache), and again
 *                      through the page cache once it is there;
 *   /proc/PID/mem      writing as much into never-touched memory of a process.
 * Two limits are printed for each side, and each run's figures divided by its own:
 *   slowest stage      the goal's limit (issue 12): the slowest of the stages a checkpoint
 *                      must go through (read, sha256 on two threads, the faster durable
 *                      write), or a restore (image read, sha256 on two threads, mem write);
 *   pipeline bound     what the stages allow together on this machine's cores: the stages
 *                      that run on a CPU (process_vm_readv, sha256, a buffered read, the mem
 *                      write) share the cores, so their times per byte add up and are divided
 *                      by the parallelism sha256 measured on two threads (at most the cores);
 *                      the disk's own stages (an O_DIRECT write or read) take no CPU to speak
 *                      of and are bounds of their own. It is the lower, and the honest, one.
 * Checkpoint and restore times are end to end (the library call, from start to the tree killed
 * or running); the frozen time of the checkpoint is printed apart. Each run restores twice:
 * first from the image as the checkpoint left it (written with O_DIRECT: not in the page
 * cache, as after a reboot or a copy), then once the image was read into the page cache.
 * The load average is printed before and after: the machine may be shared.
 *
 * Usage: node dist/bench/dump-restore.js [SIZES_MIB=64,1024,4096] [DIR=/var/tmp] [--runs N=3]
 * Needs root and a built tree (npm run build); 4 GiB needs about 10 GiB of free memory.
 */
import { execSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, constants, fsyncSync, mkdtempSync, openSync, read, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { directBuffer, faultedIn } from '../src/image/direct.js';
import { loadConfig } from '../src/config/config.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { parseMaps } from '../src/proc/maps.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { spread } from './spread.js';

const USAGE = `usage: node dist/bench/dump-restore.js [SIZES_MIB] [DIR=/var/tmp] [--runs N=3]
  SIZES_MIB dirty anonymous memory of the process, MiB, or a comma-separated
            list (default 64,1024,4096)
  DIR       where the image and the raw-write file go (its file system is measured)
  --runs N  runs of each size to summarise as min / median / max (3 by default)`;

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
const sizes = (args[0] ?? '64,1024,4096').split(',').map(Number);
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
/**
 * The copy of the process's memory that the write and hash limits use holds at most this much
 * (repeated to the full size for the writes): a rate per byte, which 1 GiB measures as well
 * as 4, and 4 GiB more of memory would crowd the machine.
 */
const SAMPLE_MAX = 1 << 30;
/** Reads in flight when the image is read with O_DIRECT (as restore reads it: image/chunks.ts). */
const READ_DEPTH = 4;

const mbps = (bytes: number, ms: number): number => bytes / 1048576 / (ms / 1000);

/** The output file of the last bigmem started. */
let bigmemLog = '';

async function startBigmem(mode = ''): Promise<number> {
  // stdout must be a regular file: pipes and sockets are not checkpointable yet.
  const log = (bigmemLog = join(dir, `bigmem-${Date.now()}.log`));
  const fd = openSync(log, 'w');
  const child = spawn(join(PACKAGE_ROOT, 'build', 'bench', 'bigmem'), [String(sizeMib), ...(mode ? [mode] : [])], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  for (let i = 0; i < 1200; i++) {
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
  const buf = faultedIn(directBuffer(chunk)); // as ferry's own: faulted in beforehand (direct.ts)
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

/**
 * A copy of the start of the process's big area (the very bytes the checkpoint writes, at most
 * SAMPLE_MAX of them), in shared memory for the hash threads; `bytes` is the whole area's size.
 */
function snapshot(pid: number): { data: Buffer; bytes: number } {
  const { start, len } = bigArea(pid);
  const data = Buffer.from(new SharedArrayBuffer(Math.min(len, SAMPLE_MAX)));
  // In chunks: one process_vm_readv moves at most about 2 GiB (MAX_RW_COUNT).
  for (let off = 0; off < data.length; off += chunk) native().readMemory(pid, new Float64Array([start + off, Math.min(chunk, data.length - off)]), data, off);
  return { data, bytes: len };
}

/** Writes `bytes` (`data` repeated) to a fresh file through the page cache, then fsync if `sync`. */
function writeLimit({ data, bytes }: { data: Buffer; bytes: number }, sync: boolean): number {
  flushDirty();
  const path = join(dir, 'raw-write');
  const t = performance.now();
  const fd = openSync(path, 'w');
  for (let off = 0; off < bytes; off += chunk) {
    const at = off % data.length;
    writeSync(fd, data, at, Math.min(chunk, bytes - off, data.length - at));
  }
  if (sync) fsyncSync(fd);
  closeSync(fd);
  const r = mbps(bytes, performance.now() - t);
  rmSync(path);
  return r;
}

/** The same write with O_DIRECT from aligned memory (a copy of `data` in it), then fsync. */
function directWriteLimit({ data, bytes }: { data: Buffer; bytes: number }): number {
  flushDirty();
  const path = join(dir, 'raw-direct');
  const src = directBuffer(Math.min(bytes, 4 * chunk));
  data.copy(src, 0, 0, src.length);
  const t = performance.now();
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DIRECT, 0o600);
  for (let off = 0; off < bytes; off += chunk) {
    const n = Math.min(chunk, bytes - off);
    const at = off % src.length;
    writeSync(fd, src, at, n, off);
  }
  fsyncSync(fd);
  closeSync(fd);
  const r = mbps(bytes, performance.now() - t);
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

/** Reads the image through the page cache, one chunk at a time. */
function cachedReadLimit(path: string): number {
  const buf = faultedIn(directBuffer(chunk)); // as ferry's own: faulted in beforehand (direct.ts)
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

/**
 * Reads the image with O_DIRECT, READ_DEPTH reads of HASH_CHUNK in flight: the disk's rate,
 * and the page cache left as it was (a checkpoint writes the image with O_DIRECT too).
 */
async function directReadLimit(path: string): Promise<number> {
  const size = statSync(path).size;
  const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECT);
  const bufs = Array.from({ length: READ_DEPTH }, () => faultedIn(directBuffer(HASH_CHUNK)));
  let next = 0;
  const t = performance.now();
  try {
    await Promise.all(bufs.map(async (buf) => {
      while (next < size) {
        const at = next;
        next += HASH_CHUNK;
        await new Promise<void>((resolve, reject) => read(fd, buf, 0, HASH_CHUNK, at, (err) => (err ? reject(err) : resolve())));
      }
    }));
  } finally {
    closeSync(fd);
  }
  return mbps(size, performance.now() - t);
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
  diskRead: number;
  cacheRead: number;
  memWrite: number;
  pagesBytes: number;
  imageBytes: number;
  cpMs: number;
  frozenMs: number;
  /** Restore of the image as the checkpoint left it (not in the page cache), and once cached. */
  rsColdMs: number;
  rsWarmMs: number;
  verified: number;
}

/** Restores `image`, has the process check its memory; whether it passed. */
async function restoreAndCheck(image: string): Promise<{ ms: number; ok: boolean }> {
  const rs = await restore({ image, config, logger });
  process.kill(rs.pid, 'SIGUSR1');
  const st = native().waitpid(rs.pid);
  return { ms: rs.totalMs, ok: st?.exited === true && st.exitCode === 0 };
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
  let same: ReturnType<typeof snapshot> | undefined = snapshot(pid); // the bytes the checkpoint will write
  writeLimit(same, false); // warm-up: the first large write of a run is always slower
  const cacheWrite = writeLimit(same, false);
  const writeA = writeLimit(same, true);
  const direct = directWriteLimit(same);
  const hash1 = hashLimit1(same.data);
  const hash2 = await hashLimit2(same.data);
  flushDirty();
  const cp = await checkpoint({ pid, image, leaveRunning: false, config, logger });
  // Its output file as it was, to be put back before the second restore (restore checks it).
  const log = bigmemLog;
  execSync(`cp -p ${log} ${log}.kept`);
  const write = Math.max(writeA, writeLimit(same, true));
  same = undefined;
  const diskRead = await directReadLimit(image);
  await new Promise((r) => setTimeout(r, 200)); // let the parent (us) reap it
  const cold = await restoreAndCheck(image);
  cachedReadLimit(image); // into the page cache (the first read of fresh page cache is slow here)
  const cacheRead = cachedReadLimit(image);
  execSync(`cp -p ${log}.kept ${log}`); // the same bytes and mtime, in place
  const warm = await restoreAndCheck(image);
  const imageBytes = statSync(image).size;
  rmSync(image);
  return {
    read, write, cacheWrite, direct, hash1, hash2, diskRead, cacheRead, memWrite, pagesBytes: cp.pagesBytes, imageBytes,
    cpMs: cp.totalMs, frozenMs: cp.frozenMs, rsColdMs: cold.ms, rsWarmMs: warm.ms,
    verified: Number(cold.ok) + Number(warm.ok),
  };
}

/** How many threads' worth of CPU work run at once: sha256's speed-up on two threads, at most the cores. */
const parallel = (r: Run): number => Math.min(availableParallelism(), Math.max(1, r.hash2 / r.hash1));
/** The rate of stages that share the cores, given each one's rate on one thread. */
const onCores = (r: Run, ...rates: number[]): number => parallel(r) / rates.reduce((s, v) => s + 1 / v, 0);

/** Runs and prints the bench for sizeMib. */
async function benchSize(): Promise<boolean> {
  const pids: number[] = [];
  const done: Run[] = [];
  const loadBefore = loadavg();
  try {
    for (let i = 0; i < runs; i++) done.push(await oneRun(pids));
  } finally {
    for (const p of pids) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  }
  const bestWrite = (r: Run): number => Math.max(r.write, r.direct);
  const cpStage = (r: Run): number => Math.min(r.read, bestWrite(r), r.hash2);
  const cpBound = (r: Run): number => Math.min(cpStage(r), r.direct >= r.write ? onCores(r, r.read, r.hash1) : onCores(r, r.read, r.hash1, r.write));
  const rsColdStage = (r: Run): number => Math.min(r.diskRead, r.memWrite, r.hash2);
  const rsColdBound = (r: Run): number => Math.min(rsColdStage(r), onCores(r, r.hash1, r.memWrite));
  const rsWarmStage = (r: Run): number => Math.min(r.cacheRead, r.memWrite, r.hash2);
  const rsWarmBound = (r: Run): number => Math.min(rsWarmStage(r), onCores(r, r.cacheRead, r.hash1, r.memWrite));
  const rate = (ms: (r: Run) => number) => (r: Run): number => mbps(r.pagesBytes, ms(r));
  const cpRate = rate((r) => r.cpMs);
  const coldRate = rate((r) => r.rsColdMs);
  const warmRate = rate((r) => r.rsWarmMs);
  const pct = (a: (r: Run) => number, b: (r: Run) => number) => (r: Run): number => a(r) / b(r) * 100;
  const rows: Array<[string, (r: Run) => number, string]> = [
    ['raw    process_vm_readv', (r) => r.read, 'MB/s'],
    ['       file write+fsync (page cache)', (r) => r.write, 'MB/s'],
    ['       file write+fsync (O_DIRECT)', (r) => r.direct, 'MB/s'],
    ['       file write (page cache, no fsync)', (r) => r.cacheWrite, 'MB/s'],
    ['       sha256, 1 thread', (r) => r.hash1, 'MB/s'],
    ['       sha256, 2 threads', (r) => r.hash2, 'MB/s'],
    ['       image read (O_DIRECT, not cached)', (r) => r.diskRead, 'MB/s'],
    ['       image read (page cache, cached)', (r) => r.cacheRead, 'MB/s'],
    ['       /proc/PID/mem write (fresh memory)', (r) => r.memWrite, 'MB/s'],
    ['checkpoint  end to end', (r) => r.cpMs, 'ms'],
    ['            frozen', (r) => r.frozenMs, 'ms'],
    ['            throughput', cpRate, 'MB/s'],
    ['            slowest stage (the goal\'s limit)', cpStage, 'MB/s'],
    ['            pipeline bound on the cores', cpBound, 'MB/s'],
    ['            of the slowest stage (goal >= 90)', pct(cpRate, cpStage), '%'],
    ['            of the pipeline bound', pct(cpRate, cpBound), '%'],
    ['restore     image not cached: end to end', (r) => r.rsColdMs, 'ms'],
    ['            throughput', coldRate, 'MB/s'],
    ['            slowest stage (the goal\'s limit)', rsColdStage, 'MB/s'],
    ['            pipeline bound on the cores', rsColdBound, 'MB/s'],
    ['            of the slowest stage (goal >= 80)', pct(coldRate, rsColdStage), '%'],
    ['            of the pipeline bound', pct(coldRate, rsColdBound), '%'],
    ['restore     image cached: end to end', (r) => r.rsWarmMs, 'ms'],
    ['            throughput', warmRate, 'MB/s'],
    ['            slowest stage (the goal\'s limit)', rsWarmStage, 'MB/s'],
    ['            pipeline bound on the cores', rsWarmBound, 'MB/s'],
    ['            of the slowest stage (goal >= 80)', pct(warmRate, rsWarmStage), '%'],
    ['            of the pipeline bound', pct(warmRate, rsWarmBound), '%'],
  ];
  const first = done[0]!;
  const load = (l: number[]): string => l.map((v) => v.toFixed(2)).join(' ');
  console.log(`ferry bench: ${sizeMib} MiB of dirty anonymous memory, ${runs} run(s), chunk ${chunk >> 20} MiB, image in ${dir} `
    + `(${(first.imageBytes / 1048576).toFixed(1)} MiB for ${(first.pagesBytes / 1048576).toFixed(1)} MiB of pages); `
    + `${availableParallelism()} cores, load average ${load(loadBefore)} before, ${load(loadavg())} after`);
  const w = Math.max(...rows.map(([name]) => name.length));
  console.log(`${''.padEnd(w)}  ${'min'.padStart(8)} ${'median'.padStart(8)} ${'max'.padStart(8)}`);
  for (const [name, f, unit] of rows) {
    const { min: lo, median: mid, max: hi } = spread(done.map(f));
    console.log(`${name.padEnd(w)}  ${[lo, mid, hi].map((v) => v.toFixed(0).padStart(8)).join(' ')}  ${unit}`);
  }
  const passed = done.reduce((s, r) => s + r.verified, 0);
  console.log(`restored processes verified their memory: ${passed === 2 * done.length ? 'PASS' : 'FAIL'} (${passed}/${2 * done.length})\n`);
  return passed === 2 * done.length;
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
