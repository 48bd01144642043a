/**
 * A TCP echo workload and its peer outside the tree, for the network lock's tests
 * (test/integration/netlock.test.ts, test/faults/netlock.test.ts): a Python process echoes one
 * loopback connection whose other end is the test process, which sends numbered bytes every
 * few milliseconds and checks that each comes back in order, and that it never sees a reset.
 * The lock's nftables tables are looked for by the names ferry gives them, never otherwise.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { PYTHON } from './env.js';
import { sleep, startWorkload, waitFor, type Workload } from './processes.js';

/** A TCP port free on 127.0.0.1 right now (the kernel picks it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** nft(8), if installed. */
export const NFT = ['/usr/sbin/nft', '/sbin/nft'].find((p) => existsSync(p));

/** Whether table inet `name` exists. */
export function tableExists(name: string): boolean {
  return spawnSync(NFT!, ['list', 'table', 'inet', name], { stdio: 'ignore' }).status === 0;
}

/** Names of the lock tables a ferry with pid `ferryPid` made (ferry-lock-PID-…). */
export function locksOf(ferryPid: number): string[] {
  const out = spawnSync(NFT!, ['list', 'tables'], { encoding: 'utf8' }).stdout;
  return [...out.matchAll(new RegExp(`^table inet (ferry-lock-${ferryPid}-[0-9a-f]+)$`, 'gm'))].map((m) => m[1]!);
}

const servers = new Set<Server>();
/** Closes the listeners echoPair left open (after a failure). */
export function closeServers(): void {
  for (const s of servers) s.close();
  servers.clear();
}

/**
 * The echo workload (python3 -c ECHO PORT HOST [SOURCE]): connects to HOST:PORT (from address
 * SOURCE if given), prints "ready pid=N", echoes what it reads (blocked in recv, or with
 * a last argument `--poll` asleep for 1.5 s between drains of its socket that do not wait); SIGUSR1 prints PASS if its
 * socket's options are the defaults it never changed (SO_OOBINLINE off, SO_PEEK_OFF -1, not in
 * TCP_REPAIR mode), else FAIL: a checkpoint changes them while it reads the socket.
 */
export const ECHO = [
  'import os, signal, socket, sys, time',
  'os.closerange(3, 1 << 16)',
  'polling = sys.argv[-1] == "--poll"',
  'if polling: sys.argv.pop()',
  's = socket.create_connection((sys.argv[2], int(sys.argv[1])), source_address=(sys.argv[3], 0) if len(sys.argv) > 3 else None)',
  'def check(*_):',
  '    got = (s.getsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE), s.getsockopt(socket.SOL_SOCKET, 42), s.getsockopt(socket.IPPROTO_TCP, 19))',
  '    print("PASS" if got == (0, -1, 0) else f"FAIL SO_OOBINLINE, SO_PEEK_OFF, TCP_REPAIR are {got}", flush=True)',
  'signal.signal(signal.SIGUSR1, check)',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'while True:',
  '    if polling:',
  '        time.sleep(1.5)',
  '        while True:',
  '            try: d = s.recv(65536, socket.MSG_DONTWAIT)',
  '            except BlockingIOError: break',
  '            if not d: sys.exit(0)',
  '            s.sendall(d)',
  '        continue',
  '    d = s.recv(65536)',
  '    if not d: break',
  '    s.sendall(d)',
].join('\n');

/** The peer: sends numbered bytes every few ms, checks what comes back. */
export interface Peer {
  sent: number;
  received: number;
  errors: string[];
  stop(): void;
}

/**
 * Starts the echo workload and its peer (sending at once). `connectTo` is the address the
 * workload connects to: 127.0.0.1, or ::ffff:127.0.0.1 for an IPv6 socket whose packets are
 * IPv4 (the peer listens on 127.0.0.1 either way). `polling`: the workload sleeps between
 * reads that do not wait (ECHO's `--poll`), instead of waiting in recv.
 */
export async function echoPair(connectTo = '127.0.0.1', polling = false): Promise<{ w: Workload; peer: Peer }> {
  let accept!: (s: Socket) => void;
  const accepted = new Promise<Socket>((r) => { accept = r; });
  const server = createServer((s) => accept(s));
  servers.add(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as { port: number }).port;
  const w = await startWorkload(PYTHON, ['-c', ECHO, String(port), connectTo, ...(polling ? ['--poll'] : [])]);
  const sock = await accepted;
  server.close();
  servers.delete(server);
  const peer: Peer = { sent: 0, received: 0, errors: [], stop: () => {} };
  sock.on('error', (err) => peer.errors.push(`${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`));
  sock.on('close', () => peer.errors.push('the connection closed'));
  sock.on('data', (d: Buffer) => {
    for (const b of d) {
      if (b !== peer.received % 251 && peer.errors.length < 5) peer.errors.push(`byte ${peer.received} is ${b}, expected ${peer.received % 251}`);
      peer.received++;
    }
  });
  const timer = setInterval(() => {
    const chunk = Buffer.alloc(1000);
    for (let i = 0; i < chunk.length; i++) chunk[i] = (peer.sent + i) % 251;
    peer.sent += chunk.length;
    sock.write(chunk);
  }, 5);
  peer.stop = () => {
    clearInterval(timer);
    sock.destroy();
  };
  return { w, peer };
}

/** Every byte sent comes back, and the peer saw no error. */
export async function allEchoed(peer: Peer, ms = 20000): Promise<void> {
  await sleep(200);
  const sent = peer.sent;
  await waitFor(`the echo of ${sent} bytes (got ${peer.received})`, () => peer.received >= sent || peer.errors.length > 0, ms);
  assert.deepEqual(peer.errors, [], 'the peer saw no reset and no wrong byte');
}

