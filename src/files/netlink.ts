/**
 * Netlink sockets (netlink(7)): kind 'netlink', as the kernel names AF_NETLINK. Raw or
 * datagram (the same thing for netlink), of any protocol the kernel offers (NETLINK_ROUTE,
 * NETLINK_GENERIC, NETLINK_KOBJECT_UEVENT…).
 *
 * Dump. sock_diag(7) (NETLINK_DIAG, sockdiag.ts) gives the socket's protocol, bound port id,
 * connected destination (port id and group), multicast groups (the whole membership bitmap,
 * groups past 32 included, whether they were joined through bind(2)'s mask or
 * NETLINK_ADD_MEMBERSHIP), whether a dump is running and how many bytes wait unread. It lists
 * only sockets that are bound or in a group: one it does not list whose getsockname(2) shows
 * port id 0 was never bound (type and protocol from SO_TYPE, SO_PROTOCOL); one it does not
 * list with a port id belongs to another network namespace and is refused. The socket
 * options are read with getsockopt(2) on a pidfd_getfd(2) copy (reading changes
 * nothing): NETLINK_PKTINFO, NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS,
 * NETLINK_LISTEN_ALL_NSID, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK,
 * SO_SNDBUF/SO_RCVBUF and a classic BPF filter (SO_GET_FILTER, with SO_LOCK_FILTER; an eBPF
 * program cannot be read back and is refused).
 *
 * Restore. socket(2) with the same type and protocol, options set, then bind(2) to the same
 * port id: the kernel lets any free id be asked for, so a socket the kernel autobound (to its
 * process's pid, which the restore gives back) and one bound to an explicit id both get theirs
 * again; a socket never bound stays unbound (the kernel autobinds it on its first send). Then
 * NETLINK_ADD_MEMBERSHIP per group and connect(2) to the destination.
 *
 * Queued messages (replies and notifications not read yet) are refused, or dropped with a
 * warning with --skip-in-flight: none can be put back as it was.
 * - A message's sender is the sending socket's port id (netlink_sendmsg; recvmsg's nl_pid).
 *   The kernel's is 0, a port no user socket can take (bind(2) with 0 autobinds), so a reply
 *   or notification sent again by ferry would come from a user port, and programs drop those
 *   (iproute2's rtnl_talk and systemd's sd-netlink check that the sender is the kernel).
 *   Root may send to any port id of any protocol (NL_CFG_F_NONROOT_SEND or CAP_NET_ADMIN),
 *   which is all a user-space message (NETLINK_USERSOCK) would need, but:
 * - the queue can only be read whole by consuming it: netlink_recvmsg peeks only its first
 *   message (skb_recv_datagram, no SO_PEEK_OFF), so a failed or --leave-running checkpoint
 *   could not give the original its messages back as they were.
 * A process waiting for a reply that was dropped would wait forever; hence the refusal.
 * Refused too: a socket with a dump in progress (NLM_F_DUMP: the kernel holds the rest of
 * the dump, it cannot be rebuilt).
 * Sockets are recreated in ferry's network namespace (a container's: its own).
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode, FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_NONBLOCK } from '../proc/fcntl.js';
import {
  applyBuffers, applyFilter, buffersOf, filterOf, lockFilter, MAX_SOCK_BUFFER, netlinkDiag, validFilterFields, type NetlinkDiag,
} from './sockdiag.js';
import type { DumpContext, FdDesc, FileKind } from './types.js';

const AF_NETLINK = 16, SOCK_DGRAM = 2, SOCK_RAW = 3;
const SOL_NETLINK = 270;
const NETLINK_ADD_MEMBERSHIP = 1;
/** NDIAG_FLAG_CB_RUNNING: a dump's callback is running on the socket. NETLINK_CONNECTED: sk_state after connect(2). */
const NDIAG_FLAG_CB_RUNNING = 1, NETLINK_CONNECTED = 1;
/** Highest protocol (MAX_LINKS - 1) and group number accepted from an image. */
const MAX_PROTOCOL = 31, MAX_GROUP = 1 << 16, MAX_GROUPS = 4096;

/** Boolean socket options (SOL_NETLINK), by the name stored in the image. */
export const NETLINK_OPTIONS: Readonly<Record<string, number>> = {
  pktinfo: 3, broadcastError: 4, noEnobufs: 5, listenAllNsid: 8, capAck: 10, extAck: 11, getStrictChk: 12,
};

