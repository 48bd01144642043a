/**
 * No write access from an untrusted image (src/restore/file-access.ts): a regular file opened
 * for writing must be one a holder could open so by its recorded credentials. Pure.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { checkWriteAccess, type StatOf } from '../../src/restore/file-access.js';

const O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_APPEND = 0o2000;

/** A task whose leader has fs ids `uid`/`gid`, `groups`, and effective capabilities `eff`. */
function task(pid: number, uid: number, gid: number, groups: number[] = [], eff = '0x0', fds = [{ fd: 3, file: 1 }]) {
  return {
    pid, comm: 'x', fds: fds.map((f) => ({ ...f, cloexec: false })),
    creds: {
      rlimits: [], oomScoreAdj: 0, dumpable: 1, childSubreaper: false, seccompFilters: [],
      threads: [{
        tid: pid, uids: [uid, uid, uid, uid], gids: [gid, gid, gid, gid], groups,
        caps: { effective: eff, permitted: eff, inheritable: '0x0', bounding: '0x1ffffffffff', ambient: '0x0' },
        securebits: 0, noNewPrivs: false, personality: 0, sched: { policy: 0, priority: 0, nice: 0, resetOnFork: false },
        affinity: [0], pdeathsig: 0, seccomp: [],
      }],
    },
  } as unknown as Parameters<typeof checkWriteAccess>[1][number];
}

const file = (flags: number, path = '/etc/shadow') => ({ id: 1, kind: 'reg', path, flags });
const stat = (uid: number, gid: number, mode: number): StatOf => () => ({ uid: BigInt(uid), gid: BigInt(gid), mode: BigInt(0o100000 | mode) } as never);

describe('checkWriteAccess', () => {
  it('refuses a write mode on a file the holder could not open so, naming pid, fd, path and why', () => {
    assert.throws(() => checkWriteAccess('img', [task(7, 65534, 65534)], [file(O_WRONLY | O_APPEND)], stat(0, 42, 0o640)), (err: Error & { code?: string; pid?: number; fd?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) fd 3 would get "/etc/shadow" open for writing, which its credentials (uid 65534, gid 65534, '
        + 'no CAP_DAC_OVERRIDE) could not open so (owner 0:42, mode 640): nothing was restored; sign the image and restore with --trust if it is genuine');
      assert.deepEqual([err.pid, err.fd, err.path], [7, 3, '/etc/shadow']);
      return true;
    });
    assert.throws(() => checkWriteAccess('img', [task(7, 65534, 65534)], [file(O_RDWR)], stat(0, 0, 0o644)), /open for writing/);
  });

  it('allows reading anything, and writing as owner, group, supplementary group, other, or with CAP_DAC_OVERRIDE', () => {
    const ok = (t: ReturnType<typeof task>, s: StatOf, flags = O_WRONLY): void => checkWriteAccess('img', [t], [file(flags)], s);
    ok(task(7, 65534, 65534), stat(0, 0, 0o600), O_RDONLY); // a read is the kernel's and the bound's business
    ok(task(7, 1000, 1000), stat(1000, 0, 0o600));
    ok(task(7, 1000, 50), stat(0, 50, 0o660));
    ok(task(7, 1000, 1000, [50]), stat(0, 50, 0o620));
    ok(task(7, 1000, 1000), stat(0, 0, 0o602));
    ok(task(7, 1000, 1000, [], '0x2'), stat(0, 0, 0o600)); // CAP_DAC_OVERRIDE
    ok(task(7, 0, 0, [], '0x1ffffffffff'), stat(0, 0, 0o000));
    // The owner without the owner's write bit may not (others' bits do not apply to the owner).
    assert.throws(() => ok(task(7, 1000, 1000), stat(1000, 0, 0o402)), /open for writing/);
  });

  it('any holder with the right suffices; a file no task holds, a missing file, other kinds: nothing to say', () => {
    checkWriteAccess('img', [task(7, 65534, 65534), task(8, 0, 0, [], '0x2')], [file(O_WRONLY)], stat(0, 0, 0o600));
    checkWriteAccess('img', [task(7, 65534, 65534, [], '0x0', [{ fd: 3, file: 2 }])], [file(O_WRONLY)], stat(0, 0, 0o600));
    checkWriteAccess('img', [task(7, 65534, 65534)], [file(O_WRONLY)], () => undefined);
    checkWriteAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'pipe', flags: O_RDWR }], stat(0, 0, 0o600));
    // A device or FIFO by path is held to the same rule: /dev/mem is root's.
    assert.throws(() => checkWriteAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'chr', path: '/dev/mem', flags: O_RDWR }], stat(0, 15, 0o640)),
      /fd 3 would get "\/dev\/mem" open for writing/);
    checkWriteAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'chr', path: '/dev/null', flags: O_RDWR }], stat(0, 0, 0o666));
  });
});
