/**
 * The network lock: while a tree's TCP connections are checkpointed and until they are
 * restored, no segment of theirs may reach a peer or a socket. Between the kill of the original
 * (its sockets close silently in repair mode, tcp.ts) and the restore, a segment from the peer
 * would find no socket and be answered with RST, and the peer would drop the connection; while
 * the tree is dumped, a segment taken in after its queues were read would be lost. So the
 * connections' packets are dropped (not rejected: the peer retransmits, and the restored
 * socket answers) from before the first connection is read until every connection is rebuilt
 * and the tree runs. docs/safety.md, "The network lock", says why it is made this way.
 *
 * The lock is an nftables table (nft(8)) with two base chains at priority raw (-300, before
 * conntrack) on the input and output hooks:
 * - a tree on the host: two sets of 4-tuples (saddr . sport . daddr . dport, IPv4 and IPv6),
 *   each connection in both directions, and a rule per chain dropping TCP that matches;
 * - a tree in a network namespace of its own (a container): everything in that namespace is
 *   dropped (policy drop). That namespace dies with the container, so this lock is never
 *   kept past the checkpoint;
 * - a container in a namespace that outlives it (joined by path, as a pod's, which holds the
 *   address its peers keep sending to): the 4-tuples, as on the host, inside that namespace,
 *   and kept like the host's. The restore (or, after a migration, the source) removes the
 *   kept table in that namespace.
 *
 * Ownership is what makes a dying ferry safe. During the checkpoint the table has the `owner`
 * flag (NFT_TABLE_F_OWNER, Linux 5.12): the kernel deletes it when the netlink socket that
 * created it is closed. That socket belongs to a child `nft -i` reading commands from a pipe
 * only ferry holds; if ferry dies the pipe reaches EOF and nft exits (PR_SET_PDEATHSIG through
 * setpriv(1) kills it as well), its socket closes, and the table is gone: the tree, let go by
 * the kernel, talks again. Only when the image is complete and the tree is about to be killed
 * does the same nft create a second table, without the owner flag, with the same rules (the
 * "kept" table, recorded in the image, FilesRecord.netLock), before the owned one goes with
 * its nft. Restore deletes the kept table once the restored tree runs; a restore that fails
 * leaves it, so a retry finds the peers still waiting.
 */
import type { ChildProcess } from 'node:child_process';
import { childProcess } from '../builtins.js';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { FerryError } from '../errors.js';
import { ipKey, parseProcAddr, type Endpoint } from './inet-common.js';
import type { FdDesc } from './types.js';

/** The name of a kept lock table as an image may give it: anything else is refused. */
export const KEPT_TABLE = /^ferry-lock-[0-9]{1,7}-[0-9a-f]{8}$/;

/** One connection of the tree as the lock matches it. */
export interface LockedConnection {
  v6: boolean;
  local: Endpoint;
  remote: Endpoint;
}

/** TCP states (include/net/tcp_states.h) of sockets that have no peer. */
const TCP_CLOSE = 7, TCP_LISTEN = 10;
/** How long nft gets to answer one request. */
const NFT_TIMEOUT_MS = 10_000;

/**
 * The TCP connections the tree's descriptors hold: sockets in any state with a peer (not
 * listening, not closed), from /proc/PID/net/tcp and tcp6 (proc(5)), read once per network
 * namespace of the tree.
 */
export function treeConnections(descs: ReadonlyMap<number, readonly FdDesc[]>): LockedConnection[] {
  const byNetns = new Map<string, Map<string, LockedConnection>>();
  const out: LockedConnection[] = [];
  const seen = new Set<string>();
  for (const [pid, list] of descs) {
    const inodes = list.map((d) => /^socket:\[(\d+)\]$/.exec(d.link)?.[1]).filter((i): i is string => i !== undefined);
    if (inodes.length === 0) continue;
    let ns: string;
    try {
      ns = String(statSync(`/proc/${pid}/ns/net`).ino);
    } catch {
      continue; // gone: the dump meets it
    }
    let table = byNetns.get(ns);
    if (!table) byNetns.set(ns, (table = connectionsByInode(pid)));
    for (const ino of inodes) {
      const c = table.get(ino);
      if (c && !seen.has(ino)) {
        seen.add(ino);
        out.push(c);
      }
    }
  }
  return out;
}

