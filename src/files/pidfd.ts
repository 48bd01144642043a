/**
 * pidfds (pidfd_open(2), clone3 CLONE_PIDFD: `anon_inode:[pidfd]`): a descriptor that names a
 * process, for pidfd_send_signal(2), waitid(P_PIDFD) and poll. fdinfo says which process:
 * `Pid:` as ferry sees it (-1 once the process has exited and been reaped) and `NSpid:` down
 * to the innermost pid namespace, which is the pid the image records.
 *
 * What can be restored: a pidfd of a process of the checkpointed tree (itself included,
 * running or a zombie), opened again with pidfd_open(2) once the restored tree exists
 * (`openAfterTree`: every other file is opened before the first process is made), and a pidfd
 * of a process already gone (reaped), made by opening a pidfd of a short-lived child of
 * ferry and reaping it: like the original, it signals nothing (ESRCH) and waits for nothing.
 * A pidfd of a single thread (PIDFD_THREAD, Linux 6.9: signals go to that thread, poll says
 * when it exits) records the thread (`thread`, its tid in the tree's pid namespace): threads
 * are made after the descriptors are installed, so it is opened once every thread exists
 * (`namesThread`, `openAfterThreads`, as a thread's /proc file is), with PIDFD_THREAD again;
 * one of a thread already gone is a reaped process's, PIDFD_THREAD kept.
 * Refused at checkpoint: a pidfd of a process outside the tree (restoring it would name
 * another process, or none), and a thread's in a container (whose threads restore reaches
 * only through its own pid namespace).
 */
import { childProcess } from '../builtins.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import { readProcText } from '../proc/read.js';
import { parseStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';
import type { FdDesc, FileKind } from './types.js';

/** pidfd_open(2) PIDFD_THREAD (= O_EXCL). */
const PIDFD_THREAD = 0o200;
const MAX_PID = 4194304;

export interface PidfdRecord extends FileRecord {
  kind: 'pidfd';
  /** The process, by its pid in the tree's pid namespace (as the image records pids); 0: one already reaped. */
  target: number;
  /** Status flags of the open file (O_NONBLOCK, i.e. PIDFD_NONBLOCK; PIDFD_THREAD); the access mode is O_RDWR. */
  flags: number;
  /** With PIDFD_THREAD, of a thread that runs: its tid in the tree's pid namespace (of process `target`). */
  thread?: number;
}

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

/** The integers of an fdinfo line (`Pid`, `NSpid`). */
function ints(d: FdDesc, key: string): number[] {
  return (d.fdinfo.lines.get(key)?.[0] ?? '').trim().split(/\s+/).filter((x) => x !== '').map(Number);
}

/** Whether `pid` is a zombie whose parent is in `pids` (the tree checkpoints it as a zombie). */
function zombieOfTree(pid: number, pids: ReadonlySet<number>): boolean {
  try {
    const stat = parseStat(readProcText(pid, 'stat'));
    return stat.state === 'Z' && pids.has(stat.ppid);
  } catch {
    return false;
  }
}

export const pidfd: FileKind<PidfdRecord> = {
  kind: 'pidfd',

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[pidfd]';
  },

  key(fd: FdDesc): string {
    // Every pidfd of one process shares its pidfs inode; kcmp tells the open files apart.
    return `pidfd:${fd.fdinfo.ino}`;
  },

  dump(fd: FdDesc, ctx): Omit<PidfdRecord, 'id' | 'kind'> {
    const [pid] = ints(fd, 'Pid');
    const nspid = ints(fd, 'NSpid');
    const flags = fd.fdinfo.flags & ~O_CLOEXEC & ~O_ACCMODE;
    if (pid === undefined || !Number.isSafeInteger(pid)) throw new FerryError('EDUMP', `checkpoint: pidfd fd ${fd.fd} of pid ${fd.pid}: fdinfo has no Pid`);
    if (pid === -1) return { target: 0, flags };
    if ((flags & PIDFD_THREAD) !== 0) return threadPidfd(fd, pid, nspid, flags, ctx.pids);
    if (!ctx.pids.has(pid) && !zombieOfTree(pid, ctx.pids)) {
      throw unsupported(fd, `a pidfd of pid ${pid}, which is outside the checkpointed tree: restored, it would name another process; `
        + 'checkpoint the tree that holds that process, or close the descriptor');
    }
    return { target: nspid.at(-1) ?? pid, flags };
  },

  check(rec: PidfdRecord): void {
    const thread = (rec.flags & PIDFD_THREAD) !== 0;
    const ok = Number.isSafeInteger(rec.target) && rec.target >= 0 && rec.target <= MAX_PID
      && Number.isSafeInteger(rec.flags) && (rec.flags & ~(O_NONBLOCK | PIDFD_THREAD)) === 0
      && (rec.thread === undefined ? !thread || rec.target === 0
        : thread && rec.target !== 0 && Number.isSafeInteger(rec.thread) && rec.thread >= 1 && rec.thread <= MAX_PID);
    if (!ok) throw new FerryError('EIMAGE', `image: pidfd (file ${rec.id}) has an invalid record`);
  },

  open(rec: PidfdRecord): never {
    throw new Error(`pidfd (file ${rec.id}) is opened after the tree (openAfterTree), not with the other files`);
  },

  namesThread(rec: PidfdRecord): boolean {
    return rec.thread !== undefined;
  },

  async openAfterThreads(rec: PidfdRecord, hostTid: (pid: number, tid: number) => number | undefined): Promise<number> {
    const tid = hostTid(rec.target, rec.thread!);
    if (tid === undefined) {
      throw new FerryError('EOPEN', `cannot restore pidfd (file ${rec.id}) of thread ${rec.thread} of pid ${rec.target}: not a thread restored here (an edited image?)`);
    }
    try {
      faultPointSync('threadpidfd'); // tests only: an open failing
      return native().pidfdOpen(tid, rec.flags & (O_NONBLOCK | PIDFD_THREAD));
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore pidfd (file ${rec.id}) of thread ${rec.thread} of pid ${rec.target}: ${describeCause(err)}`, { cause: err });
    }
  },

  async openAfterTree(rec: PidfdRecord, hostPid: (pid: number) => number | undefined): Promise<number> {
    if (rec.target === 0) return goneProcessPidfd(rec.flags);
    const pid = hostPid(rec.target);
    if (pid === undefined) {
      throw new FerryError('EOPEN', `cannot restore pidfd (file ${rec.id}) of pid ${rec.target}: that process is not running in the restored tree `
        + '(a zombie in a container is not supported yet)');
    }
    try {
      return native().pidfdOpen(pid, rec.flags & O_NONBLOCK);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore pidfd (file ${rec.id}) of pid ${rec.target}: ${describeCause(err)}`, { cause: err });
    }
  },
};

