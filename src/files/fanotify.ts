/**
 * fanotify groups (fanotify(7): `anon_inode:[fanotify]`) with their init flags, the flags of
 * the files their events open, and every mark.
 *
 * /proc/PID/fdinfo shows `fanotify flags:HEX event-flags:HEX` (fanotify_init's arguments;
 * FAN_CLOEXEC/FAN_NONBLOCK are per descriptor and per open file, kept by the engine and by
 * `flags`), then one line per mark, all fields hex:
 *   inode mark       `fanotify ino: sdev: mflags: mask: ignored_mask: fhandle-bytes: fhandle-type: f_handle:`
 *   mount mark       `fanotify mnt_id: mflags: mask: ignored_mask:`
 *   filesystem mark  `fanotify sdev: mflags: mask: ignored_mask:`
 * `mflags` holds FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE and FAN_MARK_IGNORE. An inode
 * is found again by its handle (inotify.ts), a mount by its id in the process's mountinfo (its
 * mount point), a file system through any of its mounts. An inode no path leads to (a file
 * removed but held open, a memfd) is found among the tree's descriptors, as an inotify watch's
 * is, and the mark names that file of the image; one the tree does not hold is refused. Mount-namespace and user-namespace
 * marks (Linux 6.14+) are refused, as is a group with events queued (they cannot be read
 * without consuming them, nor queued again) unless --drop-queued-events drops them with a
 * warning; a group of a content class with events queued is refused even then, since some
 * may be permission events whose accessors wait for an answer.
 *
 * Restore: fanotify_init in the controller with the same flags, then each mark is added with
 * fanotify_mark(FAN_MARK_ADD | its type | FAN_MARK_EVICTABLE if it had it): first its mask,
 * then its ignore mask (FAN_MARK_IGNORE when the mark used that interface, else
 * FAN_MARK_IGNORED_MASK, with FAN_MARK_IGNORED_SURV_MODIFY when it had it). A mark on a file of
 * the image is added through /proc/self/fd/N of that restored file, once it is open. Permission events
 * a listener read but has not answered yet are not visible from outside and are not kept.
 */
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import { rootOf, statIn, viaFd } from './confined.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext } from './types.js';
import { readProcText } from '../proc/read.js';
import { closeMounts, dropQueued, fdinfoFields, heldByTree, heldFilesOpen, hexField, kernelDev, locateInode, mountsOf } from './inotify.js';

/** fanotify_init(2) flags kept by the engine elsewhere. */
const FAN_CLOEXEC = 0x1, FAN_NONBLOCK = 0x2;
/** fanotify_init(2) class bits: FAN_CLASS_CONTENT (0x4) and FAN_CLASS_PRE_CONTENT (0x8); 0 is FAN_CLASS_NOTIF. */
const FAN_CLASS_MASK = 0xc;
/** fanotify_mark(2) flags. */
const FAN_MARK_ADD = 0x1, FAN_MARK_MOUNT = 0x10, FAN_MARK_IGNORED_MASK = 0x20,
  FAN_MARK_IGNORED_SURV_MODIFY = 0x40, FAN_MARK_FILESYSTEM = 0x100, FAN_MARK_EVICTABLE = 0x200, FAN_MARK_IGNORE = 0x400;
const AT_FDCWD = -100;
const MFLAGS = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;
const MAX_MARKS = 1 << 22;

/** One mark: what it is on, and its masks. */
export interface FanotifyMark {
  /** inode: one file or directory; mount: a mount (its mount point); filesystem: a whole file system (any of its mounts). */
  type: 'inode' | 'mount' | 'filesystem';
  /** Path naming the object. */
  path: string;
  /** FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE as fdinfo's mflags. */
  mflags: number;
  mask: number;
  ignoredMask: number;
  /**
   * An inode mark's file of the image, when no path leads to the inode (a file removed, or a
   * memfd, that the tree holds open): marked again through that file's restored descriptor;
   * `path` is then only what /proc showed (`/dir/name (deleted)`).
   */
  file?: number;
}

export interface FanotifyRecord extends FileRecord {
  kind: 'fanotify';
  /** Status flags of the open file (O_NONBLOCK is FAN_NONBLOCK). */
  flags: number;
  /** fanotify_init flags without FAN_CLOEXEC/FAN_NONBLOCK (class, FAN_REPORT_*, unlimited queue/marks, audit). */
  initFlags: number;
  /** fanotify_init event_f_flags: open(2) flags of the files events carry. */
  eventFlags: number;
  /** Marks, oldest first. */
  marks: FanotifyMark[];
}

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