function connectionsByInode(pid: number): Map<string, LockedConnection> {
  const out = new Map<string, LockedConnection>();
  for (const [file, v6] of [['tcp', false], ['tcp6', true]] as const) {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/net/${file}`, 'utf8');
    } catch {
      continue; // no IPv6
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10) continue;
      const state = parseInt(f[3]!, 16);
      if (state === TCP_LISTEN || state === TCP_CLOSE) continue;
      const remote = parseProcAddr(f[2]!, v6);
      if (remote.port === 0) continue;
      out.set(f[9]!, { v6, local: parseProcAddr(f[1]!, v6), remote });
    }
  }
  return out;
}

/**
 * The family and address of an endpoint as its packets carry it: a tcp6 socket talking to an
 * IPv4-mapped address (::ffff:a.b.c.d) sends IPv4 packets.
 */
function onWire(e: Endpoint, v6: boolean): { v6: boolean; address: string } {
  if (!v6) return { v6, address: e.address };
  const k = ipKey(e.address); // "::ffff:a.b.c.d" for a mapped address, 8 groups otherwise
  return k.startsWith('::ffff:') && k.includes('.') ? { v6: false, address: k.slice(7) } : { v6: true, address: k };
}

/** Whether `pid` is in ferry's own network namespace. */
export function sharesNetns(pid: number): boolean {
  return statSync(`/proc/${pid}/ns/net`).ino === statSync('/proc/self/ns/net').ino;
}

/** A program from PATH or the usual system directories, or undefined. */
function findProgram(name: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin', '/usr/bin', '/bin'];
  for (const d of dirs) if (existsSync(join(d, name))) return join(d, name);
  return undefined;
}

/** Where the lock applies: the host's network namespace (4-tuples) or a namespace of the tree's own (all of it). */
type LockScope = { kind: 'tuples'; connections: readonly LockedConnection[] } | { kind: 'netns' };

/**
 * The packet mark (SO_MARK) of the segments restore itself sends to a rebuilt connection
 * (tcp-segment.ts: the peer's FIN, its ACK of ours): the lock lets them through, and only
 * them. A mark needs CAP_NET_ADMIN (or CAP_NET_RAW) to set, so a process cannot forge it.
 */
export const FERRY_MARK = 0x6665_7279; // "fery"

/**
 * The commands that fill table `table` with the lock for `scope`: sets and chains, on one
 * line (one nft transaction: the kernel applies all of it at once, or none).
 */
function lockCommands(table: string, scope: LockScope): string {
  const chain = (name: string, hook: string, policy: string): string =>
    `add chain inet ${table} ${name} { type filter hook ${hook} priority -300; policy ${policy}; }; `
    + `add rule inet ${table} ${name} meta mark ${FERRY_MARK} accept`;
  if (scope.kind === 'netns') return [chain('in', 'input', 'drop'), chain('out', 'output', 'drop')].join('; ');
  const v4: string[] = [];
  const v6: string[] = [];
  for (const c of scope.connections) {
    const a = onWire(c.local, c.v6);
    const b = onWire(c.remote, c.v6);
    const l = `${a.address} . ${c.local.port}`;
    const r = `${b.address} . ${c.remote.port}`;
    (a.v6 ? v6 : v4).push(`${l} . ${r}`, `${r} . ${l}`);
  }
  const set = (name: string, type: string, els: string[]): string =>
    `add set inet ${table} ${name} { type ${type} . inet_service . ${type} . inet_service; ${els.length ? `elements = { ${els.join(', ')} }; ` : ''}}`;
  const rules = (name: string): string[] => [
    `add rule inet ${table} ${name} meta l4proto tcp ip saddr . tcp sport . ip daddr . tcp dport @v4 drop`,
    `add rule inet ${table} ${name} meta l4proto tcp ip6 saddr . tcp sport . ip6 daddr . tcp dport @v6 drop`,
  ];
  return [set('v4', 'ipv4_addr', v4), set('v6', 'ipv6_addr', v6),
    chain('in', 'input', 'accept'), ...rules('in'), chain('out', 'output', 'accept'), ...rules('out')].join('; ');
}

/**
 * A lock held by a child `nft -i`: its table has the owner flag and goes when the child does.
 * Started (`start`) before the tree is frozen, so that nft's start-up is not in the frozen
 * window; taken (`take`) once the tree's connections are known.
 */
export class NetLock {
  private stdout = '';
  private stderr = '';
  private exited = false;
  private readonly waiters: Array<() => void> = [];
  /** The owned table, deleted by the kernel when nft goes. */
  readonly table = `ferry-lock-${process.pid}-${randomBytes(4).toString('hex')}`;
  /**
   * The name the kept table will have (`keep`), chosen now so that the image can record it;
   * undefined for a network namespace of the tree's own.
   */
  readonly kept: string | undefined;
  private scope: LockScope | undefined;
  private starting: Promise<void> = Promise.resolve();

  private constructor(private readonly child: ChildProcess | undefined, private readonly netnsPid: number | undefined,
    private readonly what: string, private readonly persists: boolean, private readonly missing?: string) {
    this.kept = netnsPid === undefined || persists ? `ferry-lock-${process.pid}-${randomBytes(4).toString('hex')}` : undefined;
    if (!child) {
      this.exited = true;
      return;
    }
    const wake = (): void => { for (const w of this.waiters.splice(0)) w(); };
    child.stdout!.on('data', (d: Buffer) => { this.stdout += d.toString(); wake(); });
    child.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString(); wake(); });
    child.stdin!.on('error', () => { /* it exited: the table went with it */ });
    child.on('error', (err) => { this.stderr += `\n${err.message}`; this.exited = true; wake(); });
    child.on('exit', () => { this.exited = true; wake(); });
  }

  /**
   * Starts nft for a lock on the host's network namespace, or on all of the network namespace
   * of `netnsPid` (a container's own): nothing is locked yet. `what` names the tree in errors.
   * `persists`: that namespace outlives the tree (a container that joined it by path, as a
   * pod's): the lock is on the connections' 4-tuples in it, as on the host, and kept after the
   * kill. When nft (or nsenter) is missing, `take` says so (a tree without connections needs
   * none).
   */
  static start(netnsPid: number | undefined, what: string, persists = false): NetLock {
    const nft = findProgram('nft');
    if (nft === undefined) return new NetLock(undefined, netnsPid, what, persists, 'nft(8) is missing; install nftables (Debian: apt-get install nftables)');
    const setpriv = findProgram('setpriv');
    const argv = [...(setpriv !== undefined ? [setpriv, '--pdeathsig', 'KILL', '--'] : []), nft, '-i'];
    if (netnsPid !== undefined) {
      const nsenter = findProgram('nsenter');
      if (nsenter === undefined) return new NetLock(undefined, netnsPid, what, persists, 'nsenter(1) is missing (util-linux)');
      argv.unshift(nsenter, `--net=/proc/${netnsPid}/ns/net`, '--');
    }
    // Its own process group: a Ctrl-C to ferry's must not take the lock away before ferry is done.
    const child = childProcess().spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const lock = new NetLock(child, netnsPid, what, persists);
    // The owned table, empty (no chain: it drops nothing yet). nft's first command is its
    // slowest (it loads libnftables' cache, tens of ms): paid here, before the freeze.
    lock.starting = lock.request(`add table inet ${lock.table} { flags owner; }`, `list table inet ${lock.table}`);
    lock.starting.catch(() => { /* take() reports it */ });
    return lock;
  }

  /** Resolves once nft has made the (still empty) owned table; FerryError EDUMP if it failed. */
  async ready(): Promise<void> {
    await this.starting;
  }

  /**
   * Takes the lock: exactly `connections` on the host, or the whole network namespace.
   * Resolves once the kernel drops their packets; FerryError EDUMP when nft fails.
   */
  async take(connections: readonly LockedConnection[]): Promise<void> {
    if (this.missing !== undefined) {
      throw new FerryError('EUNSUPPORTED', `${this.what} has ${connections.length} TCP connection(s), which need the network lock: ${this.missing}; or checkpoint with --tcp-close (they are not kept then); the process was left running`);
    }
    this.scope = this.netnsPid !== undefined && !this.persists ? { kind: 'netns' } : { kind: 'tuples', connections };
    await this.starting;
    await this.request(lockCommands(this.table, this.scope), `list chain inet ${this.table} out`);
  }

  /**
   * Makes the kept copy of the lock, named `kept` (no owner flag: it outlives ferry), for a
   * tree about to be killed; nothing for a network namespace of the tree's own that dies with
   * the tree.
   */
  async keep(): Promise<void> {
    if (this.kept === undefined || this.scope === undefined) return;
    await this.request(`add table inet ${this.kept}; ${lockCommands(this.kept, this.scope)}`, `list chain inet ${this.kept} out`);
  }

  /**
   * Sends `command`, then `ack` (a `list` of what the command made), and waits for the
   * listing (or an error: nft names the failed command on stderr). One request at a time.
   */
  private async request(command: string, ack: string): Promise<void> {
    if (this.child === undefined) throw this.failure(this.missing ?? 'nft is not running');
    const table = ack.split(' ')[3]!;
    this.stdout = '';
    this.child.stdin!.write(`${command}\n${ack}\n`);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(this.failure(`nft did not answer within ${NFT_TIMEOUT_MS / 1000} s`)), NFT_TIMEOUT_MS);
      const check = (): void => {
        if (this.stdout.includes(`table inet ${table} {`) && /\n}\n$/.test(this.stdout)) {
          clearTimeout(timer);
          resolve();
        } else if (this.stderr.includes(ack) || this.exited) {
          clearTimeout(timer);
          reject(this.failure(this.stderr.split('\n').find((l) => l.startsWith('Error:')) ?? (this.stderr.trim() || 'nft exited')));
        } else {
          this.waiters.push(check);
        }
      };
      check();
    });
  }

  private failure(why: string): FerryError {
    const on = this.scope?.kind === 'netns' || (this.scope === undefined && this.netnsPid !== undefined && !this.persists) ? 'its network namespace'
      : this.scope?.kind === 'tuples' ? `${this.scope.connections.length} connection(s)` : 'its connections';
    return new FerryError('EDUMP', `${this.what}: cannot take the network lock (nftables table inet ${this.table} on ${on}): ${why.slice(0, 300)}; the process was left running`);
  }

  /** Lets the owned table go now: nft is killed, its socket closes, the kernel deletes it. Idempotent. */
  release(): void {
    if (!this.exited) this.child!.kill('SIGKILL');
  }

  /**
   * As `release`, and resolves once nft is gone, and with it the owned table (the kernel
   * deletes it as nft's socket is released, before nft's exit is reported). Killed rather
   * than sent EOF: `nft -i` takes hundreds of ms to exit on its own.
   */
  async close(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child!.once('exit', () => resolve()));
    this.release();
    await gone;
  }
}

/**
 * Why table `table` is not only the lock of `connections` (an untrusted image names the kept
 * table it wants removed: it may name only one that blocks nothing but its own connections,
 * never another checkpoint's), or undefined when it is. Reads the table (`nft -j list`): every
 * chain must be one of the lock's, every set element one of the connections, either way round.
 */
function foreignLockEntry(nft: string, table: string, connections: readonly LockedConnection[]): string | undefined {
  const r = childProcess().spawnSync(nft, ['-j', 'list', 'table', 'inet', table], { encoding: 'utf8', timeout: NFT_TIMEOUT_MS, maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    if (/No such file or directory/.test(r.stderr ?? '')) return undefined; // gone already: nothing to remove
    return (r.stderr ?? '').split('\n').find((l) => l.startsWith('Error:')) ?? r.error?.message ?? `nft exited with ${r.status}`;
  }
  const ours = new Set<string>();
  for (const c of connections) {
    const l = `${ipKey(c.local.address)}/${c.local.port}`, p = `${ipKey(c.remote.address)}/${c.remote.port}`;
    ours.add(`${l}|${p}`).add(`${p}|${l}`);
  }
  let items: unknown[];
  try {
    items = (JSON.parse(r.stdout) as { nftables?: unknown[] }).nftables ?? [];
  } catch {
    return 'its listing is not JSON';
  }
  for (const item of items as Array<Record<string, any>>) { // eslint-disable-line @typescript-eslint/no-explicit-any
    if (item.chain !== undefined && item.chain.policy === 'drop') return `its chain ${item.chain.name} drops everything, which no connection lock does`;
    if (item.set === undefined) continue;
    for (const e of (item.set.elem ?? []) as unknown[]) {
      const parts = (e as { concat?: unknown[] }).concat;
      const key = Array.isArray(parts) && parts.length === 4 && typeof parts[0] === 'string' && typeof parts[2] === 'string'
        ? `${ipKey(parts[0])}/${parts[1]}|${ipKey(parts[2])}/${parts[3]}` : undefined;
      if (key === undefined || !ours.has(key)) return `it blocks ${JSON.stringify(e).slice(0, 200)}, which is not one of the image's connections`;
    }
  }
  return undefined;
}

