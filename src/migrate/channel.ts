/**
 * The migration channel: TLS 1.2 with a pre-shared key (key.ts), and on it a framed protocol
 * of small JSON control messages and the image's bytes (docs/migration.md, "Protocol").
 *
 * TLS. Both sides run `ECDHE-PSK-CHACHA20-POLY1305` (RFC 7905) and nothing else: the PSK
 * authenticates each side to the other (a peer without it fails the handshake's Finished
 * check: "bad record mac"), ECDHE gives forward secrecy (a key file stolen later does not
 * decrypt a recorded migration, which carries the processes' memory), the AEAD protects every
 * byte. Node.js 20 (OpenSSL 3.0) does TLS-PSK only up to TLS 1.2: a TLS 1.3 server there wants
 * a certificate. No certificate, no CA: the key file is the whole trust of the channel.
 *
 * Frames. `u8 kind, u32 length (big-endian), payload`: kind 1 is a control message, a JSON
 * object of at most 64 KiB with a `type` (below, checked field by field); kind 2 is a chunk of
 * the image, at most 1 MiB. Anything else ends the connection as a protocol error. A peer is
 * authenticated before its first frame is read, but its frames are still bounded and checked:
 * the key may be shared by more nodes than one trusts with root.
 */
import { connect as tlsConnect, createServer, type TLSSocket, type Server } from 'node:tls';
import { FerryError, describeCause } from '../errors.js';
import { native } from '../native/binding.js';
import { CONTAINER_ID, formatHostPort, type Endpoint } from './endpoint.js';
import type { MigrationKey } from './key.js';

/** Version of the protocol; a peer speaking another is refused at the hello. */
export const PROTOCOL_VERSION = 6;
/** The only cipher suite either side offers or accepts. */
export const CIPHER = 'ECDHE-PSK-CHACHA20-POLY1305';
/** PSK identity both sides use (there is one key per pair of nodes, not per identity). */
const IDENTITY = 'ferry-migrate/1';
const CONTROL = 1;
const DATA = 2;
const HEADER = 5;
/** Bounds of a frame's payload. */
export const MAX_CONTROL_BYTES = 64 * 1024;
export const MAX_DATA_BYTES = 1024 * 1024;
/** Areas one `layout` may name (its JSON within MAX_CONTROL_BYTES). */
export const MAX_LAYOUT_AREAS = 1024;
/** Chunk starts one `chunks` may name (its JSON within MAX_CONTROL_BYTES: 12 bytes each at most). */
export const MAX_CHUNK_STARTS = 4096;
/** A peer silent this long (no frame, no heartbeat) is given up. */
export const IDLE_MS = 30_000;
/** How long a side that failed waits, reading and dropping, for the peer to take its last word and close. */
export const LINGER_MS = 2000;
/** How often a side that is busy (verifying, restoring) tells the other it still is. */
export const HEARTBEAT_MS = 1000;
/**
 * How long sent bytes may go unacknowledged before the connection is given up (TCP_USER_TIMEOUT,
 * tcp(7)). The idle limit cannot see a dead link on a side that is writing: its own writes
 * (image frames, heartbeats) are the socket's activity for Node, and a silent peer is expected
 * while the image streams. Without it a cut link was found by TCP's retransmissions after a
 * minute or more, the tree stopped all along.
 */
export const UNACKED_MS = 15_000;
const IPPROTO_TCP = 6, TCP_USER_TIMEOUT = 18;

