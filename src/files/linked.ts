/**
 * Open files whose name was removed while the file kept another name (a hard link): the link
 * reads `/dir/name (deleted)` but the inode lives on under a name ferry does not know, so
 * neither the path (gone) nor the contents (the file is not ferry's to copy: it is still in
 * use under its other name) can bring it back. Kind 'linked'.
 *
 * Dump: the file system's handle of the inode (name_to_handle_at(2) on a pidfd_getfd copy of
 * the descriptor), its identity (st_dev, st_ino) and the removed name. A file system with no
 * export operations (overlayfs without nfs_export, fuse…) gives no handle (EOPNOTSUPP): such a
 * file is refused in one line naming the file system type (/proc/PID/mountinfo).
 *
 * Restore: the handle is opened (open_by_handle_at(2), O_PATH) relative to the removed name's
 * directory, resolved inside the process's recorded root (confined.ts), and must give a
 * regular file with the recorded inode number on that directory's file system. To come back
 * exactly as it was (`/dir/name (deleted)`), the inode is linked under the removed name again
 * (linkat(2) AT_EMPTY_PATH, never replacing anything), opened through that name with the
 * record's flags and position, checked to be the same inode, and the name removed at once.
 * When the name is taken meanwhile, the file is opened through the handle's descriptor and
 * /proc then shows another of its names.
 *
 * A memory area mapping the file through its removed name maps `/dir/name (deleted)` too
 * (dump/memory.ts names it by `ghost`, st_dev:st_ino, as a deleted file's). Each record opened
 * registers its file by that identity (`restoredLinked`), and restore/address-space.ts maps
 * the area from it, as it maps a ghost's: the same inode, hence the same page cache, at the
 * area's offset. When no descriptor of the tree holds the file, the checkpoint opens it through
 * /proc/PID/map_files and makes it a file of the image nobody holds (collect.ts `adopted`).
 *
 * A handle reaches any inode of its file system, wherever it is, so nothing confines it: only
 * an image this host signed or one the caller trusts may use it (checkLinkedTrust; docs/
 * security.md). A handle names an inode of this host's file system: on another host, or once
 * every name of the file is gone, the restore is refused naming the file.
 */
import { imagePos } from '../proc/fdinfo.js';
import { fstatSync, readFileSync } from 'node:fs';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import {
  O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_DIRECTORY, O_LARGEFILE, O_NOATIME, O_NONBLOCK, O_PATH, O_SYNC,
} from '../proc/fcntl.js';
import { placeOf, statIn, withParent } from './confined.js';
import { dumpLocks, precheckLocks, restoreLocks, validateLocks, type LockRecord } from './locks.js';
import { Registry } from './deleted.js';
import type { DumpContext, FdDesc, FileKind, FileOptions, OpenContext, TaskContext } from './types.js';
import { noteTransient, transientMade } from './transient.js';

const SUFFIX = ' (deleted)';
/** The flags an open file keeps (never what creates or truncates). */
const REOPEN_FLAGS = O_ACCMODE | O_APPEND | O_NONBLOCK | O_SYNC | O_DIRECT | O_LARGEFILE | O_NOATIME | O_PATH;
/** MAX_HANDLE_SZ (<fcntl.h>). */
const MAX_HANDLE = 128;

export interface LinkedRecord extends FileRecord {
  kind: 'linked';
  /** The removed name (without " (deleted)"). */
  path: string;
  /** open(2) access mode and status flags. */
  flags: number;
  pos: string;
  dev: string;
  ino: string;
  /** name_to_handle_at(2): handle_type and f_handle (hex). */
  handleType: number;
  handle: string;
  /** Locks held through this open file (only with --file-locks). */
  locks?: LockRecord[];
}

/** Refuses, for an image not trusted, any file reached by a handle (nothing confines one). */
export function checkLinkedTrust(label: string, files: readonly FileRecord[]): void {
  const f = files.find((x) => x.kind === 'linked');
  if (!f) return;
  throw new FerryError('EPRIVILEGE', `image ${label}: file ${f.id} (${JSON.stringify(String(f.path).slice(0, 256))}, a removed name of a file that has another) is reached by its file system handle, which no path confines: `
    + 'only an image this host signed or one you trust may do that (sign it and restore with --trust if it is genuine)');
}

