/**
 * No privilege from an untrusted image through the files whose privilege the kernel checks at
 * make or open time (src/restore/file-privilege.ts): fanotify groups, inotify watches and
 * fanotify marks, alarm timerfds, character devices, files of kernel pseudo file systems. Pure.
 */
import assert from 'node:assert/strict';
import type { BigIntStats } from 'node:fs';
import { describe, it } from 'node:test';
import type { FileGuard } from '../../src/files/install.js';
import type { FileRecord } from '../../src/image/records.js';
import type { StatOf } from '../../src/restore/file-access.js';
import {
  allowedDevice, checkFilePrivilege, checkPseudoFiles, checkWatchAccess, guardPseudoFiles, pseudoFsDevices, unprivilegedFanotify,
} from '../../src/restore/file-privilege.js';

/** A task holding file 1 at fd 3, fs ids `uid`/`gid`, effective capabilities `eff`. */
function task(uid: number, eff = '0x0') {
  return {
    pid: 42, comm: 'app', fds: [{ fd: 3, file: 1, cloexec: false }],
    creds: { threads: [{ tid: 42, uids: [uid, uid, uid, uid], gids: [uid, uid, uid, uid], groups: [], caps: { effective: eff } }] },
  } as unknown as Parameters<typeof checkFilePrivilege>[1][number];
}
const cap = (n: number): string => `0x${(1n << BigInt(n)).toString(16)}`;
const SYS_ADMIN = cap(21), WAKE_ALARM = cap(35), DAC_READ_SEARCH = cap(2);
const TAIL = /: nothing was restored; sign the image and restore with --trust if it is genuine$/;
const rec = (f: Record<string, unknown>): FileRecord => ({ id: 1, ...f }) as FileRecord;
const check = (f: Record<string, unknown>, eff = '0x0'): void => checkFilePrivilege('img', [task(65534, eff)], [rec(f)]);

const FAN_CLASS_CONTENT = 0x4, FAN_UNLIMITED_QUEUE = 0x10, FAN_REPORT_FID = 0x200, FAN_REPORT_DFID_NAME = 0x400 | 0x800;
const mark = (type: string, path = '/tmp') => ({ type, path, mflags: 0, mask: 0x20, ignoredMask: 0 });

describe('fanotify groups of an untrusted image', () => {
  it('a group only CAP_SYS_ADMIN may make is refused without it, naming pid, fd and flags', () => {
    for (const [initFlags, marks] of [[0, [mark('inode')]], [FAN_REPORT_FID, [mark('mount', '/')]], [FAN_REPORT_FID, [mark('filesystem', '/')]],
      [FAN_REPORT_FID | FAN_CLASS_CONTENT, [mark('inode')]], [FAN_REPORT_FID | FAN_UNLIMITED_QUEUE, []]] as const) {
      const f = { kind: 'fanotify', flags: 0, initFlags, eventFlags: 2, marks };
      assert.throws(() => check(f), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.match(err.message, /^image img: pid 42 \(app\) fd 3 would get a fanotify group \(init flags 0x[0-9a-f]+, \d marks\) that only CAP_SYS_ADMIN may make .*, and its credentials have no CAP_SYS_ADMIN/);
        assert.match(err.message, TAIL);
        assert.ok(!err.message.includes('\n'));
        return true;
      }, JSON.stringify(f));
      assert.doesNotThrow(() => check(f, SYS_ADMIN));
    }
  });

  it('what fanotify_init gives anyone passes: file handles reported, notification class, inode marks only', () => {
    for (const initFlags of [FAN_REPORT_FID, FAN_REPORT_DFID_NAME, FAN_REPORT_FID | FAN_REPORT_DFID_NAME]) {
      assert.ok(unprivilegedFanotify(rec({ initFlags, marks: [mark('inode')] })));
      assert.doesNotThrow(() => check({ kind: 'fanotify', flags: 0, initFlags, eventFlags: 0, marks: [mark('inode'), mark('inode', '/etc')] }));
    }
    assert.ok(!unprivilegedFanotify(rec({ initFlags: 0, marks: [] })), 'a group reporting descriptors is privileged');
  });

  it('every holder needs it: one holder with CAP_SYS_ADMIN does not cover another without', () => {
    const f = rec({ kind: 'fanotify', flags: 0, initFlags: 0, eventFlags: 2, marks: [] });
    const other = { ...task(65534), pid: 43 };
    assert.throws(() => checkFilePrivilege('img', [task(0, SYS_ADMIN), other], [f]), /pid 43 \(app\) fd 3/);
  });
});

