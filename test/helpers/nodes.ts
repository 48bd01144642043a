/**
 * Two "nodes" on this machine for the migration tests (issue 11): two network namespaces the
 * test makes, joined by a veth pair with addresses of its own, each node with its own runc
 * state directory (--root) and a directory for its bundles; a third namespace for a client,
 * joined to both nodes, when a test asks for one: it reaches a service address that both
 * nodes hold on the node the test routes it to (as a virtual address moves with a workload).
 *
 * Names carry the test process's pid (`fy<pid>s`, `fy<pid>t`, `fy<pid>c`), the addresses are
 * 10.200.X.1 and .2 (10.201.X.1/.2 and 10.202.X.1/.2 for the client's links to the target and
 * the source, 10.203.X.1 the service address, 10.204.X.1 the client's) with X from the pid:
 * nothing is shared with another test run. The namespaces are entered with nsenter --net only (the mount
 * namespace stays the machine's, so files and /proc are the same on both nodes, as the
 * restore needs them).
 *
 * `removeNodes()` (also run on exit and on SIGTERM/SIGINT through cleanup hooks) kills the
 * processes started here by pid, deletes the runc containers of the nodes' own --root by id,
 * and deletes the namespaces (which takes their veth ends with them).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { scratchDir } from './processes.js';

/** One node: a network namespace, its address, its runc state and bundle directories. */
export interface Node {
  /** The namespace's name (ip netns). */
  netns: string;
  /** Its address on the link to the other node. */
  addr: string;
  /** Its veth end's name. */
  veth: string;
  /** runc --root of this node. */
  runcRoot: string;
  /** Where this node's bundles go. */
  bundles: string;
  /** argv prefix that runs a command in this node's network namespace. */
  exec(cmd: string, args: readonly string[]): [string, string[]];
  /** The namespace's inode, as readlink(/proc/PID/ns/net) shows it. */
  nsLink(): string;
}

export interface Nodes {
  source: Node;
  target: Node;
  /**
   * A client namespace linked to both nodes, when asked for: its `addr` is its own address
   * (on its lo), which both nodes route to it.
   */
  client?: Node;
  /** With a client: the service address, on both nodes' lo; the client reaches it on one. */
  service?: string;
  /**
   * With a client: routes the client's traffic for the service address (or `addr`) to that
   * node, or nowhere (`none`: dropped, an address in transit between nodes).
   */
  serve?: (node: 'source' | 'target' | 'none', addr?: string) => void;
  /** Sets the link between source and target down (a cut network) or up. */
  link(up: boolean): void;
}

const NSENTER = ['/usr/bin/nsenter', '/bin/nsenter'].find((p) => existsSync(p)) ?? 'nsenter';
const made: string[] = [];
const runcRoots: string[] = [];
const children = new Set<ChildProcess>();

/** A skip reason when the machine cannot make nodes, else false. */
export function nodesMissing(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces)';
  if (spawnSync('ip', ['-V']).status !== 0) return 'needs ip (apt-get install iproute2)';
  if (!existsSync(NSENTER) && spawnSync('nsenter', ['--version']).status !== 0) return 'needs nsenter (apt-get install util-linux)';
  return false;
}

