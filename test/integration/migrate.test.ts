/**
 * `ferry migrate` to `ferry receive` end to end, on real counters, over loopback TCP on this
 * machine (same kernel, so the PIDs come back as they were once the source is gone): the
 * migration itself, a peer without the key, the receiver or the sender SIGKILLed while the
 * image streams (FERRY_TEST_PAUSE_AT=streaming), and a restore that fails on the target after
 * the source was killed (the sender restores its own copy). After each failure the source
 * must run on as it was: alive, not stopped, untraced, counting, and pass its own check; the
 * receiver must hold nothing (no spool directory, no stub).
 *
 * Every ferry runs asynchronously: the counters are this process's children, and a killed
 * one must be reaped here for its PID to be free for the restore.
 */
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { exitOf, killFerries, records, startFerry, type Running } from '../helpers/precopy-run.js';
import { derivePsk, keySecret, readMigrationKey } from '../../src/migrate/key.js';
import { Channel, listen, PROTOCOL_VERSION } from '../../src/migrate/channel.js';
import { FERRY_VERSION } from '../../src/version.js';
import {
  alive, cleanup, ferry, own, procState, scratchDir, startWorkload, stubs, verify, waitFor, type Workload,
} from '../helpers/processes.js';

const skip = needs('root', 'build');
after(cleanup);

/** ferry in the background, its exit and its JSON records: the pre-copy tests' helpers. */
const start = startFerry;
after(killFerries);

/** A receiver on 127.0.0.1 with a port the kernel picked, and that port. */
async function receiver(key: string, extra: string[], pause?: string): Promise<{ r: Running; port: number }> {
  const r = start(['receive', '--listen', '127.0.0.1:0', '--key', key, '--json', ...extra], pause);
  await waitFor('the receiver to listen', () => records(r).some((x) => x['phase'] === 'listen') || r.child.exitCode !== null);
  const listen = records(r).find((x) => x['phase'] === 'listen');
  assert.ok(listen, `the receiver did not start: ${r.stderr()}`);
  return { r, port: listen['port'] as number };
}

/** A counter that has ticked a few times. */
async function counter(): Promise<Workload> {
  const w = await startWorkload(join(WORKLOADS, 'counter'), ['50']);
  await waitFor('a few ticks', () => w.ticks().length >= 3);
  return w;
}

/**
 * Asserts that `w`'s original runs on as it was: not stopped, untraced, counting, and (`check`)
 * passing its check, after which it exits.
 */
async function runsOn(w: Workload, ppid: number, check = true): Promise<void> {
  assert.ok(alive(w.pid), 'the source is alive');
  const st = procState(w.pid);
  assert.equal(st.tracer, 0, 'untraced');
  assert.notEqual(st.state, 'T', 'not stopped');
  assert.notEqual(st.state, 't', 'not stopped under ptrace');
  assert.equal(st.ppid, ppid, 'the same parent: the original process, not a restored one');
  const n = w.ticks().length;
  await waitFor('the source to count on', () => w.ticks().length >= n + 3);
  if (check) assert.equal(await verify(w), 'PASS');
}

