/**
 * No privilege from the image, for sockets (docs/security.md): some sockets carry a privilege
 * the kernel checks only when they are made or bound, and restore makes and binds them as
 * root. A packet socket (CAP_NET_RAW at socket(2)) sees every frame of its interfaces; a
 * netlink socket joined to multicast groups of a protocol that lets only CAP_NET_ADMIN listen
 * (checked at bind(2); route and uevent groups are open to all) hears what the kernel tells
 * administrators. For an image no trusted key signed, each such socket must be held by a
 * process whose restored credentials have that capability, or the restore is refused before
 * anything is made (EPRIVILEGE), naming the process, descriptor and socket.
 */
import { FerryError } from '../errors.js';
import { big, type FileRecord, type TaskRecord } from '../image/records.js';

const CAP_NET_ADMIN = 12n, CAP_NET_RAW = 13n;
const CAP_NAMES: Readonly<Record<string, string>> = { [CAP_NET_ADMIN.toString()]: 'CAP_NET_ADMIN', [CAP_NET_RAW.toString()]: 'CAP_NET_RAW' };
/** Netlink protocols whose groups anyone may join (NL_CFG_F_NONROOT_RECV): NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT. */
const OPEN_GROUPS = new Set([0, 15]);

/** The capability a socket record needs its holder to have, and what it is, or undefined. */
function needed(f: FileRecord): { cap: bigint; what: string } | undefined {
  if (f.kind === 'packet') return { cap: CAP_NET_RAW, what: 'a packet socket' };
  if (f.kind === 'netlink' && Array.isArray(f.groups) && f.groups.length > 0 && !OPEN_GROUPS.has(f.protocol as number)) {
    return { cap: CAP_NET_ADMIN, what: `a netlink socket (protocol ${String(f.protocol)}) in multicast groups only administrators may join` };
  }
  return undefined;
}

/** Whether the leader of `t` has capability `cap` in its effective set, by its recorded credentials. */
const hasCap = (t: Pick<TaskRecord, 'creds'>, cap: bigint): boolean =>
  ((big(t.creds.threads[0]?.caps.effective ?? '0x0') >> cap) & 1n) === 1n;

/** Throws EPRIVILEGE for the first socket whose holders lack the capability it carries. */
export function checkSocketPrivilege(label: string, tasks: readonly Pick<TaskRecord, 'pid' | 'comm' | 'creds' | 'fds'>[],
  files: readonly FileRecord[]): void {
  for (const f of files) {
    const need = needed(f);
    if (!need) continue;
    const holders = tasks.filter((t) => t.fds.some((d) => d.file === f.id));
    if (holders.length === 0 || holders.some((t) => hasCap(t, need.cap))) continue;
    const t = holders[0]!;
    const fd = t.fds.find((d) => d.file === f.id)!.fd;
    const cap = CAP_NAMES[need.cap.toString()]!;
    throw new FerryError('EPRIVILEGE', `image ${label}: pid ${t.pid} (${t.comm}) fd ${fd} would get ${need.what}, which needs ${cap} when it is made, `
      + `and its credentials have no ${cap}: nothing was restored; sign the image and restore with --trust if it is genuine`);
  }
}