function ip(...args: string[]): void {
  const r = spawnSync('ip', args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

function node(name: string, addr: string, veth: string, dir: string): Node {
  const runcRoot = join(dir, name, 'runc');
  const bundles = join(dir, name, 'bundles');
  mkdirSync(runcRoot, { recursive: true, mode: 0o700 });
  mkdirSync(bundles, { recursive: true, mode: 0o700 });
  runcRoots.push(runcRoot);
  return {
    netns: name, addr, veth, runcRoot, bundles,
    exec: (cmd, args) => [NSENTER, [`--net=/run/netns/${name}`, '--', cmd, ...args]],
    nsLink: () => {
      const r = spawnSync(NSENTER, [`--net=/run/netns/${name}`, '--', 'readlink', '/proc/self/ns/net'], { encoding: 'utf8' });
      return r.stdout.trim();
    },
  };
}

/** Makes the source and target nodes (and a client namespace linked to both). */
export function makeNodes(opts: { client?: boolean } = {}): Nodes {
  const id = `fy${process.pid}`;
  const x = (process.pid % 250) + 1;
  const dir = scratchDir('ferry-nodes-');
  const s = `${id}s`;
  const t = `${id}t`;
  try {
    for (const n of [s, t]) {
      ip('netns', 'add', n);
      made.push(n);
      ip('-n', n, 'link', 'set', 'lo', 'up');
    }
    ip('link', 'add', `${id}a`, 'type', 'veth', 'peer', 'name', `${id}b`);
    ip('link', 'set', `${id}a`, 'netns', s);
    ip('link', 'set', `${id}b`, 'netns', t);
    ip('-n', s, 'addr', 'add', `10.200.${x}.1/24`, 'dev', `${id}a`);
    ip('-n', t, 'addr', 'add', `10.200.${x}.2/24`, 'dev', `${id}b`);
    ip('-n', s, 'link', 'set', `${id}a`, 'up');
    ip('-n', t, 'link', 'set', `${id}b`, 'up');
    const out: Nodes = {
      source: node(s, `10.200.${x}.1`, `${id}a`, dir),
      target: node(t, `10.200.${x}.2`, `${id}b`, dir),
      link: (up) => ip('-n', s, 'link', 'set', `${id}a`, up ? 'up' : 'down'),
    };
    if (opts.client === true) {
      // The client: links to both nodes, its own address on lo, reached by each node through
      // its link; a service address on both nodes' lo (moved by routing the client to it).
      const c = `${id}c`;
      ip('netns', 'add', c);
      made.push(c);
      ip('-n', c, 'link', 'set', 'lo', 'up');
      for (const [near, far, node, net] of [[`${id}c`, `${id}d`, t, 201], [`${id}e`, `${id}f`, s, 202]] as const) {
        ip('link', 'add', near, 'type', 'veth', 'peer', 'name', far);
        ip('link', 'set', near, 'netns', c);
        ip('link', 'set', far, 'netns', node);
        ip('-n', c, 'addr', 'add', `10.${net}.${x}.1/24`, 'dev', near);
        ip('-n', node, 'addr', 'add', `10.${net}.${x}.2/24`, 'dev', far);
        ip('-n', c, 'link', 'set', near, 'up');
        ip('-n', node, 'link', 'set', far, 'up');
        ip('-n', node, 'addr', 'add', `10.203.${x}.1/32`, 'dev', 'lo');
        ip('-n', node, 'route', 'add', `10.204.${x}.1/32`, 'via', `10.${net}.${x}.1`);
      }
      ip('-n', c, 'addr', 'add', `10.204.${x}.1/32`, 'dev', 'lo');
      out.client = node(c, `10.204.${x}.1`, `${id}c`, dir);
      out.service = `10.203.${x}.1`;
      out.serve = (from, addr = `10.203.${x}.1`) => (from === 'none'
        ? ip('-n', c, 'route', 'replace', 'blackhole', `${addr}/32`)
        : ip('-n', c, 'route', 'replace', `${addr}/32`, 'via', `10.${from === 'target' ? 201 : 202}.${x}.2`));
      out.serve('source');
    }
    return out;
  } catch (err) {
    removeNodes();
    throw err;
  }
}

/**
 * A pod's network namespace on node `n` (as a CNI plugin makes one): its own namespace named
 * `name` (a suffix: the pid goes before it), joined to the node by a veth pair, holding
 * address `addr`/32, its default route through the node (a link-local gateway address), the
 * node routing `addr` to it and forwarding. Removed by removeNodes(). Returns its path.
 */
export function makePod(n: Node, name: string, addr: string): string {
  const id = `fy${process.pid}`;
  const pod = `${id}${name}`;
  const x = (process.pid % 250) + 1;
  ip('netns', 'add', pod);
  made.push(pod);
  ip('-n', pod, 'link', 'set', 'lo', 'up');
  const [inner, outer] = [`${pod}i`.slice(-15), `${pod}o`.slice(-15)];
  ip('link', 'add', inner, 'type', 'veth', 'peer', 'name', outer);
  ip('link', 'set', inner, 'netns', pod);
  ip('link', 'set', outer, 'netns', n.netns);
  const gw = `169.254.${x}.1`;
  ip('-n', n.netns, 'addr', 'add', `${gw}/32`, 'dev', outer);
  ip('-n', n.netns, 'link', 'set', outer, 'up');
  ip('-n', n.netns, 'route', 'add', `${addr}/32`, 'dev', outer);
  ip('-n', pod, 'addr', 'add', `${addr}/32`, 'dev', inner);
  ip('-n', pod, 'link', 'set', inner, 'up');
  ip('-n', pod, 'route', 'add', gw, 'dev', inner);
  ip('-n', pod, 'route', 'add', 'default', 'via', gw, 'dev', inner);
  const [cmd, args] = n.exec('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`sysctl net.ipv4.ip_forward=1 in ${n.netns}: ${r.stderr.trim()}`);
  return `/run/netns/${pod}`;
}

/** Spawns `cmd args` in `n`'s network namespace; killed by removeNodes() if still running. */
export function spawnIn(n: Node, cmd: string, args: readonly string[], opts: Parameters<typeof spawn>[2] = {}): ChildProcess {
  const [c, a] = n.exec(cmd, args);
  const child = spawn(c, a, opts);
  children.add(child);
  child.on('close', () => children.delete(child));
  return child;
}

/** Ids of the containers in runc state directory `root` (its subdirectories). */
export function containersIn(root: string): string[] {
  try {
    return readdirSync(root).filter((d) => existsSync(join(root, d, 'state.json')));
  } catch {
    return [];
  }
}

/** The network namespace of `pid`, as readlink(/proc/PID/ns/net) shows it. */
export function netnsOf(pid: number): string {
  return readlinkSync(`/proc/${pid}/ns/net`);
}

/**
 * Removes everything the nodes hold: processes started by spawnIn (by pid), the containers of
 * the nodes' runc roots (by id), the namespaces (their veth ends go with them).
 */
export function removeNodes(): void {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  children.clear();
  const runc = ['/usr/sbin/runc', '/usr/bin/runc'].find((p) => existsSync(p));
  for (const root of runcRoots.splice(0)) {
    if (runc === undefined) break;
    for (const id of containersIn(root)) spawnSync(runc, ['--root', root, 'delete', '--force', id], { timeout: 30_000 });
  }
  for (const n of made.splice(0).reverse()) spawnSync('ip', ['netns', 'delete', n], { timeout: 10_000 });
}
process.on('exit', removeNodes);
