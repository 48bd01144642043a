/**
 * The audit login uid (src/restore/audit.ts) through bin/ferry: build/workloads/counter run
 * with a login uid of its own (a shell sets /proc/self/loginuid, then execs it) comes back with
 * it; the session id is a new one (the kernel hands one out with each loginuid set, and has no
 * way to choose it), but processes that shared one share one again, and one that set its login
 * uid again (a session of its own) has its own. An image no trusted key signed may only carry
 * the restorer's login uid.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { TaskRecord } from '../../src/image/records.js';
import { needs, WORKLOADS } from '../helpers/env.js';
import { editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, procState, startWorkload, verify, waitFor } from '../helpers/processes.js';

const writable = ((): boolean => {
  try {
    return existsSync('/proc/self/loginuid');
  } catch {
    return false;
  }
})();
const skip = needs('root', 'build') || (writable ? false : 'needs audit support (/proc/self/loginuid)');
after(cleanup);

const LOGINUID = 4321;
const auditOf = (pid: number): { loginuid: number; sessionid: number } => ({
  loginuid: Number(readFileSync(`/proc/${pid}/loginuid`, 'utf8')),
  sessionid: Number(readFileSync(`/proc/${pid}/sessionid`, 'utf8')),
});
const start = () => startWorkload('sh', ['-c', `echo ${LOGINUID} > /proc/self/loginuid && exec ${join(WORKLOADS, 'counter')}`]);

describe('audit login uid', { skip, timeout: 120_000 }, () => {
  it('comes back after checkpoint and restore (the session id is a new one); an unsigned image is refused', async () => {
    const w = await start();
    const before = auditOf(w.pid);
    assert.equal(before.loginuid, LOGINUID);
    const image = join(w.dir, 'audit.tar');
    await checkpointFreed(w, image);
    const recorded: unknown[] = [];
    const unsigned = join(w.dir, 'unsigned.tar');
    await editImage(image, unsigned, [[/^tasks\/\d+\/task\.json$/, json<TaskRecord>((t) => { recorded.push(t.creds.audit); })]]);
    assert.deepEqual(recorded, [before]);

    const no = ferry(['restore', '--image', unsigned, '--max-creds', 'root']);
    assert.equal(no.code, 1);
    assert.equal(no.stderr, `ferry restore: image ${unsigned}: pid ${w.pid} (counter) would get audit login uid ${LOGINUID}, not the restorer's `
      + `(${Number(readFileSync('/proc/self/loginuid', 'utf8')) === 4294967295 ? 'unset' : readFileSync('/proc/self/loginuid', 'utf8')}), `
      + 'which only an image a trusted key signed may set: sign it and restore with --trust; nothing was restored\n');
    assert.ok(!alive(w.pid), 'nothing made');

    const rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const after = auditOf(w.pid);
    assert.equal(after.loginuid, LOGINUID);
    assert.notEqual(after.sessionid, 4294967295, 'a session id came with it');
    assert.equal(procState(w.pid).tracer, 0);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('processes of one audit session come back in one, one of another session in its own', async () => {
    // The counter and two children in its session; a third child set the login uid again.
    const w = await startWorkload('sh', ['-c', `echo ${LOGINUID} > /proc/self/loginuid; sleep 600 & sleep 600 & `
      + `(echo ${LOGINUID} > /proc/self/loginuid && exec sleep 600) & exec ${join(WORKLOADS, 'counter')}`]);
    const kids = (): number[] => readFileSync(`/proc/${w.pid}/task/${w.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number).sort((a, b) => a - b);
    let pids: number[] = [];
    for (let i = 0; i < 100 && (pids = kids()).length < 3; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(pids.length, 3, 'three children');
    for (const p of pids) own(p);
    // Which processes share a session, by pid: the same partition must come back.
    const partition = (): number[][] => {
      const by = new Map<number, number[]>();
      for (const p of [w.pid, ...pids]) {
        const a = auditOf(p);
        assert.equal(a.loginuid, LOGINUID, `pid ${p}'s login uid`);
        by.set(a.sessionid, [...(by.get(a.sessionid) ?? []), p]);
      }
      return [...by.values()].sort((a, b) => b.length - a.length);
    };
    // The third child writes its login uid once forked: wait until it is in a session of its own.
    let before: number[][] = [];
    await waitFor('two sessions', () => (before = partition()).length === 2, 5000, () => JSON.stringify(before));
    await checkpointFreed(w, join(w.dir, 'tree.tar'));
    const rs = ferry(['restore', '--image', join(w.dir, 'tree.tar')]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.deepEqual(partition(), before);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was', async () => {
    const w = await start();
    const before = auditOf(w.pid);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.deepEqual(auditOf(w.pid), before);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
