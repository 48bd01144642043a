/**
 * Shape checks for the engine's records read back from an image. Checksums already proved the
 * bytes are what was written; these checks catch images from another ferry version or made by
 * hand, so a bad field is reported by name instead of failing deep inside restore (or inspect)
 * with the engine's words (`x is not a function`, `Maximum call stack size exceeded`).
 *
 * Every field of records.ts that restore or inspect reads is checked for its type and bounds
 * here, by a small table per record (`Check`s that return what is wrong, or undefined); the
 * fields of one kind of open file are its module's to check (FileKind.check). Fields this
 * version does not know are let through: a newer ferry may add some.
 */
import { MEMBARRIER_REGISTRATIONS, PAGE_SIZE, REG_NAMES } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { shown } from '../image/manifest.js';
import { KEPT_TABLE } from '../files/tcp-lock.js';
import { MAX_REMOVED_DEPTH, TREE_ENTRY, type FileRecord, type FilesRecord, type TaskRecord, type TreeRecord } from '../image/records.js';
import { forkedBySiblings, Forkers, setsidOrderProblem, SHARED_TABLES, THREAD_ALONE_KINDS } from '../image/sharing.js';
import { inherits } from './cow.js';
import { MAX_LENT_THROUGH } from '../image/cow.js';
import { AIO_RING_MAX_PAGES, IO_EVENT_SIZE, MAX_AIO_EVENTS, ringEvents } from '../image/aio-ring.js';

/** The largest PID Linux can hand out on 64-bit (PID_MAX_LIMIT). */
const PID_MAX = 4 * 1024 * 1024;
/** Most descriptors a process can have (fs.nr_open can go higher, no real process does). */
const MAX_FDS = 1 << 20;
/** Longest name of one directory entry (NAME_MAX), in bytes. */
const NAME_MAX = 255;
/** Most threads of one process restore accepts. */
const MAX_THREADS = 65536;

const HEX = /^0x[0-9a-f]{1,16}$/;
/** sizeof(struct robust_list_head) on x86-64; sigaltstack(2) flags. */
const ROBUST_LIST_HEAD_SIZE = 24;
const SS_ONSTACK = 1, SS_DISABLE = 2, SS_AUTODISARM = 2 ** 31;
/** The least alternate signal stack any x86-64 kernel accepts (more with large XSAVE areas). */
const MINSIGSTKSZ = 2048n;
/** End of x86-64 user space (TASK_SIZE with 5-level paging; 4-level ends lower, at 0x7ffffffff000). */
const USER_END = 0xfffffffffff000n;

