/**
 * `migrate`, the source side of a stop-and-copy migration (docs/migration.md): connect to the
 * target's `ferry receive` and authenticate (channel.ts), stop the tree and stream its image
 * over the connection while keeping a copy here, hold the tree stopped until the target says
 * the image is whole and checked, then kill it (the point of no return), say "go", and wait
 * for "running".
 *
 * Never harming the workload. Nothing is touched before the target has answered. Until the
 * kill, every way out lets the tree go as it was: the checkpoint's own session does (and the
 * kernel, if ferry dies: docs/safety.md); this module only makes the checkpoint fail, by
 * failing the image's next write (Pump) or the wait for "ready". After the kill the workload lives only in
 * the image: a target that says its restore failed (it then removed all it made) gets the
 * local copy restored here; a target that falls silent leaves the outcome unknown, so the copy
 * is kept and named instead of restored (restoring it while the target may run the tree would
 * make two of it).
 *
 * Pre-copy (precopy.ts, the default): before the checkpoint, the tree's memory crosses in
 * rounds while it runs, its writes tracked from outside (dump/dirty.ts); the frozen image then
 * names the pages the target holds instead of carrying them, without reading them. The
 * tracking is an undo of the session like the rest, and dies with ferry. The local copy is
 * then the frames sent (FrameLog: the frozen stream lacks the held pages), made into a tar
 * only when it is needed (workdir.ts copyImage).
 */
import { createPublicKey, type KeyObject } from 'node:crypto';
import { existsSync, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CheckpointOptions, CheckpointResult, CommonOptions, RestoreOptions, RestoreResult } from '../api.js';
import { checkpoint } from '../dump/checkpoint.js';
import { FerryError, describeCause } from '../errors.js';
import { collectGarbage } from '../gc.js';
import { faultPoint } from '../fault.js';
import { removeKeptLock } from '../files/tcp-lock.js';
import type { FileOptions } from '../files/types.js';
import { hostSigningKey } from '../image/host-key.js';
import { newEd25519Key, signingKey } from '../image/sign.js';
import type { TarSink } from '../image/tar-out.js';
import { isAlive } from '../proc/read.js';
import { PAGE_SIZE } from '../arch/x86-64.js';
import { restore } from '../restore/restore.js';
import { parseMaxCreds } from '../restore/bounds.js';
import { finishing, Session } from '../session.js';
import { withNetns } from '../task/netns.js';
import { FERRY_VERSION } from '../version.js';
import {
  abortable, connect, HEARTBEAT_MS, PeerError, PROTOCOL_VERSION, RESTORE_FLAGS, type Channel, type ContainerTarget, type RestoreFlags,
} from './channel.js';
import { pidNamespaceLine } from '../proc/pid-ns.js';
import { bootId, copyImage, FRAME_LOG, HANDED_OVER, keptCopyWarning, privateDir, removeStaleDirs, SENDER_DIR, type PhaseRecord } from './workdir.js';
import { formatUrl, isSsh, type Destination } from './endpoint.js';
import type { MigrationKey } from './key.js';
import { sshChannel, type SshOptions } from './ssh.js';
import { DEFAULT_MAX_ROUNDS, FrameLog, PreCopySender, type RoundRecord } from './precopy.js';
import { copyFailure, PoolWriter } from './page-store.js';

export type { PhaseRecord };

export interface MigrateOptions extends CommonOptions {
  /** Root of the process tree to migrate. */
  pid: number;
  /** The target's `ferry receive` (tcp://), or the node to run `ferry receive --stdio` on (ssh://). */
  to: Destination;
  /** The pre-shared key (readMigrationKey); required for tcp://, not used over ssh://. */
  key?: MigrationKey;
  /** How ssh:// reaches the target (ssh.ts). */
  ssh?: SshOptions;
  /** A workload other than a plain process tree: a container (src/migrate/container.ts). */
  workload?: MigrateWorkload;
  /**
   * Sign the image with this Ed25519 private key (the target trusts its .pub with --trust).
   * Absent: image.sign_key of the config, else the host key, else a key made for this one image.
   */
  signKey?: string | KeyObject;
  /** Gets each phase's record as it completes. */
  onPhase?: (r: PhaseRecord) => void;
  /**
   * Pre-copy (precopy.ts): memory crosses in rounds while the tree runs, at most `maxRounds`
   * (0: stop and copy, the tree stopped for the whole transfer). Absent: DEFAULT_MAX_ROUNDS,
   * for a tree and a container alike.
   */
  maxRounds?: number;
  /** Gets each pre-copy round's record (also passed to onPhase as phase 'round'). */
  onRound?: (r: RoundRecord) => void;
  /** Gets the one line of each warning (a kernel that cannot track writes: stop and copy). */
  onWarning?: (line: string) => void;
  /**
   * The runc-style file flags for the checkpoint (--tcp-established, --external, …); the
   * target restores with the same flags (the hello carries those a restore reads).
   */
  files?: Partial<FileOptions>;
  /**
   * Lazy pages (restore/lazy.ts): the target lets the tree run before its memory is written
   * and serves it from the image it holds (the rounds' pages and the frozen image's, or with
   * stop and copy the whole image); resolves once the target says every page is in.
   */
  lazy?: boolean;
}

