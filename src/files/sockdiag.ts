/**
 * What the netlink and packet modules share: the kernel's description of their sockets through
 * sock_diag(7) (NETLINK_SOCK_DIAG; the native side only carries bytes, the layouts of
 * linux/netlink_diag.h and linux/packet_diag.h are read here), socket buffer sizes and classic
 * BPF filters.
 *
 * AF_NETLINK and AF_PACKET answer dumps only: every socket of the calling thread's network
 * namespace, one message each, picked out here by inode.
 */
import { SO, SOL_SOCKET } from '../arch/x86-64.js';
import { errnoCode } from '../errors.js';
import { native } from '../native/binding.js';

const AF_NETLINK = 16, AF_PACKET = 17;

/** A message's attributes (struct nlattr, 4-byte aligned) by type; the last one of a type wins. */
function attributes(buf: Buffer, offset: number): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let at = offset;
  while (at + 4 <= buf.length) {
    const len = buf.readUInt16LE(at), type = buf.readUInt16LE(at + 2) & 0x3fff;
    if (len < 4 || at + len > buf.length) break;
    out.set(type, buf.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

/** u32 array of an attribute (host order), at most `max` entries. */
const u32s = (b: Buffer | undefined, max = 64): number[] => {
  if (!b) return [];
  const n = Math.min(Math.floor(b.length / 4), max);
  return Array.from({ length: n }, (_, i) => b.readUInt32LE(i * 4));
};

/** SK_MEMINFO_RMEM_ALLOC (linux/sock_diag.h): bytes of queued receive buffers. */
const SK_MEMINFO_RMEM_ALLOC = 0;

/** One netlink socket as NETLINK_DIAG describes it (struct netlink_diag_msg + attributes). */
export interface NetlinkDiag {
  ino: number;
  /** SOCK_RAW 3 or SOCK_DGRAM 2. */
  type: number;
  protocol: number;
  /** NETLINK_CONNECTED 1, else 0. */
  state: number;
  portid: number;
  dstPortid: number;
  dstGroup: number;
  /** NETLINK_DIAG_GROUPS: group numbers (1-based) the socket is a member of. */
  groups: number[];
  /** NETLINK_DIAG_FLAGS: NDIAG_FLAG_CB_RUNNING 1, PKTINFO 2, BROADCAST_ERROR 4, NO_ENOBUFS 8, LISTEN_ALL_NSID 0x10, CAP_ACK 0x20. */
  flags: number;
  /** Bytes of queued messages (NETLINK_DIAG_MEMINFO). */
  rmem: number;
}

/** Every netlink socket of the thread's network namespace, by inode. */
export function netlinkDiag(): Map<number, NetlinkDiag> {
  // struct netlink_diag_req: family, protocol (NDIAG_PROTO_ALL 255), pad, ino, show, cookie[2]
  const req = Buffer.alloc(20);
  req.writeUInt8(AF_NETLINK, 0);
  req.writeUInt8(255, 1);
  // NDIAG_SHOW_MEMINFO 1 | NDIAG_SHOW_GROUPS 2 | NDIAG_SHOW_FLAGS 8
  req.writeUInt32LE(1 | 2 | 8, 8);
  const out = new Map<number, NetlinkDiag>();
  for (const m of native().sockDiagDump(req)) {
    if (m.length < 28) continue;
    const a = attributes(m, 28);
    const groups: number[] = [];
    const g = a.get(1); // NETLINK_DIAG_GROUPS: a bitmap of longs, little-endian here
    if (g) for (let i = 0; i < Math.min(g.length, 8192) * 8; i++) if (g[i >> 3]! & (1 << (i & 7))) groups.push(i + 1);
    const ino = m.readUInt32LE(16);
    out.set(ino, {
      ino, type: m.readUInt8(1), protocol: m.readUInt8(2), state: m.readUInt8(3), portid: m.readUInt32LE(4),
      dstPortid: m.readUInt32LE(8), dstGroup: m.readUInt32LE(12), groups,
      flags: a.get(4)?.readUInt32LE(0) ?? 0, rmem: u32s(a.get(0))[SK_MEMINFO_RMEM_ALLOC] ?? 0,
    });
  }
  return out;
}

/** struct packet_diag_ring (PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING). */
export interface PacketRing {
  blockSize: number;
  blockNr: number;
  frameSize: number;
  frameNr: number;
}

/** One packet socket as PACKET_DIAG describes it (struct packet_diag_msg + attributes). */
export interface PacketDiag {
  ino: number;
  /** SOCK_RAW 3, SOCK_DGRAM 2, SOCK_PACKET 10. */
  type: number;
  /** The protocol (host order): 0 when none. */
  protocol: number;
  /** PACKET_DIAG_INFO: bound interface index (0: all), TPACKET version, reserve, copy threshold, timestamp source, PDI_* flags. */
  info: { ifindex: number; version: number; reserve: number; copyThresh: number; tstamp: number; flags: number } | null;
  /** PACKET_DIAG_MCLIST: memberships (interface index, how many times added, PACKET_MR_* type, address). */
  mclist: Array<{ ifindex: number; count: number; type: number; addr: Buffer }>;
  rxRing: PacketRing | null;
  txRing: PacketRing | null;
  /** PACKET_DIAG_FANOUT: id | mode << 16 | flags << 24, as getsockopt(PACKET_FANOUT) gives it; null when none. */
  fanout: number | null;
  /** Bytes of queued packets (PACKET_DIAG_MEMINFO). */
  rmem: number;
}

const ring = (b: Buffer | undefined): PacketRing | null => (b && b.length >= 16
  ? { blockSize: b.readUInt32LE(0), blockNr: b.readUInt32LE(4), frameSize: b.readUInt32LE(8), frameNr: b.readUInt32LE(12) } : null);

/** Every packet socket of the thread's network namespace, by inode. */
export function packetDiag(): Map<number, PacketDiag> {
  // struct packet_diag_req: family, protocol (must be 0), pad, ino, show, cookie[2]
  const req = Buffer.alloc(20);
  req.writeUInt8(AF_PACKET, 0);
  // PACKET_SHOW_INFO 1 | MCLIST 2 | RING_CFG 4 | FANOUT 8 | MEMINFO 0x10
  req.writeUInt32LE(0x1f, 8);
  const out = new Map<number, PacketDiag>();
  for (const m of native().sockDiagDump(req)) {
    if (m.length < 16) continue;
    const a = attributes(m, 16);
    const i = a.get(0);
    const mc = a.get(1);
    const mclist: PacketDiag['mclist'] = [];
    // struct packet_diag_mclist: index, count, type (u16), alen (u16), addr[32]: 44 bytes
    if (mc) {
      for (let at = 0; at + 44 <= mc.length && mclist.length < 4096; at += 44) {
        const alen = Math.min(mc.readUInt16LE(at + 10), 32);
        mclist.push({ ifindex: mc.readUInt32LE(at), count: mc.readUInt32LE(at + 4), type: mc.readUInt16LE(at + 8),
          addr: Buffer.from(mc.subarray(at + 12, at + 12 + alen)) });
      }
    }
    const ino = m.readUInt32LE(4);
    out.set(ino, {
      ino, type: m.readUInt8(1), protocol: m.readUInt16LE(2),
      info: i && i.length >= 24 ? {
        ifindex: i.readUInt32LE(0), version: i.readUInt32LE(4), reserve: i.readUInt32LE(8),
        copyThresh: i.readUInt32LE(12), tstamp: i.readUInt32LE(16), flags: i.readUInt32LE(20),
      } : null,
      mclist, rxRing: ring(a.get(2)), txRing: ring(a.get(3)),
      fanout: a.get(4)?.readUInt32LE(0) ?? null, rmem: u32s(a.get(6))[SK_MEMINFO_RMEM_ALLOC] ?? 0,
    });
  }
  return out;
}

/** Largest socket buffer taken from an image (the kernel caps it by its own limits anyway). */
export const MAX_SOCK_BUFFER = 1 << 30;

/** SO_SNDBUF and SO_RCVBUF of a socket (what getsockopt shows: twice what was asked). */
export function buffersOf(fd: number): { sndbuf: number; rcvbuf: number } {
  const n = native();
  return { sndbuf: n.getSockInt(fd, SOL_SOCKET, SO.SNDBUF), rcvbuf: n.getSockInt(fd, SOL_SOCKET, SO.RCVBUF) };
}

/**
 * Sets SO_SNDBUF and SO_RCVBUF back where they differ. The kernel doubles what it is given
 * (socket(7)), so half the shown value is asked for, with the *FORCE options (root) so that
 * net.core.[rw]mem_max does not cap what the original had.
 */
export function applyBuffers(fd: number, want: { sndbuf: number; rcvbuf: number }): void {
  const n = native();
  for (const [v, get, force] of [[want.sndbuf, SO.SNDBUF, SO.SNDBUFFORCE], [want.rcvbuf, SO.RCVBUF, SO.RCVBUFFORCE]] as const) {
    if (n.getSockInt(fd, SOL_SOCKET, get) !== v) n.setSockInt(fd, SOL_SOCKET, force, Math.floor(v / 2));
  }
}

/** Largest classic BPF program (BPF_MAXINSNS instructions of 8 bytes), as base64 text in a record. */
export const MAX_FILTER_B64 = Math.ceil((4096 * 8) / 3) * 4;

/** Whether `v` is a classic BPF program as stored (base64 of whole 8-byte instructions, at most 4096). */
export function validFilter(v: unknown): boolean {
  if (typeof v !== 'string' || v.length > MAX_FILTER_B64 || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) return false;
  const bytes = Buffer.from(v, 'base64').length;
  return bytes > 0 && bytes % 8 === 0 && bytes <= 4096 * 8;
}

/** SO_LOCK_FILTER (socket(7)): the filter can no longer be changed or removed. */
const SO_LOCK_FILTER = 44;

/** A socket's filter as stored: a classic BPF program (base64) and whether it is locked. */
export interface SocketFilter {
  filter?: string;
  lockFilter?: true;
}

/**
 * The classic BPF filter of a socket (SO_GET_FILTER) and SO_LOCK_FILTER. An eBPF program
 * (SO_ATTACH_BPF) has no classic form to read back (the kernel answers EACCES): `refuse` is
 * called with the reason.
 */
export function filterOf(fd: number, refuse: (why: string) => never): SocketFilter {
  const n = native();
  let prog: Buffer;
  try {
    prog = n.getSockFilter(fd);
  } catch (err) {
    if (errnoCode(err) === 'EACCES') refuse('has an eBPF program attached (SO_ATTACH_BPF), which cannot be read back; only classic BPF filters can be checkpointed');
    throw err;
  }
  if (prog.length === 0) return {};
  return { filter: prog.toString('base64'), ...(n.getSockInt(fd, SOL_SOCKET, SO_LOCK_FILTER) !== 0 ? { lockFilter: true as const } : {}) };
}

/** Attaches a stored filter (the lock comes with `lockFilter`, once everything else is set). */
export function applyFilter(fd: number, f: SocketFilter): void {
  if (f.filter !== undefined) native().attachSockFilter(fd, Buffer.from(f.filter, 'base64'));
}

/** Locks the filter when the original's was locked: the last step, nothing changes it after. */
export function lockFilter(fd: number, f: SocketFilter): void {
  if (f.lockFilter) native().setSockInt(fd, SOL_SOCKET, SO_LOCK_FILTER, 1);
}

/** Whether a record's filter fields are well formed. */
export function validFilterFields(f: SocketFilter): boolean {
  return (f.filter === undefined || validFilter(f.filter)) && (f.lockFilter === undefined || (f.lockFilter === true && f.filter !== undefined));
}
