/**
 * Terminals (tty(4), pty(7), ioctl_tty(2)): pseudoterminal pairs held inside the tree, the
 * /dev/tty alias, and, with --shell-job, a terminal that belongs to someone outside the tree.
 *
 * Every open file of a terminal is one record of kind 'tty' with a `role`:
 * - `master`: an open file of /dev/ptmx. Its record carries the state of the whole pair,
 *   which lives on the slave side of the kernel's pair: termios (TCGETS2 on a master acts on
 *   the slave), window size, lock of the slave, packet mode, and the bytes queued in both
 *   directions (input written to the master that the slave has not read; output written by
 *   the slave that the master has not read). On restore it creates a new pair (opening
 *   /dev/ptmx), sets that state, and queues the bytes again.
 * - `slave`: an open file of /dev/pts/N whose master is held by a process of the tree, or a
 *   /dev/tty descriptor that leads to such a slave (`viaDevTty`). It waits for its master
 *   (NOT_YET) and is opened through the new master with TIOCGPTPEER. A /dev/tty descriptor
 *   comes back as a descriptor of the terminal it led to (readlink shows /dev/pts/N).
 * - `external`: any other terminal (the shell's /dev/pts/N whose master is held by sshd, a
 *   terminal emulator or script(1)). Only with --shell-job: it is
 *   reopened by the same path, which must exist where the image is restored; its termios is
 *   set back, its window size and queued bytes belong to its owner and are left alone.
 * - `device`: /dev/console (5:1), a virtual console (/dev/ttyN, 4:N below 64, /dev/tty0
 *   the current one) or a serial line (/dev/ttySN, 4:64 and up): a device of the machine,
 *   not anyone's terminal, so no --shell-job is needed. Restore reopens the same path, which
 *   must be a character device with exactly the recorded major:minor, and sets its termios
 *   back; its window size and queued bytes are the machine's and are left alone.
 * - `console`: a container's own terminal (runc's `terminal: true`): a slave of the
 *   container's devpts instance whose master runc sent over its console socket to a process
 *   outside (conmon, containerd's shim). Only with `orphanPts` (CRIU's orphan_pts_master,
 *   which runc sends). It keeps the slave's termios and window size; restore makes a new pair
 *   in the container's devpts (its /dev/ptmx, inside the container's root), gives the tree the
 *   slave and hands the new master to `onConsoleMaster` (runc passes it on to the console
 *   socket). Bytes queued on the old pair are its master's holder's and stay there.
 *
 * The pts number: the kernel gives a new pair the lowest free index; there is no way to ask
 * for one. When /dev/pts/N (the index at dump) is free, the master takes it by holding new
 * pairs on every free index below N until the next one is N (at most 1024 of them, closed
 * again at once); when it is taken, the pair gets whatever index is free.
 *
 * Controlling terminal: a slave or external record remembers whether the terminal is the
 * controlling terminal of a session of the tree (`ctty.session`, its leader's pid) and the
 * session's foreground process group (`ctty.foreground`, when that group is in the tree). On
 * restore, once the leader's descriptors are installed, the leader takes the terminal
 * (TIOCSCTTY) and sets the foreground group (TIOCSPGRP): every process and group of the tree
 * exists by then. A session led from outside the tree (a shell job whose shell stays outside)
 * keeps the session restore runs in: when ferry runs on that terminal, the tree's group is
 * made the foreground group again; otherwise the tree runs without that terminal as its
 * controlling terminal (its descriptors still work).
 *
 * Queued bytes are taken with read(2) on copies in the controller, then written back at once,
 * so the originals keep them (--leave-running). To read and re-queue them verbatim the slave's
 * termios is switched to raw for that moment: input processing and echo off, non-canonical.
 * In canonical mode (ICANON) the input is lines, and n_tty forgets where they end whenever
 * ICANON is switched (the whole queue would come back as one line, a line not ended yet
 * readable as if it had been): the complete lines are read first, one read(2) each, with
 * ICANON still on (a line VEOF ended comes without its VEOF, an empty one as 0 bytes), then
 * the rest raw; they are queued again (`inputLines`) by inserting the bytes into the line
 * discipline with TIOCSTI under a termios that quotes every byte with VLNEXT except the one
 * that ends each line (queueLines), so each read returns one line again, FIONREAD counts the
 * complete lines' bytes and the line not ended stays so. n_tty holds 4095 bytes, and a 4096th
 * while no complete line is pending (so that a full line can still be ended); beyond that,
 * input waits unprocessed in the flip buffer and is written to the master again. Whatever
 * fails while the bytes are taken (a termios change, a read, the limit), everything read so
 * far is queued again and the termios set back; an insertion that stops part-way is reported
 * as possibly damaging the input (TIOCSTI takes no byte back, and a pending VLNEXT is
 * forgotten only by switching ICANON, which forgets every line end too). Not kept: a VLNEXT
 * typed last, whose next byte is still to be quoted; which of two lines that read the same (a
 * quoted line-ending byte then VEOF, or that byte) it was, which shows only if the reader
 * later leaves canonical mode (a VEOF leaves a NUL there).
 * The slave's node keeps its owner and mode (`slaveNode`: grantpt's, or a later chown/chmod).
 * A session led from inside the tree whose controlling terminal no process of the tree holds
 * open gets a record of its own (unheldTerminals, addUnheldTerminals), where that is exact:
 * a pty whose master the tree holds, outside a container, with a group of the session in the
 * foreground (another than the leader's, a shell's job, is set by the leader once the tree
 * exists: setForegroundGroups; one no process is in any more, a job that exited, is made
 * around a process with its id for the leader's TIOCSPGRP: emptyForegrounds); a session whose leader holds none of it while a member does
 * is kept too: the leader takes it before forking, the member inherits it and sets the
 * foreground group. Such a record in a container's image, or one whose session leader is not
 * in the image, is refused before anything is made (checkUnheldTerminals).
 * Packet mode (TIOCPKT) is the pair's: it is switched off while the bytes are taken and
 * queued back (on, a read of the master puts a header byte before the output, and each termios
 * change queues a status byte for the tree's reader), then on again. Switching it on clears a
 * pending status byte (TIOCPKT_FLUSHREAD, _STOP, _START…), which only the read that returns it
 * takes: a master with one pending (POLLPRI) is refused, before anything is changed, naming pid
 * and fd, and the tree runs on. Exclusive mode (TIOCEXCL) is kept for the master, and for the
 * slave when a process of the tree holds the slave (read there).
 * Not kept: output stopped by ^S (IXON flow control is restarted), line disciplines other
 * than N_TTY's state; when no process of the tree holds the slave open, the bytes queued
 * either way and the slave's exclusive mode; exclusive mode of a terminal whose pair is not the
 * tree's (`external`, `device`, `console`).
 */
import { chmodSync, chownSync, existsSync, fstatSync, readFileSync, readSync, statSync, writeSync } from 'node:fs';
import { SYS, TIOCSCTTY, TIOCSPGRP } from '../arch/x86-64.js';
import { describeCause, errnoCode, FerryError } from '../errors.js';
import { faultPointSync } from '../fault.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_ACCMODE, O_APPEND, O_CLOEXEC, O_NONBLOCK, O_PATH } from '../proc/fcntl.js';
import { parseFdinfo } from '../proc/fdinfo.js';
import { listFds, readProcText } from '../proc/read.js';
import { parseStat } from '../proc/stat.js';
import type { Scratch, Tracee } from '../task/tracee.js';
import { placeOf, reopenIn, shownIn, statIn } from './confined.js';
import type { RestoreFiles } from './install.js';
import { NOT_YET, type DumpContext, type FdDesc, type FileKind, type OpenContext, type TaskContext } from './types.js';

const O_RDWR = 2, O_NOCTTY = 0o400, O_NOFOLLOW = 0o400000;
/** poll(2): urgent data; on a pty master in packet mode, a pending status byte. */
const POLLPRI = 0x2;
/** Status flags a terminal keeps (F_SETFL can change them). */
const KEPT_FLAGS = O_ACCMODE | O_NONBLOCK | O_APPEND;
/** Majors (Documentation/admin-guide/devices.txt): 4 virtual consoles and serial, 5 tty/console/ptmx, 136-143 pts. */
const TTY_MAJOR = 4, TTYAUX_MAJOR = 5, PTS_MAJOR_FIRST = 136, PTS_MAJOR_LAST = 143;
const PTMX_MINOR = 2, DEV_TTY_MINOR = 0, CONSOLE_MINOR = 1;
/** Largest pts index (devpts allows 1 << 20 pairs). */
const MAX_PTS_INDEX = (1 << 20) - 1;
/** Largest number of pairs held open to reach the recorded pts index. */
const MAX_FILL = 1024;
/**
 * Most bytes read from one queue at checkpoint (a holder of the master outside the tree may
 * keep writing while they are taken).
 */
const MAX_QUEUED = 1 << 20;
/**
 * Most bytes one direction of a pair holds and takes back: N_TTY's buffer (N_TTY_BUF_SIZE)
 * and the flip buffers' 64 KiB (TTYB_DEFAULT_MEM_LIMIT), which a writer of the other side
 * fills, then waits. A checkpoint that read more refuses (what it read is put back), and an
 * image's queue may not hold more.
 */
