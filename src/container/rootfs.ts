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
 * them again changes nothing. The changes are input (an image can be edited): every create,
 * write, link and delete is made relative to a descriptor of the rootfs, with nothing but real
 * directories walked (confined.ts, 'beneath': no "..", absolute path or symlink on the way, a
 * symlink of the image is created as one and never followed), and a change under a symlink or
 * file the image itself makes is refused before anything is applied.
 */
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { FerryError, describeCause } from '../errors.js';
import { ConfinedRoot, mkdirsIn, withParent } from '../files/confined.js';
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

/** How a change names itself in errors. */
const described = (c: RootfsChange): string => `image entry ${ROOTFS_ENTRY} (${c.type} /${c.path})`;

/**
 * Refuses, before anything is applied, changes whose path could lead anywhere but where it
 * says: absolute, "." or ".." components, NUL bytes, or a path under an entry the changes
 * themselves make a symlink, a file or a whiteout (an upper directory never holds one: its
 * parents are directories, listed first).
 */
function checkChangePaths(rec: RootfsRecord): void {
  const made = new Map<string, RootfsChange['type']>();
  for (const c of rec.changes) {
    const parts = c.path.split('/');
    if (c.path === '' || c.path.startsWith('/') || c.path.includes('\0') || parts.some((p) => p === '' || p === '.' || p === '..')) {
      throw new FerryError('ECONFINE', `${described(c)}: the path must be relative to the rootfs, without "." or ".." parts: refused, nothing was applied`,
        { path: c.path });
    }
    for (let i = 1; i < parts.length; i++) {
      const above = parts.slice(0, i).join('/');
      const type = made.get(above);
      if (type !== undefined && type !== 'dir') {
        throw new FerryError('ECONFINE', `${described(c)}: it lies under /${above}, which the same changes make a ${type}: `
          + 'refused, nothing was applied', { path: c.path });
      }
    }
    for (const p of [...made.keys()]) if (p.startsWith(`${c.path}/`)) made.delete(p);
    made.set(c.path, c.type);
  }
}

/**
 * Applies recorded changes onto `rootfs` (the bundle's, before the runtime mounts it), every
 * one confined beneath it (see the module comment). A file is written under a temporary name
 * and renamed over the old one: an existing file, or a hard link to one, is replaced, never
 * written into.
 */
export function applyRootfsChanges(rootfs: string, rec: RootfsRecord): void {
  checkChangePaths(rec);
  if (rec.changes.length === 0) return;
  const root = new ConfinedRoot(rootfs, 'beneath');
  try {
    for (const c of rec.changes) {
      try {
        applyChange(root, c);
      } catch (err) {
        if (err instanceof FerryError) throw err;
        throw new FerryError('EROOTFS', `${described(c)}: cannot apply it onto the rootfs ${rootfs}: ${describeCause(err)}`, { cause: err });
      }
    }
  } finally {
    root.close();
  }
}

function applyChange(root: ConfinedRoot, c: RootfsChange): void {
  const what = described(c);
  const slash = c.path.lastIndexOf('/');
  // An upper directory lists parents first; a parent the bundle lacks is made as a plain directory.
  if (c.type !== 'whiteout' && slash > 0) mkdirsIn(root, c.path.slice(0, slash), 0o755, what);
  withParent(root, c.path, what, (p) => {
    const st = p.lstat();
    switch (c.type) {
      case 'whiteout':
        if (st) p.remove();
        return;
      case 'dir':
        if (st && (!st.isDirectory() || c.opaque)) p.remove();
        p.mkdir(c.mode & 0o7777, true);
        p.chown(c.uid, c.gid);
        p.chmod(c.mode & 0o7777);
        return;
      case 'file':
        if (st && !st.isFile()) p.remove();
        p.writeFile(Buffer.from(c.data ?? '', 'base64'), c.mode & 0o7777, { uid: c.uid, gid: c.gid });
        return;
      case 'symlink':
        if (st) p.remove();
        p.symlink(c.target ?? '');
        p.chown(c.uid, c.gid);
        return;
    }
  });
}

/** Shape check of the entry (the image is input). */
export function validateRootfs(v: unknown): RootfsRecord {
  const r = v as { kind?: unknown; changes?: unknown };
  const ok = (r?.kind === 'overlay' || r?.kind === 'dir') && Array.isArray(r.changes) && r.changes.every((c) => {
    const x = (typeof c === 'object' && c !== null ? c : {}) as Partial<RootfsChange>;
    return typeof x.path === 'string' && ['dir', 'file', 'symlink', 'whiteout'].includes(x.type as string)
      && Number.isSafeInteger(x.mode) && Number.isSafeInteger(x.uid) && Number.isSafeInteger(x.gid)
      && (x.data === undefined || typeof x.data === 'string') && (x.target === undefined || typeof x.target === 'string')
      && (x.opaque === undefined || typeof x.opaque === 'boolean');
  });
  if (!ok) throw new FerryError('EIMAGE', `image entry ${ROOTFS_ENTRY} is invalid`);
  return v as RootfsRecord;
}

