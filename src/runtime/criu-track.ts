/**
 * Pre-dump through ferry's criu (docs/runtime.md, "Pre-dump"): `runc checkpoint --pre-dump`
 * (PRE_DUMP), then `runc checkpoint --parent-path ../P` (DUMP with parent_img), and podman's
 * `--pre-checkpoint` / `--with-previous` that run them. The final image carries only the pages
 * written since the pre-dump and names the rest in the parent; restore puts the two together.
 *
 * Dirty tracking is pre-copy's (src/dump/dirty.ts: a userfaultfd made in each process,
 * WP_ASYNC, PAGEMAP_SCAN), and it must outlive the pre-dump's criu, which exits when runc has
 * its answer. So the pre-dump hands ferry's userfaultfds to a holder: the watchdog in `hold`
 * mode (native/helpers/watchdog.c), detached, holding nothing but them, which exits when the
 * container's init does or after HOLD_SECONDS. A state file in TRACK_DIR, named by the init's
 * pid and start time, names the holder, the pre-dump the tracking belongs to (its random id)
 * and the descriptor of each process in the holder. The next PRE_DUMP or DUMP takes them back
 * with pidfd_getfd(2) and kills the holder. The holder's death, however it comes, closes them,
 * and the kernel unregisters every area (userfaultfd_release()): the container runs on as if
 * never tracked. When the holder is gone, or its tracking is not of the parent named, the
 * dump copies everything, with a warning.
 *
 * Files in an images dir:
 *   ferry-pages.json  (pre-dump) its id, its parent's id, and the pages held after it: for
 *                     each process (by its pid in the container), the pages whose latest copy
 *                     in the chain is unchanged since; a page written since was not held;
 *   ferry-pages.bin   (pre-dump) the pages it copied: records of PAGES frames (pre-copy's);
 *   ferry-image.delta (dump) the image as RAW and REF frames (pre-copy's, src/migrate/
 *                     precopy.ts): a REF names held pages instead of carrying them;
 *   parent            a symbolic link to the parent's directory, as CRIU makes it.
 * Records are u32 length (big-endian) and the frame. Restore rebuilds the image from the
 * chain into the work dir with pre-copy's receiver (a page store; a REF is filled from it),
 * and restores the result as any image: its manifest's hashes and signature cover every byte,
 * so a stale or forged parent page fails verification and nothing is restored. The parent is
 * untrusted: it must lie in the directory that holds the images dir, the chain is at most
 * MAX_CHAIN long, each record is bounded, and so is the store (pre-copy's bounds).
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import {
  closeSync, constants, existsSync, fstatSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, readlinkSync,
  realpathSync, renameSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync, writeSync,
} from 'node:fs';
import { dirname, isAbsolute, join, relative, sep } from 'node:path';
import type { Logger } from 'pino';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { DirtyTracker, startTime, type ProcessScan } from '../dump/dirty.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPoint } from '../fault.js';
import { MAX_DATA_BYTES } from '../migrate/channel.js';
import { FRAME_PAGES, HEAD, ImageFilter, PreCopyReceiver, TAG_PAGES, forgetScan, treePids, writeHead } from '../migrate/precopy.js';
import { native, watchdogPath } from '../native/binding.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import { Session } from '../session.js';

/** ferry's full image in an images dir: operations.ts's IMAGE_FILE (operations.ts imports this module). */
const IMAGE_FILE = 'ferry-image.tar';

export const INDEX_FILE = 'ferry-pages.json';
export const PAGES_FILE = 'ferry-pages.bin';
export const DELTA_FILE = 'ferry-image.delta';
export const PARENT_LINK = 'parent';
/** Where the holders' state files live (root's, 0700). */
export const TRACK_DIR = '/run/ferry-criu/track';
/** A holder lets go after this long without a dump. */
export const HOLD_SECONDS = 1800;
/** Pre-dumps in a chain, at most. */
const MAX_CHAIN = 16;
/** Bytes of an index read, at most. */
const MAX_INDEX_BYTES = 64 << 20;
/** Bytes of one record (a frame), at most. */
const MAX_RECORD = MAX_DATA_BYTES + HEAD;
/** Processes of an index, at most (pre-copy's receiver bound). */
const MAX_PIDS = 4096;
/** Highest page number of user memory (2^47 / 4096). */
const MAX_PAGE = 2 ** 35;

