/**
 * No access from an untrusted image beyond its own (src/restore/file-access.ts): a file opened
 * by path must be one a holder could reach and open so by its recorded credentials. Pure.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checkFileAccess, checkMappedAccess, checkOpenedFile, checkOpenedMapping, checkOpenedReadMapping, checkRemovedDirs, mayReadWrite, type StatOf,
} from '../../src/restore/file-access.js';
import type { FileRecord } from '../../src/image/records.js';

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
  } as unknown as Parameters<typeof checkFileAccess>[1][number];
}

const file = (flags: number, path = '/etc/shadow') => ({ id: 1, kind: 'reg', path, flags });
/** The file has `uid`, `gid` and `mode`; the directories above it are root's, 0755 unless `dirs` says. */
const stat = (uid: number, gid: number, mode: number, dirs: Record<string, number> = {}): StatOf => (path) =>
  ['/', '/etc', '/dev', '/root'].includes(path)
    ? { uid: 0n, gid: 0n, mode: BigInt(0o40000 | (dirs[path] ?? 0o755)) } as never
    : { uid: BigInt(uid), gid: BigInt(gid), mode: BigInt(0o100000 | mode) } as never;

describe('checkFileAccess', () => {
  it('refuses a write mode on a file the holder could not open so, naming pid, fd, path and why', () => {
    assert.throws(() => checkFileAccess('img', [task(7, 65534, 65534)], [file(O_WRONLY | O_APPEND)], stat(0, 42, 0o640)), (err: Error & { code?: string; pid?: number; fd?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) fd 3 would get "/etc/shadow" open for writing, which its credentials (uid 65534, gid 65534, '
        + 'no CAP_DAC_OVERRIDE) could not open so (owner 0:42, mode 640): nothing was restored; sign the image and restore with --trust if it is genuine');
      assert.deepEqual([err.pid, err.fd, err.path], [7, 3, '/etc/shadow']);
      return true;
    });
    assert.throws(() => checkFileAccess('img', [task(7, 65534, 65534)], [file(O_RDWR)], stat(0, 0, 0o644)), /open for writing/);
  });

  it('allows writing as owner, group, supplementary group, other, or with CAP_DAC_OVERRIDE', () => {
    const ok = (t: ReturnType<typeof task>, s: StatOf, flags = O_WRONLY): void => checkFileAccess('img', [t], [file(flags)], s);
    ok(task(7, 1000, 1000), stat(1000, 0, 0o600));
    ok(task(7, 1000, 50), stat(0, 50, 0o660));
    ok(task(7, 1000, 1000, [50]), stat(0, 50, 0o620));
    ok(task(7, 1000, 1000), stat(0, 0, 0o602));
    ok(task(7, 1000, 1000, [], '0x2'), stat(0, 0, 0o600)); // CAP_DAC_OVERRIDE
    ok(task(7, 0, 0, [], '0x1ffffffffff'), stat(0, 0, 0o000));
    // The owner without the owner's write bit may not (others' bits do not apply to the owner).
    assert.throws(() => ok(task(7, 1000, 1000), stat(1000, 0, 0o402)), /open for writing/);
  });

  it('refuses reading what the holder could not read, and a file under a directory it could not search', () => {
    const check = (t: ReturnType<typeof task>, s: StatOf, flags: number, path = '/etc/shadow'): void => checkFileAccess('img', [t], [file(flags, path)], s);
    assert.throws(() => check(task(7, 65534, 65534), stat(0, 42, 0o640), O_RDONLY), (err: Error & { code?: string; fd?: number }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) fd 3 would get "/etc/shadow" open for reading, which its credentials (uid 65534, gid 65534, '
        + 'no CAP_DAC_OVERRIDE) could not open so (owner 0:42, mode 640): nothing was restored; sign the image and restore with --trust if it is genuine');
      return true;
    });
    assert.throws(() => check(task(7, 1000, 1000), stat(1000, 0, 0o200), O_RDWR), /open for reading, which/); // writable, not readable
    // A readable file in a directory nobody else may search: /root/notes, 0644, under /root 0700.
    assert.throws(() => check(task(7, 1000, 1000), stat(0, 0, 0o644, { '/root': 0o700 }), O_RDONLY, '/root/notes'),
      /fd 3 would get "\/root\/notes" open for reading, which its credentials \(uid 1000, gid 1000, no CAP_DAC_OVERRIDE\) could not reach: the directory "\/root" is not searchable by them \(owner 0:0, mode 700\)/);
    // Even an O_PATH descriptor needs the way there, but not read access to the file.
    const O_PATH = 0o10000000;
    assert.throws(() => check(task(7, 1000, 1000), stat(0, 0, 0o600, { '/root': 0o700 }), O_PATH, '/root/key'), /open \(O_PATH\), which .* could not reach/);
    check(task(7, 1000, 1000), stat(0, 0, 0o600), O_PATH, '/root/key');
    // Allowed: readable by owner, group or others; CAP_DAC_READ_SEARCH (bit 2) reads and searches, not writes.
    check(task(7, 1000, 1000), stat(1000, 0, 0o400), O_RDONLY);
    check(task(7, 1000, 50), stat(0, 50, 0o040), O_RDONLY);
    check(task(7, 1000, 1000), stat(0, 0, 0o604), O_RDONLY);
    check(task(7, 1000, 1000, [], '0x4'), stat(0, 0, 0o600, { '/root': 0o700 }), O_RDONLY, '/root/key');
    assert.throws(() => check(task(7, 1000, 1000, [], '0x4'), stat(0, 0, 0o644), O_WRONLY), /open for writing/);
  });

  it('any holder with the right suffices; a file no task holds, a missing file, other kinds: nothing to say', () => {
    checkFileAccess('img', [task(7, 65534, 65534), task(8, 0, 0, [], '0x2')], [file(O_WRONLY)], stat(0, 0, 0o600));
    checkFileAccess('img', [task(7, 65534, 65534, [], '0x0', [{ fd: 3, file: 2 }])], [file(O_WRONLY)], stat(0, 0, 0o600));
    checkFileAccess('img', [task(7, 65534, 65534)], [file(O_WRONLY)], () => undefined);
    checkFileAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'pipe', flags: O_RDWR }], stat(0, 0, 0o600));
    // A device or FIFO by path is held to the same rule: /dev/mem is root's.
    assert.throws(() => checkFileAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'chr', path: '/dev/mem', flags: O_RDWR }], stat(0, 15, 0o640)),
      /fd 3 would get "\/dev\/mem" open for writing/);
    checkFileAccess('img', [task(7, 65534, 65534)], [{ id: 1, kind: 'chr', path: '/dev/null', flags: O_RDWR }], stat(0, 0, 0o666));
  });
});

