/**
 * The network lock (src/files/tcp-lock.ts) and --tcp-close (src/files/tcp-close.ts) through
 * bin/ferry. The workload is a Python echo over one loopback connection whose peer is this
 * test process, outside the tree: the peer keeps sending numbered bytes through checkpoint and
 * restore and checks that every byte comes back, in order, and that it never sees a reset.
 * The lock's nftables table is looked for by the name ferry gives it (checkpoint --json says
 * it; ferry-lock-FERRYPID- while ferry runs), never by listing anything else.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FERRY, needs, PYTHON } from '../helpers/env.js';
import { allEchoed, echoPair, locksOf, NFT, tableExists, closeServers } from '../helpers/echo.js';
import { alive, cleanup, ferry, own, procState, scratchDir, sleep, startWorkload, verify, waitFor } from '../helpers/processes.js';
import { editImage, json } from '../helpers/images.js';

const skip = needs('root', 'python') || (NFT === undefined ? 'needs nft(8) (apt-get install nftables)' : false);
const servers: Server[] = [];
after(() => {
  for (const s of servers) s.close();
  closeServers();
  cleanup();
});

describe('the network lock', { skip, timeout: 120_000 }, () => {
  it('a peer outside the tree sends through checkpoint and restore: no reset, every byte back; the lock lives until the restore', async () => {
    const { w, peer } = await echoPair();
    try {
      await sleep(300);
      const image = join(w.dir, 'echo.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--json']);
      assert.equal(cp.code, 0, cp.stderr);
      const table = (JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock;
      assert.ok(table !== undefined && /^ferry-lock-\d+-[0-9a-f]{8}$/.test(table), `checkpoint --json names the lock: ${cp.stdout.toString()}`);
      await w.exited;
      assert.ok(tableExists(table), `table inet ${table} is there while the tree is gone`);
      assert.deepEqual(locksOf(Number(table.split('-')[2])), [table], 'only the kept table is left (the owned one went with its nft)');
      await sleep(500); // the peer keeps sending into the lock
      // A restore that fails leaves the lock: the peer still waits, and a retry works.
      const failed = ferry(['restore', '--image', image]);
      assert.equal(failed.code, 1);
      assert.match(failed.stderr, /restore it with --tcp-established/);
      assert.ok(tableExists(table), 'a failed restore leaves the lock');
      await sleep(300);
      const rs = ferry(['restore', '--image', image, '--tcp-established']);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.ok(!tableExists(table), 'the restore removed the lock');
      await allEchoed(peer);
      assert.ok(peer.received > 50_000, `data flowed (${peer.received} bytes)`);
      assert.equal(await verify(w), 'PASS');
    } finally {
      peer.stop();
    }
  });

  it('an IPv6 socket on an IPv4-mapped address is locked as the IPv4 connection its packets are', async () => {
    const { w, peer } = await echoPair('::ffff:127.0.0.1');
    try {
      await sleep(200);
      assert.ok(readFileSync(`/proc/${w.pid}/net/tcp6`, 'utf8').includes('0000000000000000FFFF00000100007F'), 'the workload\'s socket is a tcp6 one');
      const image = join(w.dir, 'echo6.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established']);
      assert.equal(cp.code, 0, cp.stderr);
      await w.exited;
      await sleep(500); // the peer keeps sending into the lock
      const rs = ferry(['restore', '--image', image, '--tcp-established']);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      await allEchoed(peer);
      assert.equal(await verify(w), 'PASS');
    } finally {
      peer.stop();
    }
  });

  it('an untrusted image has only a lock of its own connections removed, never another table it names', async () => {
    const { w, peer } = await echoPair();
    const dir = scratchDir('ferry-lockname-');
    const noHostKey = join(dir, 'none.toml');
    writeFileSync(noHostKey, '[image]\nhost_key = ""\n');
    // Another checkpoint's kept lock, as far as anyone can tell: a table of ferry's name
    // (this test's pid in it) blocking a connection that is not the workload's.
    const foreign = `ferry-lock-${process.pid}-${randomBytes(4).toString('hex')}`;
    let table: string | undefined;
    try {
      const made = spawnSync(NFT!, ['-f', '-'], { input: `add table inet ${foreign}\nadd set inet ${foreign} v4 { type ipv4_addr . inet_service . ipv4_addr . inet_service; `
        + 'elements = { 127.0.0.9 . 4000 . 127.0.0.9 . 5000 }; }\n', encoding: 'utf8' });
      assert.equal(made.status, 0, made.stderr);
      await sleep(200);
      const image = join(w.dir, 'echo.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--json', '--config', noHostKey]);
      assert.equal(cp.code, 0, cp.stderr);
      table = (JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock;
      assert.ok(table !== undefined);
      await w.exited;
      const edited = join(dir, 'edited.tar');
      await editImage(image, edited, { 'files.json': json<{ netLock: { table: string } }>((v) => { v.netLock.table = foreign; }) });
      const rs = ferry(['restore', '--image', edited, '--tcp-established', '--config', noHostKey, '--max-creds', 'root']);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.match(rs.stderr, new RegExp(`network lock kept since the checkpoint could not be removed \\(it blocks .*127\\.0\\.0\\.9.*, which is not one of the image's connections\\)`));
      assert.ok(tableExists(foreign), 'the table the image named is left alone');
      // The workload's own lock stays too (the image did not name it); removed here, the
      // connection flows again.
      assert.ok(tableExists(table));
      spawnSync(NFT!, ['delete', 'table', 'inet', table]);
      await allEchoed(peer);
      assert.equal(await verify(w), 'PASS');
    } finally {
      peer.stop();
      spawnSync(NFT!, ['delete', 'table', 'inet', foreign], { stdio: 'ignore' });
      if (table !== undefined) spawnSync(NFT!, ['delete', 'table', 'inet', table], { stdio: 'ignore' });
    }
  });

  it('an untrusted image of its own: its lock is checked against its connections and removed', async () => {
    const { w, peer } = await echoPair();
    const dir = scratchDir('ferry-lockname-');
    const noHostKey = join(dir, 'none.toml');
    writeFileSync(noHostKey, '[image]\nhost_key = ""\n');
    let table: string | undefined;
    try {
      await sleep(200);
      const image = join(w.dir, 'echo.tar');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-established', '--json', '--config', noHostKey]);
      assert.equal(cp.code, 0, cp.stderr);
      table = (JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock;
      await w.exited;
      const rs = ferry(['restore', '--image', image, '--tcp-established', '--config', noHostKey, '--max-creds', 'root']);
      assert.equal(rs.code, 0, rs.stderr);
      own(w.pid);
      assert.ok(table !== undefined && !tableExists(table), 'the lock is gone');
      assert.doesNotMatch(rs.stderr, /network lock/);
      await allEchoed(peer);
      assert.equal(await verify(w), 'PASS');
    } finally {
      peer.stop();
      if (table !== undefined) spawnSync(NFT!, ['delete', 'table', 'inet', table], { stdio: 'ignore' });
    }
  });

  it('--leave-running: the lock is taken during the checkpoint and gone after; the connection goes on', async () => {
    const { w, peer } = await echoPair();
    try {
      await sleep(200);
      // Paused once the tree is dumped, the lock is held: ferry's table is there.
      const child = spawn(FERRY, ['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'echo.tar'), '--tcp-established', '--leave-running'],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FERRY_TEST_PAUSE_AT: 'dumped' } });
      let err = '';
      child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
      const exit = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
      await waitFor('ferry to pause at dumped', () => /paused at dumped/.test(err), 20000);
      assert.equal(locksOf(child.pid!).length, 1, 'ferry holds one lock table');
      await sleep(300);
      child.kill('SIGTERM'); // lets the tree go and writes nothing
      assert.equal(await exit, 143, err);
      assert.deepEqual(locksOf(child.pid!), [], 'the lock went with the checkpoint');
      const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'echo.tar'), '--tcp-established', '--leave-running', '--json']);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal((JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock, undefined, 'no lock kept');
      assert.equal(procState(w.pid).tracer, 0);
      await allEchoed(peer);
      assert.equal(await verify(w), 'PASS');
    } finally {
      peer.stop();
    }
  });
});

const CLOSER = [
  'import os, signal, socket, sys',
  'os.closerange(3, 1 << 16)',
  's = socket.create_connection(("127.0.0.1", int(sys.argv[1])))',
  's.sendall(b"hello")',
  'def check(*_):',
  '    r = s.recv(10)',
  '    try:',
  '        s.send(b"x")',
  '        print("FAIL: a write to the closed connection worked", flush=True)',
  '    except BrokenPipeError:',
  '        print("PASS" if r == b"" else f"FAIL: read gave {r!r}, not end of file", flush=True)',
  '    except OSError as e:',
  '        print(f"FAIL: write failed with {e!r}, not EPIPE", flush=True)',
  'signal.signal(signal.SIGUSR1, check)',
  'print(f"ready pid={os.getpid()}", flush=True)',
  'while True: signal.pause()',
].join('\n');

describe('--tcp-close', { skip: needs('root', 'python'), timeout: 60_000 }, () => {
  it('connections are not kept: the restored program reads end of file and cannot write; no lock', async () => {
    const server = createServer(() => {});
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const w = await startWorkload(PYTHON, ['-c', CLOSER, String((server.address() as { port: number }).port)]);
    const image = join(w.dir, 'close.tar');
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', image, '--tcp-close', '--json']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.equal((JSON.parse(cp.stdout.toString()) as { netLock?: string }).netLock, undefined, 'no lock with --tcp-close');
    await w.exited;
    await waitFor(`pid ${w.pid} to be free`, () => !alive(w.pid));
    const plain = ferry(['restore', '--image', image, '--tcp-established']);
    assert.equal(plain.code, 1, 'an image without the connection\'s state needs --tcp-close');
    assert.match(plain.stderr, /checkpointed with --tcp-close\); restore with --tcp-close/);
    const rs = ferry(['restore', '--image', image, '--tcp-close']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS');
  });
});