/** A container's init, named for good: pid and start time. */
export interface Init {
  pid: number;
  start: bigint;
}

/** ferry-pages.json. */
interface PagesIndex {
  format: 1;
  id: string;
  /** The id of the pre-dump this one was taken against (its pages are in the parent). */
  parent?: string;
  /** pid in the container -> runs [first page number, count] held after this pre-dump. */
  held: Array<[pid: number, runs: Array<[page: number, count: number]>]>;
}

/** A parent image: its directory (resolved) and index. */
export interface Parent {
  dir: string;
  index: PagesIndex;
}

type Held = Map<number, Set<number>>;

function imageError(what: string, cause?: unknown): FerryError {
  return new FerryError('EIMAGE', what, cause !== undefined ? { cause } : undefined);
}

/** The init of a container's tree as a named process. */
export function initOf(pid: number): Init {
  const start = startTime(pid);
  if (start === undefined) throw new FerryError('ENOTRUNNING', `the container's init ${pid} is gone`);
  return { pid, start };
}

/**
 * The parent directory `parentImg` names (relative to `images`, as CRIU reads parent_img),
 * resolved; it must be a directory other than `images` in the directory that holds `images`
 * (runc's `--parent-path ../P`, podman's ../pre-checkpoint).
 */
export function parentDir(images: string, parentImg: string): string {
  if (parentImg === '' || parentImg.length > 4096 || parentImg.includes('\0')) throw imageError(`parent path ${JSON.stringify(parentImg.slice(0, 100))} is not a path`);
  const base = dirname(realpathSync(images));
  let dir: string;
  try {
    dir = realpathSync(isAbsolute(parentImg) ? parentImg : join(images, parentImg));
  } catch (err) {
    throw imageError(`the parent image ${parentImg} (of ${images}) cannot be reached: ${describeCause(err)}`, err);
  }
  const rel = relative(base, dir);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel) || dir === realpathSync(images) || !statSync(dir).isDirectory()) {
    throw imageError(`the parent image ${parentImg} resolves to ${dir}, which is not a directory beside ${images} (in ${base}${sep})`);
  }
  return dir;
}

/** A file of an images dir, read whole: regular, not a symbolic link, at most `max` bytes. */
function readBounded(dir: string, name: string, max: number): Buffer {
  let fd: number;
  try {
    fd = openSync(join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw imageError(`${join(dir, name)} cannot be read: ${describeCause(err)}`, err);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.size > max) throw imageError(`${join(dir, name)} is not a regular file of at most ${max} bytes`);
    const buf = Buffer.alloc(st.size);
    let off = 0;
    while (off < buf.length) {
      const n = readSync(fd, buf, off, buf.length - off, off);
      if (n <= 0) break;
      off += n;
    }
    return buf.subarray(0, off);
  } finally {
    closeSync(fd);
  }
}

const ID_RE = /^[0-9a-f-]{36}$/;

