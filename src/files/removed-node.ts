/**
 * A node whose name was removed (a FIFO, a character device node, a symlink, a directory) held by
 * more than one open file of the tree: several descriptors that were opened separately (not dup'd, so
 * one open file each, a record each), in one process or several, of records of different
 * kinds too (a FIFO opened for I/O is files/pipe.ts's, an O_PATH descriptor of it
 * files/regular.ts's, a device node files/chrdev.ts's, a directory regular.ts's). They named one inode and must again:
 * the node is made once per restore, by whichever of its records is opened first, and each
 * record opens that node.
 *
 * The records of one node share its identity at dump (`dev`, `ino`: st_dev and st_ino, as
 * each record stores them). The first record opened makes the node (confined.ts
 * openRemovedNode: made, taken O_PATH, its name removed at once, checked to be ferry's with no
 * name left) and takes, while its name exists, one O_PATH descriptor for every O_PATH record of
 * the node, with that record's O_NOFOLLOW: an O_PATH descriptor of a symlink itself (or of a
 * FIFO taken O_NOFOLLOW, whose flags keep it) can only be had by a name. The node then gets its
 * mode and owner. Every other record opens it through /proc/self/fd of the node's O_PATH
 * descriptor, a new open file with its own flags (a FIFO's ends join: one pipe; the FIFO's
 * queued bytes are written once, by pipe.ts, whichever of its I/O records opens first).
 *
 * A removed directory is made the same way (regular.ts openRemovedDir: made for a moment by
 * confined.ts withRemovedDir, taken O_PATH, its name removed), and each of its records, O_PATH
 * ones too, opens it through /proc/self/fd; one that is a removed root, a directory below one
 * or a removed working directory is the directory restore/root-dir.ts RemovedRoots made for the
 * processes (FileOptions.removedDir), opened through ferry's descriptor of it.
 *
 * The records of one identity must say the same node (type, device number, mode, owner,
 * symlink text, a directory's path): an image whose records disagree is refused before anything is made
 * (checkRemovedNodes). A record of an older ferry's image without an identity (a device
 * node's) makes a node of its own, as it did then.
 */
import { chmodSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_PATH } from '../proc/fcntl.js';
import type { RemovedNodeMade } from './confined.js';
import type { OpenContext } from './types.js';

/** fchownat(2) of the file a descriptor refers to (an O_PATH one too). */
const AT_EMPTY_PATH = 0x1000;
const O_NOFOLLOW = 0o400000;

/** The removed node a record holds: its identity at dump, and what it is. */
interface NodeOf {
  /** "dev:ino" at dump: the records of one node share it. */
  identity: string;
  /** What the node is (type, device number, mode, owner, symlink text): the records of one identity must agree. */
  shape: string;
}

const ident = (v: unknown): v is string => typeof v === 'string' && /^\d{1,20}$/.test(v);

/**
 * The removed node `rec` holds (a removed FIFO, device node, directory, or an O_PATH
 * descriptor's removed FIFO or symlink, with its identity), or undefined: any other record, or one whose fields are
 * not of their types (its kind's check refuses it).
 */
function nodeOf(rec: FileRecord): NodeOf | undefined {
  const r = rec.removed as Record<string, unknown> | undefined;
  if (typeof r !== 'object' || r === null || !ident(rec.dev) || !ident(rec.ino)) return undefined;
  const owner = `mode ${typeof r.mode === 'number' ? r.mode.toString(8) : String(r.mode)} owner ${String(r.uid)}:${String(r.gid)}`;
  let shape: string;
  if (rec.kind === 'chr') shape = `character device ${String(rec.major)}:${String(rec.minor)}, ${owner}`;
  else if (rec.kind === 'fifo' || (rec.kind === 'reg' && r.type === 'fifo')) shape = `FIFO, ${owner}`;
  else if (rec.kind === 'reg' && r.type === 'symlink') shape = `symlink to ${JSON.stringify(String(r.target).slice(0, 64))}, ${owner}`;
  // A directory has one name (no hard links), so its records say one path too.
  else if (rec.kind === 'reg' && r.type === undefined && rec.directory === true) shape = `directory ${JSON.stringify(String(rec.path).slice(0, 256))}, ${owner}`;
  else return undefined;
  return { identity: `${rec.dev}:${rec.ino}`, shape };
}

