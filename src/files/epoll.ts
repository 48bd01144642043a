/**
 * epoll instances (epoll(7): `anon_inode:[eventpoll]`) with every target: its events, its data
 * and its descriptor number.
 *
 * An epoll item is keyed by (file, descriptor number): the number is the one the process used
 * in EPOLL_CTL_ADD, and the application keeps using it for EPOLL_CTL_MOD/DEL. /proc/PID/fdinfo
 * lists each item as `tfd: N events: HEX data: HEX pos:… ino:… sdev:…` (the kernel ORs
 * EPOLLERR|EPOLLHUP into every item's events on ADD and MOD). Descriptor numbers are not unique
 * over time: an item stays registered as long as its file is open anywhere, even after fd N was
 * closed or now holds another file. So each item is confirmed with kcmp(2) KCMP_EPOLL_TFD
 * (`struct kcmp_epoll_slot {efd, tfd, toff}`, `toff` counting items of the same number in
 * fdinfo order, which is the kernel's tree order) against fd N of a process holding the epoll;
 * the item then names the target by file id. An item whose number no holder still has for its
 * file (fd N was closed, or now holds another file, while the file stays open under another
 * number or in another process) is "detached": its file is found by comparing the tree's
 * other descriptors of the same inode with kcmp(KCMP_EPOLL_TFD), and the item keeps its number.
 * A detached item whose file no process of the tree holds may be in flight, carried by a
 * message queued on a unix socket of the tree (SCM_RIGHTS): it is looked for among the files
 * found in flight once every file is dumped (a queue dumped after the epoll adds more), and
 * marked `inFlight`; one that none of them is either (a process outside the tree holds it, or
 * only a mapping does) is refused.
 *
 * Restore: `open` creates an empty epoll in the controller (epoll_create1), waiting for no
 * target: every file is open before the first task's `installed` hook runs, the kinds opened
 * only once the tree exists (a pidfd, a /proc file of the tree: openAfterTree) too. Items are
 * added by the task itself in `installed`, once all its descriptors are in place, with an injected
 * epoll_ctl(EPOLL_CTL_ADD) per item using the task's own descriptor numbers, so the restored
 * keys are the original ones. An epoll shared by several processes (fork) has each item added
 * once, by the first process restored that holds the target file at that number (checked
 * with kcmp(KCMP_FILE) against the controller's copy). A detached item is added by the first
 * task holding the epoll: the file is put at the item's number for the one epoll_ctl (dup3;
 * whatever that number held is kept aside with F_DUPFD and put back, with its close-on-exec
 * flag), then the number is closed or given back. The file put there is the task's own
 * descriptor of it, or, where the task holds none, a copy of the controller's descriptor pulled
 * into the task: an `inFlight` item's (the unix socket's queue was refilled with that file
 * before any descriptor was installed, afterTree), or one only processes not holding the epoll
 * hold (a child the file was handed to, its parent having closed its own after EPOLL_CTL_ADD).
 * The controller holds every file until the restore ends, so the item stays registered (an
 * item goes only with the last reference to its file) until those processes have theirs.
 * This runs before the other kinds' `installed` hooks (`installFirst`): closing a descriptor
 * would drop the task's POSIX locks on that file. Targets that are epolls themselves are
 * plain files here: the kernel refused cycles when the items were first added.
 *
 * An EPOLLONESHOT item that already fired keeps only its flag bits (EP_PRIVATE_BITS: EPOLLET,
 * EPOLLONESHOT, EPOLLEXCLUSIVE, EPOLLWAKEUP) and reports nothing, not even a hangup, until
 * EPOLL_CTL_MOD arms it again. epoll_ctl cannot make such an item: ADD and MOD always add
 * EPOLLERR|EPOLLHUP, so events EPOLLONESHOT alone (or 0) arm the item for those (fdinfo
 * 40000018, and a hangup is reported) where a fired one shows 40000000 and reports nothing
 * (checked on 6.18). Only its firing clears the poll bits, when epoll_wait reports it, and
 * epoll_wait reports only what a poll of the target finds ready then (a wake-up merely queues
 * the item). So a fired item is added with every poll bit, reported by an injected
 * epoll_wait(timeout 0) while the epoll is ready only for such items and level-triggered ones
 * (their reports are repeated anyway), and fdinfo then shows it as it was. That is before this
 * task adds the epoll's other items, and only if no process restored before added an
 * edge-triggered or an armed one-shot item to it (the wait would use up its event). The
 * target must be ready for something (a connected socket or an eventfd is writable, a pipe
 * with data readable, one without writers hung up), or be made so for the wait with no trace
 * the workload can see (Blips): an empty anonymous pipe with a writer, a timerfd with no
 * expiration counted, a signalfd with none of its signals pending. A FIFO ready for nothing is
 * refused at checkpoint (refuseIdleFifo).
 *
 * Not kept exactly: a fired one-shot item whose target is ready for nothing and of another
 * kind (a listening socket with no connection waiting, an inotify or fanotify instance with no
 * event queued, an epoll ready for nothing, a socket whose peer's queue is full), a pipe Blips
 * may not touch (handed in, or watched) or a signalfd reading only SIGCONT and stop signals,
 * that is detached, or that is added after an edge-triggered or armed one-shot item of a
 * shared epoll, comes back armed for EPOLLERR|EPOLLHUP (set with EPOLL_CTL_MOD): listeners,
 * inotify, fanotify, epolls and signalfds never report either (tcp_poll of a listener,
 * inotify_poll, fanotify_poll, ep_eventpoll_poll, signalfd_poll: EPOLLIN at most; a unix
 * listener reports EPOLLHUP once the process shuts it down both ways), so for them only fdinfo
 * tells the difference. An EPOLLET item whose target is ready is reported once more after
 * restore (epoll_ctl queues a ready target).
 */