const MAX_REQUEUED = 4096 + 65536;
/** The master keeps a copy of its recorded state in these termios2 offsets (x86-64). */
const TERMIOS2_SIZE = 44, NCCS = 19, VTIME = 5, VMIN = 6;
// termios(3) bits (octal, asm-generic/termbits.h).
const IGNBRK = 0o1, BRKINT = 0o2, PARMRK = 0o10, ISTRIP = 0o40, INLCR = 0o100, IGNCR = 0o200, ICRNL = 0o400,
  IUCLC = 0o1000, IXON = 0o2000, IXOFF = 0o10000;
const OPOST = 0o1;
// c_cc indices (asm-generic/termbits.h).
const VERASE = 2, VKILL = 3, VEOF = 4, VREPRINT = 12, VWERASE = 14, VLNEXT = 15, VEOL = 11, VEOL2 = 16;
const NL = 0x0a;
/** Bytes N_TTY's read buffer holds (N_TTY_BUF_SIZE less the one receive_room keeps free). */
const N_TTY_HELD = 4095;
const ISIG = 0o1, ICANON = 0o2, XCASE = 0o4, ECHO = 0o10, ECHOE = 0o20, ECHOK = 0o40, ECHONL = 0o100,
  ECHOCTL = 0o1000, ECHOPRT = 0o2000, ECHOKE = 0o4000, IEXTEN = 0o100000, EXTPROC = 0o200000;

const major = (rdev: bigint): number => Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
const minor = (rdev: bigint): number => Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
const isPtsMajor = (maj: number): boolean => maj >= PTS_MAJOR_FIRST && maj <= PTS_MAJOR_LAST;
/** /dev/console, a virtual console or a serial line: a terminal of the machine (role `device`). */
const isMachineTerminal = (maj: number, min: number): boolean => maj === TTY_MAJOR || (maj === TTYAUX_MAJOR && min === CONSOLE_MINOR);

/** Whether a character device number is a terminal this module handles (chrdev.ts leaves them). */
export function isTerminal(rdev: bigint): boolean {
  const maj = major(rdev);
  return maj === TTY_MAJOR || maj === TTYAUX_MAJOR || isPtsMajor(maj);
}

/** struct termios2, field by field. */
export interface Termios {
  iflag: number;
  oflag: number;
  cflag: number;
  lflag: number;
  /** Line discipline number (0: N_TTY). */
  line: number;
  /** c_cc, NCCS (19) control characters. */
  cc: number[];
  ispeed: number;
  ospeed: number;
}

/** A complete line queued for a slave in canonical mode. */
export interface InputLine {
  /** Bytes of the line as a read(2) returns them (with the '\n', VEOL or VEOL2 that ended it). */
  length: number;
  /** VEOF ended it: no byte of it ends the line (a read returns the rest; 0 bytes, end of file, for an empty one). */
  eof: boolean;
}

export interface Winsize { row: number; col: number; xpixel: number; ypixel: number }

/** The terminal is the controlling terminal of a session of the tree. */
export interface CttyState {
  /** Pid of the session leader (in the tree), or null for a session led from outside it. */
  session: number | null;
  /** The session's foreground process group when it is a group of the tree, else null. */
  foreground: number | null;
}

export interface TtyRecord extends FileRecord {
  kind: 'tty';
  role: 'master' | 'slave' | 'external' | 'console' | 'device';
  /** device: the device number at dump, which the path must still have. */
  device?: { major: number; minor: number };
  /** What the descriptor linked to at dump: /dev/ptmx, /dev/pts/N, /dev/tty, /dev/ttyS0… */
  path: string;
  /** open(2) access mode and status flags (O_NONBLOCK, O_APPEND). */
  flags: number;
  /** master, slave, console: index N of the pair (/dev/pts/N) at dump. */
  index?: number;
  /** slave: file id of the master record of its pair. */
  master?: number;
  /** slave, external: the descriptor was opened as /dev/tty. */
  viaDevTty?: boolean;
  /** master, console: the slave's termios; external, device: the terminal's. */
  termios?: Termios;
  /** master, console: window size of the pair. */
  winsize?: Winsize;
  /** master: the slave is locked (TIOCSPTLCK: posix_openpt(3) without unlockpt(3)). */
  locked?: boolean;
  /** master: packet mode (TIOCPKT). */
  packet?: boolean;
  /**
   * master: the slave is in exclusive mode (TIOCEXCL: only CAP_SYS_ADMIN opens it again).
   * Read through a slave the tree holds; absent when it holds none, or when it is off.
   */
  exclusive?: boolean;
  /** master: the master's own tty is in exclusive mode (TIOCEXCL on the master; absent when off). */
  masterExclusive?: boolean;
  /**
   * master: owner and permission bits of the slave's node /dev/pts/N (grantpt(3) gives it the
   * opener's uid, devpts' gid and mode 620; `mesg n` or a chmod/chown changes them). Absent
   * when the node could not be seen from the process's root.
   */
  slaveNode?: { uid: number; gid: number; mode: number };
  /** master: bytes queued for the slave to read, base64. */
  input?: string;
  /**
   * master, when the slave was in canonical mode (ICANON) with input queued: the complete
   * lines at the start of `input`, in order; the bytes after them are a line not ended yet
   * (and, beyond what the line discipline holds, input it had no room for). Absent: `input`
   * is one run of bytes.
   */
  inputLines?: InputLine[];
  /** master: bytes the slave wrote that the master has not read, base64. */
  output?: string;
  /** slave, external, console, device: the terminal is a controlling terminal in the tree. */
  ctty?: CttyState | null;
}

// ---- termios ----

function decodeTermios(b: Buffer): Termios {
  return {
    iflag: b.readUInt32LE(0), oflag: b.readUInt32LE(4), cflag: b.readUInt32LE(8), lflag: b.readUInt32LE(12),
    line: b.readUInt8(16), cc: [...b.subarray(17, 17 + NCCS)], ispeed: b.readUInt32LE(36), ospeed: b.readUInt32LE(40),
  };
}

function encodeTermios(t: Termios): Buffer {
  const b = Buffer.alloc(TERMIOS2_SIZE);
  b.writeUInt32LE(t.iflag >>> 0, 0);
  b.writeUInt32LE(t.oflag >>> 0, 4);
  b.writeUInt32LE(t.cflag >>> 0, 8);
  b.writeUInt32LE(t.lflag >>> 0, 12);
  b.writeUInt8(t.line, 16);
  t.cc.forEach((c, i) => b.writeUInt8(c, 17 + i));
  b.writeUInt32LE(t.ispeed >>> 0, 36);
  b.writeUInt32LE(t.ospeed >>> 0, 40);
  return b;
}

/** `t` with input processing, signals and echo off, non-canonical: bytes queue verbatim. */
function rawInput(t: Termios): Termios {
  const cc = [...t.cc];
  cc[VMIN] = 1;
  cc[VTIME] = 0;
  return {
    ...t, cc,
    iflag: t.iflag & ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IUCLC | IXON | IXOFF),
    lflag: t.lflag & ~(ISIG | ICANON | XCASE | ECHO | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | IEXTEN | EXTPROC),
  };
}

/** Whether `t` reads by lines: ICANON, without EXTPROC (with it n_tty's reads are not canonical). */
const canonical = (t: Termios): boolean => (t.lflag & ICANON) !== 0 && (t.lflag & EXTPROC) === 0;

/**
 * Whether `c`, the last byte of a line read in canonical mode, is the byte that ended it:
 * '\n', VEOL, or VEOL2 with IEXTEN (n_tty_receive_char_canon). A c_cc of 0 matches no byte.
 */
const endsLine = (c: number, t: Termios): boolean =>
  c === NL || (c !== 0 && (c === t.cc[VEOL] || ((t.lflag & IEXTEN) !== 0 && c === t.cc[VEOL2])));

/**
 * `t` still canonical (the lines already queued keep their ends: n_tty forgets them only when
 * ICANON or EXTPROC changes), with signals, echo and input processing off and its editing
 * and line-ending characters disabled (0): input the line discipline had no room for, which
 * reading lines lets in, is taken verbatim, ended only at '\n'.
 */
function quietLines(t: Termios): Termios {
  const r = rawInput(t);
  const cc = [...t.cc];
  for (const i of [VERASE, VKILL, VEOF, VEOL, VEOL2, VWERASE, VLNEXT, VREPRINT]) cc[i] = 0;
  return { ...r, cc, lflag: r.lflag | ICANON };
}

// ---- reading and queueing bytes ----

/**
 * Reads everything readable now from non-blocking `fd` into `chunks`, as it goes, so that
 * what was read can be put back whatever happens (the limit, a read error).
 */
function drain(fd: number, what: string, chunks: Buffer[]): void {
  let total = 0;
  for (;;) {
    const b = Buffer.alloc(65536);
    let k: number;
    try {
      k = readSync(fd, b, 0, b.length, null);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EAGAIN' || code === 'EIO') break; // EIO: the other side is closed and nothing is left
      throw err;
    }
    if (k <= 0) break;
    chunks.push(b.subarray(0, k));
    total += k;
    if (total > MAX_QUEUED) throw new Error(`more than ${MAX_QUEUED} bytes queued in ${what}`);
    faultPointSync('ttydrain'); // tests only: a read failing part-way
  }
}

