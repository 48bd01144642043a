/**
 * Files under /proc/PID/ held open (`/proc/self/stat`, `/proc/<child>/status`, a process's
 * /proc directory itself…), on ferry's own procfs: kind 'procfile'. Such a file names a
 * process; reopened by its path at restore, it would name the process that has that pid then,
 * or none: the files are opened before the first restored process exists.
 *
 * Dump: the link's pid is looked up in the tree. A file of a process of the tree (its main
 * thread's /proc/PID/task/PID/ too) is stored by that process's pid in the tree's pid namespace
 * and the path below it; restore opens it once the tree exists (`openAfterTree`), under the
 * restored process's pid, with the same flags and offset. A file of a process outside the tree
 * (`/proc/1/stat`) is stored by path and opened by path again, as a regular file is; only a
 * trusted image may hold one (it would let an image read any process's /proc files as root).
 *
 * A file of another thread of the tree (/proc/PID/task/TID/…, what /proc/thread-self/…
 * names) is stored with that thread's tid in the tree's pid namespace (`thread`), which
 * restore gives the thread again. Threads are made after the descriptors are installed, so
 * such a file is opened once every thread exists (`openAfterThreads`) and put into each table
 * holding it then (files/install.ts installLate), at its number with its flags and offset.
 * Refused: one in flight (queued in a unix socket) or watched by an epoll (restore fills the
 * queues and adds the items before the threads exist; files/collect.ts), and an edited image
 * with one so, or in a container's image, before anything is made (files/install.ts
 * checkThreadFiles).
 *
 * A container's own procfs (its pid namespace's, mounted in it; not ferry's) is this kind's
 * for a file of a live process of the tree: stored by the container's pid with `root: 'task'`
 * and opened once the tree exists in the restored container's root (openInContainer), where
 * /proc/PID must be the restored process on a procfs of the container's pid namespace, never
 * the host's or another container's that an edited image or a changed mount table would lead
 * to. Another thread's file is refused at checkpoint there (a container's threads are made
 * after its files are installed), and a reaped process's too (files/collect.ts
 * refuseReapedProcFile: restore has no process of its own in the container's namespace).
 *
 * A file whose process had exited and been reaped (a child's /proc/PID/stat kept after
 * waitpid) names a dead task: its reads fail (ESRCH), and its pid is free, or another
 * process's by now. Its path tells it from a live one's: looked up again, it finds no file, or
 * another inode (an open /proc file pins its dentry, which stays the one the path leads to as
 * long as its process lives; the reaping unhashes the process's directory, whose link then
 * ends in " (deleted)"). Such a file is stored by that pid (`gone`, as ferry saw it) and the
 * path below it, and restore makes it the way it came about: a process of ferry's, made at that
 * pid when it is free (clone3 set_tid; any pid when it is not), stopped after its exec, has
 * its file opened, then is killed and reaped. Not kept exactly: the pid in the link text when
 * that pid is taken at restore. Refused at checkpoint when a process or thread of the tree has
 * that pid by now (restore/validate.ts checkNamedPids refuses such an image), and at restore
 * from an image not trusted (checkProcfileTrust: a root process at a pid the image picks). A
 * reaped thread's file (/proc/PID/task/TID/… of a thread that exited) is refused at
 * checkpoint: restore has no thread to make it through.
 */