import { fstatSync, readFileSync, readlinkSync, readSync, statSync, writeSync } from 'node:fs';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord, Hex } from '../image/records.js';
import { native } from '../native/binding.js';
import { SYS } from '../arch/x86-64.js';
import { O_ACCMODE, O_CLOEXEC, O_NONBLOCK } from '../proc/fcntl.js';
import { type DumpContext, type FdDesc, type FileKind, type OpenContext, type TaskContext } from './types.js';

/** kcmp(2) type comparing two descriptors' open files. */
const KCMP_FILE = 0;
const EPOLL_CTL_ADD = 1, EPOLL_CTL_MOD = 3;
const EPOLLERR = 0x8, EPOLLHUP = 0x10, EPOLLEXCLUSIVE = 1 << 28, EPOLLWAKEUP = 1 << 29, EPOLLONESHOT = 1 << 30, EPOLLET = 2 ** 31;
/** EP_PRIVATE_BITS (fs/eventpoll.c): what a fired one-shot item's events keep. */
const PRIVATE_BITS = EPOLLWAKEUP + EPOLLONESHOT + EPOLLET + EPOLLEXCLUSIVE;
/**
 * Every poll bit an item may ask for besides EPOLLERR|EPOLLHUP: IN, PRI, OUT, RDNORM, RDBAND,
 * WRNORM, WRBAND, MSG, RDHUP.
 */
const ALL_POLL = 0x27c7;
/** sizeof(struct epoll_event) on x86-64: packed { u32 events; u64 data; }. */
const EPOLL_EVENT_SIZE = 12;
/** Items added per batch of injected syscalls (their events fill one scratch allocation). */
const BATCH = 512;
/** Largest number of items accepted from an image (max_user_watches is far lower in practice). */
const MAX_TARGETS = 1 << 22;

/** One epoll item. */
export interface EpollTarget {
  /** Descriptor number the item was added with (and is held at by a process holding the epoll). */
  fd: number;
  /** File id of the target. */
  file: number;
  /** Events as fdinfo shows them (EPOLLIN…, EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE, EPOLLWAKEUP). */
  events: number;
  /** epoll_data (64 bits). */
  data: Hex;
  /** No process holds the file at `fd` any more (see the module comment). */
  detached?: boolean;
  /** Detached, and no process of the tree holds the file: only a queued message carries it. */
  inFlight?: boolean;
}

export interface EventpollRecord extends FileRecord {
  kind: 'eventpoll';
  /** Status flags of the epoll's open file (O_NONBLOCK). */
  flags: number;
  targets: EpollTarget[];
}

const unsupported = (d: FdDesc, why: string): FerryError =>
  new FerryError('EUNSUPPORTED', `unsupported file: pid ${d.pid} fd ${d.fd} -> ${d.link} (${why})`);

/** Parses one fdinfo `tfd:` line (the part after `tfd:`). */
function parseItem(line: string): { tfd: number; events: number; data: bigint; ino: bigint | undefined } | undefined {
  const m = /^\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)/i.exec(line);
  if (!m) return undefined;
  const ino = /\bino:\s*([0-9a-f]+)/i.exec(line)?.[1];
  return { tfd: Number(m[1]), events: parseInt(m[2]!, 16) >>> 0, data: BigInt(`0x${m[3]!}`), ino: ino === undefined ? undefined : BigInt(`0x${ino}`) };
}

/**
 * A detached item's file: a descriptor of a process of the tree, of the item's inode, that
 * kcmp(KCMP_EPOLL_TFD) finds to be the item's file; its file id, or undefined.
 */
