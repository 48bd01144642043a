/**
 * The changes a container made to its writable rootfs, so that a restore on another node
 * with the same bundle gets them back (issue: added, changed and deleted files).
 *
 * The changes are known when the rootfs is an overlay mount (how podman and most setups give a
 * container its rootfs): its upper directory holds exactly them — new and changed files and
 * directories, whiteouts (character devices 0:0) for deleted ones, and opaque directories
 * (xattr trusted.overlay.opaque=y) that replace a lower directory whole. A plain directory
 * rootfs has no record of what changed; it is used as it is on restore (same node, or a
 * copy).
 *
 * Restore applies the changes onto the bundle's rootfs before the runtime creates the
 * container: on the node where the checkpoint was taken they are already there and applying
 * them again changes nothing.
 */
import {
  chownSync, existsSync, lchownSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { FerryError } from '../errors.js';
import { native } from '../native/binding.js';

/** Image entry holding the rootfs changes. */
export const ROOTFS_ENTRY = 'container/rootfs-diff.json';

export interface RootfsChange {
  /** Relative to the rootfs, parents before children. */
  path: string;
  type: 'dir' | 'file' | 'symlink' | 'whiteout';
  mode: number;
  uid: number;
  gid: number;
  /** A directory that hides whatever the lower layers had there. */
  opaque?: boolean;
  /** File contents, base64. */
  data?: string;
  /** Symlink target. */
  target?: string;
}

export interface RootfsRecord {
  /** 'overlay': `changes` lists the upper directory; 'dir': unknown, none carried. */
  kind: 'overlay' | 'dir';
  changes: RootfsChange[];
}

/** The rootfs mount of the container whose init is `pid`: its type and, for overlay, the upper dir. */
function rootMount(pid: number): { fstype: string; upper?: string } {
  for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right || left.split(' ')[4] !== '/') continue;
    const [fstype = '', , opts = ''] = right.split(' ');
    const upper = opts.split(',').find((o) => o.startsWith('upperdir='))?.slice('upperdir='.length);
    return upper ? { fstype, upper } : { fstype };
  }
  return { fstype: '' };
}

/** Whether an upper directory is opaque (xattr trusted.overlay.opaque = "y"). */
function opaque(path: string): boolean {
  return native().getXattr(path, 'trusted.overlay.opaque')?.toString() === 'y';
}

/** Reads the changes of the container whose init is `pid`; refuses more than `limit` bytes of data. */
export function readRootfsChanges(pid: number, id: string, limit: number): RootfsRecord {
  const m = rootMount(pid);
  if (m.fstype !== 'overlay' || !m.upper) return { kind: 'dir', changes: [] };
  if (!existsSync(m.upper)) {
    throw new FerryError('EROOTFS', `container ${id}: the upper directory ${m.upper} of its overlay rootfs is not visible to ferry`);
  }
  const changes: RootfsChange[] = [];
  let total = 0;
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(m.upper!, rel)).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const abs = join(m.upper!, path);
      const st = lstatSync(abs);
      const meta = { path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.isDirectory()) {
        changes.push({ ...meta, type: 'dir', ...(opaque(abs) ? { opaque: true } : {}) });
        walk(path);
      } else if (st.isFile()) {
        total += st.size;
        if (total > limit) {
          throw new FerryError('EROOTFS', `container ${id}: its rootfs changes hold more than files.deleted_max_bytes = ${limit} bytes (at /${path}): raise the limit in the configuration`);
        }
        changes.push({ ...meta, type: 'file', data: readFileSync(abs).toString('base64') });
      } else if (st.isSymbolicLink()) {
        changes.push({ ...meta, type: 'symlink', target: readlinkSync(abs) });
      } else if (st.isCharacterDevice() && st.rdev === 0) {
        changes.push({ ...meta, type: 'whiteout' });
      } else {
        throw new FerryError('EROOTFS', `container ${id}: /${path} in its rootfs changes is a special file: not supported yet`);
      }
    }
  };
  walk('');
  return { kind: 'overlay', changes };
}

/** Applies recorded changes onto `rootfs` (the bundle's, before the runtime mounts it). */
export function applyRootfsChanges(rootfs: string, rec: RootfsRecord): void {
  for (const c of rec.changes) {
    if (c.path.split('/').includes('..') || c.path.startsWith('/')) throw new FerryError('EIMAGE', `image entry ${ROOTFS_ENTRY} names ${c.path}`);
    const abs = join(rootfs, c.path);
    const present = ((): boolean => { try { lstatSync(abs); return true; } catch { return false; } })();
    switch (c.type) {
      case 'whiteout':
        if (present) rmSync(abs, { recursive: true, force: true });
        continue;
      case 'dir':
        if (present && (!lstatSync(abs).isDirectory() || c.opaque)) rmSync(abs, { recursive: true, force: true });
        mkdirSync(abs, { recursive: true, mode: c.mode });
        chownSync(abs, c.uid, c.gid);
        continue;
      case 'file':
        if (present && !lstatSync(abs).isFile()) rmSync(abs, { recursive: true, force: true });
        mkdirSync(dirname(abs), { recursive: true });
        writeFileSync(abs, Buffer.from(c.data ?? '', 'base64'), { mode: c.mode });
        chownSync(abs, c.uid, c.gid);
        continue;
      case 'symlink':
        if (present) rmSync(abs, { recursive: true, force: true });
        symlinkSync(c.target ?? '', abs);
        lchownSync(abs, c.uid, c.gid);
        continue;
    }
  }
}

/** Shape check of the entry (the image is input). */
export function validateRootfs(v: unknown): RootfsRecord {
  const r = v as { kind?: unknown; changes?: unknown };
  const ok = (r?.kind === 'overlay' || r?.kind === 'dir') && Array.isArray(r.changes) && r.changes.every((c) => {
    const x = c as Partial<RootfsChange>;
    return typeof x.path === 'string' && ['dir', 'file', 'symlink', 'whiteout'].includes(x.type as string)
      && Number.isSafeInteger(x.mode) && Number.isSafeInteger(x.uid) && Number.isSafeInteger(x.gid);
  });
  if (!ok) throw new FerryError('EIMAGE', `image entry ${ROOTFS_ENTRY} is invalid`);
  return v as RootfsRecord;
}