/** A frame of the migration protocol carrying control message `m` (channel.ts). */
function controlFrame(m: object): Buffer {
  const body = Buffer.from(JSON.stringify(m));
  const head = Buffer.alloc(5);
  head.writeUInt8(1, 0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/** A TLS-PSK connection to the receiver on `port` with the key file `key`, as ferry migrate makes one; `ready` once it is up. */
function pskConnect(port: number, key: string, ready: (s: TLSSocket) => void): TLSSocket {
  const psk = derivePsk(keySecret(readFileSync(key), key));
  const s: TLSSocket = tlsConnect({
    host: '127.0.0.1', port, ciphers: 'ECDHE-PSK-CHACHA20-POLY1305', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2',
    pskCallback: () => ({ psk, identity: 'ferry-migrate/1' }), checkServerIdentity: () => undefined,
  }, () => ready(s));
  return s;
}

/** The spool and copy directories ferry made in `workDir`. */
function leftovers(workDir: string): string[] {
  return readdirSync(workDir).filter((n) => n.startsWith('.ferry-'));
}

describe('ferry migrate and ferry receive', { skip, timeout: 600_000 }, () => {
  const dir = scratchDir('ferry-migrate-');
  const workDir = join(dir, 'work');
  const config = join(dir, 'config.toml');
  const key = join(dir, 'migrate.key');
  const otherKey = join(dir, 'other.key');
  if (!skip) {
    mkdirSync(workDir, { mode: 0o700 });
    writeFileSync(config, `[image]\nwork_dir = "${workDir}"\n`);
    writeFileSync(key, `${'3f'.repeat(32)}\n`, { mode: 0o600 }); // hex
    writeFileSync(otherKey, Buffer.alloc(32, 0x5a), { mode: 0o600 }); // raw
  }
  const keyPair = (name: string): { key: string; pub: string } => {
    const r = ferry(['keygen', '--out', join(dir, name), '--json']);
    assert.equal(r.code, 0, r.stderr);
    const k = JSON.parse(r.stdout.toString()) as { privateKey: string; publicKey: string };
    return { key: k.privateKey, pub: k.publicKey };
  };

  it('moves a counter: the same PID counts on after the source is gone; --json records each phase', async () => {
    const site = keyPair('site');
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--trust', site.pub, '--config', config]);
    const before = w.ticks().length;
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key,
      '--sign-key', site.key, '--json', '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited; // the original was killed and reaped here

    const phases = records(mig).filter((x) => x['phase'] !== 'round'); // pre-copy rounds: precopy.test.ts
    assert.deepEqual(phases.map((x) => x['phase']), ['checkpoint', 'transfer', 'restore', 'done']);
    const done = phases[3]!;
    assert.equal(done['pid'], w.pid);
    assert.equal(typeof done['downtimeMs'], 'number');
    // The target is in this pid namespace: the restore needs the PIDs free, the kill waited.
    assert.equal(typeof (done['phases'] as Record<string, unknown>)['reapWaitMs'], 'number', JSON.stringify(done['phases']));
    assert.equal(phases[1]!['bytes'], phases[0]!['imageBytes']);
    const got = records(recv).map((x) => x['phase']);
    assert.deepEqual(got, ['listen', 'transfer', 'restore', 'done']);
    assert.equal(records(recv)[3]!['downtimeMs'], done['downtimeMs']);
    process.stdout.write(`# migration downtime ${String(done['downtimeMs'])} ms, total ${String(done['totalMs'])} ms, image ${String(phases[0]!['imageBytes'])} bytes\n`);

    // The restored process: same PID, a new parent, untraced, counting on from where it was.
    assert.ok(alive(w.pid));
    const st = procState(w.pid);
    assert.equal(st.tracer, 0);
    assert.notEqual(st.ppid, process.pid, 'a restored process, not the original');
    await waitFor('ticks after the migration', () => w.ticks().length >= before + 6);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), [], 'nothing left in image.work_dir');
    process.kill(w.pid, 'SIGKILL');
  });

  it('refuses a peer without the key before anything is read; the source runs on; the receiver takes the next one', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config]);
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', otherKey, '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate with another key'), 1);
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} refused the key ${otherKey.replace(/[.]/g, '\\.')}, or is not ferry receive: both sides need the same key file \\(TLS: [^)]+\\)\n$`));
    await runsOn(w, process.pid, false);
    // Not TLS at all: refused too.
    await new Promise<void>((resolve) => {
      const s = connect(port, '127.0.0.1', () => s.write('GET / HTTP/1.0\r\n\r\n'));
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    await waitFor('the receiver to report the refusals', () => recv.stderr().split('\n').filter((l) => l.includes('refused 127.0.0.1:')).length >= 2);
    assert.match(recv.stderr(), /^ferry receive: refused 127\.0\.0\.1:\d+: it does not hold the key, or does not speak ferry's TLS \(.+\)$/m);
    assert.equal(recv.child.exitCode, null, 'refused peers do not end a --once receiver');
    assert.deepEqual(leftovers(workDir), []);

    // The right key still gets through.
    const ok = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(ok, 'ferry migrate'), 0, ok.stderr());
    assert.match(ok.stdout(), new RegExp(`^migrated pid ${w.pid} to tcp://127\\.0\\.0\\.1:${port}: .+, downtime \\d+ ms, total \\d+ ms\n$`));
    assert.equal(await exitOf(recv, 'ferry receive --once'), 0, recv.stderr());
    await w.exited;
    const n = w.ticks().length;
    await waitFor('ticks after the migration', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS', 'no tick lost or repeated across the refusal and the migration');
  });

  it('the receiver SIGKILLed while the image streams: the source runs on, thawed and untraced', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config], 'streaming');
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
    await waitFor('the receiver to pause while streaming', () => /paused at streaming/.test(recv.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    // The source is stopped meanwhile (seized by the sender).
    assert.notEqual(procState(w.pid).tracer, 0, 'the sender holds the source while it streams');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    const line = mig.stderr().trim();
    assert.match(line, new RegExp(`^ferry migrate: .*127\\.0\\.0\\.1:${port}.*, so pid ${w.pid} was let go as it was: it runs on here$`));
    const err = JSON.parse(mig.stdout().trim().split('\n').pop()!) as { error: { code: string; pid: number } };
    assert.equal(err.error.pid, w.pid);
    await runsOn(w, process.pid);
    // The killed receiver's spool is removed by the next receiver.
    assert.equal(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')).length, 1, 'a SIGKILLed receiver leaves its spool');
    const next = await receiver(key, ['--max-creds', 'root', '--config', config]);
    assert.deepEqual(leftovers(workDir), [], 'the next receiver removed it');
    next.r.child.kill('SIGTERM');
    assert.equal(await exitOf(next.r, 'ferry receive'), 143);
  });

  it('the sender SIGKILLed while the image streams: the source runs on, the receiver holds nothing', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config]);
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], 'streaming');
    await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    assert.notEqual(procState(w.pid).tracer, 0, 'the sender holds the source while it streams');
    mig.child.kill('SIGKILL');
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    assert.match(recv.stderr(), /^ferry receive: the sender 127\.0\.0\.1:\d+ closed the connection while receiving the image\n$/);
    assert.deepEqual(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')), [], 'the receiver removed its spool');
    assert.deepEqual(stubs(), [], 'no restore stub');
    // The kernel let the source go when its tracer died.
    await runsOn(w, process.pid);
    // The killed sender's copy is removed by the next sender or receiver.
    const next = await receiver(key, ['--max-creds', 'root', '--config', config]);
    assert.deepEqual(leftovers(workDir), []);
    next.r.child.kill('SIGTERM');
    await exitOf(next.r, 'ferry receive');
  });

  /**
   * A counter migrated to a receiver that pauses (`pause`) once the whole image is in, before it
   * checks any of it: the sender then waits for its `ready`, holding the source stopped.
   */
  async function atEnded(pause: string): Promise<{ w: Workload; recv: Running; mig: Running; port: number }> {
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config], pause);
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    await waitFor('the receiver to pause with the whole image', () => /paused at ended/.test(recv.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    assert.notEqual(procState(w.pid).tracer, 0, 'the sender holds the source while the target verifies');
    return { w, recv, mig, port };
  }

  it('the sender SIGKILLed while it waits for the target to verify the whole image (its frame log finishing meanwhile): the source runs on, nothing is left', async () => {
    const { w, recv, mig } = await atEnded('ended+3000');
    mig.child.kill('SIGKILL');
    // The kernel lets the source go as its tracer exits (after its sockets close): once the
    // sender is reaped, the source is untraced.
    assert.equal(await exitOf(mig, 'ferry migrate'), 137);
    await runsOn(w, process.pid);
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    assert.match(recv.stderr(), /closed the connection/);
    assert.deepEqual(leftovers(workDir).filter((n) => n.startsWith('.ferry-receive-')), [], 'the receiver removed its spool');
    assert.deepEqual(stubs(), [], 'no restore stub');
    // The killed sender's frames are removed by the next receiver.
    const next = await receiver(key, ['--max-creds', 'root', '--config', config]);
    assert.deepEqual(leftovers(workDir), []);
    next.r.child.kill('SIGTERM');
    await exitOf(next.r, 'ferry receive');
  });

  it('the receiver SIGKILLed with the whole image, before it checked any of it: the source runs on, nothing is left', async () => {
    // The sender waits for the word, the tree stopped, its local copy of the frames finishing.
    const { w, recv, mig, port } = await atEnded('ended');
    recv.child.kill('SIGKILL');
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    assert.match(mig.stderr().trim(), new RegExp(`^ferry migrate: .*127\\.0\\.0\\.1:${port}.*, so pid ${w.pid} was let go as it was: it runs on here$`));
    await runsOn(w, process.pid);
    assert.deepEqual(stubs(), [], 'no restore stub');
    // Nothing of the sender's is left (its copy of the frames removed); the killed receiver's
    // spool is removed by the next receiver.
    assert.deepEqual(leftovers(workDir).filter((n) => !n.startsWith('.ferry-receive-')), [], 'the sender removed its copy');
    const next = await receiver(key, ['--max-creds', 'root', '--config', config]);
    assert.deepEqual(leftovers(workDir), [], 'the next receiver removed the spool');
    next.r.child.kill('SIGTERM');
    await exitOf(next.r, 'ferry receive');
  });

  it('SIGTERM to the sender while the image streams: the source is let go, the receiver learns why', async () => {
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config]);
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config], 'streaming');
    await waitFor('the sender to pause while streaming', () => /paused at streaming/.test(mig.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    mig.child.kill('SIGTERM');
    assert.equal(await exitOf(mig, 'ferry migrate'), 143);
    const why = `checkpoint of pid ${w.pid} interrupted by SIGTERM: the process was let go as it was and no image was written`;
    assert.equal(mig.stderr().split('\n').filter((l) => !l.startsWith('ferry-test:')).join('\n'), `ferry migrate: ${why}\n`);
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    assert.match(recv.stderr(), new RegExp(`^ferry receive: the sender 127\\.0\\.0\\.1:\\d+ reports: ${why}\n$`));
    assert.deepEqual(leftovers(workDir), []);
    await runsOn(w, process.pid);
  });

  it('a restore that fails on the target after the kill: the sender restores its copy here', async () => {
    const w = await counter();
    // The target stops at "created" (its stubs exist), then is told to stop: it removes all it made.
    const { r: recv, port } = await receiver(key, ['--once', '--max-creds', 'root', '--config', config], 'created');
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--json', '--config', config]);
    own(w.pid);
    await waitFor('the receiver to pause after creating the tree', () => /paused at created/.test(recv.stderr()), 30_000,
      () => `ferry migrate: ${mig.stderr()}; ferry receive: ${recv.stderr()}`);
    recv.child.kill('SIGTERM');
    assert.equal(await exitOf(recv, 'ferry receive'), 143);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    await w.exited;
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} could not restore pid ${w.pid}: .*interrupted by SIGTERM.*; it was restored here instead \\(pid ${w.pid} runs on this node again, down \\d+ ms\\)\n$`));
    const recs = records(mig);
    assert.deepEqual(recs.filter((x) => 'phase' in x && x['phase'] !== 'round').map((x) => x['phase']), ['checkpoint', 'transfer', 'restore']);
    assert.equal(recs.find((x) => x['phase'] === 'restore')!['local'], true);
    assert.equal((recs.at(-1) as { error: { code: string } }).error.code, 'EMIGRATE');
    assert.ok(alive(w.pid));
    assert.equal(procState(w.pid).tracer, 0);
    const n = w.ticks().length;
    await waitFor('ticks after the local restore', () => w.ticks().length >= n + 3);
    assert.equal(await verify(w), 'PASS');
    assert.deepEqual(leftovers(workDir), []);
    process.kill(w.pid, 'SIGKILL');
  });

  it('refuses an image no trusted key signed before the kill: the source runs on', async () => {
    const site = keyPair('site2');
    const other = keyPair('other2');
    const w = await counter();
    const { r: recv, port } = await receiver(key, ['--once', '--trust', other.pub, '--config', config]);
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--sign-key', site.key, '--config', config]);
    assert.equal(await exitOf(mig, 'ferry migrate'), 1);
    assert.match(mig.stderr(), new RegExp(`^ferry migrate: tcp://127\\.0\\.0\\.1:${port} refused it: image \\S+ is signed by SHA256:\\S+, `
      + `which is not trusted \\(--trust \\S+other2\\.pub\\); so pid ${w.pid} was let go as it was: it runs on here\n$`));
    assert.equal(await exitOf(recv, 'ferry receive --once'), 1);
    assert.match(recv.stderr(), /^ferry receive: migration from 127\.0\.0\.1:\d+: image \S+ is signed by SHA256:\S+, which is not trusted/);
    assert.deepEqual(leftovers(workDir), []);
    assert.deepEqual(stubs(), []);
    await runsOn(w, process.pid);
  });

  it('an authenticated peer that breaks the protocol is dropped, and nothing is kept', async () => {
    const { r: recv, port } = await receiver(key, ['--max-creds', 'root', '--config', config]);
    const send = (frame: Buffer): Promise<void> => new Promise((resolve) => {
      const s = pskConnect(port, key, () => s.write(frame));
      s.on('data', () => {});
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    // A frame of 2 GiB announced first, then a hello with a field the protocol does not have.
    await send(Buffer.from([2, 0x80, 0, 0, 0]));
    const control = controlFrame;
    const hello = { type: 'hello', protocol: 1, ferryVersion: 'x', pid: 1, bootId: '' };
    await send(control({ ...hello, extra: 1 }));
    // File flags: only the ones a restore reads, only booleans.
    await send(control({ ...hello, files: { tcpEstablished: 'yes' } }));
    await send(control({ ...hello, files: { external: true } }));
    await waitFor('four failed migrations', () => recv.stderr().split('\n').filter((l) => l.includes('protocol error')).length >= 4);
    const lines = recv.stderr().trim().split('\n');
    assert.match(lines[0]!, /^ferry receive: the sender 127\.0\.0\.1:\d+ sent a frame of 2147483648 bytes, over the limit: a protocol error while waiting for its hello$/);
    assert.match(lines[1]!, /^ferry receive: the sender 127\.0\.0\.1:\d+ sent a malformed control message \(unknown field hello\.extra\): a protocol error while waiting for its hello$/);
    assert.match(lines[2]!, /sent a malformed control message \(hello\.files\.tcpEstablished\): a protocol error/);
    assert.match(lines[3]!, /sent a malformed control message \(unknown field hello\.files\.external\): a protocol error/);
    assert.equal(recv.child.exitCode, null, 'the receiver goes on');
    assert.deepEqual(leftovers(workDir), []);
    recv.child.kill('SIGTERM');
    assert.equal(await exitOf(recv, 'ferry receive'), 143);
  });

  it('a receiver\'s error line with control characters (a terminal escape, a line break) is printed with them as "?": one line, the source runs on', async () => {
    // A hostile receiver that holds the key: the channel's own listener, answering the hello so.
    const { server, port } = await listen({ host: '127.0.0.1', port: 0 }, readMigrationKey(key), (socket, peer) => {
      const ch = new Channel(socket, `the sender ${peer}`);
      void ch.next('waiting for its hello', 'hello').then(() => {
        ch.send({ type: 'error', code: 'E\u001b[2J', message: 'bad \u001b[31mred\nferry migrate: a second line' });
        return ch.close();
      }, () => {});
    }, () => {});
    try {
      const w = await counter();
      const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
      assert.equal(await exitOf(mig, 'ferry migrate'), 1, mig.stderr());
      assert.equal(mig.stderr(), `ferry migrate: tcp://127.0.0.1:${port} reports: bad ?[31mred?ferry migrate: a second line\n`);
      assert.deepEqual(leftovers(workDir), []);
      await runsOn(w, process.pid);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('a staging receiver sent chunk starts that overlap fails that migration alone: its stub goes, the next migration runs', async () => {
    const { r: recv, port } = await receiver(key, ['--max-creds', 'root', '--config', config]);
    const w = await counter();
    const frame = controlFrame;
    // A pre-copy sender of the counter's pid (the receiver stages its pages in a stub of its
    // own from the hello on), whose chunk starts are 1 page apart where a chunk is 256.
    const said: string[] = [];
    let staged: number[] = [];
    let localPort = 0;
    await new Promise<void>((resolve) => {
      const s = pskConnect(port, key, () => {
        localPort = s.localPort!;
        s.write(frame({ type: 'hello', protocol: PROTOCOL_VERSION, ferryVersion: FERRY_VERSION, pid: w.pid, bootId: '', precopy: true }));
      });
      let got = Buffer.alloc(0);
      s.on('data', (d: Buffer) => {
        got = Buffer.concat([got, d]);
        while (got.length >= 5 && got.length >= 5 + got.readUInt32BE(1)) {
          const m = JSON.parse(got.subarray(5, 5 + got.readUInt32BE(1)).toString()) as { type: string; code?: string; message?: string };
          got = got.subarray(5 + got.readUInt32BE(1));
          said.push(m.type === 'error' ? `error ${m.code}: ${m.message}` : m.type);
          if (m.type === 'welcome') {
            staged = stubs();
            s.write(frame({ type: 'chunks', pid: w.pid, starts: [4096, 4097] }));
          }
        }
      });
      s.on('error', () => resolve());
      s.on('close', () => resolve());
    });
    assert.equal(staged.length, 1, 'the receiver staged the pid\'s memory in a stub');
    assert.deepEqual(said, ['welcome', `error EPROTO: the sender 127.0.0.1:${localPort} sent chunk starts that overlap: a protocol error`], 'a peer that broke the protocol is told why, then hung up on');
    await waitFor('the failed migration\'s line', () => recv.stderr().includes('chunk starts that overlap'));
    assert.match(recv.stderr(), /^ferry receive: the sender 127\.0\.0\.1:\d+ sent chunk starts that overlap: a protocol error/m);
    await waitFor('the staging stub to go', () => stubs().length === 0);
    assert.deepEqual(leftovers(workDir), []);
    assert.equal(recv.child.exitCode, null, 'the receiver goes on');
    // And takes the next migration, of the same pid, staged and restored.
    const mig = start(['migrate', '--pid', String(w.pid), '--to', `tcp://127.0.0.1:${port}`, '--key', key, '--config', config]);
    own(w.pid);
    assert.equal(await exitOf(mig, 'ferry migrate'), 0, mig.stderr());
    await w.exited;
    await waitFor('the migrated counter', () => alive(w.pid));
    assert.equal(await verify(w), 'PASS');
    recv.child.kill('SIGTERM');
    assert.equal(await exitOf(recv, 'ferry receive'), 143);
    process.kill(w.pid, 'SIGKILL');
    assert.deepEqual(leftovers(workDir), []);
  });

  it('refuses to start without --key, without a trust decision, or with a key file others can read', () => {
    const noKey = ferry(['receive', '--listen', '127.0.0.1:0', '--max-creds', 'root']);
    assert.equal(noKey.code, 2);
    assert.match(noKey.stderr, /^ferry receive: --key is required/);
    const noTrust = ferry(['receive', '--listen', '127.0.0.1:0', '--key', key, '--config', config]);
    assert.equal(noTrust.code, 2);
    assert.match(noTrust.stderr, /^ferry receive: needs --trust KEYS .* or --max-creds USER/);
    const open = join(dir, 'open.key');
    writeFileSync(open, `${'ab'.repeat(32)}\n`);
    chmodSync(open, 0o644);
    const r = ferry(['receive', '--listen', '127.0.0.1:0', '--key', open, '--max-creds', 'root', '--json']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `ferry receive: key file ${open} is accessible by others (mode 0644): chmod 600 ${open}\n`);
    assert.deepEqual(JSON.parse(r.stdout.toString()), {
      error: { code: 'EKEY', message: `key file ${open} is accessible by others (mode 0644): chmod 600 ${open}`, path: open },
    });
    const short = join(dir, 'short.key');
    writeFileSync(short, 'abcd\n', { mode: 0o600 });
    const m = ferry(['migrate', '--pid', '1', '--to', 'tcp://127.0.0.1:1', '--key', short]);
    assert.equal(m.code, 1);
    assert.match(m.stderr, /^ferry migrate: key file .*short\.key holds 2 bytes in hex, fewer than 32/);
    const ssh = ferry(['migrate', '--pid', '1', '--to', 'ssh://node2', '--key', key]);
    assert.equal(ssh.code, 2);
    assert.match(ssh.stderr, /^ferry migrate: --key is for tcp:\/\/ only: over ssh:\/\/ ssh authenticates both sides and encrypts/);
    const ftp = ferry(['migrate', '--pid', '1', '--to', 'ftp://node2:21', '--key', key]);
    assert.equal(ftp.code, 2);
    assert.match(ftp.stderr, /^ferry migrate: --to ftp:\/\/ is not supported: write tcp:\/\/HOST:PORT/);
    assert.ok(existsSync(workDir));
  });
});
