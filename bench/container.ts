/**
 * Checkpoint and restore of a runc container holding SIZE_MIB of dirty anonymous memory
 * (build/bench/ctrmem, static, copied into a busybox rootfs), through the container library as
 * `ferry checkpoint ID` and `ferry restore ID` run it, printed next to the raw limits measured
 * in the same run:
 *   read limit     process_vm_readv of the container's own memory, in the same chunk size;
 *   write limit    writing the same bytes to a file next to the image, with the fsync the dump
 *                  does (best of one run before and one after the checkpoint), and without;
 *   restore limit  the slower of reading the image file and writing the same amount into
 *                  never-touched memory through /proc/PID/mem (a ctrmem outside any container).
 * The same checkpoint of a plain process with the same memory (ctrmem outside any container)
 * is run beside each container's (before it in odd runs, after it in even ones: the disk's
 * state after a big write moves a checkpoint by tens of ms), and the two compared run by run
 * (throughput ratio, frozen difference). Each run is a new container; the figures are the
 * min / median / max of N runs.
 * Frozen is the time the container's tasks were stopped during the checkpoint, from the cgroup
 * freeze to the kill; downtime is
 * from the freeze to the restored container running again (checkpoint, then restore, back to
 * back, as a migration to the same host would do it).
 *
 * Usage: node dist/bench/container.js [SIZE_MIB=256] [DIR=/var/tmp] [--runs N=3]
 * Needs root, runc, busybox-static and a built tree (npm run build). Whatever happens, its
 * containers are deleted and its directory removed.
 */
import { execSync, spawn, spawnSync } from 'node:child_process';
import { closeSync, copyFileSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import pino from 'pino';
import { loadConfig } from '../src/config/config.js';
import { checkpointContainer } from '../src/container/checkpoint.js';
import { checkpoint } from '../src/dump/checkpoint.js';
import { restoreContainer } from '../src/container/restore.js';
import { directBuffer, faultedIn } from '../src/image/direct.js';
import { Runtime } from '../src/container/runtime.js';
import { native, PACKAGE_ROOT } from '../src/native/binding.js';
import { parseMaps } from '../src/proc/maps.js';
import { closeInheritedFds } from '../src/proc/inherited.js';
import { showSpread } from './spread.js';

// The workloads start with descriptors 0-2 only, whatever the shell leaked to us (src/proc/inherited.ts).
closeInheritedFds();

const cli = process.argv.slice(2);
let runs = 3;
const runsAt = cli.indexOf('--runs');
if (runsAt >= 0) {
  runs = Number(cli[runsAt + 1]);
  cli.splice(runsAt, 2);
}
const sizeMib = Number(cli[0] ?? 256);
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(sizeMib) || sizeMib < 1) {
  console.error('usage: node dist/bench/container.js [SIZE_MIB=256] [DIR=/var/tmp] [--runs N=3]');
  process.exit(2);
}
const dir = mkdtempSync(join(cli[1] ?? '/var/tmp', 'ferry-bench-ctr-'));
const config = loadConfig({});
const logger = pino({ level: 'silent' });
const chunk = config.image.chunkSize;
const CTRMEM = join(PACKAGE_ROOT, 'build', 'bench', 'ctrmem');
const ID = `ferry-bench-${process.pid}`;
const state = join(dir, 'runc');
const runc = new Runtime('runc', state);

const mbps = (bytes: number, ms: number): number => bytes / 1048576 / (ms / 1000);
const fmt = (v: number): string => v.toFixed(0).padStart(6);
const ms = (v: number): string => `${v.toFixed(0)} ms`;

