/**
 * The leak scan (src/files/leaks.ts, run by src/dump/checkpoint.ts around the freeze): an open
 * file of the tree that a process outside it holds too would be split in two by a restore, so
 * checkpoint refuses it with one line naming both holders, and lets the tree go as it was. What
 * is not a leak is let through: the same file opened separately outside (kcmp(2) KCMP_FILE
 * tells the two open files apart) and a standard stream held outside (logged only).
 *
 * The tree is loop.py, which keeps its data file open at fd 3 and appends to it. Holders
 * outside are small python3 processes: one opens the data file itself, one takes the tree's
 * fd 3 with pidfd_getfd(2) (the same open file, offset and all), one takes its fd 1.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON, ROOT } from '../helpers/env.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const skip = needs('root', 'build', 'python');
after(cleanup);

const LOOP = join(ROOT, 'test', 'fixtures', 'workloads', 'loop.py');

/**
 * `holder open PID PATH` opens PATH itself; `holder getfd PID FD` takes fd FD of PID with
 * pidfd_getfd(2) (syscall 438 on x86-64, as python has no wrapper). Either prints
 * "holding fd=N" and sleeps.
 */
const HOLDER = `
import ctypes, os, sys, time
how, target, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if how == "open":
    fd = os.open(arg, os.O_RDONLY)
else:
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(target)
    fd = libc.syscall(438, pidfd, int(arg), 0)
    if fd < 0:
        print("cannot take fd:", os.strerror(ctypes.get_errno()), flush=True)
        sys.exit(1)
    os.close(pidfd)
print(f"holding fd={fd}", flush=True)
time.sleep(1000)
`;

/** A python3 process outside the tree holding a file of it (see HOLDER); killed by cleanup(). */
async function holder(how: 'open' | 'getfd', target: number, arg: string): Promise<{ pid: number; fd: number }> {
  const c = spawn(PYTHON, ['-c', HOLDER, how, String(target), arg], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
  own(c.pid!);
  let out = '';
  c.stdout.on('data', (d: Buffer) => { out += d.toString(); });
  await waitFor(`holder ${how} ${arg} to say what it holds`, () => out.includes('\n'));
  const m = /^holding fd=(\d+)$/m.exec(out);
  assert.ok(m, `holder ${how} ${arg}: ${out}`);
  return { pid: c.pid!, fd: Number(m[1]) };
}

/** The fd of `pid` whose link is `path`. */
function fdOf(pid: number, path: string): number {
  const fd = readdirSync(`/proc/${pid}/fd`).find((f) => readlinkSync(`/proc/${pid}/fd/${f}`) === path);
  assert.ok(fd !== undefined, `pid ${pid} holds ${path}`);
  return Number(fd);
}

/** The tree runs on as it did: alive, untraced, not stopped, still ticking. */
async function runsOn(w: Workload): Promise<void> {
  assert.ok(alive(w.pid), 'still alive');
  const st = procState(w.pid);
  assert.equal(st.tracer, 0, 'not traced');
  assert.ok(!'tTZ'.includes(st.state), `not stopped (state ${st.state})`);
  const n = w.ticks().length;
  await waitFor('ticks to continue', () => w.ticks().length >= n + 3);
}

describe('the leak scan', { skip, timeout: 120_000 }, () => {
  it('a file of the tree shared with a process outside is refused naming both holders, the tree runs on; a file opened separately and a shared stdout are not leaks', async () => {
    const w = await startWorkload(PYTHON, [LOOP, 'DIR']);
    const data = readlinkSync(`/proc/${w.pid}/cwd`) + '/loop.data';
    const inside = fdOf(w.pid, data);
    assert.ok(inside > 2, 'the data file is not a standard stream');
    const separate = await holder('open', w.pid, data);
    const stdout = await holder('getfd', w.pid, '1');
    const shared = await holder('getfd', w.pid, String(inside));
    assert.equal(readlinkSync(`/proc/${shared.pid}/fd/${shared.fd}`), data);

    const image = join(w.dir, 'leak.tar');
    const r = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    const message = `pid ${w.pid} fd ${inside} -> ${data} is also held outside the checkpointed tree, by pid ${shared.pid} (python3) fd ${shared.fd}: `
      + `restoring would split it in two; checkpoint a tree that holds every end, close it outside, or mark it --external ${data} `
      + `(then restore with --inherit-fd fd[N]:${data}, N your descriptor of it)`;
    assert.equal(lines[0], `ferry checkpoint: ${message}`);
    const json = JSON.parse(r.stdout.toString()) as { error: { code: string; message: string } };
    assert.deepEqual(json.error, { code: 'ELEAK', message, pid: w.pid, fd: inside, path: data });
    assert.ok(!existsSync(image), 'no image written');
    await runsOn(w);
    for (const h of [separate, stdout, shared]) assert.ok(alive(h.pid), `holder ${h.pid} untouched`);
    assert.equal(readlinkSync(`/proc/${shared.pid}/fd/${shared.fd}`), data, 'the outside holder still holds the file');

    // The same tree once the sharing holder is gone: the separate open and the shared stdout remain.
    process.kill(shared.pid, 'SIGKILL');
    await waitFor(`holder ${shared.pid} to be gone`, () => !alive(shared.pid));
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', 'the tree checks its state (its data file among it) after the refusal and a restore');
  });
});
