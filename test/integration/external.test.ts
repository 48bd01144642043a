/**
 * External descriptors through bin/ferry: a process whose pipe is also held outside the tree
 * (here, by the test) is refused with the flag to use; `checkpoint --external pipe:[INO]`
 * takes it anyway and marks it in the image; `restore` then insists on being handed a
 * descriptor for it, and `--inherit-fd fd[3]:pipe:[INO]` puts the caller's descriptor in its
 * place: the restored process writes on into the very pipe the test reads. A fired one-shot
 * epoll item on a pipe or a timerfd handed in is not made ready for a moment at restore (an
 * outside reader would see the byte or take the expiry).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, fstatSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FERRY, needs, PYTHON } from '../helpers/env.js';
import { alive, cleanup, ferry, own, procState, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';
import pino from 'pino';
import { loadConfig } from '../../src/config/config.js';
import { restore } from '../../src/index.js';
import { native } from '../../src/native/binding.js';

const skip = needs('root', 'build', 'python');
after(cleanup);

const O_NONBLOCK = 0o4000;

/** Ticks written to fd 3 every 50 ms; ready on stdout. */
const WRITER = [
  'import os, time',
  'os.closerange(4, 4096)',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'n = 0',
  'while True:',
  '    n += 1',
  '    os.write(3, f"tick {n}\\n".encode())',
  '    time.sleep(0.05)',
].join('\n');

/**
 * An epoll whose one-shot item on fd 3 (a pipe's read end) fired on the byte the test wrote and
 * was read back: the pipe is empty, the item reports nothing. On SIGUSR1: PASS when the pipe is
 * still empty and the epoll still reports nothing.
 */
const FIRED = [
  'import os, select, signal, time',
  'os.closerange(4, 4096)',
  'ep = select.epoll()',
  'ep.register(3, select.EPOLLIN | select.EPOLLONESHOT)',
  'assert ep.poll(5) == [(3, select.EPOLLIN)], "the byte fires the item"',
  'assert os.read(3, 1) == b"x" and ep.poll(0) == [], "fired, and read back"',
  'asked = []',
  'signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'while not asked: time.sleep(0.02)',
  'os.set_blocking(3, False)',
  'try:',
  '    os.read(3, 1)',
  '    print("FAIL: a byte in the pipe", flush=True)',
  'except BlockingIOError:',
  '    print("PASS" if ep.poll(0) == [] else "FAIL: the epoll reports something", flush=True)',
].join('\n');
/**
 * The same with a timerfd on fd 3 that expired once, its expiry read back: the item fired, the
 * timer is disarmed. On SIGUSR1: PASS when the epoll still reports nothing.
 */
const FIRED_TIMER = [
  'import os, select, signal, time',
  'os.closerange(4, 4096)',
  'ep = select.epoll()',
  'ep.register(3, select.EPOLLIN | select.EPOLLONESHOT)',
  'assert ep.poll(5) == [(3, select.EPOLLIN)], "the expiry fires the item"',
  'assert len(os.read(3, 8)) == 8 and ep.poll(0) == [], "fired, and read back"',
  'asked = []',
  'signal.signal(signal.SIGUSR1, lambda *a: asked.append(1))',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'while not asked: time.sleep(0.02)',
  'print("PASS" if ep.poll(0) == [] else "FAIL: the epoll reports something", flush=True)',
].join('\n');
/** A reader outside the tree blocked on the timerfd at its fd 3: says what it took. */
const TIMER_READER = 'import os; n = int.from_bytes(os.read(3, 8), "little"); print(f"took {n}", flush=True)';
const CLOCK_MONOTONIC = 1;
/** inotify(7): a file was read, written. */
const IN_ACCESS = 0x1, IN_MODIFY = 0x2;