describe('checkMappedAccess', () => {
  const PROT_READ = 1, PROT_WRITE = 2;
  /** Task `t` mapping `path` at 0x7f0000000000 with `prot`, shared or not, with VmFlags `vmflags`. */
  const mapping = (t: ReturnType<typeof task>, path: string, prot: number, shared: boolean, vmflags: string[] = [], extra = {}) =>
    ({ ...t, vmas: [{ start: '0x7f0000000000', end: '0x7f0000001000', prot, shared, kind: 'file', name: path, vmflags,
      file: { path, offset: '0x0', dev: '8:1', ino: '12', size: 4096 }, runs: [], pagesOffset: 0, ...extra }] }) as unknown as Parameters<typeof checkMappedAccess>[1][number];

  it('refuses a shared mapping opened for writing (writable, or may-write) that the credentials could not open so', () => {
    assert.throws(() => checkMappedAccess('img', [mapping(task(7, 65534, 65534), '/etc/shadow', PROT_READ, true, ['mw'])], stat(0, 42, 0o640)),
      (err: Error & { code?: string; pid?: number; path?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.equal(err.message, 'image img: pid 7 (x) maps "/etc/shadow" shared at 0x7f0000000000 from a descriptor open for writing, so restore '
          + 'would open it for writing, which its credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE) could not open so (owner 0:42, mode 640): '
          + 'nothing was restored; sign the image and restore with --trust if it is genuine');
        assert.deepEqual([err.pid, err.path], [7, '/etc/shadow']);
        return true;
      });
    assert.throws(() => checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/etc/passwd', PROT_READ | PROT_WRITE, true)], stat(0, 0, 0o644)),
      /shared at 0x7f0000000000 and writable, so restore would open it for writing/);
    assert.throws(() => checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/root/db', PROT_READ, true, ['mw'])], stat(1000, 1000, 0o600, { '/root': 0o700 })),
      /could not reach: the directory "\/root" is not searchable/);
  });

  it('allows what the credentials could open for writing; read-only, private, memfd and deleted mappings are not opened for writing', () => {
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/etc/db', PROT_READ, true, ['mw'])], stat(1000, 1000, 0o600));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000, [], '0x2'), '/etc/shadow', PROT_READ | PROT_WRITE, true)], stat(0, 0, 0o600));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/etc/shadow', PROT_READ, true)], stat(0, 0, 0o644));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/etc/shadow', PROT_READ | PROT_WRITE, false, ['mw'])], stat(0, 0, 0o644));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/memfd:x (deleted)', PROT_READ | PROT_WRITE, true, ['mw'], { memfd: { id: '0:1:2' } })], stat(0, 0, 0o600));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/tmp/gone', PROT_READ | PROT_WRITE, true, ['mw'], { ghost: '8:1:3' })], stat(0, 0, 0o600));
    checkMappedAccess('img', [mapping(task(7, 1000, 1000), '/missing', PROT_READ | PROT_WRITE, true)], () => undefined);
  });
});

