/**
 * `restore`: bring a checkpointed process tree back to life with its original PIDs
 * (DESIGN.md §3).
 *
 * Order: verify the image (its signature, every record's checksum, kernel build, CPU
 * features; page data is verified chunk by chunk as it is written, image/chunks.ts), hold its
 * credentials to a bound, and check every file it needs, before any process exists; open the
 * files in the controller; create every process as a stub with its original pid, parent,
 * session and group (tree.ts), each traced with PTRACE_O_EXITKILL so if ferry dies the
 * half-built tree dies too; rebuild each process's memory, mm, state, descriptors and threads
 * from outside; set the registers last and let go, under a watchdog that kills the tree if
 * ferry dies half way. On any failure every stub is killed and reaped: nothing half restored
 * is left.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { MadeRoot, RestoreOptions, RestoreResult } from '../api.js';
import { PAGE_SIZE, SIGSTOP, SIGTRAP, SYS } from '../arch/x86-64.js';
import { createHash } from 'node:crypto';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { ghostInHeldDirMessage, ghostInHeldRemovedDir } from '../files/deleted.js';
import { checkLinkedTrust } from '../files/linked.js';
import { checkRemovedNodeTrust } from '../files/chrdev.js';
import { checkRemovedNodes } from '../files/removed-node.js';
import { checkOwners } from '../files/owner.js';
import { checkProcfileTrust } from '../files/procfile.js';
import {
  afterRebuild, beforeLetGo, checkContainerHostFiles, checkFiles, checkThreadFiles, closeFiles, installFds, installLate, installThreadTable, openAfterThreads, openAfterTree, openFiles, restoreOwners, type RestoreFiles,
} from '../files/install.js';
import { ConfinedRoot, hostRoot, statIn } from '../files/confined.js';
import { checkMappedFiles } from '../files/regular.js';
import { removeKeptLock, type LockedConnection } from '../files/tcp-lock.js';
import { sweepTransientNames } from '../files/transient.js';
import { checkUnheldTerminals, emptyForegroundOf, setForegroundGroups } from '../files/tty.js';
import type { InetRecord } from '../files/inet.js';
import { DEFAULT_FILE_OPTIONS } from '../files/types.js';
import { withNetns } from '../task/netns.js';
import { hostFacts } from '../host.js';
import { checkCompatibility } from '../image/manifest.js';
import { openImage } from '../image/reader.js';
import { hostPublicKey } from '../image/host-key.js';
import { restoreTrust } from '../image/sign.js';
import { big, FILES_ENTRY, pagesEntry, taskEntry, TREE_ENTRY, VDSO_ENTRY, type FileRecord, type ProcessRecord, type TaskRecord } from '../image/records.js';
import type { Tracee } from '../task/tracee.js';
import { defaultStubPath, native } from '../native/binding.js';
import { MAX_VDSO_BYTES } from './vdso.js';
import { checkAioRings, restoreAioRings } from './aio.js';
import { checkPagesEntry, checkSharedFilePages, clearStub, dropGadget, holdTemporary, mapAreas, releaseAreas, setMm, sharedExtents, sharedWritable, type AddressSpace, type OpenedCheck, type SharedObjects } from './address-space.js';
import { checkDirsReachable, checkFileAccess, checkMappedAccess, checkOpenedMapping, checkOpenedReadMapping, checkRemovedDirs, openedFileGuard } from './file-access.js';
import { checkFilePrivilege, checkPseudoFiles, checkWatchAccess, guardPseudoFiles, pseudoFsDevices } from './file-privilege.js';
import { checkBound, untrustedBound } from './bounds.js';
import { restoreCreds } from './creds.js';
import { checkSocketPrivilege } from './socket-privilege.js';
import { finishRemovedCwd, withCwd } from './cwd.js';
import { createThreads, queuePendingSignals, restoreTaskState, setThreadRegisters } from './task-state.js';
import { checkAuditTrust, keepAuditSession, restoreLoginuid } from './audit.js';
import { checkRootTrust, enterRootDir, enterThreadRootDirs, planRemovedRoots, RemovedRoots } from './root-dir.js';
import { stopSignalOf } from './stop-signal.js';
import { createTree, leaderlessGroups, outsideGroups, type CreatedTree } from './tree.js';
import { checkInherited, keptAreas, lendPages } from './cow.js';
import { checkNamedPids, threadTableHolders, validateFiles, validateSharing, validateTask, validateTree } from './validate.js';
import { CgroupPlan } from '../cgroups/restore.js';
import { CGROUPS_ENTRY, validateCgroups } from '../cgroups/record.js';
import { faultPoint, faultPointSync } from '../fault.js';
import { Session } from '../session.js';
import { startWatchdog } from '../watchdog.js';
import { LazyPages, type LazyStats } from './lazy.js';

/** Restores the image `o.image`; resolves once every process runs on its own. */
export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  const t0 = performance.now();
  const log = o.logger.child({ op: 'restore' });
  const warnings: string[] = [];
  const warn = (m: string): void => {
    warnings.push(m);
    log.warn(m);
  };
  // Names an earlier restore made for a moment and could not remove, being killed (files/transient.ts).
  const swept = sweepTransientNames(log);
  if (swept > 0) log.info({ swept }, 'removed names a killed restore had made');
  // --trust, else image.trust of the config: read before the image, checked right after its
  // manifest. This machine's own key is trusted too (image/host-key.ts).
  const host = o.hostKey !== undefined ? o.hostKey ?? undefined : hostPublicKey(o.config.image.hostKey);
  const configured = restoreTrust(o.trust, o.config.image.trust);
  const trust = configured && host ? { ...configured, keys: new Map([...configured.keys, [host.keyId, host.key]]) } : configured;
  const image = await openImage(o.image, {
    workDir: o.config.image.workDir,
    onProgress: (done, total) => o.onProgress?.({ phase: 'verify', done, total }),
    ...(trust !== undefined ? { trust } : {}),
    lazyChunks: true, // page data is verified chunk by chunk as it is written (mapAreas)
    // Lazy pages: the lanes read ahead for the fill after the let-go; before it they would
    // only take the CPU the checks and the rebuild need. Staged memory: a root forked from it
    // reads its pages on this thread (ChunkSource.keepInPlace), so the lanes start only if
    // the image's pages are written after all (below).
    ...(o.lazyPages === true || o.stagedMemory !== undefined ? { lanesLater: true } : {}),
    ...(o.imageOverlay !== undefined ? { overlay: o.imageOverlay } : {}),
  });
  // Every step that makes something registers its undo; any way out before the tree runs
  // removes all of it. If ferry dies instead, the stubs die with it (PTRACE_O_EXITKILL).
  const session = new Session('restore', log);
  let rootPid = 0;
  // Lazy pages (restore/lazy.ts): once the tree runs, they own the image until every page is in.
  let lazyLive: LazyPages | undefined;
  // A container made for a lazily restored tree, until every page is in.
  let madeLive: MadeRoot | undefined;
  try {
    o.signal?.throwIfAborted();
    const tVerified = performance.now();
    const { manifest } = image;
    rootPid = manifest.root.pid;
    checkCompatibility(manifest, { ...hostFacts(), xstateSize: manifest.host.xstateSize });
    const files = validateFiles(await image.readJson(FILES_ENTRY));
    const tree = validateTree(await image.readJson(TREE_ENTRY), manifest.root.pid, manifest.tasks);
    const tasks: TaskRecord[] = [];
    const xstates = new Map<number, Buffer>();
    for (const pid of manifest.tasks) {
      const task = validateTask(await image.readJson(taskEntry(pid)), pid);
      tasks.push(task);
      checkSharedFilePages(task); // no page data into a file the task shares (docs/security.md)
      checkPagesEntry(task, image.locate(pagesEntry(pid)).size); // its runs stay inside its own pages entry
      for (const th of task.threads) xstates.set(th.tid, await image.read(th.xstate, 1 << 16));
    }
    const cow = checkInherited(tree, tasks); // pages inherited copy-on-write name the parent's (restore/cow.ts)
    validateSharing(tree, tasks); // processes sharing a descriptor table hold the same descriptors
    const extents = sharedExtents(tasks); // each shared anonymous object's windows, bounded
    checkAioRings(o.image === '-' ? '(stdin)' : o.image, tasks); // io_setup(2) rings this machine makes at their size (aio.ts)
    // No privilege from the image: every task's credentials within the bound, before anything
    // exists. Without one, an image no trusted key signed gets the untrusted default.
    const trusted = image.signer !== null && (image.signer === host?.keyId || (trust?.keys.has(image.signer) ?? false));
    const bound = typeof o.bound === 'function' ? await o.bound(image) : o.bound;
    checkBound(o.image, tasks, bound ?? (trusted ? undefined : untrustedBound()));
    log.debug({ signer: image.signer, trusted, bound: bound?.source }, 'credentials bound');
    // A function picks the substitutes from the image, read and verified once here.
    const substitutes = typeof o.inherit === 'function' ? o.inherit({ files, root: tasks[0]! }) : o.inherit;
    const inherit = new Map(Object.entries(substitutes ?? {}));
    const inherited = (f: FileRecord): boolean => typeof f.link === 'string' && inherit.has(f.link);
    /** The image as messages name it, and its files other than those the caller hands in. */
    const label = o.image === '-' ? '(stdin)' : o.image;
    const ownFiles = files.files.filter((f) => !inherited(f));
    // Each task as a holder of files: its process's descriptors and its threads' own tables
    // (ThreadRecord.fds), for every check of what it holds.
    const holders = threadTableHolders(label, tree, tasks, files.files, o.makeRoot !== undefined);
    // A file marked external at checkpoint is the caller's to hand in (--inherit-fd).
    const missing = files.files.find((f) => f.external === true && !inherited(f));
    if (missing) {
      const link = String(missing.link).slice(0, 256); // the image's words: bounded, one line
      throw new FerryError('EEXTERNAL', `file ${missing.id} (${link.replace(/[\0-\x1f]/g, '?')}) of the image was external at checkpoint (--external): `
        + `restore with --inherit-fd fd[N]:${link.replace(/[\0-\x1f]/g, '?')}, N a descriptor of yours to use in its place`);
    }
    // Signals the files send (F_SETOWN) go to the image's own processes only.
    checkOwners(files.files, tree.processes, holders);
    checkRemovedNodes(label, ownFiles); // the records of one removed node say one node (files/removed-node.ts)
    // A deleted file made in a removed directory the tree also holds would be in another (files/deleted.ts).
    const ghostDir = ghostInHeldRemovedDir(tasks, ownFiles);
    if (ghostDir) throw new FerryError('EIMAGE', `image ${label}: ${ghostInHeldDirMessage(ghostDir)}; refused, nothing was restored`);
    // A file reached by its handle is confined by nothing.
    if (!trusted) checkLinkedTrust(label, ownFiles);
    // Nor may it have a device node made (a removed one held open).
    if (!trusted) checkRemovedNodeTrust(label, holders, ownFiles);
    // Nor a socket whose privilege the kernel checks only when restore (root) makes it.
    if (!trusted) checkSocketPrivilege(label, holders, ownFiles);
    // Nor a fanotify group, an alarm timer or a device whose privilege is checked the same way (file-privilege.ts).
    if (!trusted) checkFilePrivilege(label, holders, ownFiles);
    // Nor an audit login uid other than the restorer's (a container keeps the runtime's).
    if (!o.makeRoot) checkAuditTrust(label, tasks, trusted);
    checkRootTrust(label, tasks, trusted); // chroot'ed processes (root-dir.ts)
    const removedRootPlan = planRemovedRoots(label, tasks, ownFiles, o.makeRoot !== undefined); // each removed root (or shared working directory) made once (root-dir.ts)
    // A /proc file of a thread only where restore can put it (files/install.ts).
    checkThreadFiles(label, files.files, o.makeRoot !== undefined);
    // Pids the files name for restore to act on: bounded, the image's own threads (validate.ts).
    checkNamedPids(label, tree, tasks, ownFiles, o.makeRoot !== undefined);
    // Nor a file of the host for a container's process: its files are its rootfs's.
    if (!trusted && o.makeRoot) checkContainerHostFiles(label, ownFiles);
    // Nor a /proc file of a process outside the tree, opened as root.
    if (!trusted) checkProcfileTrust(label, ownFiles);
    // Nor access: an untrusted image's processes hold open only what their own credentials
    // could open so (a container's files are in its rootfs, confined there;
    // the files the caller hands in are the caller's business).
    const statFile = (path: string): ReturnType<typeof statIn> => {
      try {
        return statIn(hostRoot(), path, 'file');
      } catch {
        return undefined; // the file checks say why
      }
    };
    const pseudoFs = trusted || o.makeRoot ? new Map<string, string>() : pseudoFsDevices(); // kernel pseudo file systems mounted here
    if (!trusted && !o.makeRoot) {
      checkRemovedDirs(label, holders, ownFiles, (path) => {
        try {
          return statIn(hostRoot(), path, 'directory');
        } catch {
          return undefined;
        }
      });
      checkFileAccess(label, holders, ownFiles, statFile);
      checkPseudoFiles(label, holders, ownFiles, statFile, pseudoFs);
      checkWatchAccess(label, holders, ownFiles);
      // And the files mapped: by path now, and again as the task opened them, by descriptor
      // (mapAreas; those it opens for writing to map them shared, with no symlink followed).
      checkMappedAccess(label, tasks, statFile);
      // And the directories processes and threads are put in by path.
      checkDirsReachable(label, tasks, statFile);
    }
    const mappedCheck = trusted || o.makeRoot ? undefined : (task: TaskRecord): OpenedCheck => (v, st, at) => (sharedWritable(v)
      ? checkOpenedMapping(label, task, v, st)
      : checkOpenedReadMapping(label, task, v, st, at, statFile));
    // And the files they hold open by path: opened with no symlink followed and judged again
    // as opened (files/install.ts FileGuard), as the mapped ones are.
    const fileGuard = trusted || o.makeRoot ? undefined
      : guardPseudoFiles(openedFileGuard(label, holders), label, holders, pseudoFs);
    // The tree's cgroups (cgroups/restore.ts): checked against the mode and the trust rule
    // now, made and joined once the processes exist. A container's are its runtime's.
    const cgroupMode = o.makeRoot ? 'ignore' : o.manageCgroups ?? 'ignore';
    let cgroups: CgroupPlan | undefined;
    if (image.has(CGROUPS_ENTRY)) {
      const record = validateCgroups(await image.readJson(CGROUPS_ENTRY), new Map(tasks.map((t) => [t.pid, t.threads.map((th) => th.tid)])));
      if (cgroupMode !== 'ignore') {
        const plan = (cgroups = CgroupPlan.make(record, cgroupMode, trusted, label, log));
        session.onUndo('close the cgroup roots', () => plan.close());
        log.debug({ create: plan.toCreate }, 'cgroups planned');
      }
    } else if (cgroupMode === 'strict') {
      throw new FerryError('ECGROUP', '--manage-cgroups=strict: the image records no cgroups (a container\'s, or made by an older ferry): nothing was restored');
    }
    const stubPath = o.config.restore.stub || defaultStubPath();
    if (!existsSync(stubPath)) throw new FerryError('ENOSTUB', `restore stub ${stubPath} is missing: run 'npm run build'`);
    const blobs = new Map<string, Buffer>();
    for (const e of manifest.entries.filter((x) => x.name.startsWith('files/'))) blobs.set(e.name, await image.read(e.name, e.size));
    // The checkpointing kernel's vDSO (restore/vdso.ts), when the image has it.
    const vdsoEntry = manifest.entries.find((x) => x.name === VDSO_ENTRY);
    if (vdsoEntry !== undefined && vdsoEntry.size > MAX_VDSO_BYTES) {
      throw new FerryError('EIMAGE', `image ${label}: ${VDSO_ENTRY} is ${vdsoEntry.size} bytes, more than the ${MAX_VDSO_BYTES} a vDSO may have`);
    }
    const imageVdso = vdsoEntry !== undefined ? { label, bytes: await image.read(VDSO_ENTRY, vdsoEntry.size) } : undefined;
    if (imageVdso !== undefined && createHash('sha256').update(imageVdso.bytes).digest('hex') !== manifest.host.vdsoSha256) {
      throw new FerryError('EIMAGE', `image ${label}: ${VDSO_ENTRY} is not the vDSO the manifest names (host.vdsoSha256)`);
    }
    checkUnheldTerminals(files.files, new Set(holders.flatMap((task) => task.fds.map((f) => f.file))), new Set(tree.processes.map((p) => p.pid)),
      o.makeRoot !== undefined, new Set(tree.processes.map((p) => p.pgid)));
    if (!o.makeRoot) {
      checkFiles(files.files, undefined, inherit, fileGuard);
      checkMappedFiles(tasks, { allowChangedFiles: o.files?.allowChangedFiles ?? false }, warn);
    }
    // A migration's staged memory (migrate/staging.ts): a root alone, written whole, in
    // ferry's cgroups (its pages were charged there as they came), is forked from it or is its
    // stub. Decided before a migration's target waits for the source: a stub not used is
    // reaped now (it may hold the root's pid), and the chunk lanes, which only pages written
    // from the image need, start now, both outside the downtime.
    const staged = o.stagedMemory !== undefined && o.stagedMemory.pid === tree.root && tree.processes.length === 1
      && o.lazyPages !== true && o.makeRoot === undefined && cgroups === undefined
      ? o.stagedMemory.keep(tasks.find((t) => t.pid === tree.root)!) : undefined;
    if (staged === undefined) {
      o.stagedMemory?.close();
      if (o.lazyPages !== true) image.startLanes();
    }
    // A migration's target waits here for the source to give the PIDs up (api.ts).
    const tChecked = performance.now();
    await o.beforeCreate?.({ pids: tree.processes.map((p) => p.pid), tids: tasks.flatMap((t) => t.threads.slice(1).map((th) => th.tid)) });
    // In a fresh pid namespace (a container) every pid is free by construction. Elsewhere
    // every PID and thread ID is checked now, before anything is made.
    let outside: Set<number> | undefined;
    // A group whose leader had exited is made around a helper with its id (createTree). Its id
    // was no thread's either: the group kept the pid from being reused.
    const leaderless = [...leaderlessGroups(tree).keys()];
    // So is a terminal's foreground group no process is in (files/tty.ts emptyForegrounds).
    const groupIds = new Set(tree.processes.map((p) => p.pgid));
    const emptyForeground = [...new Set(files.files.flatMap((r) => emptyForegroundOf(r, groupIds) ?? []))];
    for (const g of [...leaderless, ...emptyForeground]) {
      if (!Number.isSafeInteger(g) || g < 1 || g > 4 * 1024 * 1024) throw new FerryError('EIMAGE', `image ${label}: process group ${g} is no pid (1 to 4194304)`);
      const th = tasks.find((t) => t.threads.some((x) => x.tid === g));
      if (th) throw new FerryError('EIMAGE', `image ${label}: process group ${g} has no leader in the tree, yet ${g} is a thread of pid ${th.pid}`);
    }
    // The staging stub used holds the root's pid where it took it, to become the root (staging.ts).
    const heldByStub = staged !== undefined && o.stagedMemory!.ownsPid ? tree.root : undefined;
    if (!o.makeRoot) {
      for (const p of tree.processes) if (p.pid !== heldByStub) await assertPidFree(p.pid);
      for (const t of tasks) for (const th of t.threads.slice(1)) await assertPidFree(th.tid, t.pid);
      for (const g of leaderless) await assertPidFree(g, undefined, `pid ${g} (the id of process group ${g}, whose leader had exited)`);
      for (const g of emptyForeground) await assertPidFree(g, undefined, `pid ${g} (the id of process group ${g}, a terminal's foreground group no process is in)`);
      // A group led from outside the tree is there to join again (createTree joins it).
      outside = outsideGroups(tree);
    }
    await faultPoint('verified', o.signal);

    const tStart = performance.now();
    // A container's init is made by its runtime; its files are reachable through its root.
    const maxFd = holders.reduce((m, t) => t.fds.reduce((k, f) => Math.max(k, f.fd), m), 2);
    const made = o.makeRoot ? await o.makeRoot(image, maxFd) : undefined;
    if (made) session.onUndo('remove the container made for the root', () => made.destroy());
    // Where the tasks' own paths (working and removed root directories) resolve: the
    // container's root, held open from now, or the host's.
    const cwdRoot = made ? new ConfinedRoot(made.fileRoot, 'in-root') : hostRoot();
    if (made) {
      session.onUndo('close the container root', () => cwdRoot.close());
      checkFiles(files.files, made.fileRoot, inherit, undefined, !trusted);
      checkMappedFiles(tasks, { allowChangedFiles: o.files?.allowChangedFiles ?? false }, warn, made.fileRoot);
      // The directories its processes and threads are put in are the rootfs's, there only
      // now: judged as the host's are above, each resolved in that root (a chroot into a
      // directory its uid could not search would reach what is below it by name).
      if (!trusted) {
        const statDir = (path: string): ReturnType<typeof statIn> => {
          try {
            return statIn(cwdRoot, path, 'directory');
          } catch {
            return undefined; // restore says why when it puts the process there
          }
        };
        checkDirsReachable(label, tasks, statDir);
        // And the removed directories made again there (a removed root, working directory).
        checkRemovedDirs(label, tasks, [], statDir);
      }
    }
    // Removed roots (root-dir.ts): each made once, its name removed at once, held until every
    // process in it (or with it as its working directory) has entered it. Made before the
    // files: an open file of one of them, or of a directory below one, opens the directory
    // made here (files/regular.ts), one directory with the processes', where they have it.
    const removedRoots = RemovedRoots.make(removedRootPlan, cwdRoot);
    const dropRoots = session.onUndo('close the removed root directories', () => removedRoots.close());
    // A container's sockets are made in its network namespace.
    const opened = withNetns(made?.pid, () => openFiles(files.files,
      { ...DEFAULT_FILE_OPTIONS, deletedMaxBytes: o.config.files.deletedMaxBytes, ...o.files, removedDir: (key) => removedRoots.dirOf(key),
        ghostPaths: trusted && made === undefined && tasks.every((t) => t.root === undefined && t.threads.every((th) => th.fs?.root === undefined)) },
      blobs, made?.fileRoot, inherit, fileGuard, made !== undefined && !trusted));
    const dropFiles = session.onUndo('close the files opened for the tree', () => closeFiles(opened.opened));
    // Made before the tree, so that their undo runs after the processes in them are killed;
    // the watchdog that removes them if ferry dies is armed before the first.
    await cgroups?.arm(session);
    cgroups?.apply(session);
    // Each process's memory is rebuilt as the tree is made, before the children that inherit
    // pages from it copy-on-write are forked from it (restore/cow.ts). Each process joins its
    // cgroups first: its memory is charged there.
    let pagesBytes = 0;
    let memoryMs = 0;
    const spaces = new Map<number, AddressSpace>();
    const taskOf = new Map(tasks.map((t) => [t.pid, t]));
    // Lazy pages: a process that forks children copy-on-write in the restore, or is one, is
    // written whole (its children must inherit its pages).
    const lazy = o.lazyPages === true ? new LazyPages({ image, label, logger: log }) : undefined;
    if (lazy) session.onUndo('close the lazy pages', () => lazy.close());
    const cowParents = new Set(tree.processes.filter((p) => cow.late(p.pid)).map((p) => p.ppid));
    const sharedMemory: SharedObjects = new Map(); // shared anonymous memory restored so far
    let placedBytes = 0;
    let placedChunks = 0;
    /** How the root came from the staged memory: its stub, or forked from it (the fork may fail: then spawned). */
    let stagedKind: 'stub' | 'fork' | undefined;
    const created = createTree(tree, stubPath, made?.pid, opened, made?.controllerPidfd, {
      ...(staged !== undefined ? {
        root: (pid: number) => {
          const t = o.stagedMemory!.fork(pid);
          if (t !== undefined) stagedKind = o.stagedMemory!.ownsPid ? 'stub' : 'fork';
          else image.startLanes(); // spawned: every page is written
          return t;
        },
      } : {}),
      late: (rec) => cow.late(rec.pid),
      memory: (rec, t) => {
        o.signal?.throwIfAborted();
        cgroups?.placeProcess(rec.pid, t.pid);
        const task = taskOf.get(rec.pid)!;
        // As its children find it at fork: with the pages they lend through it.
        const parent = cow.late(task.pid) ? cow.atFork(rec.ppid) : undefined;
        const fromStaged = rec.pid === tree.root && stagedKind !== undefined ? staged : undefined;
        const keep = parent ? keptAreas(task) : fromStaged?.keep ?? [];
        // The areas it holds for a moment for its children (restore/cow.ts CowPlan.temporary,
        // relayed: the latter kept from its parent): nothing of the restore's own may sit there.
        const relayed = cow.relayed(task.pid);
        const as = clearStub(t, task, [...keep, ...relayed], imageVdso, [...cow.temporary(task.pid), ...relayed]);
        const tMemory = performance.now();
        const lazyAreas = lazy?.plan(task, parent !== undefined || cowParents.has(task.pid));
        const pages = image.pages(pagesEntry(task.pid));
        // Its pages in place are checked here, on this thread; if they cannot be (an image
        // without the pages' digests), every page is read and written: the lanes are needed.
        if (fromStaged && !pages.keepInPlace(fromStaged.keep.map((v) => [big(v.start), big(v.end)] as const))) image.startLanes();
        pagesBytes += mapAreas(t, as, task, pages, o.config.image.chunkSize, sharedMemory, made?.controllerPidfd,
          parent ? { parent, keep } : fromStaged && { parent: { vmas: fromStaged.staged }, keep, staged: true }, extents, lazyAreas, mappedCheck?.(task));
        // Lazy pages: its userfaultfd, while the stub is still root; nothing is registered with
        // it until the rebuild is done (so a fork meanwhile makes no event), and the watchdog
        // started once the tree exists holds it (below).
        lazy?.makeUffd(t, task.pid);
        placedBytes += pages.placedBytes;
        placedChunks += pages.placedChunks;
        // The stub it was forked from goes now: its pages are the root's alone (staging.ts).
        if (fromStaged) o.stagedMemory!.close();
        memoryMs += performance.now() - tMemory;
        spaces.set(task.pid, as);
        return as.gadgetArea + BigInt(PAGE_SIZE);
      },
      lend: (rec, t) => {
        const task = taskOf.get(rec.pid)!;
        // Where it maps nothing its descendants lend through, a temporary area of theirs, mapped
        // before the lent pages are written and gone once its children are forked; the areas
        // it relays, kept from its parent, go then too (restore/cow.ts).
        const temporary = cow.temporary(task.pid);
        const relayed = cow.relayed(task.pid);
        if (temporary.length > 0 || relayed.length > 0) {
          log.debug({ targetPid: task.pid, areas: temporary.map((v) => `${v.start}-${v.end}`), relayed: relayed.map((v) => `${v.start}-${v.end}`) },
            'pages lent through temporary or relayed areas');
        }
        const unmap = holdTemporary(t, task.pid, temporary);
        // The lent pages are written here, into the holder, and not again in their lenders.
        const { written, giveBack } = lendPages(t, task, cow, (pid) => image.pages(pagesEntry(pid)));
        pagesBytes += written;
        const unrelay = releaseAreas(t, task.pid, relayed);
        if (unrelay) faultPointSync('relayed');
        if (!unmap && !unrelay) return giveBack;
        return () => { giveBack?.(); unmap?.(); unrelay?.(); };
      },
      aside: (hostPid) => cgroups?.setAside(hostPid),
      // A container's processes keep the runtime's login uid (finishTask).
      ...(!o.makeRoot ? {
        born: (rec: ProcessRecord, t: Tracee, forker: ProcessRecord | undefined, put: (data: Buffer) => bigint) => {
          const task = taskOf.get(rec.pid);
          if (task !== undefined) keepAuditSession(t, task, forker && taskOf.get(forker.pid), put);
        },
      } : {}),
    }, outside);
    session.onUndo('kill the processes made so far', () => created.destroy());
    // While the tree is let go, the processes already let go run on and the ones still traced
    // die with ferry (PTRACE_O_EXITKILL): if ferry dies then, a watchdog kills them all. Armed
    // now, so its start overlaps the rebuild. (A container's own watchdog deletes it instead.)
    // With lazy pages it is the lazy pages' watchdog too, a container's included: it holds their
    // userfaultfds and stays armed until every page is in (one process to start, not two:
    // 3-6 ms each here).
    const starting = made === undefined || lazy?.any === true
      ? startWatchdog(['kill', ...[...created.stubs.values()].map((t) => String(t.pid))],
        `the processes restored from ${o.image === '-' ? 'stdin' : o.image}`, lazy?.any === true ? lazy.descriptors : [])
      : undefined;
    session.onUndo('stop the let-go watchdog', () => starting?.abandon());
    // pidfds name restored processes, so they are opened now that the processes exist: by
    // their stubs, or (a zombie, already finished) by its pid where pids are the host's.
    const hostPidOf = (pid: number): number | undefined => created.stubs.get(pid)?.pid
      ?? (made === undefined && existsSync(`/proc/${pid}`) ? pid : undefined);
    await openAfterTree(opened, files.files, hostPidOf, made?.fileRoot);
    await faultPoint('created', o.signal);
    // A process forked sharing the descriptor table of one before it (tree.ts) finds its
    // descriptors installed there: each table is filled once.
    const tableShared = new Set(tree.processes.filter((p) => p.sharesFiles !== undefined).map((p) => p.pid));
    const fsShared = new Set(tree.processes.filter((p) => p.sharesFs !== undefined).map((p) => p.pid));
    for (const task of tasks) {
      o.signal?.throwIfAborted();
      rebuild(o, created, task, opened, spaces.get(task.pid)!, cwdRoot, removedRoots, tableShared.has(task.pid), made?.controllerPidfd);
    }
    // The foreground group of a controlling terminal no descriptor of the tree holds, set by
    // its session's leader now that every group exists (files/tty.ts).
    setForegroundGroups(opened, new Set(holders.flatMap((task) => task.fds.map((f) => f.file))), (pid) => {
      const t = created.stubs.get(pid), as = spaces.get(pid);
      return t && as && { t, scratch: as.scratch };
    });
    // Threads the image recorded in cgroups of their own (they were made in their process's).
    cgroups?.placeThreads((tid) => tid);
    // Files that name a thread (a /proc file of one, files/procfile.ts) are opened now that
    // every thread exists; finishTask installs them.
    await openAfterThreads(opened, files.files, (pid, tid) => {
      const i = taskOf.get(pid)?.threads.findIndex((th) => th.tid === tid) ?? -1;
      if (i < 0) return undefined;
      return i === 0 ? created.stubs.get(pid)?.pid : created.threads.get(pid)?.[i - 1]?.tid;
    });
    // Once every process and thread exists: what may name another one, then credentials.
    for (const task of tasks) {
      finishTask(created, task, opened, spaces.get(task.pid)!, tableShared.has(task.pid), fsShared.has(task.pid), removedRoots, made !== undefined);
    }
    // What is made through a rebuilt process's own state: an inotify watch on its removed
    // working or root directory, which only it has now (files/inotify.ts), once it is in both
    // (finishTask chroots). Only a live process of the image: never a process of the host that
    // happens to have the pid an image names.
    afterRebuild(opened, files.files, (pid) => (taskOf.has(pid) ? created.stubs.get(pid)?.pid : undefined));
    dropRoots();
    removedRoots.close();
    await faultPoint('rebuilt', o.signal);
    o.signal?.throwIfAborted();
    const hostPid = created.stubs.get(tree.root)!.pid;
    const hostPids = tasks.map((t) => created.stubs.get(t.pid)!.pid);
    // Lazy pages: nothing more is written into the processes, so their areas are registered
    // now; the watchdog holds the userfaultfds, so that if ferry dies the faulting threads wait
    // until it has killed the tree (restore/lazy.ts).
    if (lazy?.any) lazy.register((pid) => created.stubs.get(pid)!, (pid) => created.stubs.get(pid)!.pid);
    const watchdog = await starting?.armed();
    beforeLetGo(opened, files.files);
    // A process stopped by SIGTSTP, SIGTTIN or SIGTTOU stops by it again where it can (stop-signal.ts).
    const stopSignals = new Map<number, number>();
    for (const t of tasks.filter((x) => x.stopped)) {
      const s = stopSignalOf(t, tree);
      stopSignals.set(t.pid, s.signal);
      if (s.instead !== undefined) log.warn(s.instead);
    }
    // The let-go: once it is done, the tree runs on its own and an abort no longer applies.
    // Lazy pages are served from before it: a thread may touch one as soon as it runs.
    const tLetGo = performance.now();
    if (lazy?.any) lazy.start();
    await letGo(created, tasks, xstates, stopSignals, o.signal);
    const tRunning = performance.now();
    if (lazy?.any) {
      // Only now: when it is the let-go's watchdog too, a fill done during the let-go must not disarm it.
      lazy.guardedBy(watchdog);
      lazyLive = lazy;
      image.startLanes();
    } else {
      lazy?.close();
      watchdog?.disarm();
    }
    cgroups?.running();
    // A container's runtime record is removed by its own watchdog if ferry dies: with lazy
    // pages that stays armed until every page is in, and a tree killed for a page that could
    // not be served takes its container with it (below), so nothing is left of it.
    if (lazyLive === undefined) made?.running?.();
    else madeLive = made;
    dropFiles();
    closeFiles(opened.opened);
    session.close();
    await checkRunning(hostPids, tree.root, log);
    // The tree runs with every connection rebuilt: the network lock kept since the checkpoint
    // goes (files/tcp-lock.ts). Before this, a failure leaves it for a retry.
    // An untrusted image may have only a table removed that blocks its own connections.
    // A container's is in its network namespace (one that outlives it, files/tcp-lock.ts).
    const lockLeft = files.netLock !== undefined
      ? withNetns(made?.pid, () => removeKeptLock(files.netLock!.table, trusted ? undefined : imageConnections(files.files))) : undefined;
    if (lockLeft !== undefined) {
      warn(`the network lock kept since the checkpoint could not be removed (${lockLeft}): if table inet ${files.netLock!.table} is the tree's lock, `
        + `its connections stay blocked until 'nft delete table inet ${files.netLock!.table}'`);
    }
    const tEnd = performance.now();
    if (o.pidFile !== undefined) writeFileSync(o.pidFile, `${hostPid}\n`);
    log.info({ targetPid: hostPid, processes: tree.processes.length, pagesBytes, placedBytes }, 'restored');
    return {
      pid: hostPid,
      pids: tree.processes.map((p) => p.pid),
      hostPids: Object.fromEntries(tasks.map((t, i) => [t.pid, hostPids[i]!])),
      pagesBytes,
      ...(o.stagedMemory !== undefined ? { placedBytes, placedChunks } : {}),
      ...(stagedKind !== undefined ? { stagedRoot: stagedKind } : {}),
      verifyMs: tVerified - t0,
      restoreMs: tRunning - tStart,
      runningAt: tRunning,
      phases: { openMs: tVerified - t0, checkMs: tChecked - tVerified, memoryMs, rebuildMs: tLetGo - tStart - memoryMs, letGoMs: tRunning - tLetGo },
      ...(lazyLive !== undefined ? { lazy: settleMade(lazyLive.done, made) } : {}),
      totalMs: tEnd - t0,
      ...(warnings.length + (cgroups?.warnings.length ?? 0) > 0 ? { warnings: [...warnings, ...cgroups?.warnings ?? []] } : {}),
    };
  } catch (err) {
    session.unwind();
    o.stagedMemory?.close();
    lazyLive?.close(); // the tree died at once (checkRunning killed it)
    lazyLive = undefined;
    madeLive?.destroy();
    const what = rootPid ? `restore of pid ${rootPid}` : 'restore';
    if (o.signal?.aborted && err === o.signal.reason) {
      throw new FerryError('EINTR', `${what} ${describeCause(err)}: everything it had made was removed`, { cause: err });
    }
    if (err instanceof FerryError) throw err;
    throw new FerryError('ERESTORE', `${what} failed: ${describeCause(err)} (nothing was left running)`, { cause: err });
  } finally {
    if (lazyLive === undefined) await image.close();
  }
}

