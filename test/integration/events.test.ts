/**
 * epoll, inotify and fanotify through bin/ferry: build/workloads/events holds nested, shared,
 * edge-triggered (one with an edge pending), one-shot (armed, and fired: reporting nothing
 * until EPOLL_CTL_MOD), exclusive and EPOLLWAKEUP epoll items, inotify watches with chosen descriptors
 * (one above 0x34d71d6) and fanotify inode, mount and filesystem marks, and checks them itself
 * after restore; build/workloads/epollfired has a fired one-shot item on each kind of target;
 * build/workloads/epolldetach has items whose number no longer holds their file (`kid`: on
 * pipes only a child holds, the epoll's holder having closed them).
 * What cannot be restored is refused with the process left running. Watches on a process's
 * removed working directory (build/workloads/cwdwatch) and on its removed root directory
 * (build/workloads/rootwatch) come back through the restored directories. A task held by a
 * fanotify permission event awaiting its answer (build/workloads/fanperm) is refused up front.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { FilesRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, cycleThrough, ferry, own, ownTree, procState, scratchDir, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** Children of `pid` (the workload forks one). */
const children = (pid: number): number[] =>
  readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number);

describe('epoll, inotify, fanotify', { skip, timeout: 120_000 }, () => {
  it('come back with every item, watch descriptor and mark, three cycles in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'events'), ['DIR']);
    const kids = children(w.pid);
    assert.equal(kids.length, 1, 'the workload forked its child');
    for (const k of kids) own(k);
    const image = join(w.dir, 'events.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(50);
      await cycleThrough(w, image, i, [], { tree: kids });
      assert.deepEqual(children(w.pid), kids, 'same child');
    }
    // The watch with descriptor 0x34d71d7 is restored at once (INOTIFY_IOC_SETNEXTWD) and
    // reports its event with that descriptor: the workload checks it.
    assert.equal(await verify(w), 'PASS');
  });

  it('epoll items whose number no longer holds their file come back under their numbers', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epolldetach'), ['DIR']);
    const image = join(w.dir, 'detached.tar');
    await cycleThrough(w, image, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('detached epoll items: --leave-running leaves the original as it was', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epolldetach'), ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('epoll items on pipes only a child holds (the parent closed them) come back and fire; twice in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epolldetach'), ['DIR', 'kid']);
    const tree = ownTree(w);
    assert.equal(tree.length, 2, 'the workload forked its child');
    const image = join(w.dir, 'kid.tar');
    // The second checkpoint reads the items the first restore made.
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i, [], { tree: tree.slice(1) });
    assert.equal(await verify(w), 'PASS');
  });

  it('epoll items on pipes only a child holds: --leave-running leaves them as they were', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epolldetach'), ['DIR', 'kid']);
    ownTree(w);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'kid-lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS');
  });

  it('a fired one-shot item on an idle pipe comes back disarmed, leaving no byte or edge; twice in a row', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollidle'), ['DIR']);
    const image = join(w.dir, 'idle.tar');
    // The second checkpoint reads the state the first restore made.
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i);
    assert.equal(await verify(w), 'PASS');
  });

  it('a fired one-shot item on an idle pipe: --leave-running leaves it as it was, and the image restores it', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollidle'), ['DIR']);
    const image = join(w.dir, 'idle-lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original is intact');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', 'the restored copy');
  });

  it('a fired one-shot item comes back disarmed on every kind of target (sockets, eventfd, timerfd, signalfd, one-page pipe, inotify)', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollfired'), ['DIR']);
    const image = join(w.dir, 'fired.tar');
    for (let i = 0; i < 2; i++) await cycleThrough(w, image, i, ['--tcp-established']);
    assert.equal(await verify(w), 'PASS');
  });

  it('fired one-shot items on every kind: --leave-running leaves them as they were, and the image restores them', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollfired'), ['DIR']);
    const image = join(w.dir, 'fired-lr.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running', '--tcp-established']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original is intact');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid), 5000);
    const rs = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', 'the restored copy');
  });

  it('refuses a fired one-shot item on an idle FIFO in one line (disarming it would write to the FIFO) and leaves it as it was', async () => {
    const w = await startWorkload(join(WORKLOADS, 'epollfired'), ['DIR', 'fifo']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'fifo.tar')]);
    assert.equal(cp.code, 1, cp.stderr);
    assert.match(cp.stderr, new RegExp(`^ferry checkpoint: unsupported file: pid ${w.pid} fd \\d+ -> anon_inode:\\[eventpoll\\] `
      + `\\(its EPOLLONESHOT item on fd \\d+ \\(FIFO ${w.dir}/fifo\\) fired and the FIFO is ready for nothing: .*EPOLL_CTL_MOD`, 'm'));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', 'the item is as it was');
  });

  it('--leave-running changes nothing, and the image restores the same state', async () => {
    const w = await startWorkload(join(WORKLOADS, 'events'), ['DIR']);
    const kids = children(w.pid);
    for (const k of kids) own(k);
    const image = join(w.dir, 'events.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', 'the original is intact');
    await w.exited;
    await waitFor('the child to be gone', () => kids.every((k) => !alive(k)), 8000);
    // The first run's checks created DIR/watched/new and wrote to DIR/watched/ffile: the
    // restored copy's own checks expect a fresh directory entry, so remove it.
    rmSync(join(w.dir, 'watched', 'new'));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', 'the restored copy');
  });

  const refusals: Array<[string, RegExp]> = [
    ['queued', /^ferry checkpoint: unsupported file: pid (\d+) fd \d+ -> anon_inode:inotify \(\d+ bytes of events are queued/m],
    // Restore makes a pidfd once the tree exists, after the watches: it would wait for ever.
    ['pidfd-watch', /^ferry checkpoint: unsupported file: pid (\d+) fd \d+ -> anon_inode:inotify \(watch 1 is on anon_inode:\[pidfd\], no file of a file system/m],
  ];
  for (const [mode, message] of refusals) {
    it(`refuses ${mode} state clearly and leaves the process running`, async () => {
      const w = await startWorkload(join(WORKLOADS, 'events'), ['DIR', mode]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar')]);
      assert.equal(cp.code, 1, cp.stderr);
      const m = message.exec(cp.stderr);
      assert.ok(m, cp.stderr);
      assert.equal(Number(m[1]), w.pid);
      assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
      assert.ok(alive(w.pid));
      assert.equal(procState(w.pid).tracer, 0, 'not traced');
      assert.notEqual(procState(w.pid).state, 'T', 'not stopped');
    });
  }
});

describe('a fanotify permission event awaiting its answer', { skip, timeout: 120_000 }, () => {
  it('a task held in open(2) by it is refused at once, in one line naming it; the tree runs on untraced and answers it', async () => {
    // build/workloads/fanperm: its child sleeps in fanotify's wait for the group's answer,
    // where PTRACE_INTERRUPT does not reach it (the old code waited 30 s for its stop).
    const w = await startWorkload(join(WORKLOADS, 'fanperm'), ['DIR']);
    const [kid] = children(w.pid);
    const t0 = Date.now();
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--leave-running']);
    assert.equal(cp.code, 1, cp.stderr);
    assert.equal(cp.stderr, `ferry checkpoint: pid ${kid} (in the tree of ${w.pid}) (fanperm) is blocked in state D (wchan fanotify_handle_event) `
      + 'until a fanotify listener answers the permission event its file access raised, and cannot be stopped before: have the listener '
      + 'answer it (FAN_ALLOW or FAN_DENY), then checkpoint again\n');
    assert.ok(Date.now() - t0 < 20_000, 'refused before any wait for its stop');
    for (const pid of [w.pid, kid!]) assert.equal(procState(pid).tracer, 0, `pid ${pid} not traced`);
    assert.notEqual(procState(w.pid).state, 'T', 'not stopped');
    assert.equal(await verify(w), 'PASS');
  });
});

describe('queued inotify and fanotify events (--drop-queued-events), a watch and a mark on a removed file', { skip, timeout: 120_000 }, () => {
  const NOTIFYQ = join(WORKLOADS, 'notifyq');
  /** The workload's "inotify queued N" and "fanotify queued N" counts, in `text`. */
  const queued = (text: string): string[] => text.split('\n').filter((l) => / queued \d+$/.test(l));
  const warned = (stderr: string, pid: number): void => {
    for (const kind of ['inotify', '\\[fanotify\\]']) {
      assert.match(stderr, new RegExp(`^warning: pid ${pid} fd \\d+ \\(anon_inode:${kind}\\): \\d+ bytes of queued events dropped \\(--drop-queued-events\\)`, 'm'));
    }
  };

  it('are dropped with a warning naming each descriptor; the restored instances start empty and work; the removed file is watched and marked again', async () => {
    const w = await startWorkload(NOTIFYQ, ['DIR']);
    const image = join(w.dir, 'q.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--drop-queued-events']);
    assert.equal(cp.code, 0, cp.stderr);
    warned(cp.stderr, w.pid);
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(queued(w.text()), ['inotify queued 0', 'fanotify queued 0']);
  });

  it('--leave-running: the original keeps its queued events and its removed file\'s watch and mark', async () => {
    const w = await startWorkload(NOTIFYQ, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running', '--drop-queued-events']);
    assert.equal(cp.code, 0, cp.stderr);
    warned(cp.stderr, w.pid);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(queued(w.text()), ['inotify queued 1', 'fanotify queued 1']);
  });

  it('without the flag, or for a fanotify group of a content class, refused with one line; the process runs on', async () => {
    for (const [args, flags, message] of [
      [[], [], /^ferry checkpoint: unsupported file: pid (\d+) fd \d+ -> anon_inode:inotify \(\d+ bytes of events are queued.* or drop them with --drop-queued-events\)$/m],
      [['content'], ['--drop-queued-events'], /^ferry checkpoint: unsupported file: pid (\d+) fd \d+ -> anon_inode:\[fanotify\] \(\d+ bytes of events are queued.*permission events awaiting an answer/m],
    ] as const) {
      const w = await startWorkload(NOTIFYQ, ['DIR', ...args]);
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), ...flags]);
      assert.equal(cp.code, 1, cp.stderr);
      const m = message.exec(cp.stderr);
      assert.ok(m, cp.stderr);
      assert.equal(Number(m[1]), w.pid);
      assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
      assert.equal(procState(w.pid).tracer, 0, 'not traced');
      assert.equal(await verify(w), 'PASS', 'the process runs on with its queues');
      assert.deepEqual(queued(w.text()), ['inotify queued 1', 'fanotify queued 1']);
    }
  });
});

