/**
 * A container's /dev/shm (its own tmpfs): POSIX shared memory and semaphores live there as
 * files, and a process maps them by path, so their contents must come back before the
 * processes do. Checkpoint reads the tree of files through /proc/<init>/root while the
 * container is stopped; restore writes it into the new container's /dev/shm before any
 * process is rebuilt.
 */
import { chownSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError } from '../errors.js';

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

/** Writes the image's /dev/shm into the container whose (new) init is `pid`. */
export function writeDevShm(pid: number, rec: DevShmRecord): void {
  const root = `/proc/${pid}/root/dev/shm`;
  for (const f of rec.files) {
    if (f.path.split('/').includes('..') || f.path.startsWith('/')) throw new FerryError('EIMAGE', `image entry ${DEVSHM_ENTRY} names ${f.path}`);
    const path = join(root, f.path);
    if (f.dir) mkdirSync(path, { mode: f.mode });
    else writeFileSync(path, Buffer.from(f.data ?? '', 'base64'), { mode: f.mode });
    chownSync(path, f.uid, f.gid);
  }
}