/**
 * What differs for a container (src/migrate/container.ts): what the hello asks of the target,
 * how the source is checkpointed, how it is brought back here after a failed hand-over, and
 * what is left to do with the source once the target runs it.
 */
export interface MigrateWorkload {
  /** Where the target restores it. */
  container: ContainerTarget;
  /** The checkpoint (its `pid` is the container's init); it must not remove the source after the kill. */
  checkpoint(c: CheckpointOptions): Promise<CheckpointResult>;
  /** Restores the local copy here (the target failed after the kill). */
  restoreHere(r: RestoreOptions): Promise<RestoreResult>;
  /** The target runs it: remove what is left of the source (the killed container's record). */
  handedOver(): void;
  /** The command that restores a kept copy by hand, before `--image`: "ferry restore web1". */
  restoreCommand: string;
  /**
   * The network namespace the source joined by path (a pod's), which outlives it: a kept
   * network lock is there (files/tcp-lock.ts).
   */
  netnsPath?: string;
}

export interface MigrateResult {
  /** The restored root's pid on the target. */
  pid: number;
  /** Every restored process (the original PIDs). */
  pids: number[];
  /** Bytes of image sent. */
  bytes: number;
  /** Pre-copy rounds run (0: stop and copy). */
  rounds: number;
  /** Bytes that crossed during the rounds, and bytes of the image the target had from them. */
  roundBytes: number;
  refBytes: number;
  /** From the tree stopped here to the word that it runs there, milliseconds. */
  downtimeMs: number;
  /** Whole migration, milliseconds. */
  totalMs: number;
  /** Where the downtime went, milliseconds (docs/migration.md, "Downtime"). */
  phases?: { [phase: string]: number | Record<string, number> };
  /** With `lazy`: pages the target served after the start, faults among them, and the time until all were in. */
  lazy?: { pages: number; faults: number; fillMs: number };
}

/** Bytes of the local copy a Pump lets wait for their writes before the checkpoint waits too. */
const COPY_BACKLOG_BYTES = 16 << 20;
/**
 * A batch of the checkpoint's writes (under pre-copy, the frozen image's replayed pieces come
 * all at once, up to tens of MiB) goes out in pieces of this size, each waiting for the
 * socket as a read of the pipe did.
 */
const SINK_PIECE_BYTES = 1 << 20;

/**
 * The image's bytes on their way: the checkpoint, in this process, hands them to `sink` (its
 * imageSink: no pipe, no descriptor), and each batch is sent over the channel and into the
 * local copy; the checkpoint waits while the socket is full or more than COPY_BACKLOG_BYTES of
 * the copy wait for their writes (on libuv's pool: written here, they held the JS thread,
 * which also encrypts the stream, 1.5 s a GiB). A failure of either fails the checkpoint's next
 * write (the sink rejects), so it lets the tree go. (The image went through a pipe into this
 * process before, a pool thread's write and a read here for every 64 KiB: 15-20 ms of a 1 GiB
 * pre-copy's frozen image of 1-2 MB.)
 */
class Pump {
  /** Bytes sent so far. */
  bytes = 0;
  /** When the image's first byte came out of the checkpoint (performance.now()); 0 before. */
  firstAt = 0;
  /** Takes the image from the checkpoint (CheckpointOptions.imageSink). */
  readonly sink: TarSink;
  /** Why it stopped taking (the checkpoint's next write fails), once it failed. */
  failure: FerryError | undefined;
  /** Resolves at end() once every byte is sent and copied; rejects on the first failure. */
  readonly done: Promise<number>;
  private ended = false;
  /** The copy's writes (none without a copy: pre-copy keeps its frames instead). */
  private readonly copy: PoolWriter | undefined;
  private finish: () => void = () => {};
  private unlisten: () => void = () => {};

