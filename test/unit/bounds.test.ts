/**
 * No privilege from the image (src/restore/bounds.ts): every field of a bound, the line each
 * violation gives, a container's config.json as a bound, and the --max-creds policy parser.
 * Pure: no root, no process.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { hex, type ThreadCredsRecord } from '../../src/image/records.js';
import {
  boundFromConfig, boundViolations, CAPABILITIES, checkBound, parseMaxCreds, untrustedBound, type BoundedTask, type CredsBound, type UserDb,
} from '../../src/restore/bounds.js';

const FULL = (1n << 41n) - 1n; // CAP_CHOWN … CAP_CHECKPOINT_RESTORE
const bit = (n: number): bigint => 1n << BigInt(n);
const CAP_NET_BIND_SERVICE = 10, CAP_NET_RAW = 13, CAP_SYS_ADMIN = 21, CAP_SETGID = 6, CAP_SETUID = 7;
const RLIMIT_NOFILE = 7;
const INF = hex((1n << 64n) - 1n);

/** A thread of an unprivileged process (as nobody runs it after setpriv --clear-groups). */
function thread(tid: number, over: Partial<ThreadCredsRecord> = {}): ThreadCredsRecord {
  return {
    tid, uids: [65534, 65534, 65534, 65534], gids: [65534, 65534, 65534, 65534], groups: [],
    caps: { effective: '0x0', permitted: '0x0', inheritable: '0x0', bounding: hex(FULL), ambient: '0x0' },
    securebits: 0, noNewPrivs: false, personality: 0, sched: { policy: 0, priority: 0, nice: 0, resetOnFork: false },
    affinity: [0, 1], pdeathsig: 0, seccomp: [],
    ...over,
  };
}

/** A task with `threads` (the first is the leader, tid = pid) and rlimits all [1024, 1024] but RLIMIT_NOFILE. */
function task(pid: number, comm: string, threads: ThreadCredsRecord[], nofileHard = 4096n): BoundedTask {
  const rlimits = Array.from({ length: 16 }, (_, r): [string, string] => (r === RLIMIT_NOFILE ? ['0x400', hex(nofileHard)] : [INF, INF]));
  return {
    pid, comm,
    creds: { rlimits, oomScoreAdj: 0, dumpable: 1, childSubreaper: false, seccompFilters: [{ flags: 0, program: 'BgAAAAAA/38=' }], threads },
  };
}

/** An edited task: root with every capability. */
const root = (tid: number): ThreadCredsRecord => thread(tid, {
  uids: [0, 0, 0, 0], gids: [0, 0, 0, 0], groups: [0],
  caps: { effective: hex(FULL), permitted: hex(FULL), inheritable: hex(FULL), bounding: hex(FULL), ambient: hex(FULL) },
});

