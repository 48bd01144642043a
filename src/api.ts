/**
 * The library API shared by the CLI, the OCI hook and the runtime wrapper.
 * The library never reads argv or the environment: everything comes in through these options.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { Config } from './config/config.js';
import type { FileOptions } from './files/types.js';
import type { Image as OpenedImage, ImageOverlay } from './image/reader.js';
import type { FilesRecord, TaskRecord } from './image/records.js';
import type { CgroupMode } from './cgroups/restore.js';
import type { CredsBound } from './restore/bounds.js';
import type { LazyStats } from './restore/lazy.js';
import type { StagedRoot } from './restore/address-space.js';
import type { TarSink } from './image/tar-out.js';
import type { HostPublicKey } from './image/host-key.js';
import type { HeldPages } from './dump/memory.js';

export type { FileOptions };

/** Progress of a long operation, for a progress line on a TTY or JSON events. */
export interface Progress {
  /** Phase name: 'freeze', 'collect', 'memory', 'write', 'verify', 'restore', ... */
  phase: string;
  /** Bytes (or items) done so far in this phase. */
  done: number;
  /** Total for this phase, when known. */
  total?: number;
  /** The whole line to show instead of phase and counts (a pre-copy round's). */
  text?: string;
}

/** Options shared by every operation. */
export interface CommonOptions {
  /** Validated configuration (defaults applied). */
  config: Config;
  /** Logger; operations derive child loggers from it. */
  logger: Logger;
  /** Called now and then during long work. */
  onProgress?: (p: Progress) => void;
  /**
   * Aborts the operation (the CLI fires it on SIGINT/SIGTERM). A checkpoint lets the tree go
   * as it was and removes its partial image, unless only the final kill is left; a restore
   * removes every process and file it made, unless the tree already runs. The operation then
   * rejects with the signal's reason.
   */
  signal?: AbortSignal;
}

