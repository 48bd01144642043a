/**
 * nginx from Debian through bin/ferry: a master and two workers (`daemon off; master_process
 * on;`) on a free loopback port, with its configuration, pid file, logs and document root in a
 * scratch directory. The tree holds a listening TCP socket shared by all three processes, unix
 * socketpairs between the master and each worker, an epoll per worker (the listener registered
 * with EPOLLEXCLUSIVE), shared anonymous memory and log files opened O_APPEND. `GET /pid`
 * answers with the pid of the worker that served it, so the test sees the same workers serve
 * after restore. 200 clients outside the tree hold connections in mid-request across three
 * cycles with --tcp-established (a quarter half-closed with their big answers unread, so
 * nginx's ends are in CLOSE_WAIT or closing with full send queues); each answer is checked
 * byte for byte.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs } from '../helpers/env.js';
import { freePort } from '../helpers/echo.js';
import { alive, cleanup, ferry, own, procState, scratchDir, sleep, waitFor } from '../helpers/processes.js';

const NGINX = '/usr/sbin/nginx';
const skip = needs('root', 'build') || (existsSync(NGINX) ? false : `needs ${NGINX} (apt-get install nginx; .ci/setup installs it)`);
after(cleanup);

/** HTTP GET of http://127.0.0.1:port/path on a connection of its own, closed after the answer. */
function httpGet(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get({ host: '127.0.0.1', port, path, agent: false, headers: { connection: 'close' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
    });
    req.setTimeout(15000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.on('error', reject);
  });
}

interface Nginx { master: number; workers: number[]; dir: string; port: number; exited: Promise<void> }

/** Clients held across the checkpoints, and the document each fetches (a big one every fourth). */
const CLIENTS = 200;
const body = (i: number): Buffer => {
  const size = i % 4 === 0 ? 200_000 + i : 1000 + i;
  const b = Buffer.alloc(size);
  for (let k = 0; k < size; k++) b[k] = (k * 31 + i) & 0xff;
  return b;
};

/**
 * A client in mid-request, outside the tree: either the start of a request (headers not
 * finished: nginx waits for the rest), or, every fourth, a whole request for a big document
 * whose answer it does not read yet, its sending side shut (half-closed: nginx's end of it is
 * in CLOSE_WAIT, or further once it answers, its send queue full).
 */
interface Client { i: number; socket: Socket; data: Buffer[]; ended: Promise<void> }

async function openClient(port: number, i: number): Promise<Client> {
  const socket = createConnection({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject); });
  socket.pause(); // nothing is read until the checkpoints are over
  const data: Buffer[] = [];
  const ended = new Promise<void>((resolve, reject) => {
    socket.on('data', (d: Buffer) => data.push(d));
    socket.on('end', () => resolve());
    socket.on('error', reject);
  });
  if (i % 4 === 0) {
    socket.end(`GET /f${i} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n`);
  } else {
    socket.write(`GET /f${i} HTTP/1.1\r\nHost: t\r\n`);
  }
  return { i, socket, data, ended };
}

/** Finishes a client's request, reads its whole answer, and checks it byte for byte. */
async function finishClient(c: Client): Promise<void> {
  if (c.i % 4 !== 0) c.socket.end('Connection: close\r\n\r\n');
  c.socket.resume();
  await c.ended;
  const all = Buffer.concat(c.data);
  const head = all.indexOf('\r\n\r\n');
  assert.ok(head > 0, `client ${c.i}: no HTTP header in ${all.length} bytes`);
  const header = all.subarray(0, head).toString();
  assert.match(header, /^HTTP\/1\.1 200 OK\r\n/, `client ${c.i}: ${header.split('\r\n')[0]}`);
  assert.ok(all.subarray(head + 4).equals(body(c.i)), `client ${c.i}: the body differs (${all.length - head - 4} bytes, want ${body(c.i).length})`);
}

/** The children of `pid` (/proc/PID/task/PID/children). */
function children(pid: number): number[] {
  return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
}