/**
 * The record of a PIDFD_THREAD pidfd of the running thread `tid` (as ferry sees it; `nspid`
 * its tids down to the innermost namespace): the thread of a process of the tree, recorded
 * by both ids in the tree's namespace. Refused for a thread outside the tree, and in a pid
 * namespace of its own (a container's: restore reaches threads there only through ferry's).
 */
function threadPidfd(d: FdDesc, tid: number, nspid: readonly number[], flags: number, pids: ReadonlySet<number>): Omit<PidfdRecord, 'id' | 'kind'> {
  let tgid: number | undefined;
  let nsTgid: number[] = [];
  try {
    const status = parseStatus(readProcText(tid, 'status'));
    tgid = status.tgid;
    nsTgid = status.nsTgid;
  } catch { /* gone meanwhile: refused below */ }
  if (tgid === undefined || !pids.has(tgid)) {
    throw unsupported(d, `a pidfd of thread ${tid}${tgid !== undefined ? ` of pid ${tgid}` : ''}, which is outside the checkpointed tree: restored, it would name another thread, or none; `
      + 'checkpoint the tree that holds that process, or close the descriptor');
  }
  if (nspid.length > 1) throw unsupported(d, `a pidfd of thread ${tid} of pid ${tgid} in a pid namespace of its own (a container's) cannot be checkpointed yet`);
  return { target: nsTgid.at(-1) ?? tgid, thread: nspid.at(-1) ?? tid, flags };
}

/**
 * A pidfd of a process that has exited and been reaped: one of a child of ferry, opened
 * before the event loop can reap it (a zombie still has its pid), then reaped.
 */
async function goneProcessPidfd(flags: number): Promise<number> {
  const child = childProcess().spawn('/bin/true', [], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve, reject) => {
    child.once('exit', () => resolve());
    child.once('error', reject);
  });
  if (child.pid === undefined) {
    await exited.catch(() => {});
    throw new FerryError('EOPEN', 'cannot restore a pidfd of a process already gone: /bin/true could not be run to stand for it');
  }
  const fd = native().pidfdOpen(child.pid, flags & (O_NONBLOCK | PIDFD_THREAD));
  await exited;
  return fd;
}