/** Protocol names (linux/netlink.h), for messages. */
const PROTOCOLS: Readonly<Record<number, string>> = {
  0: 'route', 2: 'usersock', 3: 'firewall', 4: 'sock_diag', 5: 'nflog', 6: 'xfrm', 7: 'selinux', 8: 'iscsi',
  9: 'audit', 10: 'fib_lookup', 11: 'connector', 12: 'netfilter', 13: 'ip6_fw', 14: 'dnrtmsg',
  15: 'kobject_uevent', 16: 'generic', 18: 'scsitransport', 19: 'ecryptfs', 20: 'rdma', 21: 'crypto', 22: 'smc',
};

/** One netlink socket in files.json (docs/image-format.md). */
export interface NetlinkRecord extends FileRecord {
  kind: 'netlink';
  /** Socket inode at dump (identity; informational). */
  ino: string;
  /** O_NONBLOCK of the open file. */
  flags: number;
  /** SOCK_RAW or SOCK_DGRAM (netlink treats both alike). */
  type: 'raw' | 'dgram';
  /** NETLINK_ROUTE 0, NETLINK_GENERIC 16…: 0..31. */
  protocol: number;
  /** Bound port id (nl_pid); 0 when the socket was never bound. */
  portid: number;
  /** Multicast groups the socket is a member of, 1-based, ascending. */
  groups: number[];
  /** Connected destination (connect(2)): a port id and a group number; null when not connected. */
  dst: { portid: number; group: number } | null;
  /** Boolean SOL_NETLINK options that are on, by name (NETLINK_OPTIONS). */
  opts: string[];
  /** SO_SNDBUF and SO_RCVBUF as getsockopt shows them. */
  sndbuf: number;
  rcvbuf: number;
  /** Classic BPF filter (SO_ATTACH_FILTER), base64 of its instructions. */
  filter?: string;
  /** SO_LOCK_FILTER was set (only with a filter). */
  lockFilter?: true;
}

const protoName = (p: number): string => PROTOCOLS[p] ?? `protocol ${p}`;

function describe(what: { protocol: number; portid: number; dst: NetlinkRecord['dst'] }): string {
  const dst = what.dst ? `, connected to port id ${what.dst.portid}${what.dst.group ? ` group ${what.dst.group}` : ''}` : '';
  return `netlink ${protoName(what.protocol)} socket (${what.portid ? `port id ${what.portid}` : 'unbound'}${dst})`;
}

function isNetlink(d: FdDesc): boolean {
  if (!d.link.startsWith('socket:[')) return false;
  try {
    return native().sockProtoName(`/proc/${d.pid}/fd/${d.fd}`) === 'NETLINK';
  } catch {
    return false;
  }
}

/** A dump in progress (NLM_F_DUMP) keeps its state in the kernel: it cannot be rebuilt. */
function refuseDump(d: FdDesc, diag: NetlinkDiag, shown: string): void {
  if (diag.flags & NDIAG_FLAG_CB_RUNNING) {
    throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} is in the middle of a dump (NLM_F_DUMP) whose rest the kernel holds; checkpoint it once the dump is read`);
  }
}

/** What a record of `diag` would show of the socket, for messages. */
const shownOf = (diag: NetlinkDiag, dst: NetlinkRecord['dst']): string => describe({ protocol: diag.protocol, portid: diag.portid, dst });

const dstOf = (diag: NetlinkDiag): NetlinkRecord['dst'] => (diag.state === NETLINK_CONNECTED || diag.dstPortid !== 0 || diag.dstGroup !== 0
  ? { portid: diag.dstPortid, group: diag.dstGroup } : null);

function dumpNetlink(d: FdDesc, ctx: DumpContext): Omit<NetlinkRecord, 'id' | 'kind'> {
  const n = native();
  const refuse = (why: string): never => {
    throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${why}`);
  };
  const g = ctx.grab(d);
  // sock_diag lists the sockets that are bound or in a group; one never bound and in no
  // group is not listed, and everything about it is its type and protocol.
  const diag: NetlinkDiag | undefined = netlinkDiag().get(Number(d.stat.ino));
  if (!diag && n.netlinkName(g).portid !== 0) {
    refuse(`netlink socket ${d.link} is unknown to sock_diag (another network namespace?); run the process in ferry's or checkpoint its container`);
  }
  const protocol = diag?.protocol ?? n.getSockInt(g, SOL_SOCKET, SO.PROTOCOL);
  const dst = diag ? dstOf(diag) : null;
  const shown = diag ? shownOf(diag, dst) : describe({ protocol, portid: 0, dst });
  if (diag) refuseDump(d, diag, shown);
  try {
    const opts = Object.entries(NETLINK_OPTIONS).filter(([, opt]) => n.getSockInt(g, SOL_NETLINK, opt) !== 0).map(([name]) => name);
    const filter = filterOf(g, (why) => refuse(`${shown} ${why}`));
    if (diag && diag.rmem > 0 && !ctx.options.skipInFlight) {
      refuse(`${shown} holds ${diag.rmem} bytes of messages not read yet (replies or notifications), which cannot be queued again as the kernel's; checkpoint it once the program has read them, or drop them with --skip-in-flight`);
    }
    if (diag && diag.rmem > 0) {
      ctx.warn(`pid ${d.pid} fd ${d.fd}: ${shown}: ${diag.rmem} bytes of queued messages are not kept (--skip-in-flight; replies and notifications cannot be queued again)`);
    }
    // sock_diag shows the destination group as a number (connect(2) keeps a mask's lowest group).
    return {
      ino: d.stat.ino.toString(), flags: d.fdinfo.flags & O_NONBLOCK,
      type: n.getSockInt(g, SOL_SOCKET, SO.TYPE) === SOCK_DGRAM ? 'dgram' : 'raw',
      protocol, portid: diag?.portid ?? 0, groups: diag?.groups ?? [], dst, opts, ...buffersOf(g),
      ...filter,
    };
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `pid ${d.pid} fd ${d.fd}: ${shown}: ${(err as Error).message}`, { cause: err });
  }
}