/** Reads and checks the index of pre-dump directory `dir`. */
export function readIndex(dir: string): PagesIndex {
  let v: unknown;
  try {
    v = JSON.parse(readBounded(dir, INDEX_FILE, MAX_INDEX_BYTES).toString('utf8'));
  } catch (err) {
    if (err instanceof FerryError) {
      throw imageError(`${dir} is not a pre-dump of ferry's (${INDEX_FILE}: ${err.message})`, err);
    }
    throw imageError(`${join(dir, INDEX_FILE)} is not JSON: ${describeCause(err)}`, err);
  }
  const bad = (why: string): never => { throw imageError(`${join(dir, INDEX_FILE)} ${why}`); };
  const o = v as Partial<PagesIndex>;
  if (typeof o !== 'object' || o === null || o.format !== 1 || typeof o.id !== 'string' || !ID_RE.test(o.id)) return bad('has no format 1 and id');
  if (o.parent !== undefined && (typeof o.parent !== 'string' || !ID_RE.test(o.parent))) return bad('names a parent that is not an id');
  if (!Array.isArray(o.held) || o.held.length > MAX_PIDS) return bad(`holds pages of more than ${MAX_PIDS} processes`);
  let total = 0;
  for (const e of o.held) {
    if (!Array.isArray(e) || !Number.isInteger(e[0]) || e[0] < 1 || e[0] > 1 << 22 || !Array.isArray(e[1])) return bad('has a malformed entry');
    for (const r of e[1] as unknown[]) {
      if (!Array.isArray(r) || !Number.isInteger(r[0]) || !Number.isInteger(r[1]) || r[0] < 0 || r[1] < 1 || r[0] + r[1] > MAX_PAGE) {
        return bad(`has a page run of pid ${e[0]} that is not user memory`);
      }
      // Bounded before a set of them is made (heldOf): one entry per page.
      total += r[1] as number;
      if (total > MAX_HELD_PAGES) return bad(`holds more than ${MAX_HELD_PAGES} pages (${(MAX_HELD_PAGES * 4096) / 2 ** 30} GiB): beyond what a pre-dump of ferry's tracks`);
    }
  }
  return o as PagesIndex;
}

/** The most pages a pre-dump chain holds, all processes together (32 GiB). */
const MAX_HELD_PAGES = 1 << 23;

function heldOf(index: PagesIndex): Held {
  const out: Held = new Map();
  for (const [pid, runs] of index.held) {
    const s = new Set<number>();
    for (const [page, count] of runs) for (let p = 0; p < count; p++) s.add(page + p);
    out.set(pid, s);
  }
  return out;
}

function runsOf(pages: Set<number>): Array<[number, number]> {
  const sorted = [...pages].sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else out.push([p, 1]);
  }
  return out;
}

/** The pid of host process `pid` in its innermost pid namespace (the image's). */
function nsPidOf(pid: number): number {
  try {
    return parseStatus(readProcText(pid, 'status')).nsPid.at(-1) ?? pid;
  } catch {
    return pid;
  }
}

function stateFile(init: Init): string {
  return join(TRACK_DIR, `${init.pid}-${init.start}`);
}

/**
 * Whether TRACK_DIR (and /run/ferry-criu above it) is root's and writable by no one else,
 * made so if missing: a state file names a process whose descriptors ferry takes, so only
 * root may have written it.
 */
function trackDirSafe(create: boolean): boolean {
  if (create) mkdirSync(TRACK_DIR, { recursive: true, mode: 0o700 });
  for (const d of [dirname(TRACK_DIR), TRACK_DIR]) {
    try {
      const st = lstatSync(d);
      if (!st.isDirectory() || st.uid !== 0 || (st.mode & 0o022) !== 0) return false;
    } catch {
      return false;
    }
  }
  return true;
}

/** A holder's state file: "holder PID" and a JSON line. */
interface HolderState {
  holderStart: string;
  /** The pre-dump whose pages the tracking continues from. */
  image: string;
  procs: Array<{ pid: number; start: string; nsPid: number; fd: number }>;
}

/** Tracking taken back from a holder. */
interface Taken {
  tracker?: DirtyTracker;
  /** host pid -> pid in the container. */
  nsOf: Map<number, number>;
  /** Why there is no tracking to continue (a warning's words). */
  why?: string;
}

/**
 * Takes back the tracking a pre-dump left for `init`, if it continues from pre-dump `image`;
 * any holder found is ended (its tracking superseded either way).
 */
