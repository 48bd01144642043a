/**
 * Multicast group memberships of inet sockets (ip(7) IP_ADD_MEMBERSHIP, ipv6(7)
 * IPV6_JOIN_GROUP, RFC 3678 MCAST_JOIN_GROUP / MCAST_MSFILTER).
 *
 * No getsockopt lists the groups a socket joined, and /proc/net/igmp and igmp6 list them per
 * device (summed over every socket of the namespace), not per socket. What a socket answers is
 * whether it joined one given group on one given device: getsockopt(MCAST_MSFILTER) with that
 * group and interface index returns its source filter (mode and sources) when it did, and
 * EADDRNOTAVAIL when it did not. So every group /proc lists on every device is asked of the
 * socket: each membership is found and attributed to its socket exactly, source filters
 * included. Restore joins with MCAST_JOIN_GROUP on the device of the same name (its index may
 * differ), then sets the filter with MCAST_MSFILTER when it is not "exclude nothing".
 * A membership on a device missing at restore fails the restore, naming group and device.
 */
import { readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { errnoCode } from '../errors.js';
import { native } from '../native/binding.js';
import { AF_INET, AF_INET6, IPPROTO_IP, IPPROTO_IPV6, ipKey, type Family } from './inet-common.js';

const MCAST_JOIN_GROUP = 42, MCAST_MSFILTER = 48;
const MCAST_EXCLUDE = 0, MCAST_INCLUDE = 1;
/** struct group_filter on x86-64: gf_interface @0, gf_group @8 (sockaddr_storage), gf_fmode @136, gf_numsrc @140, gf_slist @144. */
const GF_GROUP = 8, GF_FMODE = 136, GF_NUMSRC = 140, GF_SLIST = 144, SS_SIZE = 128;
/** Sources kept per membership (net.ipv4.igmp_max_msf is 10 by default). */
export const MAX_SOURCES = 256;
/** Memberships kept per socket (net.ipv4.igmp_max_memberships is 20 by default). */
export const MAX_MEMBERSHIPS = 4096;

/** One group the socket joined on one device, with its source filter. */
export interface Membership {
  /** The group address (inet_ntop-style text). */
  group: string;
  /** 'ipv4' for an IPv4 group an IPv6 socket joined (IP_ADD_MEMBERSHIP on a dual-stack socket); absent: the socket's family. */
  family?: Family;
  /** Interface index at checkpoint, and the device's name (what restore goes by). */
  ifindex: number;
  device: string;
  /** Source filter mode: 'exclude' with no sources is a plain join. */
  mode: 'include' | 'exclude';
  sources: string[];
}

function addrBytes(text: string, family: Family): Buffer {
  if (family === 'ipv4') return Buffer.from(text.split('.').map(Number));
  const b = Buffer.alloc(16);
  ipKey(text).split(':').forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}

function addrText(b: Buffer, family: Family): string {
  if (family === 'ipv4') return Array.from(b.subarray(0, 4)).join('.');
  return Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':');
}

/** Writes a sockaddr_in/sockaddr_in6 (port 0) at `off`. */
function putSockaddr(buf: Buffer, off: number, text: string, family: Family): void {
  buf.writeUInt16LE(family === 'ipv6' ? AF_INET6 : AF_INET, off);
  addrBytes(text, family).copy(buf, off + (family === 'ipv6' ? 8 : 4));
}

function getSockaddr(buf: Buffer, off: number, family: Family): string {
  return addrText(buf.subarray(off + (family === 'ipv6' ? 8 : 4)), family);
}

/** (ifindex, device, group) of every group of the namespace (/proc/PID/net/igmp or igmp6). */
function procGroups(pid: number | 'thread-self', family: Family): Array<{ ifindex: number; device: string; group: string }> {
  const out: Array<{ ifindex: number; device: string; group: string }> = [];
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/net/${family === 'ipv6' ? 'igmp6' : 'igmp'}`, 'utf8');
  } catch {
    return out;
  }
  if (family === 'ipv6') {
    // "1    lo              ff020000000000000000000000000001     1 0000000C 0"
    for (const line of text.split('\n')) {
      const m = /^\s*(\d+)\s+(\S+)\s+([0-9a-f]{32})\s/.exec(line);
      if (m) out.push({ ifindex: Number(m[1]), device: m[2]!, group: addrText(Buffer.from(m[3]!, 'hex'), family) });
    }
    return out;
  }
  // "1\tlo        :     2      V3" then "\t\t\t\t010000E0     1 0:00000000\t\t0" (the __be32 printed as a host u32).
  let dev: { ifindex: number; device: string } | undefined;
  for (const line of text.split('\n')) {
    const d = /^(\d+)\s+(\S+)\s*:/.exec(line);
    if (d) {
      dev = { ifindex: Number(d[1]), device: d[2]! };
      continue;
    }
    const g = /^\s+([0-9A-Fa-f]{8})\s/.exec(line);
    if (g && dev) {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(parseInt(g[1]!, 16) >>> 0);
      out.push({ ...dev, group: addrText(b, family) });
    }
  }
  return out;
}

/**
 * The memberships of socket `g` (in the network namespace of `pid`): each listed group asked
 * with MCAST_MSFILTER. An IPv6 socket is asked the IPv4 groups too, at IPPROTO_IP: a
 * dual-stack socket may join them with IP_ADD_MEMBERSHIP.
 */
export function dumpMemberships(pid: number, g: number, family: Family): Membership[] {
  const out = membershipsOf(pid, g, family);
  if (family === 'ipv6') out.push(...membershipsOf(pid, g, 'ipv4').map((m) => ({ ...m, family: 'ipv4' as const })));
  return out;
}

/** The socket's memberships in groups of `family`. */
function membershipsOf(pid: number, g: number, family: Family): Membership[] {
  const n = native();
  const level = family === 'ipv6' ? IPPROTO_IPV6 : IPPROTO_IP;
  const out: Membership[] = [];
  const seen = new Set<string>();
  for (const m of procGroups(pid, family)) {
    const key = `${m.ifindex}/${m.group}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const req = Buffer.alloc(GF_SLIST + MAX_SOURCES * SS_SIZE);
    req.writeUInt32LE(m.ifindex, 0);
    putSockaddr(req, GF_GROUP, m.group, family);
    req.writeUInt32LE(MAX_SOURCES, GF_NUMSRC);
    let got: Buffer;
    try {
      got = n.getSockOpt(g, level, MCAST_MSFILTER, req.length, req);
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EADDRNOTAVAIL' || code === 'ENODEV' || code === 'EINVAL' || code === 'ENOENT') continue;
      // A socket that cannot hold groups of this family (IPPROTO_IP on a raw IPv6 socket).
      if (code === 'ENOPROTOOPT' || code === 'EOPNOTSUPP') return [];
      throw err;
    }
    if (got.length < GF_SLIST) continue;
    const count = got.readUInt32LE(GF_NUMSRC);
    if (count > MAX_SOURCES) throw new Error(`multicast group ${m.group} on ${m.device} has ${count} source filters, more than ${MAX_SOURCES}`);
    const sources = Array.from({ length: count }, (_, i) => getSockaddr(got, GF_SLIST + i * SS_SIZE, family));
    out.push({ group: m.group, ifindex: m.ifindex, device: m.device, mode: got.readUInt32LE(GF_FMODE) === MCAST_INCLUDE ? 'include' : 'exclude', sources });
  }
  return out;
}

