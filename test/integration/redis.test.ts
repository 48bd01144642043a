/**
 * Real servers from Debian through bin/ferry, on loopback ports the test picks free:
 * redis-server (its data comes back; with --tcp-established a client connected across the
 * checkpoint, held by this test outside the tree, keeps its connection and gets answers, a
 * pipelined request cut in the middle included) and
 * python3 -m http.server (serves again after restore).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, PYTHON } from '../helpers/env.js';
import { freePort } from '../helpers/echo.js';
import { alive, cleanup, ferry, own, scratchDir, sleep, waitFor } from '../helpers/processes.js';

const REDIS = '/usr/bin/redis-server';
const skip = needs('root', 'build');
after(cleanup);

interface Server { pid: number; dir: string; log: string; port: number; exited: Promise<void> }

/** Starts `cmd args` detached in a scratch dir, output to a log, and waits until `ready(log)`. */
async function startServer(cmd: string, args: (dir: string, port: number) => string[], ready: (log: string) => boolean): Promise<Server> {
  const dir = scratchDir('ferry-inet-');
  const port = await freePort();
  const log = join(dir, 'server.log');
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args(dir, port), { stdio: ['ignore', fd, fd], detached: true, cwd: dir });
  closeSync(fd);
  const pid = child.pid!;
  own(pid);
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  await waitFor(`${cmd} to get ready (log ${log})`, () => ready(readFileSync(log, 'utf8')), 20000);
  return { pid, dir, log, port, exited };
}

/** A minimal RESP client (redis protocol) on one TCP connection; `events` records close/error/end. */
class Redis {
  readonly sock: Socket;
  readonly events: string[] = [];
  private buf = Buffer.alloc(0);
  private waiting: Array<(reply: string) => void> = [];

  private constructor(sock: Socket) {
    this.sock = sock;
    sock.on('data', (d: Buffer) => { this.buf = Buffer.concat([this.buf, d]); this.drain(); });
    sock.on('close', () => this.events.push('close'));
    sock.on('end', () => this.events.push('end'));
    sock.on('error', (e) => this.events.push(`error ${(e as NodeJS.ErrnoException).code}`));
  }

  static connect(port: number): Promise<Redis> {
    return new Promise((resolve, reject) => {
      const s = new Socket();
      s.once('error', reject);
      s.connect(port, '127.0.0.1', () => { s.off('error', reject); resolve(new Redis(s)); });
    });
  }