export function takeOver(init: Init, image: string | undefined, log: Logger): Taken {
  const path = stateFile(init);
  const n = native();
  let text: string;
  try {
    if (!trackDirSafe(false)) throw new Error('not root\'s');
    text = readBounded(TRACK_DIR, `${init.pid}-${init.start}`, 1 << 20).toString('utf8');
  } catch {
    return { nsOf: new Map(), why: 'the pre-dump\'s memory tracking is gone (its holder exited: timed out, killed, or the container restarted)' };
  }
  rmSync(path, { force: true });
  const m = /^holder (\d+)\n(.*)\n$/s.exec(text);
  let state: HolderState | undefined;
  try {
    state = m ? JSON.parse(m[2]!) as HolderState : undefined;
  } catch { /* malformed: treated as gone */ }
  const holder = Number(m?.[1] ?? 0);
  let pidfd = -1;
  try {
    if (holder > 1 && state !== undefined && startTime(holder)?.toString() === state.holderStart) pidfd = n.pidfdOpen(holder);
    // The pidfd names the process checked, unless it exited and its pid was reused in between.
    if (pidfd >= 0 && startTime(holder)?.toString() !== state!.holderStart) {
      closeSync(pidfd);
      pidfd = -1;
    }
  } catch { pidfd = -1; }
  if (pidfd < 0 || state === undefined) {
    return { nsOf: new Map(), why: 'the pre-dump\'s memory tracking is gone (its holder exited: timed out, killed, or the container restarted)' };
  }
  const taken: Array<{ pid: number; start: bigint; uffd: number }> = [];
  const nsOf = new Map<number, number>();
  try {
    if (state.image === image) {
      for (const p of state.procs) {
        taken.push({ pid: p.pid, start: BigInt(p.start), uffd: n.pidfdGetfd(pidfd, p.fd) });
        nsOf.set(p.pid, p.nsPid);
      }
    }
  } catch (err) {
    for (const t of taken) closeSync(t.uffd);
    log.warn({ err }, 'cannot take the tracking from its holder');
    taken.length = 0;
  } finally {
    // Through its pidfd: no process that took a reused pid can be hit.
    try {
      n.pidfdSendSignal(pidfd, 9);
    } catch { /* exited */ }
    closeSync(pidfd);
  }
  if (state.image !== image) return { nsOf, why: 'the memory tracking left is of another pre-dump than the parent named' };
  if (taken.length === 0) return { nsOf, why: 'the memory tracking could not be taken from its holder' };
  log.info({ holder, processes: taken.length }, 'tracking taken over from the holder');
  return { tracker: DirtyTracker.adopt(taken), nsOf };
}

/**
 * Hands `tracker`'s descriptors to a new holder for the next dump of `init`'s container. The
 * tracker keeps its own copies (the caller closes them).
 */
async function handOver(tracker: DirtyTracker, nsOf: Map<number, number>, init: Init, image: string): Promise<void> {
  if (!trackDirSafe(true)) {
    throw new FerryError('EPERM', `${TRACK_DIR} or the directory above it is not root's alone: no tracking is left for the next dump (remove it)`);
  }
  const ds = tracker.descriptors;
  const path = stateFile(init);
  const child = spawn(watchdogPath(), ['hold', String(init.pid), String(init.start), String(HOLD_SECONDS), path, String(ds.length)], {
    stdio: ['ignore', 'pipe', 'ignore', ...ds.map((d) => d.uffd)], detached: true, cwd: '/',
  });
  child.unref();
  const fail = (why: string): never => {
    if (child.exitCode === null) child.kill('SIGKILL');
    rmSync(path, { force: true });
    throw new FerryError('EWATCHDOG', `cannot start the holder of the memory tracking of pid ${init.pid} (${why}): nothing is left tracked; `
      + 'checkpoint without --pre-dump');
  };
  // The state file first: the holder reads it only as it exits (to remove it), which it may do
  // as soon as it is armed if the init exits meanwhile.
  const holderStart = child.pid !== undefined ? startTime(child.pid) : undefined;
  if (holderStart === undefined) return fail('it did not start');
  const state: HolderState = {
    holderStart: String(holderStart), image,
    procs: ds.map((d, i) => ({ pid: d.pid, start: String(d.start), nsPid: nsOf.get(d.pid) ?? d.pid, fd: 3 + i })),
  };
  const tmp = `${path}.${process.pid}`;
  try {
    writeFileSync(tmp, `holder ${child.pid}\n${JSON.stringify(state)}\n`, { mode: 0o600 });
    renameSync(tmp, path);
  } catch (err) {
    rmSync(tmp, { force: true });
    return fail(describeCause(err));
  }
  const armed = await new Promise<boolean>((resolve) => {
    let out = '';
    const timer = setTimeout(() => resolve(false), 5000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('armed')) { clearTimeout(timer); resolve(true); }
    });
    child.on('error', () => { clearTimeout(timer); resolve(false); });
    child.on('exit', () => { clearTimeout(timer); resolve(false); });
  });
  child.stdout!.destroy();
  if (!armed) fail('it did not arm within 5 s');
}

