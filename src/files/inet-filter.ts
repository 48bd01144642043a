/**
 * Classic BPF socket filters of inet sockets (socket(7) SO_ATTACH_FILTER, SO_LOCK_FILTER;
 * Documentation/networking/filter.rst). The kernel keeps the classic program a filter was
 * attached with, and SO_GET_FILTER returns it as struct sock_filter[]; restore attaches it
 * again, then locks it when the original was locked (a locked filter can be neither replaced
 * nor detached, so the lock comes last). An eBPF program (SO_ATTACH_BPF) has no classic form:
 * SO_GET_FILTER answers EACCES and the socket is refused.
 */
import { SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import { native } from '../native/binding.js';

const SO_LOCK_FILTER = 44;
/** BPF_MAXINSNS: the kernel takes no longer classic program; 8 bytes per instruction. */
export const MAX_FILTER_INSNS = 4096;

/** A socket's classic filter: its instructions (base64 of struct sock_filter[]), and the lock. */
export interface SockFilter {
  /** '' when only the lock is set (SO_LOCK_FILTER without a filter). */
  insns: string;
  locked: boolean;
}

/** The filter of socket `g`, undefined when it has none and no lock; `where` names it in a refusal. */
export function dumpFilter(g: number, where: string): SockFilter | undefined {
  const n = native();
  let insns: Buffer;
  try {
    insns = n.getSockFilter(g);
  } catch (err) {
    if (errnoCode(err) !== 'EACCES') throw err;
    throw new FerryError('EUNSUPPORTED',
      `${where} has an eBPF socket filter (SO_ATTACH_BPF), which the kernel cannot give back to be attached again; detach it (SO_DETACH_BPF) or use a classic filter (SO_ATTACH_FILTER)`);
  }
  const locked = n.getSockInt(g, SOL_SOCKET, SO_LOCK_FILTER) !== 0;
  if (insns.length === 0 && !locked) return undefined;
  return { insns: insns.toString('base64'), locked };
}

/** Attaches the filter to `fd` unless it has it already, then locks it. */
export function applyFilter(fd: number, f: SockFilter): void {
  const n = native();
  const want = Buffer.from(f.insns, 'base64');
  if (want.length > 0 && !n.getSockFilter(fd).equals(want)) n.attachSockFilter(fd, want);
  if (f.locked && n.getSockInt(fd, SOL_SOCKET, SO_LOCK_FILTER) === 0) n.setSockInt(fd, SOL_SOCKET, SO_LOCK_FILTER, 1);
}

/** Shape and bounds of a record's filter (1 to 4096 instructions of 8 bytes, or none with the lock). */
export function checkFilter(f: unknown, bad: (why: string) => never): void {
  if (f === undefined) return;
  const x = f as SockFilter;
  if (typeof x !== 'object' || x === null || typeof x.locked !== 'boolean' || typeof x.insns !== 'string'
    || x.insns.length > Math.ceil((MAX_FILTER_INSNS * 8) / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(x.insns)) bad('has an invalid socket filter');
  const len = Buffer.from(x.insns, 'base64').length;
  if (len % 8 !== 0 || len > MAX_FILTER_INSNS * 8 || (len === 0 && !x.locked)) bad('has an invalid socket filter');
}
