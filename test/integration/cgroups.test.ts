/**
 * Cgroups of a plain process tree through bin/ferry (src/cgroups/, `--manage-cgroups`).
 * build/workloads/cgroups moves itself into cgroups this test made (unique names, v1 pids,
 * memory, cpu, cpuset and the v2 hierarchy) and its second thread alone into another v1 pids
 * cgroup, keeps what /proc/self/task/TID/cgroup said, and compares after restore. The test
 * checks the settings the restore wrote, what each mode does with existing cgroups, the trust
 * rule for unsigned images, and refused edits; and the newer v1 settings (cpu.idle, burst and
 * real-time time, cpuset's memory flags, BFQ's weight, the OOM killer's switch) with the one
 * warning line per cgroup a checkpoint gives for what it does not carry (a disk's read limit, a
 * list of allowed devices). Every cgroup it made is removed after.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { CgroupsRecord } from '../../src/cgroups/record.js';
import { rmCgroupTree } from '../helpers/cgroups.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify, waitFor, type Workload } from '../helpers/processes.js';

const CG = '/sys/fs/cgroup';
const skip = needs('root', 'build') || (!existsSync(join(CG, 'pids', 'pids.max')) && !existsSync(join(CG, 'pids'))
  ? 'needs the v1 pids controller at /sys/fs/cgroup/pids (a hybrid host)' : false);
const NAME = `ferry-test-cg-${process.pid}-${Date.now().toString(36)}`;
const CGROUPS = join(WORKLOADS, 'cgroups');

/** Every cgroup directory this file made, to remove (deepest first) after. */
const made = new Set<string>();

function mk(dir: string, settings: Record<string, string> = {}): string {
  const parts = dir.slice(CG.length + 1).split('/');
  for (let i = 2; i <= parts.length; i++) {
    const d = join(CG, ...parts.slice(0, i));
    if (!existsSync(d)) mkdirSync(d);
    made.add(d);
  }
  for (const [file, value] of Object.entries(settings)) writeFileSync(join(dir, file), value);
  return dir;
}

after(async () => {
  cleanup();
  for (const d of [...made].sort((a, b) => b.length - a.length)) await rmCgroupTree(d).catch(() => {});
});