/** Writes one record (u32 length, frame). */
function writeRecord(fd: number, frame: Buffer): void {
  const len = Buffer.allocUnsafe(4);
  len.writeUInt32BE(frame.length, 0);
  for (const b of [len, frame]) {
    for (let off = 0; off < b.length;) off += writeSync(fd, b, off, b.length - off);
  }
}

/**
 * Copies the pages a scan reports written (read now, through /proc/PID/mem: a reference, not a
 * pin) into the pages file as PAGES frames, and holds them. Returns the pages copied.
 */
function copyPages(s: ProcessScan, ns: number, held: Set<number>, out: number): number {
  let mem: number;
  try {
    mem = openSync(`/proc/${s.pid}/mem`, 'r');
  } catch {
    return 0;
  }
  let pages = 0;
  try {
    for (const [addr, count] of s.dirty) {
      for (let off = 0; off < count; off += FRAME_PAGES) {
        const k = Math.min(FRAME_PAGES, count - off);
        const at = addr + BigInt(off * PAGE_SIZE);
        const frame = Buffer.allocUnsafe(HEAD + k * PAGE_SIZE);
        writeHead(frame, TAG_PAGES, ns, at, k);
        try {
          if (readSync(mem, frame, HEAD, k * PAGE_SIZE, at) !== k * PAGE_SIZE) continue;
        } catch {
          continue; // unmapped since the scan: not held
        }
        writeRecord(out, frame);
        const first = Number(at / BigInt(PAGE_SIZE));
        for (let p = 0; p < k; p++) held.add(first + p);
        pages += k;
      }
    }
  } finally {
    closeSync(mem);
  }
  return pages;
}

/** Applies scans to a held set kept by pids in the container; processes not scanned are forgotten. */
function applyScans(held: Held, scans: readonly ProcessScan[], nsOf: Map<number, number>): void {
  const seen = new Set<number>();
  for (const s of scans) {
    const ns = nsOf.get(s.pid) ?? s.pid;
    seen.add(ns);
    forgetScan(held, s, ns);
  }
  for (const pid of [...held.keys()]) if (!seen.has(pid)) held.delete(pid);
}

/** What a pre-dump did. */
export interface PreDumpResult {
  pages: number;
  /** False when it copied everything (no parent, or its tracking was gone). */
  incremental: boolean;
}

/**
 * PRE_DUMP of the container whose init is `init`, into `images`: starts tracking (or takes
 * over the parent's), copies the pages written since (all of them the first time) while the
 * container runs, and hands the tracking to a holder. `warn` gets a warning's line.
 */
