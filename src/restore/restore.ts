/**
 * `restore`: bring a checkpointed process tree back to life with its original PIDs
 * (DESIGN.md §3).
 *
 * Order: verify the whole image (checksums, kernel build, CPU features) and check every file
 * it needs, before any process exists; open the files in the controller; create every process
 * as a stub with its original pid, parent, session and group (tree.ts), each traced with
 * PTRACE_O_EXITKILL so if ferry dies the half-built tree dies too; rebuild each process's
 * memory, mm, state, descriptors and threads from outside; set the registers last and detach.
 * On any failure every stub is killed and reaped: nothing half restored is left.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { RestoreOptions, RestoreResult } from '../api.js';
import { SIGSTOP } from '../arch/x86-64.js';
import { FerryError, describeCause } from '../errors.js';
import { checkFiles, closeFiles, installFds, openFiles, type RestoreFiles } from '../files/install.js';
import { checkMappedFiles } from '../files/regular.js';
import { DEFAULT_FILE_OPTIONS } from '../files/types.js';
import { withNetns } from '../task/netns.js';
import { hostFacts } from '../host.js';
import { checkCompatibility } from '../image/manifest.js';
import { openImage } from '../image/reader.js';
import { FILES_ENTRY, pagesEntry, taskEntry, TREE_ENTRY, type TaskRecord } from '../image/records.js';
import { defaultStubPath, native } from '../native/binding.js';
import { clearStub, dropGadget, mapAreas, setMm } from './address-space.js';
import { restoreCreds } from './creds.js';
import { createThreads, queuePendingSignals, restoreTaskState, setThreadRegisters } from './task-state.js';
import { createTree, type CreatedTree } from './tree.js';
import { validateFiles, validateTask, validateTree } from './validate.js';

/** Restores the image `o.image`; resolves once every process runs on its own. */
export async function restore(o: RestoreOptions): Promise<RestoreResult> {
  const t0 = performance.now();
  const log = o.logger.child({ op: 'restore' });
  const image = await openImage(o.image, {
    workDir: o.config.image.workDir,
    onProgress: (done, total) => o.onProgress?.({ phase: 'verify', done, total }),
  });
  try {
    const tVerified = performance.now();
    const { manifest } = image;
    checkCompatibility(manifest, { ...hostFacts(), xstateSize: manifest.host.xstateSize });
    const files = validateFiles(await image.readJson(FILES_ENTRY));
    const tree = validateTree(await image.readJson(TREE_ENTRY), manifest.root.pid, manifest.tasks);
    const tasks: TaskRecord[] = [];
    const xstates = new Map<number, Buffer>();
    for (const pid of manifest.tasks) {
      const task = validateTask(await image.readJson(taskEntry(pid)), pid);
      tasks.push(task);
      for (const th of task.threads) xstates.set(th.tid, await image.read(th.xstate, 1 << 16));
    }
    // A function picks the substitutes from the image, read and verified once here.
    const substitutes = typeof o.inherit === 'function' ? o.inherit({ files, root: tasks[0]! }) : o.inherit;
    const inherit = new Map(Object.entries(substitutes ?? {}));
    const stubPath = o.config.restore.stub || defaultStubPath();
    if (!existsSync(stubPath)) throw new FerryError('ENOSTUB', `restore stub ${stubPath} is missing: run 'npm run build'`);
    const blobs = new Map<string, Buffer>();
    for (const e of manifest.entries.filter((x) => x.name.startsWith('files/'))) blobs.set(e.name, await image.read(e.name, e.size));
    // In a fresh pid namespace (a container) every pid is free by construction.
    if (!o.makeRoot) {
      for (const p of tree.processes) await assertPidFree(p.pid);
      checkFiles(files.files, undefined, inherit);
      checkMappedFiles(tasks, { allowChangedFiles: o.files?.allowChangedFiles ?? false }, (m) => log.warn(m));
    }

    const tStart = performance.now();
    // A container's init is made by its runtime; its files are reachable through its root.
    const maxFd = Math.max(2, ...tasks.flatMap((t) => t.fds.map((f) => f.fd)));
    const made = o.makeRoot ? await o.makeRoot(image, maxFd) : undefined;
    let pagesBytes = 0;
    let hostPid = 0;
    try {
      if (made) {
        checkFiles(files.files, made.fileRoot, inherit);
        checkMappedFiles(tasks, { allowChangedFiles: o.files?.allowChangedFiles ?? false }, (m) => log.warn(m), made.fileRoot);
      }
      // A container's sockets are made in its network namespace.
      const opened = withNetns(made?.pid, () => openFiles(files.files,
        { ...DEFAULT_FILE_OPTIONS, deletedMaxBytes: o.config.files.deletedMaxBytes, ...o.files }, blobs, made?.fileRoot, inherit));
      try {
        const created = createTree(tree, stubPath, made?.pid, opened, made?.controllerPidfd);
        try {
          for (const task of tasks) {
            pagesBytes += rebuild(o, created, task, opened, image.locate(pagesEntry(task.pid)), made?.controllerPidfd);
          }
          hostPid = created.stubs.get(tree.root)!.pid;
          letGo(created, tasks, xstates);
        } catch (err) {
          created.destroy();
          if (err instanceof FerryError) throw err;
          throw new FerryError('ERESTORE', `restore of pid ${tree.root} failed: ${describeCause(err)} (nothing was left running)`, { cause: err });
        }
      } finally {
        closeFiles(opened.opened);
      }
    } catch (err) {
      made?.destroy();
      throw err;
    }
    const tEnd = performance.now();
    const pid = hostPid;
    if (o.pidFile !== undefined) writeFileSync(o.pidFile, `${pid}\n`);
    log.info({ targetPid: pid, processes: tree.processes.length, pagesBytes }, 'restored');
    return {
      pid,
      pids: tree.processes.map((p) => p.pid),
      pagesBytes,
      verifyMs: tVerified - t0,
      restoreMs: tEnd - tStart,
      totalMs: tEnd - t0,
    };
  } finally {
    await image.close();
  }
}