/** The control messages, by direction: S sender (`ferry migrate`), R receiver (`ferry receive`). */
export type Message =
  /**
   * S: who is coming; `bootId` tells the receiver whether it is the same running kernel;
   * `precopy`: data frames are tagged (precopy.ts: pre-copied pages, then the image);
   * `lazy`: restore with lazy pages (restore/lazy.ts) from the image as spooled, and say 'filled'.
   */
  | { type: 'hello'; protocol: number; ferryVersion: string; pid: number; bootId: string; container?: ContainerTarget; precopy?: boolean; lazy?: boolean; files?: RestoreFlags }
  /** R: ready to receive an image. */
  /**
   * R: it takes the migration; `bootId` tells the sender whether R runs on its kernel, and
   * `pidNs` in which pid namespace (readlink of /proc/self/ns/pid): a kill on another kernel,
   * or outside the tree's namespaces, need not wait for the reaping.
   */
  | { type: 'welcome'; protocol: number; ferryVersion: string; bootId: string; pidNs: string }
  /**
   * S, between pre-copy rounds: say 'caught-up' once every frame sent before this one is
   * taken (written and hashed): the sender freezes the tree only once the target is not behind,
   * so that the downtime holds none of the target's backlog (sender.ts catchUp).
   */
  | { type: 'catch-up' }
  /**
   * S, before a round's pages of the root: the root's private anonymous read-write areas now,
   * [start, end] pairs flat (migrate/staging.ts stageableAreas), when they changed.
   */
  | { type: 'layout'; pid: number; areas: number[] }
  /**
   * S, before a catch-up: where the frozen image's chunks of the root's pages are expected to
   * fall (precopy.ts chunkStarts: first pages, in order, after those sent before), so that the
   * target takes their digests ahead of the freeze (page-store.ts takeChunkDigests). A hint.
   */
  | { type: 'chunks'; pid: number; starts: number[] }
  /** R: every frame sent before the last 'catch-up' is taken. */
  | { type: 'caught-up' }
  /** S: the image is complete; `bytes` were sent. */
  | { type: 'end'; bytes: number }
  /** R: the image is spooled, verified and checked; the tree stays where it is until 'go'. */
  | { type: 'ready'; verifyMs: number }
  /** S: the source is killed and its PIDs are free: restore. */
  | { type: 'go' }
  /** R: the restored tree runs. */
  | { type: 'running'; pid: number; pids: number[]; restoreMs: number; phases?: Record<string, number> }
  /** R, after 'running' with `lazy`: every page is in (pages served after the start, faults among them, ms from the start). */
  | { type: 'filled'; pages: number; faults: number; fillMs: number }
  /** S: the migration is over, with the downtime the sender measured. */
  | { type: 'done'; downtimeMs: number }
  /** Either: still busy (verifying, restoring). */
  | { type: 'busy' }
  /** Either: this side failed or gave up; the one line of its error. */
  | { type: 'error'; code: string; message: string };

export type MessageType = Message['type'];

/**
 * S, in its hello: the tree is a container, to be restored on the target as container `id`
 * (`--target-id`) from bundle `bundle` (`--target-bundle`, else the one the image names) with
 * the runtime's state in `root` (`--target-root`, else the runtime's default). The target
 * checks each path as it checks a bundle an image names (src/migrate/container.ts).
 */
export interface ContainerTarget { id: string; bundle?: string; root?: string }

/** Longest path a container target may name. */
const MAX_TARGET_PATH = 4096;


/**
 * S, in its hello: the runc-style file flags the tree was checkpointed with, which its restore
 * needs too (--tcp-established: its connections are rebuilt; --file-locks: its locks taken).
 */
export interface RestoreFlags {
  tcpEstablished?: boolean;
  tcpClose?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
}
export const RESTORE_FLAGS = ['tcpEstablished', 'tcpClose', 'extUnixSk', 'shellJob', 'fileLocks'] as const;

/** Checks the optional files field of a hello: RESTORE_FLAGS, booleans, nothing else. */
function checkRestoreFlags(v: unknown, bad: (what: string) => never): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return void bad('hello.files');
  for (const [k, x] of Object.entries(v)) {
    if (!(RESTORE_FLAGS as readonly string[]).includes(k)) bad(`unknown field hello.files.${k}`);
    if (typeof x !== 'boolean') bad(`hello.files.${k}`);
  }
}