  constructor(channel: Channel, copyFd: number, copyDir: string, signal: AbortSignal | undefined,
    send: (chunk: Buffer) => boolean = (chunk) => channel.sendData(chunk)) {
    let first = true;
    let copied = 0;
    /** Rejects with the first failure: what a checkpoint waiting on the sink meets. */
    let stop!: (err: FerryError) => void;
    const stopped = new Promise<never>((_resolve, reject) => { stop = reject; });
    stopped.catch(() => {});
    let fail: (err: FerryError) => void = () => {};
    this.done = new Promise<number>((resolve, reject) => {
      fail = (err) => {
        this.unlisten();
        this.failure ??= err;
        stop(this.failure);
        reject(this.failure);
      };
      this.finish = () => { void (this.copy?.below(0) ?? Promise.resolve()).then(() => resolve(this.bytes)); };
    });
    this.done.catch(() => {}); // awaited by the checkpoint's last step, or the failure is the checkpoint's
    this.copy = copyFd >= 0 ? new PoolWriter(copyFd, (err) => fail(copyFailure(`the copy of the image in ${copyDir}`, err))) : undefined;
    const copy = this.copy;
    // A connection that fails fails the checkpoint's next write (or the one waiting for the
    // socket); so does an abort (SIGINT, SIGTERM) while it waits: it then lets the tree go.
    channel.socket.once('close', () => fail(channel.failure ?? new FerryError('ECONNRESET', `${channel.peer} closed the connection`)));
    if (signal !== undefined) {
      // The reason itself, which the checkpoint tells from other failures (its "interrupted" line).
      const aborted = (): void => fail(signal.reason instanceof FerryError ? signal.reason : new FerryError('EINTR', describeCause(signal.reason), { cause: signal.reason }));
      signal.addEventListener('abort', aborted, { once: true });
      this.unlisten = () => signal.removeEventListener('abort', aborted);
    }
    /** Sends and copies a chunk of the image (its own memory); what to wait for before the next, if anything. */
    const take = (chunk: Buffer): Promise<void> | undefined => {
      if (this.firstAt === 0) this.firstAt = performance.now();
      if (copy !== undefined) {
        copy.write(chunk, copied);
        copied += chunk.length;
      }
      this.bytes += chunk.length;
      let more: boolean;
      try {
        more = send(chunk);
      } catch (err) {
        fail(err instanceof FerryError ? err : new FerryError('EIO', `sending the image: ${describeCause(err)}`, { cause: err }));
        return stopped;
      }
      if (channel.failure !== undefined) {
        fail(channel.failure);
        return stopped;
      }
      const copyFull = (copy?.behind ?? 0) > COPY_BACKLOG_BYTES;
      if (more && !first && !copyFull) return undefined;
      const wasFirst = first;
      first = false;
      const wait = (async () => {
        if (wasFirst) await faultPoint('streaming', signal);
        // (A drain that came during the fault point's pause is not waited for.)
        if (!more && channel.socket.writableNeedDrain) await new Promise<void>((resolveDrain) => channel.socket.once('drain', resolveDrain));
        if (copyFull) await copy!.below(COPY_BACKLOG_BYTES);
      })().catch((err: unknown) => fail(err instanceof FerryError ? err : new FerryError('EINTR', describeCause(err), { cause: err })));
      return Promise.race([wait, stopped]);
    };
    // The writer's buffers are its own again once a take resolves, and the copy's writes and
    // the socket may hold a chunk longer: each batch is copied once (a pipe copied it twice),
    // and sent in pieces of SINK_PIECE_BYTES.
    this.sink = {
      take: async (bufs) => {
        if (this.failure !== undefined) throw this.failure;
        if (this.ended) throw new Error('the image went on after its end');
        const all = bufs.length === 1 ? Buffer.from(bufs[0]!) : Buffer.concat(bufs);
        for (let off = 0; off < all.length; off += SINK_PIECE_BYTES) {
          const wait = take(all.subarray(off, Math.min(all.length, off + SINK_PIECE_BYTES)));
          if (wait !== undefined) await wait;
        }
      },
    };
  }

  /** The image is whole (the checkpoint's writes are done): `done` resolves once the copy has it all. */
  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.unlisten();
    this.finish();
  }

  /** Closes the copy's descriptor (idempotent; after its last write). */
  closeCopy(): void {
    this.copy?.close();
  }
}

/**
 * The key this migration's image is signed with, chosen as a checkpoint chooses it (made here
 * to restore the copy with it), and what restores the copy by hand: the host key's images
 * need nothing, another key's need its .pub, a key made for this one image (no host key, no
 * key given) leaves only --max-creds.
 */