describe('alarm timerfds of an untrusted image', () => {
  it('CLOCK_REALTIME_ALARM and CLOCK_BOOTTIME_ALARM need CAP_WAKE_ALARM; other clocks do not', () => {
    for (const [clock, name] of [[8, 'CLOCK_REALTIME_ALARM'], [9, 'CLOCK_BOOTTIME_ALARM']] as const) {
      assert.throws(() => check({ kind: 'timerfd', clock }), new RegExp(`fd 3 would get a timerfd on ${name}, which needs CAP_WAKE_ALARM when it is made, and its credentials have no CAP_WAKE_ALARM${TAIL.source.slice(0)}`));
      assert.doesNotThrow(() => check({ kind: 'timerfd', clock }, WAKE_ALARM));
    }
    for (const clock of [0, 1, 7]) assert.doesNotThrow(() => check({ kind: 'timerfd', clock }));
  });
});

describe('character devices of an untrusted image', () => {
  it('only the allow-list: null, zero, full, random, urandom, /dev/tty, ptmx, pseudo-terminals', () => {
    for (const [ma, mi] of [[1, 3], [1, 5], [1, 7], [1, 8], [1, 9], [5, 0], [5, 2], [136, 0], [143, 1048575]]) {
      assert.ok(allowedDevice(ma!, mi!), `${ma}:${mi}`);
      assert.doesNotThrow(() => check({ kind: 'chr', path: '/dev/x', major: ma, minor: mi }));
    }
    for (const [ma, mi, path] of [[1, 1, '/dev/mem'], [1, 11, '/dev/kmsg'], [10, 130, '/dev/watchdog'], [4, 1, '/dev/tty1'], [1, 2, '/dev/kmem'], [144, 0, '/dev/x']] as const) {
      assert.throws(() => check({ kind: 'chr', path, major: ma, minor: mi }, cap(21) /* no capability makes it any safer */),
        new RegExp(`image img: pid 42 \\(app\\) fd 3 would get the character device "${path}" \\(${ma}:${mi}\\), which an untrusted image may not have opened .*${TAIL.source}`));
    }
  });
});

describe('watches and marks of an untrusted image', () => {
  /** /root is 0700 root's, /root/.ssh under it, /tmp 1777, /etc/shadow 0640 root:42; the rest 0755/0644 root's. */
  const stat: StatOf = (path) => {
    const dir = (mode: number) => ({ uid: 0n, gid: 0n, mode: BigInt(0o40000 | mode) }) as never;
    if (path === '/root') return dir(0o700);
    if (path === '/tmp') return dir(0o1777);
    if (path === '/etc/shadow') return { uid: 0n, gid: 42n, mode: BigInt(0o100640) } as never;
    return path === '/etc/hosts' ? { uid: 0n, gid: 0n, mode: BigInt(0o100644) } as never : dir(0o755);
  };
  const inotify = (path: string): FileRecord => rec({ kind: 'inotify', flags: 0, watches: [{ wd: 1, mask: 0x100, path }] });
  const fanotify = (path: string): FileRecord => rec({ kind: 'fanotify', flags: 0, initFlags: FAN_REPORT_FID, eventFlags: 0, marks: [mark('inode', path)] });

  it('a watch or mark on what the holder could not read, or reach, is refused in one line naming the path and why', () => {
    assert.throws(() => checkWatchAccess('img', [task(65534)], [inotify('/root/.ssh')], stat), new RegExp(
      'image img: pid 42 \\(app\\) fd 3 would get an inotify watch on "/root/.ssh", which needs read permission on it, and its credentials '
      + '\\(uid 65534, gid 65534, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH\\) could not reach: the directory "/root" is not searchable by them '
      + `\\(owner 0:0, mode 700\\)${TAIL.source}`));
    assert.throws(() => checkWatchAccess('img', [task(65534)], [inotify('/etc/shadow')], stat), /inotify watch on "\/etc\/shadow".* could not read \(owner 0:42, mode 640\)/);
    assert.throws(() => checkWatchAccess('img', [task(65534)], [fanotify('/etc/shadow')], stat), /a fanotify inode mark on "\/etc\/shadow", which needs read permission/);
    // A symlink above the watched inode: the directories it leads through were never judged.
    const linked: StatOf = (path) => path === '/tmp/evil' ? { uid: 1000n, gid: 1000n, mode: BigInt(0o120777) } as never : stat(path);
    assert.throws(() => checkWatchAccess('img', [task(65534)], [inotify('/tmp/evil/sub')], linked), /could not be judged on it: its path goes through the symbolic link "\/tmp\/evil"/);
  });

  it('what the holder could read passes, and CAP_DAC_READ_SEARCH reads anything; a watch of a file of the image is that file\'s', () => {
    for (const f of [inotify('/etc/hosts'), inotify('/tmp'), fanotify('/etc')]) assert.doesNotThrow(() => checkWatchAccess('img', [task(65534)], [f], stat));
    assert.doesNotThrow(() => checkWatchAccess('img', [task(65534, DAC_READ_SEARCH)], [inotify('/root/.ssh')], stat));
    assert.doesNotThrow(() => checkWatchAccess('img', [task(65534)], [rec({ kind: 'inotify', flags: 0, watches: [{ wd: 1, mask: 1, path: '/root/x (deleted)', file: 2 }] })], stat));
  });
});