/** Checks the optional container field of a hello. */
function checkContainerTarget(v: unknown, bad: (why: string) => never): void {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return void bad('hello.container');
  const c = v as Record<string, unknown>;
  for (const k of Object.keys(c)) if (!['id', 'bundle', 'root'].includes(k)) bad(`unknown field hello.container.${k}`);
  if (typeof c['id'] !== 'string' || !CONTAINER_ID.test(c['id'])) bad('hello.container.id');
  for (const k of ['bundle', 'root']) {
    const p = c[k];
    if (p !== undefined && (typeof p !== 'string' || p === '' || p.length > MAX_TARGET_PATH || p.includes('\0'))) bad(`hello.container.${k}`);
  }
}

/** Checks one decoded control message field by field; throws a protocol error. */
function checkMessage(v: unknown): Message {
  const bad = (why: string): never => { throw new Error(`a malformed control message (${why})`); };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not an object');
  const m = v as Record<string, unknown>;
  const int = (k: string, max = Number.MAX_SAFE_INTEGER): void => {
    const x = m[k];
    if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > max) bad(`${String(m['type'])}.${k}`);
  };
  const num = (k: string): void => { if (typeof m[k] !== 'number' || !Number.isFinite(m[k]) || (m[k] as number) < 0) bad(`${String(m['type'])}.${k}`); };
  const str = (k: string, max = 4096): void => { if (typeof m[k] !== 'string' || (m[k] as string).length > max) bad(`${String(m['type'])}.${k}`); };
  const only = (...keys: string[]): void => {
    for (const k of Object.keys(m)) if (k !== 'type' && !keys.includes(k)) bad(`unknown field ${String(m['type'])}.${k}`);
  };
  switch (m['type']) {
    case 'hello':
      only('protocol', 'ferryVersion', 'pid', 'bootId', 'container', 'precopy', 'lazy', 'files'); int('protocol', 1 << 16); str('ferryVersion', 64); int('pid', 1 << 22); str('bootId', 64);
      if (m['lazy'] !== undefined && typeof m['lazy'] !== 'boolean') bad('hello.lazy');
      if (m['container'] !== undefined) checkContainerTarget(m['container'], bad);
      if (m['files'] !== undefined) checkRestoreFlags(m['files'], bad);
      if (m['precopy'] !== undefined && typeof m['precopy'] !== 'boolean') bad('hello.precopy');
      break;
    case 'welcome': only('protocol', 'ferryVersion', 'bootId', 'pidNs'); int('protocol', 1 << 16); str('ferryVersion', 64); str('bootId', 64); str('pidNs', 64); break;
    case 'end': only('bytes'); int('bytes'); break;
    case 'ready': only('verifyMs'); num('verifyMs'); break;
    case 'go': only(); break;
    case 'catch-up': only(); break;
    case 'layout': {
      only('pid', 'areas'); int('pid', 1 << 22);
      const a = m['areas'];
      if (!Array.isArray(a) || a.length % 2 !== 0 || a.length > 2 * MAX_LAYOUT_AREAS) bad('layout.areas');
      let last = 0;
      (a as unknown[]).forEach((x, i) => {
        // Page aligned, user addresses (47 bits), in order: each area ends past its start and
        // starts at or past the end of the one before.
        if (typeof x !== 'number' || !Number.isSafeInteger(x) || x % 4096 !== 0 || x > 2 ** 47 || (i % 2 === 1 ? x <= last : x < last)) bad('layout.areas');
        last = x as number;
      });
      break;
    }
    case 'chunks': {
      only('pid', 'starts'); int('pid', 1 << 22);
      const a = m['starts'];
      if (!Array.isArray(a) || a.length > MAX_CHUNK_STARTS) bad('chunks.starts');
      let last = -1;
      for (const x of a as unknown[]) {
        // Page numbers of user memory (47 bits), in order.
        if (typeof x !== 'number' || !Number.isSafeInteger(x) || x <= last || x >= 2 ** 35) bad('chunks.starts');
        last = x as number;
      }
      break;
    }
    case 'caught-up': only(); break;
    case 'running':
      only('pid', 'pids', 'restoreMs', 'phases'); int('pid', 1 << 22); num('restoreMs');
      if (m['phases'] !== undefined) {
        const ph = m['phases'];
        if (typeof ph !== 'object' || ph === null || Array.isArray(ph) || Object.keys(ph).length > 16
          || !Object.entries(ph).every(([k, x]) => /^[a-zA-Z]{1,32}$/.test(k) && typeof x === 'number' && Number.isFinite(x) && x >= 0)) bad('running.phases');
      }
      if (!Array.isArray(m['pids']) || m['pids'].length > 1 << 16 || !m['pids'].every((p) => Number.isInteger(p) && p > 0 && p <= 1 << 22)) bad('running.pids');
      break;
    case 'filled': only('pages', 'faults', 'fillMs'); int('pages'); int('faults'); num('fillMs'); break;
    case 'done': only('downtimeMs'); num('downtimeMs'); break;
    case 'busy': only(); break;
    case 'error': only('code', 'message'); str('code', 32); str('message'); break;
    default: return bad(`type ${JSON.stringify(m['type'])}`);
  }
  return m as unknown as Message;
}

