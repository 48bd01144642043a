/**
 * Shape checks for the engine's records read back from an image. Checksums already proved the
 * bytes are what was written; these checks catch images from another ferry version or made by
 * hand, so a bad field is reported by name instead of failing deep inside restore.
 */
import { REG_NAMES } from '../arch/x86-64.js';
import { FerryError } from '../errors.js';
import { TREE_ENTRY, type FilesRecord, type TaskRecord, type TreeRecord } from '../image/records.js';

const HEX = /^0x[0-9a-f]{1,16}$/;

function fail(where: string, what: string): never {
  throw new FerryError('EIMAGE', `image entry ${where} is invalid: ${what}`);
}

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function hexField(where: string, o: Record<string, unknown>, key: string): void {
  if (typeof o[key] !== 'string' || !HEX.test(o[key] as string)) fail(where, `${key} must be a 0x… hex string`);
}

function intField(where: string, o: Record<string, unknown>, key: string): void {
  if (!Number.isSafeInteger(o[key])) fail(where, `${key} must be an integer`);
}

/** Checks files.json. */
export function validateFiles(v: unknown): FilesRecord {
  const where = 'files.json';
  if (!isObj(v) || !Array.isArray(v.files)) fail(where, 'files must be an array');
  for (const [i, f] of (v.files as unknown[]).entries()) {
    if (!isObj(f) || !Number.isSafeInteger(f.id) || typeof f.kind !== 'string') fail(where, `files[${i}] needs id and kind`);
  }
  return v as unknown as FilesRecord;
}

/** Checks tasks/<pid>/task.json. */
export function validateTask(v: unknown, pid: number): TaskRecord {
  const where = `tasks/${pid}/task.json`;
  if (!isObj(v)) fail(where, 'not an object');
  for (const k of ['pid', 'ppid', 'pgid', 'sid', 'umask', 'pagesBytes']) intField(where, v, k);
  if (v.pid !== pid) fail(where, `pid is ${String(v.pid)}, expected ${pid}`);
  for (const k of ['comm', 'exe', 'cwd']) if (typeof v[k] !== 'string') fail(where, `${k} must be a string`);
  if (!isObj(v.mm)) fail(where, 'mm missing');
  for (const k of ['startCode', 'endCode', 'startData', 'endData', 'startBrk', 'brk', 'startStack', 'argStart', 'argEnd', 'envStart', 'envEnd']) {
    hexField(`${where} mm`, v.mm, k);
  }
  if (!Array.isArray(v.mm.auxv) || v.mm.auxv.length > 64) fail(where, 'mm.auxv must be an array of at most 64 pairs');
  if (!Array.isArray(v.vmas) || v.vmas.length > 1_000_000) fail(where, 'vmas must be an array');
  for (const [i, m] of (v.vmas as unknown[]).entries()) {
    if (!isObj(m)) fail(where, `vmas[${i}] not an object`);
    hexField(`${where} vmas[${i}]`, m, 'start');
    hexField(`${where} vmas[${i}]`, m, 'end');
    intField(`${where} vmas[${i}]`, m, 'prot');
    intField(`${where} vmas[${i}]`, m, 'pagesOffset');
    if (!Array.isArray(m.runs) || !Array.isArray(m.vmflags)) fail(where, `vmas[${i}] runs/vmflags missing`);
    if (m.kind === 'file' && !isObj(m.file)) fail(where, `vmas[${i}] is a file mapping without file`);
  }
  if (!Array.isArray(v.threads) || v.threads.length < 1 || v.threads.length > 65536) fail(where, 'threads must hold 1 to 65536 threads');
  for (const [i, th] of (v.threads as unknown[]).entries()) {
    if (!isObj(th) || !isObj(th.regs)) fail(where, `threads[${i}].regs missing`);
    if (!Number.isSafeInteger(th.tid) || (i === 0 && th.tid !== pid)) fail(where, `threads[${i}].tid is wrong (the first thread must be the leader)`);
    for (const r of REG_NAMES) hexField(`${where} threads[${i}].regs`, th.regs, r);
    if (typeof th.xstate !== 'string') fail(where, `threads[${i}].xstate must name an entry`);
    if (typeof th.comm !== 'string' || !isObj(th.sigaltstack) || !isObj(th.robustList)) fail(where, `threads[${i}] is incomplete`);
  }
  if (!Array.isArray(v.fds) || !Array.isArray(v.sigactions)) fail(where, 'fds/sigactions must be arrays');
  if (!Array.isArray(v.sharedPending) || typeof v.stopped !== 'boolean' || !isObj(v.itimers)) fail(where, 'sharedPending/stopped/itimers missing');
  const pendingOk = (list: unknown): boolean => Array.isArray(list) && list.length <= 1_000_000 && list.every((p) => isObj(p)
    && Number.isSafeInteger(p.signo) && (p.signo as number) >= 1 && (p.signo as number) <= 64
    && typeof p.siginfo === 'string' && Buffer.from(p.siginfo, 'base64').length === 128);
  if (!pendingOk(v.sharedPending)) fail(where, 'sharedPending must hold {signo 1..64, siginfo of 128 bytes in base64}');
  for (const [i, th] of (v.threads as Array<Record<string, unknown>>).entries()) {
    if (!pendingOk(th.pending)) fail(where, `threads[${i}].pending must hold {signo 1..64, siginfo of 128 bytes in base64}`);
  }
  const pair = (x: unknown): boolean => Array.isArray(x) && x.length === 2 && x.every((n) => Number.isSafeInteger(n));
  for (const k of ['real', 'virtual', 'prof']) {
    const it = v.itimers[k];
    if (!isObj(it) || !pair(it.interval) || !pair(it.value)) fail(where, `itimers.${k} must hold interval and value pairs`);
  }
  if (!Array.isArray(v.itimers.posix) || v.itimers.posix.length > 1_000_000) fail(where, 'itimers.posix must be an array');
  for (const [i, t] of (v.itimers.posix as unknown[]).entries()) {
    const at = `${where} itimers.posix[${i}]`;
    if (!isObj(t)) fail(where, `itimers.posix[${i}] is not an object`);
    for (const k of ['id', 'clock', 'signo', 'overrun']) intField(at, t, k);
    hexField(at, t, 'value');
    if (!['signal', 'none', 'thread'].includes(t.notify as string)) fail(at, 'notify must be signal, none or thread');
    if (t.thread !== null && !Number.isSafeInteger(t.thread)) fail(at, 'thread must be a tid or null');
    if (!pair(t.interval) || !pair(t.remaining)) fail(at, 'interval and remaining must be [seconds, nanoseconds]');
  }
  validateCreds(`${where} creds`, v.creds, v.threads as Array<{ tid: number }>);
  return v as unknown as TaskRecord;
}

