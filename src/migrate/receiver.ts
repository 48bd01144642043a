/**
 * `receive`, the target side of a migration (docs/migration.md): listen for authenticated
 * senders (channel.ts), spool each one's image into a private directory of image.work_dir,
 * verify and check it with restore's own checks, say "ready", and on "go" restore it with its
 * original PIDs, then answer "running" or the one line of the error.
 *
 * Trust. The PSK says who may talk to this node; it does not say who made the image. An image
 * is restored under restore's ordinary rules (docs/security.md): signed by a `--trust` key (or
 * image.trust, or this node's host key), it keeps its credentials; otherwise `--max-creds`
 * bounds it. The CLI refuses to start without one of the two (docs/migration.md, "Trust").
 *
 * Pre-copy (precopy.ts): the rounds' pages are kept in a store in the spool directory, and
 * the image is spooled rebuilt from RAW bytes and references to them, then verified whole.
 *
 * Nothing is left behind: the spool directory is an undo of the migration's session, and one
 * left by a receiver that was SIGKILLed is removed by the next receiver or migration.
 * Restore's own guarantee covers the rest: until the tree runs, every way out removes what it
 * made; stubs die with a ferry that dies (PTRACE_O_EXITKILL).
 */
import { existsSync, ftruncateSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Server, TLSSocket } from 'node:tls';
import type { CommonOptions, FileOptions } from '../api.js';
import { FerryError, describeCause } from '../errors.js';
import { faultPoint } from '../fault.js';
import { dropWarm } from '../image/direct.js';
import { hostPublicKey } from '../image/host-key.js';
import { warmChunkBuffers } from '../image/reader.js';
import { warmUpVerify } from '../image/sign.js';
import { PAGED_CHUNK_BYTES } from '../image/writer.js';
import { restore } from '../restore/restore.js';
import type { CredsBound } from '../restore/bounds.js';
import { Session } from '../session.js';
import { FERRY_VERSION } from '../version.js';
import { abortable, Channel, HEARTBEAT_MS, listen, PROTOCOL_VERSION, type RestoreFlags } from './channel.js';
import { containerRestorer } from './container.js';
import type { Endpoint } from './endpoint.js';
import type { MigrationKey } from './key.js';
import { PreCopyReceiver } from './precopy.js';
import { PoolWriter } from './page-store.js';
import { StagedMemory } from './staging.js';
import { defaultStubPath } from '../native/binding.js';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { ownPidNamespace } from '../proc/pid-ns.js';
import { bootId, keptCopyWarning, privateDir, RECEIVER_DIR, removeStaleDirs, SENDER_DIR, type PhaseRecord } from './workdir.js';

export interface ReceiveOptions extends CommonOptions {
  /** Where to listen; port 0 picks a free one (reported in the 'listen' record). */
  listen: Endpoint;
  /** The pre-shared key (readMigrationKey). */
  key: MigrationKey;
  /** Serve one authenticated migration, then return (rejecting with its error if it failed). */
  once: boolean;
  /** Trusted image signers, as RestoreOptions.trust; absent: image.trust of the config. */
  trust?: string;
  /** The most a migrated tree may get (RestoreOptions.bound, `--max-creds`). */
  bound?: CredsBound;
  /** What file kinds may do beyond the defaults. */
  files?: Partial<FileOptions>;
  /** The runtime that makes a migrated container here: 'runc' (default), 'crun' or a path. */
  runtime?: string;
  /** Gets each phase's record as it completes ('listen' first). */
  onPhase?: (r: PhaseRecord) => void;
  /** A migration that failed (not the last of a --once receiver, which rejects with it). */
  onFailure?: (err: unknown, peer: string) => void;
  /** A peer refused before anything was read from it (no key, not TLS, another cipher). */
  onRefused?: (peer: string, why: string) => void;
}

