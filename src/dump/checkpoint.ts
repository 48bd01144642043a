/**
 * `checkpoint`: stop a process tree from outside, capture it whole into an image, then kill it
 * or let it run on (DESIGN.md §2).
 *
 * Nothing is touched before the checks that can fail cheaply have passed (the root exists, is
 * not a kernel thread, holds only supported descriptors). Then every thread of every process
 * under the root is stopped (tree.ts) before any is read. From the moment the first task is
 * seized, every step registers its undo with the operation's Session, and any way out before
 * the final kill lets every task go as it was; the image is written to a temporary name and
 * renamed into place only when complete (writer.ts). If ferry itself dies, the kernel lets the
 * tasks go: they hold nothing of ferry's between two injected syscalls (native/inject.cc).
 */
import { getHeapSpaceStatistics } from 'node:v8';
import { existsSync, statSync } from 'node:fs';
import type { CheckpointOptions, CheckpointResult } from '../api.js';
import { FerryError, INTERNAL_CODE, describeCause } from '../errors.js';
import { ghostInHeldDirMessage, ghostInHeldRemovedDir } from '../files/deleted.js';
import { collectFiles, checkSupported, describeFds } from '../files/collect.js';
import { anyWatched, refuseLeaks, snapshotHostFds, type HostFds } from '../files/leaks.js';
import { addUnheldTerminals, cttyInNamespace, unheldTerminals } from '../files/tty.js';
import { withNetns } from '../task/netns.js';
import { DEFAULT_FILE_OPTIONS, type FdDesc, type FileOptions } from '../files/types.js';
import { startSocketGuard } from '../files/socket-guard.js';
import { NetLock, sharesNetns, treeConnections } from '../files/tcp-lock.js';
import { hostFacts, hostVdso } from '../host.js';
import {
  FILES_ENTRY, pagesEntry, taskEntry, TREE_ENTRY, VDSO_ENTRY, type FilesRecord, type TaskRecord, type TreeRecord,
} from '../image/records.js';
import { requiredFeatures } from '../image/features.js';
import { hostSigningKey } from '../image/host-key.js';
import { forkedBySiblings } from '../image/sharing.js';
import { imageSigner, signingKey } from '../image/sign.js';
import { HashPool, openImageTarget, warmUpWriter, writeImage, type ImageEntry } from '../image/writer.js';
import { native } from '../native/binding.js';
import { O_CLOEXEC } from '../proc/fcntl.js';
import { ProcessGoneError, readProcText } from '../proc/read.js';
import { closeRootBase, containerBase, readCwdBetween, readRootDir, type RootBase } from './root-dir.js';
import { parseSmaps } from '../proc/smaps.js';
import { ownPidNamespace as ferryPidNamespace } from '../proc/pid-ns.js';
import { parseStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';
import { Tracee } from '../task/tracee.js';
import { FERRY_VERSION } from '../version.js';
import { readCgroups, readCgroupsAhead } from '../cgroups/dump.js';
import { CGROUPS_ENTRY } from '../cgroups/record.js';
import { inheritThroughRelays, shareAcrossBranches } from './cow-branches.js';
import { checkInherited } from '../restore/cow.js';
import { estimateTreeMemory, planMemory, prepareChunkBuffers, readAioRings, shareAmongSiblings } from './memory.js';
import { holdAddressSpaces } from './memory-hold.js';
import type { LockRecord } from '../files/locks.js';
import { readCreds, warmUpCreds } from './creds.js';
import { NsIds } from './ns-ids.js';
import { listPosixTimers } from './timers.js';
import { freezeTree, precheckRoot, type FrozenProcess } from './tree.js';
import { abortRseqSection, pendingSignals, readInjectedState, readMm, readPaths, readThread, readThreadFs, removedExe, syscallGadget } from './task-state.js';
import { PR_THP_DISABLE_EXCEPT_ADVISED, SIGKILL } from '../arch/x86-64.js';
import { faultPoint } from '../fault.js';
import { finishing, Session } from '../session.js';

/** The error of a root that does not exist, or exited before it was stopped. */
function noProcess(pid: number, cause?: unknown): FerryError {
  return new FerryError('ENOPROC', `no process with pid ${pid} (check the pid; it may have exited)`, { pid, ...(cause !== undefined ? { cause } : {}) });
}

/** Checks that `pid` can be checkpointed, before touching it (init, ferry or its ancestors are refused). */
function precheck(pid: number): void {
  if (!existsSync(`/proc/${pid}`)) throw noProcess(pid);
  precheckRoot(pid);
}

/**
 * Waits (bounded) until a killed process's parent has reaped it, so its PID is free when
 * checkpoint returns; a parent that does not reap in time only delays that, nothing fails.
 * Only the parent can reap a process (ferry, its tracer, collected its death in killTree,
 * which hands the zombie to the parent): a root's parent outside the tree, or the init or
 * subreaper that the tree's other processes go to as their parents die, each in its own
 * time. This machine's PID 1 reaps every 1-2 s, and a parent that never waits keeps a
 * zombie for ever; so the wait is bounded, and reported apart (CheckpointResult.reapWaitMs).
 */
async function waitReaped(pid: number, timeoutMs: number): Promise<void> {
  for (const end = Date.now() + timeoutMs; existsSync(`/proc/${pid}`) && Date.now() < end;) {
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * The longest a checkpoint waits for its killed processes to be reaped (waitReaped): a
 * restore right after it finds their PIDs free, where their parent reaps within it, without
 * its own wait for a zombie at a PID it needs (2 s: restore.ts assertPidFree).
 */
const REAP_WAIT_MS = 3000;

/**
 * A tree expected to store more than this has its page data hashed on libuv's thread pool
 * (image/writer.ts HashPool), a chunk per core at once; below it every entry is hashed on the
 * JS thread, which costs at most what 8 MiB take at 1 GB/s (8 ms), against a wake-up of a pool
 * thread on each side per chunk (0.2-3 ms on a loaded 2-core machine).
 */
const HASH_POOL_MIN_BYTES = 8 * 1024 * 1024;

/** The longest a checkpoint's caller may keep a killed tree's memory held (teardownAfter). */
const TEARDOWN_AFTER_MAX_MS = 60_000;

/**
 * A tree left running that stores at most this many bytes of pages is let go before its image
 * is written, its pages copied first (about 1 ms per 4 MiB here, against hashing and writing
 * them while it is stopped); bigger ones stay stopped until the image is written.
 */
const EARLY_RELEASE_MAX_BYTES = 8 * 1024 * 1024;

/**
 * A tree expected to store at most this much is read once, from outside and without stopping
 * it, before the freeze (warmUp).
 */
const WARM_UP_MAX_BYTES = 8 * 1024 * 1024;

/** A root storing at most this much has its pages read ahead too (warmUpWriter in checkpoint()). */
const WARM_UP_PAGES_MAX_BYTES = 1024 * 1024;

/**
 * Runs the /proc readers the frozen window runs, once, on the root while it still runs, and
 * throws the results away: a command is a fresh Node process, and the first call of each
 * parser pays for compiling it (V8 compiles a function on its first call, a regular expression
 * on its first use), measured at about 5 of a small process's 12-17 ms of freeze from the
 * command line. Read-only: no ptrace, nothing the process can notice; any error (the process
 * exited meanwhile) is left for the checkpoint itself to meet. Skipped for trees with much
 * memory, where reading the pagemap twice would cost more than compiling. Returns the memory
 * plan it made (undefined on an error), whose pages warm the writer up (checkpoint()).
 */
function warmUp(pid: number): ReturnType<typeof planMemory> | undefined {
  try {
    const statusText = readProcText(pid, 'status');
    parseStatus(statusText);
    const { vmas, vmflags, unshared } = parseSmaps(readProcText(pid, 'smaps'));
    syscallGadget(pid, vmas);
    listPosixTimers(pid);
    const plan = planMemory(pid, vmas, vmflags, undefined, unshared);
    readPaths(pid);
    readMm(pid, parseStat(readProcText(pid, 'stat')), 0n);
    warmUpCreds(pid, statusText);
    return plan;
  } catch {
    return undefined; // the freeze meets it, with its own error
  }
}

/**
 * Bytes the frozen window of a small tree allocates on V8's young generation, with room to
 * spare (measured here: about 0.8 MiB for one process).
 */
const WINDOW_YOUNG_BYTES = 2 * 1024 * 1024;

/**
 * Makes the young generation's next collection (a scavenge) happen now, before the freeze,
 * if the frozen window would otherwise fill it: a command is a fresh Node process whose young
 * generation is still small and nearly full when it gets there, and the scavenge then ran in
 * the window of nearly every command (2 ms of a small process's freeze, measured here). V8
 * has no call for it without --expose-gc: short-lived arrays fill what is left, which makes it
 * collect; only what is alive survives it, as it would in the window.
 */
function makeYoungRoom(): void {
  const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
  if (young === undefined || young.space_available_size >= WINDOW_YOUNG_BYTES) return;
  // Kept in a module variable, so that no compiler can find them unused and leave them out.
  for (let left = young.space_available_size + FILL_BYTES; left > 0; left -= FILL_BYTES) sink.filler = new Array<unknown>(FILL_BYTES / 8);
  sink.filler = undefined;
}
/** What one filler array takes (8 bytes an element), well below V8's large-object size. */
const FILL_BYTES = 16 * 1024;
const sink: { filler?: unknown[] | undefined } = {};

/**
 * The deleted files the tree maps but holds no descriptor of (memory.ts `unheldGhosts`), each
 * opened once through map_files(5) (one per inode: the first mapping found) for the files to
 * store as a ghost.
 */
function unheldGhosts(dumped: readonly DumpedTask[]): Array<{ fd: number; via: string }> {
  const n = native();
  const seen = new Set<string>();
  const out: Array<{ fd: number; via: string }> = [];
  try {
    for (const d of dumped) {
      for (const path of d.memory.unheldGhosts) {
        const st = statSync(path, { bigint: true });
        if (seen.has(`${st.dev}:${st.ino}`)) continue;
        seen.add(`${st.dev}:${st.ino}`);
        out.push({ fd: n.openRaw(path, O_CLOEXEC), via: `mapped by pid ${d.task.pid}` });
      }
    }
  } catch (err) {
    for (const o of out) n.closeFd(o.fd);
    throw err;
  }
  return out;
}

/** One live process, read and ready to be written. */
interface DumpedTask {
  task: TaskRecord;
  tracees: Tracee[];
  xstates: Array<{ entry: string; data: Buffer }>;
  memory: ReturnType<typeof planMemory>;
  /** Each thread's /proc status by tid, read while the tree was frozen (dumpTask). */
  statuses: ReadonlyMap<number, string>;
}

/** Reads one stopped process whole (its descriptors are read with the others' after the freeze). */
function dumpTask(p: FrozenProcess, rootBase: RootBase, parent?: DumpedTask): DumpedTask {
  const n = native();
  const { pid, tids, stat } = p;
  const tracees = tids.map((tid) => new Tracee(pid, tid, true));
  const main = tracees[0]!;
  try {
    const statusText = readProcText(pid, 'status');
    const status = parseStatus(statusText);
    // One reading of smaps gives the layout and VmFlags; the injected batch below leaves the
    // layout as it found it (its scratch area is unmapped again, and could merge with nothing).
    const { vmas: maps, vmflags, unshared } = parseSmaps(readProcText(pid, 'smaps'));
    const gadget = syscallGadget(pid, maps);
    for (const t of tracees) t.gadget = gadget;
    // A thread stopped inside an rseq critical section is aborted first, as the kernel would on
    // its way back: the injections below move rip out of it, which makes the kernel forget.
    for (const t of tracees) abortRseqSection(t);
    const injected = readInjectedState(main, tracees.slice(1), maps, vmflags, listPosixTimers(pid), status.seccomp);
    // Every thread's status, read once: it names the thread (readThread), the credentials take
    // theirs from it (creds.ts), and so do the ids in the tree's namespace (ns-ids.ts).
    const statuses = new Map(tids.map((tid, i) => [tid, i === 0 ? statusText : readProcText(pid, `task/${tid}/status`)]));
    const threads = tids.map((tid) => readThread(pid, tid, n.getSigmask(tid), injected.threads.get(tid)!, statuses.get(tid)));
    // A thread with a root, working directory and umask of its own (unshare(2) of CLONE_FS).
    const ownFs = new Set(p.ownFs);
    for (const th of threads) if (ownFs.has(th.record.tid)) th.record.fs = readThreadFs(pid, th.record.tid, rootBase);
    // Pages still shared copy-on-write with the parent are recorded, not stored (image/cow.ts).
    // Which areas have no page another process maps too: smaps says it (`unshared`), read
    // before the injected batch, which shares nothing (memory.ts planMemory).
    const memory = planMemory(pid, maps, vmflags, parent && { pid: parent.task.pid, vmas: parent.memory.vmas }, unshared);
    const paths = readPaths(pid);
    const exeGhost = removedExe(pid, paths.exe, memory.vmas);
    const rootDir = readRootDir(pid, rootBase);
    const cwdBetween = readCwdBetween(pid, paths, rootDir);
    const task: TaskRecord = {
      pid,
      ppid: p.record.ppid,
      pgid: stat.pgrp,
      sid: stat.session,
      comm: stat.comm,
      exe: paths.exe,
      ...(exeGhost !== undefined ? { exeGhost } : {}),
      cwd: paths.cwd,
      ...(paths.cwdDeleted ? { cwdDeleted: paths.cwdDeleted } : {}),
      ...(cwdBetween !== undefined ? { cwdBetween } : {}),
      ...(rootDir !== undefined ? { root: rootDir.root } : {}),
      ...(rootDir?.rootDeleted !== undefined ? { rootDeleted: rootDir.rootDeleted } : {}),
      umask: status.umask,
      ...((injected.thpDisable & 1) !== 0 || status.thpEnabled === false ? { thpDisabled: true } : {}),
      ...((injected.thpDisable & PR_THP_DISABLE_EXCEPT_ADVISED) !== 0 ? { thpExceptAdvised: true } : {}),
      ...(injected.mlockall !== undefined ? { mlockall: injected.mlockall } : {}),
      ...(injected.membarrier !== undefined ? { membarrier: injected.membarrier } : {}),
      mm: readMm(pid, stat, injected.brk),
      vmas: memory.vmas,
      sigactions: injected.sigactions,
      sharedPending: pendingSignals(pid, true),
      itimers: injected.itimers,
      stopped: p.stoppedBefore,
      // A job-control stop (SIGTSTP, SIGTTIN, SIGTTOU) is kept as such; SIGSTOP is the default.
      ...(p.stoppedBefore && p.stopSignal >= 20 && p.stopSignal <= 22 ? { stopSignal: p.stopSignal } : {}),
      threads: threads.map((th) => th.record),
      fds: [],
      pagesBytes: memory.pagesBytes,
      creds: readCreds(pid, tids, injected, statuses),
    };
    return {
      task, tracees, memory, statuses,
      xstates: threads.map((th) => ({ entry: th.record.xstate, data: th.xstate })),
    };
  } catch (err) {
    for (const t of tracees) t.close();
    throw err;
  }
}

/**
 * Pages only siblings still share copy-on-write (their parent wrote its own since the fork)
 * are stored once, by the first of them (memory.ts shareAmongSiblings, image/cow.ts); then
 * those shared across branches of the tree (cousins…), lent through their common ancestor,
 * and those a process shares with an ancestor whose pages reach it through processes that
 * unmapped the area (cow-branches.ts). Not for a process restore forks from a sibling (`ownPages`,
 * image/sharing.ts): it inherits nothing.
 */
function shareSiblingPages(dumped: readonly DumpedTask[], ownPages: ReadonlySet<number>): void {
  const kids = new Map<number, DumpedTask[]>();
  for (const d of dumped.slice(1)) {
    if (ownPages.has(d.task.pid)) continue;
    const list = kids.get(d.task.ppid);
    if (list) list.push(d);
    else kids.set(d.task.ppid, [d]);
  }
  const byPid = new Map(dumped.map((d) => [d.task.pid, d]));
  for (const [ppid, list] of kids) {
    const parent = byPid.get(ppid);
    if (!parent || list.length < 2) continue;
    const changed = shareAmongSiblings({ pid: ppid, vmas: parent.memory.vmas }, list.map((d) => ({ pid: d.task.pid, plan: d.memory })));
    for (const pid of changed) {
      const d = byPid.get(pid)!;
      d.task.pagesBytes = d.memory.pagesBytes;
    }
  }
  // Then those processes in different branches share, lent through their common ancestor;
  // last those a process shares with an ancestor further up than its parent.
  const planned = dumped.map((d) => ({ pid: d.task.pid, ppid: d.task.ppid, plan: d.memory, ownPages: ownPages.has(d.task.pid) }));
  for (const pid of [...shareAcrossBranches(planned), ...inheritThroughRelays(planned)]) {
    const d = byPid.get(pid)!;
    d.task.pagesBytes = d.memory.pagesBytes;
  }
}

/** Checkpoints the process tree rooted at `o.pid` into `o.image`. */
export async function checkpoint(o: CheckpointOptions): Promise<CheckpointResult> {
  const t0 = performance.now();
  const { pid } = o;
  const log = o.logger.child({ op: 'checkpoint', targetPid: pid });
  // A key that cannot sign fails before the process is touched.
  // --sign-key, else image.sign_key of the config (ferry-runtime's and the hook's images),
  // else the host key, made now if this machine has none yet (image/host-key.ts).
  const keyFrom = o.signKey ?? (o.config.image.signKey !== '' ? o.config.image.signKey : undefined);
  const signKey = keyFrom !== undefined ? signingKey(keyFrom) : hostSigningKey(o.config.image.hostKey);
  precheck(pid);
  const fileOptions = { ...DEFAULT_FILE_OPTIONS, deletedMaxBytes: o.config.files.deletedMaxBytes, ...o.files };
  // The root's descriptors are checked before it is touched; every process's (the root's
  // again) once the tree is frozen (the tree is only known then), before anything of it is
  // read or changed.
  // A container's sockets are inspected from inside its network namespace.
  const netns = o.pidNamespace !== undefined ? pid : undefined;
  const ownPidNamespace = o.pidNamespace !== undefined && o.pidNamespace !== ferryPidNamespace();
  const rootDescs = withNetns(netns, () => {
    let descs: FdDesc[];
    try {
      descs = describeFds(pid);
    } catch (err) {
      // It exited since precheck: nothing was touched yet.
      throw err instanceof ProcessGoneError && err.targetPid === pid ? noProcess(pid, err) : err;
    }
    checkSupported(descs, fileOptions);
    return descs;
  });

  // From here on every step registers its undo; any way out before the final kill runs them.
  const session = new Session('checkpoint', log);
  try {
    // Made ready before the tree is stopped, so that the frozen window holds only what must be
    // frozen: the page chunk buffers allocated and faulted in, the hash pool ready if the tree
    // has memory enough to need it, the host's descriptors read for the leak check
    // (files/leaks.ts says what it does about what changes after). Estimates: the tree runs.
    const host = hostFacts(); // read once per ferry process (the vDSO hashed)
    const estimate = estimateTreeMemory(pid);
    let hashPool: HashPool | undefined;
    // Not for an image whose reader holds pages (pre-copy): its page data is hashed page by
    // page on the JS thread (writer.ts PagedHash), so the pool would have nothing to do.
    if (o.heldPages === undefined && (!estimate.complete || estimate.total > HASH_POOL_MIN_BYTES)) {
      const pool = (hashPool = new HashPool());
      session.onUndo('stop the hash pool', () => { pool.close().catch(() => {}); });
    }
    // A pool that cannot hash (a Node without SHA-256 for addons) only makes the write slower:
    // every entry is hashed inline.
    await hashPool?.start().catch((err: unknown) => log.warn({ err }, 'the hash pool did not start; hashing on the main thread'));
    const buffers = prepareChunkBuffers(estimate, o.config.image.chunkSize);
    // nft for the network lock (files/tcp-lock.ts): its start-up overlaps the warm-up.
    const nft = fileOptions.tcpEstablished && !fileOptions.tcpClose
      ? NetLock.start(netns !== undefined && !sharesNetns(netns) ? netns : undefined, `pid ${pid}`, o.netnsPersists === true) : undefined;
    if (nft) session.onUndo('let the network lock go', () => nft.release());
    // The watchdog of the sockets the dump puts in repair mode (files/socket-guard.ts), too.
    const guarding = fileOptions.tcpEstablished ? startSocketGuard(`pid ${pid}`) : undefined;
    guarding?.catch(() => {}); // awaited below
    const warmPlan = estimate.total <= WARM_UP_MAX_BYTES ? warmUp(pid) : undefined;
    // Ready before the freeze, so that its start-up is not in the frozen window (nothing is
    // locked yet; an error is reported by take(), if the tree has connections at all).
    await nft?.ready().catch(() => {});
    const socketGuard = await guarding;
    if (socketGuard) session.onUndo('disarm the sockets watchdog', () => socketGuard.disarm());
    const dumpOptions: FileOptions = socketGuard ? { ...fileOptions, guardSocket: socketGuard.guard } : fileOptions;
    o.signal?.throwIfAborted();
    // The image file too (its O_DIRECT probed: image/writer.ts); writeImage takes it over, and
    // it is removed on any way out before that.
    const target = openImageTarget(o.image, o.imageSink);
    session.onUndo('remove the unfinished image', () => target.discard());
    // The settings of the root's cgroups (cgroups/dump.ts); a container's are its runtime's.
    const cgroupsAhead = o.pidNamespace === undefined ? readCgroupsAhead(pid) : undefined;
    // Their reader compiled too, as warmUp does for the others: the root's read once, thrown away.
    if (cgroupsAhead !== undefined && estimate.total <= WARM_UP_MAX_BYTES) {
      try { readCgroups([{ pid, tids: [pid] }], cgroupsAhead); } catch { /* the frozen window meets it */ }
    }
    // The manifest's signer, and one signature thrown away: the first costs a command 0.5 ms
    // more than the next (the key's export and fingerprint, the signing code's first run).
    const signer = signKey !== undefined ? imageSigner(signKey) : undefined;
    signer?.sign(Buffer.alloc(0));
    // The writer's code compiled too (warmUpWriter), and the page reader's: a root storing
    // little has its pages read once more, into that throw-away image, while it runs (read
    // only: process_vm_readv(2), as the dump reads them).
    const warmPages: ImageEntry[] = warmPlan !== undefined && warmPlan.pagesBytes <= WARM_UP_PAGES_MAX_BYTES ? [{
      name: 'warm-up/pages.bin', size: warmPlan.pagesBytes, chunked: true,
      produce: async (sink) => { await warmPlan.produce(sink, o.config.image.chunkSize, buffers); },
    }] : [];
    await warmUpWriter(target, { ferryVersion: FERRY_VERSION, createdAt: new Date().toISOString(), host: { ...host, xstateSize: 0 }, root: { pid }, tasks: [pid] }, signer, warmPages);
    // The pre-copy's last rounds (a migration): what the tree wrote while the above was made ready.
    await o.beforeFreeze?.();
    o.signal?.throwIfAborted();
    // Last, to leave the least time before the freeze; not needed for one process with no file
    // another could share (findLeaks then reads the host after the freeze, if that changed).
    const hostFds: HostFds | undefined = estimate.processes > 1 || anyWatched(rootDescs) ? snapshotHostFds() : undefined;
    // The chunk buffers faulted in meanwhile, on libuv's pool.
    await buffers.ready;
    // After everything that allocates much (the host's reading above included).
    makeYoungRoom();
    let tStopped = performance.now();
    const stopped = await o.stop?.();
    if (stopped !== undefined) tStopped = stopped.stoppedAt;
    const tree = freezeTree(pid, {
      prechecked: true, // precheck() above
      ...(o.pidNamespace !== undefined ? { pidNs: o.pidNamespace } : {}),
      ...(stopped !== undefined ? { preseized: stopped.preseized } : {}),
    });
    // The tasks hold nothing of ferry's between injections (native/inject.cc): letting them
    // go is a detach, and if ferry dies instead, the kernel's detach is the same.
    session.onUndo('let the tree go', () => tree.release());
    const live = tree.processes.filter((p) => p.tids.length > 0);
    log.debug({ processes: tree.processes.length, threads: live.reduce((s, p) => s + p.tids.length, 0) }, 'stopped');
    await faultPoint('seized', o.signal);

    // Each process's descriptors are read once after the freeze and serve the checks, the leak
    // check and the dump: the tree cannot change them any more. The root's reading from before
    // the freeze is stale (it ran until then), so the root is read and checked again.
    const descs = new Map(live.map((p) => [p.pid, describeFds(p.pid)]));
    // A thread with a descriptor table of its own (unshare(2) of CLONE_FILES) has it read
    // likewise, by its tid: /proc/TID/fd is that thread's table. Its descriptors are checked,
    // held against the host and locked as the processes' are (`allDescs`).
    const threadDescs = new Map(live.flatMap((p) => (p.ownFiles ?? []).map((tid) => [tid, { pid: p.pid, descs: describeFds(tid) }] as const)));
    const allDescs = threadDescs.size === 0 ? descs : new Map([...descs, ...[...threadDescs].map(([tid, t]) => [tid, t.descs] as const)]);
    withNetns(netns, () => { for (const list of allDescs.values()) checkSupported(list, fileOptions); });
    const unheld = unheldTerminals(live, descs, o.pidNamespace !== undefined);
    for (const l of refuseLeaks(allDescs, hostFds, new Set(fileOptions.external))) {
      log.info({ pid: l.inside.pid, fd: l.inside.fd, link: l.inside.link, outsidePid: l.pid, outsideFd: l.fd }, 'a standard stream is shared with a process outside the tree');
    }
    // The network lock, before any connection is read (files/tcp-lock.ts); let go on any way
    // out, kept (a copy without owner) only for a tree killed after a complete image.
    const tLock = performance.now();
    const lock = await takeNetLock(nft, allDescs);
    if (lock) log.debug({ table: lock.table, ms: performance.now() - tLock }, 'network lock taken');
    const dumped: DumpedTask[] = [];
    session.onUndo('close the tasks\' memory', () => { for (const d of dumped) for (const t of d.tracees) t.close(); });
    const byPid = new Map<number, DumpedTask>();
    // A process restore forks from a sibling, to share its table, and that sibling inherit no
    // pages from their parent (image/sharing.ts): each stores all its own.
    const ownPages = forkedBySiblings(tree.processes.map((p) => p.record));
    // The root directory every process shares unless it was chroot'ed (dump/root-dir.ts).
    const rootBase: RootBase = o.pidNamespace !== undefined ? containerBase(pid) : { path: '/', container: false };
    const dropBase = session.onUndo('close the container\'s root', () => closeRootBase(rootBase));
    for (const p of live) {
      const d = dumpTask(p, rootBase, ownPages.has(p.pid) ? undefined : byPid.get(p.record.ppid)); // parents come first
      byPid.set(p.pid, d);
      dumped.push(d);
    }
    dropBase();
    closeRootBase(rootBase);
    shareSiblingPages(dumped, ownPages);
    // Which cgroups every process and thread is in (cgroups/dump.ts); a container's are its
    // runtime's.
    // Settings no restore carries are a warning each (one line per cgroup), as the files' are.
    const cgroupWarnings: string[] = [];
    const cgroups = o.pidNamespace === undefined ? readCgroups(live, cgroupsAhead, (m) => cgroupWarnings.push(m)) : undefined;
    for (const w of cgroupWarnings) log.warn(w);
    const files = withNetns(netns, () => collectFiles(descs, dumpOptions, unheldGhosts(dumped), threadDescs));
    addUnheldTerminals(unheld, files); // controlling terminals no process holds open (files/tty.ts)
    session.onUndo('put the files back', () => files.finish(true));
    for (const w of files.warnings) log.warn(w);
    for (const d of dumped) {
      d.task.fds = files.fds.get(d.task.pid) ?? [];
      // A thread's own table (ThreadRecord.fds), its file ids shared with the tree's.
      for (const th of d.task.threads.slice(1)) if (threadDescs.has(th.tid)) th.fds = files.fds.get(th.tid) ?? [];
    }
    // A deleted file in a removed directory the tree also holds (its working directory, an
    // open one) where restore could not make the file in that directory (files/deleted.ts).
    const ghostDir = ghostInHeldRemovedDir(dumped.map((d) => d.task), files.files);
    if (ghostDir) {
      throw new FerryError('EUNSUPPORTED', `unsupported: ${ghostInHeldDirMessage(ghostDir)}; have the process close or reopen the file elsewhere, `
        + 'or leave the directory, then checkpoint again (the tree was left running)', { ...(ghostDir.pid !== undefined ? { pid: ghostDir.pid } : {}), path: ghostDir.path });
    }
    // Files the caller calls external: a restore must be handed a descriptor for each.
    for (const f of files.files) if (typeof f.link === 'string' && fileOptions.external.includes(f.link)) f.external = true;
    // The io_setup(2) rings last, as late as the frozen reading allows: disk requests that
    // finish meanwhile have their events in them (memory.ts readAioRings).
    const aioWarnings: string[] = [];
    for (const d of dumped) readAioRings(d.tracees[0]!, d.memory.vmas, (m) => aioWarnings.push(m));
    for (const w of aioWarnings) log.warn(w);
    const pagesBytes = dumped.reduce((s, d) => s + d.memory.pagesBytes, 0);
    log.debug({ processes: dumped.length, pagesBytes, files: files.files.length }, 'collected');
    await faultPoint('dumped', o.signal);

    const json = (name: string, value: unknown): ImageEntry => {
      const data = Buffer.from(JSON.stringify(value));
      return { name, size: data.length, produce: async (sink) => { await sink(data); } };
    };
    // The image holds every id as the tree sees it (ns-ids.ts).
    const ids = new NsIds(tree.processes, new Map(dumped.flatMap((d) => [...d.statuses])));
    const root = ids.of(pid);
    cttyInNamespace(files.files, (host) => ids.of(host), (pgid) => {
      const member = live.find((p) => p.stat.pgrp === pgid);
      if (member) return ids.groupOf(member.pid).pgid;
      // A group no process is in any more, the foreground of a terminal no process holds
      // (files/tty.ts unheldTerminals kept it only then): its id as the tree sees it is ferry's
      // when the tree is in ferry's pid namespace; in another, no process tells it.
      if (live.every((p) => ids.of(p.pid) === p.pid)) return pgid;
      throw new FerryError('EUNSUPPORTED', `process group ${pgid}, the foreground of a terminal no process holds, has no process left to tell its id in the tree's pid namespace: `
        + 'not supported yet; the process was left running');
    });
    const treeRecord: TreeRecord = { root, processes: tree.processes.map((p) => ids.process(p.record, p.pid === pid)) };
    const filesRecord: FilesRecord = { files: files.files, ...(lock?.kept !== undefined && !o.leaveRunning ? { netLock: { table: lock.kept } } : {}) };
    const entries: ImageEntry[] = [json(TREE_ENTRY, treeRecord), json(FILES_ENTRY, filesRecord)];
    if (cgroups !== undefined) entries.push(json(CGROUPS_ENTRY, cgroups));
    for (const [name, data] of files.blobs) entries.push({ name, size: data.length, produce: async (sink) => { await sink(data); } });
    for (const extra of [...o.extraEntries ?? [], ...stopped?.extraEntries ?? []]) entries.push(json(extra.name, extra.value));
    // This kernel's vDSO: a restore on another kernel build proxies it (restore/vdso.ts).
    const vdso = hostVdso();
    if (vdso !== undefined) entries.push({ name: VDSO_ENTRY, size: vdso.length, produce: async (sink) => { await sink(vdso); } });
    // Left running and small: every page is copied out now and the tree let go before the
    // image is written (the write, hashing and renaming included, is most of a small tree's
    // freeze). Left running and bigger: let go once the writer has read every page (the
    // final fsync and rename come after). A checkpoint that kills the tree keeps it until its
    // image is complete and in place, so that a failed write leaves it running.
    let tReleased: number | undefined;
    const letGoEarly = (): void => {
      for (const d of dumped) for (const t of d.tracees) t.close();
      files.finish(true);
      tree.release();
      tReleased = performance.now();
      lock?.release();
    };
    const copies = new Map<number, Buffer[]>();
    if (o.leaveRunning && pagesBytes <= EARLY_RELEASE_MAX_BYTES) {
      for (const d of dumped) {
        const chunks: Buffer[] = [];
        await d.memory.produce(async (chunk) => { chunks.push(Buffer.from(chunk)); }, o.config.image.chunkSize, buffers);
        copies.set(d.task.pid, chunks);
      }
      letGoEarly();
    }
    // The records as the image holds them: the tree's ids.
    const taskRecords = new Map(dumped.map((d) => [d, ids.task(d.task, d.task.pid === pid)]));
    checkCowPlan(pid, treeRecord, [...taskRecords.values()]);
    let firstChunk = true;
    for (const d of dumped) {
      const task = taskRecords.get(d)!;
      entries.push(json(taskEntry(task.pid), task),
        ...d.xstates.map((x, i): ImageEntry => ({ name: task.threads[i]!.xstate, size: x.data.length, produce: async (sink) => { await sink(x.data); } })),
        {
          name: pagesEntry(task.pid),
          size: d.memory.pagesBytes,
          chunked: true, // verified chunk by chunk as restore writes it
          // Under pre-copy, verified per page: pages the target holds are named by digest.
          ...(o.heldPages !== undefined ? { paged: true } : {}),
          produce: async (sink, heldSink) => {
            const emit = async (chunk: Buffer): Promise<void> => {
              await sink(chunk);
              if (firstChunk) {
                firstChunk = false;
                await faultPoint('writing', o.signal);
              }
            };
            const copied = copies.get(d.task.pid);
            if (!copied) {
              const set = heldSink !== undefined ? o.heldPages?.of(task.pid) : undefined;
              const counts = await d.memory.produce(emit, o.config.image.chunkSize, buffers,
                set !== undefined ? { set, sink: heldSink! } : undefined);
              o.heldPages?.counted(task.pid, counts);
              return;
            }
            for (const chunk of copied) await emit(chunk);
          },
        });
    }
    // Record fields an older ferry would pass over are named in the manifest (image/features.ts).
    const requires = requiredFeatures({
      tree: treeRecord, tasks: [...taskRecords.values()], files: filesRecord.files,
      extra: new Map([...o.extraEntries ?? [], ...stopped?.extraEntries ?? []].map((e) => [e.name, e.value])),
    });
    const written = await writeImage(o.image, {
      ferryVersion: FERRY_VERSION,
      createdAt: new Date().toISOString(),
      host: { ...host, xstateSize: dumped[0]!.xstates[0]!.data.length },
      root: { pid: root },
      tasks: dumped.map((d) => ids.of(d.task.pid)),
      ...(requires.length > 0 ? { requires } : {}),
    }, entries, {
      onProgress: (done, total) => o.onProgress?.({ phase: 'write', done, total }),
      ...(o.leaveRunning && tReleased === undefined ? {
        onProduced: async () => {
          letGoEarly();
          await faultPoint('released', o.signal);
        },
      } : {}),
      ...(o.signal !== undefined ? { signal: o.signal } : {}),
      ...(signer !== undefined ? { signer } : {}),
      ...(hashPool !== undefined ? { hashPool } : {}),
      ...(o.heldPages !== undefined ? { omitHeld: true } : {}),
      target,
      session,
    });
    log.debug({ dataMs: written.dataMs, syncMs: written.syncMs, bytes: written.bytes }, 'written');
    // A migration holds the tree stopped here until the target has the image (api.ts).
    if (!o.leaveRunning && o.beforeKill !== undefined) await o.beforeKill(tStopped);
    // The image is complete and in place: only letting go (or the kill) is left, and neither
    // an abort nor a second signal stops that (finishing()).
    return await finishing(async () => {
      // The big address spaces are held from here across the kill, so that its processes exit
      // without freeing their memory first (memory-hold.ts): a thread of ours frees it once
      // let go. Taken before the fault point, so that a ferry dying with them held is tested.
      // Not for a tree holding a flock, OFD lock or lease: its open file description stays
      // while a held address space maps the file, and so would the lock after the kill.
      const fileLocked = files.files.some((f) => (f as { locks?: readonly LockRecord[] }).locks?.some((l) => l.kind !== 'posix') ?? false);
      const letMemoryGo = o.leaveRunning || fileLocked ? () => {}
        : holdAddressSpaces(dumped.map((d) => ({ pid: d.task.pid, pagesBytes: d.memory.pagesBytes, vmas: d.memory.vmas })));
      try {
        await faultPoint('written', o.signal).catch(() => {});
        // The kept lock is made last before the kill: a ferry dying before it leaves only the
        // owned one, which goes with it.
        if (!o.leaveRunning) await lock?.keep();
        for (const d of dumped) for (const t of d.tracees) t.close();
        // The sockets are back as they were, or go into repair mode for the kill just below: a
        // watchdog that took them out of it again for a dying tree would reset its connections.
        socketGuard?.disarm();
        files.finish(o.leaveRunning);
        session.close();

        if (o.leaveRunning) {
          tree.release(); // a no-op when it was let go before the write
        } else {
          killTree(live);
          // The tree is gone: what follows (a container's deletion by its runtime) is not
          // time the workload was stopped.
          tReleased = performance.now();
          if (o.teardownAfter !== undefined) {
            o.teardownAfter.then(letMemoryGo, letMemoryGo);
            // A caller that never settles it does not keep the memory for ever.
            setTimeout(letMemoryGo, TEARDOWN_AFTER_MAX_MS).unref();
          }
          o.onKilled?.();
        }
      } catch (err) {
        letMemoryGo();
        throw err;
      }
      tReleased ??= performance.now();
      let reapWaitMs: number | undefined;
      try {
        // Let go (the owned table goes with its nft) once the tree runs on or is dead.
        await lock?.close();
        await hashPool?.close();
        // A tree in a pid namespace of its own (a container's) is restored into a new one: its
        // PIDs need not be free, and its orphans are reaped when PID 1 gets to it.
        if (!o.leaveRunning && !ownPidNamespace && o.skipReapWait !== true) {
          const others = tree.processes.filter((p) => p.pid !== pid || p.stat.ppid !== process.pid);
          const tWait = performance.now();
          await Promise.all(others.map((p) => waitReaped(p.pid, REAP_WAIT_MS)));
          reapWaitMs = performance.now() - tWait;
        }
      } finally {
        if (o.teardownAfter === undefined) letMemoryGo();
      }
      const tEnd = performance.now();
      log.info({ imageBytes: written.bytes, pagesBytes }, 'checkpointed');
      return {
        pids: tree.processes.map((p) => p.pid),
        imageBytes: written.bytes,
        pagesBytes,
        frozenMs: tReleased - tStopped,
        totalMs: tEnd - t0,
        ...(reapWaitMs !== undefined ? { reapWaitMs } : {}),
        ...(cgroupWarnings.length + files.warnings.length + aioWarnings.length > 0 ? { warnings: [...cgroupWarnings, ...files.warnings, ...aioWarnings] } : {}),
        ...(lock?.kept !== undefined && !o.leaveRunning ? { netLock: lock.kept } : {}),
      };
    });
  } catch (err) {
    session.unwind();
    if (o.signal?.aborted && err === o.signal.reason) {
      throw new FerryError('EINTR', `checkpoint of pid ${pid} ${describeCause(err)}: the process was let go as it was and no image was written`, { cause: err });
    }
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `checkpoint of pid ${pid} failed: ${describeCause(err)} (the process was left running)`, { cause: err });
  }
}

/**
 * Takes the network lock (started as `nft`) for the TCP connections the frozen tree holds
 * (`descs`), if it has some; else lets nft go. The lock is on the tree's own network
 * namespace whole (a container's), or on exactly the connections' 4-tuples on the host.
 */
async function takeNetLock(nft: NetLock | undefined, descs: ReadonlyMap<number, readonly FdDesc[]>): Promise<NetLock | undefined> {
  if (nft === undefined) return undefined;
  const connections = treeConnections(descs);
  if (connections.length === 0) {
    nft.release();
    return undefined;
  }
  await nft.take(connections);
  return nft;
}

/**
 * Checks the copy-on-write plan of the tree's records (`tree`, `tasks`: the image's, by the
 * tree's ids) as restore will (restore/cow.ts checkInherited), before anything is written or
 * killed: the matching across branches (cow-branches.ts) is intricate, and a plan restore
 * would refuse is a bug of ferry's that must not cost the tree (without --leave-running the
 * image would be the workload's only copy). EINTERNAL, the tree left running.
 */
export function checkCowPlan(pid: number, tree: TreeRecord, tasks: readonly TaskRecord[]): void {
  try {
    checkInherited(tree, tasks);
  } catch (err) {
    const why = err instanceof FerryError ? err.message.replace(/^image: /, '').replace(/: refused \(an edited image\)$/, '') : describeCause(err);
    throw new FerryError(INTERNAL_CODE, `checkpoint of pid ${pid}: the pages its processes share copy-on-write were planned so that restore would refuse them (${why}): `
      + 'a bug of ferry (please report it with this line); the process was left running', { cause: err, pid });
  }
}

/**
 * Kills every live process of the frozen tree and collects each thread's death as its tracer
 * (a leader's is reported last); that hands each zombie to its parent. When ferry itself is
 * the root's parent (a library caller that spawned it), the root's zombie is left for it.
 */
function killTree(live: readonly FrozenProcess[]): void {
  const n = native();
  for (const p of live) n.tgkill(p.pid, p.pid, SIGKILL);
  // Children first: a pid namespace's init, dying, waits for every other process of its
  // namespace to be reaped, and those we trace are reaped only when we collect them.
  for (const p of [...live].reverse()) {
    for (const tid of p.tids.slice(1)) n.waitExit(tid);
    n.waitExit(p.pid, p.stat.ppid === process.pid);
  }
}