describe('checkMappedAccess and checkOpenedReadMapping: files mapped privately or read-only must be readable', () => {
  const PROT_READ = 1, PROT_EXEC = 4;
  const st = (uid: number, gid: number, mode: number) => ({ uid: BigInt(uid), gid: BigInt(gid), mode: BigInt(0o100000 | mode) });
  const area = (path: string, shared = false) => ({ start: '0x7f0000000000', end: '0x7f0000001000', prot: PROT_READ | PROT_EXEC, shared, kind: 'file', name: path,
    vmflags: shared ? ['rd', 'ex', 'sh', 'mr', 'me', 'ms'] : ['rd', 'ex', 'mr', 'mw', 'me'], runs: [], pagesOffset: 0, file: { path, offset: '0x0', dev: '8:1', ino: '12', size: 4096 } });
  const mapper = (t: ReturnType<typeof task>, path: string, exe = '/etc/app', shared = false) =>
    ({ ...t, exe, vmas: [area(path, shared)] }) as unknown as Parameters<typeof checkMappedAccess>[1][number];

  it('refuses, by path, a file the credentials could not read or reach, in one line naming the area', () => {
    assert.throws(() => checkMappedAccess('img', [mapper(task(7, 65534, 65534), '/etc/shadow')], stat(0, 42, 0o640)),
      (err: Error & { code?: string; pid?: number; path?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.equal(err.message, 'image img: pid 7 (x) maps "/etc/shadow" privately at 0x7f0000000000, so restore would open it for reading, which its '
          + 'credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH) could not read (owner 0:42, mode 640): '
          + 'nothing was restored; sign the image and restore with --trust if it is genuine');
        assert.deepEqual([err.pid, err.path], [7, '/etc/shadow']);
        return true;
      });
    assert.throws(() => checkMappedAccess('img', [mapper(task(7, 65534, 65534), '/etc/shadow', '/etc/app', true)], stat(0, 42, 0o640)),
      /maps "\/etc\/shadow" shared, read-only, at 0x7f0000000000/);
    assert.throws(() => checkMappedAccess('img', [mapper(task(7, 1000, 1000), '/root/lib.so')], stat(0, 0, 0o644, { '/root': 0o700 })),
      /could not reach: the directory "\/root" is not searchable by them \(owner 0:0, mode 700\)/);
    // Its own executable may be executable only (execve maps a mode 711 binary); another file not.
    checkMappedAccess('img', [mapper(task(7, 1000, 1000), '/etc/app')], stat(0, 0, 0o711));
    assert.throws(() => checkMappedAccess('img', [mapper(task(7, 1000, 1000), '/etc/other')], stat(0, 0, 0o711)), /could not read \(owner 0:0, mode 711\)/);
    assert.throws(() => checkMappedAccess('img', [mapper(task(7, 1000, 1000), '/etc/app')], stat(0, 0, 0o700)),
      /could neither read nor execute \(owner 0:0, mode 700\)/);
    // So may its ELF interpreter, the file execve mapped at AT_BASE (auxv type 7).
    const interp = (auxv: Array<[string, string]>) => ({ ...mapper(task(7, 1000, 1000), '/etc/ld.so'), mm: { auxv } }) as never;
    checkMappedAccess('img', [interp([['0x7', '0x7f0000000000'], ['0x0', '0x0']])], stat(0, 0, 0o711));
    assert.throws(() => checkMappedAccess('img', [interp([['0x7', '0x7f0000100000'], ['0x0', '0x0']])], stat(0, 0, 0o711)), /could not read \(owner 0:0, mode 711\)/);
    assert.throws(() => checkMappedAccess('img', [interp([['0x7', '0x0'], ['0x0', '0x0']])], stat(0, 0, 0o711)), /could not read/);
    // Readable ones, and any with CAP_DAC_READ_SEARCH.
    checkMappedAccess('img', [mapper(task(7, 1000, 1000), '/etc/libc.so.6')], stat(0, 0, 0o644));
    checkMappedAccess('img', [mapper(task(7, 1000, 1000, [], '0x4'), '/root/key')], stat(0, 42, 0o600, { '/root': 0o700 }));
  });

  it('judges what the task opened, and the directories of the path it led to, not of the recorded one', () => {
    const dirs: StatOf = (p) => ({ uid: 0n, gid: 0n, mode: BigInt(0o40000 | (p === '/root' ? 0o700 : 0o755)) }) as never;
    const t = { ...task(7, 65534, 65534), exe: '/usr/bin/app' } as never;
    // A symlink /tmp/l -> /root/notes (mode 644): readable, behind a directory nobody may not search.
    assert.throws(() => checkOpenedReadMapping('img', t, area('/tmp/l'), st(0, 0, 0o644), '/root/notes', dirs),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.equal(err.message, 'image img: pid 7 (x) maps "/tmp/l" (which leads to "/root/notes") privately at 0x7f0000000000, so restore would open it '
          + 'for reading, which its credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH) could not reach: the directory "/root" '
          + 'is not searchable by them (owner 0:0, mode 700): nothing was restored; sign the image and restore with --trust if it is genuine');
        return true;
      });
    // A path swapped for one to a file it may not read.
    assert.throws(() => checkOpenedReadMapping('img', t, area('/srv/data'), st(0, 0, 0o600), '/srv/data', dirs), /"\/srv\/data" privately .* could not read \(owner 0:0, mode 600\)/);
    // A merged /usr: /lib/x.so leads to /usr/lib/x.so, readable, reachable.
    checkOpenedReadMapping('img', t, area('/lib/x.so'), st(0, 0, 0o644), '/usr/lib/x.so', dirs);
    checkOpenedReadMapping('img', t, area('/usr/bin/app'), st(0, 0, 0o711), '/usr/bin/app', dirs);
    assert.throws(() => checkOpenedReadMapping('img', t, area('/x'), st(0, 0, 0o644), 'anon_inode:[x]', dirs), /could not be checked on the file it led to/);
  });
});