/** Writes all of `data` to non-blocking `fd`. */
function writeAll(fd: number, data: Buffer): void {
  for (let off = 0; off < data.length;) {
    const k = writeSync(fd, data, off, data.length - off);
    if (k <= 0) throw new Error(`short write of queued terminal data: ${off} of ${data.length} bytes`);
    off += k;
  }
}

/**
 * What TIOCSTI needs that ferry lacks: capable(CAP_SYS_ADMIN) is asked of the initial user
 * namespace, so root of a user namespace of its own (a rootless container's) has it not.
 */
function insertNeeds(): string {
  let map = '';
  try {
    map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/).join(' ');
  } catch { /* no procfs: say the capability */ }
  return map === '' || map === '0 0 4294967295'
    ? 'CAP_SYS_ADMIN, which ferry lacks: run ferry as root with all capabilities'
    : 'CAP_SYS_ADMIN in the initial user namespace, which ferry (in a user namespace of its own) cannot have: run ferry outside that user namespace';
}

/**
 * Whether ferry may insert input (TIOCSTI) into a terminal: asked of the slave of a pair made
 * and closed again at once (a terminal not ferry's controlling terminal, as a restored one).
 */
function mayInsertInput(): boolean {
  const n = native();
  const m = n.openRaw('/dev/ptmx', O_RDWR | O_NOCTTY | O_NONBLOCK);
  try {
    n.ptySetLocked(m, 0);
    const s = n.ptyPeer(m, O_RDWR | O_NOCTTY | O_NONBLOCK);
    try {
      return n.ttyMayInsertInput(s);
    } finally {
      n.closeFd(s);
    }
  } finally {
    n.closeFd(m);
  }
}

/** Waits (bounded) until `fd`'s line discipline holds `len` bytes: the flip buffers are pushed by a worker. */
function waitQueued(fd: number, len: number, what: string): void {
  const n = native();
  for (const end = Date.now() + 5000; ;) {
    if (n.ttyInq(fd) >= len) return;
    if (Date.now() > end) throw new Error(`${what}: ${len} queued bytes did not reach the line discipline (it holds ${n.ttyInq(fd)})`);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
  }
}

/**
 * Queues `data` for the slave to read: written into master `m` while the slave's termios is
 * raw, then `t` is set back. `s` is an open slave of the same pair, to see the bytes arrive.
 */
function queueInput(m: number, s: number, t: Termios, data: Buffer): void {
  const n = native();
  try {
    if (data.length > 0) {
      n.ttySetTermios(m, encodeTermios(rawInput(t)));
      writeAll(m, data);
      waitQueued(s, data.length, 'terminal input');
    }
  } finally {
    n.ttySetTermios(m, encodeTermios(t));
  }
}

/**
 * Reads the complete lines queued for canonical slave `s` (non-blocking), one read(2) each:
 * n_tty returns one line per read, and a line VEOF ended without its VEOF (0 bytes for an
 * empty one). A line whose last byte is not a line-ending byte of `t` was ended by VEOF; one
 * ended by a quoted (VLNEXT) line-ending byte and VEOF, or left whole when ICANON was switched
 * on under it, reads the same as the line rebuilt here (only the NUL n_tty keeps for the VEOF,
 * which no canonical read returns, differs). Pushes into `got` and `lines` as it goes, so
 * that what was read can be put back whatever happens.
 */
function readLines(s: number, t: Termios, got: Buffer[], lines: InputLine[], what: string): void {
  const b = Buffer.alloc(65536);
  let total = 0;
  for (;;) {
    let k: number;
    try {
      k = readSync(s, b, 0, b.length, null);
    } catch (err) {
      if (errnoCode(err) === 'EAGAIN') return; // no complete line left (n_tty flushed its flip buffer first)
      throw err;
    }
    const eof = k === 0 || !endsLine(b[k - 1]!, t);
    got.push(Buffer.from(b.subarray(0, k)));
    lines.push({ length: k, eof });
    total += k + (eof ? 1 : 0);
    if (total > MAX_QUEUED) throw new Error(`more than ${MAX_QUEUED} bytes queued in ${what}`);
  }
}

/**
 * Bytes n_tty holds before the next complete line, `before` complete lines being held already:
 * its buffer keeps one byte free (receive_room), except while no complete line is pending,
 * when it takes a last byte so that a full line can still be ended (n_tty_receive_buf_common:
 * the `overflow` case; further bytes overwrite that last one).
 */
const heldRoom = (before: number): number => (before === 0 ? N_TTY_HELD + 1 : N_TTY_HELD);

/** The leading lines of `lines` that n_tty holds whole (a VEOF takes a byte of its buffer too). */
function heldLines(lines: readonly InputLine[]): InputLine[] {
  const out: InputLine[] = [];
  let held = 0;
  for (const l of lines) {
    held += l.length + (l.eof ? 1 : 0);
    if (held > heldRoom(out.length)) break;
    out.push(l);
  }
  return out;
}

/**
 * Queues `data` for canonical slave `s` to read as `lines`, then the rest as a line not ended:
 * inserted (TIOCSTI) into the line discipline, which takes each byte at once, with `t` still
 * canonical and everything else off, each byte quoted with VLNEXT (IEXTEN on for it) so that
 * none edits or ends a line, except the last byte of a line ('\n', VEOL, VEOL2) and a VEOF
 * for a line VEOF ended. VLNEXT, VEOF and every other special character are bytes that end
 * no line of `t`, so none of them is taken for another. Written into master `m` then:
 * bytes beyond what n_tty holds, which waited in the flip buffer unprocessed and do so again.
 * `t` is set back at the end, whatever failed (ICANON unchanged: the line ends stay), and the
 * bytes beyond are written back even then: at checkpoint they are the original's.
 * `what` names the terminal for the error of an insertion that stopped part-way, after which
 * the input is not what it was (n_tty has no way to take bytes back, nor to forget a VLNEXT
 * short of switching ICANON, which would forget every line end too).
 */
function queueLines(m: number, s: number, t: Termios, data: Buffer, lines: readonly InputLine[], what: string): void {
  const n = native();
  const veol = t.cc[VEOL]!, veol2 = (t.lflag & IEXTEN) !== 0 ? t.cc[VEOL2]! : 0;
  const [lnext, veof, dead] = [...Array(256).keys()].filter((c) => c !== 0 && c !== NL && c !== veol && c !== veol2);
  const cc = new Array<number>(NCCS).fill(dead!);
  cc[VLNEXT] = lnext!;
  cc[VEOF] = veof!;
  cc[VEOL] = veol === 0 ? dead! : veol;
  cc[VEOL2] = veol2 === 0 ? dead! : veol2;
  cc[VMIN] = 1;
  cc[VTIME] = 0;
  const r = rawInput(t);
  const rebuild: Termios = { ...r, cc, lflag: r.lflag | ICANON | IEXTEN };
  const bytes: number[] = [];
  /** Where in `bytes` a VLNEXT quotes the next byte. */
  const quotes = new Set<number>();
  const quoted = (b: Buffer): void => {
    for (const c of b) {
      quotes.add(bytes.length);
      bytes.push(lnext!, c);
    }
  };
  let off = 0, held = 0, want = 0;
  for (const l of lines) {
    const line = data.subarray(off, off + l.length);
    if (l.eof) {
      quoted(line);
      bytes.push(veof!);
    } else {
      quoted(line.subarray(0, -1));
      bytes.push(line[line.length - 1]!);
    }
    off += l.length;
    held += l.length + (l.eof ? 1 : 0);
    want += l.length;
  }
  const rest = data.subarray(off);
  const partial = rest.subarray(0, Math.max(0, heldRoom(lines.length) - held));
  quoted(partial);
  let done = 0;
  try {
    if (bytes.length > 0) {
      n.ttySetTermios(m, encodeTermios(rebuild));
      // One byte a call: where a failure stopped is known (after a VLNEXT, the next byte
      // inserted would be taken literally).
      const one = Buffer.alloc(1);
      for (; done < bytes.length; done++) {
        if (quotes.has(done - 1)) faultPointSync('ttyinsert'); // tests only: an insert failing part-way
        one[0] = bytes[done]!;
        n.ttyInsertInput(s, one);
      }
    }
  } catch (err) {
    // What was taken is not all back: the input is what came back of it, then what arrives.
    throw new Error(`inserting queued input again stopped after ${done} of ${bytes.length} bytes (${describeCause(err)}): `
      + `the input of ${what} may be damaged${quotes.has(done - 1) ? ' (its next byte will be taken literally)' : ''}`, { cause: err });
  } finally {
    try {
      n.ttySetTermios(m, encodeTermios(t));
    } finally {
      if (rest.length > partial.length) writeAll(m, rest.subarray(partial.length));
    }
  }
  // FIONREAD in canonical mode: the bytes of complete lines (a VEOF's NUL not counted).
  const got = n.ttyInq(s);
  if (got !== want) throw new Error(`the input of ${what}: ${want} bytes of complete lines queued, the line discipline holds ${got}`);
}

/** Queues `data` for master `m` to read: written into slave `s` with output processing off. */
function queueOutput(m: number, s: number, t: Termios, data: Buffer): void {
  if (data.length === 0) return;
  const n = native();
  try {
    n.ttySetTermios(m, encodeTermios({ ...t, oflag: t.oflag & ~OPOST }));
    writeAll(s, data);
    waitQueued(m, data.length, 'terminal output');
  } finally {
    n.ttySetTermios(m, encodeTermios(t));
  }
}