/**
 * A container's part once its lazily restored tree has every page (MadeRoot.running), or,
 * if the tree was killed for a page that could not be served, its removal (destroy: the
 * runtime deletes the container the killed tree leaves behind).
 */
function settleMade(done: Promise<LazyStats>, made: MadeRoot | undefined): Promise<LazyStats> {
  if (made === undefined) return done;
  const settled = done.then((stats) => {
    made.running?.();
    return stats;
  }, (err: unknown) => {
    made.destroy();
    throw err;
  });
  settled.catch(() => {}); // the owner awaits it, as it does `done`
  return settled;
}

/** How long a restored tree is watched for a process that dies at once. */
const SETTLE_MS = 20;
/** Signals of a fault (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSYS): what a wrong restore causes. */
const FAULT_SIGNALS = new Set([4, 5, 7, 8, 11, 31]);

/**
 * Watches the freshly let-go tree for SETTLE_MS: a process killed by a fault at once (a binary
 * or library changed under --allow-changed-files, a state the kernel refused late) makes the
 * restore fail, and the rest of the tree is killed rather than left half alive. Its death is
 * read from /proc/PID/stat (state Z and its exit code; ferry is no longer its tracer). A
 * process that exits, or is killed by someone, within that time is not a failure.
 */
async function checkRunning(pids: readonly number[], root: number, log: RestoreOptions['logger']): Promise<void> {
  const dead = (pid: number): { signal: number; code: number } | undefined => {
    let text: string;
    try {
      text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return undefined; // gone and reaped already: it exited, as it may
    }
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    if (fields[0] !== 'Z' && fields[0] !== 'X') return undefined;
    const status = Number(fields[49] ?? 0); // field 52, exit_code, as waitpid reports it
    // Only a fault is a failed restore; a process that exits or is killed may mean to.
    return FAULT_SIGNALS.has(status & 0x7f) ? { signal: status & 0x7f, code: (status >> 8) & 0xff } : undefined;
  };
  for (const end = performance.now() + SETTLE_MS; ; await new Promise((r) => setTimeout(r, 2))) {
    for (const pid of pids) {
      const d = dead(pid);
      if (!d) continue;
      for (const other of pids) {
        try { process.kill(other, 'SIGKILL'); } catch { /* gone */ }
      }
      log.error({ deadPid: pid, ...d }, 'a restored process died at once');
      throw diedAtOnce(pid, d.signal, root);
    }
    if (performance.now() >= end) return;
  }
}