/** Joins every membership on `fd` (in the current thread's network namespace) that it has not joined yet. */
export function applyMemberships(fd: number, sockFamily: Family, list: readonly Membership[]): void {
  const n = native();
  const here = { ipv4: procGroups('thread-self', 'ipv4'), ipv6: sockFamily === 'ipv6' ? procGroups('thread-self', 'ipv6') : [] };
  for (const m of list) {
    const family = m.family ?? sockFamily;
    const level = family === 'ipv6' ? IPPROTO_IPV6 : IPPROTO_IP;
    const dev = here[family].find((d) => d.device === m.device);
    if (!dev) throw new Error(`multicast group ${m.group} was joined on device ${m.device}, which this network namespace does not have`);
    const already = isMember(fd, level, family, dev.ifindex, m.group);
    if (!already) {
      const req = Buffer.alloc(GF_GROUP + SS_SIZE);
      req.writeUInt32LE(dev.ifindex, 0);
      putSockaddr(req, GF_GROUP, m.group, family);
      n.setSockOpt(fd, level, MCAST_JOIN_GROUP, req);
    }
    if (m.mode === 'exclude' && m.sources.length === 0) continue;
    const f = Buffer.alloc(GF_SLIST + m.sources.length * SS_SIZE);
    f.writeUInt32LE(dev.ifindex, 0);
    putSockaddr(f, GF_GROUP, m.group, family);
    f.writeUInt32LE(m.mode === 'include' ? MCAST_INCLUDE : MCAST_EXCLUDE, GF_FMODE);
    f.writeUInt32LE(m.sources.length, GF_NUMSRC);
    m.sources.forEach((s, i) => putSockaddr(f, GF_SLIST + i * SS_SIZE, s, family));
    n.setSockOpt(fd, level, MCAST_MSFILTER, f);
  }
}

/** Whether `fd` joined `group` on interface `ifindex` (MCAST_MSFILTER answers rather than EADDRNOTAVAIL). */
function isMember(fd: number, level: number, family: Family, ifindex: number, group: string): boolean {
  const req = Buffer.alloc(GF_SLIST);
  req.writeUInt32LE(ifindex, 0);
  putSockaddr(req, GF_GROUP, group, family);
  try {
    native().getSockOpt(fd, level, MCAST_MSFILTER, req.length, req);
    return true;
  } catch {
    return false;
  }
}

/** Shape and bounds of a record's memberships. */
export function checkMemberships(list: unknown, sockFamily: Family, bad: (why: string) => never): void {
  if (list === undefined) return;
  if (!Array.isArray(list) || list.length > MAX_MEMBERSHIPS) bad('has invalid multicast memberships');
  for (const m of list as Membership[]) {
    if (typeof m !== 'object' || m === null) bad('has an invalid multicast membership');
    // An IPv4 socket joins IPv4 groups only; an IPv6 one either.
    if (m.family !== undefined && !(m.family === 'ipv4' && sockFamily === 'ipv6')) bad('has an invalid multicast membership');
    const isAddr = (m.family ?? sockFamily) === 'ipv6' ? isIPv6 : isIPv4;
    if (typeof m.group !== 'string' || !isAddr(m.group)
      || !Number.isInteger(m.ifindex) || m.ifindex < 0 || m.ifindex > 0x7fffffff
      || typeof m.device !== 'string' || !/^[^\0/\s:]{1,15}$/.test(m.device)
      || (m.mode !== 'include' && m.mode !== 'exclude') || !Array.isArray(m.sources) || m.sources.length > MAX_SOURCES
      || !m.sources.every((s) => typeof s === 'string' && isAddr(s))
      || (m.mode === 'include' && m.sources.length === 0)) bad('has an invalid multicast membership');
  }
}
