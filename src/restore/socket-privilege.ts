/**
 * No privilege from the image, for sockets (docs/security.md): some sockets carry a privilege
 * the kernel checks only when they are made or bound, and restore makes and binds them as
 * root. A packet socket (CAP_NET_RAW at socket(2)) sees every frame of its interfaces; a
 * netlink socket joined to multicast groups of a protocol that lets only CAP_NET_ADMIN listen
 * (checked at bind(2); route and uevent groups are open to all) hears what the kernel tells
 * administrators; a raw IP socket (CAP_NET_RAW) or a ping socket (CAP_NET_RAW, or a group in
 * net.ipv4.ping_group_range) was allowed by root's credentials; an inet socket with IP_TRANSPARENT, SO_MARK, SO_PRIORITY above 6 or buffers
 * past net.core's ceilings got them from setsockopt(2) as root. For an image no trusted key signed, each such socket must be held by a
 * process whose restored credentials have that capability, or the restore is refused before
 * anything is made (EPRIVILEGE), naming the process, descriptor and socket.
 */
import { readFileSync } from 'node:fs';
import { FerryError } from '../errors.js';
import { big, type FileRecord, type TaskRecord } from '../image/records.js';

const CAP_NET_ADMIN = 12n, CAP_NET_RAW = 13n;
const CAP_NAMES: Readonly<Record<string, string>> = { [CAP_NET_ADMIN.toString()]: 'CAP_NET_ADMIN', [CAP_NET_RAW.toString()]: 'CAP_NET_RAW' };
/** Netlink protocols whose groups anyone may join (NL_CFG_F_NONROOT_RECV): NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT. */
const OPEN_GROUPS = new Set([0, 15]);

/** Reads a net.core sysctl (a buffer ceiling), or undefined. */
function sysctl(name: string): number | undefined {
  try {
    const v = Number(readFileSync(`/proc/sys/net/core/${name}`, 'utf8').trim());
    return Number.isSafeInteger(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What a socket record needs its holder to have: any one of `caps`, for `what` (or, with
 * `pingGroup`, a group in net.ipv4.ping_group_range).
 */
interface Need { caps: readonly bigint[]; what: string; pingGroup?: boolean }

/** net.ipv4.ping_group_range: the groups that may make ping sockets ([1, 0]: none). */
function pingGroups(): [number, number] {
  try {
    const [lo, hi] = readFileSync('/proc/sys/net/ipv4/ping_group_range', 'utf8').trim().split(/\s+/).map(Number);
    return [lo ?? 1, hi ?? 0];
  } catch {
    return [1, 0];
  }
}

/** Whether a group of the leader of `t` (filesystem gid or supplementary) is in the ping range. */
function inPingRange(t: Pick<TaskRecord, 'creds'>): boolean {
  const c = t.creds.threads[0];
  if (!c) return false;
  const [lo, hi] = pingGroups();
  return [c.gids[1], ...c.groups].some((g) => g !== undefined && g >= lo && g <= hi);
}

/** The privileges a socket record carries, each with the capabilities that grant it. */
function needs(f: FileRecord): Need[] {
  const out: Need[] = [];
  if (f.kind === 'packet') out.push({ caps: [CAP_NET_RAW], what: 'a packet socket' });
  if (f.kind === 'netlink' && Array.isArray(f.groups) && f.groups.length > 0 && !OPEN_GROUPS.has(f.protocol as number)) {
    out.push({ caps: [CAP_NET_ADMIN], what: `a netlink socket (protocol ${String(f.protocol)}) in multicast groups only administrators may join` });
  }
  // raw(7): a raw socket needs CAP_NET_RAW at socket(2) (a ping socket only a group in
  // net.ipv4.ping_group_range, checked below against the holders' groups).
  if (f.kind === 'inet' && f.proto === 'raw') out.push({ caps: [CAP_NET_RAW], what: 'a raw IP socket' });
  if (f.kind === 'inet' && f.proto === 'ping') out.push({ caps: [CAP_NET_RAW], what: 'a ping socket', pingGroup: true });
  if (f.kind === 'inet' && typeof f.opts === 'object' && f.opts !== null) {
    const o = f.opts as Record<string, unknown>;
    const on = (k: string): boolean => typeof o[k] === 'number' && o[k] !== 0;
    const either = [CAP_NET_RAW, CAP_NET_ADMIN];
    // ip(7): IP_TRANSPARENT lets a socket send from and receive for any address.
    if (on('ip_transparent') || on('ipv6_transparent')) out.push({ caps: either, what: 'a socket with IP_TRANSPARENT (it may use any address)' });
    if (on('mark')) out.push({ caps: either, what: 'a socket with SO_MARK' });
    if (typeof o.priority === 'number' && (o.priority < 0 || o.priority > 6)) out.push({ caps: either, what: `a socket with SO_PRIORITY ${o.priority}` });
    // socket(7): buffers past net.core.[rw]mem_max need SO_*BUFFORCE (the kernel stores twice the size asked).
    for (const [k, limit] of [['sndbuf', 'wmem_max'], ['rcvbuf', 'rmem_max']] as const) {
      const max = sysctl(limit);
      if (typeof o[k] === 'number' && max !== undefined && (o[k] as number) > 2 * max) {
        out.push({ caps: [CAP_NET_ADMIN], what: `a socket with ${k === 'sndbuf' ? 'SO_SNDBUF' : 'SO_RCVBUF'} ${String(o[k])}, past net.core.${limit}` });
      }
    }
  }
  return out;
}

/** Whether the leader of `t` has capability `cap` in its effective set, by its recorded credentials. */
const hasCap = (t: Pick<TaskRecord, 'creds'>, cap: bigint): boolean =>
  ((big(t.creds.threads[0]?.caps.effective ?? '0x0') >> cap) & 1n) === 1n;

/** Throws EPRIVILEGE for the first socket whose holders lack the capability it carries. */
export function checkSocketPrivilege(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[],
  files: readonly FileRecord[]): void {
  for (const f of files) {
    for (const need of needs(f)) {
      const holders = tasks.filter((t) => t.fds.some((d) => d.file === f.id));
      if (holders.length === 0 || holders.some((t) => need.caps.some((c) => hasCap(t, c)) || (need.pingGroup === true && inPingRange(t)))) continue;
      const t = holders[0]!;
      const fd = t.fds.find((d) => d.file === f.id)!.fd;
      const cap = need.caps.map((c) => CAP_NAMES[c.toString()]!).join(' or ');
      throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) fd ${fd} would get ${need.what}, which needs ${cap} when it is made, `
        + `and its credentials have ${need.caps.length > 1 ? 'neither' : `no ${cap}`}: nothing was restored; sign the image and restore with --trust if it is genuine`);
    }
  }
}