// ---- dump ----

/** The descriptors of the tree's processes that are pty masters or slaves, by index. */
interface PtyEnd { pid: number; fd: number; index: number; master: boolean }

function ptyEnds(pids: ReadonlySet<number>, index: number): PtyEnd[] {
  const out: PtyEnd[] = [];
  for (const pid of pids) {
    for (const fd of listFds(pid)) {
      let st;
      try {
        st = statSync(`/proc/${pid}/fd/${fd}`, { bigint: true });
      } catch { continue; }
      if (!st.isCharacterDevice()) continue;
      const maj = major(st.rdev), min = minor(st.rdev);
      if (maj === TTYAUX_MAJOR && min === PTMX_MINOR) {
        const info = parseFdinfo(readProcText(pid, `fdinfo/${fd}`));
        const idx = Number(info.lines.get('tty-index')?.[0] ?? -1);
        if (idx === index) out.push({ pid, fd, index, master: true });
      } else if (isPtsMajor(maj) && (maj - PTS_MAJOR_FIRST) * 256 + min === index) {
        out.push({ pid, fd, index, master: false });
      }
    }
  }
  return out;
}

/** pidfd_getfd copy of `fd` of `pid` (the caller closes it). */
function steal(pid: number, fd: number): number {
  const n = native();
  const pidfd = n.pidfdOpen(pid);
  try {
    return n.pidfdGetfd(pidfd, fd);
  } finally {
    n.closeFd(pidfd);
  }
}

/** Whether the terminal `maj:min` is the controlling terminal of a session of the tree. */
function cttyOf(maj: number, min: number, pids: ReadonlySet<number>): CttyState | null {
  const stats = [...pids].map((pid) => ({ pid, stat: parseStat(readProcText(pid, 'stat')) }));
  const holder = stats.find(({ stat }) => stat.ttyNr !== 0
    && ((stat.ttyNr >> 8) & 0xfff) === maj && ((stat.ttyNr & 0xff) | ((stat.ttyNr >> 12) & 0xfff00)) === min);
  if (!holder) return null;
  const sid = holder.stat.session;
  const fg = holder.stat.tpgid;
  const session = pids.has(sid) ? sid : null;
  return { session, foreground: fg > 0 && stats.some(({ stat }) => stat.pgrp === fg) ? fg : null };
}

/** The /dev path of terminal `maj:min` (pts by index; others from sysfs). */
function devPath(maj: number, min: number): string {
  if (isPtsMajor(maj)) return `/dev/pts/${(maj - PTS_MAJOR_FIRST) * 256 + min}`;
  try {
    const m = /^DEVNAME=(.+)$/m.exec(readFileSync(`/sys/dev/char/${maj}:${min}/uevent`, 'utf8'));
    if (m) return `/dev/${m[1]}`;
  } catch { /* no sysfs entry */ }
  throw new Error(`no device path is known for terminal ${maj}:${min}`);
}

/**
 * Owner and mode of /dev/pts/`index` as process `pid` sees it (its root's /dev/pts), if that
 * node is the pair's slave (the same device number): a container's devpts is its own.
 */
function slaveNodeOf(pid: number, index: number): TtyRecord['slaveNode'] {
  try {
    const st = statSync(`/proc/${pid}/root/dev/pts/${index}`, { bigint: true });
    const maj = major(st.rdev), min = minor(st.rdev);
    if (!st.isCharacterDevice() || !isPtsMajor(maj) || (maj - PTS_MAJOR_FIRST) * 256 + min !== index) return undefined;
    return { uid: Number(st.uid), gid: Number(st.gid), mode: Number(st.mode) & 0o777 };
  } catch {
    return undefined;
  }
}

function dumpMaster(d: FdDesc, ctx: DumpContext, flags: number): Omit<TtyRecord, 'id' | 'kind'> {
  const n = native();
  const m = ctx.grab(d);
  const index = n.ptyIndex(m);
  const t = decodeTermios(n.ttyGetTermios(m));
  const winsize = n.ttyGetWinsize(m);
  const locked = n.ptyLocked(m) === 1;
  const packet = n.ptyPacket(m) === 1;
  const masterExclusive = n.ttyExclusive(m) === 1;
  // A status byte pending in packet mode (TIOCPKT_FLUSHREAD after a tcflush, _STOP/_START
  // after a tcflow or ^S/^Q, _NOSTOP/_DOSTOP, _IOCTL) is taken only by the read(2) that
  // returns it, and nothing queues one again short of doing to the slave what made it (a
  // flush, a stop): refused, before anything is changed, rather than lost.
  if (packet && (n.ttyPoll(m, POLLPRI) & POLLPRI) !== 0) {
    throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd} (the master of /dev/pts/${index}, in packet mode) has a status byte pending `
      + '(TIOCPKT: a flush, stop or start not read yet) that a checkpoint cannot take without consuming it: checkpoint again once the '
      + 'process has read it; the process was left running', { pid: d.pid, fd: d.fd });
  }
  let input: Buffer = Buffer.alloc(0);
  let inputLines: InputLine[] | undefined;
  let output: Buffer = Buffer.alloc(0);
  let exclusive: boolean | undefined;
  // A slave the tree holds open: copies of it do not change the pair's open count (opening
  // and closing one of our own could mark the master's other side closed).
  const slave = ptyEnds(ctx.pids, index).find((e) => !e.master);
  if (slave) {
    const s = steal(slave.pid, slave.fd);
    try {
      // Lines queued in canonical mode are put back through TIOCSTI (queueLines), which needs
      // CAP_SYS_ADMIN in the initial user namespace: asked before anything is read.
      if (canonical(t) && !n.ttyMayInsertInput(s)) {
        throw new FerryError('EPERM', `pid ${d.pid} fd ${d.fd} (the master of /dev/pts/${index}): its slave is in canonical mode, and queueing `
          + `its input again line by line (TIOCSTI) needs ${insertNeeds()}; the process was left running`, { pid: d.pid, fd: d.fd });
      }
      exclusive = n.ttyExclusive(s) === 1;
      const sFl = n.getFl(s);
      const mFl = n.getFl(m);
      n.setFl(s, sFl | O_NONBLOCK);
      n.setFl(m, mFl | O_NONBLOCK);
      try {
        // Packet mode is the pair's (the master's tty), not our copy's: on, a read of the
        // master puts a header byte before the output, and each termios change made here
        // queues a TIOCPKT_NOSTOP/_DOSTOP or _IOCTL status for the tree's reader
        // (pty_set_termios). Off for that moment, neither; switching it back on clears the
        // pair's status (pty_set_pktmode), none being pending (refused above). The tree is
        // frozen meanwhile: its reader never sees it off.
        if (packet) n.ptySetPacket(m, 0);
        try {
          if (canonical(t)) {
            // Each complete line is read as one, then the rest raw; switching back to
            // canonical mode would make all of it one line, so the lines are inserted again
            // one by one (queueLines) for the original, and for the restored pair alike.
            // Whatever fails (a termios change, a read, the limit), everything read so far
            // goes back, lines as lines, and the termios is set back (queueLines).
            const got: Buffer[] = [];
            const lines: InputLine[] = [];
            let held: InputLine[] = [];
            let raw = false;
            try {
              n.ttySetTermios(m, encodeTermios(quietLines(t)));
              try {
                readLines(s, t, got, lines, `the input of /dev/pts/${index}`);
              } finally {
                // The rest raw, also after a failed read: the bytes go back in their order.
                n.ttySetTermios(m, encodeTermios(rawInput(t)));
                raw = true;
                drain(s, `the input of /dev/pts/${index}`, got);
              }
            } catch (err) {
              // Not switched to raw: a line not ended stays in n_tty, before the lines that
              // are queued again after it.
              if (raw || lines.length === 0) throw err;
              throw new Error(`${describeCause(err)}; the input of /dev/pts/${index} may be damaged (a line not ended came before its complete lines)`, { cause: err });
            } finally {
              input = Buffer.concat(got);
              held = heldLines(lines);
              queueLines(m, s, t, input, held, `/dev/pts/${index}`); // puts the lines back, then termios
            }
            if (input.length > MAX_REQUEUED) throw new Error(`more than ${MAX_REQUEUED} bytes queued in the input of /dev/pts/${index}`);
            if (input.length > 0) inputLines = held;
          } else {
            const got: Buffer[] = [];
            try {
              n.ttySetTermios(m, encodeTermios(rawInput(t)));
              drain(s, `the input of /dev/pts/${index}`, got);
            } finally {
              input = Buffer.concat(got);
              queueInput(m, s, t, input); // puts the bytes back for the original, then termios
            }
            if (input.length > MAX_REQUEUED) throw new Error(`more than ${MAX_REQUEUED} bytes queued in the input of /dev/pts/${index}`);
          }
          if (n.ttyInq(m) > 0) {
            const got: Buffer[] = [];
            try {
              drain(m, `the output of /dev/pts/${index}`, got);
            } finally {
              output = Buffer.concat(got);
              queueOutput(m, s, t, output);
            }
            if (output.length > MAX_REQUEUED) throw new Error(`more than ${MAX_REQUEUED} bytes queued in the output of /dev/pts/${index}`);
          }
        } finally {
          if (packet) n.ptySetPacket(m, 1);
        }
      } finally {
        n.setFl(s, sFl);
        n.setFl(m, mFl);
      }
    } finally {
      n.closeFd(s);
    }
  }
  const slaveNode = slaveNodeOf(d.pid, index);
  return {
    role: 'master', path: d.link, flags, index, termios: t, winsize, locked, packet,
    input: input.toString('base64'), ...(inputLines ? { inputLines } : {}), output: output.toString('base64'), ...(slaveNode ? { slaveNode } : {}),
    ...(masterExclusive ? { masterExclusive } : {}), ...(exclusive ? { exclusive } : {}),
  };
}

function dump(d: FdDesc, ctx: DumpContext): Omit<TtyRecord, 'id' | 'kind'> {
  const flags = d.fdinfo.flags & ~O_CLOEXEC & KEPT_FLAGS;
  let maj = major(d.stat.rdev), min = minor(d.stat.rdev);
  try {
    if (maj === TTYAUX_MAJOR && min === PTMX_MINOR) return dumpMaster(d, ctx, flags);
    const viaDevTty = maj === TTYAUX_MAJOR && min === DEV_TTY_MINOR;
    if (viaDevTty) ({ major: maj, minor: min } = native().ttyDevice(ctx.grab(d)));
    const path = viaDevTty ? devPath(maj, min) : d.link;
    if (isPtsMajor(maj)) {
      const index = (maj - PTS_MAJOR_FIRST) * 256 + min;
      const m = ptyEnds(ctx.pids, index).find((e) => e.master);
      const master = m && ctx.fileIdOf(m.pid, m.fd);
      if (master !== undefined) {
        return { role: 'slave', path, flags, index, master, viaDevTty, ctty: cttyOf(maj, min, ctx.pids) };
      }
      if (ctx.options.orphanPts && inOwnDevpts(d, viaDevTty)) {
        const c = ctx.grab(d);
        const n = native();
        return {
          role: 'console', path, flags, index, viaDevTty, termios: decodeTermios(n.ttyGetTermios(c)), winsize: n.ttyGetWinsize(c),
          ctty: cttyOf(maj, min, ctx.pids),
        };
      }
    }
    if (isMachineTerminal(maj, min)) {
      const termios = decodeTermios(native().ttyGetTermios(ctx.grab(d)));
      return { role: 'device', path, flags, viaDevTty, device: { major: maj, minor: min }, termios, ctty: cttyOf(maj, min, ctx.pids) };
    }
    if (!ctx.options.shellJob) {
      throw new FerryError('EUNSUPPORTED',
        `terminal outside the tree: pid ${d.pid} fd ${d.fd} -> ${d.link}${viaDevTty ? ` (${path})` : ''} belongs to no process being checkpointed `
        + `(e.g. the shell's terminal): checkpoint with --shell-job to take it along (restore then reopens ${path}, which must exist)`);
    }
    const termios = decodeTermios(native().ttyGetTermios(ctx.grab(d)));
    return { role: 'external', path, flags, viaDevTty, termios, ctty: cttyOf(maj, min, ctx.pids) };
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `checkpoint: terminal fd ${d.fd} of pid ${d.pid} (${d.link}): ${describeCause(err)}`, { cause: err });
  }
}