/**
 * What a Channel runs on: a TLS socket (tcp://), or the pipes of ssh and of `ferry receive
 * --stdio` (pipes.ts). The TCP-only tunings are optional.
 */
export interface Transport {
  readonly destroyed: boolean;
  setTimeout(ms: number, onIdle?: () => void): unknown;
  setNoDelay?(noDelay?: boolean): unknown;
  setKeepAlive?(enable?: boolean, initialDelay?: number): unknown;
  /** Gathers writes until uncork(), which sends them in one (a stream's cork). */
  cork?(): void;
  uncork?(): void;
  write(data: Buffer): boolean;
  end(done?: () => void): unknown;
  destroy(): unknown;
  pause(): unknown;
  resume(): unknown;
  on(event: 'data', listener: (d: Buffer) => void): unknown;
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'close', listener: () => void): unknown;
  once(event: 'close' | 'drain', listener: () => void): unknown;
  off(event: 'close' | 'drain', listener: () => void): unknown;
  /** A write returned false and 'drain' has not come yet. */
  readonly writableNeedDrain: boolean;
}

/** TLS options both sides share. */
const TLS_COMMON = { ciphers: CIPHER, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' } as const;

/**
 * One authenticated connection: sends frames, parses the peer's, and hands control messages
 * out in order (next()) and image chunks to `onData`. The first failure (the socket's, the
 * peer's protocol error, an idle timeout) is kept in `failure` and fails every wait.
 */
export class Channel {
  /** The first failure of the connection, once there is one. */
  failure: FerryError | undefined;
  /**
   * Gets each image chunk, in order; while a promise it returns is pending, nothing more is
   * read from the peer (backpressure). Without it, a chunk is a protocol error.
   */
  onData: ((chunk: Buffer) => void | Promise<void>) | undefined;
  /**
   * Sees each control message first, in its place among the image chunks (every chunk before
   * it handed to `onData` and its promise settled); one it returns true for is its alone and
   * not handed out by next().
   */
  onControl: ((m: Message) => boolean) | undefined;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private queue: Message[] = [];
  private waiter: { resolve: (m: Message) => void; reject: (e: FerryError) => void } | undefined;
  private busyData = false;
  private closed = false;
  /** After a failure told to the peer: resolves once the socket is closed (LINGER_MS at most). */
  private lingering: Promise<void> | undefined;

  /** `peer`: how messages name the other side ("tcp://10.0.0.2:7070", "10.0.0.1:50122"). */
  constructor(readonly socket: Transport, readonly peer: string) {
    socket.setNoDelay?.(true);
    socket.setKeepAlive?.(true, 5000);
    boundUnacked(socket);
    socket.setTimeout(IDLE_MS, () => this.fail(new FerryError('ETIMEDOUT', `${peer} sent nothing for ${IDLE_MS / 1000} s`)));
    socket.on('data', (d: Buffer) => this.receive(d));
    socket.on('error', (err) => this.fail(new FerryError('ECONNRESET', `the connection to ${peer} failed: ${describeCause(err)}`, { cause: err })));
    socket.on('close', () => this.fail(new FerryError('ECONNRESET', `${peer} closed the connection`)));
  }

  private frame(m: Message): Buffer {
    const body = Buffer.from(JSON.stringify(m));
    const head = Buffer.alloc(HEADER);
    head.writeUInt8(CONTROL, 0);
    head.writeUInt32BE(body.length, 1);
    return Buffer.concat([head, body]);
  }

  /** Sends a control message (dropped once the connection failed). */
  send(m: Message): void {
    if (this.failure !== undefined || this.closed) return;
    this.socket.write(this.frame(m));
  }

  /** Sends an image chunk; false when the socket's buffer is full (wait for 'drain'). */
  sendData(chunk: Buffer): boolean {
    if (this.failure !== undefined) return false;
    let ok = true;
    for (let off = 0; off < chunk.length; off += MAX_DATA_BYTES) {
      const part = chunk.subarray(off, Math.min(chunk.length, off + MAX_DATA_BYTES));
      const head = Buffer.alloc(HEADER);
      head.writeUInt8(DATA, 0);
      head.writeUInt32BE(part.length, 1);
      this.socket.write(head);
      ok = this.socket.write(part);
    }
    return ok;
  }

  /**
   * The next control message, which must be of one of `types` ('busy' heartbeats are skipped;
   * an 'error' from the peer fails with its code and message). `doing` names the wait in
   * messages: "waiting for the image".
   */
  async next<T extends MessageType>(doing: string, ...types: T[]): Promise<Extract<Message, { type: T }>> {
    for (;;) {
      const m = this.queue.shift() ?? await new Promise<Message>((resolve, reject) => {
        // The peer's own word stands as it is (PeerError); another failure says what was waited for.
        const failed = (f: FerryError): void => reject(f instanceof PeerError ? f : new FerryError(f.code, `${f.message} while ${doing}`, { cause: f }));
        if (this.failure !== undefined) return failed(this.failure);
        this.waiter = { resolve, reject: failed };
      });
      if (m.type === 'busy') continue;
      if (m.type === 'error' && !(types as string[]).includes('error')) throw new PeerError(m.code, m.message, this.peer);
      if (!(types as string[]).includes(m.type)) {
        const err = new FerryError('EPROTO', `${this.peer} sent "${m.type}" while ${doing} (expected ${types.join(' or ')}): a protocol error`);
        this.fail(err);
        throw err;
      }
      return m as Extract<Message, { type: T }>;
    }
  }

  /**
   * Ends the connection once what was written is sent; resolves then, or after a second at
   * most (a peer that does not read is not waited for), so that a last word (an error) is on
   * its way before the process exits.
   */
  close(): Promise<void> {
    if (this.lingering !== undefined) return this.lingering;
    if (this.closed || this.socket.destroyed) {
      this.closed = true;
      return Promise.resolve();
    }
    this.closed = true;
    this.socket.setTimeout(0);
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => { this.socket.destroy(); resolve(); }, 1000);
      timer.unref();
      this.socket.end(() => { clearTimeout(timer); resolve(); });
    });
  }

  /** Drops the connection at once (after a failure told to the peer: once it took the word, LINGER_MS at most). */
  destroy(): void {
    this.closed = true;
    if (this.lingering === undefined) this.socket.destroy();
  }

  /**
   * Records the first failure and fails the wait in progress. The peer is told why (its
   * 'error'), if the connection still stands, and this side then reads and drops what still
   * comes until the peer closes (LINGER_MS at most): a socket closed with unread data is reset,
   * and the reset would lose the word. An 'error' from the peer that no wait takes fails the
   * channel at once (parse), with the peer's word (PeerError), and is not answered.
   */
  fail(err: FerryError): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(err);
    if (this.socket.destroyed) return;
    if (this.closed || err instanceof PeerError) {
      this.socket.destroy();
      return;
    }
    this.closed = true;
    this.chunks = [];
    this.buffered = 0;
    const socket = this.socket;
    this.lingering = new Promise<void>((resolve) => {
      const timer = setTimeout(() => socket.destroy(), LINGER_MS);
      timer.unref();
      socket.once('close', () => { clearTimeout(timer); resolve(); });
    });
    socket.setTimeout(0);
    // Within what the peer's checkMessage takes (a longer one would read there as a protocol error).
    socket.write(this.frame({ type: 'error', code: err.code.slice(0, 32), message: err.message.slice(0, 4000) }));
    socket.end();
    socket.resume();
  }

  private receive(d: Buffer): void {
    if (this.failure !== undefined) return; // lingering: dropped
    this.chunks.push(d);
    this.buffered += d.length;
    this.parse();
  }

  /** Parses every complete frame buffered, unless an image chunk is still being handled. */
  private parse(): void {
    while (!this.busyData && this.failure === undefined && this.buffered >= HEADER) {
      const head = this.peek(HEADER);
      const kind = head.readUInt8(0);
      const length = head.readUInt32BE(1);
      if (kind !== CONTROL && kind !== DATA) return this.fail(new FerryError('EPROTO', `${this.peer} sent a frame of unknown kind ${kind}: a protocol error`));
      if (length > (kind === CONTROL ? MAX_CONTROL_BYTES : MAX_DATA_BYTES)) {
        return this.fail(new FerryError('EPROTO', `${this.peer} sent a frame of ${length} bytes, over the limit: a protocol error`));
      }
      if (this.buffered < HEADER + length) return;
      const payload = this.take(HEADER + length).subarray(HEADER);
      if (kind === CONTROL) {
        let m: Message;
        try {
          m = checkMessage(JSON.parse(payload.toString('utf8')));
        } catch (err) {
          return this.fail(new FerryError('EPROTO', `${this.peer} sent ${describeCause(err)}: a protocol error`, { cause: err }));
        }
        if (this.onControl?.(m) === true) continue;
        const w = this.waiter;
        this.waiter = undefined;
        if (w) w.resolve(m);
        // The peer's last word, with nothing here waiting for it (an image streaming out, a
        // round's pages): the connection has failed, for the reason it gives.
        else if (m.type === 'error') return this.fail(new PeerError(m.code, m.message, this.peer));
        else this.queue.push(m);
        continue;
      }
      if (this.onData === undefined) return this.fail(new FerryError('EPROTO', `${this.peer} sent image data unasked: a protocol error`));
      let pending: void | Promise<void>;
      try {
        pending = this.onData(payload);
      } catch (err) {
        return this.fail(err instanceof FerryError ? err : new FerryError('EIO', describeCause(err), { cause: err }));
      }
      if (pending instanceof Promise) {
        this.busyData = true;
        this.socket.pause();
        pending.then(() => {
          this.busyData = false;
          this.socket.resume();
          this.parse();
        }, (err: unknown) => this.fail(err instanceof FerryError ? err : new FerryError('EIO', describeCause(err), { cause: err })));
        return;
      }
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (this.chunks[0]!.length < n) this.chunks = [Buffer.concat(this.chunks)];
    const first = this.chunks[0]!;
    const out = first.subarray(0, n);
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.buffered -= n;
    return out;
  }
}

