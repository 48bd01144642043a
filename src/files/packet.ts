/**
 * Packet sockets (packet(7)): kind 'packet', as the kernel names AF_PACKET. SOCK_RAW,
 * SOCK_DGRAM and the obsolete SOCK_PACKET, of any protocol, bound to one interface or to all.
 *
 * Dump. sock_diag(7) (PACKET_DIAG, sockdiag.ts) gives the type, the protocol, the bound
 * interface and whether the socket is hooked into the stack (PACKET_DIAG_INFO: with
 * PACKET_VERSION, PACKET_RESERVE, PACKET_COPY_THRESH, PACKET_TIMESTAMP), the memberships added
 * with PACKET_ADD_MEMBERSHIP and how many times each (PACKET_DIAG_MCLIST), the fanout group
 * (PACKET_DIAG_FANOUT), rings (PACKET_DIAG_RX_RING / TX_RING) and the bytes queued. The other
 * options are read with getsockopt(2) on a pidfd_getfd(2) copy (PACKET_AUXDATA,
 * PACKET_ORIGDEV, PACKET_VNET_HDR, PACKET_LOSS, PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING,
 * SO_SNDBUF/SO_RCVBUF, a classic BPF filter through SO_GET_FILTER, SO_LOCK_FILTER); nothing is
 * changed. An eBPF filter (SO_ATTACH_BPF) cannot be read back and is refused.
 * Interfaces are stored by name (an index means nothing on another host or after a reboot).
 *
 * Restore. socket(2) with protocol 0 (not hooked yet, so nothing arrives unfiltered), the
 * options and the filter set, then bind(2) to the protocol and the interface, looked up by
 * name again (a missing one fails the restore before any process exists, naming it), then the
 * memberships (each as many times as it was added) and the fanout group (which needs a bound
 * socket; a group id the kernel chose with PACKET_FANOUT_FLAG_UNIQUEID is asked for as is).
 *
 * Not kept: queued packets (network traffic: dropped, with a warning in the log), statistics
 * (PACKET_STATISTICS, which reading would reset). Refused, before the tree is touched: a
 * socket with a ring (PACKET_RX_RING / PACKET_TX_RING, mapped into the process or not), a
 * fanout group steered by a BPF program (PACKET_FANOUT_CBPF / EBPF), a socket whose interface
 * is gone. Sockets are recreated in ferry's network namespace (a container's: its own).
 */
import { readFileSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { FileRecord } from '../image/records.js';
import { native } from '../native/binding.js';
import { O_NONBLOCK } from '../proc/fcntl.js';
import {
  applyBuffers, applyFilter, buffersOf, filterOf, lockFilter, MAX_SOCK_BUFFER, packetDiag, validFilterFields, type PacketDiag,
  type PacketRing,
} from './sockdiag.js';
import type { DumpContext, FdDesc, FileKind } from './types.js';

const AF_PACKET = 17, SOL_PACKET = 263;
const TYPES = { dgram: 2, raw: 3, packet: 10 } as const;
type PacketType = keyof typeof TYPES;
const PACKET_ADD_MEMBERSHIP = 1, PACKET_COPY_THRESH = 7, PACKET_FANOUT = 18;
/** PDI_RUNNING (linux/packet_diag.h): the socket is hooked into the stack and receives. */
const PDI_RUNNING = 1;
/** PACKET_FANOUT modes a program steers, and the flag asking the kernel for a group id. */
const PACKET_FANOUT_CBPF = 6, PACKET_FANOUT_EBPF = 7, FANOUT_FLAG_UNIQUEID = 0x2000 >> 8;
/** Memberships, and additions of them all (each one setsockopt on restore), accepted from an image. */
const MAX_MEMBERSHIPS = 1024, MAX_MEMBERSHIP_COUNT = 1 << 16, MAX_ADDR = 32;

/** Int options (SOL_PACKET) read with getsockopt and set again when not 0, by stored name. */
export const PACKET_OPTIONS: Readonly<Record<string, number>> = {
  version: 10, reserve: 12, timestamp: 17, auxdata: 8, origdev: 9, vnetHdr: 15, loss: 14, qdiscBypass: 20, ignoreOutgoing: 23,
};

/** One PACKET_ADD_MEMBERSHIP entry (struct packet_mreq). */
export interface PacketMembership {
  /** Interface, by name. */
  ifname: string;
  /** PACKET_MR_MULTICAST 0, PACKET_MR_PROMISC 1, PACKET_MR_ALLMULTI 2, PACKET_MR_UNICAST 3. */
  type: number;
  /** How many times it was added (each needs its own drop). */
  count: number;
  /** The link-layer address (multicast, unicast), hex. */
  addr: string;
}

/** One packet socket in files.json (docs/image-format.md). */
export interface PacketRecord extends FileRecord {
  kind: 'packet';
  /** Socket inode at dump (identity; informational). */
  ino: string;
  /** O_NONBLOCK of the open file. */
  flags: number;
  type: PacketType;
  /** Protocol (ETH_P_*, host order); 0 when none. */
  protocol: number;
  /** Hooked into the stack (receiving): bound with a protocol to an interface that is up, or to all. */
  running: boolean;
  /** Bound interface by name; null for all interfaces. */
  ifname: string | null;
  /** PACKET_OPTIONS that are not 0, by name. */
  opts: Record<string, number>;
  /** PACKET_COPY_THRESH (only settable; from sock_diag). */
  copyThresh: number;
  memberships: PacketMembership[];
  /** PACKET_FANOUT group: id, mode (PACKET_FANOUT_HASH 0…), flags (the option's top byte). */
  fanout: { id: number; mode: number; flags: number } | null;
  /** SO_SNDBUF and SO_RCVBUF as getsockopt shows them. */
  sndbuf: number;
  rcvbuf: number;
  /** Classic BPF filter (SO_ATTACH_FILTER), base64 of its instructions. */
  filter?: string;
  /** SO_LOCK_FILTER was set (only with a filter). */
  lockFilter?: true;
}

const typeName = (t: number): string => ({ 2: 'SOCK_DGRAM', 3: 'SOCK_RAW', 10: 'SOCK_PACKET' } as Record<number, string>)[t] ?? `type ${t}`;
const hex4 = (p: number): string => `0x${p.toString(16).padStart(4, '0')}`;

function describe(type: string, protocol: number, ifname: string | null): string {
  return `packet socket (${type}, protocol ${hex4(protocol)}, ${ifname === null ? 'all interfaces' : `on ${ifname}`})`;
}

function isPacket(d: FdDesc): boolean {
  if (!d.link.startsWith('socket:[')) return false;
  try {
    return native().sockProtoName(`/proc/${d.pid}/fd/${d.fd}`) === 'PACKET';
  } catch {
    return false;
  }
}

/** The socket's entry in /proc/PID/maps (a ring mmap(2)ed from it), or null. */
function ringMapping(pid: number, ino: number): string | null {
  try {
    const line = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((l) => l.endsWith(` socket:[${ino}]`));
    return line ? `0x${line.split(' ')[0]!.replace('-', '-0x')}` : null;
  } catch {
    return null;
  }
}

/** Refuses what cannot be carried: rings, BPF-steered fanout, a vanished interface. */
function refusals(d: FdDesc, diag: PacketDiag, shown: string): void {
  const refuse = (why: string): never => {
    throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} ${why}`);
  };
  const ring = (r: PacketRing): string => `${r.frameNr} frames of ${r.frameSize} bytes`;
  if (diag.rxRing || diag.txRing) {
    const rings = [diag.rxRing ? `a PACKET_RX_RING (${ring(diag.rxRing)})` : '', diag.txRing ? `a PACKET_TX_RING (${ring(diag.txRing)})` : '']
      .filter(Boolean).join(' and ');
    const at = ringMapping(d.pid, diag.ino);
    refuse(`has ${rings}${at ? ` mapped at ${at}` : ', not mapped'}: packet rings cannot be checkpointed yet; run the process without the ring (recvmsg instead of PACKET_MMAP)`);
  }
  if (diag.fanout !== null) {
    const mode = (diag.fanout >>> 16) & 0xff;
    if (mode === PACKET_FANOUT_CBPF || mode === PACKET_FANOUT_EBPF) {
      refuse(`is in fanout group ${diag.fanout & 0xffff} steered by a BPF program (PACKET_FANOUT_${mode === PACKET_FANOUT_CBPF ? 'CBPF' : 'EBPF'}), which cannot be checkpointed`);
    }
  }
  if (diag.info && diag.info.ifindex !== 0 && native().ifName(diag.info.ifindex) === null) {
    refuse(`is bound to interface index ${diag.info.ifindex | 0}, which is gone; close the socket or bind it again`);
  }
}

function diagOf(d: FdDesc): PacketDiag {
  const diag = packetDiag().get(Number(d.stat.ino));
  if (!diag) {
    throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: packet socket ${d.link} is unknown to sock_diag (another network namespace?); run the process in ferry's or checkpoint its container`);
  }
  return diag;
}

const shownOf = (diag: PacketDiag): string => {
  const idx = diag.info?.ifindex ?? 0;
  return describe(typeName(diag.type), diag.protocol, idx === 0 ? null : native().ifName(idx) ?? `index ${idx | 0}`);
};

