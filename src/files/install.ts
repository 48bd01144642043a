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
import type { Scratch, Tracee } from '../task/tracee.js';
import { ConfinedRoot, placeRecord } from './confined.js';
import { describeOwner, restoreOwner, type OwnerRecord } from './owner.js';
import { kindByName } from './registry.js';
import { DEFAULT_FILE_OPTIONS, NOT_YET, type FileOptions, type OpenContext } from './types.js';

const F_DUPFD_CLOEXEC = 1030, F_SETFD = 2, O_CLOEXEC = 0o2000000;

/**
 * The roots the paths of the records resolve in while the scheduler checks or opens them
 * (confined.ts): the host's '/' (the default), and for a record with `root: 'task'` (a file
 * inside a container) the task's root, `taskRoot` (/proc/<the restored container's init>/root),
 * opened when first needed and closed by `close`.
 */
class Roots {
  private task: ConfinedRoot | undefined;

  constructor(private readonly taskRoot: string | undefined) {}

  /**
   * A record as its module must see it: a path inside a container is made reachable from
   * ferry through `taskRoot` (for the modules that open paths themselves), and its place, the
   * path inside the task's root, is given to the modules that resolve it confined there.
   */
  rebased(r: FileRecord): FileRecord {
    if (r.root !== 'task') return r;
    if (this.taskRoot === undefined) throw new FerryError('EIMAGE', `file ${r.id} (${String(r.path ?? r.kind)}) is inside a container: restore it as a container`);
    this.task ??= new ConfinedRoot(this.taskRoot, 'in-root');
    // A record whose paths are elsewhere (a socket's name) gets its root only (confined.ts rootOf).
    const out = typeof r.path === 'string' ? { ...r, path: `${this.taskRoot}${r.path}` } : { ...r };
    placeRecord(out, { root: this.task, path: typeof r.path === 'string' ? r.path : '' });
    return out;
  }

  close(): void {
    this.task?.close();
  }
}

/** Checks that every file can be opened here, before any process is created. */
export function checkFiles(records: readonly FileRecord[], taskRoot?: string, inherit?: ReadonlyMap<string, number>): void {
  const roots = new Roots(taskRoot);
  try {
    for (const r of records) {
      if (typeof r.link === 'string' && inherit?.has(r.link)) continue;
      kindByName(r.kind).check?.(roots.rebased(r));
    }
  } finally {
    roots.close();
  }
}

/** Everything the scheduler knows during one restore. */
export interface RestoreFiles {
  /** file id -> controller descriptor (negative keys: descriptors the modules hold, OpenContext.hold). */
  opened: Map<number, number>;
  /** The context the modules got (and `installed` hooks get again). */
  ctx: OpenContext;
}

/**
 * Opens every file in the controller. A module may answer NOT_YET; it is retried once others
 * are open, and a round without progress is a dependency cycle.
 */
export function openFiles(records: readonly FileRecord[], options: FileOptions = DEFAULT_FILE_OPTIONS,
  blobs: ReadonlyMap<string, Buffer> = new Map(), taskRoot?: string, inherit?: ReadonlyMap<string, number>): RestoreFiles {
  const opened = new Map<number, number>();
  // Every path is opened by now (modules open in `open`, never later): the roots close at the end.
  const roots = new Roots(taskRoot);
  try {
    records = records.map((r) => roots.rebased(r));
    return openAll(records, opened, options, blobs, inherit);
  } finally {
    roots.close();
  }
}