/** The cgroup (per hierarchy key) of `pid`'s thread `tid`. */
function cgroupsOf(pid: number, tid = pid): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/task/${tid}/cgroup`, 'utf8').split('\n').filter(Boolean)) {
    const [, key = '', path = ''] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    out.set(key, path);
  }
  return out;
}

/** The test's own cgroup in `key`: ferry, run from here, is in it too. */
const ownCgroup = (key: string): string => cgroupsOf(process.pid).get(key) ?? '/';

const read = (dir: string, file: string): string => readFileSync(join(dir, file), 'utf8').trim();
const firstCpu = (): string => read(join(CG, 'cpuset'), 'cpuset.effective_cpus').split(/[,-]/)[0]!;

interface Layout {
  /** cgroup.procs files the process joins. */
  procs: string[];
  /** `tasks` files its second thread joins. */
  tasks: string[];
  /** The cgroups with the settings they got, to check after restore. */
  settings: Array<[string, Record<string, string>]>;
  /** The top cgroups of the layout, to remove whole. */
  tops: string[];
}

/**
 * Cgroups under `NAME/sub` in the v1 controllers given and the v2 hierarchy, with limits;
 * `extra` adds settings to a controller's `a` (written after its own, checked after restore).
 */
function layout(sub: string, controllers: readonly string[], extra: Record<string, Record<string, string>> = {}): Layout {
  const l: Layout = { procs: [], tasks: [], settings: [], tops: [] };
  const add = (ctrl: string, own: Record<string, string>): void => {
    const settings = { ...own, ...extra[ctrl] };
    const dir = mk(join(CG, ctrl, NAME, sub, 'a'), settings);
    l.procs.push(join(dir, 'cgroup.procs'));
    l.settings.push([dir, settings]);
    l.tops.push(join(CG, ctrl, NAME, sub));
  };
  if (controllers.includes('pids')) {
    add('pids', { 'pids.max': '100' });
    const t = mk(join(CG, 'pids', NAME, sub, 't'), { 'pids.max': '50' });
    l.tasks.push(join(t, 'tasks'));
    l.settings.push([t, { 'pids.max': '50' }]);
  }
  if (controllers.includes('memory')) add('memory', { 'memory.limit_in_bytes': String(256 << 20), 'memory.soft_limit_in_bytes': String(128 << 20) });
  if (controllers.includes('cpu')) add('cpu', { 'cpu.shares': '512', 'cpu.cfs_period_us': '100000', 'cpu.cfs_quota_us': '50000' });
  if (controllers.includes('cpuset')) {
    mk(join(CG, 'cpuset', NAME), { 'cpuset.cpus': read(join(CG, 'cpuset'), 'cpuset.cpus'), 'cpuset.mems': read(join(CG, 'cpuset'), 'cpuset.mems') });
    mk(join(CG, 'cpuset', NAME, sub), { 'cpuset.cpus': firstCpu(), 'cpuset.mems': '0' });
    add('cpuset', { 'cpuset.cpus': firstCpu(), 'cpuset.mems': '0' });
  }
  if (controllers.includes('blkio')) add('blkio', {});
  if (controllers.includes('devices')) add('devices', {});
  if (controllers.includes('unified')) add('unified', {});
  return l;
}

async function start(l: Layout): Promise<Workload & { tid: number }> {
  const w = await startWorkload(CGROUPS, [...l.procs, '--', ...l.tasks]);
  const tid = Number(/ready pid=\d+ tid=(\d+)/.exec(w.text())![1]);
  return { ...w, tid };
}

/** Removes the layout's cgroups (once the process left them). */
async function removeLayout(l: Layout): Promise<void> {
  for (const top of l.tops) await rmCgroupTree(top);
  for (const top of l.tops) assert.ok(!existsSync(top), `${top} removed`);
}

function checkSettings(l: Layout): void {
  for (const [dir, settings] of l.settings) {
    for (const [file, value] of Object.entries(settings)) assert.equal(read(dir, file), value, `${dir}/${file}`);
  }
}

/**
 * After a --leave-running checkpoint of `w` into `image`: it is left in its cgroups `before`,
 * untraced, passing its checks; once it has exited and its cgroups `l` are removed, the image
 * restores it with --manage-cgroups into the same cgroups, made again, without a warning.
 */
async function leftThenRestored(w: Workload, l: Layout, image: string, before: Map<string, string>): Promise<void> {
  assert.deepEqual(cgroupsOf(w.pid), before, 'left where it was');
  assert.equal(procState(w.pid).tracer, 0);
  assert.equal(await verify(w), 'PASS', w.text());
  await w.exited;
  await waitFor('the pid to be free', () => !alive(w.pid), 8000);
  await removeLayout(l);
  const rs = restoreOk(image, '--manage-cgroups');
  own(w.pid);
  assert.equal(rs.stderr, '', 'no warning');
  assert.deepEqual(cgroupsOf(w.pid), before);
}

/** Restores `image` and waits until its pids are in use; returns the run. */
function restoreOk(image: string, ...flags: string[]): ReturnType<typeof ferry> {
  const rs = ferry(['restore', '--image', image, ...flags]);
  assert.equal(rs.code, 0, rs.stderr);
  return rs;
}

const V1 = ['pids', 'memory', 'cpu', 'cpuset', 'unified'] as const;

describe('cgroups (--manage-cgroups)', { skip, timeout: 180_000 }, () => {
  it('without the option the tree stays in ferry\'s cgroups; with it every thread goes back, the cgroups made again with their limits', async () => {
    const l = layout('one', V1);
    const w = await start(l);
    const before = [cgroupsOf(w.pid), cgroupsOf(w.pid, w.tid)];
    assert.equal(before[1]!.get('pids'), `/${NAME}/one/t`, 'the thread is in its own pids cgroup');
    assert.equal(before[0]!.get('pids'), `/${NAME}/one/a`);
    const image = join(w.dir, 'cg.tar');
    await checkpointFreed(w, image);

    // ignore (the default): the restored process is where ferry is.
    restoreOk(image);
    own(w.pid);
    assert.equal(cgroupsOf(w.pid).get('pids'), ownCgroup('pids'));
    assert.equal(cgroupsOf(w.pid, w.tid).get('memory'), ownCgroup('memory'));
    process.kill(w.pid, 'SIGKILL');
    await waitFor('the pid to be free', () => !alive(w.pid), 8000);

    // soft, with every cgroup gone: made again, limits and all.
    await removeLayout(l);
    const rs = restoreOk(image, '--manage-cgroups');
    assert.equal(rs.stderr, '', 'no warning');
    assert.deepEqual(cgroupsOf(w.pid), before[0]);
    assert.deepEqual(cgroupsOf(w.pid, w.tid), before[1]);
    checkSettings(l);
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running changes nothing; soft keeps the limits of existing cgroups, full sets them, strict too', async () => {
    const l = layout('two', ['pids', 'memory', 'unified']);
    const w = await start(l);
    const image = join(w.dir, 'cg.tar');
    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    const pidsA = join(CG, 'pids', NAME, 'two', 'a');
    writeFileSync(join(pidsA, 'pids.max'), '77');
    assert.equal(await verify(w), 'PASS', w.text());
    await w.exited;
    await waitFor('the pid to be free', () => !alive(w.pid), 8000);

    restoreOk(image, '--manage-cgroups=soft');
    own(w.pid);
    assert.equal(read(pidsA, 'pids.max'), '77', 'soft leaves an existing cgroup as it is');
    assert.equal(cgroupsOf(w.pid).get('pids'), `/${NAME}/two/a`);
    process.kill(w.pid, 'SIGKILL');
    await waitFor('the pid to be free', () => !alive(w.pid), 8000);

    restoreOk(image, '--manage-cgroups=full');
    assert.equal(read(pidsA, 'pids.max'), '100', 'full sets the recorded limit');
    assert.equal(cgroupsOf(w.pid, w.tid).get('pids'), `/${NAME}/two/t`);
    process.kill(w.pid, 'SIGKILL');
    await waitFor('the pid to be free', () => !alive(w.pid), 8000);

    writeFileSync(join(pidsA, 'pids.max'), '77');
    restoreOk(image, '--manage-cgroups-mode', 'strict');
    assert.equal(read(pidsA, 'pids.max'), '100');
    checkSettings(l);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', w2.text());
  });

  it('an unsigned image: only below ferry\'s own cgroups and only soft', async () => {
    // Hierarchies where ferry's own cgroup is the root: anything is below it.
    const rootOnly = V1.filter((c) => ownCgroup(c === 'unified' ? '' : c) === '/' && c !== 'cpuset');
    const l = layout('three', rootOnly);
    const w = await start(l);
    const image = join(w.dir, 'cg.tar');
    await checkpointFreed(w, image);
    await removeLayout(l);
    const unsigned = join(w.dir, 'unsigned.tar');
    await editImage(image, unsigned, []);

    const full = ferry(['restore', '--image', unsigned, '--max-creds', 'root', '--manage-cgroups=full']);
    assert.equal(full.code, 1);
    assert.match(full.stderr, /^ferry restore: image .*unsigned\.tar: --manage-cgroups=full writes the image's settings into existing cgroups, which only an image a trusted key signed may do: .*nothing was restored\n$/);
    assert.ok(!alive(w.pid));

    // Edited to go outside ferry's own cgroup of a hierarchy where it has one (memory here).
    const key = ['memory', 'cpu', 'pids', 'cpuset', ''].find((k) => ownCgroup(k) !== '/');
    if (key !== undefined) {
      const outside = join(w.dir, 'outside.tar');
      await editImage(image, outside, [[/^cgroups\.json$/, json<CgroupsRecord>((r) => {
        let h = r.hierarchies.indexOf(key);
        if (h < 0) h = r.hierarchies.push(key) - 1;
        const c = r.cgroups.push({ hierarchy: h, path: `/${NAME}-elsewhere`, settings: {} }) - 1;
        for (const t of r.tasks) {
          while (t.cgroups.length < r.hierarchies.length) t.cgroups.push(-1);
          t.cgroups[h] = c;
          for (const th of t.threads ?? []) while (th.cgroups.length < r.hierarchies.length) th.cgroups.push(-1);
        }
      })]]);
      const rs = ferry(['restore', '--image', outside, '--max-creds', 'root', '--manage-cgroups']);
      assert.equal(rs.code, 1);
      assert.equal(rs.stderr, `ferry restore: image ${outside}: pid ${w.pid} would go into cgroup /${NAME}-elsewhere of ${key === '' ? 'cgroup v2' : key}, `
        + `outside the restorer's own (${ownCgroup(key)}), which an image no trusted key signed may not do: sign it and restore with --trust, `
        + 'or restore with --manage-cgroups=ignore; nothing was restored\n');
      assert.ok(!alive(w.pid));
      for (const top of l.tops) assert.ok(!existsSync(top), 'nothing made');
    }

    // Below ferry's own, soft: made, with the recorded limits, and joined. (A restore that
    // fails after making them removes them: test/faults/cgroups.test.ts.)
    const rs = restoreOk(unsigned, '--max-creds', 'root', '--manage-cgroups');
    assert.equal(rs.stderr, '');
    own(w.pid);
    checkSettings(l);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('carries the newer limits, weights and flags (v1), warns once per cgroup about what it does not carry; --leave-running', async (t) => {
    // Real-time time is hierarchical: the parents get some first (NAME stays; NAME/five is
    // removed and made again from the image, with its own).
    const rt = existsSync(join(CG, 'cpu', 'cpu.rt_runtime_us'));
    if (rt) {
      mk(join(CG, 'cpu', NAME), { 'cpu.rt_runtime_us': '20000' });
      mk(join(CG, 'cpu', NAME, 'five'), { 'cpu.rt_runtime_us': '10000' });
    }
    const bfq = existsSync(join(CG, 'blkio', 'blkio.bfq.weight')) || existsSync(join(mk(join(CG, 'blkio', NAME)), 'blkio.bfq.weight'));
    // Said, not skipped silently: a kernel without RT group scheduling or BFQ leaves those out.
    if (!rt) t.diagnostic('cpu.rt_runtime_us is not on this kernel (no RT group scheduling): real-time time not checked');
    if (!bfq) t.diagnostic('blkio.bfq.weight is not on this kernel (BFQ not loaded): the BFQ weight not checked');
    const l = layout('five', ['cpu', 'memory', 'cpuset', 'blkio', 'devices'], {
      // cpu.idle makes the group's weight the least (its shares read 3), which is what comes back.
      cpu: { 'cpu.cfs_burst_us': '20000', ...(rt ? { 'cpu.rt_period_us': '500000', 'cpu.rt_runtime_us': '2000' } : {}), 'cpu.shares': '3', 'cpu.idle': '1' },
      memory: { 'memory.kmem.tcp.limit_in_bytes': String(64 << 20) },
      cpuset: { 'cpuset.mem_hardwall': '1', 'cpuset.memory_migrate': '1', 'cpuset.memory_spread_page': '1' },
      blkio: bfq ? { 'blkio.bfq.weight': '200' } : {},
    });
    if (rt) l.settings.push([join(CG, 'cpu', NAME, 'five'), { 'cpu.rt_runtime_us': '10000' }]);
    const memA = join(CG, 'memory', NAME, 'five', 'a');
    writeFileSync(join(memA, 'memory.oom_control'), '1'); // reads "oom_kill_disable 1" and two more lines
    // Not carried: a read limit on a disk of this machine, a device denied.
    const disk = ['vda', 'sda', 'nvme0n1', ...readdirSync('/sys/block')].find((b) => existsSync(join('/sys/block', b, 'dev')))!;
    const blkA = join(CG, 'blkio', NAME, 'five', 'a');
    writeFileSync(join(blkA, 'blkio.throttle.read_bps_device'), `${read(join('/sys/block', disk), 'dev')} 104857600`);
    // devices.list shows only what is allowed (a rule denied on top of "a *:* rwm" does not
    // show): a list of allowed devices, as a container's, then.
    const devA = join(CG, 'devices', NAME, 'five', 'a');
    writeFileSync(join(devA, 'devices.deny'), 'a');
    for (const d of ['c 1:3 rwm', 'c 1:5 rwm', 'c 1:8 rwm', 'c 1:9 rwm']) writeFileSync(join(devA, 'devices.allow'), d);
    checkSettings(l);
    const w = await start(l);
    const before = cgroupsOf(w.pid);
    const image = join(w.dir, 'cg.tar');
    const notCarried = [
      `warning: cgroup /${NAME}/five/a of blkio has blkio.throttle.read_bps_device set, which restore --manage-cgroups does not carry: the restored tree goes without (set them again after restore if it needs them)`,
      `warning: cgroup /${NAME}/five/a of devices has devices.list set, which restore --manage-cgroups does not carry: the restored tree goes without (set them again after restore if it needs them)`,
    ];
    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    assert.deepEqual(lr.stderr.split('\n').filter(Boolean).sort(), notCarried, 'one warning line per cgroup');
    const js = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'cg2.tar'), '--leave-running', '--json']);
    assert.equal(js.code, 0, js.stderr);
    assert.equal(js.stderr, '', 'with --json the warnings are in the result');
    assert.deepEqual((JSON.parse(js.stdout.toString()) as { warnings?: string[] }).warnings?.sort(), notCarried.map((x) => x.slice('warning: '.length)));
    await leftThenRestored(w, l, image, before);
    checkSettings(l);
    assert.match(read(memA, 'memory.oom_control'), /^oom_kill_disable 1\n/);
    assert.equal(read(blkA, 'blkio.throttle.read_bps_device'), '', 'not carried');
    assert.equal(read(devA, 'devices.list'), 'a *:* rwm', 'not carried');
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', w2.text());
  });

  it('refuses an edited record with one line before anything is made: a "..", a control file off the list', async () => {
    const l = layout('four', ['pids']);
    const w = await start(l);
    const image = join(w.dir, 'cg.tar');
    await checkpointFreed(w, image);
    const cases: Array<[string, (r: CgroupsRecord) => void, RegExp]> = [
      ['dotdot', (r) => { r.cgroups.at(-1)!.path = `/${NAME}/../../escape`; }, /cgroups\[\d+\]\.path must be a path without empty, "\." or "\.\." components/],
      ['devices', (r) => { r.cgroups.at(-1)!.settings['devices.allow'] = 'a *:* rwm'; }, /names "devices\.allow", which is not a control file restore writes/],
      ['procs', (r) => { r.cgroups.at(-1)!.settings['cgroup.procs'] = '1'; }, /names "cgroup\.procs", which is not a control file restore writes/],
      ['shape', (r) => { r.cgroups.at(-1)!.settings['pids.max'] = '-1'; }, /settings\[pids\.max\] must be "max" or a number, is "-1"/],
      ['stranger', (r) => { r.tasks[0]!.pid = 1; }, /tasks\[0\]\.pid 1 is not a process of the image/],
    ];
    for (const [name, edit, message] of cases) {
      const edited = join(w.dir, `${name}.tar`);
      await editImage(image, edited, [[/^cgroups\.json$/, json<CgroupsRecord>(edit)]]);
      const rs = ferry(['restore', '--image', edited, '--max-creds', 'root', '--manage-cgroups']);
      assert.equal(rs.code, 1, name);
      assert.match(rs.stderr, /^ferry restore: image entry cgroups\.json is invalid: /, name);
      assert.match(rs.stderr, message, name);
      assert.equal(rs.stderr.split('\n').length, 2, 'one line');
      assert.ok(!alive(w.pid), 'nothing made');
    }
  });
});

