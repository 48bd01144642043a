/**
 * A TCP connection accepted through TCP Fast Open before its handshake ended (SYN_RECV): the
 * only way a program holds a socket in SYN_RECV. The checkpoint refuses it in one line and the
 * process runs on; so is the client's end, SYN_SENT with data in its SYN (a new connect would
 * not carry it); once the handshake ends, the connection works. In a network namespace of
 * the test (deleted after), where net.ipv4.tcp_fastopen lets both ends use Fast Open without a
 * cookie and an nftables table of the test drops the SYN-ACKs, which keeps the connection in
 * SYN_RECV until the test deletes the table. Server (the tree) and client (outside it) are
 * small Python programs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON } from '../helpers/env.js';
import { ferryIn, inNetns, removeNetns, sysctlIn, testNetns } from '../helpers/netns.js';
import { cleanup, procState, startWorkload, verify, waitFor } from '../helpers/processes.js';

const skip = needs('root', 'build', 'python');
after(() => {
  cleanup();
  removeNetns();
});

/** The server: a Fast Open listener; it accepts one connection and, on SIGUSR1, checks it. */
const SERVER = [
  'import os, signal, socket, struct, time',
  'os.closerange(3, 1 << 16)',
  'state = lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]',
  'l = socket.socket(); l.bind(("127.0.0.1", 0)); l.setsockopt(socket.IPPROTO_TCP, 23, 5); l.listen(5)',
  'go = []',
  'signal.signal(signal.SIGUSR1, lambda *a: go.append(1))',
  'print(f"ready pid={os.getpid()} port={l.getsockname()[1]}", flush=True)',
  'c, _ = l.accept()',
  'print(f"accepted fd={c.fileno()} state={state(c)}", flush=True)',
  'while not go: signal.pause()',
  'deadline = time.time() + 20',
  'while state(c) != 1 and time.time() < deadline: time.sleep(0.05)',
  'c.settimeout(5)',
  'data = c.recv(16)',
  'st = state(c)',
  'c.sendall(b"world")',
  'print("PASS" if st == 1 and data == b"hello" else f"FAIL: state {st}, data {data!r}", flush=True)',
].join('\n');

/** The client: Fast Open's SYN carries "hello"; it waits for the answer. */
const CLIENT = [
  'import os, socket, sys',
  'os.closerange(3, 1 << 16)',
  's = socket.socket()',
  'try: s.sendto(b"hello", socket.MSG_FASTOPEN | socket.MSG_DONTWAIT, ("127.0.0.1", int(sys.argv[1])))',
  'except BlockingIOError: pass',
  'print(f"ready pid={os.getpid()}", flush=True)',
  's.settimeout(60); print("got", s.recv(16), flush=True)',
].join('\n');

describe('TCP Fast Open', { skip, timeout: 120_000 }, () => {
  it('both ends before the handshake ends are refused in one line (SYN_RECV accepted, SYN_SENT with data); both run on and the connection completes', async () => {
    const ns = testNetns({ lo: true });
    sysctlIn(ns, 'net.ipv4.tcp_fastopen', String(0x1 | 0x2 | 0x4 | 0x200)); // client, server, neither needs a cookie
    const nft = (script: string): void => {
      const r = spawnSync('nsenter', [`--net=/run/netns/${ns}`, 'nft', '-f', '-'], { input: script, encoding: 'utf8', timeout: 10_000 });
      assert.equal(r.status, 0, `nft: ${r.stderr}`);
    };
    nft('table inet fttest {\n chain out {\n type filter hook output priority 0;\n tcp flags & (syn | ack) == (syn | ack) drop\n }\n}\n');
    const w = await startWorkload(...inNetns(ns, PYTHON, ['-c', SERVER]));
    const port = /port=(\d+)/.exec(w.text())![1]!;
    const client = await startWorkload(...inNetns(ns, PYTHON, ['-c', CLIENT, port]));
    await waitFor('the server to accept', () => w.text().includes('accepted'));
    const [, fd, state] = /accepted fd=(\d+) state=(\d+)/.exec(w.text())!;
    assert.equal(state, '3', 'the accepted socket is in SYN_RECV');
    const cp = ferryIn(ns, ['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'x.tar'), '--tcp-established']);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${w.pid} fd ${fd}: TCP connection 127\\.0\\.0\\.1:${port} -> 127\\.0\\.0\\.1:\\d+ was accepted through TCP Fast Open before its handshake ended \\(SYN_RECV\\), which TCP_REPAIR cannot rebuild; checkpoint it once the client's ACK has come`));
    assert.equal(cp.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(w.pid).tracer, 0, 'detached');
    // The client's end: SYN_SENT with "hello" in its SYN, which a new connect would not carry.
    const cc = ferryIn(ns, ['checkpoint', '--pid', String(client.pid), '--image', join(client.dir, 'x.tar'), '--tcp-established']);
    assert.equal(cc.code, 1);
    assert.match(cc.stderr, new RegExp(`pid ${client.pid} fd 3: TCP connection 127\\.0\\.0\\.1:\\d+ -> 127\\.0\\.0\\.1:${port} is being made \\(SYN_SENT\\) with 5 bytes of TCP Fast Open data in its SYN, which a new connect would not send; checkpoint it once the handshake has ended`));
    assert.equal(cc.stderr.trim().split('\n').length, 1, 'one line');
    assert.equal(procState(client.pid).tracer, 0, 'the client is detached');
    nft('delete table inet fttest');
    assert.equal(await verify(w, 30_000), 'PASS');
    await waitFor('the client to get the answer', () => client.text().includes("got b'world'"), 10_000);
  });
});