/** The scheduler itself: `openFiles` with the records rebased. */
function openAll(records: readonly FileRecord[], opened: Map<number, number>, options: FileOptions,
  blobs: ReadonlyMap<string, Buffer>, inherit: ReadonlyMap<string, number> | undefined): RestoreFiles {
  // Files the caller hands in instead (by the link text they had at dump): used as they are.
  const inherited = records.filter((r) => typeof r.link === 'string' && inherit?.has(r.link));
  if (inherited.length > 0) {
    const n = native();
    const self = n.pidfdOpen(process.pid);
    try {
      for (const r of inherited) opened.set(r.id, n.pidfdGetfd(self, inherit!.get(r.link as string)!));
    } finally {
      n.closeFd(self);
    }
  }
  const byId = new Map(records.map((r) => [r.id, r]));
  const scratches = new Map<string, Map<string, unknown>>();
  // Descriptors the modules hold (OpenContext.hold) live in `opened` under negative keys, no
  // file's id: closeFiles closes them with the files, on success and on failure alike.
  const held = new Map<number, number>();
  let nextHeld = 0;
  const release = (fd: number): void => {
    const key = held.get(fd);
    if (key === undefined) return;
    held.delete(fd);
    opened.delete(key);
  };
  const ctx: OpenContext = {
    options,
    opened: (id) => opened.get(id),
    record: (id) => byId.get(id),
    blob: (name) => {
      const b = blobs.get(name);
      if (!b) throw new FerryError('EIMAGE', `image entry ${name} is missing`);
      return b;
    },
    scratch: <T>(key: string): Map<string, T> => {
      let m = scratches.get(key);
      if (!m) scratches.set(key, (m = new Map()));
      return m as Map<string, T>;
    },
    hold: (fd) => {
      if (held.has(fd)) return;
      held.set(fd, --nextHeld);
      opened.set(nextHeld, fd);
    },
    release,
  };
  // A kind that names restored processes is opened once the tree exists (openAfterTree).
  let pending = records.filter((r) => !opened.has(r.id) && !kindByName(r.kind).openAfterTree);
  try {
    while (pending.length > 0) {
      const waiting: FileRecord[] = [];
      for (const r of pending) {
        const fd = kindByName(r.kind).open(r, ctx);
        if (fd === NOT_YET) waiting.push(r);
        else {
          release(fd); // a held descriptor returned becomes that file's
          opened.set(r.id, fd);
        }
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
  return { opened, ctx };
}

/**
 * Opens, once every process of the tree exists, the files of the kinds that name restored
 * processes (FileKind.openAfterTree), into `files`, then runs the kinds' `afterTree`;
 * `hostPid` maps an image pid to ferry's.
 */
export async function openAfterTree(files: RestoreFiles, records: readonly FileRecord[],
  hostPid: (pid: number) => number | undefined): Promise<void> {
  for (const r of records) {
    const late = kindByName(r.kind).openAfterTree;
    if (late) files.opened.set(r.id, await late(r, hostPid));
  }
  // Then each kind's work that needs every file and process (FileKind.afterTree), once.
  for (const kind of new Set(records.map((r) => r.kind))) kindByName(kind).afterTree?.(files.ctx, hostPid);
}

/** Runs the `beforeLetGo` hook of each opened file's kind (FileKind.beforeLetGo). */
export function beforeLetGo(files: RestoreFiles, records: readonly FileRecord[]): void {
  for (const r of records) {
    const hook = kindByName(r.kind).beforeLetGo;
    const fd = files.opened.get(r.id);
    if (hook && fd !== undefined) hook(r, fd);
  }
}

/** Closes the controller's descriptors once every task holds its copies. */
export function closeFiles(opened: Map<number, number>): void {
  for (const fd of opened.values()) native().closeFd(fd);
  opened.clear();
}

/**
 * Installs a task's descriptor table (the task must have no descriptors yet), then runs the
 * `installed` hook of each file kind that has one, once per file, with the task's numbers.
 */
export function installFds(t: Tracee, scratch: Scratch, pid: number, table: readonly FdRecord[], files: RestoreFiles,
  controllerPidfd?: number): void {
  const { opened } = files;
  const sorted = [...table].sort((a, b) => a.fd - b.fd);
  const top = (sorted.at(-1)?.fd ?? -1) + 1;
  // A pidfd of the controller above every descriptor the task will have: opened here, or
  // (inside a container, where ferry's pid is not visible) handed in when the task was made.
  let pidfd = controllerPidfd ?? -1;
  if (pidfd < 0) {
    if (table.length === 0) return;
    const first = Number(t.syscall(SYS.pidfd_open, process.pid, 0));
    pidfd = Number(t.syscall(SYS.fcntl, first, F_DUPFD_CLOEXEC, top));
    t.syscall(SYS.close, first);
  }
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

  const lowest = new Map<number, number>();
  for (const rec of sorted) if (!lowest.has(rec.file)) lowest.set(rec.file, rec.fd);
  for (const first of [true, false]) {
    for (const [fileId, fd] of lowest) {
      const record = files.ctx.record(fileId);
      const kind = record && kindByName(record.kind);
      if (!record || !kind?.installed || (kind.installFirst === true) !== first) continue;
      scratch.reset();
      kind.installed(record, { tracee: t, scratch, pid, fd, fdOf: (id) => lowest.get(id), open: files.ctx });
    }
  }
}

/**
 * Sets again the owner and signal of the task's files (owner.ts), once every process and
 * thread of the tree exists (an owner may be any of them) and after the `installed` hooks (a
 * lease taken back there made the task the owner).
 */
export function restoreOwners(t: Tracee, scratch: Scratch, pid: number, table: readonly FdRecord[], files: RestoreFiles): void {
  const lowest = new Map<number, number>();
  for (const rec of [...table].sort((a, b) => a.fd - b.fd)) if (!lowest.has(rec.file)) lowest.set(rec.file, rec.fd);
  for (const [fileId, fd] of lowest) {
    const record = files.ctx.record(fileId);
    const owner = (record?.async ?? record?.owner) as OwnerRecord | undefined;
    if (!owner) continue;
    try {
      restoreOwner(t, scratch, fd, owner, record?.async !== undefined);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot set the owner of fd ${fd} of pid ${pid} (file ${fileId}, ${String(record!.kind)}) to ${describeOwner(owner)}: ${(err as Error).message}`, { cause: err });
    }
  }
}