/** The files restored by the current restore, by their identity at dump (`dev:ino`, a mapping's `ghost`). */
const restored = new Registry();

/** The controller descriptor of the linked file `dev:ino` opened by the current restore, if any. */
export function restoredLinked(identity: string): number | undefined {
  return restored.get(identity);
}

const what = (rec: LinkedRecord): string => `file ${rec.id} (${rec.path}${SUFFIX}) of the image`;

/** Opens the record's inode through its handle (O_PATH) in the directory `dir`, checked. */
function byHandle(rec: LinkedRecord, dir: number): number {
  const n = native();
  let h: number;
  // open_by_handle_at(2) wants a descriptor of the file system that is not O_PATH.
  const mount = n.openRaw(`/proc/self/fd/${dir}`, O_DIRECTORY);
  try {
    h = n.openByHandle(mount, rec.handleType, Buffer.from(rec.handle, 'hex'), O_PATH);
  } catch (err) {
    const code = errnoCode(err);
    throw new FerryError(code === 'ESTALE' ? 'ENOENT' : 'EOPEN', code === 'ESTALE'
      ? `${what(rec)} is gone: its other names were removed too, or this is another host or file system`
      : `cannot open ${what(rec)} by its handle: ${(err as Error).message}`, { cause: err });
  } finally {
    n.closeFd(mount);
  }
  const st = fstatSync(h, { bigint: true });
  if (!st.isFile() || st.ino.toString() !== rec.ino) {
    n.closeFd(h);
    throw new FerryError('ECHANGED', `${what(rec)}: its handle now gives another file (inode ${st.ino}, not ${rec.ino})`);
  }
  return h;
}

/** The file system type of mount `mntId` as process `pid` sees it (/proc/PID/mountinfo), or undefined. */
function fsTypeOf(pid: number, mntId: number | undefined): string | undefined {
  try {
    for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
      const sep = line.indexOf(' - ');
      if (sep > 0 && Number(line.slice(0, line.indexOf(' '))) === mntId) return line.slice(sep + 3).split(' ')[0];
    }
  } catch { /* gone: the message goes without it */ }
  return undefined;
}