describe('boundViolations: every field, one line each', () => {
  const nobody: CredsBound = { source: '--max-creds nobody', uids: [65534], gids: [65534], groups: [65534], origins: { uids: 'uid 65534', gids: 'gid 65534', groups: 'groups 65534' } };

  it('an empty bound allows anything; a task within every field passes', () => {
    assert.deepEqual(boundViolations('img', [task(42, 'x', [root(42)])], { source: 'nothing' }), []);
    assert.deepEqual(boundViolations('img', [task(42, 'x', [thread(42, { groups: [65534] })])], nobody), []);
  });

  it('uids and gids: each id beyond the bound, with the kinds that hold it', () => {
    const t = task(4242, 'python3', [thread(4242, { uids: [65534, 0, 0, 0], gids: [1, 65534, 65534, 2] })]);
    assert.deepEqual(boundViolations('/tmp/a.tar', [t], nobody), [
      'image /tmp/a.tar: pid 4242 (python3) would get uid 0 as its effective, saved and filesystem uid, beyond what --max-creds nobody allows (uid 65534)',
      'image /tmp/a.tar: pid 4242 (python3) would get gid 1 as its real gid, beyond what --max-creds nobody allows (gid 65534)',
      'image /tmp/a.tar: pid 4242 (python3) would get gid 2 as its filesystem gid, beyond what --max-creds nobody allows (gid 65534)',
    ]);
    const all = task(7, 'sh', [thread(7, { uids: [0, 0, 0, 0] })]);
    assert.deepEqual(boundViolations('i', [all], { source: 'B', uids: [5] }),
      ['image i: pid 7 (sh) would get uid 0 as its real, effective, saved and filesystem uid, beyond what B allows']);
  });

  it('supplementary groups: any subset of the bound\'s, nothing else', () => {
    assert.deepEqual(boundViolations('i', [task(7, 'sh', [thread(7, { groups: [65534, 0, 27] })])], nobody),
      ['image i: pid 7 (sh) would get supplementary groups 0, 27, beyond what --max-creds nobody allows (groups 65534)']);
    assert.deepEqual(boundViolations('i', [task(7, 'sh', [thread(7, { groups: [4] })])], nobody),
      ['image i: pid 7 (sh) would get supplementary group 4, beyond what --max-creds nobody allows (groups 65534)']);
  });

  it('each of the five capability sets, named by set and capability', () => {
    const config = boundFromConfig({ process: { capabilities: { bounding: ['CAP_KILL'], effective: ['CAP_KILL'], permitted: ['CAP_KILL'] } } });
    const admin = hex(bit(CAP_SYS_ADMIN));
    assert.deepEqual(boundViolations('X', [task(4242, 'python3', [thread(4242, { uids: [0, 0, 0, 0], gids: [0, 0, 0, 0],
      caps: { effective: admin, permitted: '0x0', inheritable: '0x0', bounding: '0x20', ambient: '0x0' } })])], config),
    ['image X: pid 4242 (python3) would get capability CAP_SYS_ADMIN in its effective set, beyond what the bundle\'s config.json allows (process.capabilities.effective)']);
    for (const set of ['effective', 'permitted', 'inheritable', 'bounding', 'ambient'] as const) {
      const caps = { effective: '0x0', permitted: '0x0', inheritable: '0x0', bounding: '0x0', ambient: '0x0', [set]: hex(bit(CAP_NET_RAW) | bit(CAP_SYS_ADMIN) | bit(63)) };
      assert.deepEqual(boundViolations('X', [task(9, 'a', [thread(9, { uids: [0, 0, 0, 0], gids: [0, 0, 0, 0], caps })])], config),
        [`image X: pid 9 (a) would get capabilities CAP_NET_RAW, CAP_SYS_ADMIN, capability 63 in its ${set} set, beyond what the bundle's config.json allows (process.capabilities.${set})`]);
    }
    // A set the bound leaves out is not bounded.
    assert.deepEqual(boundViolations('X', [task(9, 'a', [root(9)])], { source: 'B', caps: { ambient: 0n } }).length, 1);
  });

  it('securebits, no_new_privs, seccomp: what the bound requires may not be missing', () => {
    const b: CredsBound = { source: 'B', securebits: 0b101, noNewPrivs: true, seccomp: true, origins: { noNewPrivs: 'process.noNewPrivileges', seccomp: 'linux.seccomp' } };
    assert.deepEqual(boundViolations('i', [task(5, 'svc', [thread(5, { securebits: 0b1 })])], b), [
      'image i: pid 5 (svc) would run without SECBIT_NO_SETUID_FIXUP, which B requires',
      'image i: pid 5 (svc) would run without no_new_privs, which B requires (process.noNewPrivileges)',
      'image i: pid 5 (svc) would run without a seccomp filter, which B requires (linux.seccomp)',
    ]);
    assert.deepEqual(boundViolations('i', [task(5, 'svc', [thread(5, { securebits: 0b10111, noNewPrivs: true, seccomp: [0] })])], b), []);
    assert.deepEqual(boundViolations('i', [task(5, 'svc', [thread(5, { securebits: 0 })])], { source: 'B', securebits: 1 << 9 }),
      ['image i: pid 5 (svc) would run without securebit 9, which B requires']);
  });

  it('rlimits: a hard limit above the bound\'s (the soft one is the task\'s own business)', () => {
    const rlimits: Array<bigint | undefined> = [];
    rlimits[RLIMIT_NOFILE] = 1024n;
    rlimits[0] = 10n;
    const b: CredsBound = { source: 'the bundle\'s config.json', rlimits, origins: { rlimits: 'process.rlimits' } };
    assert.deepEqual(boundViolations('i', [task(5, 'svc', [thread(5)], 4096n)], b), [
      'image i: pid 5 (svc) would get a RLIMIT_CPU hard limit of unlimited, beyond what the bundle\'s config.json allows (process.rlimits RLIMIT_CPU: 10)',
      'image i: pid 5 (svc) would get a RLIMIT_NOFILE hard limit of 4096, beyond what the bundle\'s config.json allows (process.rlimits RLIMIT_NOFILE: 1024)',
    ]);
    rlimits[0] = undefined;
    assert.deepEqual(boundViolations('i', [task(5, 'svc', [thread(5)], 1024n)], b), []);
  });

  it('scheduling and oom_score_adj: what a thread without CAP_SYS_NICE or CAP_SYS_RESOURCE could not set', () => {
    const sched = (policy: number, priority: number, nice: number) => ({ policy, priority, nice, resetOnFork: false });
    /** A task whose RLIMIT_RTPRIO and RLIMIT_NICE soft limits are `rtprio` and `nice`. */
    const limited = (threads: ThreadCredsRecord[], rtprio: number, nice: number, oom = 0): BoundedTask => {
      const t = task(8, 'rt', threads);
      t.creds.rlimits[14] = [hex(rtprio), hex(rtprio)];
      t.creds.rlimits[13] = [hex(nice), hex(nice)];
      t.creds.oomScoreAdj = oom;
      return t;
    };
    const b: CredsBound = { source: 'B', sched: 'all', oomScoreAdj: 0, origins: { sched: 'no CAP_SYS_NICE', oomScoreAdj: 'no CAP_SYS_RESOURCE' } };
    assert.deepEqual(boundViolations('i', [limited([thread(8, { sched: sched(1, 99, -20) })], 0, 0, -1000)], b), [
      'image i: pid 8 (rt) would get real-time policy SCHED_FIFO priority 99 above its RLIMIT_RTPRIO of 0, beyond what B allows (no CAP_SYS_NICE)',
      'image i: pid 8 (rt) would get nice -20, below what its RLIMIT_NICE of 0 allows, beyond what B allows (no CAP_SYS_NICE)',
      'image i: pid 8 (rt) would get oom_score_adj -1000, beyond what B allows (no CAP_SYS_RESOURCE)',
    ]);
    // Within the task's own limits: what it could have set itself.
    assert.deepEqual(boundViolations('i', [limited([thread(8, { sched: sched(2, 10, -5) })], 10, 25, 500)], b), []);
    assert.deepEqual(boundViolations('i', [limited([thread(8, { sched: sched(3, 0, 19) })], 0, 0)], b), [], 'SCHED_BATCH, nice 19');
    // 'rt' leaves nice alone (a container inherits its caller's).
    assert.deepEqual(boundViolations('i', [limited([thread(8, { sched: sched(0, 0, -20) })], 0, 0)], { source: 'B', sched: 'rt' }), []);
    assert.equal(boundViolations('i', [limited([thread(8, { sched: sched(2, 1, 0) })], 0, 0)], { source: 'B', sched: 'rt' }).length, 1);
  });

  it('threads: only what the leader does not already show, named by tid; every task in order', () => {
    const t = task(10, 'srv', [thread(10, { uids: [0, 0, 0, 0] }), thread(11, { uids: [0, 0, 0, 0] }), thread(12, { uids: [0, 0, 0, 0], gids: [3, 3, 3, 3] })]);
    const u = task(20, 'child', [thread(20, { groups: [1] })]);
    assert.deepEqual(boundViolations('i', [t, u], nobody), [
      'image i: pid 10 (srv) would get uid 0 as its real, effective, saved and filesystem uid, beyond what --max-creds nobody allows (uid 65534)',
      'image i: pid 10 (srv) thread 12 would get gid 3 as its real, effective, saved and filesystem gid, beyond what --max-creds nobody allows (gid 65534)',
      'image i: pid 20 (child) would get supplementary group 1, beyond what --max-creds nobody allows (groups 65534)',
    ]);
  });
});

