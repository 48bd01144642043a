/**
 * Running `ferry migrate` and `ferry receive` in the background for the migration tests
 * (test/integration/precopy.test.ts, migrate.test.ts, migrate-tcp.test.ts, test/faults/precopy.test.ts) and the pre-copy workload
 * (test/fixtures/workloads/dirtier.c).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { FERRY, WORKLOADS } from './env.js';
import { spawnIn, type Node } from './nodes.js';
import { scratchDir, startWorkload, waitFor, type Workload } from './processes.js';

/** A ferry started in the background. */
export interface Running {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit status (or 128 + signal number). */
  exited: Promise<number>;
}

const started = new Set<ChildProcess>();

/** Kills every ferry still running (after()). */
export function killFerries(): void {
  for (const c of started) c.kill('SIGKILL');
}

/**
 * Starts bin/ferry `args` in the background, FERRY_TEST_PAUSE_AT=`pause` if given, in node
 * `inNode`'s network namespace if given (test/helpers/nodes.ts).
 */
export function startFerry(args: string[], pause?: string, inNode?: Node): Running {
  const env = { ...process.env };
  delete env['FERRY_TEST_PAUSE_AT'];
  if (pause !== undefined) env['FERRY_TEST_PAUSE_AT'] = pause;
  const opts = { stdio: ['ignore', 'pipe', 'pipe'] as ['ignore', 'pipe', 'pipe'], env };
  const child = inNode !== undefined ? spawnIn(inNode, FERRY, args, opts) : spawn(FERRY, args, opts);
  started.add(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number>((resolve) => child.on('close', (code, signal) => {
    started.delete(child);
    // Killed by a signal: 128 + its number, as a shell says, and its name in the stderr kept.
    if (code === null && signal !== null) err += `\n[test: ferry ${args[0] ?? ''} killed by ${signal}]`;
    resolve(code ?? 128 + (signal !== null ? constants.signals[signal] : 0));
  }));
  return { child, stdout: () => out, stderr: () => err, exited };
}

/**
 * Starts bin/ferry `args` (FERRY_TEST_PAUSE_AT=`pause` if given) in a pid namespace and a
 * mount namespace (its own /proc) of its own, as on another node, where the pids of this one
 * are free: pid 1 there is a shell that runs ferry, prints `ferry-exit=N` and then waits (until
 * this process ends), so that what ferry restored there outlives it.
 * Killing the returned child (unshare, --kill-child) ends the namespace and all in it.
 */
export function startFerryInPidns(args: string[], pause?: string): Running & { ferryExit(): number | undefined; init(): number } {
  const env = { ...process.env };
  delete env['FERRY_TEST_PAUSE_AT'];
  if (pause !== undefined) env['FERRY_TEST_PAUSE_AT'] = pause;
  // pid 1 there waits for the end of its stdin, a pipe of this process's: if this process dies
  // (a test runner's timeout), the namespace ends with it.
  const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', '"$@" </dev/null; echo "ferry-exit=$?"; read x', 'sh', FERRY, ...args],
    { stdio: ['pipe', 'pipe', 'pipe'], env });
  started.add(child);
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number>((resolve) => child.on('close', (code) => {
    started.delete(child);
    resolve(code ?? 128);
  }));
  const ferryExit = (): number | undefined => {
    const m = /^ferry-exit=(\d+)$/m.exec(out);
    return m ? Number(m[1]) : undefined;
  };
  // The namespace's pid 1: unshare's one child.
  const init = (): number => Number(readFileSync(`/proc/${child.pid!}/task/${child.pid!}/children`, 'utf8').trim().split(/\s+/)[0]);
  return { child, stdout: () => out, stderr: () => err, exited, ferryExit, init };
}

/**
 * startReceiver in a pid namespace of its own (startFerryInPidns), `pause` as FERRY_TEST_PAUSE_AT,
 * and its port. The caller kills `r.child` when done (the namespace goes with it).
 */
export async function startReceiverInPidns(key: string, config: string, pause?: string): Promise<{ r: ReturnType<typeof startFerryInPidns>; port: number }> {
  const r = startFerryInPidns(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], pause);
  await waitFor('the receiver to listen', () => records(r).some((x) => x['phase'] === 'listen') || r.ferryExit() !== undefined);
  const listen = records(r).find((x) => x['phase'] === 'listen');
  if (listen === undefined) r.child.kill('SIGKILL');
  assert.ok(listen, `the receiver did not start: ${r.stderr()}`);
  return { r, port: listen['port'] as number };
}