export interface CheckpointOptions extends CommonOptions {
  /** Root of the process tree to checkpoint. */
  pid: number;
  /** Image path; '-' streams the tar to stdout. */
  image: string;
  /**
   * The image's stream goes to this reader in this process instead (`image` then only names it
   * in messages): a migration's sender (src/migrate/sender.ts). A rejection fails the
   * checkpoint as a failed write does: the tree is let go.
   */
  imageSink?: TarSink;
  /** Keep the process running after the dump instead of killing it. */
  leaveRunning: boolean;
  /** What file kinds may do beyond the defaults (runc's --tcp-established etc.); all off if absent. */
  files?: Partial<FileOptions>;
  /**
   * Sign the image with this Ed25519 private key: a KeyObject, or the path of a PKCS#8 PEM
   * file (as `ferry keygen` writes), read before the process is touched. Absent: unsigned.
   */
  signKey?: string | KeyObject;
  /** Extra JSON entries for the image (a container's configuration), written after files.json. */
  extraEntries?: ReadonlyArray<{ name: string; value: unknown }>;
  /**
   * The pid namespace the tree may live in (a container's), as readlink(/proc/PID/ns/pid)
   * shows it; absent: ferry's own. Processes of the tree in any other one are refused.
   */
  pidNamespace?: string;
  /**
   * The tree's network namespace (one of its own) outlives it: a container that joined it by
   * path, as a pod's. With --tcp-established its connections are then locked by their
   * 4-tuples in it and the lock is kept after the kill (files/tcp-lock.ts), since the peers
   * keep sending to its addresses, which would otherwise answer with resets.
   */
  netnsPersists?: boolean;
  /**
   * Stops the tree in the checkpoint's place (a container's cgroup freeze, which seizes every
   * thread of the cgroup: src/container/checkpoint.ts). Called at the point where the
   * checkpoint would stop the tree itself, once everything that can be made ready before a
   * freeze is (workers, buffers, the host's descriptors). Resolves to the threads it seized
   * and stopped, when it began to stop them (performance.now(): the frozen time counts from
   * there), and entries for the image read while they are stopped (written after
   * `extraEntries`). Its undo is its caller's, who must run it when the checkpoint fails.
   */
  stop?: () => Promise<{
    preseized: ReadonlySet<number>;
    stoppedAt: number;
    extraEntries?: ReadonlyArray<{ name: string; value: unknown }>;
  }>;
  /**
   * Called once the tree is killed (never with leaveRunning), inside the checkpoint's final
   * step, which signals do not cut short: a container checkpoint deletes the container there.
   */
  onKilled?: () => void;
  /**
   * Awaited once the image is complete, with every task still stopped, before the kill (never
   * with leaveRunning); `stoppedAt` is when the tree was stopped (performance.now()). A
   * migration waits here for the target's word that it holds the image whole
   * (src/migrate/sender.ts). Rejecting, or an abort meanwhile, lets the tree go as it was and
   * fails the checkpoint with that error, like any failure before the kill.
   */
  beforeKill?: (stoppedAt: number) => Promise<void>;
  /**
   * Awaited last before the tree is stopped, once everything the frozen window needs is made
   * ready (the tree still runs). A migration's pre-copy sends there what the tree wrote during
   * those preparations (src/migrate/precopy.ts topUp), so that the frozen image reads only
   * what it writes in the last moments. Rejecting fails the checkpoint before it touches the tree.
   */
  beforeFreeze?: () => Promise<void>;
  /**
   * Return as soon as the tree is killed, without waiting until its processes are reaped and
   * their PIDs free: a container's migration, whose target makes a PID namespace of its own
   * (the wait is the downtime's then: up to seconds where PID 1 reaps lazily).
   */
  skipReapWait?: boolean;
  /**
   * The killed tree's memory is freed once this settles (at the latest a minute after the
   * kill), by threads of ferry's (dump/memory-hold.ts), so that the kill does not wait for it.
   * Absent: once the tree is reaped. Meanwhile the memory stays in use, and so do the files it
   * maps: a caller restoring the tree on this host lets it go first.
   */
  teardownAfter?: Promise<unknown>;
  /**
   * The image's reader already holds these pages (pre-copy: src/migrate/precopy.ts): the
   * frozen dump names them by their digests from the rounds and leaves them out of the stream,
   * reading only the others (docs/migration.md, "The frozen image"). Only for a stream
   * (`image` a pipe), whose reader puts them back.
   */
  heldPages?: HeldPages;
}

export interface CheckpointResult {
  /** PIDs of the dumped tasks, root first. */
  pids: number[];
  /** Bytes of the image written. */
  imageBytes: number;
  /** Bytes of memory pages stored. */
  pagesBytes: number;
  /** Time the tasks were stopped, milliseconds: to their let-go, or to their death when killed. */
  frozenMs: number;
  /** Whole checkpoint, milliseconds. */
  totalMs: number;
  /**
   * Of `totalMs`, the wait after the kill until every killed process was reaped by its parent
   * (their PIDs free), about 3 s at most, milliseconds; absent when the checkpoint did not wait
   * (leaveRunning, skipReapWait, a tree in a pid namespace of its own).
   */
  reapWaitMs?: number;
  /** What the checkpoint went on despite (e.g. connections left out with --skip-in-flight); absent when nothing. */
  warnings?: string[];
  /**
   * The network lock kept for the tree's TCP connections until restore: the nftables table
   * `inet NAME` (files/tcp-lock.ts); absent when none was kept.
   */
  netLock?: string;
}