describe('checkOpenedFile: the file opened for a record, judged as opened', () => {
  const st = (uid: number, gid: number, mode: number, kind = 0o100000) => ({ uid: BigInt(uid), gid: BigInt(gid), mode: BigInt(kind | mode) });

  it('refuses what none of its holders could open as the record says, in checkFileAccess\'s words', () => {
    // /home/u/log was nobody's when checked; a rename brought a root file there before the open.
    assert.throws(() => checkOpenedFile('img', [task(7, 65534, 65534)], file(O_WRONLY | O_APPEND, '/home/u/log'), st(0, 0, 0o600)),
      (err: Error & { code?: string; pid?: number; fd?: number; path?: string }) => {
        assert.equal(err.code, 'EPRIVILEGE');
        assert.equal(err.message, 'image img: pid 7 (x) fd 3 would get "/home/u/log" open for writing, which its credentials (uid 65534, gid 65534, '
          + 'no CAP_DAC_OVERRIDE) could not open so (the file opened there: owner 0:0, mode 600): nothing was restored; sign the image and restore with --trust if it is genuine');
        assert.deepEqual([err.pid, err.fd, err.path], [7, 3, '/home/u/log']);
        return true;
      });
    assert.throws(() => checkOpenedFile('img', [task(7, 65534, 65534)], file(O_RDONLY, '/x'), st(0, 0, 0o640)), /open for reading/);
    assert.throws(() => checkOpenedFile('img', [task(7, 65534, 65534)], { id: 1, kind: 'chr', path: '/dev/x', flags: O_RDWR }, st(0, 0, 0o600, 0o20000)), /fd 3 would get "\/dev\/x"/);
  });

  it('lets by what a holder could open, O_PATH, and what the restore made itself', () => {
    checkOpenedFile('img', [task(7, 65534, 65534)], file(O_WRONLY | O_APPEND, '/home/u/log'), st(65534, 65534, 0o600));
    checkOpenedFile('img', [task(7, 65534, 65534), task(8, 0, 0, [], '0x2')], file(O_RDWR), st(0, 0, 0o600));
    checkOpenedFile('img', [task(7, 65534, 65534)], file(0o10000000), st(0, 0, 0o600));
    checkOpenedFile('img', [task(7, 65534, 65534)], { ...file(O_RDONLY | 0o200000, '/gone'), removed: { mode: 0o700, uid: 0, gid: 0 } }, st(0, 0, 0o700, 0o40000));
    checkOpenedFile('img', [task(7, 65534, 65534)], { id: 1, kind: 'tty', role: 'slave', path: '/dev/pts/3', flags: O_RDWR }, st(0, 5, 0o620, 0o20000));
    checkOpenedFile('img', [task(7, 65534, 65534)], { id: 1, kind: 'pipe', flags: O_RDWR }, st(0, 0, 0o600, 0o10000));
    checkOpenedFile('img', [task(7, 65534, 65534)], { ...file(O_RDWR), root: 'task' }, st(0, 0, 0o600));
  });
});