/**
 * cgroup v2 alone (the unified hierarchy, at /sys/fs/cgroup/unified on a hybrid host): the
 * process in a v2 cgroup of its own and in none of the test's v1 ones. Its membership comes
 * back, the cgroup made again when gone. Settings need a controller the v2 root hands down
 * (its cgroup.subtree_control): a hybrid host usually hands down none, and enabling one there
 * would change the host's own root cgroup, so that part runs only where one is (pids).
 */
describe('cgroup v2 (--manage-cgroups)', { skip: needs('root', 'build') || (!existsSync(join(CG, 'unified', 'cgroup.procs')) ? 'needs cgroup v2 at /sys/fs/cgroup/unified' : false), timeout: 120_000 }, () => {
  const V2 = join(CG, 'unified');
  const handedDown = (): string[] => read(V2, 'cgroup.subtree_control').split(' ').filter(Boolean);

  /**
   * NAME/sub/a in v2, with pids.max when pids can be enabled down to it, and memory.oom.group
   * (a flag carried since) when memory can.
   */
  function v2Layout(sub: string): Layout & { limited: boolean } {
    const ctrls = ['pids', 'memory'].filter((c) => handedDown().includes(c));
    const limited = ctrls.length > 0;
    const enable = limited ? { 'cgroup.subtree_control': ctrls.map((c) => `+${c}`).join(' ') } : {};
    const top = mk(join(V2, NAME), enable);
    mk(join(top, sub), enable);
    const settings = {
      ...(ctrls.includes('pids') ? { 'pids.max': '64' } : {}),
      ...(ctrls.includes('memory') ? { 'memory.oom.group': '1' } : {}),
    };
    const a = mk(join(top, sub, 'a'), settings);
    return { procs: [join(a, 'cgroup.procs')], tasks: [], settings: [[a, settings]], tops: [join(top, sub)], limited };
  }

  it('membership (and a limit where a controller can be enabled) comes back; --leave-running changes nothing', async (t) => {
    const l = v2Layout('v2');
    if (!l.limited) t.diagnostic('the v2 root enables no controller for its children (cgroup.subtree_control is empty): membership only');
    const w = await start(l);
    const before = cgroupsOf(w.pid);
    assert.equal(before.get(''), `/${NAME}/v2/a`, 'in its v2 cgroup');
    const image = join(w.dir, 'v2.tar');
    const lr = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(lr.code, 0, lr.stderr);
    // Gone entirely: made again (with the limit), and joined.
    await leftThenRestored(w, l, image, before);
    assert.equal(read(join(V2, NAME, 'v2', 'a'), 'cgroup.procs'), String(w.pid), 'the only process of its cgroup');
    checkSettings(l);

    // Checkpointed again, restored into the cgroup that is still there.
    await checkpointFreed({ pid: w.pid, exited: Promise.resolve() }, image);
    assert.equal(read(join(V2, NAME, 'v2', 'a'), 'cgroup.procs'), '', 'empty once the tree is killed');
    restoreOk(image, '--manage-cgroups=soft');
    assert.deepEqual(cgroupsOf(w.pid), before);
    const w2 = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    assert.equal(await verify(w2), 'PASS', w2.text());
  });

  it('a threaded subtree: the process in one threaded cgroup, its second thread in another, made again threaded', async () => {
    // NAME/thr becomes "domain threaded" once a cgroup below it is made threaded.
    const top = mk(join(V2, NAME));
    const thr = mk(join(top, 'thr'));
    const a = mk(join(thr, 'a'), { 'cgroup.type': 'threaded' });
    const b = mk(join(thr, 'b'), { 'cgroup.type': 'threaded' });
    const l: Layout = { procs: [join(a, 'cgroup.procs')], tasks: [join(b, 'cgroup.threads')], settings: [[a, {}], [b, {}]], tops: [thr] };
    const w = await start(l);
    const before = [cgroupsOf(w.pid), cgroupsOf(w.pid, w.tid)];
    assert.equal(before[0]!.get(''), `/${NAME}/thr/a`);
    assert.equal(before[1]!.get(''), `/${NAME}/thr/b`, 'the second thread apart, in a threaded cgroup of its own');
    const image = join(w.dir, 'thr.tar');
    await checkpointFreed(w, image);
    await removeLayout(l);
    const rs = restoreOk(image, '--manage-cgroups');
    own(w.pid);
    assert.equal(rs.stderr, '', 'no warning');
    assert.deepEqual([cgroupsOf(w.pid), cgroupsOf(w.pid, w.tid)], before);
    for (const d of [a, b]) assert.equal(read(d, 'cgroup.type'), 'threaded', `${d} made threaded again`);
    assert.equal(read(thr, 'cgroup.type'), 'domain threaded');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