function dumpFanotify(d: FdDesc, ctx: DumpContext): Omit<FanotifyRecord, 'id' | 'kind'> {
  // Read again whole (the process is stopped): the engine's parsed fdinfo groups lines by
  // their first field, which loses the order of marks of different types.
  const lines = readProcText(d.pid, `fdinfo/${d.fd}`).split('\n').filter((l) => l.startsWith('fanotify ')).map((l) => l.slice(9));
  const head = lines.map(fdinfoFields).find((f) => f.has('flags') && f.has('event-flags'));
  if (!head) throw new Error(`fdinfo has no 'fanotify flags:' line`);
  const headWhat = "fdinfo line 'fanotify flags:'";
  // Permission events come only to a group of a content class; one queued holds its
  // accessor until it is answered, which a dropped event never would be in the restored tree.
  const contentClass = (Number(hexField(head, 'flags', headWhat)) & FAN_CLASS_MASK) !== 0;
  dropQueued(d, ctx, (why) => unsupported(d, why), contentClass ? 'the group\'s class (content) lets them be permission events awaiting an answer' : undefined);
  const marks: FanotifyMark[] = [];
  const mounts = new Map<string, number>();
  let mountinfo: ReturnType<typeof mountsOf> | undefined;
  try {
    for (const line of lines) {
      const f = fdinfoFields(line);
      if (f.has('event-flags')) continue;
      const what = `fdinfo line 'fanotify ${line}'`;
      const masks = {
        mflags: Number(hexField(f, 'mflags', what)),
        mask: Number(hexField(f, 'mask', what)),
        ignoredMask: Number(hexField(f, 'ignored_mask', what)),
      };
      if ((masks.mflags & ~MFLAGS) !== 0) throw unsupported(d, `a mark has flags 0x${masks.mflags.toString(16)} this ferry does not know`);
      if (f.has('ino')) {
        const where = locateInode(d.pid, f, what, mounts, ctx.mountNsRoot(d.pid));
        if ('why' in where) {
          const held = heldByTree(ctx, kernelDev(hexField(f, 'sdev', what)), hexField(f, 'ino', what));
          if (!held) throw unsupported(d, `inode mark: ${where.why}, and no process of the tree holds it open`);
          if (!held.path.startsWith('/')) throw unsupported(d, `inode mark on ${held.path}, no file of a file system, which cannot be marked again yet; remove the mark or run the process without it`);
          marks.push({ type: 'inode', path: held.path, file: held.file!, ...masks });
          continue;
        }
        marks.push({ type: 'inode', path: where.path, ...masks });
      } else if (f.has('mnt_id')) {
        const id = Number(hexField(f, 'mnt_id', what));
        mountinfo ??= mountsOf(d.pid);
        const m = mountinfo.find((x) => x.id === id);
        if (!m) throw unsupported(d, `mount mark on mount ${id}, which pid ${d.pid} does not see`);
        marks.push({ type: 'mount', path: m.point, ...masks });
      } else if (f.has('sdev')) {
        const dev = kernelDev(hexField(f, 'sdev', what));
        mountinfo ??= mountsOf(d.pid);
        const m = mountinfo.filter((x) => x.dev === dev).sort((a, b) => Number(b.root === '/') - Number(a.root === '/'))[0];
        if (!m) throw unsupported(d, `filesystem mark on device ${dev}, which no mount of pid ${d.pid} shows`);
        marks.push({ type: 'filesystem', path: m.point, ...masks });
      } else {
        throw unsupported(d, `it has a mark of a kind that cannot be restored (fdinfo: 'fanotify ${line.trim()}'; mount-namespace and user-namespace marks are not supported)`);
      }
    }
  } finally {
    closeMounts(mounts);
  }
  // fdinfo lists marks newest first: keep them oldest first, the order they are added again in.
  marks.reverse();
  return {
    flags: d.fdinfo.flags & ~O_CLOEXEC,
    initFlags: Number(hexField(head, 'flags', headWhat)) & ~(FAN_CLOEXEC | FAN_NONBLOCK),
    eventFlags: Number(hexField(head, 'event-flags', headWhat)),
    marks,
  };
}

