/**
 * Terminals through bin/ferry. build/workloads/ptys holds a pty pair inside the tree (the
 * slave is its session's controlling terminal, a child's group in the foreground, raw termios,
 * a window size, bytes queued both ways, /dev/tty, a locked second pair, a third in packet
 * mode with output queued, exclusive mode) and checks it all itself after restore; `ptys
 * status` holds a packet-mode master with a status byte pending, which a checkpoint refuses.
 * `ptys external` runs with its stdio on a terminal whose master is held outside the tree (a
 * python3 holder made here, or script(1)): refused without --shell-job, restored onto the
 * same terminal with it. build/workloads/ptylines holds input queued on a canonical slave
 * (complete lines, lines VEOF ended, a line not ended) and checks that each read returns one
 * line and the last stays unended (`full`: more than n_tty holds; `long`: one 4096-byte line with
 * echo on), and that its termios is the same; failures while its input is taken are injected
 * (FERRY_TEST_PAUSE_AT=ttydrain! or ttyinsert!, src/fault.ts); build/workloads/ptyjob is a shell-like session whose
 * controlling terminal no process holds open, a job's group in the foreground (the master held
 * by the leader, or by its parent). build/workloads/consoles holds terminals of the machine (a virtual
 * console as its controlling terminal, /dev/tty, /dev/console, /dev/tty0): they come back
 * without --shell-job, with the console's termios set back.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FerryError } from '../../src/errors.js';
import { checkFiles, closeFiles, openFiles } from '../../src/files/install.js';
import { checkUnheldTerminals } from '../../src/files/tty.js';
import { DEFAULT_FILE_OPTIONS } from '../../src/files/types.js';
import type { FileRecord, FilesRecord } from '../../src/image/records.js';
import { native } from '../../src/native/binding.js';
import { needs, PYTHON, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, cycleThrough, ferry, own, procState, scratchDir, sleep, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

after(cleanup);
const PTYS = join(WORKLOADS, 'ptys');
const CONSOLES = join(WORKLOADS, 'consoles');
const PTYLINES = join(WORKLOADS, 'ptylines');
const PTYJOB = join(WORKLOADS, 'ptyjob');
const FGGONE = join(WORKLOADS, 'fggone');
/** The virtual console the consoles test takes as its controlling terminal. */
const VT = '/dev/tty1';
const noVt = ((): string | false => {
  try {
    const st = statSync(VT);
    return st.isCharacterDevice() && existsSync('/dev/console') ? false : `${VT} is not a character device here`;
  } catch {
    return `no ${VT} or /dev/console on this machine (no virtual consoles)`;
  }
})();

/** Pids of the children of `pid`. */
const children = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);

/** The pts names the workload logged last: [pair, locked pair]. */
const ptsNames = (w: Workload): string[] => [...w.text().matchAll(/^pts (\S+) (\S+)$/gm)].map((m) => `${m[1]} ${m[2]}`);

/**
 * Starts `ptys external LOG` with its stdio on a terminal held outside the tree: `python3`
 * opens a pair, gives the slave to the workload as controlling terminal (login_tty: it leads
 * its session) and keeps reading the master; `script` does the same through script(1).
 */
async function startExternal(holder: 'python' | 'script'): Promise<Workload & { holder: number; tty: string }> {
  const dir = scratchDir();
  const log = join(dir, 'workload.log');
  const py = [
    'import os, signal, sys, time',
    'm, s = os.openpty()',
    'pid = os.fork()',
    'if pid == 0:',
    '    os.close(m); os.login_tty(s); os.execv(sys.argv[1], [sys.argv[1], "external", sys.argv[2]])',
    'signal.signal(signal.SIGCHLD, signal.SIG_IGN)',
    'os.close(s)',
    'while True:',
    '    try: os.read(m, 4096)',
    '    except OSError: time.sleep(0.05)',
  ].join('\n');
  const child = holder === 'python'
    ? spawn(PYTHON, ['-c', py, PTYS, log], { stdio: 'ignore', detached: true, cwd: dir })
    : spawn('script', ['-qfec', `exec ${PTYS} external ${log}`, '/dev/null'], { stdio: ['pipe', 'ignore', 'ignore'], detached: true, cwd: dir });
  own(child.pid!);
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  const text = (): string => (existsSync(log) ? readFileSync(log, 'utf8') : '');
  await waitFor(`${holder} to start ptys external`, () => /ready pid=\d+/.test(text()));
  const pid = Number(/ready pid=(\d+)/.exec(text())![1]);
  own(pid);
  assert.ok(children(child.pid!).includes(pid), 'the workload is the holder\'s child');
  return { pid, dir, log, text, exited, ticks: () => [], holder: child.pid!, tty: /^tty (\S+)/m.exec(text())![1]! };
}