describe('external descriptors', { skip, timeout: 300_000 }, () => {
  it('--external lets a shared pipe through; restore needs --inherit-fd for it, and writes on into the caller\'s pipe', async () => {
    const n = native();
    const [r, w] = n.pipe2();
    n.setFl(r, n.getFl(r) | O_NONBLOCK);
    let got = '';
    const drain = (): string => {
      const buf = Buffer.alloc(65536);
      for (;;) {
        try {
          const k = readSync(r, buf, 0, buf.length, null);
          if (k <= 0) break;
          got += buf.subarray(0, k).toString();
        } catch {
          break; // EAGAIN: nothing more for now
        }
      }
      return got;
    };
    try {
      // The workload's fd 3 is the pipe's write end; the test keeps both ends: it is outside.
      const wl = await startWorkload(PYTHON, ['-c', WRITER], { extraFd: w });
      const key = `pipe:[${fstatSync(w).ino}]`;
      await waitFor('ticks in the pipe', () => /tick 3\n/.test(drain()));
      const image = join(wl.dir, 'external.tar');

      const refused = ferry(['checkpoint', '--pid', String(wl.pid), '--image', image]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, new RegExp(`^ferry checkpoint: pid ${wl.pid} fd 3 -> ${key.replace(/[[\]]/g, '\\$&')} is also held outside the checkpointed tree, by pid ${process.pid} .*`
        + `or mark it --external ${key.replace(/[[\]]/g, '\\$&')} \\(then restore with --inherit-fd fd\\[N\\]:${key.replace(/[[\]]/g, '\\$&')}, N your descriptor of it\\)\\n$`));
      assert.equal(procState(wl.pid).tracer, 0, 'left running, untraced');

      const cp = ferry(['checkpoint', '--pid', String(wl.pid), '--image', image, '--external', key]);
      assert.equal(cp.code, 0, cp.stderr);
      await wl.exited;
      await waitFor(`pid ${wl.pid} to be free`, () => !alive(wl.pid));
      const last = Math.max(...[...drain().matchAll(/tick (\d+)\n/g)].map((m) => Number(m[1])));

      const missing = ferry(['restore', '--image', image]);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, new RegExp(`^ferry restore: file \\d+ \\(${key.replace(/[[\]]/g, '\\$&')}\\) of the image was external at checkpoint \\(--external\\): `
        + `restore with --inherit-fd fd\\[N\\]:${key.replace(/[[\]]/g, '\\$&')}, N a descriptor of yours to use in its place\\n$`));
      assert.ok(!alive(wl.pid), 'nothing made');
      const notOpen = ferry(['restore', '--image', image, '--inherit-fd', `fd[77]:${key}`]);
      assert.equal(notOpen.code, 2);
      assert.match(notOpen.stderr, /descriptor 77 is not open in this ferry/);

      // ferry gets the pipe's write end as its own fd 3, and hands it to the restored process.
      const rs = spawnSync(FERRY, ['restore', '--image', image, '--inherit-fd', `fd[3]:${key}`],
        { stdio: ['ignore', 'pipe', 'pipe', w], timeout: 120_000 });
      assert.equal(rs.status, 0, rs.stderr.toString());
      own(wl.pid);
      await waitFor('the restored process ticks on into the same pipe', () => new RegExp(`tick ${last + 3}\\n`).test(drain()));
      const ticks = [...got.matchAll(/tick (\d+)\n/g)].map((m) => Number(m[1]));
      assert.deepEqual(ticks, ticks.map((_, i) => i + 1), 'every tick once, in order: the restored process continued where it stopped');
    } finally {
      closeSync(r);
      closeSync(w);
    }
  });
  it('a fired one-shot epoll item on a pipe handed in (--inherit-fd) is not made to fire again: restore writes and reads no byte of it', async () => {
    // Restore makes an idle pipe ready for a moment with a byte of its own (epoll.ts Blips) to
    // disarm such an item again; a pipe the caller handed in is shared with processes outside
    // the tree, which would see that byte: it is left alone (the item comes back armed for
    // EPOLLERR|EPOLLHUP, docs/architecture.md). An inotify watch on the pipe is the outside
    // reader here: it sees any byte written or read, however briefly.
    const n = native();
    const [r, w] = n.pipe2();
    const watch = n.inotifyInit1(O_NONBLOCK);
    try {
      writeSync(w, 'x');
      const wl = await startWorkload(PYTHON, ['-c', FIRED], { extraFd: r });
      const key = `pipe:[${fstatSync(r).ino}]`;
      const image = join(wl.dir, 'fired.tar');
      const cp = ferry(['checkpoint', '--pid', String(wl.pid), '--image', image, '--external', key]);
      assert.equal(cp.code, 0, cp.stderr);
      await wl.exited;
      await waitFor(`pid ${wl.pid} to be free`, () => !alive(wl.pid));
      n.inotifyAddWatch(watch, `/proc/self/fd/${r}`, IN_ACCESS | IN_MODIFY);
      const rs = spawnSync(FERRY, ['restore', '--image', image, '--inherit-fd', `fd[3]:${key}`], { stdio: ['ignore', 'pipe', 'pipe', r], timeout: 120_000 });
      assert.equal(rs.status, 0, rs.stderr.toString());
      own(wl.pid);
      assert.throws(() => readSync(watch, Buffer.alloc(4096)), { code: 'EAGAIN' }, 'no byte of the pipe was written or read');
      assert.equal(await verify(wl), 'PASS', wl.text());
    } finally {
      for (const fd of [watch, r, w]) closeSync(fd);
    }
  });

  it('a fired one-shot epoll item on a timerfd handed in (--inherit-fd) gets no expiry counted: a reader outside the tree takes none', async () => {
    // Restore disarms such an item again by counting its timerfd one expiry for a moment
    // (epoll.ts Blips, TFD_IOC_SET_TICKS); a timerfd the caller handed in is shared with
    // processes outside the tree, and one blocked reading it would take that expiry.
    const n = native();
    const tfd = n.timerfdCreate(CLOCK_MONOTONIC, 0);
    let reader: ChildProcess | undefined;
    try {
      n.timerfdSettime(tfd, 0, 0, 1_000_000, 0, 0); // once, in 1 ms
      const wl = await startWorkload(PYTHON, ['-c', FIRED_TIMER], { extraFd: tfd });
      const image = join(wl.dir, 'timer.tar');
      const cp = ferry(['checkpoint', '--pid', String(wl.pid), '--image', image]);
      assert.equal(cp.code, 0, cp.stderr);
      await wl.exited;
      await waitFor(`pid ${wl.pid} to be free`, () => !alive(wl.pid));
      let took = '';
      // Real-time (SCHED_FIFO): woken, it runs at once, before restore could take the expiry back.
      reader = spawn('chrt', ['-f', '50', PYTHON, '-c', TIMER_READER], { stdio: ['ignore', 'pipe', 'ignore', tfd] });
      reader.stdout!.on('data', (d: Buffer) => { took += d.toString(); });
      // Blocked in read(2) of its fd 3 (/proc/PID/syscall: the call's number, 0, and its arguments).
      await waitFor('the reader to block on the timerfd', () => readFileSync(`/proc/${reader!.pid!}/syscall`, 'utf8').startsWith('0 0x3 '));
      // --inherit-fd takes no anon_inode key: the library's `inherit` does (the restored
      // process is then this one's child, reaped here).
      const rs = await restore({ image, config: loadConfig({}), logger: pino({ level: 'silent' }), inherit: { 'anon_inode:[timerfd]': tfd } });
      for (const p of rs.pids) own(p);
      await sleep(500);
      assert.equal(took, '', 'the reader outside took no expiry');
      assert.equal(await verify(wl), 'PASS', wl.text());
      native().waitpid(wl.pid);
    } finally {
      reader?.kill('SIGKILL');
      closeSync(tfd);
    }
  });

});
