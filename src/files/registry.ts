/**
 * Which module handles which descriptor. Add a kind by writing its module and listing it here.
 */
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { chrdev } from './chrdev.js';
import { deleted } from './deleted.js';
import { eventfd } from './eventfd.js';
import { eventpoll } from './epoll.js';
import { fanotify } from './fanotify.js';
import { inotify } from './inotify.js';
import { linked } from './linked.js';
import { memfd } from './memfd.js';
import { netlink } from './netlink.js';
import { packet } from './packet.js';
import { inet } from './inet.js';
import { fifo, pipe } from './pipe.js';
import { pidfd } from './pidfd.js';
import { procfile } from './procfile.js';
import { regular } from './regular.js';
import { unix } from './unix.js';
import { signalfd } from './signalfd.js';
import { timerfd } from './timerfd.js';
import { tty } from './tty.js';
import type { FdDesc, FileKind } from './types.js';

/** Every supported kind, tried in order. */
const KINDS: ReadonlyArray<FileKind<FileRecord>> = [
  memfd as unknown as FileKind<FileRecord>, // before regular: a memfd's link is a path too
  deleted as unknown as FileKind<FileRecord>, // before regular: deleted-but-open files
  linked as unknown as FileKind<FileRecord>, // before regular: a removed name of a file with others
  procfile as unknown as FileKind<FileRecord>, // before regular: /proc/PID/ files name processes
  regular as unknown as FileKind<FileRecord>,
  chrdev as unknown as FileKind<FileRecord>,
  tty as unknown as FileKind<FileRecord>,
  pipe as unknown as FileKind<FileRecord>,
  fifo as unknown as FileKind<FileRecord>,
  unix as unknown as FileKind<FileRecord>,
  inet as unknown as FileKind<FileRecord>,
  netlink as unknown as FileKind<FileRecord>,
  packet as unknown as FileKind<FileRecord>,
  eventfd as unknown as FileKind<FileRecord>,
  signalfd as unknown as FileKind<FileRecord>,
  timerfd as unknown as FileKind<FileRecord>,
  eventpoll as unknown as FileKind<FileRecord>,
  inotify as unknown as FileKind<FileRecord>,
  fanotify as unknown as FileKind<FileRecord>,
  pidfd as unknown as FileKind<FileRecord>,
];

/** The module for a descriptor; throws the 'unsupported file' error naming pid, fd and link. */
export function kindOf(fd: FdDesc): FileKind<FileRecord> {
  const k = KINDS.find((m) => m.matches(fd));
  if (!k) {
    throw new FerryError('EUNSUPPORTED',
      `unsupported file: pid ${fd.pid} fd ${fd.fd} -> ${fd.link} (this kind of descriptor cannot be checkpointed yet; close it or run the process without it)`);
  }
  return k;
}

/** The module that restores records of `kind`. */
export function kindByName(kind: string): FileKind<FileRecord> {
  const k = KINDS.find((m) => m.kind === kind);
  // The kind is the image's: quoted as JSON, so a hostile one stays on one line.
  if (!k) throw new FerryError('EIMAGE', `image holds a file of kind ${JSON.stringify(String(kind).slice(0, 40))}, which this ferry does not know`);
  return k;
}