/**
 * Whether the pts behind `d` is of a devpts instance of the process's own (a container's),
 * not of ferry's /dev/pts: the process's /dev/pts/ptmx is another file system than ferry's,
 * and a descriptor of a slave (not /dev/tty) is on it.
 */
function inOwnDevpts(d: FdDesc, viaDevTty: boolean): boolean {
  try {
    const own = statSync(`/proc/${d.pid}/root/dev/pts/ptmx`, { bigint: true }).dev;
    return own !== statSync('/dev/pts/ptmx', { bigint: true }).dev && (viaDevTty || d.stat.dev === own);
  } catch {
    return false;
  }
}

/**
 * The image holds every id as the tree sees it (dump/ns-ids.ts): the controlling terminals'
 * session leaders and foreground groups are given in the tree's pid namespace. `pidOf` maps a
 * host pid of the tree, `groupOf` a host process group id of the tree (undefined: none).
 */
export function cttyInNamespace(files: readonly FileRecord[], pidOf: (host: number) => number, groupOf: (hostPgid: number) => number | undefined): void {
  for (const f of files) {
    const c = (f as TtyRecord).ctty;
    if (f.kind !== 'tty' || !c) continue;
    (f as TtyRecord).ctty = {
      session: c.session === null ? null : pidOf(c.session),
      foreground: c.foreground === null ? null : groupOf(c.foreground) ?? null,
    };
  }
}

/** A session of the tree whose controlling terminal no process of the tree holds open. */
export interface UnheldTerminal {
  /** The session leader. */
  leader: number;
  /** The pts index of the terminal, whose master a process of the tree holds. */
  index: number;
  /** Where that master is held. */
  master: { pid: number; fd: number };
  /** The foreground process group when it is not the leader's own (a group of the tree, in the session). */
  foreground: number | null;
}

/**
 * The sessions led from inside the tree whose controlling terminal no process of the tree
 * holds open (no descriptor, no /dev/tty). No descriptor's record would carry it, so a
 * record of its own is added (addUnheldTerminals): restore opens the slave in the controller
 * and the leader takes it as controlling terminal right after its setsid()
 * (takeControllingTerminal), before any member is forked, so every member inherits it, and
 * /dev/tty works again; TIOCSCTTY puts the leader's group in the foreground, and another
 * group (a shell's job) is put back by the leader once every group exists
 * (setForegroundGroups). Kept only where that is exact: a pty whose master is held in the
 * tree, in a tree in ferry's pid namespace, with a group of the session that a live process of
 * the tree is in as the foreground, or one no process is in any more whose id no process has
 * (made again for the moment: emptyForegrounds). Anything else (a terminal of the machine or
 * one whose master is outside, a container, an empty foreground group whose id is taken) is refused
 * here (EUNSUPPORTED, one line), before anything of the tree is read. `processes`: each
 * live process's pid and stat; `descs`: their descriptors, read after the freeze.
 */
export function unheldTerminals(processes: ReadonlyArray<{ pid: number; stat: { session: number; pgrp: number; ttyNr: number; tpgid: number } }>,
  descs: ReadonlyMap<number, readonly FdDesc[]>, container: boolean): UnheldTerminal[] {
  const out: UnheldTerminal[] = [];
  for (const p of processes) {
    if (p.stat.session !== p.pid || p.stat.ttyNr === 0) continue;
    const nr = p.stat.ttyNr;
    const maj = (nr >> 8) & 0xfff, min = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    const held = processes.some((q) => (descs.get(q.pid) ?? []).some((d) => {
      if (!d.stat.isCharacterDevice()) return false;
      const dm = major(d.stat.rdev), dn = minor(d.stat.rdev);
      // /dev/tty of a member of the session is that very terminal.
      return (dm === maj && dn === min) || (dm === TTYAUX_MAJOR && dn === DEV_TTY_MINOR && q.stat.session === p.pid);
    }));
    if (held) continue;
    let path: string;
    try {
      path = devPath(maj, min);
    } catch {
      path = `terminal ${maj}:${min}`;
    }
    const refuse = (why: string): never => {
      throw new FerryError('EUNSUPPORTED', `pid ${p.pid} leads a session whose controlling terminal is ${path}, which no process of the tree holds open, `
        + `${why}: not supported yet; the process was left running`, { pid: p.pid });
    };
    if (!isPtsMajor(maj)) refuse('and which is not a pseudoterminal of the tree');
    const index = (maj - PTS_MAJOR_FIRST) * 256 + min;
    let master: { pid: number; fd: number } | undefined;
    for (const q of processes) {
      const d = (descs.get(q.pid) ?? []).find((x) => x.stat.isCharacterDevice() && major(x.stat.rdev) === TTYAUX_MAJOR
        && minor(x.stat.rdev) === PTMX_MINOR && Number(x.fdinfo.lines.get('tty-index')?.[0] ?? -1) === index);
      if (d) {
        master = { pid: q.pid, fd: d.fd };
        break;
      }
    }
    if (master === undefined) refuse('and whose master is held outside the tree');
    if (container) refuse('in a container');
    // Another group in the foreground (a shell's job): the leader sets it once the tree exists
    // (setForegroundGroups). A group no process is in any more (the job exited, and nobody
    // took the terminal back: the terminal keeps the group's id, tcgetpgrp(3) still gives it)
    // is made again for the moment of the leader's TIOCSPGRP around a process with its id
    // (emptyForegrounds), which needs that id free: no process in the group, none with the id.
    const fg = p.stat.tpgid;
    if (fg !== p.stat.pgrp && !processes.some((q) => q.stat.pgrp === fg && q.stat.session === p.pid)) {
      if (fg <= 0) refuse('with no foreground process group');
      if (alive(-fg) || alive(fg)) {
        refuse(`with process group ${fg} in the foreground, a group no process of the tree is in, which ${alive(-fg) ? 'a process outside the tree is in' : `pid ${fg} now has as its id`}`);
      }
    }
    out.push({ leader: p.pid, index, master: master!, foreground: fg === p.stat.pgrp ? null : fg });
  }
  return out;
}

/** Whether a process (`id` > 0) or a process group (`-id`) exists (kill(2) with signal 0). */
function alive(id: number): boolean {
  try {
    process.kill(id, 0);
    return true;
  } catch (err) {
    return errnoCode(err) !== 'ESRCH';
  }
}