export async function preDump(init: Init, images: string, parentImg: string | undefined, log: Logger, warn: (line: string) => void,
  signal?: AbortSignal): Promise<PreDumpResult> {
  const parent = parentImg !== undefined ? { dir: parentDir(images, parentImg), index: undefined as PagesIndex | undefined } : undefined;
  if (parent) parent.index = readIndex(parent.dir);
  const session = new Session('pre-dump', log);
  try {
    const taken = takeOver(init, parent?.index?.id, log);
    let tracker = taken.tracker;
    const end = (t: DirtyTracker): void => { session.onUndo('end the tracking', () => t.close()); };
    if (tracker !== undefined) end(tracker);
    let held: Held = new Map();
    const nsOf = taken.nsOf;
    if (tracker !== undefined && parent?.index) {
      held = heldOf(parent.index);
      // Processes forked since the pre-dump before: tracked from now on (all their pages copied now).
      tracker.add(treePids(init.pid), log);
      for (const pid of tracker.pids) if (!nsOf.has(pid)) nsOf.set(pid, nsPidOf(pid));
    } else {
      if (parent) warn(`${taken.why ?? 'no tracking'}: this pre-dump copies all memory of container init ${init.pid} (not only what changed since ${parentImg})`);
      tracker = DirtyTracker.start(treePids(init.pid), log);
      if (tracker === undefined) {
        throw new FerryError('EUNSUPPORTED', 'this kernel cannot track writes to memory (userfaultfd with WP_ASYNC and PAGEMAP_SCAN): '
          + 'no pre-dump; checkpoint without --pre-dump');
      }
      end(tracker);
      for (const pid of tracker.pids) nsOf.set(pid, nsPidOf(pid));
    }
    const t = tracker;
    const scans = t.scan();
    await faultPoint('precopy', signal);
    applyScans(held, scans, nsOf);
    const out = openSync(join(images, PAGES_FILE), 'w', 0o600);
    let pages = 0;
    try {
      for (const s of scans) {
        const set = held.get(nsOf.get(s.pid) ?? s.pid);
        if (set !== undefined) pages += copyPages(s, nsOf.get(s.pid) ?? s.pid, set, out);
      }
    } finally {
      closeSync(out);
    }
    const incremental = tracker === taken.tracker && parent?.index !== undefined;
    const index: PagesIndex = {
      format: 1, id: randomUUID(), ...(incremental ? { parent: parent!.index!.id } : {}),
      held: [...held].map(([pid, set]) => [pid, runsOf(set)]),
    };
    writeFileSync(join(images, INDEX_FILE), JSON.stringify(index), { mode: 0o600 });
    if (incremental) linkParent(images, parentImg!);
    await handOver(t, nsOf, init, index.id);
    return { pages, incremental };
  } finally {
    session.unwind(); // ferry's copies of the descriptors: the holder has its own
  }
}

/** The `parent` link CRIU makes (replaced if there is one). */
function linkParent(images: string, parentImg: string): void {
  rmSync(join(images, PARENT_LINK), { force: true });
  symlinkSync(parentImg, join(images, PARENT_LINK));
}

/**
 * The final DUMP against a pre-dump: the tracking taken over, the last scan once the container
 * is stopped, and the image written as a delta. Undefined (with a warning) when there is no
 * tracking to continue: the dump is a full one.
 */
export class IncrementalDump {
  private held: Held = new Map();
  refBytes = 0;

  private constructor(private readonly tracker: DirtyTracker, private readonly nsOf: Map<number, number>, private readonly parent: Parent,
    private readonly parentImg: string, private readonly log: Logger) {}

  static begin(init: Init, images: string, parentImg: string, log: Logger, warn: (line: string) => void): IncrementalDump | undefined {
    const dir = parentDir(images, parentImg);
    const index = readIndex(dir);
    const taken = takeOver(init, index.id, log);
    if (taken.tracker === undefined) {
      warn(`${taken.why ?? 'no tracking'}: this checkpoint of container init ${init.pid} is a full one (${parentImg} is not used)`);
      return undefined;
    }
    const d = new IncrementalDump(taken.tracker, taken.nsOf, { dir, index }, parentImg, log);
    d.held = heldOf(index);
    return d;
  }

  /**
   * The last scan, once the checkpoint has read every page (the container still stopped, or
   * let go): what it reports written since the pre-dump goes in the image.
   */
  lastScan(): void {
    try {
      applyScans(this.held, this.tracker.scan(), this.nsOf);
    } catch (err) {
      this.log.warn({ err }, 'the final dirty scan failed: every page goes with the image');
      this.held.clear();
    }
  }

  /**
   * Turns the full image `full` (as the checkpoint wrote it) into DELTA_FILE in `images`, and
   * links the parent; `full` is removed. On failure the full image is kept as `fallback`.
   */
  finish(full: string, images: string, fallback: string): void {
    const delta = join(images, DELTA_FILE);
    try {
      const out = openSync(delta, 'w', 0o600);
      try {
        writeRecord(out, Buffer.from(JSON.stringify({ format: 1, parent: this.parent.index.id })));
        const filter = new ImageFilter((frame) => { writeRecord(out, frame); return true; }, (pid, page) => this.held.get(pid)?.has(page) ?? false);
        const inp = openSync(full, 'r');
        try {
          const buf = Buffer.allocUnsafe(1 << 20);
          for (;;) {
            const n = readSync(inp, buf, 0, buf.length, null);
            if (n <= 0) break;
            filter.push(buf.subarray(0, n));
          }
        } finally {
          closeSync(inp);
        }
        this.refBytes = filter.refPages * PAGE_SIZE;
      } finally {
        closeSync(out);
      }
      linkParent(images, this.parentImg);
      rmSync(full);
    } catch (err) {
      this.log.warn({ err }, 'the delta image could not be written: the full image is kept');
      rmSync(delta, { force: true });
      renameSync(full, fallback);
      this.refBytes = 0;
    }
  }