function fail(where: string, what: string): never {
  throw new FerryError('EIMAGE', `image entry ${where} is invalid: ${what} (edited, or written by another ferry version?)`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks the value at `at`; returns what is wrong with it, or undefined. */
type Check = (v: unknown, at: string) => string | undefined;

const must = (at: string, what: string, v: unknown): string => `${at} must be ${what}, is ${shown(v)}`;
const join = (at: string, key: string): string => (at === '' ? key : `${at}.${key}`);

/** An integer from `min` to `max`. */
const int = (min = Number.MIN_SAFE_INTEGER, max = Number.MAX_SAFE_INTEGER): Check => (v, at) => (
  Number.isSafeInteger(v) && (v as number) >= min && (v as number) <= max ? undefined
    : must(at, min === Number.MIN_SAFE_INTEGER ? 'an integer' : `an integer from ${min} to ${max}`, v));
/** A 64-bit value as a "0x…" hex string. */
const hex: Check = (v, at) => (typeof v === 'string' && HEX.test(v) ? undefined : must(at, 'a 0x… hex string of 64 bits', v));
/** A string of at most `max` characters. */
const str = (max = 8192): Check => (v, at) => (typeof v === 'string' && v.length <= max ? undefined
  : must(at, `a string of at most ${max} characters`, v));
/** Base64 text of at most `max` characters. */
const base64 = (max: number): Check => (v, at) => str(max)(v, at)
  ?? (/^[A-Za-z0-9+/]*={0,2}$/.test(v as string) && (v as string).length % 4 === 0 ? undefined : must(at, 'base64 text', v));
/** A string of decimal digits (a 64-bit or wider integer kept exact). */
const digits: Check = (v, at) => (typeof v === 'string' && /^-?\d{1,25}$/.test(v) ? undefined : must(at, 'a string of digits', v));
const bool: Check = (v, at) => (typeof v === 'boolean' ? undefined : must(at, 'true or false', v));
/** A path: a string of at most 8192 characters without NUL (the kernel would cut it there). */
const path: Check = (v, at) => str()(v, at) ?? ((v as string).includes('\0') ? must(at, 'a path without NUL bytes', v) : undefined);
/** An absolute path (as /proc shows an executable, a working directory, a mapped file). */
const absPath: Check = (v, at) => path(v, at) ?? ((v as string).startsWith('/') ? undefined : must(at, 'an absolute path', v));
/** One of the strings `values`. */
const oneOf = (...values: string[]): Check => (v, at) => (typeof v === 'string' && values.includes(v) ? undefined
  : must(at, `one of ${values.join(', ')}`, v));
/** null, or what `check` accepts. */
const nullable = (check: Check): Check => (v, at) => (v === null ? undefined : check(v, at));
/** A list of `min` to `max` items, each accepted by `item`. */
const list = (item: Check, max: number, min = 0): Check => (v, at) => {
  if (!Array.isArray(v) || v.length < min || v.length > max) {
    return must(at, min > 0 ? `a list of ${min} to ${max} items` : `a list of at most ${max} items`, v);
  }
  for (let i = 0; i < v.length; i++) {
    const bad = item(v[i], `${at}[${i}]`);
    if (bad !== undefined) return bad;
  }
  return undefined;
};
/** A list of exactly the items `items`, in order ([seconds, nanoseconds], [soft, hard]…). */
const tuple = (...items: Check[]): Check => (v, at) => {
  if (!Array.isArray(v) || v.length !== items.length) return must(at, `a list of ${items.length}`, v);
  for (const [i, check] of items.entries()) {
    const bad = check(v[i], `${at}[${i}]`);
    if (bad !== undefined) return bad;
  }
  return undefined;
};
/** An object with `fields` (every one present) and `optional` ones (checked when present). */
const record = (fields: Readonly<Record<string, Check>>, optional: Readonly<Record<string, Check>> = {}): Check => (v, at) => {
  if (!isObj(v)) return must(at === '' ? 'it' : at, 'an object', v);
  for (const [k, check] of Object.entries(fields)) {
    const bad = check(v[k], join(at, k));
    if (bad !== undefined) return bad;
  }
  for (const [k, check] of Object.entries(optional)) {
    if (v[k] === undefined) continue;
    const bad = check(v[k], join(at, k));
    if (bad !== undefined) return bad;
  }
  return undefined;
};
/** Runs `check` on `v` for the entry `where`; throws the one line when it finds something. */
function expect(where: string, check: Check, v: unknown): void {
  const bad = check(v, '');
  if (bad !== undefined) fail(where, bad);
}

const pid = int(1, PID_MAX);
/** A signal queued with its whole siginfo_t (128 bytes, base64). */
const pending: Check = (v, at) => record({ signo: int(1, 64), siginfo: str(256) })(v, at)
  ?? (Buffer.from((v as { siginfo: string }).siginfo, 'base64').length === 128 ? undefined
    : must(`${at}.siginfo`, '128 bytes in base64', (v as { siginfo: string }).siginfo));
/** [seconds, microseconds or nanoseconds]. */
const time = tuple(int(0), int(0, 999_999_999));
const itimer = record({ interval: time, value: time });
const posixTimer = record({
  id: int(0, 2 ** 31 - 1), clock: int(-(2 ** 31), 2 ** 31 - 1), notify: oneOf('signal', 'none', 'thread'),
  thread: nullable(int(1, PID_MAX)), signo: int(0, 64), value: hex, interval: time, remaining: time, overrun: int(),
});
const vma = record({
  start: hex, end: hex, prot: int(0, 15), shared: bool,
  kind: oneOf('anon', 'file', 'vdso', 'vvar', 'vvar_vclock', 'vsyscall', 'aio'), name: str(),
  vmflags: list(str(2), 64), runs: list(tuple(int(0), int(0)), 1 << 24), pagesOffset: int(0),
}, {
  shmem: record({ id: str(64), offset: hex }),
  // shmid and key as /proc/sysvipc/shm has them (int, key_t), mode its permission bits: nothing more goes to shmget(2).
  sysv: record({
    shmid: int(0, 2 ** 31 - 1), key: int(-(2 ** 31), 2 ** 32 - 1), size: int(0), mode: int(0, 0o777),
    uid: int(0, 2 ** 32 - 1), gid: int(0, 2 ** 32 - 1), removed: bool,
  }),
  file: record({ path: absPath, offset: hex, dev: str(64), ino: str(64), size: int(0) }, { mtimeNs: digits }),
  // A memfd or deleted file mapped (files/memfd.ts MappedSpecialFile): created again from these.
  memfd: record({ id: str(64), name: str(300), size: int(0), mode: int(0, 0o7777), seals: int(0, 0x3f) }),
  ghost: str(64),
  // Pages inherited copy-on-write from the parent's same area (image/cow.ts), checked against
  // the parent by restore/cow.ts.
  cow: list(tuple(int(0), int(0)), 1 << 24),
  // Stored pages its siblings inherit through the parent (image/cow.ts), checked by restore/cow.ts.
  lent: list(tuple(int(0), int(0)), 1 << 24),
  // Guard pages (MADV_GUARD_INSTALL), checked below: in order, inside, none stored or inherited.
  guards: list(tuple(int(0), int(0)), 1 << 24),
  // How many generations up they are lent through (image/cow.ts), with lent only.
  lentThrough: int(2, MAX_LENT_THROUGH),
  // An io_setup(2) ring (image/aio-ring.ts): its events base64, at most MAX_AIO_EVENTS of them
  // (checked against the area below).
  aio: record({ nr: int(1, ringEvents(AIO_RING_MAX_PAGES)), events: base64(Math.ceil(MAX_AIO_EVENTS * IO_EVENT_SIZE / 3) * 4) }),
});
/** A device or inode number as stat(2) gives it, in decimal. */
const id64: Check = (v, at) => (typeof v === 'string' && /^\d{1,20}$/.test(v) ? undefined : must(at, 'a string of at most 20 decimal digits', v));
/**
 * A removed directory a process is in (cwdDeleted, rootDeleted): mode and owner, and its
 * device and inode (`identity`: required; a working directory of an older image has none).
 */
const removedDir = (identity: boolean): Check => record({
  mode: int(0, 0o7777), uid: int(0, 2 ** 32 - 2), gid: int(0, 2 ** 32 - 2), ...(identity ? { dev: id64, ino: id64 } : {}),
}, identity ? {} : { dev: id64, ino: id64 });
const thread = record({
  tid: pid,
  regs: record(Object.fromEntries(REG_NAMES.map((r) => [r, hex]))),
  xstate: str(255),
  sigmask: hex,
  sigaltstack: record({ sp: hex, flags: int(-(2 ** 31), 2 ** 31 - 1), size: hex }),
  rseq: nullable(record({ pointer: hex, size: int(0, 2 ** 32 - 1), signature: int(0, 2 ** 32 - 1), flags: int(0, 2 ** 32 - 1) })),
  robustList: record({ head: hex, len: int(0) }),
  tidAddress: hex,
  comm: str(64),
  pending: list(pending, 1_000_000),
}, {
  // A thread's own root, working directory and umask (unshare(2) of CLONE_FS), as the task's.
  fs: record({ cwd: absPath, umask: int(0, 0o777) }, { root: absPath, cwdDeleted: removedDir(true) }),
  // A thread's own descriptor table (unshare(2) of CLONE_FILES), as the task's.
  fds: list(record({ fd: int(0, 2 ** 31 - 1), file: int(0), cloexec: bool }), MAX_FDS),
});
const task = record({
  pid, ppid: int(0, PID_MAX), pgid: int(0, PID_MAX), sid: int(0, PID_MAX),
  comm: str(64), exe: absPath, cwd: absPath, umask: int(0, 0o777),
  mm: record({
    ...Object.fromEntries(['startCode', 'endCode', 'startData', 'endData', 'startBrk', 'brk', 'startStack', 'argStart',
      'argEnd', 'envStart', 'envEnd'].map((k) => [k, hex])),
    auxv: list(tuple(hex, hex), 64),
  }),
  vmas: list(vma, 1_000_000),
  sigactions: list(record({ signo: int(1, 64), handler: hex, flags: hex, restorer: hex, mask: hex }), 64),
  sharedPending: list(pending, 1_000_000),
  itimers: record({ real: itimer, virtual: itimer, prof: itimer, posix: list(posixTimer, 1_000_000) }),
  stopped: bool,
  threads: list(thread, MAX_THREADS, 1),
  fds: list(record({ fd: int(0, 2 ** 31 - 1), file: int(0), cloexec: bool }), MAX_FDS),
  pagesBytes: int(0),
}, { thpDisabled: bool, thpExceptAdvised: bool, stopSignal: int(20, 22), mlockall: int(2, 6), membarrier: int(1, MEMBARRIER_REGISTRATIONS), cwdDeleted: removedDir(false), exeGhost: str(64),
  // The removed directories between a removed root and a removed working directory deeper in it.
  cwdBetween: list(removedDir(true), MAX_REMOVED_DEPTH - 1, 1), root: absPath, rootDeleted: removedDir(true) });

/**
 * The fields several kinds of open file share keep one type wherever they appear: checked
 * here when present; which ones a kind needs, and everything else of it, is its module's.
 */
const SHARED_FILE_FIELDS: Readonly<Record<string, Check>> = {
  path, link: str(), flags: int(0, 2 ** 32 - 1), pos: digits, major: int(0, 2 ** 32 - 1), minor: int(0, 2 ** 32 - 1),
  dev: str(64), ino: str(64), directory: bool,
  // Where the path resolves: 'task', the container's root (files/install.ts); absent, the host's.
  root: (v, at) => (v === 'task' ? undefined : must(at, '"task"', v)),
};

/** Checks files.json: each open file has a unique id and a kind (the rest is its module's). */
export function validateFiles(v: unknown): FilesRecord {
  const where = 'files.json';
  expect(where, record({ files: list(record({ id: int(0), kind: str(32) }, SHARED_FILE_FIELDS), MAX_FDS * 16) },
    { netLock: record({ table: lockTable }) }), v);
  const ids = new Set<number>();
  for (const f of (v as FilesRecord).files) {
    if (ids.has(f.id)) fail(where, `file id ${f.id} is listed twice`);
    ids.add(f.id);
  }
  return v as FilesRecord;
}

/** The name of a kept network lock table: ferry's own names only, so an image cannot have another table deleted. */
const lockTable: Check = (v, at) => (typeof v === 'string' && KEPT_TABLE.test(v) ? undefined
  : must(at, `a network lock table's name (${KEPT_TABLE.source})`, v));

/**
 * The removed directories between a removed root and a removed working directory (cwdBetween)
 * take their names from `cwd`: it must be `root` and one name for each of them and one for
 * itself, every name one path component (not empty, "." or "..", at most NAME_MAX bytes), and
 * both directories removed, so that restore makes each directory by one name inside the one
 * made before it and never walks anywhere else.
 */
function checkCwdBetween(where: string, t: TaskRecord): void {
  const between = t.cwdBetween!;
  if (t.cwdDeleted?.dev === undefined || t.rootDeleted === undefined || t.root === undefined) {
    fail(where, 'cwdBetween is there but cwdDeleted (with dev and ino), root or rootDeleted is not');
  }
  if (!t.cwd.startsWith(`${t.root}/`)) fail(where, `cwdBetween is there but cwd ${shown(t.cwd)} is not below root ${shown(t.root)}`);
  const names = t.cwd.slice(t.root.length + 1).split('/');
  if (names.length !== between.length + 1) {
    fail(where, `cwd ${shown(t.cwd)} has ${names.length} names below root, where cwdBetween (${between.length} directories) wants ${between.length + 1}`);
  }
  const bad = names.find((n) => n === '' || n === '.' || n === '..' || Buffer.byteLength(n) > NAME_MAX);
  if (bad !== undefined) fail(where, `cwd ${shown(t.cwd)} has ${shown(bad.slice(0, 64))} as a name below root, which is not one directory's name`);
}

/** Checks tasks/<pid>/task.json. */
export function validateTask(v: unknown, pid: number): TaskRecord {
  const where = `tasks/${pid}/task.json`;
  expect(where, task, v);
  const t = v as TaskRecord;
  if (t.pid !== pid) fail(where, `pid is ${t.pid}, expected ${pid}`);
  if (t.rootDeleted !== undefined && t.root === undefined) fail(where, 'rootDeleted is there but root is not');
  if (t.thpExceptAdvised !== undefined && t.thpDisabled !== true) fail(where, 'thpExceptAdvised is there but thpDisabled is not');
  if (t.cwdBetween !== undefined) checkCwdBetween(where, t);
  if (t.stopSignal !== undefined && !t.stopped) fail(where, `stopSignal is ${t.stopSignal} but the process is not stopped`);
  if (t.mlockall !== undefined && t.mlockall !== 2 && t.mlockall !== 6) fail(where, `mlockall must be 2 (MCL_FUTURE) or 6 (MCL_FUTURE | MCL_ONFAULT), is ${t.mlockall}`);
  if (t.membarrier !== undefined && (t.membarrier & ~MEMBARRIER_REGISTRATIONS) !== 0) {
    fail(where, `membarrier must hold only MEMBARRIER_CMD_REGISTER_* commands (0x${MEMBARRIER_REGISTRATIONS.toString(16)}), is 0x${t.membarrier.toString(16)}`);
  }
  // A removed executable is the file restored for one of its own areas (address-space.ts
  // setMm): what the process maps anyway, never another file of the image or of the host.
  if (t.exeGhost !== undefined && !t.vmas.some((m) => (m as { ghost?: unknown }).ghost === t.exeGhost)) {
    fail(where, `exeGhost ${t.exeGhost} names no deleted file the process maps`);
  }
  if (t.threads[0]!.tid !== pid) fail(where, `threads[0].tid is ${t.threads[0]!.tid}: the first thread must be the leader, ${pid}`);
  if (t.threads[0]!.fs !== undefined) fail(where, 'threads[0].fs is there: the leader\'s root, working directory and umask are the process\'s (cwd, root, umask)');
  const tids = new Set<number>();
  for (const [i, th] of t.threads.entries()) {
    if (tids.has(th.tid)) fail(where, `threads[${i}].tid ${th.tid} is listed twice`);
    tids.add(th.tid);
  }
  const fds = new Set<number>();
  for (const [i, f] of t.fds.entries()) {
    if (fds.has(f.fd)) fail(where, `fds[${i}]: descriptor ${f.fd} is listed twice`);
    fds.add(f.fd);
  }
  if (t.threads[0]!.fds !== undefined) fail(where, 'threads[0].fds is there: the leader\'s descriptors are the process\'s (fds)');
  // Threads' own tables: each as the task's, all of them together no more than one table may hold.
  let threadFds = 0;
  for (const [i, th] of t.threads.entries()) {
    const own = new Set<number>();
    for (const [j, f] of (th.fds ?? []).entries()) {
      if (own.has(f.fd)) fail(where, `threads[${i}].fds[${j}]: descriptor ${f.fd} is listed twice`);
      own.add(f.fd);
    }
    threadFds += own.size;
    if (threadFds > MAX_FDS) fail(where, `the threads' own descriptor tables hold more than ${MAX_FDS} descriptors`);
  }
  let rings = false;
  for (const [i, m] of t.vmas.entries()) {
    const pages = (BigInt(m.end) - BigInt(m.start)) / BigInt(PAGE_SIZE);
    if (pages <= 0n) fail(where, `vmas[${i}] ends at ${m.end}, not after its start ${m.start}`);
    if (m.kind === 'file' && m.file === undefined) fail(where, `vmas[${i}] is a file mapping without file`);
    if ((m.kind === 'aio') !== (m.aio !== undefined)) fail(where, `vmas[${i}] ${m.kind === 'aio' ? 'is an io_setup(2) ring without aio' : 'has aio but is not of kind aio'}`);
    if (m.aio !== undefined) {
      checkAioRing(where, t, i);
      rings = true;
    }
    let stored = 0;
    for (const [j, [first, count]] of m.runs.entries()) {
      if (BigInt(first) + BigInt(count) > pages) fail(where, `vmas[${i}].runs[${j}] goes past the end of the area (${pages} pages)`);
      stored += count;
    }
    if (m.cow !== undefined) {
      if (m.shared || (m.kind !== 'anon' && m.kind !== 'file')) fail(where, `vmas[${i}] inherits pages (cow) but is not a private anonymous or file area`);
      // In order, each inside the area, none overlapping another or a stored run: both lists
      // are sorted, so one walk over the two merged finds any overlap.
      const all = [...m.runs.map(([f, c]) => [f, c, 'runs'] as const), ...m.cow.map(([f, c]) => [f, c, 'cow'] as const)]
        .sort((a, b) => a[0] - b[0]);
      let end = 0;
      for (const [j, [first, count]] of m.cow.entries()) {
        if (count === 0 || BigInt(first) + BigInt(count) > pages) fail(where, `vmas[${i}].cow[${j}] is empty or goes past the end of the area (${pages} pages)`);
        if (j > 0 && first < m.cow[j - 1]![0] + m.cow[j - 1]![1]) fail(where, `vmas[${i}].cow[${j}] is out of order or overlaps the one before`);
      }
      for (const [first, count, list] of all) {
        if (first < end) fail(where, `vmas[${i}].${list} has a page at ${first} that another run of the area names too`);
        end = first + count;
      }
    }
    if (m.guards !== undefined) {
      if (m.kind !== 'anon' && m.kind !== 'file') fail(where, `vmas[${i}] has guard pages but is not an anonymous or file area`);
      // Both lists sorted (runs and cow overlap none of each other, above): one walk each.
      for (const [j, [first, count]] of m.guards.entries()) {
        if (count === 0 || BigInt(first) + BigInt(count) > pages) fail(where, `vmas[${i}].guards[${j}] is empty or goes past the end of the area (${pages} pages)`);
        if (j > 0 && first < m.guards[j - 1]![0] + m.guards[j - 1]![1]) fail(where, `vmas[${i}].guards[${j}] is out of order or overlaps the one before`);
      }
      for (const other of [m.runs, m.cow ?? []]) {
        let k = 0;
        for (const [first, count] of m.guards) {
          while (k < other.length && other[k]![0] + other[k]![1] <= first) k++;
          if (k < other.length && other[k]![0] < first + count) fail(where, `vmas[${i}].guards has a page at ${Math.max(first, other[k]![0])} that the area stores or inherits`);
        }
      }
    }
    if (m.lent !== undefined) {
      if (m.shared || (m.kind !== 'anon' && m.kind !== 'file')) fail(where, `vmas[${i}] lends pages but is not a private anonymous or file area`);
      // In order, each a stored page of the area: both lists sorted, one walk.
      let r = 0;
      for (const [j, [first, count]] of m.lent.entries()) {
        if (count === 0) fail(where, `vmas[${i}].lent[${j}] is empty`);
        if (j > 0 && first < m.lent[j - 1]![0] + m.lent[j - 1]![1]) fail(where, `vmas[${i}].lent[${j}] is out of order or overlaps the one before`);
        while (r < m.runs.length && m.runs[r]![0] + m.runs[r]![1] <= first) r++;
        const run = m.runs[r];
        if (!run || first < run[0] || first + count > run[0] + run[1]) fail(where, `vmas[${i}].lent[${j}] names pages that are not in one run of its stored pages`);
      }
    }
    if (m.lentThrough !== undefined && m.lent === undefined) fail(where, `vmas[${i}] names whom it lends pages through (lentThrough) but lends none`);
    if (m.pagesOffset + stored * PAGE_SIZE > t.pagesBytes) {
      fail(where, `vmas[${i}] stores pages past the end of the task's ${t.pagesBytes} bytes of pages`);
    }
  }
  if (rings) checkAioOverlaps(where, t);
  for (const [i, th] of t.threads.entries()) {
    // What the kernel refuses outright, refused here, before any thread exists (set_robust_list(2): the
    // size of struct robust_list_head; sigaltstack(2): SS_ONSTACK, SS_DISABLE, SS_AUTODISARM, and a
    // stack in use of at least MINSIGSTKSZ; rseq(2): at least the original 32-byte struct rseq,
    // aligned on 32 bytes).
    if (BigInt(th.robustList.head) !== 0n && th.robustList.len !== ROBUST_LIST_HEAD_SIZE) {
      fail(where, `threads[${i}].robustList.len must be ${ROBUST_LIST_HEAD_SIZE} (the size of struct robust_list_head), is ${th.robustList.len}`);
    }
    if ((th.sigaltstack.flags & ~(SS_ONSTACK | SS_DISABLE | SS_AUTODISARM)) !== 0) {
      fail(where, `threads[${i}].sigaltstack.flags ${th.sigaltstack.flags} has bits sigaltstack(2) does not know`);
    }
    if ((th.sigaltstack.flags & SS_DISABLE) === 0 && BigInt(th.sigaltstack.size) < MINSIGSTKSZ) {
      fail(where, `threads[${i}].sigaltstack.size ${th.sigaltstack.size} is below MINSIGSTKSZ (${MINSIGSTKSZ}) for a stack in use`);
    }
    if (th.rseq && (th.rseq.size < 32 || BigInt(th.rseq.pointer) % 32n !== 0n || BigInt(th.rseq.pointer) + BigInt(th.rseq.size) > USER_END)) {
      fail(where, `threads[${i}].rseq must be at least 32 bytes at a user address aligned on 32 (rseq(2)), is ${th.rseq.size} bytes at ${th.rseq.pointer}`);
    }
  }
  for (const [i, tm] of t.itimers.posix.entries()) {
    if (tm.thread !== null && !tids.has(tm.thread)) fail(where, `itimers.posix[${i}].thread ${tm.thread} is not a thread of pid ${pid}`);
  }
  validateCreds(`${where} creds`, (v as { creds?: unknown }).creds, t.threads);
  return t;
}

/**
 * An io_setup(2) ring (`vmas[i]`, kind 'aio'; image/aio-ring.ts), checked before anything is
 * made: a page-aligned shared area of user space no bigger than the largest ring io_setup
 * makes, overlapping no other area of the task; `nr` the events its length holds; fewer events
 * than `nr` (a ring holds at most nr - 1), whole io_events; no pages, nothing inherited, no
 * file or shared object behind it.
 */
function checkAioRing(where: string, t: TaskRecord, i: number): void {
  const m = t.vmas[i]!;
  const at = `vmas[${i}] (an io_setup(2) ring at ${m.start})`;
  const start = BigInt(m.start), end = BigInt(m.end);
  const page = BigInt(PAGE_SIZE);
  if (start % page !== 0n || end % page !== 0n || start < page || end > USER_END) fail(where, `${at} must be page-aligned in user space, is ${m.start}-${m.end}`);
  const pages = (end - start) / page;
  if (pages > BigInt(AIO_RING_MAX_PAGES)) fail(where, `${at} is ${pages} pages, more than the ${AIO_RING_MAX_PAGES} of the largest ring io_setup(2) makes`);
  if (m.aio!.nr !== ringEvents(Number(pages))) fail(where, `${at} has nr ${m.aio!.nr}, but its ${pages} pages hold ${ringEvents(Number(pages))} events`);
  const bytes = Buffer.byteLength(m.aio!.events, 'base64');
  if (bytes % IO_EVENT_SIZE !== 0 || bytes / IO_EVENT_SIZE >= m.aio!.nr || bytes / IO_EVENT_SIZE > MAX_AIO_EVENTS) {
    fail(where, `${at} must hold whole events (${IO_EVENT_SIZE} bytes each), fewer than its nr ${m.aio!.nr} and at most ${MAX_AIO_EVENTS}; it holds ${bytes} bytes`);
  }
  if (!m.shared || m.runs.length > 0 || m.cow !== undefined || m.lent !== undefined || m.file !== undefined || m.shmem !== undefined
    || m.sysv !== undefined || (m as { memfd?: unknown }).memfd !== undefined || (m as { ghost?: unknown }).ghost !== undefined || m.vmflags.length > 0) {
    fail(where, `${at} must be a shared area with no pages, files, shared objects or VmFlags of its own`);
  }
}

/**
 * No io_setup(2) ring overlaps another area of the task (restore moves the ring over whatever
 * is there: mremap(2) with MREMAP_FIXED). One walk in address order, whatever the number of
 * areas: an area overlaps one before it when it starts below the furthest end so far.
 */
function checkAioOverlaps(where: string, t: TaskRecord): void {
  const order = t.vmas.map((v, i) => ({ i, start: BigInt(v.start), end: BigInt(v.end), aio: v.kind === 'aio' }))
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  let far = { i: -1, end: 0n };
  let farRing = { i: -1, end: 0n };
  for (const a of order) {
    const hit = a.aio && a.start < far.end ? far.i : a.start < farRing.end ? farRing.i : -1;
    if (hit >= 0) fail(where, `vmas[${a.i}] (${t.vmas[a.i]!.start}-${t.vmas[a.i]!.end}) overlaps vmas[${hit}], ${a.aio ? 'an area' : 'an io_setup(2) ring'} restore would move its ring over`);
    if (a.end > far.end) far = { i: a.i, end: a.end };
    if (a.aio && a.end > farRing.end) farRing = { i: a.i, end: a.end };
  }
}

/** Checks tree.json against the manifest: the root first, every live task listed once. */
export function validateTree(v: unknown, root: number, tasks: readonly number[]): TreeRecord {
  const where = TREE_ENTRY;
  expect(where, record({
    root: int(1, PID_MAX),
    processes: list(record({
      pid: int(1, PID_MAX), ppid: int(0, PID_MAX), pgid: int(0, PID_MAX), sid: int(0, PID_MAX),
      zombie: nullable(record({ status: int() }, { comm: str(15) })),
    }, { sharesFiles: pid, sharesFs: pid }), PID_MAX, 1),
  }), v);
  const tree = v as TreeRecord;
  if (tree.root !== root) fail(where, `root is ${tree.root}, the manifest says ${root}`);
  const seen = new Map<number, TreeRecord['processes'][number]>();
  const forkers = new Forkers();
  for (const [i, p] of tree.processes.entries()) {
    const forker = forkers.add(p);
    if (i === 0 && p.pid !== root) fail(where, 'the root must come first');
    if (i > 0 && !seen.has(p.ppid)) fail(where, `processes[${i}] (pid ${p.pid}) comes before its parent ${p.ppid}`);
    if (seen.has(p.pid)) fail(where, `pid ${p.pid} is listed twice`);
    for (const field of SHARED_TABLES) {
      const first = p[field];
      if (first === undefined) continue;
      // Restore forks it from a process holding what it shares (restore/tree.ts): the first
      // holder listed before, holding the table as its own; its parent or a sibling holds it too.
      const owner = seen.get(first);
      if (p.zombie !== null || owner === undefined || owner.zombie !== null || owner[field] !== undefined || forker === undefined) {
        fail(where, `processes[${i}].${field} (pid ${p.pid} sharing with ${first}) must name a live process listed before it, `
          + 'holding the table as its own, that its parent, or a sibling in its session, shares with it');
      }
    }
    seen.set(p.pid, p);
  }
  const order = setsidOrderProblem(tree.processes);
  if (order !== undefined) fail(where, `${order}: those must be listed before it`);
  // A process group is in one session (setpgid(2) joins only a group of the caller's own):
  // restore makes a group whose leader had exited in its members' session (restore/tree.ts
  // leaderlessGroups), so they must agree on it.
  const sessionOf = new Map<number, number>();
  const listed = new Map(tree.processes.map((p) => [p.pid, p]));
  for (const p of tree.processes) {
    if (p.pgid === 0) continue;
    // Such a group's session is one the tree leads: its `sid` names a listed session leader,
    // not merely a listed process (else the group would be made in the caller's session).
    const leader = listed.get(p.sid);
    if (!listed.has(p.pgid) && leader !== undefined && leader.sid !== leader.pid) {
      fail(where, `pid ${p.pid} is in session ${p.sid}, which pid ${p.sid} does not lead (its session is ${leader.sid})`);
    }
    const sid = sessionOf.get(p.pgid) ?? p.sid;
    if (sid !== p.sid) fail(where, `pid ${p.pid} is in process group ${p.pgid} of session ${p.sid}, another member of it in session ${sid}`);
    sessionOf.set(p.pgid, sid);
  }
  const live = tree.processes.filter((p) => p.zombie === null).map((p) => p.pid);
  if (live.length !== tasks.length || live.some((p, i) => p !== tasks[i])) fail(where, 'its live processes differ from the manifest\'s tasks');
  return tree;
}

/**
 * Most files of one image that restore opens through a short-lived process of its own: a
 * reaped process's /proc file (procfile `gone`, made at that pid) and its pidfd (pidfd
 * `target` 0). Each costs a process made and reaped (a millisecond or two); a process keeps a
 * few such descriptors of children it reaped, not hundreds.
 */
export const MAX_STAND_INS = 256;
/** Most files of one image naming a thread (a thread's /proc file or pidfd): as many as threads restore makes in one process. */
export const MAX_THREAD_FILES = MAX_THREADS;

/**
 * Checks the files that name a pid for restore to act on, before anything is made (each kind's
 * check() refuses a record of the wrong shape and bounds the numbers; whether an untrusted
 * image may have a process made at a pid at all is files/procfile.ts checkProcfileTrust's):
 * - at most MAX_STAND_INS files restore opens through a short-lived process of its own;
 * - a reaped process's /proc file (`gone`) never naming a pid or tid of the image's own
 *   (outside a container, whose pids are its namespace's and the reaped one's ferry's):
 *   restore would make that one once the tree holds its pids, and a checkpoint never records
 *   one so (files/procfile.ts treeHolder);
 * - at most MAX_THREAD_FILES files naming a thread, each a thread of the image (a thread's
 *   /proc file or pidfd: `target` and `thread`), which restore would otherwise find missing
 *   only once every process and thread is made;
 * - an inotify watch through a process's removed working or root directory (`cwd`, `root`)
 *   naming a process of the image whose record says that directory was removed
 *   (`cwdDeleted`, `rootDeleted`): restore adds it once the processes are rebuilt.
 * Refusals are EIMAGE, one line, naming the file.
 */
export function checkNamedPids(label: string, tree: TreeRecord, tasks: readonly TaskRecord[], files: readonly FileRecord[], container: boolean): void {
  const refuse = (f: FileRecord, why: string): never => {
    throw new FerryError('EIMAGE', `image ${label}: file ${f.id} (${String(f.kind).slice(0, 32)}) ${why}: refused (an edited image); nothing was restored`);
  };
  const threadsOf = new Map(tasks.map((t) => [t.pid, new Set(t.threads.map((th) => th.tid))]));
  const taken = new Set<number>([...tree.processes.map((p) => p.pid), ...tasks.flatMap((t) => t.threads.map((th) => th.tid))]);
  let standIns = 0;
  let threadFiles = 0;
  for (const f of files) {
    const gone = f.kind === 'procfile' && f.gone !== undefined ? f.gone : undefined;
    if (gone !== undefined || (f.kind === 'pidfd' && f.target === 0)) {
      if (++standIns > MAX_STAND_INS) {
        refuse(f, `is the ${MAX_STAND_INS + 1}th file of a process already reaped, which restore opens through a process it makes for each, `
          + `more than the ${MAX_STAND_INS} an image may have`);
      }
    }
    if (!container && typeof gone === 'number' && taken.has(gone)) {
      refuse(f, `is a /proc file of pid ${gone}, reaped, yet ${gone} is a pid of the image's own processes or threads`);
    }
    if ((f.kind === 'procfile' || f.kind === 'pidfd') && f.thread !== undefined) {
      if (++threadFiles > MAX_THREAD_FILES) refuse(f, `is the ${MAX_THREAD_FILES + 1}th file naming a thread, more than the ${MAX_THREAD_FILES} an image may have`);
      // A record of the wrong shape is its kind's check() to refuse, by what is wrong with it.
      if (typeof f.target === 'number' && typeof f.thread === 'number' && threadsOf.get(f.target)?.has(f.thread) !== true) {
        refuse(f, `names thread ${f.thread} of pid ${f.target}, which is not a thread of the image`);
      }
    }
    if (f.kind === 'inotify' && Array.isArray(f.watches)) {
      for (const w of f.watches as Array<{ wd?: unknown; cwd?: unknown; root?: unknown }>) {
        if (typeof w !== 'object' || w === null) continue; // the kind's check refuses it
        for (const [which, pid] of [['working', w.cwd], ['root', w.root]] as const) {
          if (typeof pid !== 'number') continue;
          const t = tasks.find((x) => x.pid === pid);
          if ((which === 'working' ? t?.cwdDeleted : t?.rootDeleted) === undefined) {
            refuse(f, `has watch ${String(w.wd)} on the removed ${which} directory of pid ${pid}, which is no process of the image whose ${which} directory was removed`);
          }
        }
      }
    }
  }
}

/**
 * Checks the tasks that share a descriptor table or an fs struct (tree.json sharesFiles,
 * sharesFs) against the one whose table they share: the same descriptors (number, file,
 * close-on-exec), the same working directory and umask. Restore installs the table, and sets
 * the working directory, once for all of them, so each gets exactly what its own record says
 * and never another's descriptors beyond that.
 */
export function validateSharing(tree: TreeRecord, tasks: readonly TaskRecord[]): void {
  const byPid = new Map(tasks.map((t) => [t.pid, t]));
  const tables = new Map<TaskRecord, string>(); // each holder's table, written out once
  const fdsOf = (t: TaskRecord): string => {
    let text = tables.get(t);
    if (text === undefined) tables.set(t, (text = JSON.stringify([...t.fds].sort((a, b) => a.fd - b.fd).map((f) => [f.fd, f.file, f.cloexec]))));
    return text;
  };
  const fsOf = (t: TaskRecord): string => JSON.stringify([t.cwd, t.cwdDeleted ?? null, t.cwdBetween ?? null, t.umask, t.root ?? null, t.rootDeleted ?? null]);
  // A process forked by a sibling, and the sibling, are forked from stubs: neither inherits pages.
  for (const pid of forkedBySiblings(tree.processes)) {
    const task = byPid.get(pid);
    if (task !== undefined && inherits(task)) {
      fail(`tasks/${pid}/task.json`, `pid ${pid} inherits pages from its parent (cow), but is forked by or forks a sibling to share its tables (${TREE_ENTRY})`);
    }
  }
  for (const p of tree.processes) {
    const task = byPid.get(p.pid);
    if (!task) continue; // a zombie: validateTree refused any sharing of it
    for (const [field, what, same] of [['sharesFiles', 'descriptors', fdsOf], ['sharesFs', 'root, working directory and umask', fsOf]] as const) {
      const first = p[field];
      if (first === undefined) continue;
      const owner = byPid.get(first)!;
      if (same(task) !== same(owner)) {
        fail(`tasks/${p.pid}/task.json`, `pid ${p.pid} shares the ${field === 'sharesFiles' ? 'descriptor table' : 'fs struct'} of pid ${first} (${TREE_ENTRY}) but its ${what} differ from that process's`);
      }
    }
  }
}

/** A uid or gid (32 bits). */
const id = int(0, 2 ** 32 - 1);
const threadCreds = record({
  tid: pid,
  uids: tuple(id, id, id, id),
  gids: tuple(id, id, id, id),
  groups: list(id, 65536),
  caps: record({ effective: hex, permitted: hex, inheritable: hex, bounding: hex, ambient: hex }),
  securebits: int(0, 2 ** 32 - 1),
  noNewPrivs: bool,
  personality: int(0, 2 ** 32 - 1),
  // sched(7): SCHED_OTHER 0 … SCHED_DEADLINE 6; a real-time priority is 1 to 99 (0 otherwise).
  sched: record({ policy: int(0, 7), priority: int(0, 99), nice: int(-20, 19) }, { resetOnFork: bool }),
  affinity: list(int(0, 65535), 65536), // CPU numbers (NR_CPUS is at most 8192)
  pdeathsig: int(0, 64),
  seccomp: list(int(0), 65536),
}, { seccompStrict: bool });
const creds = record({
  rlimits: tuple(...Array.from({ length: 16 }, () => tuple(hex, hex))),
  oomScoreAdj: int(-1000, 1000),
  dumpable: int(0, 2),
  childSubreaper: bool,
  seccompFilters: list(record({ flags: int(0), program: str(4096 * 8 * 2) }), 65536),
  threads: list(threadCreds, MAX_THREADS, 1),
}, {
  // audit(7): a set loginuid (AUDIT_UID_UNSET, 2^32 - 1, is never recorded) and its session id.
  audit: record({ loginuid: int(0, 2 ** 32 - 2), sessionid: int(0, 2 ** 32 - 1) }),
});

/** Checks the creds field of a task (src/dump/creds.ts) against its threads. */
function validateCreds(where: string, c: unknown, threads: ReadonlyArray<{ tid: number }>): void {
  if (c === undefined) fail(where, 'missing (an image from an older ferry?)');
  expect(where, creds, c);
  const cr = c as TaskRecord['creds'];
  for (const [i, f] of cr.seccompFilters.entries()) {
    const bytes = Buffer.from(f.program, 'base64').length;
    if (bytes === 0 || bytes % 8 !== 0 || bytes > 4096 * 8) fail(where, `seccompFilters[${i}] is not a BPF program of 1 to 4096 instructions`);
  }
  if (cr.threads.length !== threads.length) fail(where, 'threads must match the task\'s threads');
  for (const [i, t] of cr.threads.entries()) {
    if (t.tid !== threads[i]!.tid) fail(where, `threads[${i}].tid must be ${threads[i]!.tid}`);
    if (!t.seccomp.every((x) => x < cr.seccompFilters.length)) fail(where, `threads[${i}].seccomp must index seccompFilters`);
    if (t.seccompStrict === true && t.seccomp.length > 0) fail(where, `threads[${i}] cannot be in seccomp strict mode and have filters`);
  }
}

/**
 * Each task as a holder of files: its descriptors and those of its threads' own tables
 * (ThreadRecord.fds) as one list (a number may be there twice), for the checks of what a
 * process may hold. Refuses (EIMAGE, one line) a thread's descriptor naming a file files.json
 * does not list (installing it would fail only once processes exist), and, in a container
 * (`container`), a thread with a table of its own in a process that shares its table with
 * another: its table is filled through a copy of ferry's pidfd its process keeps
 * (restore.ts rebuild), which a shared table no longer holds once its first holder is filled.
 */
export function threadTableHolders(label: string, tree: TreeRecord, tasks: readonly TaskRecord[], files: readonly FileRecord[],
  container: boolean): TaskRecord[] {
  const byId = new Map(files.map((f) => [f.id, f]));
  const sharing = new Set(tree.processes.filter((p) => p.sharesFiles !== undefined).map((p) => p.pid));
  // What a checkpoint refuses in a thread's own table is refused here too (files/collect.ts
  // refuseInThreadTable): its table is filled without the kinds' `installed` hooks, so an
  // epoll, a file only such tables hold of another kind, or its lock would come back wrong.
  const processHeld = new Set(tasks.flatMap((t) => t.fds.map((f) => f.file)));
  return tasks.map((t) => {
    const own = t.threads.filter((th) => th.fds !== undefined);
    if (own.length === 0) return t;
    if (container && sharing.has(t.pid)) {
      throw new FerryError('EUNSUPPORTED', `image ${label}: pid ${t.pid} shares a descriptor table with another process and has a thread with a table of its own, `
        + 'which restore cannot rebuild inside a container yet: nothing was restored', { pid: t.pid });
    }
    for (const th of own) {
      const bad = th.fds!.find((f) => !byId.has(f.file));
      if (bad) throw new FerryError('EIMAGE', `image ${label}: fd ${bad.fd} of thread ${th.tid} of pid ${t.pid} names file ${bad.file}, which files.json does not list: refused; nothing was restored`, { pid: t.pid });
      for (const fd of th.fds!) {
        const f = byId.get(fd.file)!;
        const alone = !processHeld.has(fd.file);
        const locked = ((f as { locks?: unknown[] }).locks?.length ?? 0) > 0;
        const why = f.kind === 'eventpoll' ? 'an epoll'
          : alone && !THREAD_ALONE_KINDS.has(f.kind) ? `a file of kind ${String(f.kind).slice(0, 32)} no process holds`
            : alone && locked ? 'a locked file no process holds' : undefined;
        if (why !== undefined) {
          throw new FerryError('EIMAGE', `image ${label}: fd ${fd.fd} of thread ${th.tid} of pid ${t.pid} is ${why}, which a checkpoint never puts in a thread's own descriptor table: refused; nothing was restored`, { pid: t.pid });
        }
      }
    }
    return { ...t, fds: [...t.fds, ...own.flatMap((th) => th.fds!)] };
  });
}