/**
 * Adds a slave record for each of `unheld` to the collected files: held by no descriptor,
 * the controlling terminal of its leader's session (`ctty`), its pair's master by file id.
 */
export function addUnheldTerminals(unheld: readonly UnheldTerminal[], files: { files: FileRecord[]; fds: ReadonlyMap<number, ReadonlyArray<{ fd: number; file: number }>> }): void {
  for (const u of unheld) {
    const master = files.fds.get(u.master.pid)?.find((f) => f.fd === u.master.fd)?.file;
    if (master === undefined) throw new Error(`the master of /dev/pts/${u.index} (pid ${u.master.pid} fd ${u.master.fd}) has no record`);
    const id = files.files.reduce((m, f) => Math.max(m, f.id), -1) + 1;
    const rec: TtyRecord = {
      id, kind: 'tty', role: 'slave', path: `/dev/pts/${u.index}`, link: `/dev/pts/${u.index}`, flags: O_RDWR, index: u.index, master,
      viaDevTty: false, ctty: { session: u.leader, foreground: u.foreground },
    };
    files.files.push(rec);
  }
}

// ---- restore ----

/**
 * Opens a new pair, on index `want` when it is free: the kernel takes the lowest free index,
 * so new pairs are held on the free indices below it until the next one gets `want`.
 */
function openPair(flags: number, want: number | undefined): number {
  const n = native();
  const open = (): number => n.openRaw('/dev/ptmx', (flags & KEPT_FLAGS) | O_NOCTTY | O_NONBLOCK);
  if (want === undefined || want > MAX_FILL || existsSync(`/dev/pts/${want}`)) return open();
  const fillers: number[] = [];
  try {
    for (;;) {
      const fd = open();
      const got = n.ptyIndex(fd);
      if (got >= want || fillers.length >= MAX_FILL) return fd; // want, or taken meanwhile
      fillers.push(fd);
    }
  } finally {
    for (const fd of fillers) n.closeFd(fd);
  }
}

function openMaster(rec: TtyRecord): number {
  const n = native();
  const m = openPair(rec.flags, rec.index);
  try {
    n.ptySetLocked(m, 0);
    const t = rec.termios!;
    n.ttySetTermios(m, encodeTermios(t));
    const w = rec.winsize!;
    n.ttySetWinsize(m, w.row, w.col, w.xpixel, w.ypixel);
    const input = Buffer.from(rec.input ?? '', 'base64');
    const output = Buffer.from(rec.output ?? '', 'base64');
    if (input.length > 0 || output.length > 0 || rec.exclusive === true) {
      // A slave open meanwhile, to see the bytes arrive; closing it again is what the original
      // pair saw too if no slave is restored. Exclusive mode is a flag of the slave's tty,
      // which lives as long as the master: it outlasts this descriptor, and ferry's own opens
      // of the slave (TIOCGPTPEER, with CAP_SYS_ADMIN) pass it.
      const s = n.ptyPeer(m, O_RDWR | O_NOCTTY | O_NONBLOCK);
      try {
        if (rec.inputLines !== undefined) queueLines(m, s, t, input, rec.inputLines, `/dev/pts/${n.ptyIndex(m)} (file ${rec.id} of the image)`);
        else queueInput(m, s, t, input);
        queueOutput(m, s, t, output);
        if (rec.exclusive === true) n.ttySetExclusive(s, 1);
      } finally {
        n.closeFd(s);
      }
    }
    // Last: termios changes made above with packet mode on would queue status bytes, and
    // switching it on clears any. The output queued comes to the reader as a packet
    // (TIOCPKT_DATA, then the bytes), as it would have from the original.
    if (rec.packet) n.ptySetPacket(m, 1);
    if (rec.masterExclusive === true) n.ttySetExclusive(m, 1);
    if (rec.slaveNode) setSlaveNode(m, rec.slaveNode);
    if (rec.locked) n.ptySetLocked(m, 1);
    n.setFl(m, rec.flags & (O_NONBLOCK | O_APPEND));
    return m;
  } catch (err) {
    n.closeFd(m);
    throw err;
  }
}

/**
 * Gives the new pair's slave node the recorded owner and mode: the pair was opened by ferry
 * (root), so devpts made it root's. The node is reached as an O_PATH descriptor of
 * /dev/pts/N that must be this pair's slave (same device number), then changed through it.
 */
function setSlaveNode(m: number, node: NonNullable<TtyRecord['slaveNode']>): void {
  const n = native();
  const index = n.ptyIndex(m);
  const fd = n.openRaw(`/dev/pts/${index}`, O_PATH | O_NOFOLLOW);
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isCharacterDevice() || (major(st.rdev) - PTS_MAJOR_FIRST) * 256 + minor(st.rdev) !== index) {
      throw new Error(`/dev/pts/${index} is not the slave of the pair just opened`);
    }
    // chown(2) and chmod(2) through /proc/self/fd/N act on that very node (an O_PATH
    // descriptor takes neither fchown nor fchmod).
    chownSync(`/proc/self/fd/${fd}`, node.uid, node.gid);
    chmodSync(`/proc/self/fd/${fd}`, node.mode);
  } finally {
    n.closeFd(fd);
  }
}

function openSlave(rec: TtyRecord, ctx: OpenContext): number | typeof NOT_YET {
  const m = ctx.opened(rec.master!);
  if (m === undefined) return NOT_YET;
  const n = native();
  const locked = n.ptyLocked(m) === 1;
  if (locked) n.ptySetLocked(m, 0);
  try {
    return n.ptyPeer(m, (rec.flags & KEPT_FLAGS) | O_NOCTTY);
  } finally {
    if (locked) n.ptySetLocked(m, 1);
  }
}

/**
 * A container's terminal: a new pair in the container's devpts (its /dev/ptmx, resolved in
 * the container's root, must be the ptmx device), made once for all the records of the old
 * pair; its master goes to `onConsoleMaster`, the tree gets a slave.
 */
function openConsole(rec: TtyRecord, ctx: OpenContext): number {
  const give = ctx.options.onConsoleMaster;
  if (!give) {
    throw new FerryError('EUNSUPPORTED', `file ${rec.id} of the image is the container's terminal /dev/pts/${rec.index}, whose master was held `
      + 'outside the container: restore it with --console-socket (runc restore, ferry-runtime restore), which receives the new master');
  }
  const n = native();
  const pairs = ctx.scratch<number>('tty-console');
  let m = pairs.get(String(rec.index));
  if (m === undefined) {
    const { root } = placeOf(rec);
    m = reopenIn(root, '/dev/ptmx', O_RDWR | O_NOCTTY, `the container's /dev/ptmx (for file ${rec.id} of the image)`,
      (st) => (st.isCharacterDevice() && major(st.rdev) === TTYAUX_MAJOR && minor(st.rdev) === PTMX_MINOR ? undefined : 'is not the pseudoterminal multiplexor (5:2)'));
    ctx.hold(m);
    n.ptySetLocked(m, 0);
    n.ttySetTermios(m, encodeTermios(rec.termios!));
    const w = rec.winsize!;
    n.ttySetWinsize(m, w.row, w.col, w.xpixel, w.ypixel);
    pairs.set(String(rec.index), m);
    give(steal(process.pid, m)); // a copy of its own
  }
  return n.ptyPeer(m, (rec.flags & KEPT_FLAGS) | O_NOCTTY);
}

/**
 * /dev/console, a virtual console or a serial line: the same path, in the process's recorded
 * root, if it is a character device with the recorded major:minor (checked through O_PATH
 * before the driver's open runs; opened non-blocking, so that a serial line waits for no
 * carrier, then given the recorded flags).
 */