describe('checkBound', () => {
  it('throws the first line as EPRIVILEGE with the pid and image, counting the rest', () => {
    const tasks = [task(4242, 'python3', [root(4242)])];
    const bound = parseMaxCreds('nobody', DB);
    assert.throws(() => checkBound('/img/x.tar', tasks, bound), (err: Error & { code?: string; pid?: number; path?: string }) => {
      assert.equal(err.code, 'EPRIVILEGE');
      assert.equal(err.pid, 4242);
      assert.equal(err.path, '/img/x.tar');
      assert.equal(err.message.split('\n').length, 1);
      assert.match(err.message, /^image \/img\/x\.tar: pid 4242 \(python3\) would get uid 0 as its real, effective, saved and filesystem uid, beyond what --max-creds nobody allows \(uid 65534\) \(and 6 more\): nothing was restored$/);
      return true;
    });
    assert.throws(() => checkBound('-', tasks, bound), (err: Error & { path?: string }) => err.path === undefined && err.message.startsWith('image (stdin): '));
  });

  it('no bound, or a task within it: nothing to say', () => {
    checkBound('x', [task(1, 'a', [root(1)])], undefined);
    checkBound('x', [task(1, 'a', [thread(1)])], parseMaxCreds('nobody', DB));
  });
});

describe('untrustedBound: the default for an image no trusted key signed', () => {
  const how = 'sign it and restore with --trust, or allow it with --max-creds';
  const beyond = 'beyond what an image no trusted key signed allows';

  it('an ordinary program as nobody passes; as root with every capability, each excess is named', () => {
    const bound = untrustedBound();
    const own = "an unsigned image's code is its own, whatever executable it names";
    assert.deepEqual(boundViolations('i', [task(7, 'sleep', [thread(7)])], bound), []);
    assert.deepEqual(boundViolations('i', [task(7, 'sleep', [root(7)])], bound), [
      `image i: pid 7 (sleep) would get uid 0 as its real, effective, saved and filesystem uid, ${beyond} (no root: ${own}; ${how})`,
      `image i: pid 7 (sleep) would get gid 0 as its real, effective, saved and filesystem gid, ${beyond} (no gid 0: ${own}; ${how})`,
      `image i: pid 7 (sleep) would get supplementary group 0, ${beyond} (no gid 0: ${own}; ${how})`,
      ...['effective', 'permitted', 'inheritable', 'ambient'].map((set) => `image i: pid 7 (sleep) would get capabilities ${
        CAPABILITIES.map((c) => `CAP_${c}`).join(', ')} in its ${set} set, ${beyond} (no privilege: ${how})`),
    ]);
  });

  it('any other uid and gid are allowed; no capability in the four sets, the bounding set left alone', () => {
    const bound = untrustedBound();
    assert.deepEqual(boundViolations('i', [task(7, 'x', [thread(7, { uids: [1000, 1000, 1000, 1000], gids: [100, 100, 100, 100], groups: [27, 100] })])], bound), []);
    const cap = hex(bit(CAP_NET_BIND_SERVICE));
    const withCap = task(7, 'x', [thread(7, { caps: { effective: cap, permitted: cap, inheritable: '0x0', bounding: hex(FULL), ambient: '0x0' } })]);
    assert.deepEqual(boundViolations('i', [withCap], bound), ['effective', 'permitted'].map((set) =>
      `image i: pid 7 (x) would get capability CAP_NET_BIND_SERVICE in its ${set} set, ${beyond} (no privilege: ${how})`));
    const plainTask = task(7, 'x', [thread(7)]);
    const lowOom = { ...plainTask, creds: { ...plainTask.creds, oomScoreAdj: -500 } };
    assert.deepEqual(boundViolations('i', [lowOom], bound),
      [`image i: pid 7 (x) would get oom_score_adj -500, ${beyond} (no CAP_SYS_RESOURCE: ${how})`]);
  });

  it('a set-user-ID or set-group-ID root executable gives nothing: the image\'s code is its own', () => {
    // An edited image naming /usr/bin/passwd as its executable would run code of its own.
    assert.equal(boundViolations('i', [task(7, 'passwd', [root(7)])], untrustedBound()).length, 7);
    assert.equal(boundViolations('i', [task(7, 'wall', [thread(7, { gids: [65534, 0, 0, 65534], groups: [0] })])], untrustedBound()).length, 2);
  });
});

