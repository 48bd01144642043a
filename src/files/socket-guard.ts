/**
 * The watchdog of the TCP sockets a checkpoint changes while it reads them (docs/safety.md):
 * repair mode (files/tcp.ts), SO_OOBINLINE and SO_PEEK_OFF (files/tcp-urgent.ts), and
 * SO_REUSEADDR, which leaving repair mode resets. Nothing of the kernel's puts these back if
 * ferry dies meanwhile, and a socket left in repair mode sends nothing: its connection hangs.
 * So a checkpoint with --tcp-established starts ferry-watchdog in `sockets` mode before the
 * freeze, and tells it about each socket (its process, descriptor, inode, and the three
 * options' values) before the first change. If ferry dies before it disarms the watchdog,
 * the watchdog puts every socket of a still living process back as it was.
 *
 * It is disarmed once the sockets are let go or, for a tree that is killed, just before the
 * sockets go back into repair mode for the kill (files/tcp.ts): the watchdog must never take
 * a dying process's socket out of repair mode, which would send its peer a FIN or a reset.
 */
import { armFedWatchdog, type FedWatchdog } from '../watchdog.js';
import type { FdDesc } from './types.js';

/** A socket's options as they were before the checkpoint changed them. */
export interface SocketOriginals {
  reuseAddr: number;
  oobInline: number;
  /** SO_PEEK_OFF, or null where the socket has none. */
  peekOff: number | null;
}

/** Tells the watchdog about socket `d` before its first change. */
export type GuardSocket = (d: Pick<FdDesc, 'pid' | 'fd' | 'link'>, before: SocketOriginals) => void;

/** The armed watchdog of one checkpoint's sockets. */
export interface SocketGuard {
  guard: GuardSocket;
  /** Ferry put the sockets back (or is about to kill their processes): idempotent. */
  disarm(): void;
}

/** Starts the sockets watchdog; resolves once it is armed. `what` names the tree. */
export async function startSocketGuard(what: string): Promise<SocketGuard> {
  const w: FedWatchdog = await armFedWatchdog(['sockets'], `the TCP sockets of ${what}`);
  return {
    guard(d, before) {
      const ino = /^socket:\[(\d+)\]$/.exec(d.link)?.[1];
      if (ino === undefined) throw new Error(`pid ${d.pid} fd ${d.fd} is not a socket (${d.link})`);
      const num = (n: number): string => String(Math.trunc(n));
      w.send(`+ ${d.pid} ${d.fd} ${ino} ${num(before.reuseAddr)} ${num(before.oobInline)} ${before.peekOff === null ? '-' : num(before.peekOff)}`);
    },
    disarm: () => w.disarm(),
  };
}