function openDevice(rec: TtyRecord): number {
  const n = native();
  const { root, path } = placeOf(rec);
  const want = rec.device;
  if (!want || !isMachineTerminal(want.major, want.minor)) {
    throw new FerryError('EIMAGE', `image: terminal (file ${rec.id}) has no valid device number: it must be /dev/console (5:1) or a console or serial line (4:N)`);
  }
  const fd = reopenIn(root, path, (rec.flags & O_ACCMODE) | O_NOCTTY | O_NONBLOCK, `terminal (file ${rec.id} of the image)`,
    (st) => (st.isCharacterDevice() && major(st.rdev) === want.major && minor(st.rdev) === want.minor
      ? undefined : `is not the character device ${want.major}:${want.minor} it was`));
  try {
    n.setFl(fd, rec.flags & (O_NONBLOCK | O_APPEND));
    if (rec.termios) n.ttySetTermios(fd, encodeTermios(rec.termios));
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

function openExternal(rec: TtyRecord, ctx: OpenContext): number {
  if (!ctx.options.shellJob) {
    throw new FerryError('EUNSUPPORTED',
      `file ${rec.id} of the image is the terminal ${rec.path}, outside the checkpointed tree: restore with --shell-job to reopen it`);
  }
  const n = native();
  // Resolved inside the process's recorded root (confined.ts) to an O_PATH descriptor, which
  // opens nothing; only a terminal is then opened, through that descriptor.
  const { root, path } = placeOf(rec);
  const fd = reopenIn(root, path, (rec.flags & KEPT_FLAGS) | O_NOCTTY, `terminal (file ${rec.id} of the image)`,
    (st) => (st.isCharacterDevice() && isTerminal(st.rdev) ? undefined : 'is not a terminal here'));
  try {
    if (rec.termios) n.ttySetTermios(fd, encodeTermios(rec.termios));
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

/** In the task, once its descriptors are installed: the session leader takes its terminal back. */
function installed(rec: TtyRecord, task: TaskContext): void {
  const c = rec.ctty;
  if (!c || rec.role === 'master') return;
  const t = task.tracee;
  const fg = (): bigint => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(c.foreground!);
    return task.scratch.put(b);
  };
  if (c.session === task.pid) {
    try {
      t.syscall(SYS.ioctl, task.fd, TIOCSCTTY, 0);
      if (c.foreground !== null) t.syscall(SYS.ioctl, task.fd, TIOCSPGRP, fg());
    } catch (err) {
      throw new FerryError('ERESTORE',
        `cannot make ${rec.path} the controlling terminal of session ${c.session} again (fd ${task.fd} of pid ${task.pid}): ${describeCause(err)}`
        + (rec.role === 'external' || rec.role === 'device' ? ' (is it the controlling terminal of another session now?)' : ''), { cause: err });
    }
  } else if (c.session !== null && c.foreground !== null) {
    // A member of the session holds the terminal (its leader may hold none: it took it right
    // after setsid, takeControllingTerminal, and the member inherited it at fork). The
    // foreground group is set by a holder in the session (another may hold it too, whose
    // controlling terminal it is not); once per terminal.
    if (Number(t.syscall(SYS.getsid, 0)) !== c.session) return;
    const done = task.open.scratch<boolean>('tty-foreground');
    if (done.has(String(rec.id))) return;
    done.set(String(rec.id), true);
    try {
      t.syscall(SYS.ioctl, task.fd, TIOCSPGRP, fg());
    } catch (err) {
      throw new FerryError('ERESTORE', `cannot make group ${c.foreground} the foreground of ${rec.path} again (fd ${task.fd} of pid ${task.pid}): ${describeCause(err)}`, { cause: err });
    }
  } else if (c.session === null && c.foreground !== null) {
    // A shell job: the session is restore's own; the terminal is its controlling terminal
    // only when ferry runs on it. Then the tree's group becomes the foreground group again.
    const done = task.open.scratch<boolean>('tty-foreground');
    if (done.has(String(rec.id))) return;
    done.set(String(rec.id), true);
    t.trySyscall(SYS.ioctl, task.fd, TIOCSPGRP, fg());
  }
}

/**
 * Runs `fn` in task `t` with a copy of the controller's descriptor `cfd` (pidfd_getfd(2)),
 * closed again after. The pidfd of ferry is opened here, or handed in (inside a container
 * ferry's pid is not visible); it must still be open.
 */
function withControllerCopy(t: Tracee, cfd: number, fn: (fd: number) => void, controllerPidfd?: number): void {
  const pidfd = controllerPidfd ?? Number(t.syscall(SYS.pidfd_open, process.pid, 0));
  try {
    const fd = Number(t.syscall(SYS.pidfd_getfd, pidfd, cfd, 0));
    try {
      fn(fd);
    } finally {
      t.syscall(SYS.close, fd);
    }
  } finally {
    if (controllerPidfd === undefined) t.syscall(SYS.close, pidfd);
  }
}

/**
 * For restore/tree.ts: the session leader `pid`, just after its setsid()
 * and before it forks anyone, takes the terminal its session had as controlling terminal.
 * Members of a session get their controlling terminal only by inheriting it at fork(2), so
 * TIOCSCTTY from the `installed` hook (after the whole tree exists) reaches the leader alone.
 * The terminal is pulled from the controller with pidfd_getfd(2) and closed again: the task
 * has no descriptors yet. Returns whether a terminal was taken.
 */
export function takeControllingTerminal(t: Tracee, pid: number, files: RestoreFiles, controllerPidfd?: number): boolean {
  for (const [id, cfd] of files.opened) {
    const rec = files.ctx.record(id) as TtyRecord | undefined;
    if (rec?.kind !== 'tty' || rec.role === 'master' || rec.ctty?.session !== pid) continue;
    withControllerCopy(t, cfd, (fd) => {
      try {
        t.syscall(SYS.ioctl, fd, TIOCSCTTY, 0);
      } catch (err) {
        throw new FerryError('ERESTORE', `cannot make ${rec.path} the controlling terminal of session ${pid} again: ${describeCause(err)}`, { cause: err });
      }
    }, controllerPidfd);
    return true;
  }
  return false;
}

/**
 * The lines of a master's input (queueLines inserts them): each a whole number of bytes of
 * `input`, ended by a line-ending byte of the termios unless VEOF ended it, all within what
 * n_tty holds, the termios canonical.
 */
function checkLines(rec: TtyRecord, bad: (why: string) => never): void {
  const lines = rec.inputLines;
  if (!Array.isArray(lines) || lines.length > N_TTY_HELD) bad('has invalid input lines');
  if (!canonical(rec.termios!)) bad('has input lines, but its termios is not canonical (ICANON)');
  const data = Buffer.from(rec.input ?? '', 'base64');
  let off = 0, held = 0, before = 0;
  for (const l of lines!) {
    if (typeof l !== 'object' || l === null || !Number.isInteger(l.length) || l.length < 0 || typeof l.eof !== 'boolean'
      || (!l.eof && l.length === 0)) bad('has an invalid input line');
    off += l.length;
    held += l.length + (l.eof ? 1 : 0);
    if (off > data.length || held > heldRoom(before++)) bad(`has input lines beyond its input or beyond the ${N_TTY_HELD + 1} bytes a line discipline holds`);
    if (!l.eof && !endsLine(data[off - 1]!, rec.termios!)) bad('has an input line that no line-ending byte of its termios ends');
  }
}

/** A foreground group no process of the tree is in (emptyForegrounds). */
export interface EmptyForeground {
  /** The session leader, which sets it. */
  leader: number;
  pgid: number;
  /** The terminal's record and the controller's descriptor of it. */
  id: number;
  cfd: number;
  path: string;
}

/**
 * For restore/tree.ts: the controlling terminals no process of the tree holds whose foreground
 * group no process of the tree is in (unheldTerminals kept it: no process was in it any more).
 * Such a group is made around a process with its id, forked by the session's leader (tree.ts
 * holdGroup, as for a group whose leader had exited); the leader makes it the foreground group
 * (setEmptyForeground) and the process exits: the terminal keeps the group, empty, as before.
 */
export function emptyForegrounds(files: RestoreFiles, groups: ReadonlySet<number>): EmptyForeground[] {
  const out: EmptyForeground[] = [];
  for (const [id, cfd] of files.opened) {
    const rec = files.ctx.record(id);
    const pgid = rec && emptyForegroundOf(rec, groups);
    if (pgid !== undefined) out.push({ leader: (rec as TtyRecord).ctty!.session!, pgid, id, cfd, path: (rec as TtyRecord).path });
  }
  return out;
}

/**
 * The foreground group of the controlling terminal `rec` (a slave's record) when no process of
 * the tree is in it (`groups`: the tree's group ids), else undefined: what emptyForegrounds
 * makes, and what restore.ts checks is free before anything is made.
 */
export function emptyForegroundOf(rec: FileRecord, groups: ReadonlySet<number>): number | undefined {
  const c = rec.kind === 'tty' && (rec as TtyRecord).role === 'slave' ? (rec as TtyRecord).ctty : undefined;
  return c && c.session !== null && c.foreground !== null && !groups.has(c.foreground) ? c.foreground : undefined;
}

/**
 * The session leader `t` makes group `e.pgid` (a process with its id is in it for the moment)
 * the foreground group of its controlling terminal (TIOCSPGRP through a copy of the
 * controller's descriptor); setForegroundGroups then leaves that terminal alone. `put` writes
 * the argument into the task.
 */
export function setEmptyForeground(t: Tracee, e: EmptyForeground, files: RestoreFiles, put: (data: Buffer) => bigint, controllerPidfd?: number): void {
  withControllerCopy(t, e.cfd, (fd) => {
    const b = Buffer.alloc(4);
    b.writeInt32LE(e.pgid);
    try {
      t.syscall(SYS.ioctl, fd, TIOCSPGRP, put(b));
    } catch (err) {
      throw new FerryError('ERESTORE', `cannot make group ${e.pgid} the foreground of ${e.path} again (session ${e.leader}): ${describeCause(err)}`, { cause: err });
    }
  }, controllerPidfd);
  files.ctx.scratch<boolean>('tty-empty-foreground').set(String(e.id), true);
}

/**
 * For restore/restore.ts, once every process and group of the tree exists: each session
 * leader sets the foreground group of the controlling terminal it took after its setsid()
 * (takeControllingTerminal) when no process of the tree holds that terminal open
 * (addUnheldTerminals), for which no `installed` hook runs. TIOCSPGRP needs a descriptor of
 * the terminal in a process whose controlling terminal it is: the leader pulls the
 * controller's with pidfd_getfd(2) for that one call. A terminal some task holds gets its
 * foreground group from `installed`, as before. `held`: the file ids the tree's descriptors
 * refer to; `task`: a restored process by pid (its stub and scratch area). Never in a
 * container (checkUnheldTerminals refused it): ferry's pid is visible, and its pidfd opened here.
 */
export function setForegroundGroups(files: RestoreFiles, held: ReadonlySet<number>,
  task: (pid: number) => { t: Tracee; scratch: Scratch } | undefined): void {
  for (const [id, cfd] of files.opened) {
    const rec = files.ctx.record(id) as TtyRecord | undefined;
    const c = rec?.kind === 'tty' && rec.role === 'slave' && !held.has(id) ? rec.ctty : undefined;
    if (!c || c.session === null || c.foreground === null) continue;
    if (files.ctx.scratch<boolean>('tty-empty-foreground').has(String(id))) continue; // set already (setEmptyForeground)
    const leader = task(c.session);
    if (!leader) throw new Error(`the leader ${c.session} of the session of ${rec!.path} was not restored`);
    const { t, scratch } = leader;
    withControllerCopy(t, cfd, (fd) => {
      try {
        const b = Buffer.alloc(4);
        b.writeInt32LE(c.foreground!);
        scratch.reset();
        t.syscall(SYS.ioctl, fd, TIOCSPGRP, scratch.put(b));
      } catch (err) {
        throw new FerryError('ERESTORE', `cannot make group ${c.foreground} the foreground of ${rec!.path} again (session ${c.session}): ${describeCause(err)}`, { cause: err });
      }
    });
  }
}

/**
 * Checks, before anything is made, the records of terminals no descriptor of the tree holds
 * (addUnheldTerminals): the controlling terminal of a session whose leader is a process of the
 * tree, outside a container (a checkpoint never records one there, and inside one the leader
 * could not reach ferry's copy: setForegroundGroups). `held`: the file ids the tree's
 * descriptors refer to; `pids`: the tree's processes.
 */
export function checkUnheldTerminals(files: readonly FileRecord[], held: ReadonlySet<number>, pids: ReadonlySet<number>, container: boolean,
  groups: ReadonlySet<number> = pids): void {
  for (const f of files) {
    const rec = f as TtyRecord;
    if (f.kind !== 'tty' || rec.role !== 'slave' || held.has(f.id) || !rec.ctty) continue;
    const bad = (why: string): never => {
      throw new FerryError('EIMAGE', `image: terminal (file ${f.id}), held by no process of the tree, ${why}`);
    };
    if (container) bad('is in a container\'s image, where a checkpoint records none');
    const c = rec.ctty;
    if (c.session === null || !pids.has(c.session)) bad(`is the controlling terminal of session ${c.session ?? '(none)'}, whose leader is no process of the image`);
    // A foreground group no process of the image is in is made around a process with its id
    // (emptyForegrounds): an id no process of the image has.
    if (c.foreground !== null && !groups.has(c.foreground) && pids.has(c.foreground)) {
      bad(`has group ${c.foreground} in the foreground, which no process of the image is in, though one has its id`);
    }
  }
}

/** Shape checks (the image is input). */
function check(rec: TtyRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: terminal (file ${rec.id}) ${why}`);
  };
  if (!['master', 'slave', 'external', 'console', 'device'].includes(rec.role)) bad('has an unknown role');
  if (typeof rec.path !== 'string' || !rec.path.startsWith('/')) bad('has no valid path');
  if (!Number.isSafeInteger(rec.flags) || (rec.flags & O_ACCMODE) === 3) bad('has invalid flags');
  const termios = (t: unknown): void => {
    const x = t as Termios;
    if (typeof t !== 'object' || t === null || !Array.isArray(x.cc) || x.cc.length !== NCCS
      || !x.cc.every((c) => Number.isInteger(c) && c >= 0 && c < 256)
      || ![x.iflag, x.oflag, x.cflag, x.lflag, x.ispeed, x.ospeed].every((v) => Number.isInteger(v) && v >= 0 && v <= 0xffffffff)
      || !Number.isInteger(x.line) || x.line < 0 || x.line > 255) bad('has invalid termios');
  };
  const queued = (s: unknown, which: string): void => {
    if (s !== undefined && (typeof s !== 'string' || s.length > Math.ceil(MAX_REQUEUED / 3) * 4)) bad(`has invalid queued ${which}`);
    // More than the pair holds could not be queued again (MAX_REQUEUED).
    if (typeof s === 'string' && Buffer.byteLength(s, 'base64') > MAX_REQUEUED) {
      bad(`has more queued ${which} than a pseudoterminal holds (${MAX_REQUEUED} bytes)`);
    }
  };
  if (rec.ctty != null) {
    const ok = (v: unknown): boolean => v === null || (Number.isSafeInteger(v) && (v as number) > 0);
    if (!ok(rec.ctty.session) || !ok(rec.ctty.foreground)) bad('has an invalid controlling terminal state');
  }
  const pair = (): void => {
    if (!Number.isSafeInteger(rec.index) || rec.index! < 0 || rec.index! > MAX_PTS_INDEX) bad('has no valid pts index');
    termios(rec.termios);
    const w = rec.winsize;
    if (!w || ![w.row, w.col, w.xpixel, w.ypixel].every((v) => Number.isInteger(v) && v >= 0 && v < 65536)) bad('has an invalid window size');
  };
  if (rec.role === 'console') {
    pair();
  } else if (rec.role === 'master') {
    pair();
    queued(rec.input, 'input');
    queued(rec.output, 'output');
    if (rec.inputLines !== undefined) checkLines(rec, bad);
    if (![rec.exclusive, rec.masterExclusive].every((v) => v === undefined || typeof v === 'boolean')) bad('has an invalid exclusive mode');
    const node = rec.slaveNode;
    // Permission bits only: no set-user-ID, set-group-ID or sticky bit from an image.
    if (node !== undefined && (typeof node !== 'object' || node === null || !Number.isInteger(node.mode) || node.mode < 0 || node.mode > 0o777
      || ![node.uid, node.gid].every((v) => Number.isInteger(v) && v >= 0 && v < 2 ** 32 - 1))) bad('has an invalid slave owner or mode');
    if (!existsSync('/dev/ptmx')) throw new FerryError('ENOENT', `/dev/ptmx does not exist here: pseudoterminals cannot be created (file ${rec.id})`);
    // Input lines are inserted with TIOCSTI (queueLines): asked now, before anything is made.
    if (rec.inputLines !== undefined && rec.input !== undefined && rec.input !== '' && !mayInsertInput()) {
      throw new FerryError('EPERM', `terminal /dev/pts/${rec.index} (file ${rec.id} of the image) has input queued in canonical mode, and queueing `
        + `it again line by line (TIOCSTI) needs ${insertNeeds()}`);
    }
  } else if (rec.role === 'slave') {
    if (!Number.isSafeInteger(rec.master)) bad('names no master');
  } else {
    if (rec.termios !== undefined) termios(rec.termios);
    if (rec.path.includes('\0') || rec.path.length > 4096) bad('has no valid path');
    const dev = rec.device;
    if (rec.role === 'device' && (typeof dev !== 'object' || dev === null || !Number.isInteger(dev.major) || !Number.isInteger(dev.minor)
      || dev.minor < 0 || dev.minor > 0xfffff || !isMachineTerminal(dev.major, dev.minor))) {
      bad('has no valid device number: it must be /dev/console (5:1) or a console or serial line (4:N)');
    }
    // Resolved inside the process's recorded root (confined.ts), as open() will.
    const { root, path } = placeOf(rec);
    const st = statIn(root, path, `terminal (file ${rec.id} of the image)`);
    if (rec.role === 'device') {
      if (!st || !st.isCharacterDevice() || major(st.rdev) !== dev!.major || minor(st.rdev) !== dev!.minor) {
        throw new FerryError('ENOENT', `terminal ${shownIn(root, path)} (file ${rec.id} of the image, a device of the machine) `
          + `${st ? `is not the character device ${dev!.major}:${dev!.minor} here` : 'does not exist here'}: restore where it exists with that number`, { path: rec.path });
      }
    } else if (!st || !st.isCharacterDevice() || !isTerminal(st.rdev)) {
      throw new FerryError('ENOENT', `terminal ${shownIn(root, path)} (file ${rec.id} of the image, outside the checkpointed tree) `
        + `${st ? 'is not a terminal here' : 'does not exist here'}: restore where it exists (--shell-job reopens the same path)`, { path: rec.path });
    }
  }
}

export const tty: FileKind<TtyRecord> = {
  kind: 'tty',
  // The controlling terminal and foreground group are set by a task holding it (installed).
  needsHolder: true,

  matches(fd: FdDesc): boolean {
    return fd.link.startsWith('/') && fd.stat.isCharacterDevice() && isTerminal(fd.stat.rdev);
  },

  key(fd: FdDesc): string {
    return `tty:${fd.stat.rdev}:${fd.fdinfo.lines.get('tty-index')?.[0] ?? ''}`;
  },

  dump,
  check,

  open(rec: TtyRecord, ctx: OpenContext): number | typeof NOT_YET {
    try {
      if (rec.role === 'master') return openMaster(rec);
      if (rec.role === 'slave') return openSlave(rec, ctx);
      if (rec.role === 'console') return openConsole(rec, ctx);
      if (rec.role === 'device') return openDevice(rec);
      return openExternal(rec, ctx);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore terminal ${rec.path} (file ${rec.id}): ${describeCause(err)}`, { cause: err });
    }
  },

  installed,
};