/**
 * Deletes the kept lock `table` (restore, once the tree runs). Returns undefined when it is
 * gone (or was already), else why not.
 */
export function removeKeptLock(table: string, only?: readonly LockedConnection[]): string | undefined {
  if (!KEPT_TABLE.test(table)) return `${table} is not a lock table's name`;
  const nft = findProgram('nft');
  if (nft === undefined) return 'nft(8) is missing';
  if (only !== undefined) {
    const foreign = foreignLockEntry(nft, table, only);
    if (foreign !== undefined) return foreign;
  }
  const r = childProcess().spawnSync(nft, ['delete', 'table', 'inet', table], { encoding: 'utf8', timeout: NFT_TIMEOUT_MS });
  if (r.status === 0) return undefined;
  if (/No such file or directory/.test(r.stderr ?? '')) return undefined;
  return (r.stderr ?? '').split('\n').find((l) => l.startsWith('Error:')) ?? r.error?.message ?? `nft exited with ${r.status}`;
}

/**
 * `ferry check`: whether the network lock can be taken here: nft(8) present and tables with
 * the owner flag accepted (Linux 5.12+, nftables 0.9.9+). The probe's table is created by an
 * `nft -f -` that exits at once, so the kernel deletes it right away.
 */
export function probeNetLock(): { ok: boolean; detail: string } {
  const nft = findProgram('nft');
  if (nft === undefined) return { ok: false, detail: 'nft(8) is missing: --tcp-established with connections is refused (apt-get install nftables), --tcp-close works' };
  const name = `ferry-check-${process.pid}-${randomBytes(4).toString('hex')}`;
  const r = childProcess().spawnSync(nft, ['-f', '-'], { input: `add table inet ${name} { flags owner; }\n`, encoding: 'utf8', timeout: NFT_TIMEOUT_MS });
  if (r.status !== 0) {
    const why = (r.stderr ?? '').split('\n').find((l) => l.startsWith('Error:')) ?? r.error?.message ?? `exit ${r.status}`;
    return { ok: false, detail: `nft cannot make a table with the owner flag (${why.slice(0, 200)}): the network lock of --tcp-established needs it (Linux 5.12+)` };
  }
  return { ok: true, detail: 'nftables with owner tables: --tcp-established locks the connections' };
}