/** Checks tree.json against the manifest: the root first, every live task listed once. */
export function validateTree(v: unknown, root: number, tasks: readonly number[]): TreeRecord {
  const where = TREE_ENTRY;
  if (!isObj(v) || v.root !== root || !Array.isArray(v.processes)) fail(where, `root must be ${root} and processes an array`);
  const seen = new Set<number>();
  for (const [i, p] of (v.processes as unknown[]).entries()) {
    if (!isObj(p)) fail(where, `processes[${i}] is not an object`);
    for (const k of ['pid', 'ppid', 'pgid', 'sid']) intField(`${where} processes[${i}]`, p, k);
    if (i === 0 && p.pid !== root) fail(where, 'the root must come first');
    if (i > 0 && !seen.has(p.ppid as number)) fail(where, `processes[${i}] (pid ${String(p.pid)}) comes before its parent ${String(p.ppid)}`);
    if (seen.has(p.pid as number)) fail(where, `pid ${String(p.pid)} is listed twice`);
    if (p.zombie !== null && !(isObj(p.zombie) && Number.isSafeInteger(p.zombie.status))) fail(where, `processes[${i}].zombie must be null or {status}`);
    seen.add(p.pid as number);
  }
  const live = (v.processes as Array<{ pid: number; zombie: unknown }>).filter((p) => p.zombie === null).map((p) => p.pid);
  if (live.length !== tasks.length || live.some((p, i) => p !== tasks[i])) fail(where, 'its live processes differ from the manifest\'s tasks');
  return v as unknown as TreeRecord;
}

/** Checks the creds field of a task (src/dump/creds.ts). */
function validateCreds(where: string, c: unknown, threads: ReadonlyArray<{ tid: number }>): void {
  if (!isObj(c)) fail(where, 'missing (an image from an older ferry?)');
  if (!Array.isArray(c.rlimits) || c.rlimits.length !== 16) fail(where, 'rlimits must hold 16 [soft, hard] pairs');
  for (const [i, r] of (c.rlimits as unknown[]).entries()) {
    if (!Array.isArray(r) || r.length !== 2 || !r.every((x) => typeof x === 'string' && HEX.test(x))) fail(where, `rlimits[${i}] must be two hex strings`);
  }
  for (const k of ['oomScoreAdj', 'dumpable']) intField(where, c, k);
  if (typeof c.childSubreaper !== 'boolean') fail(where, 'childSubreaper must be a boolean');
  if (!Array.isArray(c.seccompFilters)) fail(where, 'seccompFilters must be an array');
  for (const [i, f] of (c.seccompFilters as unknown[]).entries()) {
    if (!isObj(f) || !Number.isSafeInteger(f.flags) || typeof f.program !== 'string') fail(where, `seccompFilters[${i}] needs flags and program`);
    const bytes = Buffer.from(f.program, 'base64').length;
    if (bytes === 0 || bytes % 8 !== 0 || bytes > 4096 * 8) fail(where, `seccompFilters[${i}] is not a BPF program of 1 to 4096 instructions`);
  }
  const nFilters = (c.seccompFilters as unknown[]).length;
  if (!Array.isArray(c.threads) || c.threads.length !== threads.length) fail(where, 'threads must match the task\'s threads');
  for (const [i, t] of (c.threads as unknown[]).entries()) {
    const w = `${where} threads[${i}]`;
    if (!isObj(t) || t.tid !== threads[i]!.tid) fail(w, `tid must be ${threads[i]!.tid}`);
    const ids = (k: string, n?: number): void => {
      const a = t[k];
      if (!Array.isArray(a) || (n !== undefined && a.length !== n) || a.length > 65536
        || !a.every((x) => Number.isSafeInteger(x) && x >= 0)) fail(w, `${k} must be an array of ${n ?? 'at most 65536'} non-negative integers`);
    };
    ids('uids', 4); ids('gids', 4); ids('groups'); ids('affinity');
    if (!isObj(t.caps)) fail(w, 'caps missing');
    for (const k of ['effective', 'permitted', 'inheritable', 'bounding', 'ambient']) hexField(`${w} caps`, t.caps, k);
    intField(w, t, 'securebits');
    intField(w, t, 'pdeathsig');
    intField(w, t, 'personality');
    if (typeof t.noNewPrivs !== 'boolean' || !isObj(t.sched)) fail(w, 'noNewPrivs/sched missing');
    for (const k of ['policy', 'priority', 'nice']) intField(`${w} sched`, t.sched, k);
    if (!Array.isArray(t.seccomp) || !t.seccomp.every((x) => Number.isSafeInteger(x) && x >= 0 && x < nFilters)) fail(w, 'seccomp must index seccompFilters');
  }
}