import { fstatSync, readFileSync, readlinkSync, statfsSync, statSync } from 'node:fs';
import { errnoCode, FerryError, describeCause } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import {
  O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECTORY, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_PATH,
} from '../proc/fcntl.js';
import { inOwnMountNs, readProcLink, readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { type ConfinedRoot, hostRoot, openIn, rootOf } from './confined.js';
import type { DumpContext, FdDesc, FileKind } from './types.js';

const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_LARGEFILE | O_NOATIME | O_DIRECTORY;
const MAX_PID = 4194304;
/** /proc/<pid>[/task/<tid>][/rest]: the rest is plain names, no "." or "..". */
const PROC_PATH = /^\/proc\/(\d+)(?:\/task\/(\d+))?((?:\/[^/]+)*)$/;
/** What d_path adds to the link of a directory unhashed since it was opened (a reaped process's). */
const DELETED = ' (deleted)';
const SIGKILL = 9;
/** statfs(2) f_type of a procfs. */
const PROC_SUPER_MAGIC = 0x9fa0;

/**
 * The link of a /proc file, parsed: its pid, its thread's tid, the rest of the path, and
 * whether the link said " (deleted)" (a reaped process's directory); undefined if it is none.
 */
function parseLink(link: string): { pid: number; tid: number | undefined; rest: string; deleted: boolean } | undefined {
  const deleted = link.endsWith(DELETED);
  const m = PROC_PATH.exec(deleted ? link.slice(0, -DELETED.length) : link);
  if (!m) return undefined;
  return { pid: Number(m[1]), tid: m[2] === undefined ? undefined : Number(m[2]), rest: m[3] ?? '', deleted };
}

export interface ProcfileRecord extends FileRecord {
  kind: 'procfile';
  /** The process, by its pid in the tree's pid namespace; null for a process outside the tree. */
  target: number | null;
  /** The path below /proc/PID ('' for the directory itself, '/stat'…); with `target` null, the whole path. */
  sub: string;
  /** The path was /proc/PID/task/PID/…: the main thread's own directory. */
  task?: boolean;
  /**
   * The file's process had exited and been reaped: its pid as ferry saw it (`target` null,
   * `sub` the path below /proc/PID, never with `thread`).
   */
  gone?: number;
  /**
   * The path was /proc/PID/task/TID/… of another thread of `target`: that thread's tid in the
   * tree's pid namespace (never with `task`, nor with `target` null).
   */
  thread?: number;
  /**
   * 'task': a file of the container's own procfs (its pid namespace's, mounted in it), opened
   * at restore in the restored container's root, by the pids of its namespace (`target`,
   * `thread`); never with `target` null.
   */
  root?: 'task';
  flags: number;
  pos: string;
}

let procDev: bigint | undefined;
/** Whether `d` is a file of ferry's own procfs. */
function onOwnProc(d: FdDesc): boolean {
  procDev ??= statSync('/proc', { bigint: true }).dev;
  return d.stat.dev === procDev;
}

/** The tree's (innermost) pid of host pid `pid`; with `tid`, of that thread of it. (inotify.ts too.) */
export function nsPid(pid: number, tid?: number): number {
  return parseStatus(readProcText(pid, tid === undefined ? 'status' : `task/${tid}/status`)).nsPid.at(-1) ?? tid ?? pid;
}

/** Checks the shape of `sub`: names below /proc/PID, none of them "." or "..". */
function validSub(sub: unknown): boolean {
  return typeof sub === 'string' && sub.length <= 4096 && !sub.includes('\0')
    && (sub === '' || (sub.startsWith('/') && sub.slice(1).split('/').every((x) => x !== '' && x !== '.' && x !== '..')));
}

/**
 * Opens `path` (on ferry's procfs; with `root`, inside that root, on the procfs of device
 * `dev`) with the record's flags and offset; no magic link is followed.
 */
function openProc(path: string, rec: ProcfileRecord, root = hostRoot(), dev?: number): number {
  const n = native();
  const at = openIn(root, path, O_PATH | (rec.flags & O_DIRECTORY), `file ${rec.id} (${path}) of the image`);
  try {
    // On the procfs checked (openInContainer): no other file system mounted on the path below it.
    if (dev !== undefined && fstatSync(at).dev !== dev) {
      throw new FerryError('EOPEN', `cannot restore file ${rec.id} (${path}): it is not on the container's /proc`);
    }
    const fd = n.openRaw(`/proc/self/fd/${at}`, rec.flags & REOPEN_FLAGS);
    const pos = Number(rec.pos);
    if (pos !== 0) {
      try {
        n.lseek(fd, pos, 0);
      } catch { /* a /proc file that cannot seek was read from its start again */ }
    }
    return fd;
  } finally {
    n.closeFd(at);
  }
}

/** Whether `d` is on a procfs (any instance: a container's own too). */
function onProcfs(d: FdDesc): boolean {
  try {
    return statfsSync(`/proc/${d.pid}/fd/${d.fd}`).type === PROC_SUPER_MAGIC;
  } catch {
    return false; // closed meanwhile: another module says so
  }
}

/**
 * Opens (O_PATH) the directory /proc/`pid` inside `root` (a container's) and checks that it
 * is the one of host process `host`, on a procfs of `host`'s own pid namespace: its pid
 * namespace (ns/pid) is `host`'s, and its NSpid line, which lists the pids from the procfs's
 * namespace down to the process's, holds `pid` alone. Anything else (the host's /proc, or
 * another container's, mounted there; another process at that pid) gives undefined. The
 * caller closes the descriptor.
 */
function ownProcDir(root: ConfinedRoot, pid: number, host: number, what: string): number | undefined {
  const n = native();
  let dir: number;
  try {
    dir = openIn(root, `/proc/${pid}`, O_PATH | O_DIRECTORY, what);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const at = `/proc/self/fd/${dir}`;
    if (statfsSync(at).type === PROC_SUPER_MAGIC && readlinkSync(`${at}/ns/pid`) === readProcLink(host, 'ns/pid')) {
      const ns = parseStatus(readFileSync(`${at}/status`, 'utf8')).nsPid;
      if (ns.length === 1 && ns[0] === pid) return dir;
    }
  } catch { /* gone, or not a process's: undefined */ }
  n.closeFd(dir);
  return undefined;
}

/**
 * Opens /proc/`pid`[`below`] in `root`, a container's, for record `rec`: the file of host
 * process `host` on the container's own procfs (ownProcDir), never the host's nor another
 * container's, with the record's flags and offset.
 */
function openInContainer(root: ConfinedRoot, pid: number, host: number, below: string, rec: ProcfileRecord): number {
  const where = `/proc/${pid}${below}`;
  const dir = ownProcDir(root, pid, host, `file ${rec.id} (${where} in the container) of the image`);
  if (dir === undefined) {
    throw new FerryError('EOPEN', `cannot restore file ${rec.id} (${where}): /proc/${pid} in the restored container is not its process ${pid} `
      + 'on the container\'s own /proc (its /proc is not a procfs of its pid namespace)');
  }
  try {
    return openProc(where, rec, root, fstatSync(dir).dev);
  } finally {
    native().closeFd(dir);
  }
}

/**
 * The record of `d`, a /proc file of a container's own procfs (not ferry's) of a live process
 * (collect.ts refused a reaped one's already): by the pids of the container's namespace,
 * `root: 'task'`, once the file's process is found to be a process of the tree.
 */
function dumpInContainer(d: FdDesc, ctx: DumpContext, link: { pid: number; tid: number | undefined; rest: string }): Omit<ProcfileRecord, 'id' | 'kind'> {
  const root = ctx.mountNsRoot(d.pid);
  // The tree's processes by their pid in their own namespace (one namespace in a container).
  const byNsPid = ctx.scratch<number>('procfile-nspid');
  if (byNsPid.size === 0) for (const h of ctx.pids) byNsPid.set(String(nsPid(h)), h);
  const host = byNsPid.get(String(link.pid));
  const dir = root === undefined || host === undefined ? undefined : ownProcDir(root, link.pid, host, `fd ${d.fd} of pid ${d.pid}`);
  if (dir === undefined) {
    throw unsupported(d, `a /proc file of pid ${link.pid} on a procfs that is not the one of its container's pid namespace, or of a process outside the tree: `
      + 'restore could not open it again naming the same process; close the descriptor');
  }
  native().closeFd(dir);
  const flags = d.fdinfo.flags & REOPEN_FLAGS;
  const pos = d.fdinfo.pos.toString();
  const { pid, tid, rest } = link;
  if (tid !== undefined && tid !== pid) {
    // Restore makes a container's threads after its files are installed, and a container's
    // image holds no file opened once they exist (install.ts checkThreadFiles).
    throw unsupported(d, `a /proc file of thread ${tid} of pid ${pid} of its container, which restore could open only once the container's threads exist; `
      + `open /proc/${pid}/task/${tid} again after the restore, or close the descriptor`);
  }
  return { target: pid, sub: rest, ...(tid !== undefined ? { task: true } : {}), root: 'task', flags, pos };
}

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

/**
 * Whether `d`, a /proc file, names a task that has been reaped: its path, looked up now,
 * finds no file or another inode than the one held (see the module comment).
 */
function namesGone(d: FdDesc, path: string, deleted: boolean): boolean {
  if (deleted) return true;
  try {
    const now = statSync(path, { bigint: true });
    return now.ino !== d.stat.ino || now.dev !== d.stat.dev;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ESRCH') return true;
    throw new FerryError('EDUMP', `checkpoint: pid ${d.pid} fd ${d.fd} -> ${d.link}: cannot look its path up again: ${describeCause(err)}`, { cause: err });
  }
}

/**
 * What of the tree `pids` (its live processes) holds pid `pid` now, reused since the process a
 * /proc file named was reaped: "process N", "thread N of pid M", "zombie N"; undefined when
 * none does. Such a pid is the tree's at restore: an image may not name it as a reaped
 * process's (restore/validate.ts checkNamedPids), so the checkpoint refuses the file.
 */
function treeHolder(pid: number, pids: ReadonlySet<number>): string | undefined {
  let st;
  try {
    st = parseStatus(readProcText(pid, 'status'));
  } catch {
    return undefined; // free
  }
  if (pids.has(st.tgid)) return st.tgid === pid ? `process ${pid}` : `thread ${pid} of pid ${st.tgid}`;
  if (st.state.startsWith('Z') && pids.has(st.ppid)) return `zombie ${pid}`;
  return undefined;
}

/**
 * Opens the file of record `rec` of a reaped process (`gone`) as it came about: through a
 * process of ferry's made at that pid (any pid when it is taken), stopped right after its exec,
 * killed and reaped once the file is open, so that the file names a dead task.
 */
function openGone(rec: ProcfileRecord, gone: number): number {
  const n = native();
  let pid: number;
  try {
    try {
      // Node itself: a program that is there wherever ferry runs, never run past its exec.
      pid = n.spawnStub(process.execPath, [gone], true);
    } catch (err) {
      if (errnoCode(err) !== 'EEXIST') throw err;
      pid = n.spawnStub(process.execPath, [], true); // the pid is taken: the link text names another
    }
  } catch (err) {
    throw new FerryError('EOPEN', `cannot restore file ${rec.id} (/proc/${gone}${rec.sub}, of a process already reaped): `
      + `no process could be made to stand for it: ${describeCause(err)}`, { cause: err });
  }
  try {
    // It dies with ferry: the kernel kills it if ferry dies from before its exec (its
    // parent-death signal) and while traced (PTRACE_O_EXITKILL, set by spawnStub). Without them
    // a ferry killed now let it go on: its tracer gone, the kernel resumed it and it ran Node,
    // untraced, at the pid. Killed, nothing stands at the pid once whoever inherits it (ferry's
    // parent's subreaper, or init) has reaped it.
    faultPointSync('standin'); // tests only: the open failing
    return openProc(`/proc/${pid}${rec.task === true ? `/task/${pid}` : ''}${rec.sub}`, rec);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EOPEN', `cannot restore file ${rec.id} (/proc/${gone}${rec.sub}, of a process already reaped) through process ${pid} `
      + `made for it: ${describeCause(err)}`, { cause: err });
  } finally {
    try {
      process.kill(pid, SIGKILL);
    } finally {
      n.waitExit(pid);
    }
  }
}