/** This namespace's pid of the process that is `pid` in the pid namespace of process `inNs`, or undefined. */
export function pidFromNs(inNs: number, pid: number): number | undefined {
  const ns = readlinkSync(`/proc/${inNs}/ns/pid`);
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readlinkSync(`/proc/${d}/ns/pid`) !== ns) continue;
      const ids = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${d}/status`, 'utf8'))?.[1]?.trim().split(/\s+/).map(Number) ?? [];
      if (ids.at(-1) === pid) return Number(d);
    } catch { /* gone meanwhile */ }
  }
  return undefined;
}

/** Waits for `r` to exit, at most `ms`. */
export async function exitOf(r: Running, what: string, ms = 90_000): Promise<number> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not exit within ${ms / 1000} s; stderr: ${r.stderr()}`)), ms); });
  try {
    return await Promise.race([r.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The JSON records a ferry printed so far. */
export function records(r: Running): Array<Record<string, unknown>> {
  return r.stdout().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** A scratch set-up: a work directory, a config naming it, a key file. */
export function migrationDir(prefix: string): { workDir: string; config: string; key: string } {
  const dir = scratchDir(prefix);
  const workDir = join(dir, 'work');
  const config = join(dir, 'config.toml');
  const key = join(dir, 'migrate.key');
  mkdirSync(workDir, { mode: 0o700 });
  writeFileSync(config, `[image]\nwork_dir = "${workDir}"\n`);
  writeFileSync(key, `${'5c'.repeat(32)}\n`, { mode: 0o600 });
  return { workDir, config, key };
}

/** A --once receiver on 127.0.0.1 (a port the kernel picks) that takes root's images, and its port. */
export async function startReceiver(key: string, config: string, pause?: string): Promise<{ r: Running; port: number }> {
  const r = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], pause);
  await waitFor('the receiver to listen', () => records(r).some((x) => x['phase'] === 'listen') || r.child.exitCode !== null);
  const listen = records(r).find((x) => x['phase'] === 'listen');
  assert.ok(listen, `the receiver did not start: ${r.stderr()}`);
  return { r, port: listen['port'] as number };
}

/** The dirtier workload: `mib` MiB rewritten at `rate` MiB/s, in `mode`. */
export async function startDirtier(mib: number, rate: number, mode: 'plain' | 'churn' | 'uffd' | 'thp' | 'fork' | 'adjacent' | 'discard' = 'plain'): Promise<Workload> {
  const w = await startWorkload(join(WORKLOADS, 'dirtier'), [String(mib), String(rate), mode]);
  await waitFor('the dirtier to write', () => w.ticks().length >= 2);
  return w;
}

/** The spool and copy directories ferry made in `workDir`. */
export function leftovers(workDir: string): string[] {
  return readdirSync(workDir).filter((n) => n.startsWith('.ferry-') || n.startsWith('ferry-migrate-'));
}

/** Whether any area of `pid` is registered with a userfaultfd for write-protection (VmFlags uw). */
export function writeTracked(pid: number): boolean {
  return /^VmFlags:.* uw( |$)/m.test(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

/** Flips one byte in the middle of the first entry of the tar `path` whose name matches `name`. */
export function corruptEntry(path: string, name: RegExp): void {
  const fd = openSync(path, 'r+');
  try {
    const h = Buffer.alloc(512);
    let pax: string | undefined;
    for (let at = 0; readSync(fd, h, 0, 512, at) === 512 && h[0] !== 0;) {
      const size = Number.parseInt(h.toString('latin1', 124, 136).replace(/\0.*$/s, '').trim() || '0', 8);
      const type = String.fromCharCode(h[156]!);
      const entry = pax ?? h.toString('latin1', 0, 100).replace(/\0.*$/s, '');
      if (type === 'x') {
        const body = Buffer.alloc(size);
        readSync(fd, body, 0, size, at + 512);
        pax = /\d+ path=([^\n]*)\n/.exec(body.toString('utf8'))?.[1];
      } else {
        pax = undefined;
        if (name.test(entry) && size > 0) {
          const where = at + 512 + Math.floor(size / 2);
          const b = Buffer.alloc(1);
          readSync(fd, b, 0, 1, where);
          b[0] = b[0]! ^ 0xff;
          writeSync(fd, b, 0, 1, where);
          return;
        }
      }
      at += 512 + Math.ceil(size / 512) * 512;
    }
    throw new Error(`no entry like ${String(name)} in ${path}`);
  } finally {
    closeSync(fd);
  }
}