/**
 * Refuses (EIMAGE, one line), before anything is made, records that share a removed node's
 * identity yet say different nodes: the node is made once, as the first of them opened says.
 */
export function checkRemovedNodes(label: string, files: readonly FileRecord[]): void {
  const seen = new Map<string, { id: number; shape: string }>();
  for (const f of files) {
    const node = nodeOf(f);
    if (node === undefined) continue;
    const first = seen.get(node.identity);
    if (first === undefined) seen.set(node.identity, { id: f.id, shape: node.shape });
    else if (first.shape !== node.shape) {
      throw new FerryError('EIMAGE', `image ${label}: files ${first.id} and ${f.id} hold one removed node (${node.identity}) `
        + `but say different ones (${first.shape}; ${node.shape}): refused, nothing was restored`);
    }
  }
}

/** A node made by this restore: its O_PATH descriptor and the O_PATH descriptors taken for its O_PATH records, by record id. */
interface Made {
  held: number;
  opath: Map<number, number>;
}

/** How a kind makes its removed node (confined.ts openRemovedNode, in a directory made for it if need be). */
export type MakeNode = (also: readonly number[]) => RemovedNodeMade;

/**
 * Opens record `rec`'s removed node with `flags`: the node made once for every record of it
 * (the first opened makes it with `make`, then gives it `owner`'s mode, unless a symlink, and
 * owner), an O_PATH record's descriptor the one taken for it by name, any other a new open of
 * the node through /proc/self/fd. Every descriptor of the node the records have not taken yet
 * is held by the engine (closed when the restore ends or fails).
 */
export function openRemovedNodeOf(rec: FileRecord, ctx: OpenContext, flags: number,
  owner: { mode: number; uid: number; gid: number; symlink: boolean }, make: MakeNode): number {
  const n = native();
  const node = nodeOf(rec);
  const made = ctx.scratch<Made>('removed-node');
  let m = node !== undefined ? made.get(node.identity) : undefined;
  if (m === undefined) {
    // The O_PATH records of the node: this one, and those of the image's other records with its identity.
    const oPath = node === undefined ? ((flags & O_PATH) !== 0 ? [rec] : [])
      : ctx.records().filter((r) => (r === rec || nodeOf(r)?.identity === node.identity) && Number.isSafeInteger(r.flags) && ((r.flags as number) & O_PATH) !== 0);
    const got = make(oPath.map((r) => (r === rec ? flags : (r.flags as number)) & (O_PATH | O_NOFOLLOW)));
    m = { held: got.held, opath: new Map(oPath.map((r, i) => [r.id, got.also[i]!])) };
    for (const fd of [got.held, ...got.also]) ctx.hold(fd);
    n.fchownat(m.held, '', owner.uid, owner.gid, AT_EMPTY_PATH);
    // An O_PATH descriptor takes no fchmod(2); chmod(2) follows its /proc/self/fd link to the
    // node itself, opening nothing (after chown, which clears set-id bits). A symlink's mode
    // is always 0777: no call changes it.
    if (!owner.symlink) chmodSync(`/proc/self/fd/${m.held}`, owner.mode);
    if (node !== undefined) made.set(node.identity, m);
  }
  if ((flags & O_PATH) !== 0) {
    const fd = m.opath.get(rec.id);
    if (fd === undefined) throw new FerryError('EOPEN', `file ${rec.id} of the image: its removed node was made without it`);
    m.opath.delete(rec.id);
    return fd;
  }
  return n.openRaw(`/proc/self/fd/${m.held}`, flags);
}

/**
 * The identity ("dev:ino" at dump) of the removed directory record `rec` holds, or undefined
 * (any other record, or one without an identity): a removed working directory with it is that
 * directory (restore/root-dir.ts).
 */
export function removedDirIdentity(rec: FileRecord): string | undefined {
  const node = nodeOf(rec);
  return node !== undefined && rec.kind === 'reg' && rec.directory === true ? node.identity : undefined;
}