/**
 * Refuses, for an image not trusted, a /proc file of a process outside its tree, and one of a
 * reaped process (`gone`).
 *
 * A reaped process's file makes restore create a process of its own at the pid the image
 * names, for a moment: ferry's process, root with every capability, at a pid an image's author
 * picked, at a time the restorer picks. That is a foothold for the pid-reuse races of programs
 * that judge a process by its pid: one that recorded a pid of its client and looks at
 * /proc/PID/status again later (its uid, its executable) would find root there; one that kills
 * or signals a pid from a stale pid file would hit ferry's process instead of nothing. An
 * unsigned image may not ask for that: it is refused, before anything is made (a checkpoint of
 * this host's is signed by its key, so the files come back as ever there).
 */
export function checkProcfileTrust(label: string, files: readonly FileRecord[]): void {
  const outside = files.find((x) => x.kind === 'procfile' && x.target === null && x.gone === undefined);
  const f = outside ?? files.find((x) => x.kind === 'procfile' && x.gone !== undefined);
  if (!f) return;
  if (f.gone !== undefined) {
    procfile.check!(f as ProcfileRecord); // an invalid record is said to be so first
    const where = `/proc/${String(f.gone).slice(0, 16)}${String(f.sub).slice(0, 256)}`.replace(/[\0-\x1f]/g, '?'); // the image's words: bounded, one line
    throw new FerryError('EPRIVILEGE', `image ${label}: file ${f.id} (${where}) `
      + 'is a /proc file of a process already reaped, which restore opens through a process of its own made at that pid: only an image this host '
      + 'signed or one you trust may ask for a process at a pid it chooses (sign it and restore with --trust if it is genuine)');
  }
  throw new FerryError('EPRIVILEGE', `image ${label}: file ${f.id} (${JSON.stringify(String(f.sub).slice(0, 256))}) is a /proc file of a process outside the image's tree, `
    + 'which restore would open as root: only an image this host signed or one you trust may hold one (sign it and restore with --trust if it is genuine)');
}