/**
 * The peer's own error, passed on: its code and line, said to come from the peer. Both are
 * printed on this side's terminal and in its JSON: a control character (a terminal's escape
 * sequence, a line break that would fake a second line) becomes '?', and a code anything but
 * letters, digits and '_'.
 */
export class PeerError extends FerryError {
  readonly peerMessage: string;

  constructor(code: string, message: string, peer: string) {
    const said = message.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
    super(code.replace(/[^A-Za-z0-9_]/g, '?'), `${peer} reports: ${said}`);
    this.peerMessage = said;
  }
}

/**
 * Connects to a receiver and completes the TLS handshake; FerryError 'ECONNREFUSED' when
 * nothing listens, 'EAUTH' when the peer does not hold the same key.
 */
export function connect(to: Endpoint, key: MigrationKey, label: string, signal?: AbortSignal): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({
      ...TLS_COMMON, host: to.host, port: to.port,
      pskCallback: () => ({ psk: key.psk, identity: IDENTITY }),
      // There is no certificate: the PSK authenticates the receiver (its Finished message).
      checkServerIdentity: () => undefined,
    });
    const timer = setTimeout(() => fail(new FerryError('ETIMEDOUT', `${label} did not answer within 10 s (is ferry receive running there, and reachable?)`)), 10_000);
    const onAbort = (): void => fail(signal!.reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    const done = (): void => { clearTimeout(timer); signal?.removeEventListener('abort', onAbort); };
    function fail(err: unknown): void {
      done();
      socket.destroy();
      reject(err);
    }
    socket.once('secureConnect', () => {
      done();
      socket.removeAllListeners('error');
      resolve(new Channel(socket, label));
    });
    socket.once('error', (err: NodeJS.ErrnoException) => fail(connectError(err, label, key)));
  });
}