/** Throws unless `pid` is free; a zombie holding it gets a moment to be reaped by its parent. */
async function assertPidFree(pid: number): Promise<void> {
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
  throw new FerryError('EPIDINUSE', `pid ${pid} is in use by another process (${comm}): stop it, or restore elsewhere`);
}

/**
 * Rebuilds one process inside its stub: address space, mm, state, descriptors, threads,
 * pending signals. Returns the bytes of pages written. Its threads are registered in
 * `created` as soon as they exist, so a failure anywhere kills them too.
 */
function rebuild(o: RestoreOptions, created: CreatedTree, task: TaskRecord,
  files: RestoreFiles, pages: { fd: number; offset: number }, controllerPidfd?: number): number {
  const t = created.stubs.get(task.pid)!;
  const as = clearStub(t, task);
  const written = mapAreas(t, as, task, pages, o.config.image.chunkSize, created.sharedMemory, controllerPidfd);
  setMm(t, as, task);
  restoreTaskState(t, as, task);
  installFds(t, as.scratch, task.pid, task.fds, files, controllerPidfd);
  created.threads.set(task.pid, createThreads(t, as, task));
  queuePendingSignals(t, created.threads.get(task.pid)!, as, task);
  restoreCreds(t, created.threads.get(task.pid)!, as, task, task.pid === created.stubs.keys().next().value);
  dropGadget(t, as, task);
  return written;
}

/**
 * Sets every thread's registers, XSAVE area and signal mask, then lets every process go,
 * children before parents. A process stopped by a signal stays stopped: SIGSTOP queued now
 * stops it as soon as it is let go, before it runs a single instruction.
 */
function letGo(created: CreatedTree, tasks: readonly TaskRecord[], xstates: ReadonlyMap<number, Buffer>): void {
  const n = native();
  for (const task of tasks) {
    const all = [created.stubs.get(task.pid)!, ...(created.threads.get(task.pid) ?? [])];
    task.threads.forEach((th, i) => setThreadRegisters(all[i]!.tid, th, xstates.get(th.tid)!));
    for (const x of all) x.close();
  }
  for (const task of [...tasks].reverse()) {
    const leader = created.stubs.get(task.pid)!;
    // Process-directed (kill, not tgkill): every thread finds it pending on its way back to
    // user space, so none runs an instruction before the group stop.
    if (task.stopped) process.kill(leader.pid, SIGSTOP);
    for (const x of created.threads.get(task.pid) ?? []) n.detach(x.tid, 0);
    n.detach(leader.pid, 0);
  }
}