/** Serves migrations until `o.signal` aborts, or one authenticated migration with `once`. */
export async function receive(o: ReceiveOptions): Promise<void> {
  const log = o.logger.child({ op: 'receive' });
  const workDir = o.config.image.workDir;
  removeStaleDirs(workDir, RECEIVER_DIR);
  removeStaleDirs(workDir, SENDER_DIR, (image, pid) => log.warn(keptCopyWarning(image, pid)));
  let busy = false;
  let finished: (err?: unknown) => void = () => {};
  const over = new Promise<void>((resolve, reject) => {
    finished = (err?: unknown) => (err === undefined ? resolve() : reject(err));
  });
  const onPeer = (socket: TLSSocket, peer: string): void => {
    const channel = new Channel(socket, `the sender ${peer}`);
    if (busy) {
      channel.send({ type: 'error', code: 'EBUSY', message: 'this node is taking another migration: try again once it is done' });
      void channel.close();
      return;
    }
    busy = true;
    // After a signal, the migration in progress was the last one.
    serveOne(o, channel).then(() => {
      busy = false;
      if (o.once || (o.signal?.aborted ?? false)) finished();
    }, (err: unknown) => {
      busy = false;
      log.error({ err, peer }, 'migration failed');
      if (o.once) return finished(err);
      o.onFailure?.(err, peer);
      if (o.signal?.aborted ?? false) finished();
    });
  };
  const onRefused = (peer: string, why: string): void => {
    log.warn({ peer, why }, 'peer refused');
    o.onRefused?.(peer, why);
  };
  const { server, port } = await listen(o.listen, o.key, onPeer, onRefused);
  server.on('error', (err) => log.error({ err }, 'listener failed'));
  o.onPhase?.({ phase: 'listen', host: o.listen.host, port });
  log.info({ host: o.listen.host, port }, 'listening');
  const onAbort = (): void => {
    // A migration in progress sees the same signal (its restore stops); an idle one just ends.
    if (!busy) finished();
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await over;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await closeServer(server);
  }
}

/**
 * Serves exactly one migration on `channel`, already authenticated by what carries it
 * (`ferry receive --stdio` under ssh: sshd authenticated the sender); rejects with its error.
 */
export async function receiveOne(o: Omit<ReceiveOptions, 'listen' | 'key' | 'once'>, channel: Channel): Promise<void> {
  removeStaleDirs(o.config.image.workDir, RECEIVER_DIR);
  removeStaleDirs(o.config.image.workDir, SENDER_DIR, (image, pid) => o.logger.warn(keptCopyWarning(image, pid)));
  await serveOne(o, channel);
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}


/** Bytes of the spool's writes in flight past which the channel stops reading (they wait in memory). */
const SPOOL_BACKLOG_BYTES = 16 << 20;

/**
 * The image as it arrives, each piece written at its offset on libuv's pool (PoolWriter;
 * pages named by REF are left as holes: skip). A pre-copy's frozen image is hundreds of small
 * RAW pieces between held runs, each written on the JS thread before, which also decrypts the
 * stream, with the source frozen. The first write that fails fails the next call, settled(),
 * and (`onFail`) the migration at once.
 */
class Spool {
  /** Where the next byte goes. */
  private at = 0;
  private failure: FerryError | undefined;
  private readonly out: PoolWriter;

  constructor(fd: number, dir: string, onFail: (err: FerryError) => void) {
    this.out = new PoolWriter(fd, (err) => {
      if (this.failure !== undefined) return;
      this.failure = new FerryError('EIMAGE', `cannot spool the image into ${dir} (image.work_dir): ${describeCause(err)}`, { cause: err, path: dir });
      onFail(this.failure);
    });
  }

  /** Writes `chunk` next; it is kept until written, so its memory must not be used again meanwhile. */
  write(chunk: Buffer): void {
    if (this.failure !== undefined) throw this.failure;
    this.out.write(chunk, this.at);
    this.at += chunk.length;
  }

  skip(n: number): void {
    this.at += n;
  }

  /** A promise while more than SPOOL_BACKLOG_BYTES wait for their writes (the channel stops reading meanwhile). */
  backlog(): Promise<void> | undefined {
    return this.out.behind > SPOOL_BACKLOG_BYTES ? this.out.below(SPOOL_BACKLOG_BYTES) : undefined;
  }

  /** Resolves once every write is done; rejects with the first that failed. */
  async settled(): Promise<void> {
    await this.out.below(0);
    if (this.failure !== undefined) throw this.failure;
  }

  /** Sizes the file to `bytes` (the image's whole length) and closes it; every write done (settled). */
  finish(bytes: number): void {
    ftruncateSync(this.out.fd, bytes);
    this.out.close();
  }