/**
 * Sets UNACKED_MS on a TCP transport's socket (also over TLS, whose handle has the socket's
 * descriptor); pipes (ssh) have none, and ssh its own keepalive.
 */
function boundUnacked(socket: Transport): void {
  const fd = (socket as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) return;
  try {
    native().setSockInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, UNACKED_MS);
  } catch {
    // not a TCP socket: nothing to bound
  }
}

/** One line for a failed connection or handshake. */
function connectError(err: NodeJS.ErrnoException, label: string, key: MigrationKey): FerryError {
  const code = err.code ?? '';
  if (code === 'ECONNREFUSED') return new FerryError('ECONNREFUSED', `nothing listens at ${label}: start ferry receive there first`, { cause: err });
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return new FerryError('ECONNREFUSED', `cannot resolve the host of ${label} (${code})`, { cause: err });
  if (code.startsWith('ERR_SSL') || code === 'ECONNRESET' || code === 'EPROTO') {
    return new FerryError('EAUTH', `${label} refused the key ${key.path}, or is not ferry receive: both sides need the same key file (TLS: ${tlsReason(err)})`, { cause: err, path: key.path });
  }
  return new FerryError('ECONNREFUSED', `cannot connect to ${label}: ${describeCause(err)}`, { cause: err });
}