describe('mayReadWrite and checkOpenedMapping: the file a task got for a shared writable mapping, judged as opened', () => {
  const PROT_READ = 1, PROT_WRITE = 2;
  const st = (uid: number, gid: number, mode: number) => ({ uid: BigInt(uid), gid: BigInt(gid), mode: BigInt(0o100000 | mode) });
  const area = { start: '0x7f0000000000', prot: PROT_READ | PROT_WRITE, file: { path: '/home/u/data', offset: '0x0', dev: '8:1', ino: '12', size: 4096 } };

  it('decides read and write together, as the kernel would for O_RDWR', () => {
    assert.equal(mayReadWrite(task(7, 1000, 1000), st(1000, 1000, 0o600)), true);
    assert.equal(mayReadWrite(task(7, 1000, 1000), st(1000, 1000, 0o200)), false, 'the owner may write but not read');
    assert.equal(mayReadWrite(task(7, 1000, 1000), st(1000, 1000, 0o400)), false, 'the owner may read but not write');
    assert.equal(mayReadWrite(task(7, 1000, 50), st(0, 50, 0o660)), true);
    assert.equal(mayReadWrite(task(7, 1000, 1000, [50]), st(0, 50, 0o640)), false);
    assert.equal(mayReadWrite(task(7, 1000, 1000), st(0, 0, 0o666)), true);
    assert.equal(mayReadWrite(task(7, 1000, 1000, [], '0x4'), st(0, 0, 0o644)), false, 'CAP_DAC_READ_SEARCH passes reads only');
    assert.equal(mayReadWrite(task(7, 1000, 1000, [], '0x2'), st(0, 0, 0o000)), true, 'CAP_DAC_OVERRIDE passes both');
  });

  it('refuses what the task opened when its credentials could not open it so (a path swapped after the check), in checkMappedAccess\'s words', () => {
    // /home/u/data was the user's own when checked; the descriptor is on /etc/shadow.
    assert.throws(() => checkOpenedMapping('img', task(7, 1000, 1000), area, st(0, 42, 0o640)), (err: Error & { code?: string; pid?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) maps "/home/u/data" shared at 0x7f0000000000 and writable, so restore would open it for writing, '
        + 'which its credentials (uid 1000, gid 1000, no CAP_DAC_OVERRIDE) could not open so (owner 0:42, mode 640): '
        + 'nothing was restored; sign the image and restore with --trust if it is genuine');
      assert.deepEqual([err.pid, err.path], [7, '/home/u/data']);
      return true;
    });
    assert.throws(() => checkOpenedMapping('img', task(7, 1000, 1000), { ...area, prot: PROT_READ }, st(0, 0, 0o644)),
      /shared at 0x7f0000000000 from a descriptor open for writing, so restore would open it for writing/);
    checkOpenedMapping('img', task(7, 1000, 1000), area, st(1000, 1000, 0o600));
    checkOpenedMapping('img', task(7, 0, 0, [], '0x1ffffffffff'), area, st(0, 42, 0o640));
  });

  it('checkMappedAccess and checkOpenedMapping agree on the file itself', () => {
    const mapped = (t: ReturnType<typeof task>) => ({ ...t, vmas: [{ ...area, end: '0x7f0000001000', shared: true, kind: 'file', name: '', vmflags: [], runs: [], pagesOffset: 0 }] }) as never;
    for (const [t, s] of [[task(7, 1000, 1000), st(0, 0, 0o664)], [task(7, 1000, 0), st(0, 0, 0o664)], [task(7, 1000, 1000), st(1000, 0, 0o644)],
      [task(7, 1000, 1000), st(1000, 0, 0o244)]] as const) {
      const byPath = (() => { try { checkMappedAccess('img', [mapped(t)], (p) => (p === area.file.path ? s : st(0, 0, 0o40755)) as never); return true; } catch { return false; } })();
      const byFd = (() => { try { checkOpenedMapping('img', t, area, s); return true; } catch { return false; } })();
      assert.equal(byFd, byPath, `mode ${(Number(s.mode) & 0o777).toString(8)}, uid ${s.uid}`);
      assert.equal(byFd, mayReadWrite(t, s));
    }
  });
});