/** Starts nginx in the foreground in a scratch directory and waits until both workers serve. */
async function startNginx(workerConnections = 64): Promise<Nginx> {
  const dir = scratchDir('ferry-nginx-');
  chmodSync(dir, 0o755); // the workers run as nobody and read the document root
  const port = await freePort();
  mkdirSync(join(dir, 'www'));
  writeFileSync(join(dir, 'www', 'index.html'), 'served by nginx across a checkpoint\n');
  for (let i = 0; i < CLIENTS; i++) writeFileSync(join(dir, 'www', `f${i}`), body(i));
  writeFileSync(join(dir, 'nginx.conf'), `
daemon off;
master_process on;
worker_processes 2;
user nobody nogroup;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log info;
events { worker_connections ${workerConnections}; }
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    root ${dir}/www;
    location = /pid { default_type text/plain; return 200 "$pid\\n"; }
  }
}
`);
  const log = join(dir, 'nginx.out');
  const fd = openSync(log, 'a');
  const child = spawn(NGINX, ['-p', dir, '-c', join(dir, 'nginx.conf'), '-e', join(dir, 'error.log')],
    { stdio: ['ignore', fd, fd], detached: true, cwd: dir });
  closeSync(fd);
  const master = child.pid!;
  own(master);
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  let workers: number[] = [];
  await waitFor(`nginx to start two workers (see ${dir}/error.log)`, () => {
    workers = alive(master) ? children(master) : [];
    return workers.length === 2;
  }, 20000);
  for (const w of workers) own(w);
  await waitFor('nginx to answer', () => existsSync(join(dir, 'nginx.pid')), 10000);
  const r = await httpGet(port, '/');
  assert.equal(r.status, 200);
  return { master, workers, dir, port, exited };
}

/** Serves `/` and `/pid` from one of the original workers, several times. */
async function servesAsBefore(n: Nginx): Promise<void> {
  const page = await httpGet(n.port, '/');
  assert.deepEqual(page, { status: 200, body: 'served by nginx across a checkpoint\n' });
  for (let i = 0; i < 6; i++) {
    const r = await httpGet(n.port, '/pid');
    assert.equal(r.status, 200);
    assert.ok(n.workers.includes(Number(r.body)), `served by pid ${r.body.trim()}, not one of the workers ${n.workers.join(', ')}`);
  }
  assert.deepEqual(children(n.master).sort(), [...n.workers].sort(), 'the master has the same two workers');
}

/** Restores `image` and owns every restored pid; returns them. */
function restore(image: string): number[] {
  const rs = ferry(['restore', '--image', image, '--json']);
  assert.equal(rs.code, 0, `restore: ${rs.stderr}`);
  const pids = (JSON.parse(rs.stdout.toString()) as { pids: number[] }).pids;
  for (const p of pids) own(p);
  return pids;
}

describe('nginx (master and two workers)', { skip, timeout: 180_000 }, () => {
  it('serves again from the same master and workers after checkpoint and restore, three cycles', async () => {
    const n = await startNginx();
    const all = [n.master, ...n.workers];
    const image = join(n.dir, 'nginx.tar');
    for (let i = 0; i < 3; i++) {
      await sleep(200); // the last connection is closed on both sides
      const cp = ferry(['checkpoint', '--pid', String(n.master), '--image', image]);
      assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
      if (i === 0) await n.exited;
      await waitFor('the tree to be gone', () => all.every((p) => !alive(p)), 5000);
      assert.deepEqual(restore(image).sort(), [...all].sort());
      await servesAsBefore(n);
    }
    assert.ok(all.every((p) => procState(p).tracer === 0));
  });

  it('--leave-running: the original serves on; the image restores after it is stopped', async () => {
    const n = await startNginx();
    const all = [n.master, ...n.workers];
    const image = join(n.dir, 'nginx.tar');
    await sleep(200);
    const cp = ferry(['checkpoint', '--pid', String(n.master), '--image', image, '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(all.every((p) => alive(p) && procState(p).tracer === 0), 'detached and running');
    await servesAsBefore(n);
    for (const p of all) process.kill(p, 'SIGKILL');
    await n.exited;
    await waitFor('the tree to be gone', () => all.every((p) => !alive(p)), 5000);
    assert.deepEqual(restore(image).sort(), [...all].sort());
    await servesAsBefore(n);
  });

  it('200 clients in mid-request (a quarter half-closed, their answers unread) are answered byte for byte after three cycles', async () => {
    const n = await startNginx(512);
    const all = [n.master, ...n.workers];
    const image = join(n.dir, 'nginx-clients.tar');
    const clients: Client[] = [];
    for (let i = 0; i < CLIENTS; i++) clients.push(await openClient(n.port, i));
    await sleep(300); // nginx has read what there is, and answered the whole requests as far as it can
    for (let i = 0; i < 3; i++) {
      const cp = ferry(['checkpoint', '--pid', String(n.master), '--image', image, '--tcp-established'], { timeoutMs: 120_000 });
      assert.equal(cp.code, 0, `checkpoint ${i + 1}: ${cp.stderr}`);
      if (i === 0) await n.exited;
      await waitFor('the tree to be gone', () => all.every((p) => !alive(p)), 5000);
      const rs = ferry(['restore', '--image', image, '--json', '--tcp-established'], { timeoutMs: 120_000 });
      assert.equal(rs.code, 0, `restore ${i + 1}: ${rs.stderr}`);
      for (const p of (JSON.parse(rs.stdout.toString()) as { pids: number[] }).pids) own(p);
    }
    await Promise.all(clients.map((c) => finishClient(c)));
    await servesAsBefore(n);
  });
});
