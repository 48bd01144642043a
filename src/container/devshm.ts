/**
 * A container's /dev/shm (its own tmpfs): POSIX shared memory and semaphores live there as
 * files, and a process maps them by path, so their contents must come back before the
 * processes do. Checkpoint reads the tree of files through /proc/<init>/root while the
 * container is stopped; restore writes it into the new container's /dev/shm before any
 * process is rebuilt. The entry is input (an image can be edited): /dev/shm is found inside
 * the new container's root, and everything is made beneath it (confined.ts), so no path of
 * the entry can reach anything else.
 */
import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../errors.js';
import { ConfinedRoot, withParent } from '../files/confined.js';

/** Image entry holding the container's /dev/shm. */
export const DEVSHM_ENTRY = 'container/devshm.json';

export interface DevShmRecord {
  /** Files and directories under /dev/shm, parents first; `data` is base64. */
  files: Array<{ path: string; dir: boolean; mode: number; uid: number; gid: number; data?: string }>;
}

/** Reads /dev/shm of the container whose init is `pid`; refuses more than `limit` bytes. */
export function readDevShm(pid: number, id: string, limit: number): DevShmRecord {
  const root = `/proc/${pid}/root/dev/shm`;
  const files: DevShmRecord['files'] = [];
  let total = 0;
  const walk = (rel: string): void => {
    let names: string[];
    try {
      names = readdirSync(join(root, rel)).sort();
    } catch {
      return; // no /dev/shm in this container
    }
    for (const name of names) {
      const path = join(rel, name);
      const st = lstatSync(join(root, path));
      const meta = { path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.isDirectory()) {
        files.push({ ...meta, dir: true });
        walk(path);
      } else if (st.isFile()) {
        total += st.size;
        if (total > limit) {
          throw new FerryError('EUNSUPPORTED', `container ${id}: /dev/shm holds more than files.deleted_max_bytes = ${limit} bytes (at ${path}): raise the limit in the configuration`);
        }
        files.push({ ...meta, dir: false, data: readFileSync(join(root, path)).toString('base64') });
      } else {
        throw new FerryError('EUNSUPPORTED', `container ${id}: /dev/shm/${path} is neither a file nor a directory: not supported yet`);
      }
    }
  };
  walk('');
  return { files };
}

/**
 * Writes the image's /dev/shm into the container whose (new) init is `pid`: its /dev/shm is
 * looked up inside the container's root (as the container sees it, no magic link), and every
 * file and directory is made beneath it, with nothing but real directories walked.
 */
export function writeDevShm(pid: number, rec: DevShmRecord): void {
  const root = new ConfinedRoot(`/proc/${pid}/root`, 'in-root');
  let shm: ConfinedRoot;
  try {
    shm = root.within('/dev/shm', 'beneath', `image entry ${DEVSHM_ENTRY}`);
  } finally {
    root.close();
  }
  try {
    for (const f of rec.files) {
      const what = `image entry ${DEVSHM_ENTRY} (/dev/shm/${f.path})`;
      const parts = f.path.split('/');
      if (f.path.startsWith('/') || f.path.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
        throw new FerryError('ECONFINE', `${what}: the path must be relative to /dev/shm, without "." or ".." parts: refused`, { path: f.path });
      }
      if (f.data !== undefined && typeof f.data !== 'string') throw new FerryError('EIMAGE', `${what}: data is not base64 text`);
      withParent(shm, f.path, what, (p) => {
        if (f.dir) p.mkdir(f.mode & 0o7777, true);
        else p.writeFile(Buffer.from(f.data ?? '', 'base64'), f.mode & 0o7777, { uid: f.uid, gid: f.gid });
        p.chown(f.uid, f.gid);
        p.chmod(f.mode & 0o7777);
      });
    }
  } finally {
    shm.close();
  }
}