  close(): void {
    this.out.close();
  }
}

/** One migration from an authenticated sender: its image spooled, checked, restored on "go". */
async function serveOne(o: Omit<ReceiveOptions, 'listen' | 'key' | 'once'>, ch: Channel): Promise<void> {
  const address = ch.peer.replace(/^the sender /, '');
  const log = o.logger.child({ op: 'receive', peer: address });
  const session = new Session('receive', log);
  let heartbeat: NodeJS.Timeout | undefined;
  try {
    const hello = await abortable(ch.next('waiting for its hello', 'hello'), o.signal);
    if (hello.protocol !== PROTOCOL_VERSION) {
      throw new FerryError('EPROTO', `${ch.peer} speaks migration protocol ${hello.protocol} (ferry ${hello.ferryVersion}), this node ${PROTOCOL_VERSION} (ferry ${FERRY_VERSION}): run the same ferry on both`);
    }
    const sameBoot = hello.bootId !== '' && hello.bootId === bootId();
    // A container: where it goes is checked now, before one byte of its image is taken.
    const restoreTree = hello.container !== undefined ? containerRestorer(hello.container, o.runtime ?? 'runc') : restore;
    // This node's host key (the images it signed are trusted), read now rather than in the downtime.
    const hostKey = hostPublicKey(o.config.image.hostKey) ?? null;
    try {
      warmUpVerify(); // and the image's signature check is set up
    } catch { /* only a head start: the check itself says what is wrong */ }
    const dir = privateDir(o.config.image.workDir, RECEIVER_DIR);
    session.onUndo(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    const image = join(dir, 'image.tar');
    // A write that fails fails this migration at once (the channel), not only at the end.
    const spooled = new Spool(openSync(image, 'wx', 0o600), dir, (err) => ch.fail(err));
    session.onUndo('close the spool', () => spooled.close());
    let bytes = 0;
    const spool = (chunk: Buffer): void => spooled.write(chunk);
    const skip = (n: number): void => spooled.skip(n);
    // Pre-copy: tagged frames, pages kept in a store beside the spool (precopy.ts).
    const pre = hello.precopy === true ? new PreCopyReceiver(dir, ch.peer) : undefined;
    if (pre) session.onUndo('close the pre-copy store', () => pre.close());
    // The buffers the restore reads the frozen image's chunks into (1 MiB: its pages entries
    // are paged, writer.ts), faulted in now rather than in the downtime (a lazy restore wrote
    // 64 KiB before its let-go in 5.3 ms, most of it first touches of a fresh chunk buffer).
    if (pre) {
      warmChunkBuffers(PAGED_CHUNK_BYTES);
      session.onUndo('drop the warm buffers', dropWarm);
    }
    // The rounds' pages are written (and hashed) on libuv's pool while this thread decrypts
    // the next; an image frame waits for them, and the channel stops reading while too many wait.
    pre?.deferWrites();
    // And the root's, placed where it has them in a stub of ours as they come (staging.ts):
    // restore forks the root from it instead of writing them. Not for a lazy restore (which
    // writes next to nothing before the let-go) nor a container (its root is the runtime's).
    const lazy = hello.lazy === true;
    const staging = pre && !lazy && hello.container === undefined
      ? StagedMemory.start(hello.pid, o.config.restore.stub || defaultStubPath(), log) : undefined;
    if (staging) {
      session.onUndo('kill the staging stub', () => staging.reap());
      pre!.stage(staging);
    }
    const take = (chunk: Buffer): void | Promise<void> => {
      const was = bytes;
      if (pre) bytes += pre.handle(chunk, spool, skip);
      else {
        spool(chunk);
        bytes += chunk.length;
      }
      if (was === 0 && bytes > 0) return faultPoint('streaming', o.signal);
      return pre?.backlog() ?? spooled.backlog();
    };
    ch.onData = (chunk) => (pre && !pre.ready(chunk) ? pre.settled().then(() => take(chunk)) : take(chunk));
    // The sender freezes the tree once this side has taken what it sent (channel.ts 'catch-up'):
    // the rounds' writes still queued here would otherwise be downtime. A write that failed
    // (a full image.work_dir) fails the channel, and with it this migration: the sender, waiting
    // for the word with the tree running, sees the connection end and lets the tree go on.
    ch.onControl = (m) => {
      if (m.type === 'layout') {
        pre?.layout(m.pid, m.areas);
        return true;
      }
      if (m.type === 'chunks') {
        // Starts out of order fail this migration (a protocol error), not the receiver.
        try {
          pre?.expectChunks(m.pid, m.starts);
        } catch (err) {
          ch.fail(err instanceof FerryError ? err : new FerryError('EPROTO', describeCause(err), { cause: err }));
        }
        return true;
      }
      if (m.type !== 'catch-up') return false;
      // Settled, the staged chunks' digests are taken and the store's runs of slots marked (the
      // tree still runs on the source).
      // A throw in the taking fails this migration too, as a failed write does (never the receiver).
      faultPoint('catchup', o.signal).then(() => pre?.settled()).then(() => {
        pre?.takeChunkDigests();
        pre?.markRuns();
        ch.send({ type: 'caught-up' });
      }).catch((err: unknown) => {
        ch.fail(err instanceof FerryError ? err : new FerryError('EIO', describeCause(err), { cause: err }));
      });
      return true;
    };
    ch.send({ type: 'welcome', protocol: PROTOCOL_VERSION, ferryVersion: FERRY_VERSION, bootId: bootId(), pidNs: ownPidNamespace() });
    const tWelcome = performance.now();
    const end = await abortable(ch.next('receiving the image', 'end'), o.signal);
    const tEnd = performance.now();
    await faultPoint('ended', o.signal);
    ch.onData = undefined;
    ch.onControl = undefined;
    await pre?.settled();
    await spooled.settled();
    if (end.bytes !== bytes) throw new FerryError('EPROTO', `${ch.peer} said it sent ${end.bytes} bytes of image, ${bytes} arrived: a protocol error`);
    spooled.finish(bytes); // a hole at the end too (a tar never ends in pages, but its reader need not know)
    o.onPhase?.({ phase: 'transfer', peer: address, pid: hello.pid, bytes, ms: round(tEnd - tWelcome),
      ...(pre ? { preCopyPages: pre.pages, refBytes: pre.refBytes, ...(pre.lateChunks > 0 ? { lateChunks: pre.lateChunks } : {}) } : {}) });

    // Verifying and restoring take a while: say so every second, so the sender keeps waiting.
    heartbeat = setInterval(() => ch.send({ type: 'busy' }), HEARTBEAT_MS);
    const tStart = performance.now();
    let tReady = 0, tGo = 0;
    // Lazy pages (restore/lazy.ts) serve from the image spooled here, whole and verified: the
    // rounds' pages and the frozen image's (pre-copy), or every page (stop and copy, a container).
    const result = await restoreTree({
      ...(staging ? { stagedMemory: staging } : {}),
      ...(lazy ? { lazyPages: true } : {}),
      image, config: o.config, logger: o.logger, hostKey,
      // The pages REFs named stay in the store: the restore reads them from there, verified.
      ...(pre ? { imageOverlay: pre.overlay() } : {}),
      ...(o.signal !== undefined ? { signal: o.signal } : {}),
      ...(o.trust !== undefined ? { trust: o.trust } : {}),
      ...(o.bound !== undefined ? { bound: o.bound } : {}),
      // The flags the tree was checkpointed with that only say what its image holds (its
      // connections, its locks) add to this node's own; what would reach beyond the image
      // (a terminal or unix peer of this node's: --shell-job, --ext-unix-sk) is this node's
      // to give, never the sender's.
      ...(o.files !== undefined || hello.files !== undefined ? { files: { ...o.files, ...senderFlags(hello.files) } } : {}),
      beforeCreate: async ({ pids, tids }) => {
        // On another machine (or boot) the PIDs must be free already; on this one the source
        // holds them until "go". A container's are its own pid namespace's.
        // The staging stub the restore uses holds the root's pid where it was free (staging.ts;
        // one it does not use was reaped by now): not taken.
        if (!sameBoot && hello.container === undefined) refuseTaken(pids.filter((p) => p !== staging?.heldPid), tids);
        tReady = performance.now();
        ch.send({ type: 'ready', verifyMs: tReady - tStart });
        await abortable(ch.next('waiting for the source to stop (go)', 'go'), o.signal);
        tGo = performance.now();
      },
    });
    const tRunning = performance.now();
    // Where the target's part of the downtime went (docs/migration.md, "Downtime").
    const phases = {
      verifyMs: round(tReady - tStart), goToRunningMs: round(tRunning - tGo), ...Object.fromEntries(
        Object.entries(result.phases ?? {}).map(([k, v]) => [k, round(v)])),
    };
    // The tree has run since its let-go; what came after (the watch for a process dying at
    // once, clean-up) is not downtime: the sender takes it off (docs/migration.md, "Downtime").
    const said = { ...phases, runningForMs: round(Math.max(0, performance.now() - result.runningAt)) };
    ch.send({ type: 'running', pid: result.pid, pids: result.pids, restoreMs: result.restoreMs, phases: said });
    session.unwind(); // the spool (a lazy restore reads its open image, removed from the directory)
    o.onPhase?.({ phase: 'restore', peer: address, pid: result.pid, pids: result.pids, restoreMs: round(result.restoreMs), phases: said, ...(lazy ? { lazy: result.lazy !== undefined } : {}),
      ...(result.placedBytes !== undefined ? { stagedPages: result.placedBytes / PAGE_SIZE, stagedChunks: result.placedChunks ?? 0 } : {}),
      ...(result.stagedRoot !== undefined ? { stagedRoot: result.stagedRoot } : {}) });
    if (lazy) {
      // The tree runs; its memory comes in (if any was left to serve: memory shared or
      // inherited copy-on-write is written before the start). The source waits for the word
      // that all is in; a failure (the tree killed) is said to it below.
      const stats = await (result.lazy ?? { pages: 0, faults: 0, fillMs: 0 });
      ch.send({ type: 'filled', pages: stats.pages, faults: stats.faults, fillMs: round(stats.fillMs) });
      o.onPhase?.({ phase: 'filled', peer: address, pid: result.pid, pages: stats.pages, faults: stats.faults, fillMs: round(stats.fillMs) });
    }
    clearInterval(heartbeat);
    heartbeat = undefined;
    const done = await ch.next('finishing', 'done').catch(() => undefined);
    o.onPhase?.({ phase: 'done', peer: address, pid: result.pid, ...(done !== undefined ? { downtimeMs: done.downtimeMs } : {}) });
    await ch.close();
  } catch (err) {
    if (heartbeat !== undefined) clearInterval(heartbeat);
    session.unwind();
    const e = err instanceof FerryError ? err : new FerryError('ERESTORE', describeCause(err), { cause: err });
    ch.send({ type: 'error', code: e.code, message: e.message });
    await ch.close();
    throw e.message.includes(ch.peer) ? e : new FerryError(e.code, `migration from ${address}: ${e.message}`, { cause: err, ...contextOf(e) });
  }
}

const round = (ms: number): number => Math.round(ms * 10) / 10;

/** Of a hello's file flags, those a sender may set: what its image holds, only turned on. */
function senderFlags(f: RestoreFlags | undefined): Partial<FileOptions> {
  const out: Partial<FileOptions> = {};
  for (const k of ['tcpEstablished', 'tcpClose', 'fileLocks'] as const) if (f?.[k] === true) out[k] = true;
  return out;
}

/** The pid, fd and path an error names. */
function contextOf(e: FerryError): { pid?: number; fd?: number; path?: string } {
  return {
    ...(e.pid !== undefined ? { pid: e.pid } : {}), ...(e.fd !== undefined ? { fd: e.fd } : {}), ...(e.path !== undefined ? { path: e.path } : {}),
  };
}

/** Refuses, before "ready", an image whose PIDs or thread ids this node's processes hold. */
function refuseTaken(pids: readonly number[], tids: readonly number[]): void {
  for (const id of [...pids, ...tids]) {
    if (!existsSync(`/proc/${id}`)) continue;
    let comm = '?';
    try {
      comm = readFileSync(`/proc/${id}/comm`, 'utf8').trim();
    } catch { /* gone meanwhile */ }
    throw new FerryError('EPIDINUSE', `pid ${id} of the image is in use on this node by another process (${comm}): the tree cannot keep its PIDs here; migrate it to another node`, { pid: id });
  }
}