describe('an inotify watch on the process\'s own removed working directory', { skip, timeout: 120_000 }, () => {
  const CWDWATCH = join(WORKLOADS, 'cwdwatch');

  it('comes back on the restored removed working directory, with its descriptor and mask, and reports a chmod of it; no name is left', async () => {
    const w = await startWorkload(CWDWATCH, ['DIR']);
    const image = join(w.dir, 'cwdwatch.tar');
    await checkpointFreed(w, image);
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('d') || n.includes('ferry-')), [], 'the directory made for the restore is gone');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('in an unsigned image, its path is text the host never judges: a path there its process could not read is no refusal', async () => {
    // The watch is added through the restored process's own working directory (/proc/PID/cwd),
    // never by the path recorded with it, so a host directory of that name is nothing to it.
    const base = scratchDir('ferry-cwdwatch-');
    chownSync(base, 65534, 65534);
    const w = await startWorkload('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', CWDWATCH, base]);
    const image = join(w.dir, 'cwdwatch.tar');
    await checkpointFreed(w, image);
    // Its own files (the log its output goes to, in the test's root-only directory) it may open.
    chmodSync(w.dir, 0o755);
    chmodSync(w.log, 0o666);
    const secret = scratchDir('ferry-secret-'); // root's, mode 0700: nobody may not read it
    const edited = join(w.dir, 'secret.tar');
    await editImage(image, edited, { 'files.json': json<FilesRecord>((v) => {
      const onCwd = v.files.flatMap((f) => (f.kind === 'inotify' ? (f as unknown as { watches: Array<{ cwd?: number; path: string }> }).watches : []))
        .filter((x) => x.cwd !== undefined);
      assert.equal(onCwd.length, 1, 'one watch on a removed working directory');
      onCwd[0]!.path = secret;
    }) });
    const rs = ferry(['restore', '--image', edited]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves the watch as it was', async () => {
    const w = await startWorkload(CWDWATCH, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('inotify watches on the process\'s removed root directory (chroot(2))', { skip, timeout: 120_000 }, () => {
  const ROOTWATCH = join(WORKLOADS, 'rootwatch');

  it('come back on the restored removed root and working directory, each with its descriptor and mask, twice; no name is left', async () => {
    const w = await startWorkload(ROOTWATCH, ['DIR']);
    const image = join(w.dir, 'rootwatch.tar');
    for (let i = 0; i < 2; i++) {
      await cycleThrough(w, image, i);
      assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail') || n.includes('ferry-')), [], 'the directories made for the restore are gone');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('comes back when the root is the working directory too', async () => {
    const w = await startWorkload(ROOTWATCH, ['DIR', 'cwd']);
    await cycleThrough(w, join(w.dir, 'cwd.tar'), 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves the watches as they were', async () => {
    const w = await startWorkload(ROOTWATCH, ['DIR']);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('an edited watch naming a process whose root was not removed is refused in one line before anything is made', async () => {
    const w = await startWorkload(ROOTWATCH, ['DIR']);
    const image = join(w.dir, 'rootwatch.tar');
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'edited.tar');
    await editImage(image, edited, { 'files.json': json<{ files: Array<{ kind: string; watches?: Array<{ root?: number; cwd?: number }> }> }>((v) => {
      const watch = v.files.find((f) => f.kind === 'inotify')!.watches!.find((x) => x.root !== undefined)!;
      watch.root = w.pid + 1;
    }) });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1, rs.stderr);
    assert.match(rs.stderr, new RegExp(`^ferry restore: image ${edited}: file \\d+ \\(inotify\\) has watch 1 on the removed root directory of pid ${w.pid + 1}, `
      + 'which is no process of the image whose root directory was removed: refused \\(an edited image\\); nothing was restored\\n$'));
    assert.ok(!alive(w.pid), 'no process made');
    assert.deepEqual(readdirSync(w.dir).filter((n) => n.startsWith('jail') || n.includes('ferry-')), [], 'no directory made');
  });
});
