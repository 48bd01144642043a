/**
 * Fault cell of lazy pages (src/restore/lazy.ts): `ferry receive` SIGKILLed after the let-go
 * of a lazy restore, before its background fill (FERRY_TEST_PAUSE_AT=lazy), while most of the
 * tree's memory is still missing. Its userfaultfds close with it; were they the only ones, the
 * faulting threads would go on with zero pages. The watchdog holds copies: the tree must be
 * killed, not left running on zeros, and nothing is left on the target (no process, stub or
 * spool). The source was killed at the hand-over: ferry migrate keeps its copy and says so.
 *
 * The same for a runc container between the two nodes of test/helpers/nodes.ts: its tree is
 * killed, and the container's own watchdog (armed by the restore until every page is in)
 * deletes it from runc on the target; the source's killed record is deleted too, so that its
 * kept copy can be restored under its id by hand (the command the sender prints, detached). The
 * same at `created` and at the let-go of the container's restore. And `ferry migrate` SIGKILLed while the
 * target fills a container's pages: the target finishes (it holds the whole image, nothing
 * comes from the source after the kill), the container runs there, and the watchdog of the
 * source deletes its killed record. And the network cut while the target fills: the container
 * runs on there with every page, and the sender, unable to know, keeps its copy (ELOST).
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { dirtierBundle, dirtierRootfs, runcIn, runDirtier, stateIn, verifyDirtier } from '../helpers/dirtier-container.js';
import { needs } from '../helpers/env.js';
import { containersIn, makeNodes, nodesMissing, removeNodes, type Nodes } from '../helpers/nodes.js';
import { cleanup, own, scratchDir, stubs, verify, waitFor } from '../helpers/processes.js';
import { exitOf, killFerries, leftovers, migrationDir, records, startDirtier, startFerry } from '../helpers/precopy-run.js';
import { SKIP_RUNC_CRIU } from '../helpers/runc-criu.js';

const skip = needs('root', 'build');
const containerSkip = skip || nodesMissing() || SKIP_RUNC_CRIU;
after(() => { killFerries(); removeNodes(); cleanup(); });

/** Whether a ferry-watchdog holds a userfaultfd (the lazy pages' copies). */
function watchdogHoldsUffd(): boolean {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d)).some((d) => {
    try {
      return readFileSync(`/proc/${d}/comm`, 'utf8').startsWith('ferry-watchdog')
        && readdirSync(`/proc/${d}/fd`).some((fd) => readlinkSync(`/proc/${d}/fd/${fd}`) === 'anon_inode:[userfaultfd]');
    } catch {
      return false;
    }
  });
}

/** Whether `pid` runs (exists and is not a zombie). */
function running(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX]/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('fault cell: ferry receive hit while lazy pages are missing', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-lazy-faults-');

  for (const rounds of [[], ['--no-pre-copy']]) it(`SIGKILL before the background fill${rounds.length > 0 ? ' (--no-pre-copy)' : ''}: the restored tree is killed, the target holds nothing`, async () => {
    const w = await startDirtier(64, 10);
    const recv = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], 'lazy');
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', ...rounds, '--json', '--config', config]);
    own(w.pid);
    await waitFor('the target to run the tree with its pages missing', () => /paused at lazy/.test(recv.stderr())
      && records(recv).some((x) => x['phase'] === 'restore'), 90_000);
    await w.exited; // the source was killed at the hand-over and reaped here
    assert.ok(running(w.pid), 'the tree runs on the target');
    assert.match(readFileSync(`/proc/${w.pid}/smaps`, 'utf8'), /^VmFlags:.* um( |$)/m, 'areas registered for missing pages');

    // The watchdog holds the userfaultfds, so that ferry's death does not release them.
    assert.ok(watchdogHoldsUffd(), 'a watchdog holds the userfaultfds');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive'), 137);
    await waitFor('the restored tree to be killed', () => !running(w.pid), 15_000);
    assert.doesNotMatch(w.text(), /^FAIL/m, 'it never ran on a zero page');

    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    assert.match(mig.stderr(), /whether it runs on tcp:\/\/127\.0\.0\.1:\d+ is unknown/);
    // The target holds nothing; the source keeps its copy of the image (and nothing else).
    assert.deepEqual(leftovers(workDir).filter((n) => !/^ferry-migrate-\d+-.*\.tar$/.test(n)), []);
    assert.equal(leftovers(workDir).length, 1, 'the source kept its copy');
    assert.deepEqual(stubs(), []);
    for (const n of leftovers(workDir)) rmSync(join(workDir, n), { recursive: true, force: true });
  });
});