/**
 * Checkpoints `w` with --leave-running (the original, detached, must pass its check), then,
 * once it exited and its pid is free, restores the image (`name` in its directory): the
 * restored process, untraced, must pass its check too.
 */
async function leaveRunningThenRestore(w: Awaited<ReturnType<typeof startWorkload>>, name: string): Promise<void> {
  const image = join(w.dir, name);
  const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
  assert.equal(cp.code, 0, cp.stderr);
  assert.equal(procState(w.pid).tracer, 0, 'detached');
  assert.equal(await verify(w), 'PASS', `--leave-running: ${w.text()}`);
  await w.exited;
  await waitFor('the pid to be free', () => !alive(w.pid), 8000);
  const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
  const rs = ferry(['restore', '--image', image]);
  assert.equal(rs.code, 0, rs.stderr);
  own(w.pid);
  assert.equal(procState(w.pid).tracer, 0);
  assert.equal(await verify(w2), 'PASS', w2.text());
}

describe('terminals', { skip: needs('root', 'build'), timeout: 180_000 }, () => {
  it('a pty pair with its session, foreground group, termios and queued bytes survives three cycles', async () => {
    const w = await startWorkload(PTYS, []);
    const kid = children(w.pid)[0]!;
    own(kid);
    const first = ptsNames(w)[0];
    const image = join(w.dir, 'ptys.tar');
    for (let i = 0; i < 3; i++) {
      await cycleThrough(w, image, i, [], { tree: [kid] });
      assert.ok(alive(w.pid) && alive(kid));
      assert.equal(procState(w.pid).tracer, 0);
    }
    assert.equal(await verify(w), 'PASS', w.text());
    // The pair gets its old pts number back when nobody took it meanwhile (other ptys may be
    // created on this machine at the same time, so a different number is not a failure).
    const last = ptsNames(w).at(-1);
    if (last !== first) process.stderr.write(`note: pts numbers ${first} came back as ${last}\n`);
  });

  it('the members of a restored session have its controlling terminal too', async () => {
    const w = await startWorkload(PTYS, []);
    const kid = children(w.pid)[0]!;
    own(kid);
    const image = join(w.dir, 'ptys.tar');
    assert.equal(ferry(['checkpoint', '--pid', String(w.pid), '--image', image]).code, 0);
    await w.exited;
    await waitFor('both pids to be free', () => !alive(w.pid) && !alive(kid), 8000);
    assert.equal(ferry(['restore', '--image', image]).code, 0);
    assert.equal(await verify(w), 'PASS', w.text());
    assert.doesNotMatch(w.text(), /NOTE kid: no controlling terminal/);
  });

  it('--leave-running consumes nothing: the original keeps its queued bytes, and so does the image', async () => {
    const w = await startWorkload(PTYS, []);
    const kid = children(w.pid)[0]!;
    own(kid);
    const image = join(w.dir, 'ptys.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original kept everything');
    await w.exited;
    await waitFor('both pids to be free', () => !alive(w.pid) && !alive(kid), 8000);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    assert.equal(await verify(w2), 'PASS', w2.text());
  });

  it('input queued in canonical mode keeps its lines: one read per line, VEOF-ended lines, a line not ended stays so (--leave-running, then restored)', async () => {
    await leaveRunningThenRestore(await startWorkload(PTYLINES, []), 'lines.tar');
  });

  it('canonical input keeps its lines through two checkpoint and restore cycles', async () => {
    const w = await startWorkload(PTYLINES, []);
    const image = join(w.dir, 'lines.tar');
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('canonical input beyond what the line discipline holds keeps every line, in order (--leave-running, then restored)', async () => {
    await leaveRunningThenRestore(await startWorkload(PTYLINES, ['full']), 'full.tar');
  });

  it('a 4096-byte line, which n_tty takes whole, comes back whole and is not echoed again (echo on; --leave-running, then restored)', async () => {
    await leaveRunningThenRestore(await startWorkload(PTYLINES, ['long']), 'long.tar');
  });

  it('a read failing part-way through canonical input puts back all of it, lines and rest, and the termios (injected)', async () => {
    const w = await startWorkload(PTYLINES, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'never.tar')], { env: { FERRY_TEST_PAUSE_AT: 'ttydrain!' } });
    assert.notEqual(cp.code, 0, 'the checkpoint fails');
    assert.equal(cp.stderr.trim().split('\n').length, 1, `one line: ${cp.stderr}`);
    assert.match(cp.stderr, new RegExp(`fd \\d+ of pid ${w.pid} .*failure injected at ttydrain`));
    assert.ok(alive(w.pid), 'left running');
    assert.equal(procState(w.pid).tracer, 0, 'untraced');
    assert.equal(await verify(w), 'PASS', `the original reads exactly its input, with its termios: ${w.text()}`);
  });

  it('an insertion failing part-way says that the input of /dev/pts/N may be damaged, and sets the termios back (injected)', async () => {
    const w = await startWorkload(PTYLINES, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'never.tar')], { env: { FERRY_TEST_PAUSE_AT: 'ttyinsert!' } });
    assert.notEqual(cp.code, 0, 'the checkpoint fails');
    assert.equal(cp.stderr.trim().split('\n').length, 1, `one line: ${cp.stderr}`);
    assert.match(cp.stderr, /stopped after 1 of \d+ bytes .*failure injected at ttyinsert.*: the input of \/dev\/pts\/\d+ may be damaged \(its next byte will be taken literally\)/);
    assert.ok(alive(w.pid), 'left running');
    assert.equal(procState(w.pid).tracer, 0, 'untraced');
    // Its lines are not all back (what a failed insertion cannot help), but its termios is.
    const verdict = await verify(w);
    assert.doesNotMatch(verdict, /termios changed/, w.text());
  });

  it('input lines need TIOCSTI: a restore in a user namespace of its own refuses them up front, saying what is missing', () => {
    // Root of a new user namespace has every capability there, but TIOCSTI asks for
    // CAP_SYS_ADMIN in the initial one.
    const cc = new Array(19).fill(0);
    cc[4] = 4;
    const rec = {
      id: 1, kind: 'tty', role: 'master', path: '/dev/ptmx', flags: 2, index: 0,
      termios: { iflag: 0, oflag: 0, cflag: 0o277, lflag: 0o2, line: 0, cc, ispeed: 38400, ospeed: 38400 },
      winsize: { row: 24, col: 80, xpixel: 0, ypixel: 0 }, input: Buffer.from('ab\n').toString('base64'), inputLines: [{ length: 3, eof: false }],
    };
    const script = `const { checkFiles } = await import(${JSON.stringify(new URL('../../src/files/install.js', import.meta.url).href)});
      try { checkFiles([${JSON.stringify(rec)}]); console.log('accepted'); } catch (e) { console.log(e.code + ' ' + e.message); }`;
    const r = spawnSync('unshare', ['-U', '-r', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim().split('\n').length, 1, r.stdout);
    assert.match(r.stdout, /^EPERM terminal \/dev\/pts\/0 \(file 1 of the image\) has input queued in canonical mode, .*needs CAP_SYS_ADMIN in the initial user namespace, which ferry \(in a user namespace of its own\) cannot have/);
  });

  it('a terminal no descriptor holds is refused in a container image, when its session leader is not in the image, and with an empty foreground group whose id a process has', () => {
    const rec = (ctty: unknown): FileRecord => ({ id: 2, kind: 'tty', role: 'slave', path: '/dev/pts/3', link: '/dev/pts/3', flags: 2, index: 3, master: 1, ctty } as FileRecord);
    const pids = new Set([100, 101]);
    const refused = (r: FileRecord, container: boolean, why: RegExp): void => {
      assert.throws(() => checkUnheldTerminals([r], new Set([1]), pids, container),
        (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && /terminal \(file 2\), held by no process of the tree/.test(e.message) && why.test(e.message));
    };
    checkUnheldTerminals([rec({ session: 100, foreground: 101 })], new Set([1]), pids, false);
    refused(rec({ session: 100, foreground: 101 }), true, /in a container's image/);
    refused(rec({ session: 7, foreground: 101 }), false, /session 7, whose leader is no process of the image/);
    refused(rec({ session: null, foreground: 101 }), false, /whose leader is no process of the image/);
    // Held by a descriptor: the `installed` hook of its holder does the work, as before.
    checkUnheldTerminals([rec({ session: 7, foreground: 101 })], new Set([1, 2]), pids, true);
    // A foreground group no process is in is made around a process with its id: one no process has.
    const groups = new Set([100]);
    checkUnheldTerminals([rec({ session: 100, foreground: 102 })], new Set([1]), pids, false, groups);
    assert.throws(() => checkUnheldTerminals([rec({ session: 100, foreground: 101 })], new Set([1]), pids, false, groups),
      (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && /has group 101 in the foreground, which no process of the image is in, though one has its id/.test(e.message));
  });

  it('input lines in an image must fit its input and end with a line-ending byte of its canonical termios', () => {
    const O_RDWR = 2, O_NOCTTY = 0o400, O_NONBLOCK = 0o4000;
    const cc = new Array(19).fill(0);
    cc[4] = 4; // VEOF
    cc[11] = 0x3b; // VEOL ';'
    const master = (extra: Record<string, unknown>): FileRecord => ({
      id: 1, kind: 'tty', role: 'master', path: '/dev/ptmx', flags: O_RDWR, index: 0,
      termios: { iflag: 0, oflag: 0, cflag: 0o277, lflag: 0o2 /* ICANON */, line: 0, cc, ispeed: 38400, ospeed: 38400 },
      winsize: { row: 24, col: 80, xpixel: 0, ypixel: 0 }, ...extra,
    });
    const refused = (extra: Record<string, unknown>, why: RegExp): void => {
      assert.throws(() => checkFiles([master(extra)]), (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && why.test(e.message), JSON.stringify(extra));
    };
    const input = Buffer.from('ab\nc;de').toString('base64');
    refused({ input, inputLines: [{ length: 2, eof: false }] }, /no line-ending byte/);
    refused({ input, inputLines: [{ length: 9, eof: true }] }, /beyond its input/);
    refused({ input, inputLines: [{ length: 0, eof: false }] }, /invalid input line/);
    refused({ input, inputLines: [{ length: 3, eof: 'no' }] }, /invalid input line/);
    refused({ input, inputLines: {} }, /invalid input lines/);
    refused({ input: Buffer.alloc(5000, 0x61).toString('base64'), inputLines: new Array(2000).fill({ length: 2, eof: true }) }, /beyond the 4096 bytes/);
    // n_tty takes a 4096th byte only while no complete line is pending: a first line of 4096
    // bytes, but not a second line that would end there.
    const long = Buffer.concat([Buffer.alloc(4095, 0x61), Buffer.from('\n'), Buffer.from('b\n')]).toString('base64');
    checkFiles([master({ input: long, inputLines: [{ length: 4096, eof: false }] })]);
    const twoLines = Buffer.concat([Buffer.from('b\n'), Buffer.alloc(4093, 0x61), Buffer.from('\n')]).toString('base64');
    refused({ input: twoLines, inputLines: [{ length: 2, eof: false }, { length: 4094, eof: false }] }, /beyond the 4096 bytes/);
    // More than a pair holds (N_TTY's 4096 bytes and the flip buffers' 64 KiB) cannot be queued again.
    refused({ input: Buffer.alloc(4096 + 65536 + 1).toString('base64') }, /more queued input than a pseudoterminal holds \(69632 bytes\)/);
    refused({ output: Buffer.alloc(4096 + 65536 + 1).toString('base64') }, /more queued output than a pseudoterminal holds/);
    checkFiles([master({ input: Buffer.alloc(4096 + 65536).toString('base64') })]);
    refused({ input, inputLines: [], termios: { ...(master({}) as unknown as { termios: object }).termios, lflag: 0 } }, /not canonical/);
    // A good one: the new pair's slave reads "ab\n", "c;", an empty line VEOF ended, then nothing (the rest, "de", is not a line).
    const rec = master({ input: Buffer.from('ab\nc;de').toString('base64'), inputLines: [{ length: 3, eof: false }, { length: 2, eof: false }, { length: 0, eof: true }] });
    checkFiles([rec]);
    const n = native();
    const files = openFiles([rec], DEFAULT_FILE_OPTIONS, new Map());
    try {
      const s = n.ptyPeer(files.opened.get(1)!, O_RDWR | O_NOCTTY | O_NONBLOCK);
      try {
        assert.equal(n.ttyInq(s), 5, 'FIONREAD: the bytes of the complete lines');
        const reads: string[] = [];
        const b = Buffer.alloc(64);
        for (;;) {
          try {
            reads.push(b.subarray(0, readSync(s, b)).toString());
          } catch (err) {
            assert.equal((err as NodeJS.ErrnoException).code, 'EAGAIN');
            break;
          }
        }
        assert.deepEqual(reads, ['ab\n', 'c;', '']);
      } finally {
        n.closeFd(s);
      }
    } finally {
      closeFiles(files.opened);
    }
  });

  it('a packet-mode master with a status byte pending is refused, naming pid and fd, and keeps the byte', async () => {
    const w = await startWorkload(PTYS, ['status']);
    const fd = Number(/^master fd (\d+)$/m.exec(w.text())![1]);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd ${fd} .*status byte pending.*checkpoint again once the process has read it`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0, 'left alone');
    // The workload finds the status byte still pending, then its output in a packet of its own.
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('exclusive mode in an image is a boolean, and comes back on the master and on the slave of the new pair', () => {
    const O_RDWR = 2, O_NOCTTY = 0o400;
    const master = (extra: Record<string, unknown>): FileRecord => ({
      id: 1, kind: 'tty', role: 'master', path: '/dev/ptmx', flags: O_RDWR, index: 0, packet: true,
      termios: { iflag: 0, oflag: 0, cflag: 0o277, lflag: 0, line: 0, cc: new Array(19).fill(0), ispeed: 38400, ospeed: 38400 },
      winsize: { row: 24, col: 80, xpixel: 0, ypixel: 0 }, ...extra,
    });
    assert.throws(() => checkFiles([master({ exclusive: 1 })]),
      (e: unknown) => e instanceof FerryError && e.code === 'EIMAGE' && /file 1\) has an invalid exclusive mode/.test(e.message));
    const n = native();
    for (const [exclusive, masterExclusive] of [[true, false], [false, true]] as const) {
      const files = openFiles([master({ exclusive, masterExclusive })], DEFAULT_FILE_OPTIONS, new Map());
      try {
        const m = files.opened.get(1)!;
        const s = n.ptyPeer(m, O_RDWR | O_NOCTTY);
        try {
          assert.deepEqual([n.ttyExclusive(s), n.ttyExclusive(m)], [Number(exclusive), Number(masterExclusive)], 'exclusive mode of slave and master');
          assert.equal(n.ptyPacket(m), 1);
        } finally {
          n.closeFd(s);
        }
      } finally {
        closeFiles(files.opened);
      }
    }
  });

  it('a terminal from outside the tree is refused without --shell-job, naming pid, fd, tty and flag', async () => {
    const w = await startExternal('script');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd 0 -> ${w.tty}`));
    assert.match(cp.stderr, /--shell-job/);
    assert.equal(procState(w.pid).tracer, 0, 'left alone');
    // With the flag the dump works under script(1) too (left running: script's terminal goes
    // away with its child, so this one cannot be restored after a kill).
    const ok = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--shell-job', '--leave-running']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--shell-job: a session leader on an outside terminal comes back on the same terminal, twice', { skip: needs('python') }, async () => {
    const w = await startExternal('python');
    const image = join(w.dir, 'ext.tar');
    for (let i = 0; i < 2; i++) {
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--shell-job']);
      assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
      await waitFor('the pid to be free', () => !alive(w.pid), 8000);
      if (i === 0) {
        const no = ferry(['restore', '--image', image]);
        assert.equal(no.code, 1, 'restore without --shell-job is refused');
        assert.match(no.stderr, new RegExp(`terminal ${w.tty}.*--shell-job`));
        assert.ok(!alive(w.pid));
      }
      const rs = ferry(['restore', '--image', image, '--shell-job']);
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      await sleep(50);
    }
    assert.equal(await verify(w), 'PASS', w.text());
    assert.match(w.text(), /leader=1/);
  });

  it('a session whose controlling terminal no process holds open gets it back: /dev/tty opens it after restore', { skip: needs('python') }, async () => {
    // Leads its session (started detached), takes a pty slave as controlling terminal, closes
    // every descriptor of the slave and keeps only the master. On SIGUSR1: /dev/tty must open,
    // be the slave of the master it holds, and it must still lead its session.
    const py = [
      'import fcntl, os, signal, struct, termios, time',
      'm, s = os.openpty()',
      'fcntl.ioctl(s, termios.TIOCSCTTY, 0)',
      'os.close(s)',
      'flag = []',
      'signal.signal(signal.SIGUSR1, lambda *a: flag.append(1))',
      'print("ready pid=%d" % os.getpid(), flush=True)',
      'while not flag: time.sleep(0.01)',
      'n = struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\\0" * 4))[0]',
      'try:',
      '    fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)',
      '    dev = struct.unpack("I", fcntl.ioctl(fd, 0x80045432, b"\\0" * 4))[0]',  // TIOCGDEV: the terminal behind /dev/tty
      '    name = "/dev/pts/%d" % ((((dev >> 8) & 0xfff) - 136) * 256 + (dev & 0xff))',
      'except OSError as e:',
      '    name = "none (%s)" % e',
      'ok = name == "/dev/pts/%d" % n and os.getsid(0) == os.getpid() and os.tcgetpgrp(fd) == os.getpgrp()',
      'print("PASS" if ok else "FAIL /dev/tty is %s, the pair is /dev/pts/%d" % (name, n), flush=True)',
    ].join('\n');
    const lr = await startWorkload(PYTHON, ['-c', py]);
    const kept = ferry(['checkpoint', '--pid', String(lr.pid), '--image', join(lr.dir, 'lr.tar'), '--leave-running']);
    assert.equal(kept.code, 0, kept.stderr);
    assert.equal(await verify(lr), 'PASS', `--leave-running: ${lr.text()}`);
    const w = await startWorkload(PYTHON, ['-c', py]);
    const image = join(w.dir, 'ctty.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('the pid to be free', () => !alive(w.pid), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('a controlling terminal held only by a member of the session, not its leader, comes back with its foreground group', { skip: needs('python') }, async () => {
    // The leader takes a pty slave as controlling terminal, forks a member (in a group of its
    // own, made the foreground group) that keeps the slave, and closes its own: it keeps only
    // the master. On SIGUSR1 both check their session, /dev/tty and the foreground group.
    const py = [
      'import fcntl, os, signal, struct, termios, time',
      'm, s = os.openpty()',
      'fcntl.ioctl(s, termios.TIOCSCTTY, 0)',
      'r, w = os.pipe()',
      'leader = os.getpid()',
      'flag = []',
      'signal.signal(signal.SIGUSR1, lambda *a: flag.append(1))',
      'def pts():',
      '    return struct.unpack("I", fcntl.ioctl(m, 0x80045430, b"\\0" * 4))[0]',  // TIOCGPTN
      'def devtty():',
      '    try:',
      '        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)',
      '    except OSError as e:',
      '        return "none (%s)" % e, None',
      '    dev = struct.unpack("I", fcntl.ioctl(fd, 0x80045432, b"\\0" * 4))[0]',  // TIOCGDEV
      '    return "/dev/pts/%d" % ((((dev >> 8) & 0xfff) - 136) * 256 + (dev & 0xff)), fd',
      'kid = os.fork()',
      'if kid == 0:',
      '    os.close(r); os.close(m); os.setpgid(0, 0); os.write(w, b"x"); os.close(w)',
      '    while not flag: time.sleep(0.01)',
      '    ok = os.getsid(0) == leader and os.tcgetpgrp(s) == os.getpgrp() and struct.unpack("i", fcntl.ioctl(s, 0x5429, b"\\0" * 4))[0] == leader', // TIOCGSID
      '    print("kid: sid %d fg %d pgrp %d" % (os.getsid(0), os.tcgetpgrp(s), os.getpgrp()), flush=True)',
      '    os._exit(0 if ok else 1)',
      'os.close(w); os.read(r, 1); os.close(r)',
      'os.setpgid(kid, kid)',
      'os.tcsetpgrp(s, kid)',
      'os.close(s)',
      'print("ready pid=%d" % leader, flush=True)',
      'while not flag: time.sleep(0.01)',
      'name, fd = devtty()',
      'ok = name == "/dev/pts/%d" % pts() and fd is not None and os.tcgetpgrp(fd) == kid and os.getsid(0) == leader',
      'os.kill(kid, signal.SIGUSR1)',
      '_, st = os.waitpid(kid, 0)',
      'ok = ok and os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0',
      'print("PASS" if ok else "FAIL /dev/tty is %s, the pair is /dev/pts/%d, kid %d" % (name, pts(), st), flush=True)',
    ].join('\n');
    const lr = await startWorkload(PYTHON, ['-c', py]);
    own(children(lr.pid)[0]!);
    const kept = ferry(['checkpoint', '--pid', String(lr.pid), '--image', join(lr.dir, 'lr.tar'), '--leave-running']);
    assert.equal(kept.code, 0, kept.stderr);
    assert.equal(await verify(lr), 'PASS', `--leave-running: ${lr.text()}`);
    const w = await startWorkload(PYTHON, ['-c', py]);
    const kid = children(w.pid)[0]!;
    own(kid);
    const image = join(w.dir, 'member.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    await waitFor('the pids to be free', () => !alive(w.pid) && !alive(kid), 8000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  for (const mode of ['leader', 'parent'] as const) {
    it(`a job in the foreground of a terminal no process holds open comes back in the foreground (master held by the ${mode === 'leader' ? 'session leader' : 'leader\'s parent'})`, async () => {
      // The leader took a pty slave as controlling terminal, made a job's group the foreground
      // group, and every process closed the slave: /dev/tty, the foreground group through the
      // master and through /dev/tty, and input reaching the job must all come back.
      const args = mode === 'parent' ? ['parent'] : [];
      const tree = (w: Workload): number[] => {
        const kids = children(w.pid);
        return mode === 'parent' ? [...kids, ...kids.flatMap(children)] : kids;
      };
      const lr = await startWorkload(PTYJOB, args);
      for (const p of tree(lr)) own(p);
      const kept = ferry(['checkpoint', '--pid', String(lr.pid), '--image', join(lr.dir, 'lr.tar'), '--leave-running']);
      assert.equal(kept.code, 0, kept.stderr);
      assert.equal(procState(lr.pid).tracer, 0, 'detached');
      assert.equal(await verify(lr), 'PASS', `--leave-running: ${lr.text()}`);
      const w = await startWorkload(PTYJOB, args);
      const pids = tree(w);
      for (const p of pids) own(p);
      assert.equal(pids.length, mode === 'parent' ? 2 : 1);
      const image = join(w.dir, 'job.tar');
      for (let i = 0; i < 2; i++) {
        await cycleThrough(w, image, i, [], { tree: pids });
        assert.ok(pids.every(alive));
        assert.equal(procState(w.pid).tracer, 0);
      }
      assert.equal(await verify(w), 'PASS', w.text());
    });
  }

  it('a terminal no process holds open whose foreground group has no process left comes back with that group, empty, in the foreground; --leave-running too', async () => {
    // The job was the foreground group, then exited and was reaped, and nobody took the
    // terminal back: the terminal keeps the group's id. Restore makes the group around a
    // process with its id for the leader's TIOCSPGRP, and that process exits.
    const lr = await startWorkload(FGGONE, []);
    const kept = ferry(['checkpoint', '--pid', String(lr.pid), '--image', join(lr.dir, 'lr.tar'), '--leave-running']);
    assert.equal(kept.code, 0, kept.stderr);
    assert.equal(procState(lr.pid).tracer, 0, 'detached');
    assert.equal(await verify(lr), 'PASS', `--leave-running: ${lr.text()}`);
    const w = await startWorkload(FGGONE, []);
    const job = Number(/job (\d+)/.exec(w.text())![1]);
    const image = join(w.dir, 'fggone.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.ok(!alive(job), 'the process made for the group is gone');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an image whose terminal keeps an empty foreground group whose id a host process has is refused up front, naming the pid', async () => {
    // Restore makes that group around a process with its id (restore/tree.ts holdGroup): a pid
    // another process holds is refused before anything is made, as the image's own pids are.
    const w = await startWorkload(FGGONE, []);
    const job = Number(/job (\d+)/.exec(w.text())![1]);
    const image = join(w.dir, 'fggone.tar');
    await checkpointFreed(w, image);
    const host = spawn('sleep', ['120'], { stdio: 'ignore' });
    const taken = host.pid!;
    own(taken);
    const edited = join(w.dir, 'taken.tar');
    await editImage(image, edited, { 'files.json': json<FilesRecord>((v) => {
      const slaves = v.files.filter((f) => (f as { ctty?: { foreground: number | null } }).ctty?.foreground === job);
      assert.equal(slaves.length, 1, 'the slave keeps the job\'s group in the foreground');
      (slaves[0] as unknown as { ctty: { foreground: number } }).ctty.foreground = taken;
    }) });
    // `verified!` fails a restore that gets as far as its last check before making anything.
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root'], { env: { FERRY_TEST_PAUSE_AT: 'verified!' } });
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`^ferry restore: pid ${taken} \\(the id of process group ${taken}, a terminal's foreground group no process is in\\) is in use by another process \\(sleep\\)`));
    assert.equal(rs.stderr.trimEnd().split('\n').length, 1, 'one line');
    assert.ok(!alive(w.pid), 'nothing made');
    assert.ok(alive(taken), 'the host process untouched');
    host.kill('SIGKILL');
    // The image as it was restores.
    const ok = ferry(['restore', '--image', image]);
    assert.equal(ok.code, 0, ok.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('/dev/console, a virtual console as controlling terminal, /dev/tty and /dev/tty0 come back without --shell-job', { skip: noVt }, async () => {
    // The console's termios is the machine's: kept as it was found, whatever the test does.
    const saved = spawnSync('stty', ['-F', VT, '-g'], { encoding: 'utf8' }).stdout.trim();
    try {
      const w = await startWorkload(CONSOLES, [VT]);
      const image = join(w.dir, 'consoles.tar');
      const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
      assert.equal(lr.code, 0, lr.stderr);
      assert.equal(procState(w.pid).tracer, 0, 'detached');
      assert.equal(await verify(w), 'PASS', `--leave-running: ${w.text()}`);
      await w.exited;
      await waitFor('the pid to be free', () => !alive(w.pid), 8000);
      // Someone changes the console meanwhile: restore sets the image's termios back.
      assert.equal(spawnSync('stty', ['-F', VT, 'min', '9', 'time', '1']).status, 0);
      const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
      for (let i = 0; i < 2; i++) {
        const rs = ferry(['restore', '--image', image]);
        assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
        own(w.pid);
        assert.equal(procState(w.pid).tracer, 0);
        if (i === 0) {
          const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
          assert.equal(cp.code, 0, cp.stderr);
          await waitFor('the pid to be free', () => !alive(w.pid), 8000);
        }
      }
      assert.equal(await verify(w2), 'PASS', w2.text());
      if (/NOTE no ctty/.test(w.text())) process.stderr.write(`note: ${VT} is another session's controlling terminal; that part was not checked\n`);
    } finally {
      if (saved !== '') spawnSync('stty', ['-F', VT, saved]);
    }
  });
});