function findDetached(d: FdDesc, ctx: DumpContext, tfd: number, toff: number, ino: bigint | undefined): number | undefined {
  for (const { pid, fd, stat } of ctx.descriptors) {
    if (ino !== undefined && stat.ino !== ino) continue;
    let same = false;
    try {
      same = native().kcmpEpollTfd(pid, d.pid, fd, d.fd, tfd, toff) === 0;
    } catch (err) {
      if (errnoCode(err) !== 'EBADF') throw err;
    }
    if (same) return ctx.fileIdOf(pid, fd);
  }
  return undefined;
}

/**
 * A detached item's file that no process of the tree holds: one found in flight in a unix
 * socket's queue (the controller's descriptor of it, from the peek) that
 * kcmp(KCMP_EPOLL_TFD) finds to be the item's file; its file id, or undefined.
 */
function findInFlight(d: FdDesc, ctx: DumpContext, tfd: number, toff: number, ino: bigint | undefined): number | undefined {
  for (const { fd, id } of ctx.inFlight()) {
    if (ino !== undefined && fstatSync(fd, { bigint: true }).ino !== ino) continue;
    if (native().kcmpEpollTfd(process.pid, d.pid, fd, d.fd, tfd, toff) === 0) return id;
  }
  return undefined;
}

/** Whether fd `tfd` of `pid` is the file registered as item (tfd, toff) of epoll `efd` of `owner`. */
function holdsItem(pid: number, owner: number, efd: number, tfd: number, toff: number): boolean {
  try {
    return native().kcmpEpollTfd(pid, owner, tfd, efd, tfd, toff) === 0;
  } catch (err) {
    if (errnoCode(err) === 'EBADF') return false; // fd tfd is not open in pid
    throw err;
  }
}

/** Other processes of the tree holding the same epoll (a shared epoll after fork). */
function otherHolders(d: FdDesc, ctx: DumpContext): number[] {
  return [...new Set(ctx.holders(d.pid, d.fd).map((h) => h.pid))].filter((pid) => pid !== d.pid);
}

/**
 * Refuses fired one-shot item `tfd` (held by `holder` at that number) when its target is a
 * FIFO ready for nothing (poll(2) of the holder's open file, copied with pidfd_getfd, reports
 * nothing): restore could disarm it only by making the FIFO ready for a moment, which takes a
 * write through its node (the node's times change on disk, and watchers of its path outside
 * the tree see it), and an item armed for EPOLLERR|EPOLLHUP instead would report the hangup
 * when the FIFO's last writer goes.
 */
function refuseIdleFifo(d: FdDesc, ctx: DumpContext, holder: number, tfd: number): void {
  const at = `/proc/${holder}/fd/${tfd}`;
  let link: string;
  try {
    link = readlinkSync(at);
    if (!link.startsWith('/') || !statSync(at).isFIFO()) return;
  } catch {
    return; // not a FIFO of a file system (stat of a socket or anonymous file works too)
  }
  if (native().ttyPoll(ctx.grab({ pid: holder, fd: tfd, link }), ALL_POLL) !== 0) return;
  throw unsupported(d, `its EPOLLONESHOT item on fd ${tfd} (FIFO ${link}) fired and the FIFO is ready for nothing: restore could disarm `
    + 'the item again only by writing to the FIFO, which changes its times on disk; checkpoint once the process has re-armed '
    + 'the item (EPOLL_CTL_MOD) or removed it (EPOLL_CTL_DEL), or while the FIFO holds data');
}

function dumpEpoll(d: FdDesc, ctx: DumpContext): Omit<EventpollRecord, 'id' | 'kind'> {
  const lines = d.fdinfo.lines.get('tfd') ?? [];
  const targets: EpollTarget[] = [];
  const seen = new Map<number, number>();
  let others: number[] | undefined;
  for (const line of lines) {
    const item = parseItem(line);
    if (!item) throw new FerryError('EDUMP', `checkpoint: epoll fd ${d.fd} of pid ${d.pid}: cannot parse fdinfo line 'tfd: ${line}'`);
    const toff = seen.get(item.tfd) ?? 0;
    seen.set(item.tfd, toff + 1);
    let holder: number | undefined;
    if (holdsItem(d.pid, d.pid, d.fd, item.tfd, toff)) holder = d.pid;
    else {
      others ??= otherHolders(d, ctx);
      holder = others.find((p) => holdsItem(p, d.pid, d.fd, item.tfd, toff));
    }
    const held = holder === undefined ? undefined : ctx.fileIdOf(holder, item.tfd);
    if (holder !== undefined && isFired(item.events)) refuseIdleFifo(d, ctx, holder, item.tfd);
    const file = held ?? findDetached(d, ctx, item.tfd, toff, item.ino);
    const target: EpollTarget = { fd: item.tfd, file: file ?? 0, events: item.events, data: `0x${item.data.toString(16)}`, ...(held === undefined ? { detached: true } : {}) };
    targets.push(target);
    if (file !== undefined) continue;
    // Perhaps in flight in a unix socket's queue: those files are all known only once every
    // file is dumped (a queue dumped after this epoll finds more).
    const { tfd, events, ino } = item;
    ctx.afterDump(() => {
      let id: number | undefined;
      try {
        id = findInFlight(d, ctx, tfd, toff, ino);
      } catch (err) {
        throw new FerryError('EDUMP', `checkpoint: epoll fd ${d.fd} of pid ${d.pid}: item fd ${tfd}: ${(err as Error).message}`, { cause: err });
      }
      if (id === undefined) {
        throw unsupported(d, `its target fd ${tfd} (events 0x${events.toString(16)}) is still registered, but fd ${tfd} `
          + 'was closed or now holds another file in every process holding this epoll, and neither a process of the tree holds that file '
          + 'under another number nor a message queued on a unix socket of the tree carries it (what keeps it open is outside the tree: '
          + 'a process outside the tree, a mapping of it), so restore could not make the item again: close the item (EPOLL_CTL_DEL) '
          + 'or checkpoint a tree that holds the file');
      }
      target.file = id;
      target.inFlight = true;
    });
  }
  return { flags: d.fdinfo.flags & ~O_CLOEXEC, targets };
}

