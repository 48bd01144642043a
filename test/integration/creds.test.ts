/**
 * Credentials and limits survive checkpoint/restore: a workload started through setpriv (uid,
 * gid, groups, capabilities with an ambient one, securebits) sets the rest itself (rlimits,
 * personality, nice, SCHED_BATCH, affinity, oom_score_adj, subreaper, pdeathsig, dumpable,
 * no_new_privs, seccomp filters, a second thread with its own), then checks itself after
 * each restore; the test also compares what /proc shows from outside. And what is refused.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FERRY, needs, WORKLOADS } from '../helpers/env.js';
import {
  alive, checkpointFreed, cleanup, ferry, own, procState, shell, sleep, startWorkload, stubs, verify, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** setpriv arguments: a non-root user with groups, two inheritable caps, one ambient, securebits. */
const SETPRIV = [
  '--reuid', '1234', '--regid', '2345', '--groups', '4,27,100',
  '--inh-caps', '+net_bind_service,+chown', '--ambient-caps', '+net_bind_service',
  '--bounding-set', '-sys_module,-sys_rawio', '--securebits', '+noroot,+noroot_locked,+no_setuid_fixup',
];

const STATUS_KEYS = /^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters|Cpus_allowed_list):/;

/** What /proc shows of the process and each of its threads, for comparison across a restore. */
function outside(pid: number): Record<string, string> {
  const out: Record<string, string> = {
    limits: readFileSync(`/proc/${pid}/limits`, 'utf8'),
    oom: readFileSync(`/proc/${pid}/oom_score_adj`, 'utf8').trim(),
  };
  for (const tid of readdirSync(`/proc/${pid}/task`).sort()) {
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').split('\n').filter((l) => STATUS_KEYS.test(l));
    const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    out[`task ${tid}`] = [
      ...status,
      `nice ${f[19 - 3]} rt_priority ${f[40 - 3]} policy ${f[41 - 3]}`,
      `personality ${readFileSync(`/proc/${pid}/task/${tid}/personality`, 'utf8').trim()}`,
    ].join('\n');
  }
  return out;
}

async function startCreds(): Promise<Workload> {
  return startWorkload('setpriv', [...SETPRIV, '--', join(WORKLOADS, 'creds'), 'DIR']);
}

describe('credentials and limits', { skip, timeout: 120_000 }, () => {
  it('survive three checkpoint/restore cycles, main thread and second thread alike', async () => {
    const w = await startCreds();
    const before = outside(w.pid);
    assert.match(before[`task ${w.pid}`]!, /^Uid:\s+1234\s+1234\s+1234\s+1234$/m);
    assert.match(before[`task ${w.pid}`]!, /^CapAmb:\s+0000000000000400$/m);
    assert.match(before[`task ${w.pid}`]!, /^Seccomp_filters:\s+2$/m);
    assert.equal(Object.keys(before).filter((k) => k.startsWith('task ')).length, 2, 'two threads');
    const image = join(w.dir, 'creds.tar');
    for (let i = 0; i < 3; i++) {
      await checkpointFreed(w, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, `restore ${i + 1} failed: ${rs.stderr}`);
      own(w.pid);
      assert.deepEqual(outside(w.pid), before, `what /proc shows after restore ${i + 1}`);
      await sleep(100);
    }
    const st = procState(w.pid);
    assert.equal(st.tracer, 0, 'not traced after restore');
    assert.equal(await verify(w), 'PASS');
  });

  it('--leave-running keeps the original intact, and the image restores later', async () => {
    const w = await startCreds();
    const before = outside(w.pid);
    const image = join(w.dir, 'creds.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.deepEqual(outside(w.pid), before, 'the original is unchanged');
    assert.equal(await verify(w), 'PASS', 'the original checks itself');
    await w.exited;
    const later = { ...w, text: () => readFileSync(w.log, 'utf8').split('PASS\n').slice(1).join('PASS\n') };
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(outside(w.pid), before);
    await sleep(100);
    assert.equal(await verify(later), 'PASS');
  });

  it('restore refuses a hard limit above ferry\'s own, naming the pid and the limit, and leaves nothing', async () => {
    const w = await startCreds();
    const image = join(w.dir, 'creds.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image]);
    assert.equal(cp.code, 0, cp.stderr);
    await w.exited;
    const before = stubs();
    // The image keeps RLIMIT_MSGQUEUE's hard limit (819200 here); ferry runs with 1000.
    const r = await shell(`prlimit --msgqueue=1000:1000 -- '${FERRY}' restore --image '${image}'`);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, new RegExp(`pid ${w.pid}: its RLIMIT_MSGQUEUE hard limit is \\d+ but ferry's own is 1000`));
    assert.ok(!alive(w.pid), 'no half-restored process');
    assert.deepEqual(stubs(), before, 'no stub left');
    // With ferry's normal limits the same image restores.
    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    await sleep(100);
    assert.equal(await verify(w), 'PASS');
  });

  it('a seccomp filter without no_new_privs, in a task without CAP_SYS_ADMIN, comes back (installed while ferry still holds the capability)', async () => {
    const w = await startWorkload(join(WORKLOADS, 'creds'), ['DIR', 'nonnp']);
    const image = join(w.dir, 'nonnp.tar');
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(w, image);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      const st = procState(w.pid);
      assert.equal(st.tracer, 0, 'not traced');
    }
    assert.equal(await verify(w), 'PASS', 'filter, no_new_privs off and the capabilities as they were');
  });
});

describe('seccomp filters installed with TSYNC', { skip, timeout: 120_000 }, () => {
  const TSYNC = join(WORKLOADS, 'seccomptsync');

  it('come back shared by the threads (a later TSYNC names the one thread with a filter of its own), twice', async () => {
    const w = await startWorkload(TSYNC, []);
    const image = join(w.dir, 'tsync.tar');
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.equal(procState(w.pid).tracer, 0, 'not traced');
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves them as they were', async () => {
    const w = await startWorkload(TSYNC, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});

describe('a thread in seccomp strict mode', { skip, timeout: 120_000 }, () => {
  const STRICT = join(WORKLOADS, 'seccompstrict');

  it('comes back in strict mode, answering through its pipes, twice', async () => {
    const w = await startWorkload(STRICT, []);
    const image = join(w.dir, 'strict.tar');
    for (let i = 0; i < 2; i++) {
      await checkpointFreed(i === 0 ? w : { pid: w.pid, exited: Promise.resolve() }, image, `checkpoint ${i + 1}`);
      const rs = ferry(['restore', '--image', image]);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
    }
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was', async () => {
    const w = await startWorkload(STRICT, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal(procState(w.pid).tracer, 0, 'not traced');
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
