/**
 * Descriptors inherited without close-on-exec (src/proc/inherited.ts): a node child is given a
 * file at descriptors 3, 40 and 100 the way a leaky shell would, and its own child (the
 * grandchild) lists what it got.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { closeInheritedFds, inheritedFds } from '../../src/proc/inherited.js';

// Like every test that spawns: what this process inherited from a leaky shell would reach the
// children below and blur what they report.
closeInheritedFds();

const dir = mkdtempSync(join(tmpdir(), 'ferry-inherited-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const MODULE = new URL('../../src/proc/inherited.js', import.meta.url).href;

/** The grandchild: every descriptor it has, as "fd -> link" lines. */
const LIST = `const fs = require('node:fs');
for (const n of fs.readdirSync('/proc/self/fd')) {
  try { console.log(n + ' -> ' + fs.readlinkSync('/proc/self/fd/' + n)); } catch {}
}`;

/**
 * The child: calls closeInheritedFds() when CALL=1, spawns the grandchild the way the tests
 * spawn workloads, and sends back what it closed, what it still found and what the grandchild
 * listed (over IPC when it has a channel, else on stdout).
 */
const CHILD = `import { spawnSync } from 'node:child_process';
const { closeInheritedFds, inheritedFds } = await import(process.env.MODULE);
const closed = process.env.CALL === '1' ? closeInheritedFds() : [];
const left = inheritedFds();
const g = spawnSync(process.execPath, ['-e', process.env.LIST], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
const report = { closed, left, grandchild: g.stdout };
if (process.send) { process.send(report); process.disconnect(); } else console.log(JSON.stringify(report));`;

interface Report {
  closed: number[];
  left: number[];
  grandchild: string;
}

/**
 * Runs the child with `file` open (without close-on-exec) at each of `at`, and with an IPC
 * channel at `ipcAt` if given.
 */
function runChild(file: string, at: number[], call: boolean, ipcAt?: number): Promise<Report> {
  const fd = openSync(file, 'a');
  const stdio: Array<'ignore' | 'pipe' | 'inherit' | 'ipc' | number> = ['ignore', 'pipe', 'inherit'];
  for (const n of at) stdio[n] = fd;
  if (ipcAt !== undefined) stdio[ipcAt] = 'ipc';
  for (let i = 0; i < stdio.length; i++) stdio[i] ??= 'ignore';
  const env = { ...process.env, MODULE, LIST, CALL: call ? '1' : '0' };
  const child = spawn(process.execPath, ['--input-type=module', '-e', CHILD], { stdio, env });
  closeSync(fd);
  return new Promise((resolve, reject) => {
    let out = '';
    let message: Report | undefined;
    child.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    child.on('message', (m) => { message = m as Report; });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) reject(new Error(`child exited with ${code}: ${out}`));
      else resolve(message ?? JSON.parse(out) as Report);
    });
  });
}

/** The descriptors of the grandchild that point at `file`. */
const holding = (r: Report, file: string): string[] => r.grandchild.split('\n').filter((l) => l.endsWith(` -> ${file}`))
  .sort((a, b) => parseInt(a, 10) - parseInt(b, 10));

describe('descriptors inherited without close-on-exec', { timeout: 30_000 }, () => {
  it('without the call, a high one reaches the grandchild (libuv marks only 0-15 close-on-exec)', async () => {
    const file = join(dir, 'without');
    const r = await runChild(file, [3, 40, 100], false);
    assert.deepEqual(r.left, [40, 100]);
    assert.deepEqual(holding(r, file), [`40 -> ${file}`, `100 -> ${file}`]);
  });

  it('after closeInheritedFds() the grandchild has none of them, and the child none left', async () => {
    const file = join(dir, 'with');
    const r = await runChild(file, [3, 40, 100], true);
    assert.deepEqual(r.closed, [40, 100]);
    assert.deepEqual(r.left, []);
    assert.deepEqual(holding(r, file), []);
  });

  it('keeps Node\'s IPC channel, wherever it is', async () => {
    const file = join(dir, 'ipc');
    const r = await runChild(file, [60], true, 50);
    assert.deepEqual(r.closed, [60]);
    assert.deepEqual(holding(r, file), []);
  });

  it('in this process: nothing inherited is left, and stdio and Node\'s own descriptors still work', async () => {
    closeInheritedFds();
    assert.deepEqual(inheritedFds(), []);
    for (const fd of [0, 1, 2]) assert.ok(existsSync(`/proc/self/fd/${fd}`), `fd ${fd} is open`);
    const r = await runChild(join(dir, 'after'), [], true);
    assert.deepEqual(r.closed, []);
  });
});
