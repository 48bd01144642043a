/**
 * Restore side of the file engine: a scheduler that opens every file in the controller (a
 * module may answer NOT_YET and is retried once others are open; no progress in a full round
 * means a dependency cycle), then installs the open files into each task at their descriptor
 * numbers: the task itself pulls each from the controller with pidfd_getfd(2) (the same open
 * file description, so offsets stay shared between all holders) and moves it with dup3(2).
 */
import { FerryError } from '../errors.js';
import type { FdRecord, FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { SYS } from '../arch/x86-64.js';
import type { Tracee } from '../task/tracee.js';
import { kindByName } from './registry.js';
import { NOT_YET } from './types.js';

const F_DUPFD_CLOEXEC = 1030, F_SETFD = 2, O_CLOEXEC = 0o2000000;

/** Checks that every file can be opened here, before any process is created. */
export function checkFiles(records: readonly FileRecord[]): void {
  for (const r of records) kindByName(r.kind).check?.(r);
}

/** Opens every file in the controller. Returns file id -> controller descriptor. */
export function openFiles(records: readonly FileRecord[]): Map<number, number> {
  const opened = new Map<number, number>();
  let pending = [...records];
  try {
    while (pending.length > 0) {
      const waiting: FileRecord[] = [];
      for (const r of pending) {
        const fd = kindByName(r.kind).open(r, { opened: (id) => opened.get(id) });
        if (fd === NOT_YET) waiting.push(r);
        else opened.set(r.id, fd);
      }
      if (waiting.length === pending.length) {
        throw new FerryError('EDEPEND', `cannot restore files ${waiting.map((r) => `${r.id} (${r.kind})`).join(', ')}: they wait for each other`);
      }
      pending = waiting;
    }
  } catch (err) {
    closeFiles(opened);
    throw err;
  }
  return opened;
}

/** Closes the controller's descriptors once every task holds its copies. */
export function closeFiles(opened: Map<number, number>): void {
  for (const fd of opened.values()) native().closeFd(fd);
  opened.clear();
}

/** Installs a task's descriptor table; the task must have no descriptors yet. */
export function installFds(t: Tracee, table: readonly FdRecord[], opened: ReadonlyMap<number, number>): void {
  if (table.length === 0) return;
  const sorted = [...table].sort((a, b) => a.fd - b.fd);
  const top = sorted[sorted.length - 1]!.fd + 1;
  // A pidfd of the controller, moved above every descriptor the task will have.
  const first = Number(t.syscall(SYS.pidfd_open, process.pid, 0));
  const pidfd = Number(t.syscall(SYS.fcntl, first, F_DUPFD_CLOEXEC, top));
  t.syscall(SYS.close, first);
  for (const rec of sorted) {
    const cfd = opened.get(rec.file);
    if (cfd === undefined) throw new Error(`file ${rec.file} of fd ${rec.fd} was not opened`);
    const got = Number(t.syscall(SYS.pidfd_getfd, pidfd, cfd, 0)); // O_CLOEXEC set
    if (got === rec.fd) {
      if (!rec.cloexec) t.syscall(SYS.fcntl, got, F_SETFD, 0);
    } else {
      t.syscalls([[SYS.dup3, got, rec.fd, rec.cloexec ? O_CLOEXEC : 0], [SYS.close, got]]);
    }
  }
  t.syscall(SYS.close, pidfd);
}