/** OpenSSL's reason, without its error stack: "bad record mac". */
export function tlsReason(err: NodeJS.ErrnoException): string {
  const reason = (err as { reason?: unknown }).reason;
  if (typeof reason === 'string' && reason !== '') return reason;
  return err.code ?? describeCause(err);
}

/** A TLS-PSK server: `onPeer` gets each authenticated connection, `onRefused` each peer refused. */
export function listen(at: Endpoint, key: MigrationKey,
  onPeer: (socket: TLSSocket, peer: string) => void,
  onRefused: (peer: string, why: string) => void): Promise<{ server: Server; port: number }> {
  const server = createServer({
    ...TLS_COMMON,
    pskCallback: (_socket, identity) => (identity === IDENTITY ? key.psk : null),
    handshakeTimeout: 10_000,
  });
  server.on('secureConnection', (socket) => onPeer(socket, formatHostPort({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 })));
  server.on('tlsClientError', (err: NodeJS.ErrnoException, socket) => {
    onRefused(formatHostPort({ host: socket.remoteAddress ?? '?', port: socket.remotePort ?? 0 }), tlsReason(err));
  });
  return new Promise((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the port is in use' : err.code === 'EADDRNOTAVAIL' ? 'no such address on this node' : describeCause(err);
      reject(new FerryError('ELISTEN', `cannot listen on ${formatHostPort(at)}: ${why}`, { cause: err }));
    });
    server.listen(at.port, at.host, () => {
      const a = server.address();
      resolve({ server, port: typeof a === 'object' && a !== null ? a.port : at.port });
    });
  });
}

/** `p`, or the abort reason when `signal` fires first. */
export function abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return p;
  return new Promise<T>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = (): void => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then((v) => { signal.removeEventListener('abort', onAbort); resolve(v); },
      (e: unknown) => { signal.removeEventListener('abort', onAbort); reject(e); });
  });
}