describe('fault cells: ferry receive hit while it rebuilds a lazily restored tree', { skip, timeout: 300_000 }, () => {
  const { workDir, config, key } = skip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-lazy-letgo-faults-');

  // The userfaultfds are made with each process's memory and held by the restore's one
  // watchdog from the moment the processes exist (restore.ts): after "created", and in the
  // let-go ("letgo": before the last process is let go), ferry SIGKILLed leaves nothing.
  for (const point of ['created', 'letgo']) it(`SIGKILL at ${point}: a watchdog holds the userfaultfds, the tree there dies, the target holds nothing, the source keeps its copy`, async () => {
    const w = await startDirtier(32, 10);
    const recv = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config], point);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--lazy', '--json', '--config', config]);
    own(w.pid);
    await waitFor(`the receiver to pause at ${point}`, () => new RegExp(`paused at ${point}`).test(recv.stderr()), 90_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    await w.exited; // the source was killed at the hand-over and reaped here
    assert.ok(watchdogHoldsUffd(), 'a watchdog holds the userfaultfds already');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive'), 137);
    await waitFor('the tree there to be gone', () => !running(w.pid), 15_000);
    await waitFor('the watchdog to let go of the userfaultfds', () => !watchdogHoldsUffd(), 15_000);
    assert.deepEqual(stubs(), []);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    const said = new RegExp(`whether it runs on tcp://127\\.0\\.0\\.1:${port} is unknown; if it does not, restore it here: ferry (restore --image \\S+.*)$`, 'm').exec(mig.stderr());
    assert.ok(said, mig.stderr());
    // The killed receiver's spool directory is left (the next receiver removes it: below); the
    // source keeps its copy of the image, which the command it printed restores here, intact.
    const kept = leftovers(workDir).filter((n) => /^ferry-migrate-\d+-.*\.tar$/.test(n));
    assert.equal(kept.length, 1, leftovers(workDir).join(' '));
    assert.deepEqual(leftovers(workDir).filter((n) => !kept.includes(n) && !n.startsWith('.ferry-receive-')), []);
    const next = startFerry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config]);
    await waitFor('the next receiver to listen', () => records(next).some((x) => x['phase'] === 'listen') || next.child.exitCode !== null);
    next.child.kill('SIGTERM');
    await exitOf(next, 'ferry receive');
    assert.deepEqual(leftovers(workDir), kept, 'the target holds nothing');
    const back = startFerry([...said[1]!.trim().split(/\s+/), '--config', config]);
    assert.equal(await exitOf(back, 'ferry restore'), 0, back.stderr());
    await waitFor('the tree to run here again', () => running(w.pid), 15_000);
    const n = w.ticks().length;
    await waitFor('it to write on', () => w.ticks().length >= n + 2, 15_000);
    assert.equal(await verify(w), 'PASS', 'every page right');
    process.kill(w.pid, 'SIGKILL');
    for (const f of leftovers(workDir)) rmSync(join(workDir, f), { recursive: true, force: true });
  });
});