function checkRecord(rec: EventpollRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: epoll (file ${rec.id}) ${why}`);
  };
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  if (!Array.isArray(rec.targets) || rec.targets.length > MAX_TARGETS) bad('has invalid targets');
  for (const t of rec.targets) {
    if (typeof t !== 'object' || t === null || !Number.isSafeInteger(t.fd) || t.fd < 0 || t.fd > 0x7fffffff
      || !Number.isSafeInteger(t.file) || t.file === rec.id || !Number.isSafeInteger(t.events) || t.events < 0
      || t.events > 0xffffffff || typeof t.data !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(t.data)
      || (t.detached !== undefined && typeof t.detached !== 'boolean')
      || (t.inFlight !== undefined && (t.inFlight !== true || t.detached !== true))) {
      bad(`has an invalid target ${String(JSON.stringify(t)).slice(0, 120)}`);
    }
  }
}

function openEpoll(rec: EventpollRecord, ctx: OpenContext): number {
  // Created empty: targets are added inside each task (installed), after every file is open,
  // those opened once the tree exists too (pidfds, the tree's /proc files: openAfterTree), so
  // the epoll waits for none of them here; waiting would never end for those.
  for (const t of rec.targets) {
    if (!ctx.record(t.file)) throw new FerryError('EIMAGE', `image: epoll (file ${rec.id}) watches file ${t.file}, which the image does not hold`);
  }
  const n = native();
  const fd = n.epollCreate1(0);
  try {
    if ((rec.flags & O_NONBLOCK) !== 0) n.setFl(fd, O_NONBLOCK);
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
  return fd;
}

/** Adds the items this task can add (it holds the target file at the item's number). */
function addItems(rec: EventpollRecord, task: TaskContext): void {
  const n = native();
  const done = task.open.scratch<Set<number>>('eventpoll');
  let added = done.get(String(rec.id));
  if (!added) done.set(String(rec.id), (added = new Set()));
  const todo: number[] = [];
  rec.targets.forEach((t, i) => {
    if (added.has(i)) return;
    const cfd = task.open.opened(t.file);
    if (cfd === undefined) throw new Error(`target file ${t.file} was not opened`);
    let same = false;
    try {
      same = n.kcmp(task.pid, process.pid, KCMP_FILE, t.fd, cfd) === 0;
    } catch (err) {
      if (errnoCode(err) !== 'EBADF') throw err;
    }
    if (same) todo.push(i);
  });
  // Fired one-shot items first, while the epoll is ready for nothing a wait could spoil.
  const fired = todo.filter((i) => isFired(rec.targets[i]!.events));
  if (fired.length > 0 && [...added].every((i) => !spoiledByWait(rec.targets[i]!.events))) {
    addFired(rec, task, fired, added.size);
    for (const i of fired) added.add(i);
  }
  // Detached items, all by the first task holding the epoll: through its own descriptor of
  // the file, put at the item's number; where it holds none (the file is only in flight, or
  // held only by processes not holding the epoll) through a copy of the controller's, pulled
  // for it. The controller holds the file until the restore ends, so the item stays
  // registered until the tasks holding the file have it installed.
  rec.targets.forEach((t, i) => {
    if (added.has(i) || todo.includes(i) || t.detached !== true) return;
    const src = task.fdOf(t.file);
    if (src !== undefined) addDetached(task, t, src);
    else addPulled(task, t);
    added.add(i);
  });
  addBatches(rec, task, todo.filter((i) => !added.has(i)), (t) => t.events);
  for (const i of todo) added.add(i);
}

/**
 * Adds (EPOLL_CTL_ADD) or sets (EPOLL_CTL_MOD) items `which` (indices of `rec.targets`, held
 * by the task at their numbers) with `events`.
 */
function addBatches(rec: EventpollRecord, task: TaskContext, which: readonly number[], events: (t: EpollTarget) => number,
  op = EPOLL_CTL_ADD): void {
  for (let start = 0; start < which.length; start += BATCH) {
    const chunk = which.slice(start, start + BATCH);
    task.scratch.reset();
    const buf = Buffer.alloc(chunk.length * EPOLL_EVENT_SIZE);
    chunk.forEach((i, k) => {
      const t = rec.targets[i]!;
      buf.writeUInt32LE(events(t) >>> 0, k * EPOLL_EVENT_SIZE);
      buf.writeBigUInt64LE(BigInt(t.data), k * EPOLL_EVENT_SIZE + 4);
    });
    const at = task.scratch.put(buf);
    task.tracee.syscalls(chunk.map((i, k) =>
      [SYS.epoll_ctl, task.fd, op, rec.targets[i]!.fd, at + BigInt(k * EPOLL_EVENT_SIZE)] as const));
  }
}

/** A one-shot item that fired: its events hold flag bits only (EPOLLERR|EPOLLHUP are gone too). */
const isFired = (events: number): boolean => (events & EPOLLONESHOT) !== 0 && (events & ~PRIVATE_BITS) === 0;

/**
 * An item whose pending report a stray epoll_wait would use up: an edge-triggered one (its
 * edge), an armed one-shot one (it would be disarmed). A level-triggered item is reported
 * again by the next wait; a fired one-shot item reports nothing.
 */
const spoiledByWait = (events: number): boolean => (events & (EPOLLET | EPOLLONESHOT)) !== 0 && !isFired(events);

/**
 * Adds fired one-shot items `fired` (held by the task at their numbers) and has them fire
 * again, so that they are left as they were: added with every poll bit (their own are not
 * known any more, and a fired item keeps none), they are queued if their target is ready for
 * anything; an injected epoll_wait(timeout 0) reports them, which clears their poll bits. The
 * epoll holds `before` other items, none of which a wait spoils (addItems): the waits go on
 * until one returns fewer events than asked, the ready list then being gone through, or until
 * as many items as the epoll holds were asked for (level-triggered ones go back to the end of
 * the list). A target ready for nothing is made ready for the waits when it is an anonymous
 * pipe's read end, a timerfd or a signalfd (`Blips`). An item still armed after that is set to its flag
 * bits with EPOLL_CTL_MOD, which arms it for EPOLLERR|EPOLLHUP: the closest epoll_ctl allows.
 */
function addFired(rec: EventpollRecord, task: TaskContext, fired: readonly number[], before: number): void {
  const tr = task.tracee;
  addBatches(rec, task, fired, (t) => t.events | ALL_POLL);
  const blips = new Blips(task);
  try {
    for (const i of fired) blips.ready(rec.targets[i]!.file);
    const total = before + fired.length;
    const max = Math.min(total, BATCH);
    for (let asked = 0; asked < total; asked += max) {
      task.scratch.reset();
      const at = task.scratch.alloc(max * EPOLL_EVENT_SIZE);
      if (Number(tr.syscall(SYS.epoll_wait, task.fd, at, max, 0)) < max) break;
    }
  } catch (err) {
    // The restore fails (its tree goes): what the blips left matters no more than the first error.
    try {
      blips.undo();
    } catch { /* the first error is the one reported */ }
    throw err;
  }
  blips.undo();
  // fdinfo tells which ones are still armed: every poll bit asked, EPOLLERR|EPOLLHUP added
  // (an item of another file under the same number with just these events would pass for
  // one: the fired item is then set as below, as it would be without this).
  const armed = new Set<string>();
  const fdinfo = readFileSync(`/proc/${task.pid}/fdinfo/${task.fd}`, 'utf8');
  for (const line of fdinfo.split('\n')) {
    if (!line.startsWith('tfd:')) continue;
    const item = parseItem(line.slice(4));
    if (item) armed.add(`${item.tfd} ${item.events}`);
  }
  const left = fired.filter((i) => {
    const t = rec.targets[i]!;
    return armed.has(`${t.fd} ${(t.events | ALL_POLL | EPOLLERR | EPOLLHUP) >>> 0}`);
  });
  addBatches(rec, task, left, (t) => t.events, EPOLL_CTL_MOD);
}

/** timerfd_settime(2) flag: its timerfd's reads fail with ECANCELED once the clock is set. */
const TFD_TIMER_CANCEL_ON_SET = 2;
/** SIGKILL, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: not queued for a moment (Blips). */
const SIDE_EFFECTS = new Set([9, 18, 19, 20, 21, 22]);

/**
 * Makes the targets of fired one-shot items that are ready for nothing ready for a moment, so
 * that the wait of addFired disarms their items, then as they were, before any process of the
 * tree runs. Three kinds have a means that leaves no trace the workload can see:
 *
 * - an anonymous pipe's read end (a record of kind `pipe` opened O_RDONLY) whose pipe is empty
 *   and has a writer (poll(2) of it reports nothing: no hangup): a byte is written to its pipe
 *   through a new open file of it (`/proc/self/fd/N` opened O_RDWR, as pipe.ts opens a pipe's
 *   other ends) and read back through the same one once the waits are done. The pipe is empty
 *   again, its readers and writers counts are back (both stayed above zero, so opening and
 *   closing the extra file woke nobody), no O_ASYNC owner is set yet (owners come back in
 *   finishTask, after every table is installed) so no SIGIO is sent, and an item of another
 *   epoll the write or the read queued (edge-triggered, or an armed one-shot one) is polled
 *   again by its epoll before anything is reported, and dropped when the pipe is ready for
 *   nothing it asks: the kernel reports and disarms only what a poll finds ready. A writable
 *   file of the pipe (its write end, one opened read-write) is ready for writing throughout,
 *   blip or not: an edge-triggered item asking EPOLLOUT on one is queued by its own ADD at
 *   restore already (the limit in the module comment), and the wake-ups of the write (the
 *   readers' side, where a read-write file waits too) and of the read (the writers' side of a
 *   pipe of one page, which the byte filled) queue it no further. Not a pipe handed in by the
 *   caller, which processes outside the tree share, nor one an inotify watch or fanotify mark
 *   of the image is on (`watched`).
 * - a timerfd with no expiration counted (and not TFD_TIMER_CANCEL_ON_SET, whose reads may
 *   fail with ECANCELED): TFD_IOC_SET_TICKS counts one (waking its waiters with EPOLLIN, like
 *   an expiry), and a read of the controller's descriptor takes it back once the waits are
 *   done, as timerfd.ts does at checkpoint. Should the timer expire in between, the read
 *   counts that expiry too (and, being periodic, the kernel restarts it there, as a read by
 *   the process would): all but the one count are set back.
 * - a signalfd none of whose signals is pending for the task: one of them is queued to the
 *   task for the waits and taken back with rt_sigtimedwait (`signal`).
 *
 * A FIFO would need a write through its node, which changes the node's times on disk and
 * reaches inotify and fanotify watchers of its path outside the tree: checkpoint refuses such
 * an item (dumpEpoll). An eventfd is never ready for nothing (writable below its largest
 * count); a socket would need its peer or a connection made from outside, which another
 * client could race.
 */
class Blips {
  private readonly done = new Set<string>();
  /** The extra open files of pipes, each with whether its byte is in the pipe. */
  private readonly made: Array<{ fd: number; wrote: boolean }> = [];
  /** The controller's descriptors of the timerfds counted an expiration. */
  private readonly timers: number[] = [];

  /** The signals queued to the task for its signalfds. */
  private readonly signals: number[] = [];
  private readonly open: OpenContext;

  constructor(private readonly task: TaskContext) {
    this.open = task.open;
  }

  /** Makes file `id` ready for reading, if it is such a pipe end, timerfd or signalfd ready for nothing. */
  ready(id: number): void {
    const rec = this.open.record(id) as Partial<{ kind: string; flags: number; pipe: string; settime: number }> | undefined;
    const cfd = this.open.opened(id);
    if (cfd === undefined) return;
    const n = native();
    if (rec?.kind === 'signalfd') {
      this.signal(rec as { mask?: unknown });
      return;
    }
    if (rec?.kind === 'timerfd') {
      // Not one handed in: a process outside the tree reading it would take the expiry.
      if (this.done.has(`timerfd ${id}`) || ((rec.settime ?? TFD_TIMER_CANCEL_ON_SET) & TFD_TIMER_CANCEL_ON_SET) !== 0
        || this.open.inherited(id) || n.ttyPoll(cfd, ALL_POLL) !== 0) return;
      this.done.add(`timerfd ${id}`);
      try {
        n.timerfdSetTicks(cfd, 1n);
      } catch {
        return; // no TFD_IOC_SET_TICKS (a kernel without CONFIG_CHECKPOINT_RESTORE): the item is armed as below
      }
      this.timers.push(cfd);
      return;
    }
    if (rec?.kind !== 'pipe' || typeof rec.pipe !== 'string' || ((rec.flags ?? -1) & O_ACCMODE) !== O_RDONLY
      || this.done.has(`pipe ${rec.pipe}`) || this.handedIn(rec.pipe) || this.watched(rec.pipe)) return;
    // poll(2) of the end (the binding is the tty module's, any file will do).
    if (n.ttyPoll(cfd, ALL_POLL) !== 0 || n.pipeUnread(cfd) !== 0) return;
    const m = { fd: n.openRaw(`/proc/self/fd/${cfd}`, O_RDWR | O_NONBLOCK | O_CLOEXEC), wrote: false };
    this.made.push(m);
    this.done.add(`pipe ${rec.pipe}`);
    if (writeSync(m.fd, Buffer.from([0])) !== 1) throw new Error(`cannot write a byte to pipe:[${rec.pipe}] (file ${id})`);
    m.wrote = true;
  }

  /**
   * Whether pipe `pipe` is one the caller handed in (a runtime's stdio pipe, --inherit-fd):
   * a process outside the tree may read the byte, or see the pipe ready.
   */
  private handedIn(pipe: string): boolean {
    return this.open.records().some((r) => r.kind === 'pipe' && r.pipe === pipe && this.open.inherited(r.id));
  }

  /**
   * Whether an inotify watch or fanotify mark of the image is on pipe `pipe` (through one of
   * its files): it would see the extra open, the write, the read and the close (IN_OPEN,
   * IN_MODIFY, IN_ACCESS, IN_CLOSE_WRITE: checked on 6.18).
   */
  private watched(pipe: string): boolean {
    const ids = new Set(this.open.records().filter((r) => r.kind === 'pipe' && r.pipe === pipe).map((r) => r.id));
    return this.open.records().some((r) => {
      const list = r.kind === 'inotify' ? r.watches : r.kind === 'fanotify' ? r.marks : undefined;
      return Array.isArray(list) && list.some((w: unknown) => ids.has((w as { file?: unknown } | null)?.file as number));
    });
  }

  /**
   * Queues to the task (tgkill, injected) a signal of signalfd record `rec`'s mask when none of
   * its signals is pending for the task (its /proc status, SigPnd and ShdPnd): a signalfd
   * polls the pending signals of the task that polls it, here the task's own epoll_wait. Only
   * a signal the task blocks (the restore blocks every one until the very end: it is not
   * delivered), a real-time one first (it queues apart: the wait of `undo` takes the first
   * queued, this one), never SIGCONT nor a stop signal (sending them drops pending ones of the
   * other kind). Process-wide and per-thread pending signals are queued only later, once the
   * threads exist, so the queue holds none the wait could take instead.
   */
  private signal(rec: { mask?: unknown }): void {
    if (typeof rec.mask !== 'string' || !/^0x[0-9a-f]{1,16}$/.test(rec.mask)) return;
    const mask = BigInt(rec.mask);
    const bit = (sig: number): bigint => 1n << BigInt(sig - 1);
    if (this.signals.some((sig) => (mask & bit(sig)) !== 0n)) return;
    const status = readFileSync(`/proc/${this.task.pid}/task/${this.task.pid}/status`, 'utf8');
    const field = (name: string): bigint => BigInt(`0x${new RegExp(`^${name}:\\s*([0-9a-f]+)$`, 'm').exec(status)?.[1] ?? '0'}`);
    if ((mask & (field('SigPnd') | field('ShdPnd'))) !== 0n) return;
    const blocked = field('SigBlk');
    const order = [...Array.from({ length: 33 }, (_, i) => 64 - i), ...Array.from({ length: 31 }, (_, i) => i + 1)]; // 64..32, 1..31
    const sig = order.find((s) => !SIDE_EFFECTS.has(s) && (mask & bit(s)) !== 0n && (blocked & bit(s)) !== 0n);
    if (sig === undefined) return;
    const tr = this.task.tracee;
    const [tgid, tid] = tr.syscalls([[SYS.getpid], [SYS.gettid]]);
    if (tr.trySyscall(SYS.tgkill, tgid!, tid!, sig) < 0n) return; // not queued (EAGAIN: the queue is full): armed as below
    this.signals.push(sig);
  }

  /** Reads every byte written back, takes every expiration counted back, closes the extra files. */
  undo(): void {
    const n = native();
    const buf = Buffer.alloc(2);
    try {
      for (const sig of this.signals.splice(0)) {
        this.task.scratch.reset();
        const set = Buffer.alloc(8);
        set.writeBigUInt64LE(1n << BigInt(sig - 1));
        const at = this.task.scratch.put(Buffer.concat([set, Buffer.alloc(16)]));
        const got = Number(this.task.tracee.syscall(SYS.rt_sigtimedwait, at, 0, at + 8n, 8));
        if (got !== sig) throw new Error(`signal ${sig} queued for a moment is no longer pending`);
      }
      for (const fd of this.timers.splice(0)) {
        const ticks = n.timerfdTakeTicks(fd);
        if (ticks === 0n) throw new Error('a timerfd counted an expiration for a moment no longer counts it');
        if (ticks > 1n) n.timerfdSetTicks(fd, ticks - 1n);
      }
      for (const m of this.made) {
        if (!m.wrote) continue;
        const k = readSync(m.fd, buf, 0, buf.length, null);
        if (k !== 1 || n.pipeUnread(m.fd) !== 0) throw new Error('a pipe made ready for a moment no longer holds just the byte written to it');
      }
    } finally {
      for (const m of this.made.splice(0)) n.closeFd(m.fd);
    }
  }
}

const O_RDONLY = 0, O_RDWR = 2;
const F_DUPFD_CLOEXEC = 1030, F_GETFD = 1, FD_CLOEXEC = 1, O_CLOEXEC_DUP3 = 0o2000000;

/**
 * Adds detached item `t` in the task: its file (the task's descriptor `src`) is put at number
 * `t.fd` for the epoll_ctl; what `t.fd` held (a descriptor of another file, or of the epoll
 * itself) is kept aside and put back, with its close-on-exec flag; else `t.fd` is closed again.
 */
function addDetached(task: TaskContext, t: EpollTarget, src: number): void {
  const tr = task.tracee;
  task.scratch.reset();
  const ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  ev.writeUInt32LE(t.events >>> 0, 0);
  ev.writeBigUInt64LE(BigInt(t.data), 4);
  const at = task.scratch.put(ev);
  const flags = tr.trySyscall(SYS.fcntl, t.fd, F_GETFD); // EBADF: the number is free
  let saved = -1;
  let epfd = task.fd;
  if (flags >= 0n) {
    saved = Number(tr.syscall(SYS.fcntl, t.fd, F_DUPFD_CLOEXEC, 0));
    if (t.fd === task.fd) epfd = saved;
  }
  tr.syscall(SYS.dup3, src, t.fd, O_CLOEXEC_DUP3);
  try {
    tr.syscall(SYS.epoll_ctl, epfd, EPOLL_CTL_ADD, t.fd, at);
  } finally {
    if (saved >= 0) {
      tr.syscalls([[SYS.dup3, saved, t.fd, (Number(flags) & FD_CLOEXEC) !== 0 ? O_CLOEXEC_DUP3 : 0], [SYS.close, saved]]);
    } else {
      tr.syscall(SYS.close, t.fd);
    }
  }
}

/**
 * Adds detached item `t` whose file the task does not hold (no process of the tree holds it:
 * it is in flight, the unix socket's queue was filled with the controller's descriptor of it;
 * or only processes not holding the epoll do): a copy of the controller's descriptor, which
 * the controller keeps until the restore ends, is pulled into the task, above the item's
 * number, for addDetached, then closed.
 */
function addPulled(task: TaskContext, t: EpollTarget): void {
  const tr = task.tracee;
  let src = task.pull(t.file);
  if (src === t.fd) src = Number(tr.syscalls([[SYS.fcntl, src, F_DUPFD_CLOEXEC, t.fd + 1], [SYS.close, src]])[0]);
  try {
    addDetached(task, t, src);
  } finally {
    tr.syscall(SYS.close, src);
  }
}

export const eventpoll: FileKind<EventpollRecord> = {
  kind: 'eventpoll',
  // Its targets are added with epoll_ctl(2) by a task holding it (installed).
  needsHolder: true,

  matches(fd: FdDesc): boolean {
    return fd.link === 'anon_inode:[eventpoll]';
  },

  key(): string {
    // Every epoll is a file of the one anonymous inode: kcmp tells them apart.
    return 'eventpoll';
  },

  dump(fd: FdDesc, ctx: DumpContext): Omit<EventpollRecord, 'id' | 'kind'> {
    try {
      return dumpEpoll(fd, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EDUMP', `checkpoint: epoll fd ${fd.fd} of pid ${fd.pid}: ${(err as Error).message}`, { cause: err });
    }
  },

  check: checkRecord,

  // Its items are added as its holders' descriptors are installed, before the threads exist.
  filesBeforeThreads(rec: EventpollRecord): readonly number[] {
    return Array.isArray(rec.targets) ? rec.targets.flatMap((t: Partial<EpollTarget> | null) => (typeof t?.file === 'number' ? [t.file] : [])) : [];
  },

  open(rec: EventpollRecord, ctx: OpenContext): number {
    try {
      return openEpoll(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore epoll (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },

  // A detached item moves descriptors for a moment: before any lock is taken back.
  installFirst: true,

  installed(rec: EventpollRecord, task: TaskContext): void {
    try {
      addItems(rec, task);
    } catch (err) {
      throw new FerryError('EOPEN', `cannot restore the items of epoll fd ${task.fd} of pid ${task.pid} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