export const linked: FileKind<LinkedRecord> = {
  kind: 'linked',

  matches(fd: FdDesc): boolean {
    // An O_PATH descriptor too: opened O_PATH through the name linked back, or the handle.
    return fd.link.startsWith('/') && fd.link.endsWith(SUFFIX) && fd.stat.isFile() && fd.stat.nlink > 0n
      && !(fd.link.startsWith('/memfd:') && fd.fdinfo.mntId === 0);
  },

  precheck(fd: FdDesc, options: FileOptions): void {
    precheckLocks(fd, options);
  },

  key(fd: FdDesc): string {
    return `linked:${fd.stat.dev}:${fd.stat.ino}:${fd.fdinfo.pos}:${fd.fdinfo.flags & ~O_CLOEXEC}`;
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<LinkedRecord, 'id' | 'kind'> {
    let h: { type: number; handle: Buffer };
    try {
      h = native().nameToHandle(ctx.grab(fd));
    } catch (err) {
      // EOPNOTSUPP (or EOVERFLOW, a handle longer than MAX_HANDLE_SZ): the file system has no
      // export operations (overlayfs without nfs_export, fuse, proc…), so nothing finds the
      // inode again once the descriptor is gone.
      const fs = fsTypeOf(fd.pid, fd.fdinfo.mntId);
      throw new FerryError('EUNSUPPORTED', `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link}: its name was removed while it has `
        + `${fd.stat.nlink} other name(s), and its file system${fs ? ` (${fs})` : ''} gives no handle by which a restore could find it again: `
        + 'close it in that process, or link it back under its old name, before checkpointing', { cause: err, pid: fd.pid });
    }
    const rec: Omit<LinkedRecord, 'id' | 'kind'> = {
      path: fd.link.slice(0, -SUFFIX.length),
      flags: fd.fdinfo.flags & REOPEN_FLAGS,
      pos: fd.fdinfo.pos.toString(),
      dev: fd.stat.dev.toString(),
      ino: fd.stat.ino.toString(),
      handleType: h.type,
      handle: h.handle.toString('hex'),
    };
    const locks = dumpLocks(fd, ctx);
    if (locks.length > 0) rec.locks = locks;
    return rec;
  },

  check(rec: LinkedRecord): void {
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: file ${rec.id} (kind linked) ${why}`);
    };
    if (typeof rec.path !== 'string' || !rec.path.startsWith('/') || rec.path.includes('\0') || rec.path.length > 4096) bad('has no valid path');
    if (!Number.isSafeInteger(rec.flags) || rec.flags < 0 || (rec.flags & ~REOPEN_FLAGS) !== 0) bad('has invalid flags');
    if (imagePos(rec.pos) === undefined) bad('has an invalid position');
    if (typeof rec.ino !== 'string' || !/^\d{1,20}$/.test(rec.ino)) bad('has an invalid inode number');
    if (typeof rec.dev !== 'string' || !/^\d{1,20}$/.test(rec.dev)) bad('has an invalid device number');
    if (!Number.isInteger(rec.handleType) || rec.handleType < 0 || rec.handleType > 2 ** 31 - 1) bad('has an invalid handle type');
    if (typeof rec.handle !== 'string' || !/^(?:[0-9a-f]{2})+$/.test(rec.handle) || rec.handle.length > 2 * MAX_HANDLE) bad('has an invalid handle');
    validateLocks(rec.locks, `file ${rec.id} (${rec.path})`);
    const { root, path } = placeOf(rec);
    const dir = path.slice(0, path.lastIndexOf('/')) || '/';
    if (!(statIn(root, dir, what(rec))?.isDirectory() ?? false)) {
      throw new FerryError('ENOENT', `the directory of ${what(rec)} does not exist here: create it first`);
    }
  },

  open(rec: LinkedRecord, ctx: OpenContext): number {
    const n = native();
    const { root, path } = placeOf(rec);
    try {
      return withParent(root, path, what(rec), (dir) => {
        const h = byHandle(rec, dir.dir);
        try {
          let fd: number | undefined;
          let linkedHere = false;
          // Written down first (restore/transient.ts): a killed ferry's extra name goes with the next sweep.
          const forget = noteTransient('link', root.path, path, rec.ino);
          try {
            try {
              n.linkFd(h, dir.dir, dir.name);
              linkedHere = true;
            } catch (err) {
              if (errnoCode(err) !== 'EEXIST') throw err;
            }
            if (linkedHere) {
              transientMade();
              // Ours: opened through the name, so /proc shows "path (deleted)" once it is removed.
              let ours = true;
              try {
                fd = dir.open(rec.flags & REOPEN_FLAGS);
                if (fstatSync(fd, { bigint: true }).ino.toString() !== rec.ino) {
                  ours = false; // another file took the name meanwhile: it stays
                  n.closeFd(fd);
                  throw new FerryError('ECHANGED', `${what(rec)}: its name was replaced while it was being restored`);
                }
              } finally {
                if (ours) dir.unlink();
              }
            }
          } finally {
            forget();
          }
          fd ??= n.openRaw(`/proc/self/fd/${h}`, rec.flags & REOPEN_FLAGS);
          try {
            const pos = BigInt(rec.pos);
            if (pos !== 0n) n.lseek(fd, pos, 0);
            restored.set(`${rec.dev}:${rec.ino}`, rec.id, fd, ctx);
          } catch (err) {
            n.closeFd(fd);
            throw err;
          }
          return fd;
        } finally {
          n.closeFd(h);
        }
      });
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${what(rec)}: ${(err as Error).message}`, { cause: err });
    }
  },

  installed(rec: LinkedRecord, task: TaskContext): void {
    if (!rec.locks || rec.locks.length === 0) return;
    restoreLocks(validateLocks(rec.locks, `file ${rec.id} (${rec.path})`), rec.path, task, BigInt(rec.ino));
  },
};