describe('boundFromConfig: a container\'s config.json as its bound', () => {
  /** What `runc spec` writes. */
  const spec = {
    process: {
      user: { uid: 0, gid: 0 },
      capabilities: {
        bounding: ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'],
        effective: ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'],
        permitted: ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'],
        ambient: ['CAP_AUDIT_WRITE', 'CAP_KILL', 'CAP_NET_BIND_SERVICE'],
      },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    linux: { namespaces: [{ type: 'pid' }] },
  };
  const three = bit(29) | bit(5) | bit(CAP_NET_BIND_SERVICE);

  it('runc spec\'s defaults: root, three capabilities, no_new_privs, RLIMIT_NOFILE 1024', () => {
    const b = boundFromConfig(spec, '/b/config.json');
    assert.equal(b.source, '/b/config.json');
    assert.deepEqual(b.uids, [0]);
    assert.deepEqual(b.gids, [0]);
    assert.deepEqual(b.groups, [0]);
    assert.deepEqual(b.caps, { effective: three, permitted: three, inheritable: 0n, bounding: three, ambient: three });
    assert.equal(b.noNewPrivs, true);
    assert.equal(b.seccomp, undefined);
    assert.equal(b.rlimits?.[RLIMIT_NOFILE], 1024n);
    assert.equal(b.rlimits?.[0], undefined);
    assert.equal(b.origins?.effective, 'process.capabilities.effective');
    assert.equal(b.sched, 'rt', 'no CAP_SYS_NICE: real-time only within RLIMIT_RTPRIO; nice is the caller\'s');
    assert.equal(b.oomScoreAdj, undefined, 'no process.oomScoreAdj: the caller\'s');
  });

  it('process.oomScoreAdj is the lowest; CAP_SYS_NICE frees scheduling, CAP_SYS_RESOURCE oom_score_adj', () => {
    assert.equal(boundFromConfig({ process: { oomScoreAdj: 100 } }).oomScoreAdj, 100);
    const b = boundFromConfig({ process: { oomScoreAdj: 100, capabilities: { permitted: ['CAP_SYS_NICE', 'CAP_SYS_RESOURCE'] } } });
    assert.deepEqual([b.sched, b.oomScoreAdj], [undefined, undefined]);
    assert.throws(() => boundFromConfig({ process: { oomScoreAdj: 'low' } }), /process\.oomScoreAdj must be an integer/);
  });

  it('user, additionalGids, seccomp, nnp off; no capabilities listed means none (as runc makes it)', () => {
    const b = boundFromConfig({ process: { user: { uid: 1000, gid: 100, additionalGids: [27, 100] }, noNewPrivileges: false }, linux: { seccomp: { defaultAction: 'SCMP_ACT_ERRNO' } } });
    assert.deepEqual([b.uids, b.gids, b.groups], [[1000], [100], [100, 27]]);
    assert.deepEqual(b.caps, { effective: 0n, permitted: 0n, inheritable: 0n, bounding: 0n, ambient: 0n });
    assert.equal(b.noNewPrivs, undefined);
    assert.equal(b.seccomp, true);
    assert.equal(b.rlimits, undefined);
    // No process.user at all: root, as the runtime defaults it.
    assert.deepEqual(boundFromConfig({}).uids, [0]);
  });

  it('CAP_SETUID, CAP_SETGID, CAP_SYS_RESOURCE in the permitted set free uids, gids and groups, limits', () => {
    const caps = (names: string[]) => ({ process: { user: { uid: 5, gid: 5 }, capabilities: { permitted: names, effective: names }, rlimits: [{ type: 'RLIMIT_NOFILE', hard: 8 }] } });
    const u = boundFromConfig(caps(['CAP_SETUID']));
    assert.deepEqual([u.uids, u.gids, u.groups], [undefined, [5], [5]]);
    const g = boundFromConfig(caps(['CAP_SETGID']));
    assert.deepEqual([g.uids, g.gids, g.groups], [[5], undefined, undefined]);
    assert.equal(boundFromConfig(caps(['CAP_SYS_RESOURCE'])).rlimits, undefined);
    assert.equal(boundFromConfig(caps([])).rlimits?.[RLIMIT_NOFILE], 8n);
    // In bounding only, CAP_SETUID is not the process's to use.
    const bnd = boundFromConfig({ process: { user: { uid: 5, gid: 5 }, capabilities: { bounding: ['CAP_SETUID', 'CAP_SETGID'] } } });
    assert.deepEqual([bnd.uids, bnd.gids], [[5], [5]]);
  });

  it('unknown capability names grant nothing; 2^64-1 as a hard limit reads as unlimited', () => {
    const b = boundFromConfig({ process: { capabilities: { effective: ['CAP_FUTURE', 'cap_kill'] }, rlimits: [{ type: 'RLIMIT_CORE', hard: 18446744073709551615 }, { type: 'RLIMIT_NEW', hard: 1 }] } });
    assert.equal(b.caps?.effective, bit(5));
    assert.equal(b.rlimits?.[4], (1n << 64n) - 1n);
  });

  it('a config of the wrong shape: EBUNDLE naming the field', () => {
    const bad = (config: unknown, re: RegExp): void => {
      assert.throws(() => boundFromConfig(config as never, 'c.json'), (err: Error & { code?: string }) => err.code === 'EBUNDLE' && re.test(err.message));
    };
    bad({ process: { user: { uid: -1 } } }, /^c\.json: process\.user\.uid must be a uid or gid$/);
    bad({ process: { user: { uid: 1, gid: 1, additionalGids: 'x' } } }, /process\.user\.additionalGids must be a list/);
    bad({ process: { capabilities: { effective: 'CAP_KILL' } } }, /process\.capabilities\.effective must be a list of capability names/);
    bad({ process: { rlimits: [{ type: 'RLIMIT_NOFILE', hard: '1' }] } }, /process\.rlimits\[0\]\.hard must be a number/);
  });

  it('the translation and the check together: a restored container that grew CAP_SYS_ADMIN', () => {
    const t = task(1, 'sh', [thread(1, {
      uids: [0, 0, 0, 0], gids: [0, 0, 0, 0], noNewPrivs: true,
      caps: { effective: hex(three | bit(CAP_SYS_ADMIN)), permitted: hex(three | bit(CAP_SYS_ADMIN)), inheritable: '0x0', bounding: hex(three), ambient: '0x0' },
    })], 1024n);
    assert.deepEqual(boundViolations('c.tar', [t], boundFromConfig(spec)), [
      'image c.tar: pid 1 (sh) would get capability CAP_SYS_ADMIN in its effective set, beyond what the bundle\'s config.json allows (process.capabilities.effective)',
      'image c.tar: pid 1 (sh) would get capability CAP_SYS_ADMIN in its permitted set, beyond what the bundle\'s config.json allows (process.capabilities.permitted)',
    ]);
  });
});

const DB: UserDb = {
  passwd: [
    'root:x:0:0:root:/root:/bin/bash',
    'www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin',
    '# a comment',
    'alice:x:1000:1000:Alice:/home/alice:/bin/bash',
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
  ].join('\n'),
  group: ['root:x:0:', 'adm:x:4:alice', 'www-data:x:33:', 'sudo:x:27:alice,bob', 'alice:x:1000:', 'nogroup:x:65534:'].join('\n'),
};

describe('parseMaxCreds', () => {
  it('a user name: its uid, primary gid and /etc/group groups; no capabilities; the bounding set left alone', () => {
    const b = parseMaxCreds('alice', DB);
    assert.equal(b.source, '--max-creds alice');
    assert.deepEqual([b.uids, b.gids, b.groups], [[1000], [1000], [1000, 4, 27]]);
    assert.deepEqual(b.caps, { effective: 0n, permitted: 0n, inheritable: 0n, ambient: 0n });
    assert.equal(b.noNewPrivs, undefined);
    assert.equal(b.seccomp, undefined);
    assert.deepEqual([b.sched, b.oomScoreAdj], ['all', 0]);
    assert.deepEqual(b.origins, {
      uids: 'uid 1000', gids: 'gid 1000', groups: 'groups 1000, 4, 27', effective: 'no capabilities', permitted: 'no capabilities',
      inheritable: 'no capabilities', ambient: 'no capabilities', sched: 'no CAP_SYS_NICE', oomScoreAdj: 'no CAP_SYS_RESOURCE',
    });
    const more = parseMaxCreds('alice,caps=sys_nice+sys_resource', DB);
    assert.deepEqual([more.sched, more.oomScoreAdj], [undefined, undefined]);
  });

  it('nobody, 65534:65534, 65534, nobody:nogroup all mean the same ids', () => {
    for (const text of ['nobody', '65534:65534', '65534', 'nobody:nogroup', 'nobody:65534']) {
      const b = parseMaxCreds(text, DB);
      assert.deepEqual([b.uids, b.gids, b.groups], [[65534], [65534], [65534]], text);
    }
    const other = parseMaxCreds('1234:5', DB);
    assert.deepEqual([other.uids, other.gids, other.groups], [[1234], [5], [5]]);
    assert.deepEqual(parseMaxCreds('alice:adm', DB).groups, [4, 27]);
  });

  it('root allows anything; root with fewer capabilities bounds its bounding set too, unless nnp', () => {
    for (const text of ['root', '0', '0:0', 'root,caps=all']) {
      const b = parseMaxCreds(text, DB);
      assert.deepEqual(b, { source: `--max-creds ${text}`, origins: {} }, text);
      assert.deepEqual(boundViolations('i', [task(1, 'a', [root(1)])], b), []);
    }
    const net = bit(CAP_NET_BIND_SERVICE);
    assert.deepEqual(parseMaxCreds('root,caps=net_bind_service', DB).caps, { effective: net, permitted: net, inheritable: net, ambient: net, bounding: net });
    const nnp = parseMaxCreds('root,caps=net_bind_service,nnp', DB);
    assert.equal(nnp.caps?.bounding, undefined);
    assert.equal(nnp.noNewPrivs, true);
    assert.deepEqual(nnp.uids, [0]);
  });

  it('caps: names with or without CAP_, any case; CAP_SETUID frees the uid, CAP_SETGID the gid and groups', () => {
    const b = parseMaxCreds('www-data,caps=CAP_NET_BIND_SERVICE+net_raw', DB);
    assert.equal(b.caps?.effective, bit(CAP_NET_BIND_SERVICE) | bit(CAP_NET_RAW));
    assert.equal(b.origins?.effective, 'CAP_NET_BIND_SERVICE, CAP_NET_RAW');
    assert.deepEqual(b.uids, [33]);
    const u = parseMaxCreds('nobody,caps=setuid', DB);
    assert.equal(u.uids, undefined);
    assert.equal(u.caps?.bounding, bit(CAP_SETUID), 'it may become root, which regains its bounding set on exec');
    const g = parseMaxCreds('nobody,caps=setgid', DB);
    assert.deepEqual([g.uids, g.gids, g.groups], [[65534], undefined, undefined]);
    assert.equal(g.caps?.permitted, bit(CAP_SETGID));
  });

  it('nnp, seccomp, securebits', () => {
    const b = parseMaxCreds('nobody,nnp,seccomp,securebits=0x5', DB);
    assert.deepEqual([b.noNewPrivs, b.seccomp, b.securebits], [true, true, 5]);
    assert.deepEqual(boundViolations('i', [task(3, 'd', [thread(3, { securebits: 1 })])], b), [
      'image i: pid 3 (d) would run without SECBIT_NO_SETUID_FIXUP, which --max-creds nobody,nnp,seccomp,securebits=0x5 requires (securebits=0x5)',
      'image i: pid 3 (d) would run without no_new_privs, which --max-creds nobody,nnp,seccomp,securebits=0x5 requires (nnp)',
      'image i: pid 3 (d) would run without a seccomp filter, which --max-creds nobody,nnp,seccomp,securebits=0x5 requires (seccomp)',
    ]);
  });

  it('the edited image of the issue: a nobody process turned root with every capability', () => {
    const lines = boundViolations('/tmp/x.tar', [task(4242, 'counter', [root(4242)])], parseMaxCreds('nobody', DB));
    assert.deepEqual(lines.slice(0, 3), [
      'image /tmp/x.tar: pid 4242 (counter) would get uid 0 as its real, effective, saved and filesystem uid, beyond what --max-creds nobody allows (uid 65534)',
      'image /tmp/x.tar: pid 4242 (counter) would get gid 0 as its real, effective, saved and filesystem gid, beyond what --max-creds nobody allows (gid 65534)',
      'image /tmp/x.tar: pid 4242 (counter) would get supplementary group 0, beyond what --max-creds nobody allows (groups 65534)',
    ]);
    assert.equal(lines.length, 7, 'and one line per capability set but bounding');
    ['effective', 'permitted', 'inheritable', 'ambient'].forEach((set, i) => assert.match(lines[3 + i]!, new RegExp(
      `^image /tmp/x\\.tar: pid 4242 \\(counter\\) would get capabilities CAP_CHOWN, CAP_DAC_OVERRIDE, .*, CAP_SYS_ADMIN, .*, CAP_CHECKPOINT_RESTORE in its ${set} set, beyond what --max-creds nobody allows \\(no capabilities\\)$`)));
  });

  it('refuses what it cannot read, as EUSAGE naming the text', () => {
    const bad = (text: string, re: RegExp): void => {
      assert.throws(() => parseMaxCreds(text, DB), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'EUSAGE');
        assert.match(err.message, re);
        assert.ok(err.message.startsWith(`--max-creds ${JSON.stringify(text)}: `), err.message);
        return true;
      });
    };
    bad('', /expected a user, or user:group/);
    bad('nobody:', /expected a user, or user:group/);
    bad('a:b:c', /expected a user, or user:group/);
    bad('mallory', /no user mallory in \/etc\/passwd/);
    bad('nobody:wheel', /no group wheel in \/etc\/group/);
    bad('1234', /uid 1234 has no entry in \/etc\/passwd: give its group too \(1234:GID\)/);
    bad('nobody,caps=sys_magic', /unknown capability sys_magic/);
    bad('nobody,nnp=1', /unknown option nnp=1/);
    bad('nobody,fly', /unknown option fly/);
    bad('nobody,securebits=lots', /unknown option securebits=lots/);
    bad('99999999999', /no user|has no entry|expected/);
  });

  it('reads this machine\'s /etc/passwd and /etc/group by default', () => {
    assert.deepEqual(parseMaxCreds('root'), { source: '--max-creds root', origins: {} });
  });
});