export interface RestoreOptions extends CommonOptions {
  /** Image path; '-' reads the tar from stdin. */
  image: string;
  /**
   * Page data of `image` that lives elsewhere (a migration's page store: the spooled image
   * has holes there, src/migrate/precopy.ts); the restore takes it over and closes it.
   */
  imageOverlay?: ImageOverlay;
  /** Write the restored root's PID here. */
  pidFile?: string;
  /** What file kinds may do beyond the defaults; all off if absent. */
  files?: Partial<FileOptions>;
  /**
   * Accept only an image signed by one of these Ed25519 public keys: a file (one SPKI PEM
   * key), a directory (every `*.pub` in it) or KeyObjects. Checked right after the manifest is
   * read, before anything else of the image. Absent: `image.trust` of the config; when that
   * is "" too, unsigned images are accepted (a signature present is still verified).
   */
  trust?: string | readonly KeyObject[];
  /**
   * This machine's host key (image.host_key of the config), read ahead: null when it has
   * none. Absent: read when the restore starts. A migration's target reads it when the hello
   * comes, so that the downtime does not (src/migrate/receiver.ts).
   */
  hostKey?: HostPublicKey | null;
  /**
   * The most the restored tasks may get (src/restore/bounds.ts, docs/security.md): every
   * task's uids, gids, groups, capability sets, securebits, no_new_privs, seccomp, hard
   * limits, scheduling and oom_score_adj are held against it once the image is verified,
   * before any process is created; the first excess fails the restore (EPRIVILEGE) naming
   * the pid, the field and the bound. A function gets the verified image (a container's bound is its bundle's config.json) and
   * may answer undefined. Absent (or undefined): an image signed by this machine's host key
   * or a trusted key restores with the credentials it holds; any other gets the untrusted
   * default (`untrustedBound`: no root, gid 0 or capabilities, whatever executable it
   * names), and may hold open for writing only what its processes
   * could open so (restore/file-access.ts).
   */
  bound?: CredsBound | ((image: OpenedImage) => Promise<CredsBound | undefined>);
  /**
   * Makes the root process instead of spawning it (a container's init, started by its
   * runtime as a restore stub), once the image is verified. `maxFd` is the highest descriptor
   * any task of the image has.
   */
  makeRoot?: (image: OpenedImage, maxFd: number) => Promise<MadeRoot>;
  /**
   * Open files to use instead of the image's: readlink text at dump (e.g. "pipe:[68472]", as
   * runc's descriptors.json lists a container's stdio) -> a descriptor of the caller. Every
   * descriptor that held that file gets this one.
   */
  inherit?: Readonly<Record<string, number>> | ((image: { files: FilesRecord; root: TaskRecord }) => Readonly<Record<string, number>>);
  /**
   * Awaited once the image is verified, its records validated, its credentials held to the
   * bound and the files it needs found, before its PIDs are checked free and before anything
   * is made. `pids` are the image's processes, `tids` the other threads' ids. A migration's
   * target says "ready" here and waits for the source to give the PIDs up
   * (src/migrate/receiver.ts). Rejecting fails the restore with nothing made.
   */
  beforeCreate?: (ids: { pids: number[]; tids: number[] }) => Promise<void>;
  /**
   * What to do with the cgroups the image recorded (src/cgroups/restore.ts, docs/cli.md):
   * 'ignore' (absent: the tree stays in the restorer's cgroups), 'soft' (every process and
   * thread back into its cgroups, missing ones made with the recorded settings), 'full' (also
   * the settings of existing ones; trusted images only), 'strict' (full, and what soft warns
   * about fails). Not for a container (`makeRoot`): its cgroups are its runtime's.
   */
  manageCgroups?: CgroupMode;
  /**
   * Lazy pages (src/restore/lazy.ts): the tree is let go before the anonymous private memory
   * of its processes is written; userfaultfd serves each page on first touch and the rest in
   * the background, every chunk verified first. RestoreResult.lazy settles once every page
   * is in; the image stays open until then.
   */
  lazyPages?: boolean;
  /**
   * The root's memory, staged while a migration's rounds arrived (src/migrate/staging.ts): the
   * root is forked from the stub holding it, or is that stub where it has the root's pid, and
   * keeps the staged areas its image maps alike, so only the pages not staged are written.
   * Used for a tree of one process, without lazy pages, makeRoot or managed cgroups; the
   * restore closes it either way (a stub that became the root is the restore's then).
   */
  stagedMemory?: StagedRoot;
}