  /** Ends the tracking. */
  close(): void {
    this.tracker.close();
  }
}

/** Reads the records of `path`, each handed to `fn`. */
function readRecords(path: string, fn: (frame: Buffer) => void): void {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (err) {
    throw imageError(`${path} cannot be read: ${describeCause(err)}`, err);
  }
  try {
    if (!fstatSync(fd).isFile()) throw imageError(`${path} is not a regular file`);
    const len = Buffer.alloc(4);
    let pos = 0;
    for (;;) {
      const n = readSync(fd, len, 0, 4, pos);
      if (n === 0) break;
      const size = n === 4 ? len.readUInt32BE(0) : -1;
      if (size < 1 || size > MAX_RECORD) throw imageError(`${path} has a record of ${size} bytes at offset ${pos} (at most ${MAX_RECORD})`);
      const frame = Buffer.allocUnsafe(size);
      if (readSync(fd, frame, 0, size, pos + 4) !== size) throw imageError(`${path} ends inside a record at offset ${pos}`);
      pos += 4 + size;
      fn(frame);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * Rebuilds the image of a dump taken against pre-dumps (DELTA_FILE in `images`) into a fresh
 * directory in `work`; returns the image's path and the directory (the caller removes it).
 */
export function assemble(imagesDir: string, work: string, log: Logger): { image: string; dir: string } {
  const images = realpathSync(imagesDir);
  const deltaPath = join(images, DELTA_FILE);
  let header: { format?: unknown; parent?: unknown } | undefined;
  let first = true;
  // The chain: the parent link of each directory, checked against the ids.
  const chain: string[] = [];
  sweepAssembled(work, log);
  const dir = mkdtempSync(join(work, `.ferry-assemble-${process.pid}-`));
  try {
    readRecords(deltaPath, (frame) => {
      if (!first) return;
      first = false;
      try { header = JSON.parse(frame.toString('utf8')) as typeof header; } catch { /* checked below */ }
    });
    if (header?.format !== 1 || typeof header.parent !== 'string') throw imageError(`${deltaPath} has no header of format 1`);
    let want: string | undefined = header.parent;
    let at = images;
    while (want !== undefined) {
      if (chain.length >= MAX_CHAIN) throw imageError(`the chain of parent images of ${images} is longer than ${MAX_CHAIN}`);
      let link: string;
      try {
        link = readlinkSync(join(at, PARENT_LINK));
      } catch (err) {
        throw imageError(`${at} has no link to its parent image (${PARENT_LINK}): restore needs the pre-dump it was taken against`, err);
      }
      const p = parentDir(images, isAbsolute(link) ? link : join(relative(images, at) || '.', link));
      const index = readIndex(p);
      if (index.id !== want) throw imageError(`the parent image ${p} is not the pre-dump ${relative(images, at) || images} was taken against (another id)`);
      chain.push(p);
      want = index.parent;
      at = p;
    }
    const store = new PreCopyReceiver(dir, 'the parent image');
    try {
      for (const p of chain.slice().reverse()) {
        readRecords(join(p, PAGES_FILE), (frame) => {
          if (frame[0] !== TAG_PAGES) throw imageError(`${join(p, PAGES_FILE)} holds a record that is not pages`);
          store.handle(frame, () => {});
        });
      }
      const image = join(dir, 'image.tar');
      const out = openSync(image, 'wx', 0o600);
      try {
        first = true;
        readRecords(deltaPath, (frame) => {
          if (first) { first = false; return; }
          store.handle(frame, (b) => { for (let off = 0; off < b.length;) off += writeSync(out, b, off, b.length - off); });
          if (store.refBytes > store.pages * PAGE_SIZE) throw imageError(`${deltaPath} refers to more pages than its parents hold`);
        });
      } finally {
        closeSync(out);
      }
      log.info({ chain, parentPages: store.pages, refBytes: store.refBytes }, 'image assembled from its parents');
      return { image, dir };
    } finally {
      store.close();
    }
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    if (err instanceof FerryError && err.code === 'EPROTO') throw imageError(`${images}: ${err.message.replace(/: a protocol error$/, '')}`, err);
    throw err;
  }
}

/** The checkpoint a caller runs: into `image`, calling `beforeKill` once every page is read. */
export type RunCheckpoint<T> = (o: { image: string; beforeKill?: () => Promise<void> }) => Promise<T>;

/**
 * A container checkpoint into `images` (IMAGE_FILE, or DELTA_FILE against pre-dump
 * `parentImg` when its tracking can be continued; a full image with a warning when not), with
 * the pages it names in the parent instead of storing them (CRIU's pages_skipped_parent).
 * Without a parent, a tracking left by an earlier pre-dump is ended. The last scan comes
 * after the checkpoint has read every page: a scan reports every write since the one before,
 * so later is never wrong, and earlier would miss the checkpoint's own effects (the kernel's
 * rseq updates as injected syscalls return): before the kill, or once a container left
 * running is let go.
 */
export async function checkpointAgainst<T>(pid: number, images: string, parentImg: string | undefined, leaveRunning: boolean, log: Logger,
  warn: (line: string) => void, run: RunCheckpoint<T>): Promise<{ result: T; skippedPages: number }> {
  const full = async (): Promise<{ result: T; skippedPages: number }> => ({ result: await run({ image: join(images, IMAGE_FILE) }), skippedPages: 0 });
  const start = startTime(pid);
  // No init (a stopped container): the checkpoint says what is wrong.
  if (start === undefined) return full();
  const init = { pid, start };
  if (parentImg === undefined) {
    endHolder(init, log);
    return full();
  }
  const inc = IncrementalDump.begin(init, images, parentImg, log, warn);
  if (inc === undefined) return full();
  try {
    const whole = join(images, `.${IMAGE_FILE}.full`);
    const result = await run({ image: whole, ...(!leaveRunning ? { beforeKill: async () => inc.lastScan() } : {}) });
    if (leaveRunning) inc.lastScan();
    inc.finish(whole, images, join(images, IMAGE_FILE));
    log.info({ refBytes: inc.refBytes }, 'written as a delta of the parent');
    return { result, skippedPages: inc.refBytes / PAGE_SIZE };
  } finally {
    inc.close();
  }
}

/**
 * The image in `images` to restore: IMAGE_FILE, or one rebuilt from DELTA_FILE and its
 * parents in `work` (assemble); `done()` removes what was rebuilt.
 */
/**
 * Removes the rebuilt images that restores killed before their end left in `work` (named by
 * their ferry's pid: only those whose ferry no longer exists). A killed restore cannot remove
 * its own; the next one in the same work directory does.
 */
function sweepAssembled(work: string, log: Logger): void {
  let names: string[];
  try {
    names = readdirSync(work);
  } catch {
    return;
  }
  for (const name of names) {
    const m = /^\.ferry-assemble-(\d{1,7})-/.exec(name);
    if (!m || Number(m[1]) === process.pid || existsSync(`/proc/${m[1]}`)) continue;
    log.info({ dir: join(work, name) }, 'removing the rebuilt image a killed restore left');
    rmSync(join(work, name), { recursive: true, force: true });
  }
}

export function imageToRestore(images: string, work: string, log: Logger): { image: string; done(): void } {
  const image = join(images, IMAGE_FILE);
  if (existsSync(image) || !existsSync(join(images, DELTA_FILE))) return { image, done: () => {} };
  const a = assemble(images, work, log);
  return { image: a.image, done: () => rmSync(a.dir, { recursive: true, force: true }) };
}

/** Removes a holder's state and ends it (a container checkpointed without a parent while one ran). */
export function endHolder(init: Init, log: Logger): void {
  const t = takeOver(init, undefined, log);
  t.tracker?.close();
  try { unlinkSync(stateFile(init)); } catch { /* none */ }
}