describe('files of kernel pseudo file systems in an untrusted image', () => {
  const mountinfo = [
    '22 1 0:21 / /proc rw,nosuid - proc proc rw',
    '23 1 0:22 / /sys rw - sysfs sysfs rw',
    '24 23 0:7 / /sys/kernel/debug rw - debugfs debugfs rw',
    '25 23 0:13 / /sys/kernel/tracing rw - tracefs tracefs rw',
    '26 1 0:25 / /tmp rw shared:5 - tmpfs tmpfs rw',
    '27 1 8:1 / / rw - ext4 /dev/sda1 rw',
    '28 23 0:30 / /sys/fs/bpf rw - bpf bpf rw',
  ].join('\n');
  const pseudo = pseudoFsDevices(mountinfo);
  const dev = (major: number, minor: number): bigint => BigInt((major << 8) | minor);

  it('pseudoFsDevices finds procfs, sysfs, debugfs, tracefs, bpf by device; not tmpfs or ext4', () => {
    assert.deepEqual([...pseudo.entries()].sort(), [['0:13', 'tracefs'], ['0:21', 'proc'], ['0:22', 'sysfs'], ['0:30', 'bpf'], ['0:7', 'debugfs']]);
  });

  it('a reg or chr record naming a file there is refused by path, and by the file opened', () => {
    const f = rec({ kind: 'reg', path: '/proc/kallsyms', flags: 0 });
    const at = (d: bigint) => (): Pick<BigIntStats, 'dev'> => ({ dev: d });
    assert.throws(() => checkPseudoFiles('img', [task(65534)], [f], at(dev(0, 21)), pseudo), new RegExp(
      `: image img: pid 42 \\(app\\) fd 3 would get "/proc/kallsyms", a file of the kernel's proc file system, whose content is decided by the credentials of whoever opens it, and restore opens it as root${TAIL.source}`));
    assert.doesNotThrow(() => checkPseudoFiles('img', [task(65534)], [f], at(dev(0, 25)), pseudo));
    assert.doesNotThrow(() => checkPseudoFiles('img', [task(65534)], [rec({ kind: 'procfile', path: '/proc/42/maps', flags: 0 })], at(dev(0, 21)), pseudo));
    let inner = 0;
    const base: FileGuard = { covers: () => true, opened: () => { inner++; }, throughSymlink: (_r, e) => e };
    const guard = guardPseudoFiles(base, 'img', [task(65534)], pseudo);
    assert.throws(() => guard.opened(rec({ kind: 'reg', path: '/tmp/innocent', flags: 0 }), { dev: dev(0, 22) } as BigIntStats), /"\/tmp\/innocent", a file of the kernel's sysfs file system/);
    guard.opened(rec({ kind: 'reg', path: '/tmp/innocent', flags: 0 }), { dev: dev(0, 25) } as BigIntStats);
    assert.equal(inner, 1, 'the access check still runs on a file that is not a pseudo file system\'s');
  });
});

describe('/proc files of the tree\'s processes in an untrusted image', () => {
  const O_RDWR = 2;
  const target = { ...task(0), pid: 7, fds: [] } as unknown as Parameters<typeof checkFilePrivilege>[1][number];
  const proc = (sub: string, flags = 0): FileRecord => rec({ kind: 'procfile', target: 7, sub, flags, pos: '0' });
  it('a holder of another user may hold only a public entry, read-only; its own user or CAP_SYS_PTRACE any', () => {
    checkFilePrivilege('img', [task(65534), target], [proc('/status')]);
    checkFilePrivilege('img', [task(65534), target], [proc('')]);
    checkFilePrivilege('img', [task(0), target], [proc('/mem', O_RDWR)]);
    checkFilePrivilege('img', [task(65534, cap(19)), target], [proc('/environ')]);
    for (const [sub, flags, how] of [['/mem', O_RDWR, 'for writing'], ['/environ', 0, 'for reading'], ['/status', O_RDWR, 'for writing']] as const) {
      assert.throws(() => checkFilePrivilege('img', [task(65534), target], [proc(sub, flags)]), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.match(err.message, new RegExp(`^image img: pid 42 \\(app\\) fd 3 would get /proc/7${sub} ${how}, a file of a process running as another user that only its own user or CAP_SYS_PTRACE may open so \\(its credentials have neither\\)`));
        assert.match(err.message, TAIL);
        return true;
      });
    }
  });
});