async function waitForText(file: string, text: string, what: string): Promise<void> {
  for (let i = 0; i < 1200; i++) {
    if (readFileSync(file, 'utf8').includes(text)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A bundle whose rootfs is busybox plus ctrmem, running `ctrmem SIZE_MIB`. */
function makeBundle(): string {
  const bundle = join(dir, 'bundle');
  const rootfs = join(bundle, 'rootfs');
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync('/bin/busybox', join(rootfs, 'bin', 'busybox'));
  symlinkSync('busybox', join(rootfs, 'bin', 'sh'));
  // ctrmem sits at its host path inside the rootfs too: the dump stats a mapped file by the path
  // /proc/PID/maps shows, resolved on the host, not in the container (src/dump/memory.ts).
  mkdirSync(join(rootfs, dirname(CTRMEM)), { recursive: true });
  execSync(`cp -p ${CTRMEM} ${join(rootfs, CTRMEM)} && chmod 755 ${join(rootfs, 'bin', 'busybox')}`);
  const spec = spawnSync(runc.path, ['spec', '--bundle', bundle], { encoding: 'utf8' });
  if (spec.status !== 0) throw new Error(`runc spec: ${spec.stderr}`);
  const c = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8')) as Record<string, any>;
  c.process.terminal = false;
  c.process.args = [CTRMEM, String(sizeMib)];
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(c));
  return bundle;
}

/** The container's big area: its largest anonymous mapping. */
function bigArea(pid: number): { start: number; len: number } {
  const v = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')).filter((m) => m.inode === 0n && m.path === '')
    .sort((a, b) => Number((b.end - b.start) - (a.end - a.start)))[0]!;
  return { start: Number(v.start), len: Number(v.end - v.start) };
}

function readLimit(pid: number): number {
  const { start, len } = bigArea(pid);
  const buf = faultedIn(directBuffer(chunk)); // as ferry's own: faulted in beforehand (direct.ts)
  const t = performance.now();
  for (let off = 0; off < len; off += chunk) native().readMemory(pid, new Float64Array([start + off, Math.min(chunk, len - off)]), buf);
  return mbps(len, performance.now() - t);
}

function writeLimit(data: Buffer, sync: boolean): number {
  execSync('sync'); // each run starts with no dirty pages of ours
  const path = join(dir, 'raw-write');
  const t = performance.now();
  const fd = openSync(path, 'w');
  for (let off = 0; off < data.length; off += chunk) writeSync(fd, data, off, Math.min(chunk, data.length - off));
  if (sync) fsyncSync(fd);
  closeSync(fd);
  const r = mbps(data.length, performance.now() - t);
  rmSync(path);
  return r;
}

function fileReadLimit(path: string): number {
  const buf = faultedIn(directBuffer(chunk)); // as ferry's own: faulted in beforehand (direct.ts)
  const fd = openSync(path, 'r');
  const t = performance.now();
  let total = 0;
  for (let n; (n = readSync(fd, buf, 0, chunk, null)) > 0;) total += n;
  closeSync(fd);
  return mbps(total, performance.now() - t);
}

/**
 * The same checkpoint of a ctrmem of the same memory outside any container (a plain process,
 * our child): what the container path is compared with.
 */
async function plainCheckpoint(): Promise<{ totalMs: number; frozenMs: number; pagesBytes: number }> {
  const log = join(dir, 'plain.log');
  const fd = openSync(log, 'w');
  const child = spawn(CTRMEM, [String(sizeMib)], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  try {
    await waitForText(log, 'ready', 'the plain ctrmem');
    execSync('sync');
    const cp = await checkpoint({ pid: child.pid!, image: join(dir, 'plain.tar'), leaveRunning: false, config, logger });
    rmSync(join(dir, 'plain.tar'));
    return cp;
  } finally {
    child.kill('SIGKILL');
  }
}

/** /proc/PID/mem writes into never-touched memory of a ctrmem outside any container. */
async function memWriteLimit(): Promise<number> {
  const log = join(dir, 'untouched.log');
  const fd = openSync(log, 'w');
  const child = spawn(CTRMEM, [String(sizeMib), 'untouched'], { stdio: ['ignore', fd, fd], detached: true });
  closeSync(fd);
  try {
    await waitForText(log, 'ready', 'the untouched ctrmem');
    const { start, len } = bigArea(child.pid!);
    const buf = Buffer.alloc(chunk, 0x33);
    const mem = openSync(`/proc/${child.pid}/mem`, 'r+');
    const t = performance.now();
    for (let off = 0; off < len; off += chunk) writeSync(mem, buf, 0, Math.min(chunk, len - off), start + off);
    const r = mbps(len, performance.now() - t);
    closeSync(mem);
    return r;
  } finally {
    child.kill('SIGKILL');
  }
}

interface Run {
  cp: Awaited<ReturnType<typeof checkpointContainer>>;
  rs: Awaited<ReturnType<typeof restoreContainer>>;
  plain: Awaited<ReturnType<typeof plainCheckpoint>>;
  downtime: number;
  verified: boolean;
}

/** A container of its own (`id`), checkpointed, restored, its memory checked, deleted; beside it, the plain process. */
async function oneRun(i: number, bundle: string, limits: (pid: number) => Promise<void>): Promise<Run> {
  const id = `${ID}-${i}`;
  const log = join(dir, `ctrmem-${i}.log`);
  const out = openSync(log, 'a');
  try {
    const run = spawnSync(runc.path, ['--root', state, 'run', '-d', '--bundle', bundle, id], { stdio: ['ignore', out, out], timeout: 60000 });
    if (run.status !== 0) throw new Error(`runc run failed: ${readFileSync(log, 'utf8').trim()}`);
  } finally {
    closeSync(out);
  }
  try {
    await waitForText(log, 'ready', 'the container to dirty its memory');
    await limits(runc.state(id).pid);
    // Alternated, so that neither always runs on a disk the other has just written to.
    const plainFirst = i % 2 === 1 ? await plainCheckpoint() : undefined;
    execSync('sync');
    const image = join(dir, 'ctr.tar');
    const t0 = performance.now();
    const cp = await checkpointContainer({ id, runtime: 'runc', root: state, image, leaveRunning: false, config, logger });
    const rs = await restoreContainer({ id, runtime: 'runc', root: state, image, config, logger });
    const downtime = performance.now() - t0; // from just before the freeze (runc state, config) to running again
    if (i === 0) fileRead = fileReadLimit(image);
    rmSync(image);
    process.kill(runc.state(id).pid, 'SIGUSR1');
    await waitForText(log, 'PASS', 'the restored container to check its memory').catch(() => undefined);
    const verified = /^PASS$/m.test(readFileSync(log, 'utf8'));
    const plain = plainFirst ?? await plainCheckpoint();
    return { cp, rs, plain, downtime, verified };
  } finally {
    try { runc.run(['delete', '--force', id], `container ${id}`); } catch { /* gone */ }
  }
}

let fileRead = 0;

async function main(): Promise<void> {
  try {
    const bundle = makeBundle();
    let read = 0, cacheWrite = 0, write = 0, memWrite = 0, len = 0;
    // The raw limits, once, on the first container's memory.
    const limits = async (pid: number): Promise<void> => {
      if (read > 0) return;
      read = readLimit(pid);
      const area = bigArea(pid);
      len = area.len;
      const same = Buffer.allocUnsafe(len); // the bytes the dump will write
      // In chunks: one process_vm_readv moves at most about 2 GiB (MAX_RW_COUNT).
      for (let off = 0; off < len; off += chunk) native().readMemory(pid, new Float64Array([area.start + off, Math.min(chunk, len - off)]), same, off);
      writeLimit(same, false); // warm-up: the first large write of a run is slower
      cacheWrite = writeLimit(same, false);
      write = Math.max(writeLimit(same, true), writeLimit(same, true));
      memWrite = await memWriteLimit();
    };
    const done: Run[] = [];
    for (let i = 0; i < runs; i++) done.push(await oneRun(i, bundle, limits));

    const dumpLimit = Math.min(read, write);
    const restoreLimit = Math.min(fileRead, memWrite);
    const cps = done.map((r) => r.cp);
    const rss = done.map((r) => r.rs);
    const plains = done.map((r) => r.plain);
    const rate = (bytes: number, t: number): number => mbps(bytes, t);
    const ms0 = (v: number): string => v.toFixed(0);
    const mb = (v: number): string => v.toFixed(0);
    const pc = (v: number): string => `${v.toFixed(0)}%`;
    console.log(`ferry bench:container: runc container with ${sizeMib} MiB of dirty anonymous memory, chunk ${chunk >> 20} MiB, image in ${dir}; `
      + `${runs} run(s), each a new container and a plain process beside it (alternated), min / median / max; load average ${loadavg().map((v) => v.toFixed(2)).join(' ')}`);
    console.log(`raw limits  process_vm_readv ${fmt(read)} MB/s   file write+fsync ${fmt(write)} MB/s   file write (page cache) ${fmt(cacheWrite)} MB/s`);
    console.log(`            image file read  ${fmt(fileRead)} MB/s   /proc/PID/mem write into fresh memory ${fmt(memWrite)} MB/s`);
    console.log(`checkpoint  ${showSpread(cps.map((c) => c.totalMs), ms0)} ms, ${showSpread(cps.map((c) => rate(c.pagesBytes, c.totalMs)), mb)} MB/s = `
      + `${showSpread(cps.map((c) => rate(c.pagesBytes, c.totalMs) / dumpLimit * 100), pc)} of min(process_vm_readv, write+fsync) ${fmt(dumpLimit)} MB/s`);
    console.log(`restore     ${showSpread(rss.map((r) => r.totalMs), ms0)} ms, ${showSpread(rss.map((r) => rate(r.pagesBytes, r.restoreMs)), mb)} MB/s = `
      + `${showSpread(rss.map((r) => rate(r.pagesBytes, r.restoreMs) / restoreLimit * 100), pc)} of min(image read, /proc/PID/mem write) ${fmt(restoreLimit)} MB/s `
      + `(rebuild ${showSpread(rss.map((r) => r.restoreMs), ms0)} ms, verification ${showSpread(rss.map((r) => r.verifyMs), ms0)} ms before)`);
    console.log(`frozen      ${showSpread(cps.map((c) => c.frozenMs), ms0)} ms from the cgroup freeze to the kill `
      + `(raw: ${ms(len / 1048576 / dumpLimit * 1000)} to read and write+fsync ${(len / 1048576).toFixed(0)} MiB once)`);
    console.log(`plain       ${showSpread(plains.map((c) => c.totalMs), ms0)} ms, ${showSpread(plains.map((c) => rate(c.pagesBytes, c.totalMs)), mb)} MB/s, `
      + `frozen ${showSpread(plains.map((c) => c.frozenMs), ms0)} ms: the same memory in a process outside any container`);
    console.log(`            container/plain throughput ${showSpread(done.map((r) => rate(r.cp.pagesBytes, r.cp.totalMs) / rate(r.plain.pagesBytes, r.plain.totalMs)), (v) => v.toFixed(2))}, `
      + `frozen ${showSpread(done.map((r) => r.cp.frozenMs - r.plain.frozenMs), (v) => `${v >= 0 ? '+' : ''}${v.toFixed(0)}`)} ms (each run's container less its plain process)`);
    console.log(`downtime    ${showSpread(done.map((r) => r.downtime), ms0)} ms  checkpoint then restore, back to back: stopped to running again `
      + `(raw: ${ms(len / 1048576 / dumpLimit * 1000 + len / 1048576 / restoreLimit * 1000)} for both limits back to back)`);
    const verified = done.filter((r) => r.verified).length;
    console.log(`restored containers verified their memory: ${verified === done.length ? 'PASS' : 'FAIL'} (${verified}/${done.length})`);
    if (verified !== done.length) process.exitCode = 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