/** The one error for a restored process killed by a fault as it is let go or right after. */
function diedAtOnce(pid: number, signal: number, root?: number): FerryError {
  const which = root === undefined || root === pid ? `restored pid ${pid}` : `restored pid ${pid} (tree of ${root})`;
  return new FerryError('EDIED', `${which} was killed by ${signalName(signal)} right after restore, so the tree was killed: `
    + 'was a binary or library changed since the checkpoint (--allow-changed-files)? see the log', { pid });
}

function signalName(n: number): string {
  const name = Object.entries(osConstants.signals).find(([, v]) => v === n)?.[0];
  return name ?? `signal ${n}`;
}

/**
 * Throws unless `pid` is free; a zombie holding it gets a moment to be reaped by its parent.
 * `threadOf`: it is a thread ID of that process; `what`: what the pid is, for the message.
 */
async function assertPidFree(pid: number, threadOf?: number, what?: string): Promise<void> {
  for (const end = Date.now() + 2000; Date.now() < end; await new Promise((r) => setTimeout(r, 10))) {
    let state = '';
    try {
      state = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').charAt(0);
    } catch {
      return; // gone
    }
    if (state !== 'Z') break;
  }
  if (!existsSync(`/proc/${pid}`)) return;
  let comm = '?';
  try {
    comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch { /* gone meanwhile */ }
  const who = what ?? (threadOf === undefined ? `pid ${pid}` : `thread id ${pid} (of pid ${threadOf})`);
  throw new FerryError('EPIDINUSE', `${who} is in use by another process (${comm}): stop it, or restore elsewhere`, { pid });
}

/**
 * Rebuilds one process inside its stub, its memory already back (createTree): mm, state,
 * descriptors (unless `tableShared`: another process installed the table they share), threads
 * (and the tables of their own some had: installThreadTable), pending signals. Its threads are registered in `created` as soon as they exist, so a failure
 * anywhere kills them too.
 */
function rebuild(o: Pick<RestoreOptions, 'makeRoot'>, created: CreatedTree, task: TaskRecord, files: RestoreFiles,
  as: AddressSpace, cwdRoot: ConfinedRoot, removedRoots: RemovedRoots, tableShared: boolean, controllerPidfd?: number): void {
  const t = created.stubs.get(task.pid)!;
  setMm(t, as, task);
  restoreAioRings(t, as, task); // its io_setup(2) contexts, each ring moved to where it was (aio.ts)
  // A removed working directory that is a removed root, or below one, is the directory ferry
  // holds for it, with its mode and owner (root-dir.ts); any other is made for the chdir
  // (cwd.ts). Inside a container, where /proc/<ferry>/fd/N is not the task's to see, the task
  // takes those directories (and its removed root, for enterRootDir) through ferry's pidfd.
  const heldCwd = o.makeRoot && controllerPidfd !== undefined
    ? removedRoots.takeInto(t, task, controllerPidfd, controllerPidfd + 1) : removedRoots.cwdOf(task);
  if (heldCwd !== undefined) restoreTaskState(t, as, { ...task, cwd: heldCwd });
  else withCwd(cwdRoot, task, (cwd) => restoreTaskState(t, as, cwd === task.cwd ? task : { ...task, cwd }), t.pid);
  if (!o.makeRoot) restoreLoginuid(t, as, task); // before its threads, which inherit it
  if (heldCwd === undefined) finishRemovedCwd(t.pid, task);
  // Threads with a table of their own need ferry's pidfd once installFds has closed the
  // process's (inside a container, where ferry's pid is not visible): a copy, above it.
  // (A process sharing its table has none to copy from: refused before anything was made.)
  const own = task.threads.some((th) => th.fds !== undefined);
  const keep = own && controllerPidfd !== undefined ? Number(t.syscall(SYS.fcntl, controllerPidfd, F_DUPFD_CLOEXEC, controllerPidfd + 1)) : undefined;
  if (!tableShared) installFds(t, as.scratch, task.pid, task.fds, files, controllerPidfd);
  const threads = createThreads(t, as, task, (fs) => removedRoots.cwdOf(fs)); // a thread's own removed working directory: held (root-dir.ts)
  created.threads.set(task.pid, threads);
  // A thread's own table (ThreadRecord.fds), once the process's is complete: it starts as a copy.
  task.threads.slice(1).forEach((th, i) => {
    if (th.fds === undefined) return;
    as.scratch.reset();
    // The unshare copies `keep` into the thread's table, which closes it there once done.
    installThreadTable(threads[i]!, th.tid, as.scratch, task.pid, th.fds, files, keep);
  });
  if (keep !== undefined) t.syscall(SYS.close, keep);
  queuePendingSignals(t, threads, as, task);
}

const F_DUPFD_CLOEXEC = 1030;

/**
 * Finishes a rebuilt process once every process and thread of the tree exists: the files that
 * name a thread (installLate; once per shared table), its files'
 * owners (a thread of another process may be one; set once per shared table), its root
 * directory (chroot'ed; once per shared fs struct), its credentials, then the injection gadget
 * goes.
 */
function finishTask(created: CreatedTree, task: TaskRecord, files: RestoreFiles, as: AddressSpace, tableShared: boolean,
  fsShared: boolean, removedRoots: RemovedRoots, container: boolean): void {
  const t = created.stubs.get(task.pid)!;
  // First: their numbers were left free, and the next calls may take a descriptor for a moment.
  if (!tableShared) installLate(t, task.pid, task.fds, files, container);
  if (!tableShared) restoreOwners(t, as.scratch, task.pid, task.fds, files);
  // Likewise in the threads' own tables (ThreadRecord.fds).
  const threads = created.threads.get(task.pid)!;
  task.threads.slice(1).forEach((th, i) => {
    if (th.fds === undefined) return;
    installLate(threads[i]!, task.pid, th.fds, files, container);
    restoreOwners(threads[i]!, as.scratch, task.pid, th.fds, files);
  });
  enterRootDir(t, as, task, fsShared, removedRoots, container); // after the last host path, before the credentials
  enterThreadRootDirs(created.threads.get(task.pid)!, as, task, container); // likewise, a thread's own
  restoreCreds(t, created.threads.get(task.pid)!, as, task, task.pid === created.stubs.keys().next().value);
  dropGadget(t, as, task);
}

/**
 * Sets every thread's registers, XSAVE area and signal mask, then lets every process go,
 * children before parents. A process stopped by a signal stays stopped: its stop signal
 * (`stopSignals`, SIGSTOP when absent) queued now stops it as soon as it is let go, before it
 * runs a single instruction.
 */
async function letGo(created: CreatedTree, tasks: readonly TaskRecord[], xstates: ReadonlyMap<number, Buffer>,
  stopSignals: ReadonlyMap<number, number>, signal?: AbortSignal): Promise<void> {
  const n = native();
  const inSyscall = new Map<number, boolean>();
  for (const task of tasks) {
    const all = [created.stubs.get(task.pid)!, ...(created.threads.get(task.pid) ?? [])];
    task.threads.forEach((th, i) => inSyscall.set(all[i]!.tid, setThreadRegisters(all[i]!.tid, th, xstates.get(th.tid)!)));
    for (const x of all) x.close();
  }
  for (const task of [...tasks].reverse()) {
    const leader = created.stubs.get(task.pid)!;
    // Process-directed (kill, not tgkill): every thread finds it pending on its way back to
    // user space, so none runs an instruction before the group stop.
    if (task.stopped) process.kill(leader.pid, stopSignals.get(task.pid) ?? SIGSTOP);
    const tids = [leader.pid, ...(created.threads.get(task.pid) ?? []).map((x) => x.tid)];
    for (const tid of [...tids].reverse()) {
      if (!task.stopped && inSyscall.get(tid)) detachInSyscall(task.pid, tid);
      else n.detach(tid, 0);
    }
    // Some processes run, the others are still traced: the fault matrix hits ferry here.
    if (task === tasks.at(-1)) await faultPoint('letgo', signal);
  }
}

/**
 * Lets go a thread restored inside a restartable syscall only once it is back in the kernel
 * (docs/architecture.md, "Interrupted system calls"). Detached straight from its stop, the
 * kernel would rewind it to the `syscall` instruction and return to user mode first: a signal
 * arriving in that instant runs its handler and the thread then blocks in the call again — a
 * lost wakeup, which the original, asleep in the call, could not have. So it is resumed with
 * PTRACE_SYSCALL (the kernel applies the restart rules: a pending signal runs its handler or
 * fails the call with EINTR, else the call is re-entered) and detached at its next
 * syscall-entry stop: from there a signal finds it inside the call. A stop for a signal is
 * passed on; a thread that reaches no syscall within 2 s (a long handler) is stopped with
 * SIGSTOP, which is consumed when it is let go.
 */
function detachInSyscall(pid: number, tid: number): void {
  const n = native();
  let sig = 0;
  let stopSent = false;
  for (let round = 0; round < 64; round++) {
    n.syscallResume(tid, sig);
    sig = 0;
    let st;
    try {
      st = n.waitpid(tid, 0, stopSent ? 30000 : 2000);
    } catch (err) {
      if (errnoCode(err) !== 'ETIMEDOUT' || stopSent) throw err;
      n.tgkill(pid, tid, SIGSTOP);
      stopSent = true;
      st = n.waitpid(tid);
    }
    if (!st?.stopped) {
      // It died while ferry still traced it, so ferry collected it: a fault fails the restore
      // here (the watch after the let-go can no longer see it).
      if (st?.signaled && FAULT_SIGNALS.has(st.termSig)) throw diedAtOnce(pid, st.termSig);
      return;
    }
    if (st.stopSig === SIGTRAP && st.event === 0) {
      if (!stopSent) return n.detach(tid, 0); // a syscall-entry (or -exit) stop
      continue; // our SIGSTOP is still to come: consume it first
    }
    if (st.stopSig === SIGSTOP && stopSent) return n.detach(tid, 0); // ours, consumed
    sig = st.stopSig; // a signal for the thread: pass it on
  }
  n.detach(tid, 0);
}

/** The TCP connections of an image's sockets, as the network lock names them. */
function imageConnections(files: readonly FileRecord[]): LockedConnection[] {
  const out: LockedConnection[] = [];
  for (const f of files as Array<FileRecord & Partial<InetRecord>>) {
    if (f.kind !== 'inet' || f.proto !== 'tcp' || !f.local || !f.remote) continue;
    out.push({ v6: f.family === 'ipv6', local: f.local, remote: f.remote });
  }
  return out;
}