function openNetlink(rec: NetlinkRecord): number {
  const n = native();
  const fd = n.socket(AF_NETLINK, rec.type === 'dgram' ? SOCK_DGRAM : SOCK_RAW, rec.protocol);
  try {
    for (const name of rec.opts) n.setSockInt(fd, SOL_NETLINK, NETLINK_OPTIONS[name]!, 1);
    applyBuffers(fd, rec);
    applyFilter(fd, rec);
    if (rec.portid !== 0) {
      try {
        n.netlinkBind(fd, rec.portid, 0);
      } catch (err) {
        if (errnoCode(err) !== 'EADDRINUSE') throw err;
        throw new FerryError('EOPEN', `cannot restore ${describe(rec)} (file ${rec.id}): port id ${rec.portid} is taken by another netlink socket of this protocol (ss -f netlink shows it); stop its holder or restore elsewhere`, { cause: err });
      }
    }
    for (const group of rec.groups) n.setSockInt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group);
    if (rec.dst) n.netlinkConnect(fd, rec.dst.portid, rec.dst.group > 0 && rec.dst.group <= 32 ? 1 << (rec.dst.group - 1) : 0);
    lockFilter(fd, rec);
    n.setFl(fd, rec.flags & O_NONBLOCK);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

function checkRecord(rec: NetlinkRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: netlink socket (file ${rec.id}) ${why}`);
  };
  const u32 = (v: unknown): boolean => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffffffff;
  if (rec.type !== 'raw' && rec.type !== 'dgram') bad('has an invalid type');
  if (!Number.isInteger(rec.protocol) || rec.protocol < 0 || rec.protocol > MAX_PROTOCOL) bad('has an invalid protocol');
  if (!u32(rec.portid)) bad('has an invalid port id');
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  if (!Array.isArray(rec.groups) || rec.groups.length > MAX_GROUPS
    || !rec.groups.every((x) => Number.isInteger(x) && x >= 1 && x <= MAX_GROUP)) bad('has invalid groups');
  if (rec.dst !== null && (typeof rec.dst !== 'object' || !u32(rec.dst.portid)
    || !Number.isInteger(rec.dst.group) || rec.dst.group < 0 || rec.dst.group > 32)) bad('has an invalid destination');
  if (!Array.isArray(rec.opts) || rec.opts.length > Object.keys(NETLINK_OPTIONS).length) bad('has invalid options');
  for (const o of rec.opts) if (typeof o !== 'string' || !Object.hasOwn(NETLINK_OPTIONS, o)) bad(`has an unknown option ${JSON.stringify(String(o).slice(0, 40))}`);
  for (const b of [rec.sndbuf, rec.rcvbuf]) if (!Number.isInteger(b) || b < 0 || b > MAX_SOCK_BUFFER) bad('has an invalid buffer size');
  if (!validFilterFields(rec)) bad('has an invalid filter');
}

/** The 'netlink' kind (registry.ts). */
export const netlink: FileKind<NetlinkRecord> = {
  kind: 'netlink',

  matches: isNetlink,

  precheck(d: FdDesc): void {
    // Before the tree is touched; the dump looks again once it is frozen.
    const diag = netlinkDiag().get(Number(d.stat.ino));
    if (diag) refuseDump(d, diag, shownOf(diag, dstOf(diag)));
  },

  key(fd: FdDesc): string {
    return `netlink:${fd.stat.ino}`;
  },

  dump: dumpNetlink,

  check: checkRecord,

  open(rec: NetlinkRecord): number {
    try {
      return openNetlink(rec);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${describe(rec)} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