function dumpPacket(d: FdDesc, ctx: DumpContext): Omit<PacketRecord, 'id' | 'kind'> {
  const diag = diagOf(d);
  const shown = shownOf(diag);
  refusals(d, diag, shown);
  const n = native();
  const g = ctx.grab(d);
  try {
    const type = (Object.keys(TYPES) as PacketType[]).find((k) => TYPES[k] === diag.type);
    if (!type) throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} has a type ferry does not know`);
    const opts: Record<string, number> = {};
    // SOCK_PACKET has no SOL_PACKET options.
    if (type !== 'packet') {
      for (const [name, opt] of Object.entries(PACKET_OPTIONS)) {
        const v = n.getSockInt(g, SOL_PACKET, opt);
        if (v !== 0) opts[name] = v;
      }
    }
    const info = diag.info;
    const ifname = info && info.ifindex !== 0 ? n.ifName(info.ifindex) : null;
    if (info && info.ifindex !== 0 && ifname === null) throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} is bound to an interface that is gone`);
    const memberships = diag.mclist.map((m) => {
      const name = n.ifName(m.ifindex);
      if (name === null) throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} has a membership on interface index ${m.ifindex}, which is gone`);
      return { ifname: name, type: m.type, count: m.count, addr: m.addr.toString('hex') };
    });
    // getsockopt(PACKET_FANOUT): id | mode << 16 | flags << 24, the form setsockopt takes.
    const f = diag.fanout === null ? null : n.getSockInt(g, SOL_PACKET, PACKET_FANOUT);
    const filter = filterOf(g, (why) => { throw new FerryError('EUNSUPPORTED', `pid ${d.pid} fd ${d.fd}: ${shown} ${why}`); });
    if (diag.rmem > 0) ctx.warn(`pid ${d.pid} fd ${d.fd}: ${shown}: ${diag.rmem} bytes of queued packets are not kept (network traffic, dropped)`);
    return {
      ino: d.stat.ino.toString(), flags: d.fdinfo.flags & O_NONBLOCK, type, protocol: diag.protocol,
      running: ((info?.flags ?? 0) & PDI_RUNNING) !== 0, ifname, opts, copyThresh: info?.copyThresh ?? 0, memberships,
      fanout: f === null ? null : { id: f & 0xffff, mode: (f >>> 16) & 0xff, flags: ((f >>> 24) & 0xff) & ~FANOUT_FLAG_UNIQUEID },
      ...buffersOf(g), ...filter,
    };
  } catch (err) {
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `pid ${d.pid} fd ${d.fd}: ${shown}: ${(err as Error).message}`, { cause: err });
  }
}

/** The interface's index here, or a one-line refusal naming the socket and the interface. */
function indexOf(rec: PacketRecord, ifname: string, what: string): number {
  const i = native().ifIndex(ifname);
  if (i === 0) {
    throw new FerryError('EOPEN', `cannot restore ${describe(typeName(TYPES[rec.type]), rec.protocol, rec.ifname)} (file ${rec.id}): ${what} interface ${ifname} does not exist here; create it (ip link) or restore where it exists`);
  }
  return i;
}

function openPacket(rec: PacketRecord): number {
  const n = native();
  // Resolved first: a missing interface fails before anything is made.
  const ifindex = rec.ifname === null ? 0 : indexOf(rec, rec.ifname, 'its');
  const mships = rec.memberships.map((m) => ({ ...m, index: indexOf(rec, m.ifname, 'the membership\'s') }));
  // A SOCK_PACKET socket takes its protocol from socket(2) only (bind(2) names an interface).
  const spkt = rec.type === 'packet';
  const fd = n.socket(AF_PACKET, TYPES[rec.type], spkt ? ((rec.protocol & 0xff) << 8) | (rec.protocol >> 8) : 0);
  try {
    for (const [name, v] of Object.entries(rec.opts)) n.setSockInt(fd, SOL_PACKET, PACKET_OPTIONS[name]!, v);
    if (rec.copyThresh !== 0) n.setSockInt(fd, SOL_PACKET, PACKET_COPY_THRESH, rec.copyThresh);
    applyBuffers(fd, rec);
    applyFilter(fd, rec);
    // bind(2) hooks the socket in when it has a protocol and the interface is up (or it is
    // bound to all), as the original was; bound to an interface that is down it stays unhooked
    // until the interface comes up, as the original would.
    if (spkt && rec.ifname !== null) n.packetBind(fd, 0, ifindex, rec.ifname);
    else if (!spkt && (rec.running || ifindex !== 0)) n.packetBind(fd, rec.protocol, ifindex);
    for (const m of mships) {
      // struct packet_mreq_max: ifindex, type, alen, address[32]
      const mreq = Buffer.alloc(8 + MAX_ADDR);
      const addr = Buffer.from(m.addr, 'hex');
      mreq.writeInt32LE(m.index, 0);
      mreq.writeUInt16LE(m.type, 4);
      mreq.writeUInt16LE(addr.length, 6);
      addr.copy(mreq, 8);
      for (let i = 0; i < m.count; i++) n.setSockOpt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq);
    }
    if (rec.fanout) n.setSockInt(fd, SOL_PACKET, PACKET_FANOUT, rec.fanout.id | (rec.fanout.mode << 16) | (rec.fanout.flags << 24));
    lockFilter(fd, rec);
    n.setFl(fd, rec.flags & O_NONBLOCK);
    return fd;
  } catch (err) {
    n.closeFd(fd);
    throw err;
  }
}

const IFNAME = /^[^/\s:]{1,15}$/;

function checkRecord(rec: PacketRecord): void {
  const bad = (why: string): never => {
    throw new FerryError('EIMAGE', `image: packet socket (file ${rec.id}) ${why}`);
  };
  const int = (v: unknown, max: number): boolean => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= max;
  if (typeof rec.type !== 'string' || !Object.hasOwn(TYPES, rec.type)) bad('has an invalid type');
  if (!int(rec.protocol, 0xffff)) bad('has an invalid protocol');
  if (typeof rec.running !== 'boolean') bad('has an invalid running flag');
  if (!Number.isSafeInteger(rec.flags)) bad('has invalid flags');
  if (rec.ifname !== null && (typeof rec.ifname !== 'string' || !IFNAME.test(rec.ifname))) bad('has an invalid interface name');
  if (typeof rec.opts !== 'object' || rec.opts === null || Array.isArray(rec.opts)) bad('has no options');
  for (const [k, v] of Object.entries(rec.opts)) {
    if (!Object.hasOwn(PACKET_OPTIONS, k)) bad(`has an unknown option ${JSON.stringify(k.slice(0, 40))}`);
    if (!int(v, 0x7fffffff)) bad(`has an invalid value for ${k}`);
  }
  if (!int(rec.copyThresh, 0x7fffffff)) bad('has an invalid copy threshold');
  if (!Array.isArray(rec.memberships) || rec.memberships.length > MAX_MEMBERSHIPS) bad('has invalid memberships');
  for (const m of rec.memberships) {
    if (typeof m !== 'object' || m === null || typeof m.ifname !== 'string' || !IFNAME.test(m.ifname) || !int(m.type, 3)
      || !Number.isInteger(m.count) || m.count < 1 || m.count > MAX_MEMBERSHIP_COUNT
      || typeof m.addr !== 'string' || m.addr.length > MAX_ADDR * 2 || !/^([0-9a-f]{2})*$/.test(m.addr)) bad('has an invalid membership');
  }
  if (rec.memberships.reduce((sum, m) => sum + m.count, 0) > MAX_MEMBERSHIP_COUNT) bad('has too many memberships');
  if (rec.fanout !== null && (typeof rec.fanout !== 'object' || !int(rec.fanout.id, 0xffff)
    || !int(rec.fanout.mode, PACKET_FANOUT_EBPF) || rec.fanout.mode === PACKET_FANOUT_CBPF || rec.fanout.mode === PACKET_FANOUT_EBPF
    || !int(rec.fanout.flags, 0xff))) bad('has an invalid fanout group');
  for (const b of [rec.sndbuf, rec.rcvbuf]) if (!int(b, MAX_SOCK_BUFFER)) bad('has an invalid buffer size');
  if (!validFilterFields(rec)) bad('has an invalid filter');
  if (rec.type === 'packet' && Object.keys(rec.opts).length > 0) bad('has options a SOCK_PACKET socket cannot have');
}

/** The 'packet' kind (registry.ts). */
export const packet: FileKind<PacketRecord> = {
  kind: 'packet',

  matches: isPacket,

  precheck(d: FdDesc): void {
    const diag = diagOf(d);
    refusals(d, diag, shownOf(diag));
  },

  key(fd: FdDesc): string {
    return `packet:${fd.stat.ino}`;
  },

  dump: dumpPacket,

  check: checkRecord,

  open(rec: PacketRecord): number {
    try {
      return openPacket(rec);
    } catch (err) {
      if (err instanceof FerryError) throw err;
      throw new FerryError('EOPEN', `cannot restore ${describe(typeName(TYPES[rec.type]), rec.protocol, rec.ifname)} (file ${rec.id}): ${(err as Error).message}`, { cause: err });
    }
  },
};