describe('fault cell: ferry receive hit while a container\'s lazy pages are missing', { skip: containerSkip, timeout: 300_000 }, () => {
  const { workDir, config, key } = containerSkip ? { workDir: '', config: '', key: '' } : migrationDir('ferry-lazy-ctr-faults-');
  let nodes: Nodes;
  let dir = '';
  let rootfs = '';
  before(() => {
    nodes = makeNodes();
    dir = scratchDir('ferry-lazy-ctr-faults-rootfs-');
    rootfs = dirtierRootfs(dir);
  });

  it('SIGKILL before the background fill: the container there is killed and deleted, the target holds nothing', async () => {
    const log = join(dir, 'f1.log');
    // 256 MiB written at 1 MiB/s, at random: its faults alone bring every chunk in only after
    // seconds (at 32 MiB and 10 MiB/s they did within the checks below once a fault no longer
    // hashed the pages the page store holds), so pages are still missing when it is killed.
    await runDirtier(nodes.source, 'ferry-f1', dirtierBundle(nodes.source, 'ferry-f1', rootfs, 256, 1), log);
    const tb = dirtierBundle(nodes.target, 'ferry-f2', rootfs, 256, 1);
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config],
      'lazy', nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', 'ferry-f1', '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
      '--target-id', 'ferry-f2', '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--lazy', '--json', '--config', config], undefined, nodes.source);
    await waitFor('the target to run the container with its pages missing', () => /paused at lazy/.test(recv.stderr())
      && records(recv).some((x) => x['phase'] === 'restore'), 90_000);
    const st = stateIn(nodes.target, 'ferry-f2');
    assert.equal(st.status, 'running');
    assert.match(readFileSync(`/proc/${st.pid}/smaps`, 'utf8'), /^VmFlags:.* um( |$)/m, 'areas registered for missing pages');
    assert.ok(watchdogHoldsUffd(), 'a watchdog holds the userfaultfds');

    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive'), 137);
    await waitFor('the container on the target to be killed and deleted', () => containersIn(nodes.target.runcRoot).length === 0, 30_000);
    assert.doesNotMatch(readFileSync(log, 'utf8'), /^FAIL/m, 'it never ran on a zero page');

    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    assert.match(mig.stderr(), /whether it runs on tcp:\/\/\S+ is unknown; if it does not, restore it here: ferry restore ferry-f1 /);
    assert.equal(stateIn(nodes.source, 'ferry-f1').status, 'absent', 'the killed source\'s record is deleted: its id is free for the kept copy');
    assert.deepEqual(leftovers(workDir).filter((n) => !/^ferry-migrate-\d+-.*\.tar$/.test(n)), []);
    assert.equal(leftovers(workDir).length, 1, 'the source kept its copy');
    assert.deepEqual(stubs(), []);
    for (const n of leftovers(workDir)) rmSync(join(workDir, n), { recursive: true, force: true });
  });

  // As for a process (above), while the container's tree is rebuilt: ferry SIGKILLed after
  // its processes exist ("created") and before the last is let go ("letgo"). The restore's
  // watchdog holds the userfaultfds and kills the tree, the container's own deletes it from
  // runc there; the source's killed record is deleted and its kept copy restores it.
  for (const [n, point] of [[7, 'created'], [9, 'letgo']] as const) it(`SIGKILL at ${point}: the container there dies and is deleted, the target holds nothing, the source's copy restores it`, async () => {
    const log = join(dir, `f${n}.log`);
    const [src, dst] = [`ferry-f${n}`, `ferry-f${n + 1}`];
    await runDirtier(nodes.source, src, dirtierBundle(nodes.source, src, rootfs, 32, 1), log);
    const tb = dirtierBundle(nodes.target, dst, rootfs, 32, 1);
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config],
      point, nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', src, '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
      '--target-id', dst, '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--lazy', '--json', '--config', config], undefined, nodes.source);
    await waitFor(`the receiver to pause at ${point}`, () => new RegExp(`paused at ${point}`).test(recv.stderr()), 90_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    assert.ok(watchdogHoldsUffd(), 'a watchdog holds the userfaultfds already');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive'), 137);
    await waitFor('the container on the target to be killed and deleted', () => containersIn(nodes.target.runcRoot).length === 0, 30_000);
    await waitFor('the watchdog to let go of the userfaultfds', () => !watchdogHoldsUffd(), 15_000);
    assert.deepEqual(stubs(), []);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
    const said = new RegExp(`whether it runs on tcp://\\S+ is unknown; if it does not, restore it here: ferry (restore ${src} .*)$`, 'm').exec(mig.stderr());
    assert.ok(said, mig.stderr());
    assert.equal(stateIn(nodes.source, src).status, 'absent', 'the killed source\'s record is deleted: its id is free for the kept copy');
    const kept = leftovers(workDir).filter((x) => /^ferry-migrate-\d+-.*\.tar$/.test(x));
    assert.equal(kept.length, 1, leftovers(workDir).join(' '));
    // The kept copy, restored on the source as the command said: the container runs there
    // again with every page right.
    const back = startFerry([...said[1]!.trim().split(/\s+/), '--config', config], undefined, nodes.source);
    assert.equal(await exitOf(back, 'ferry restore', 120_000), 0, back.stderr());
    const st = stateIn(nodes.source, src);
    assert.equal(st.status, 'running');
    assert.equal(await verifyDirtier(st.pid, log), 'PASS');
    assert.equal(runcIn(nodes.source, 'delete', '--force', src).code, 0);
    for (const x of leftovers(workDir)) if (!x.startsWith('.ferry-receive-')) rmSync(join(workDir, x), { recursive: true, force: true });
  });

  it('the network cut while the target fills: the container runs on there, the sender gives up (ELOST) and keeps its copy', async () => {
    // It writes nothing (rate 0): its pages stay missing until the fill, held back 3 s.
    const log = join(dir, 'f5.log');
    await runDirtier(nodes.source, 'ferry-f5', dirtierBundle(nodes.source, 'ferry-f5', rootfs, 32, 0), log);
    const tb = dirtierBundle(nodes.target, 'ferry-f6', rootfs, 32, 0);
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config],
      'lazy+3000', nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', 'ferry-f5', '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
      '--target-id', 'ferry-f6', '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--lazy', '--json', '--config', config], undefined, nodes.source);
    try {
      await waitFor('the target to run the container with its pages missing', () => /paused at lazy/.test(recv.stderr())
        && records(recv).some((x) => x['phase'] === 'restore'), 90_000);
      nodes.link(false);
      assert.ok(!records(recv).some((x) => x['phase'] === 'filled'), 'pages were still missing when the link went down');
      // The target holds the whole image: it fills every page without the source.
      await waitFor('every page in on the target', () => records(recv).some((x) => x['phase'] === 'filled'), 30_000);
      assert.equal(await exitOf(mig, 'ferry migrate', 120_000), 1, mig.stderr());
    } finally {
      nodes.link(true);
    }
    assert.match(mig.stderr(), /whether it runs on tcp:\/\/\S+ is unknown; if it does not, restore it here: ferry restore ferry-f5 /);
    assert.equal(stateIn(nodes.source, 'ferry-f5').status, 'absent', 'the killed source\'s record is deleted');
    assert.equal(await exitOf(recv, 'ferry receive --once', 120_000), 0, recv.stderr());
    const st = stateIn(nodes.target, 'ferry-f6');
    assert.equal(st.status, 'running');
    assert.equal(await verifyDirtier(st.pid, log), 'PASS');
    assert.deepEqual(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')), []);
    assert.equal(runcIn(nodes.target, 'delete', '--force', 'ferry-f6').code, 0);
    for (const n of leftovers(workDir)) rmSync(join(workDir, n), { recursive: true, force: true }); // the sender's kept copy
  });

  it('the sender SIGKILLed while the target fills: it finishes, the container runs there, the killed source is deleted', async () => {
    // It writes nothing (rate 0): its pages stay missing until the fill, held back 3 s.
    const log = join(dir, 'f3.log');
    await runDirtier(nodes.source, 'ferry-f3', dirtierBundle(nodes.source, 'ferry-f3', rootfs, 32, 0), log);
    const tb = dirtierBundle(nodes.target, 'ferry-f4', rootfs, 32, 0);
    const recv = startFerry(['receive', '--listen', `${nodes.target.addr}:0`, '--key', key, '--json', '--once', '--max-creds', 'root', '--config', config],
      'lazy+3000', nodes.target);
    await waitFor('the receiver to listen', () => records(recv).some((x) => x['phase'] === 'listen') || recv.child.exitCode !== null);
    const port = records(recv).find((x) => x['phase'] === 'listen')!['port'] as number;
    const mig = startFerry(['migrate', 'ferry-f3', '--root', nodes.source.runcRoot, '--to', `tcp://${nodes.target.addr}:${port}`, '--key', key,
      '--target-id', 'ferry-f4', '--target-bundle', tb, '--target-root', nodes.target.runcRoot, '--lazy', '--json', '--config', config], undefined, nodes.source);
    await waitFor('the target to run the container with its pages missing', () => /paused at lazy/.test(recv.stderr())
      && records(recv).some((x) => x['phase'] === 'restore'), 90_000);
    assert.equal(stateIn(nodes.source, 'ferry-f3').status, 'stopped', 'killed, kept until every page is in there');
    assert.ok(!records(recv).some((x) => x['phase'] === 'filled'), 'pages are still missing');
    mig.child.kill('SIGKILL');
    assert.equal(await exitOf(mig, 'ferry migrate'), 137);
    await waitFor('the watchdog to delete the killed source', () => stateIn(nodes.source, 'ferry-f3').status === 'absent', 10_000);
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    assert.ok(records(recv).some((x) => x['phase'] === 'filled'), 'every page is in');
    const st = stateIn(nodes.target, 'ferry-f4');
    assert.equal(st.status, 'running');
    assert.doesNotMatch(readFileSync(`/proc/${st.pid}/smaps`, 'utf8'), /^VmFlags:.* um( |$)/m, 'nothing left registered');
    assert.equal(await verifyDirtier(st.pid, log), 'PASS');
    assert.deepEqual(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')), []);
    assert.deepEqual(stubs(), []);
    assert.equal(runcIn(nodes.target, 'delete', '--force', 'ferry-f4').code, 0);
  });
});