function imageKey(o: MigrateOptions): { key: KeyObject; restoreWith: string } {
  if (o.signKey !== undefined) return { key: signingKey(o.signKey), restoreWith: ' --trust PUB (the .pub of --sign-key)' };
  if (o.config.image.signKey !== '') return { key: signingKey(o.config.image.signKey), restoreWith: ' --trust PUB (the .pub of image.sign_key)' };
  const host = hostSigningKey(o.config.image.hostKey);
  if (host !== undefined) return { key: host, restoreWith: '' };
  return { key: newEd25519Key(), restoreWith: ' --max-creds root' };
}

/**
 * Waits, the tree running, until the target has taken (written and hashed) every frame sent so
 * far: channel.ts 'catch-up'.
 */
async function catchUp(ch: Channel, signal: AbortSignal | undefined): Promise<void> {
  ch.send({ type: 'catch-up' });
  await abortable(ch.next('waiting for the target to take the pre-copied pages', 'caught-up'), signal);
}

/** Migrates the process tree rooted at `o.pid` to `o.to`; resolves once it runs there. */
export async function migrate(o: MigrateOptions): Promise<MigrateResult> {
  const t0 = performance.now();
  const log = o.logger.child({ op: 'migrate', targetPid: o.pid });
  const to = formatUrl(o.to);
  if (!existsSync(`/proc/${o.pid}`)) {
    throw new FerryError('ENOPROC', `no process with pid ${o.pid} (check the pid; it may have exited)`, { pid: o.pid });
  }
  const { key: signKey, restoreWith } = imageKey(o); // a key that cannot sign fails before anything else
  const workDir = o.config.image.workDir;
  removeStaleDirs(workDir, SENDER_DIR, (image, pid) => warnKept(o, log, image, pid));

  const session = new Session('migrate', log);
  let channel: Channel | undefined;
  try {
    if (isSsh(o.to)) {
      channel = sshChannel(o.to, o.ssh ?? {}, log, o.signal);
    } else {
      if (o.key === undefined) throw new FerryError('EKEY', `${to} needs the key file ferry receive was started with (--key)`);
      channel = await connect(o.to, o.key, to, o.signal);
    }
    const ch = channel;
    session.onUndo('drop the connection', () => ch.destroy());
    // Pre-copy rounds, for a process tree or a container (a container's pages go by the pids
    // of its own namespace, as its image names them: precopy.ts imagePid).
    const maxRounds = o.maxRounds ?? DEFAULT_MAX_ROUNDS;
    // Lazy pages are served from the image the target holds whole before "go" (rounds or not).
    const lazy = o.lazy === true;
    const flags = restoreFlags(o.files);
    ch.send({ type: 'hello', protocol: PROTOCOL_VERSION, ferryVersion: FERRY_VERSION, pid: o.pid, bootId: bootId(),
      ...(o.workload !== undefined ? { container: o.workload.container } : {}), ...(maxRounds > 0 ? { precopy: true } : {}),
      ...(lazy ? { lazy: true } : {}), ...(flags !== undefined ? { files: flags } : {}) });
    const welcome = await ch.next('waiting for the target to take the migration', 'welcome');
    // A target on another kernel needs none of the tree's PIDs free here: the kill does not
    // wait for its processes to be reaped (seconds where PID 1 reaps lazily), only for their
    // exit. Unknown boot ids count as the same kernel.
    const ourBoot = bootId();
    const otherKernel = welcome.bootId !== '' && ourBoot !== '' && welcome.bootId !== ourBoot;
    // Nor one on this kernel in a pid namespace where the tree holds no pid (a child of ours,
    // a sibling's): it restores the tree's PIDs there, and the source's are elsewhere. The
    // tree's line of namespaces is read up to the initial one, else the kill waits.
    const line = otherKernel || welcome.pidNs === '' ? undefined : pidNamespaceLine(o.pid);
    const apart = line !== undefined && !line.includes(welcome.pidNs);
    // Reading a large tree can take a while before its first byte is sent (a checkpoint to a
    // stream hashes everything first): the target hears from us meanwhile.
    const heartbeat = setInterval(() => ch.send({ type: 'busy' }), HEARTBEAT_MS);
    session.onUndo('stop the heartbeat', () => clearInterval(heartbeat));
    log.debug({ peer: to, ferryVersion: welcome.ferryVersion, otherKernel, otherPidNamespace: apart }, 'connected');
    o.signal?.throwIfAborted();

    // Pre-copy: rounds while the tree runs; the tracking ends on every way out (precopy.ts).
    // The copy is then the frames sent (FRAME_LOG): the frozen image leaves out held pages.
    let pre: PreCopySender | undefined;
    let frames: FrameLog | undefined;
    if (maxRounds > 0) {
      const f = (frames = new FrameLog(workDir, join(workDir, `${SENDER_DIR}${process.pid}-frames`)));
      session.onUndo('remove the copy', () => f.discard());
      // Written on libuv's pool, the rounds' frames as the frozen image's (waited for before
      // "end", below); a round waits while too many are in flight.
      f.deferWrites();
      const p = (pre = new PreCopySender(ch, o.pid, {
        maxRounds, logger: log, log: (frame) => { f.append(frame); return f.backlog(); },
        ...(o.signal !== undefined ? { signal: o.signal } : {}),
        onRound: (r) => { o.onRound?.(r); o.onPhase?.({ phase: 'round', ...r }); },
        ...(o.onWarning !== undefined ? { onWarning: o.onWarning } : {}),
      }));
      session.onUndo('end the dirty tracking', () => p.close());
      let tracked: boolean;
      try {
        tracked = await p.run();
      } catch (err) {
        // The copy could not keep up (a full image.work_dir): the rounds stopped, the tree runs.
        if (err instanceof FerryError && err === f.failed) {
          throw new FerryError(err.code, `${err.message}; so the pre-copy of pid ${o.pid} stopped: it runs on here as it was (its memory no longer tracked)`,
            { cause: err, pid: o.pid });
        }
        // The target failed taking the rounds' pages (its store full) and said why.
        const said = targetSaid(err, ch, o.signal?.aborted ?? false);
        if (said !== undefined) {
          throw new FerryError(said.code, `${to} failed: ${said.peerMessage}; so the pre-copy of pid ${o.pid} stopped: it runs on here as it was (its memory no longer tracked)`,
            { cause: said, pid: o.pid });
        }
        throw err;
      }
      // No tracking on this kernel: stop and copy, the copy a plain one.
      if (!tracked) {
        pre = undefined;
        f.discard();
        frames = undefined;
      }
    }
    const dir = privateDir(workDir, SENDER_DIR);
    session.onUndo(`remove ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    const copy = join(dir, 'image.tar');
    frames?.name(join(dir, FRAME_LOG));
    const copyFd = frames === undefined ? openSync(copy, 'wx', 0o600) : -1;
    const pump = new Pump(ch, copyFd, dir, o.signal, pre !== undefined ? (chunk) => pre.send(chunk) : undefined);
    session.onUndo('close the copy of the image', () => pump.closeCopy());

    // Garbage is collected now, where it costs the workload nothing, rather than when V8
    // finds it due, which the rounds' streaming brings about every 100 ms or so (gc.ts).
    collectGarbage();
    let stoppedAt = 0;
    let tReady = 0;
    let tEnd = 0;
    let sent = 0;
    let netLock: string | undefined;
    let reapWaitMs: number | undefined;
    const pids = await (o.workload?.checkpoint ?? checkpoint)({
      pid: o.pid, image: '(the migration stream)', imageSink: pump.sink, leaveRunning: false, signKey, ...(otherKernel || apart ? { skipReapWait: true } : {}),
      // The top-up rounds go once the target has taken the rounds before (its writes and hashing
      // lag behind the stream by up to a socket's and a backlog's worth, seconds on a busy node),
      // and the last look once it has taken them too: of its backlog, only that round's pages
      // (what the tree wrote meanwhile) fall in the downtime, taken while the source dumps.
      ...(pre !== undefined ? { heldPages: pre.heldPages(), beforeFreeze: async () => {
        await catchUp(ch, o.signal);
        await pre.topUp();
        await catchUp(ch, o.signal);
        await pre.lastLook();
      } } : {}),
      config: o.config, logger: o.logger,
      ...(o.files !== undefined ? { files: o.files } : {}),
      ...(o.signal !== undefined ? { signal: o.signal } : {}),
      ...(o.onProgress !== undefined ? { onProgress: o.onProgress } : {}),
      // The image is written, the tree still stopped: wait for the target to hold it whole.
      beforeKill: async (at) => {
        stoppedAt = at;
        pump.end();
        // The image's bytes: under pre-copy the stream carried all but the held pages (REFs).
        const bytes = await pump.done + (pre?.refBytes ?? 0);
        sent = bytes;
        pump.closeCopy();
        // Under pre-copy: pages the frozen dump read from the tree, and those it named by digest,
        // which left them out of the stream: each must have become a REF, else the image
        // would come out wrong here as there (checked before anything is killed).
        const pages = pre !== undefined ? { pagesRead: pre.frozenPages.read, pagesHeld: pre.frozenPages.held, topUpPages: pre.topUpPages } : {};
        if (pre !== undefined && pre.refBytes !== pre.frozenPages.held * PAGE_SIZE) {
          throw new FerryError('EIMAGE', `the frozen image of pid ${o.pid} left out ${pre.frozenPages.held} pages the target holds, `
            + `but ${pre.refBytes / PAGE_SIZE} were named to it: migrate with --no-pre-copy`);
        }
        clearInterval(heartbeat);
        tEnd = performance.now();
        ch.send({ type: 'end', bytes });
        // The local copy's last frames are written while the target verifies (up to a few ms
        // of the downtime before): the kill waits for both, and a failed write lets the tree go.
        const logged = frames?.finish();
        logged?.catch(() => {}); // awaited below, unless the wait for the target fails first
        o.onPhase?.({ phase: 'checkpoint', pid: o.pid, imageBytes: bytes, ms: round(tEnd - stoppedAt), ...pages });
        const ready = await abortable(ch.next('waiting for the target to verify the image', 'ready'), o.signal);
        await logged;
        // From the kill on, the copy may be the workload's only one: a sweep must keep it.
        writeFileSync(join(dir, HANDED_OVER), JSON.stringify({ pid: o.pid, to }));
        tReady = performance.now();
        o.onPhase?.({ phase: 'transfer', bytes, verifyMs: round(ready.verifyMs) });
      },
    }).then((r) => {
      netLock = r.netLock;
      reapWaitMs = r.reapWaitMs;
      return r.pids;
    }, (err: unknown) => {
      // Killed, and only the clean-up after the kill failed: the workload is in flight.
      if (tReady > 0 && !isAlive(o.pid)) {
        log.warn({ err }, 'the checkpoint failed after the kill; handing over');
        return [o.pid];
      }
      // The target refused the image (untrusted, beyond the bound, PIDs taken, …), or failed
      // while it took it (its spool full, a frame it refused) and said why before it hung up.
      const said = targetSaid(err, ch, o.signal?.aborted ?? false);
      if (said !== undefined) {
        throw new FerryError(said.code, `${to} ${tEnd > 0 ? 'refused it' : 'failed'}: ${said.peerMessage}; so pid ${o.pid} was let go as it was: it runs on here`, { cause: said, pid: o.pid });
      }
      // Interrupted: the pump may have failed the checkpoint's write before it saw the abort;
      // the reason is the signal either way.
      if (o.signal?.aborted && o.signal.reason instanceof Error && !(err instanceof FerryError && err.code === 'EINTR')) {
        throw new FerryError('EINTR', `checkpoint of pid ${o.pid} ${describeCause(o.signal.reason)}: the process was let go as it was and no image was written`,
          { cause: err, pid: o.pid });
      }
      // A connection that failed made the checkpoint fail: say so, not "write: EPIPE".
      const lost = ch.failure;
      if (lost !== undefined && !(o.signal?.aborted ?? false)) {
        throw new FerryError(lost.code, `${lost.message}, so pid ${o.pid} was let go as it was: it runs on here`, { cause: err, pid: o.pid });
      }
      // So did a copy that could not be written.
      const stopped = pump.failure ?? (frames?.failed instanceof FerryError ? frames.failed : undefined);
      if (stopped !== undefined && !(o.signal?.aborted ?? false)) {
        throw new FerryError(stopped.code, `${stopped.message}, so pid ${o.pid} was let go as it was: it runs on here`, { cause: stopped, pid: o.pid });
      }
      throw err;
    });

    // The point of no return: the source is gone, the workload lives in the image only.
    return await finishing(() => handOver(o, ch, session, copy, dir, signKey, restoreWith, pids,
      { t0, stoppedAt, tFirst: pump.firstAt, tEnd, tReady, sent, pre, netLock, reapWaitMs }));
  } catch (err) {
    // Tell the target why, so it removes what it holds (a target gone already hears nothing).
    if (channel !== undefined && channel.failure === undefined && !(err instanceof FerryError && err.cause instanceof PeerError)) {
      const e = err instanceof FerryError ? err : new FerryError('EMIGRATE', describeCause(err));
      channel.send({ type: 'error', code: e.code, message: e.message });
      await channel.close();
    }
    session.unwind();
    // A failure of the channel's own was told to the target: its word is let out (2 s at most), the tree already let go.
    await channel?.close();
    throw err;
  }
}

/**
 * The target's own word behind a failure, if it gave one: `err` itself, or the channel's
 * failure (the target said why, then hung up: channel.ts) unless the failure was ours (`aborted`).
 */
function targetSaid(err: unknown, ch: Channel, aborted: boolean): PeerError | undefined {
  if (err instanceof PeerError) return err;
  return !aborted && ch.failure instanceof PeerError ? ch.failure : undefined;
}

/** The file flags a restore reads, of those the checkpoint was given (only those set). */
function restoreFlags(files: Partial<FileOptions> | undefined): RestoreFlags | undefined {
  const out: RestoreFlags = {};
  for (const k of RESTORE_FLAGS) if (files?.[k] === true) out[k] = true;
  return Object.keys(out).length > 0 ? out : undefined;
}

/** Says where a sweep kept a copy whose outcome is unknown (workdir.ts removeStaleDirs). */
function warnKept(o: Pick<MigrateOptions, 'onWarning'>, log: { warn(m: string): void }, image: string, pid: number): void {
  const line = keptCopyWarning(image, pid);
  log.warn(line);
  o.onWarning?.(line);
}


const round = (ms: number): number => Math.round(ms * 10) / 10;

/**
 * After the kill: "go", then "running", or the workload is brought back here. Signals no
 * longer stop anything (finishing()): the tree is in flight.
 */
async function handOver(o: MigrateOptions, ch: Channel, session: Session, copy: string, dir: string,
  signKey: KeyObject, restoreWith: string, pids: number[],
  t: { t0: number; stoppedAt: number; tFirst: number; tEnd: number; tReady: number; sent: number; pre: PreCopySender | undefined; netLock: string | undefined;
    reapWaitMs: number | undefined }): Promise<MigrateResult> {
  const log = o.logger.child({ op: 'migrate', targetPid: o.pid });
  const to = formatUrl(o.to);
  // How to restore a kept copy by hand (a container takes no --max-creds: its bundle bounds it).
  const manual = (kept: string): string => (o.workload !== undefined
    ? `${o.workload.restoreCommand} --image ${kept}${restoreWith.replace(' --max-creds root', '')}` : `ferry restore --image ${kept}${restoreWith}`);
  const tGo = performance.now();
  ch.send({ type: 'go' });
  let running;
  let tRunning = 0;
  let filled;
  try {
    running = await ch.next('restoring the tree', 'running');
    tRunning = performance.now();
    // Lazy pages: the tree runs there, its memory still coming in from the target's copy of
    // the image; it is not the target's for sure until every page is in.
    if (o.lazy === true) filled = await ch.next('waiting for the target to hold every page of the tree', 'filled');
  } catch (err) {
    session.close(); // the copy is the workload now: nothing of it is removed by an undo
    ch.destroy();
    if (err instanceof PeerError) {
      // The target says it failed, and a failed restore leaves nothing there: restore here.
      log.error({ err }, 'the target could not restore the tree; restoring it here');
      let local: RestoreResult;
      try {
        // The kill did not wait for the reaping if the target runs on another kernel: the
        // PIDs must be free here now (a container's restoreHere waits for its own). Nothing
        // runs meanwhile, so the wait may be long where PID 1 reaps lazily.
        if (o.workload === undefined) await waitReaped(pids, 30_000);
        copyImage(dir); // under pre-copy, made from the frames sent
        local = await (o.workload?.restoreHere ?? restore)({
          image: copy, config: o.config, logger: o.logger, trust: [createPublicKey(signKey)],
          ...(o.files !== undefined ? { files: o.files } : {}),
          // This process made the image moments ago, in a directory only root can enter.
          bound: parseMaxCreds('root'),
        });
      } catch (again) {
        const kept = keep(copy, dir, o.config.image.workDir, o.pid);
        throw new FerryError('EMIGRATE', `${to} could not restore pid ${o.pid}: ${err.peerMessage}; restoring it here failed too: `
          + `${describeCause(again)}; its image is kept in ${kept}: ${manual(kept)}`, { cause: again, pid: o.pid, path: kept });
      }
      rmSync(dir, { recursive: true, force: true });
      o.onPhase?.({ phase: 'restore', pid: local.pid, pids: local.pids, local: true });
      throw new FerryError('EMIGRATE', `${to} could not restore pid ${o.pid}: ${err.peerMessage}; it was restored here instead `
        + `(pid ${local.pid} runs on this node again, down ${Math.round(performance.now() - t.stoppedAt)} ms)`, { cause: err, pid: local.pid });
    }
    const kept = keep(copy, dir, o.config.image.workDir, o.pid);
    // A container's killed record would hold its id here, and the restore by hand needs it
    // free: it is dead either way (killed at the hand-over), so it goes, as after a success.
    o.workload?.handedOver();
    const why = err instanceof FerryError ? err.message : describeCause(err);
    throw new FerryError('ELOST', `${why} after pid ${o.pid} was handed over: whether it runs on ${to} is unknown; `
      + `if it does not, restore it here: ${manual(kept)}`, { cause: err, pid: o.pid, path: kept });
  }
  // The tree runs on the target from its let-go, which "running" follows by the target's
  // watch for a process dying at once and its clean-up (runningForMs, at most the time since "go").
  const runningFor = Math.min(running.phases?.['runningForMs'] ?? 0, tRunning - tGo);
  const downtimeMs = tRunning - runningFor - t.stoppedAt;
  // Freeze to last byte sent (of it, to the first byte: the tree read and every page hashed,
  // the manifest coming first), to the target's "ready", to the source killed and its PIDs
  // free (of it, the wait for the reaping, where the target needs those PIDs), to the let-go
  // on the target (the target's own part in its `phases`).
  const phases = {
    checkpointMs: round(t.tEnd - t.stoppedAt), firstByteMs: round(Math.max(0, t.tFirst - t.stoppedAt)), verifyMs: round(t.tReady - t.tEnd), killMs: round(tGo - t.tReady),
    ...(t.reapWaitMs !== undefined ? { reapWaitMs: round(t.reapWaitMs) } : {}),
    restoreMs: round(tRunning - runningFor - tGo), ...(running.phases !== undefined ? { target: running.phases } : {}),
  };
  o.onPhase?.({ phase: 'restore', pid: running.pid, pids: running.pids, restoreMs: round(running.restoreMs) });
  const lazy = filled !== undefined ? { pages: filled.pages, faults: filled.faults, fillMs: filled.fillMs } : undefined;
  if (lazy) o.onPhase?.({ phase: 'filled', pid: running.pid, ...lazy });
  ch.send({ type: 'done', downtimeMs: round(downtimeMs) });
  await ch.close();
  session.unwind(); // the copy: the tree runs there
  o.workload?.handedOver();
  // The connections' lock kept here since the kill (a tree on the host, --tcp-established):
  // they live on the target now, whose restore has no table of this node to remove.
  if (t.netLock !== undefined) {
    const left = withNetns(o.workload?.netnsPath, () => removeKeptLock(t.netLock!));
    if (left !== undefined) {
      const line = `the network lock kept here since the kill could not be removed (${left}): remove it with 'nft delete table inet ${t.netLock}'`;
      log.warn(line);
      o.onWarning?.(line);
    }
  }
  const totalMs = performance.now() - t.t0;
  log.info({ pid: running.pid, downtimeMs }, 'migrated');
  const pre = { rounds: t.pre?.rounds.length ?? 0, roundBytes: t.pre?.roundBytes ?? 0, refBytes: t.pre?.refBytes ?? 0 };
  o.onPhase?.({ phase: 'done', pid: running.pid, downtimeMs: round(downtimeMs), totalMs: round(totalMs), ...pre, phases });
  return { pid: running.pid, pids: running.pids.length > 0 ? running.pids : pids, bytes: t.sent, downtimeMs, totalMs, ...pre, phases,
    ...(lazy ? { lazy } : {}) };
}

/** Waits until none of `pids` exists (their parents reaped them), at most `ms`. */
async function waitReaped(pids: readonly number[], ms: number): Promise<void> {
  for (const end = Date.now() + ms; pids.some((p) => existsSync(`/proc/${p}`)) && Date.now() < end;) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Moves the copy out of the private directory (no sweep removes it) and returns its path. */
function keep(copy: string, dir: string, workDir: string, pid: number): string {
  try {
    copyImage(dir);
  } catch {
    return dir; // the frames it is made from stay: never removed without a copy elsewhere
  }
  const kept = join(workDir, `ferry-migrate-${pid}-${new Date().toISOString().replace(/[:.]/g, '-')}.tar`);
  try {
    mkdirSync(workDir, { recursive: true });
    renameSync(copy, kept);
    rmSync(dir, { recursive: true, force: true });
    return kept;
  } catch {
    return copy;
  }
}