describe('checkRemovedDirs', () => {
  const jailed = (uid: number, eff = '0x0') => ({ ...task(7, uid, uid, [], eff, []), cwd: '/srv/jail', root: '/srv/jail',
    rootDeleted: { mode: 0o751, uid, gid: uid, dev: '1', ino: '2' } }) as unknown as Parameters<typeof checkRemovedDirs>[1][number];
  /** Every directory is root's, 0755, except `/srv` (`srv`). */
  const dirs = (srv: number): StatOf => (path) => ({ uid: 0n, gid: 0n, mode: BigInt(0o40000 | (path === '/srv' ? srv : 0o755)) }) as never;

  it('refuses a removed root made again where its process could not write, naming pid, path and where', () => {
    assert.throws(() => checkRemovedDirs('img', [jailed(65534)], [], dirs(0o755)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) had the removed directory "/srv/jail" as its root directory; restore would make it again in "/srv", which its '
        + 'credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE) could not write in (owner 0:0, mode 755): nothing was restored; sign the image and restore with --trust if it is genuine');
      return true;
    });
  });

  it('allows it where the process could write, or with CAP_DAC_OVERRIDE', () => {
    checkRemovedDirs('img', [jailed(65534)], [], dirs(0o1777));
    checkRemovedDirs('img', [jailed(65534, '0x2')], [], dirs(0o755));
  });

  it('judges a removed working directory below a removed root, and each directory between, by the recorded one above it', () => {
    /** In /srv/jail/a/b/sub, the removed /a owned by `aUid` (0755), /a/b by 65534 (0755). */
    const deep = (uid: number, aUid: number, eff = '0x0') => ({ ...jailed(uid, eff), cwd: '/srv/jail/a/b/sub',
      cwdDeleted: { mode: 0o710, uid, gid: uid, dev: '1', ino: '5' },
      cwdBetween: [{ mode: 0o755, uid: aUid, gid: aUid, dev: '1', ino: '3' }, { mode: 0o755, uid: 65534, gid: 65534, dev: '1', ino: '4' }] }) as never;
    // The jail (65534's, 0751) takes /a, /a/b takes sub; /a (root's) could not have taken /a/b.
    checkRemovedDirs('img', [deep(65534, 65534)], [], dirs(0o1777));
    assert.throws(() => checkRemovedDirs('img', [deep(65534, 0)], [], dirs(0o1777)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: pid 7 (x) had the removed directory "/srv/jail/a/b" on the way to its working directory; restore would make it again in "/srv/jail/a", which its '
        + 'credentials (uid 65534, gid 65534, no CAP_DAC_OVERRIDE) could not write in (owner 0:0, mode 755): nothing was restored; sign the image and restore with --trust if it is genuine');
      return true;
    });
    checkRemovedDirs('img', [deep(65534, 0, '0x2')], [], dirs(0o1777));
    // A jail its process could not write in takes no working directory either.
    const inRoot = { ...jailed(4242), cwd: '/srv/jail/sub', cwdDeleted: { mode: 0o700, uid: 4242, gid: 4242, dev: '1', ino: '5' },
      rootDeleted: { mode: 0o755, uid: 0, gid: 0, dev: '1', ino: '2' } } as never;
    assert.throws(() => checkRemovedDirs('img', [inRoot], [], dirs(0o1777)),
      /had the removed directory "\/srv\/jail\/sub" as its working directory; restore would make it again in "\/srv\/jail", which its credentials \(uid 4242/);
  });

  it('judges a thread\'s own removed working directory by that thread\'s credentials', () => {
    // The process is root; its thread 8 runs as 65534, in the removed /srv/b of its own.
    const root = task(7, 0, 0, [], '0xffffffffff', []);
    const c = root.creds.threads[0]!;
    const held = {
      ...root, cwd: '/srv', threads: [{ tid: 7 }, { tid: 8, fs: { cwd: '/srv/b', umask: 18, cwdDeleted: { mode: 0o751, uid: 65534, gid: 65534, dev: '1', ino: '5' } } }],
      creds: { ...root.creds, threads: [c, { ...c, tid: 8, uids: [65534, 65534, 65534, 65534], gids: [65534, 65534, 65534, 65534], caps: { ...c.caps, effective: '0x0' } }] },
    } as unknown as Parameters<typeof checkRemovedDirs>[1][number];
    assert.throws(() => checkRemovedDirs('img', [held], [], dirs(0o755)),
      /^FerryError: image img: pid 7 \(x\) had the removed directory "\/srv\/b" as the working directory of its thread 8; restore would make it again in "\/srv", which its credentials \(uid 65534, gid 65534/);
    checkRemovedDirs('img', [held], [], dirs(0o1777));
  });

  it('judges the removed directory of a deleted file by its holder, else by a process mapping it, and refuses one nobody holds or maps', () => {
    const ghost = { id: 1, kind: 'ghost', path: '/srv/gone/app.log', ghost: '1:2' } as unknown as FileRecord;
    /** As dirs, but /srv/gone is not there. */
    const gone = (srv: number): StatOf => (path) => (path === '/srv/gone' ? undefined : dirs(srv)(path));
    const holder = task(7, 65534, 65534) as unknown as Parameters<typeof checkRemovedDirs>[1][number];
    assert.throws(() => checkRemovedDirs('img', [holder], [ghost], gone(0o755)),
      /^FerryError: image img: pid 7 \(x\) had the removed directory "\/srv\/gone" as the directory of its deleted file "\/srv\/gone\/app\.log" \(fd 3\); restore would make it again in "\/srv"/);
    checkRemovedDirs('img', [holder], [ghost], gone(0o1777));
    const mapper = { ...task(8, 65534, 65534, [], '0x0', []), vmas: [{ start: '0x1000', end: '0x2000', ghost: '1:2' }] } as unknown as Parameters<typeof checkRemovedDirs>[1][number];
    assert.throws(() => checkRemovedDirs('img', [mapper], [ghost], gone(0o755)), /^FerryError: image img: pid 8 \(x\) had the removed directory "\/srv\/gone" as the directory of its deleted file "\/srv\/gone\/app\.log" \(mapped\)/);
    checkRemovedDirs('img', [mapper], [ghost], gone(0o1777));
    // Neither held nor mapped: no credentials to judge by (an edited image could so have root make any directory).
    const nobody = task(9, 0, 0, [], '0xffffffffff', []) as unknown as Parameters<typeof checkRemovedDirs>[1][number];
    assert.throws(() => checkRemovedDirs('img', [nobody], [ghost], gone(0o1777)), (err: Error & { code?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.message, 'image img: the deleted file "/srv/gone/app.log" (file 1) is in the removed directory "/srv/gone", which restore would make again, '
        + 'and no process of the image holds or maps it to judge whether it could have: nothing was restored; sign the image and restore with --trust if it is genuine');
      return true;
    });
    // Its directory there: nothing to make, nothing to judge.
    checkRemovedDirs('img', [nobody], [ghost], dirs(0o755));
  });
});