/** A root process made by `RestoreOptions.makeRoot`. */
export interface MadeRoot {
  /** Its pid in ferry's namespace; a restore stub, seized and stopped by the calling thread. */
  pid: number;
  /** Descriptor of a pidfd of ferry in it (and in every process it forks), above every image descriptor. */
  controllerPidfd: number;
  /** Prefix that makes paths inside its mount namespace reachable from ferry: /proc/PID/root. */
  fileRoot: string;
  /**
   * Kills it and removes what was made for it (after a failure; with lazy pages also after
   * the let-go, once a page that could not be served has had the tree killed).
   */
  destroy(): void;
  /**
   * Called once the restored tree runs on its own: what guarded its making may stop. With
   * lazy pages, only once every page is in (until then ferry's death must still remove it).
   */
  running?(): void;
}

export interface RestoreResult {
  /** PID of the restored root on the host (for a container: its init as the host sees it). */
  pid: number;
  /** PIDs of all restored processes as they see themselves, in their pid namespace (the original PIDs). */
  pids: number[];
  /**
   * Each running restored process's PID on the host, by its PID in `pids` (zombies, which are
   * reaped by their parents, are not listed). Outside a container every PID maps to itself.
   */
  hostPids: Record<number, number>;
  /**
   * Bytes of memory pages written into the restored tasks: every page the image stores, once
   * (those lent through a parent for its children to inherit too: restore/cow.ts lendPages);
   * with lazy pages, those written before the let-go only.
   */
  pagesBytes: number;
  /**
   * Bytes of pages the root had in place already, verified and not written (a migration's
   * staged memory, RestoreOptions.stagedMemory).
   */
  placedBytes?: number;
  /**
   * Of the chunks of those pages, how many were checked by the digest the target took of them
   * before the freeze (one comparison each, not a hash of their pages' digests).
   */
  placedChunks?: number;
  /**
   * How the root came to hold the staged memory: `stub`, the staging stub itself, which had
   * its pid (staging.ts); `fork`, forked from it; absent when it was spawned and written.
   */
  stagedRoot?: 'stub' | 'fork';
  /** Verification of the image, milliseconds. */
  verifyMs: number;
  /** From the first process created to every task let go and running, milliseconds. */
  restoreMs: number;
  /** Whole restore, milliseconds (with the 20 ms watch for a process dying at once after the let-go). */
  totalMs: number;
  /**
   * performance.now() of this process when the last task was let go: the tree runs from then
   * (what follows is the watch above and clean-up). A migration's downtime ends here.
   */
  runningAt: number;
  /**
   * Where the time went, milliseconds: of verifyMs and the checks after it, opening the image
   * (its signature, manifest and records verified) and checking the records (bounds, trust,
   * files) before anything is made (a migration's target says "ready" after both); of
   * restoreMs, writing memory (mapping areas and writing their pages), the rest of the rebuild
   * (state, files, threads, credentials), the let-go.
   */
  phases?: { openMs: number; checkMs: number; memoryMs: number; rebuildMs: number; letGoMs: number };
  /**
   * With lazyPages, when some memory was left to serve: settles once every page is in (pages
   * copied, faults served, milliseconds from the let-go), or rejects with the one line of
   * why the tree was killed (a page that failed verification or could not be read).
   */
  lazy?: Promise<LazyStats>;
  /** What the restore did other than asked or went on despite, one line each (a mapped file changed, a network lock left, a cgroup setting refused under --manage-cgroups=soft); also logged as warnings; absent when nothing. */
  warnings?: string[];
}

export interface InspectOptions extends CommonOptions {
  /** Image path; '-' reads the tar from stdin. */
  image: string;
}
