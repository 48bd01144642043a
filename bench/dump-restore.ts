/**
 * Dump and restore throughput of one process with dirty anonymous memory, printed next to the
 * raw limits measured in the same run on the same memory and file system:
 *   read limit   process_vm_readv of the same pages into the same chunk size;
 *   write limit  writing the same bytes (a copy of the process's memory) to a file next to
 *                the image, with the fsync the dump also does (best of two runs, one before
 *                and one after the dump), and without it (page cache only);
 *   dump limit   the slower of read and write+fsync (the dump must do both);
 *   restore limit  the slower of reading the image file (page cache) and writing the same
 *                bytes into never-touched memory of a process through /proc/PID/mem.
 *
 * Usage: node dist/bench/dump-restore.js [SIZE_MIB=1024] [DIR=/var/tmp]
 * Needs root and a built tree (npm run build).
 */
import { execSync, spawn } from 'node:child_process';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { checkpoint, restore } from '../src/index.js';
import { loadConfig } from '../src/config/config.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { parseMaps } from '../src/proc/maps.js';
import { closeInheritedFds } from '../src/proc/inherited.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const sizeMib = Number(process.argv[2] ?? 1024);
const dir = mkdtempSync(join(process.argv[3] ?? '/var/tmp', 'ferry-bench-'));
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const chunk = config.image.chunkSize;

const mbps = (bytes: number, ms: number): number => bytes / 1048576 / (ms / 1000);
const fmt = (v: number): string => v.toFixed(0).padStart(7);

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

/** A copy of the process's big area: the very bytes the dump will write. */
function snapshot(pid: number): Buffer {
  const { start, len } = bigArea(pid);
  const buf = Buffer.allocUnsafe(len);
  native().readMemory(pid, new Float64Array([start, len]), buf);
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

async function main(): Promise<void> {
  const pids: number[] = [];
  try {
    const probe = await startBigmem();
    pids.push(probe);
    const read = readLimit(probe);
    process.kill(probe, 'SIGKILL');
    const fresh = await startBigmem('untouched');
    pids.push(fresh);
    const memWrite = memWriteLimit(fresh); // faults in fresh pages, as restore does
    process.kill(fresh, 'SIGKILL');

    const pid = await startBigmem();
    pids.push(pid);
    const image = join(dir, 'bigmem.tar');
    let same: Buffer | undefined = snapshot(pid); // the bytes the dump will write
    writeLimit(same, false); // warm-up: the first large write of a run is always slower
    const cacheWrite = writeLimit(same, false);
    const writeA = writeLimit(same, true);
    flushDirty();
    const cp = await checkpoint({ pid, image, leaveRunning: false, config, logger });
    const write = Math.max(writeA, writeLimit(same, true));
    same = undefined;
    const fileRead = fileReadLimit(image);
    await new Promise((r) => setTimeout(r, 200)); // let the parent (us) reap it
    const rs = await restore({ image, config, logger });
    process.kill(rs.pid, 'SIGUSR1');
    const st = native().waitpid(rs.pid);
    const verified = st?.exited && st.exitCode === 0 ? 'PASS' : 'FAIL';

    const dump = mbps(cp.pagesBytes, cp.totalMs);
    const rest = mbps(rs.pagesBytes, rs.restoreMs);
    const dumpLimit = Math.min(read, write);
    const restoreLimit = Math.min(fileRead, memWrite);
    const pct = (a: number, b: number): string => `${(a / b * 100).toFixed(0)}%`.padStart(5);
    console.log(`ferry bench: ${sizeMib} MiB of dirty anonymous memory, chunk ${chunk >> 20} MiB, image in ${dir}`);
    console.log(`raw limits  process_vm_readv ${fmt(read)} MB/s   file write+fsync ${fmt(write)} MB/s   file write (page cache) ${fmt(cacheWrite)} MB/s`);
    console.log(`            image file read  ${fmt(fileRead)} MB/s   /proc/PID/mem write into fresh memory ${fmt(memWrite)} MB/s`);
    console.log(`dump        ${fmt(dump)} MB/s = ${pct(dump, dumpLimit)} of min(process_vm_readv, write+fsync) ${fmt(dumpLimit)} MB/s; ${pct(dump, Math.min(read, cacheWrite))} of min(process_vm_readv, page-cache write)`);
    console.log(`restore     ${fmt(rest)} MB/s = ${pct(rest, restoreLimit)} of min(image read, /proc/PID/mem write) ${fmt(restoreLimit)} MB/s (image verification: ${rs.verifyMs.toFixed(0)} ms before)`);
    console.log(`stop time   ${cp.frozenMs.toFixed(0)} ms (checkpoint total ${cp.totalMs.toFixed(0)} ms)   restore total ${rs.totalMs.toFixed(0)} ms`);
    console.log(`image       ${(statSync(image).size / 1048576).toFixed(1)} MiB for ${(cp.pagesBytes / 1048576).toFixed(1)} MiB of pages`);
    console.log(`restored process verified its memory: ${verified}`);
    if (verified !== 'PASS') process.exitCode = 1;
  } finally {
    for (const p of pids) {
      try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