export const procfile: FileKind<ProcfileRecord> = {
  kind: 'procfile',

  matches(fd: FdDesc): boolean {
    // A container's own procfs too: its task is in another mount namespace.
    return parseLink(fd.link) !== undefined && (fd.fdinfo.flags & O_PATH) === 0
      && (onOwnProc(fd) || (onProcfs(fd) && !inOwnMountNs(fd.pid)));
  },

  key(fd: FdDesc): string {
    return `procfile:${fd.link}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx): Omit<ProcfileRecord, 'id' | 'kind'> {
    const { pid, tid, rest, deleted } = parseLink(fd.link)!;
    if (!onOwnProc(fd)) return dumpInContainer(fd, ctx, { pid, tid, rest });
    const flags = fd.fdinfo.flags & REOPEN_FLAGS;
    const pos = fd.fdinfo.pos.toString();
    const path = `/proc/${pid}${tid === undefined ? '' : `/task/${tid}`}${rest}`;
    // Before the tree's pids: a reaped process's pid may be a process of the tree's by now.
    if (namesGone(fd, path, deleted)) {
      if (tid !== undefined && tid !== pid) {
        throw unsupported(fd, `a /proc file of thread ${tid} of pid ${pid}, which has exited: restore has no thread to open it through; `
          + 'close the descriptor');
      }
      const now = treeHolder(pid, ctx.pids);
      if (now !== undefined) {
        throw unsupported(fd, `a /proc file of pid ${pid}, which has exited and been reaped; its pid is now ${now} of the checkpointed tree, `
          + 'where restore could not make a process to open the file through; close the descriptor');
      }
      return { target: null, gone: pid, sub: rest, ...(tid !== undefined ? { task: true } : {}), flags, pos };
    }
    if (!ctx.pids.has(pid)) return { target: null, sub: path, flags, pos };
    // Another thread's (restore opens it once the threads exist: namesThread).
    if (tid !== undefined && tid !== pid) return { target: nsPid(pid), sub: rest, thread: nsPid(pid, tid), flags, pos };
    return { target: nsPid(pid), sub: rest, ...(tid !== undefined ? { task: true } : {}), flags, pos };
  },

  check(rec: ProcfileRecord): void {
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: file ${rec.id} (kind procfile) ${why}`);
    };
    if (rec.target !== null && (!Number.isInteger(rec.target) || rec.target < 1 || rec.target > MAX_PID)) bad('has an invalid target');
    if (rec.gone !== undefined && (rec.target !== null || !Number.isInteger(rec.gone) || rec.gone < 1 || rec.gone > MAX_PID
      || rec.thread !== undefined)) bad('has an invalid reaped process (gone)');
    if (rec.target === null && rec.gone === undefined
      ? !(typeof rec.sub === 'string' && PROC_PATH.test(rec.sub) && validSub(PROC_PATH.exec(rec.sub)![3] ?? ''))
      : !validSub(rec.sub)) bad('has an invalid path');
    if (rec.task !== undefined && typeof rec.task !== 'boolean') bad('has an invalid task flag');
    if (rec.root !== undefined && (rec.root !== 'task' || rec.target === null || rec.thread !== undefined)) bad('has an invalid root');
    // In a container's image no key signed (install.ts placed it in the container's root): a
    // process's file comes from the container's /proc, never from ferry's, the host's.
    if (rec.root === undefined && rec.target !== null && rootOf(rec) !== hostRoot()) bad('names a file of the host\'s /proc in a container\'s image');
    if (rec.thread !== undefined && (rec.target === null || rec.task !== undefined || !Number.isInteger(rec.thread)
      || rec.thread < 1 || rec.thread > MAX_PID || rec.thread === rec.target)) bad('has an invalid thread');
    if (!Number.isSafeInteger(rec.flags) || rec.flags < 0 || (rec.flags & ~REOPEN_FLAGS) !== 0) bad('has invalid flags');
    if (typeof rec.pos !== 'string' || !/^\d{1,16}$/.test(rec.pos)) bad('has an invalid position');
  },

  open(rec: ProcfileRecord): never {
    throw new Error(`procfile (file ${rec.id}) is opened after the tree (openAfterTree), not with the other files`);
  },

  namesThread(rec: ProcfileRecord): boolean {
    return rec.thread !== undefined;
  },

  async openAfterThreads(rec: ProcfileRecord, hostTid: (pid: number, tid: number) => number | undefined): Promise<number> {
    const where = `/proc/${String(rec.target)}/task/${String(rec.thread)}${rec.sub}`;
    const pid = rec.target === null ? undefined : hostTid(rec.target, rec.target);
    const tid = rec.target === null || rec.thread === undefined ? undefined : hostTid(rec.target, rec.thread);
    if (pid === undefined || tid === undefined) {
      throw new FerryError('EOPEN', `cannot restore file ${rec.id} (${where}): thread ${String(rec.thread)} of pid ${String(rec.target)} is not a thread restored here (an edited image?)`);
    }
    return openProc(`/proc/${pid}/task/${tid}${rec.sub}`, rec);
  },

  async openAfterTree(rec: ProcfileRecord, hostPid: (pid: number) => number | undefined): Promise<number> {
    if (rec.gone !== undefined) return openGone(rec, rec.gone);
    if (rec.target === null) return openProc(rec.sub, rec);
    const pid = hostPid(rec.target);
    if (pid === undefined) {
      throw new FerryError('EOPEN', `cannot restore file ${rec.id} (/proc/${rec.target}${rec.sub}): pid ${rec.target} is not a process restored here`);
    }
    if (rec.root === 'task') return openInContainer(rootOf(rec), rec.target, pid, `${rec.task === true ? `/task/${rec.target}` : ''}${rec.sub}`, rec);
    return openProc(`/proc/${pid}${rec.task === true ? `/task/${pid}` : ''}${rec.sub}`, rec);
  },
};
