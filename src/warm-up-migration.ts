/**
 * The `ferry` program's warm-up of migration for its code cache (warm-up.ts): pre-copy, the
 * frozen image with held pages, the receiver and a lazy restore are engine code the demo does
 * not run, and a long-lived `ferry receive` would otherwise compile them inside its first
 * migration's downtime (tens of ms).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from './config/config.js';
import { silentLogger } from './log-silent.js';
import { derivePsk } from './migrate/key.js';
import { receive } from './migrate/receiver.js';
import { migrate } from './migrate/sender.js';
import { native, PACKAGE_ROOT } from './native/binding.js';
import { closeInheritedFds } from './proc/inherited.js';
import { parseMaxCreds } from './restore/bounds.js';
/**
 * Migrates the demo's counter to this process over loopback with pre-copy and lazy pages (a
 * key made for it), then kills it; rejects when it could not run.
 */
export async function migrateToSelf(): Promise<void> {
  const counter = join(PACKAGE_ROOT, 'build', 'workloads', 'counter');
  if (!existsSync(counter)) throw new Error(`${counter} is missing`);
  closeInheritedFds();
  const dir = mkdtempSync(join(tmpdir(), 'ferry-warm-up-'));
  const base = loadConfig({});
  const config = { ...base, image: { ...base.image, workDir: dir } };
  const key = { path: '(warm-up)', psk: derivePsk(randomBytes(32)) };
  const out = openSync(join(dir, 'counter.log'), 'w');
  const child = spawn(counter, ['20'], { stdio: ['ignore', out, out], detached: true });
  closeSync(out);
  const pid = child.pid!;
  // Killed by pidfd at the end, the original or the one restored: never a process that took
  // the PID meanwhile (the build runs as root).
  const n = native();
  let pidfd = n.pidfdOpen(pid);
  const abort = new AbortController();
  // A build never waits on it for long (a container build without ptrace, a loopback that
  // drops): it is only a warm-up.
  const timer = setTimeout(() => abort.abort(new Error('the migration warm-up took over 60 s')), 60_000);
  try {
    for (const end = Date.now() + 5000; !readFileSync(join(dir, 'counter.log'), 'utf8').includes('tick'); await sleep(10)) {
      if (Date.now() > end) throw new Error('the counter did not start');
    }
    let port = 0;
    const receiving = receive({
      listen: { host: '127.0.0.1', port: 0 }, key, once: true, config, logger: silentLogger, bound: parseMaxCreds('root'), signal: abort.signal,
      onPhase: (r) => { if (r.phase === 'listen') port = Number(r['port']); },
    });
    receiving.catch(() => {});
    for (const end = Date.now() + 5000; port === 0; await sleep(5)) if (Date.now() > end) throw new Error('the receiver did not listen');
    const moved = await migrate({ pid, to: { host: '127.0.0.1', port }, key, lazy: true, config, logger: silentLogger, signal: abort.signal });
    // The counter restored here: it runs (it never exits by itself) until the kill below.
    const restored = n.pidfdOpen(moved.pid);
    closeSync(pidfd);
    pidfd = restored;
    await receiving;
  } finally {
    clearTimeout(timer);
    abort.abort();
    try {
      n.pidfdSendSignal(pidfd, SIGKILL);
    } finally {
      closeSync(pidfd);
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

const SIGKILL = 9;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