function checkRecord(rec: FanotifyRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: fanotify (file ${rec.id}) ${why}`);
  };
  const u32 = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
  if (!Number.isSafeInteger(rec.flags) || !u32(rec.initFlags) || !u32(rec.eventFlags)) bad('has invalid flags');
  if (!Array.isArray(rec.marks) || rec.marks.length > MAX_MARKS) bad('has invalid marks');
  for (const m of rec.marks) {
    if (typeof m !== 'object' || m === null || !['inode', 'mount', 'filesystem'].includes(m.type) || typeof m.path !== 'string'
      || !m.path.startsWith('/') || m.path.includes('\0') || !u32(m.mflags) || (m.mflags & ~MFLAGS) !== 0 || !u32(m.mask) || !u32(m.ignoredMask)) {
      // Shown cut short: the item is the image's, of any size.
      bad(`has an invalid mark ${String(JSON.stringify(m)).slice(0, 120)}`);
    }
    if (m.path.length > 4096) bad('has a mark on a path longer than 4096 bytes');
    if (m.file !== undefined) {
      // Marked through another file of the image (its restored descriptor): no path is used.
      if (m.type !== 'inode' || !Number.isSafeInteger(m.file) || m.file < 0 || m.file === rec.id) bad(`has a mark on an invalid file ${String(m.file)}`);
      continue;
    }
    // Resolved inside the record's root (the host's, a container's; confined.ts, no magic link), as open() will.
    if (!statIn(rootOf(rec), m.path, `fanotify ${m.type} mark (file ${rec.id} of the image)`, m.type === 'inode')) {
      throw new FerryError('ENOENT', `fanotify ${m.type} mark (file ${rec.id} of the image) was on ${m.path}, which no longer exists`);
    }
  }
}

function openFanotify(rec: FanotifyRecord, ctx: OpenContext): number | typeof NOT_YET {
  const n = native();
  const root = rootOf(rec);
  if (!heldFilesOpen(ctx, rec.marks.map((m) => ({ file: m.file, what: `fanotify (file ${rec.id}) ${m.type} mark` })))) return NOT_YET;
  const fd = n.fanotifyInit(rec.initFlags | ((rec.flags & O_NONBLOCK) !== 0 ? FAN_NONBLOCK : 0), rec.eventFlags);
  try {
    for (const m of rec.marks) {
      // The path is resolved confined to an O_PATH descriptor (an inode mark's last component
      // not followed, as FAN_MARK_DONT_FOLLOW did) and marked through /proc/self/fd/N, which
      // leads to that object (its inode, its mount) and nowhere else; so without
      // FAN_MARK_DONT_FOLLOW, which would mark the /proc link itself.
      const base = FAN_MARK_ADD | (m.mflags & FAN_MARK_EVICTABLE)
        | (m.type === 'mount' ? FAN_MARK_MOUNT : m.type === 'filesystem' ? FAN_MARK_FILESYSTEM : 0);
      const mark = (at: string): void => {
        if (m.mask !== 0) n.fanotifyMark(fd, base, m.mask, AT_FDCWD, at);
        if (m.ignoredMask !== 0) {
          const ignore = (m.mflags & FAN_MARK_IGNORE) !== 0 ? FAN_MARK_IGNORE : FAN_MARK_IGNORED_MASK;
          n.fanotifyMark(fd, base | ignore | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY), m.ignoredMask, AT_FDCWD, at);
        }
      };
      const held = m.file === undefined ? undefined : ctx.opened(m.file);
      try {
        // /proc/self/fd/N leads to the restored file's inode itself, which has no name.
        if (held !== undefined) mark(`/proc/self/fd/${held}`);
        else viaFd(root, m.path, `fanotify ${m.type} mark (file ${rec.id} of the image)`, m.type === 'inode', mark);
      } catch (err) {
        if (err instanceof FerryError) throw err;
        throw new FerryError('EOPEN', `cannot restore the fanotify ${m.type} mark on ${m.path} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
      }
    }
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
  return fd;
}

export const fanotify: FileKind<FanotifyRecord> = {
  kind: 'fanotify',
  pathsInTask: true,

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[fanotify]';
  },

  key(): string {
    return 'fanotify';
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<FanotifyRecord, 'id' | 'kind'> {
    try {
      return dumpFanotify(fd, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: fanotify fd ${fd.fd} of pid ${fd.pid}: ${(err as Error).message}`, { cause: err });
    }
  },

  check: checkRecord,

  open(rec: FanotifyRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      return openFanotify(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore fanotify (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