  /** Sends one command; resolves with the reply as text ('+OK' -> 'OK', bulk -> its bytes, ':3' -> '3', nil -> '(nil)'). */
  command(...args: string[]): Promise<string> {
    const wire = `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${args[0]} within 15 s (events: ${this.events.join(', ') || 'none'})`)), 15000);
      this.waiting.push((r) => { clearTimeout(timer); resolve(r); });
      this.sock.write(wire);
    });
  }

  /**
   * Writes `bytes` as they are (part of a pipeline, maybe a command cut in the middle) and
   * resolves with the next `replies` replies.
   */
  raw(bytes: string, replies: number): Promise<string[]> {
    const got = Array.from({ length: replies }, () => new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply within 15 s (events: ${this.events.join(', ') || 'none'})`)), 15000);
      this.waiting.push((r) => { clearTimeout(timer); resolve(r); });
    }));
    this.sock.write(bytes);
    return Promise.all(got);
  }

  private drain(): void {
    for (;;) {
      const nl = this.buf.indexOf('\r\n');
      if (nl < 0) return;
      const head = this.buf.subarray(0, nl).toString();
      let reply: string;
      let used: number;
      if (head.startsWith('$')) {
        const len = Number(head.slice(1));
        if (len < 0) { reply = '(nil)'; used = nl + 2; } else {
          if (this.buf.length < nl + 2 + len + 2) return;
          reply = this.buf.subarray(nl + 2, nl + 2 + len).toString();
          used = nl + 2 + len + 2;
        }
      } else {
        reply = head.slice(1);
        used = nl + 2;
      }
      this.buf = this.buf.subarray(used);
      this.waiting.shift()?.(reply);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

const redisSkip = skip || (existsSync(REDIS) ? false : `needs ${REDIS} (apt-get install redis-server; .ci/setup installs it)`);

function startRedis(): Promise<Server> {
  return startServer(REDIS, (dir, port) => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--daemonize', 'no', '--dir', dir, '--protected-mode', 'no'], (log) => log.includes('Ready to accept connections'));
}

/** Checkpoint (kills) and restore, waiting for the pid to be free in between. */
async function cycle(s: Server, image: string, extra: string[], first: boolean): Promise<void> {
  const cp = ferry(['checkpoint', '--pid', String(s.pid), '--image', image, ...extra]);
  assert.equal(cp.code, 0, `checkpoint: ${cp.stderr}`);
  if (first) await s.exited;
  await waitFor(`pid ${s.pid} to be free`, () => !alive(s.pid), 5000);
  const rs = ferry(['restore', '--image', image, ...extra]);
  assert.equal(rs.code, 0, `restore: ${rs.stderr}`);
  own(s.pid);
}

describe('redis-server', { skip: redisSkip, timeout: 180_000 }, () => {
  it('keeps its data across three checkpoint/restore cycles', async () => {
    const s = await startRedis();
    const c = await Redis.connect(s.port);
    assert.equal(await c.command('SET', 'greeting', 'hello from before the checkpoint'), 'OK');
    assert.equal(await c.command('RPUSH', 'list', 'a', 'b', 'c'), '3');
    c.close();
    await sleep(200); // redis closes its end of the connection
    const image = join(s.dir, 'redis.tar');
    for (let i = 0; i < 3; i++) {
      await cycle(s, image, [], i === 0);
      const r = await Redis.connect(s.port);
      assert.equal(await r.command('GET', 'greeting'), 'hello from before the checkpoint');
      assert.equal(await r.command('INCR', 'cycles'), String(i + 1));
      assert.equal(await r.command('LLEN', 'list'), '3');
      r.close();
      await sleep(200);
    }
  });

  it('with --tcp-established a client connected across the checkpoint keeps its connection', async () => {
    const s = await startRedis();
    const c = await Redis.connect(s.port);
    assert.equal(await c.command('SET', 'k', 'v1'), 'OK');
    const image = join(s.dir, 'redis.tar');
    for (let i = 0; i < 2; i++) {
      await cycle(s, image, ['--tcp-established'], i === 0);
      assert.deepEqual(c.events, [], 'the client saw no FIN or RST while redis was gone');
      assert.equal(await c.command('GET', 'k'), i === 0 ? 'v1' : 'v2');
      assert.equal(await c.command('SET', 'k', 'v2'), 'OK');
    }
    const other = await Redis.connect(s.port);
    assert.equal(await other.command('GET', 'k'), 'v2', 'new clients are served too');
    other.close();
    c.close();
  });

  it('a pipelined request half-sent across two cycles is answered once its rest arrives', async () => {
    const s = await startRedis();
    const c = await Redis.connect(s.port);
    const value = 'x'.repeat(3000) + 'the end of a value sent in two halves';
    const wire = (...args: string[]): string => `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`;
    const cut = wire('SET', 'half', value);
    const at = 1500; // in the middle of the value
    // Two whole commands and the first half of a third, in one write: redis answers the two and
    // keeps the half in its query buffer (or it still waits in its socket) across the cycles.
    assert.deepEqual(await c.raw(wire('SET', 'a', '1') + wire('INCR', 'n') + cut.slice(0, at), 2), ['OK', '1']);
    const image = join(s.dir, 'redis.tar');
    for (let i = 0; i < 2; i++) {
      await cycle(s, image, ['--tcp-established'], i === 0);
      assert.deepEqual(c.events, [], 'the client saw no FIN or RST while redis was gone');
    }
    assert.deepEqual(await c.raw(cut.slice(at) + wire('GET', 'half') + wire('INCR', 'n'), 3), ['OK', value, '2']);
    c.close();
  });

  it('refuses the connected client without --tcp-established and goes on serving it', async () => {
    const s = await startRedis();
    const c = await Redis.connect(s.port);
    assert.equal(await c.command('PING'), 'PONG');
    const cp = ferry(['checkpoint', '--pid', String(s.pid), '--image', join(s.dir, 'x.tar')]);
    assert.equal(cp.code, 1);
    assert.match(cp.stderr, new RegExp(`pid ${s.pid} fd \\d+: established TCP connection 127\\.0\\.0\\.1:${s.port} -> 127\\.0\\.0\\.1:\\d+; checkpoint it with --tcp-established`));
    assert.equal(await c.command('PING'), 'PONG');
    c.close();
  });
});

/** HTTP GET of http://127.0.0.1:port/path: status and body. */
function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.setTimeout(15000, () => req.destroy(new Error('HTTP GET timed out')));
    req.on('error', reject);
  });
}

describe('python3 -m http.server', { skip: skip || needs('python'), timeout: 120_000 }, () => {
  it('serves again after checkpoint and restore, twice', async () => {
    const s = await startServer(PYTHON, (dir, port) => ['-u', '-m', 'http.server', String(port), '--bind', '127.0.0.1', '--directory', dir],
      (log) => log.includes('Serving HTTP'));
    writeFileSync(join(s.dir, 'hello.txt'), 'served across a checkpoint\n');
    assert.equal((await httpGet(s.port, '/hello.txt')).body, 'served across a checkpoint\n');
    await sleep(200);
    const image = join(s.dir, 'http.tar');
    for (let i = 0; i < 2; i++) {
      await cycle(s, image, [], i === 0);
      const r = await httpGet(s.port, '/hello.txt');
      assert.equal(r.status, 200);
      assert.equal(r.body, 'served across a checkpoint\n');
      await sleep(200);
    }
  });
});
