/**
 * Bad input: each case gets one clear line on stderr naming the thing, a non-zero exit, no
 * stray process, and the original never left stopped or traced.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import tar from 'tar-stream';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import { alive, cleanup, ferry, own, procState, scratchDir, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** stderr must be exactly one line. */
function oneLine(stderr: string): string {
  const lines = stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `expected one line on stderr, got:\n${stderr}`);
  return lines[0]!;
}

/** Pids of ferry-stub processes (none may be left behind). */
function stubs(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((d) => {
    try { return readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'ferry-stub'; } catch { return false; }
  }).map(Number);
}

function untouched(pid: number): void {
  assert.ok(alive(pid), 'still alive');
  const st = procState(pid);
  assert.equal(st.tracer, 0, 'not traced');
  assert.notEqual(st.state, 't', 'not stopped');
  assert.notEqual(st.state, 'T', 'not stopped');
}

/** A real image of a counter that was left running (the counter is killed afterwards). */
async function realImage(): Promise<{ image: string; pid: number; dir: string; exited: Promise<void> }> {
  const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
  const image = join(w.dir, 'counter.tar');
  const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
  assert.equal(r.code, 0, r.stderr);
  return { image, pid: w.pid, dir: w.dir, exited: w.exited };
}

describe('bad input', { skip }, () => {
  it('a pid that does not exist', () => {
    const r = ferry(['checkpoint', '--pid', '4000000', '--image', '/tmp/never.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /no process with pid 4000000/);
    assert.ok(!existsSync('/tmp/never.tar'));
  });

  it('a kernel thread', () => {
    const r = ferry(['checkpoint', '--pid', '2', '--image', '/tmp/never.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /pid 2 \(kthreadd\) is a kernel thread/);
  });

  it('a usage error exits 2 and says how to get help', () => {
    const r = ferry(['checkpoint', '--pid', 'abc', '--image', 'x']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--pid needs a positive integer, got "abc"/);
    assert.match(r.stderr, /Try 'ferry checkpoint --help'/);
  });

  it('a child in another pid namespace is refused, and the tree left running', async () => {
    const dir = scratchDir();
    const child = spawn('unshare', ['--pid', '--fork', 'sleep', '100'], { stdio: 'ignore', detached: true, cwd: dir });
    own(child.pid!);
    const kids = (): string => readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
    await waitFor('the child', () => kids() !== '');
    const kid = Number(kids());
    own(kid);
    const r = ferry(['checkpoint', '--pid', String(child.pid), '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${kid} \\(in the tree of ${child.pid}\\) \\(sleep\\) runs in another pid namespace: not supported yet`));
    assert.ok(!existsSync(join(dir, 'x.tar')), 'no partial image');
    untouched(child.pid!);
    untouched(kid);
  });

  it('a pipe also held outside the tree is refused, naming both holders', async () => {
    const dir = scratchDir();
    // The parent keeps both ends of a pipe its child holds too, and stays outside the checkpoint.
    const script = 'import os, sys, time\nr, w = os.pipe()\npid = os.fork()\nif pid == 0:\n    time.sleep(1000)\nprint(pid, r, flush=True)\ntime.sleep(1000)\n';
    const parent = spawn('/usr/bin/python3', ['-c', script], { stdio: ['ignore', 'pipe', 'ignore'], detached: true, cwd: dir });
    own(parent.pid!);
    let out = '';
    parent.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    await waitFor('the workload to print its child', () => out.includes('\n'));
    const line = out.trim();
    const m = /(\d+)\s+(\d+)/.exec(line);
    assert.ok(m, `the workload printed its child and fd: ${line}`);
    const child = Number(m[1]);
    const rfd = Number(m[2]);
    own(child);
    const r = ferry(['checkpoint', '--pid', String(child), '--image', join(dir, 'x.tar')]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${child} fd ${rfd} -> pipe:\\[\\d+\\] is also held outside the checkpointed tree, by pid ${parent.pid} \\(python3\\) fd \\d+: restoring would split it`));
    assert.ok(!existsSync(join(dir, 'x.tar')), 'no partial image');
    untouched(child);
  });

  it('an unsupported descriptor is refused before the process is touched', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50'], { stderr: 'pipe' });
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(r.code, 1);
    const line = oneLine(r.stderr);
    assert.match(line, new RegExp(`unsupported file: pid ${w.pid} fd 2 -> (pipe|socket):\\[\\d+\\]`));
    assert.ok(!existsSync(join(w.dir, 'x.tar')), 'no partial image');
    untouched(w.pid);
  });

  it('an unwritable image path leaves the original running', async () => {
    const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', '/nonexistent-dir/x.tar']);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /cannot write image \/nonexistent-dir\/x.tar: .*ENOENT/);
    untouched(w.pid);
    const n = w.ticks().length;
    await waitFor('ticks continue', () => w.ticks().length > n + 2);
    assert.equal(await verify(w), 'PASS');
  });

  it('a truncated image is refused and nothing is created', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    const data = readFileSync(image);
    const cut = join(dir, 'cut.tar');
    writeFileSync(cut, data.subarray(0, Math.floor(data.length / 2)));
    const before = stubs();
    const r = ferry(['restore', '--image', cut]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /image .*cut.tar is truncated/);
    assert.ok(!alive(pid), 'no process was created');
    // Stubs of earlier tests' refused restores may still wait for PID 1 to reap them.
    assert.deepEqual(stubs().filter((p) => !before.includes(p)), [], 'no new restore stub');
  });

  it('a corrupted image is refused, naming the entry', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    const data = readFileSync(image);
    const at = data.length - 4096; // inside the last entry's data (pages)
    data[at] = data[at]! ^ 0x40;
    const bad = join(dir, 'bad.tar');
    writeFileSync(bad, data);
    const r = ferry(['restore', '--image', bad]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /image .*bad.tar is corrupt: entry tasks\/\d+\/pages.bin has sha256/);
    assert.ok(!alive(pid));
  });

  it('a restore whose PID is taken leaves the running process alone', async () => {
    const { image, pid } = await realImage();
    const r = ferry(['restore', '--image', image]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), new RegExp(`pid ${pid} is in use by another process \\(counter\\)`));
    untouched(pid);
  });

  it('an image from another kernel build is refused', async () => {
    const { image, pid, dir, exited } = await realImage();
    process.kill(pid, 'SIGKILL');
    await exited;
    // Rewrite manifest.json's host.kernelVersion (the manifest carries no checksum of itself).
    const other = join(dir, 'other-kernel.tar');
    const extract = tar.extract();
    const pack = tar.pack();
    const done = new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      pack.on('data', (c: unknown) => chunks.push(c as Buffer));
      pack.on('end', () => resolve(Buffer.concat(chunks)));
    });
    extract.on('entry', (header, stream, next) => {
      const parts: Buffer[] = [];
      stream.on('data', (c: unknown) => parts.push(c as Buffer));
      stream.on('end', () => {
        let body = Buffer.concat(parts);
        if (header.name === 'manifest.json') {
          const m = JSON.parse(body.toString()) as { host: { kernelVersion: string; kernelRelease: string } };
          m.host.kernelRelease = '5.10.0-ancient';
          body = Buffer.from(JSON.stringify(m));
        }
        pack.entry({ name: header.name, size: body.length }, body, next);
      });
    });
    extract.on('finish', () => pack.finalize());
    extract.end(readFileSync(image));
    writeFileSync(other, await done);
    const r = ferry(['restore', '--image', other]);
    assert.equal(r.code, 1);
    assert.match(oneLine(r.stderr), /image was made on kernel 5.10.0-ancient .*restore needs the same kernel build/);
    assert.ok(!alive(pid));
  });

  it('not running as root is refused by the CLI', { skip: existsSync('/usr/bin/setpriv') ? false : 'needs setpriv (util-linux)' }, () => {
    const r = spawnSync('/usr/bin/setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', FERRY, 'checkpoint', '--pid', '1', '--image', '/tmp/never.tar']);
    assert.equal(r.status, 1);
    assert.match(oneLine(r.stderr.toString()), /must run as root/);
  });

  it('leaves no restore stub behind after all of the above', async () => {
    await sleep(100);
    assert.deepEqual(stubs(), []);
  });
});
