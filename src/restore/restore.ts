/**
 * `restore`: bring a checkpointed process back to life with its original PID (DESIGN.md §3).
 *
 * Order: verify the whole image (checksums, kernel build, CPU features) and check every file
 * it needs, before any process exists; open the files in the controller; create the stub with
 * the original PID (clone3 set_tid) traced with PTRACE_O_EXITKILL, so if ferry dies the
 * half-built task dies too; rebuild memory, mm, state and descriptors from outside; set the
 * registers last and detach. On any failure the stub is killed and reaped: nothing half
 * restored is left.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import type { RestoreOptions, RestoreResult } from '../api.js';
import { PTRACE_O_EXITKILL, SIGSTOP } from '../arch/x86-64.js';

/** Every signal blocked while a task is rebuilt. */
const ALL_SIGNALS = (1n << 64n) - 1n;
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { checkFiles, closeFiles, installFds, openFiles } from '../files/install.js';
import { hostFacts } from '../host.js';
import { checkCompatibility } from '../image/manifest.js';
import { openImage } from '../image/reader.js';
import { FILES_ENTRY, pagesEntry, taskEntry, type TaskRecord } from '../image/records.js';
import { defaultStubPath, native } from '../native/binding.js';
import { Tracee } from '../task/tracee.js';
import { clearStub, dropGadget, mapAreas, setMm } from './address-space.js';
import { createThreads, queuePendingSignals, restoreTaskState, setThreadRegisters } from './task-state.js';
import { validateFiles, validateTask } from './validate.js';

/** Restores the image `o.image`; resolves once the process runs on its own. */
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
    if (manifest.tasks.length !== 1) {
      throw new FerryError('EUNSUPPORTED', `image ${o.image} holds ${manifest.tasks.length} processes: process trees are not supported yet`);
    }
    const pid = manifest.root.pid;
    const task = validateTask(await image.readJson(taskEntry(pid)), pid);
    const xstates = new Map<number, Buffer>();
    for (const th of task.threads) xstates.set(th.tid, await image.read(th.xstate, 1 << 16));
    await assertPidFree(pid);
    checkFiles(files.files);

    const tStart = performance.now();
    const opened = openFiles(files.files);
    let pagesBytes = 0;
    try {
      pagesBytes = rebuild(o, pid, task, xstates, opened, image.locate(pagesEntry(pid)));
    } finally {
      closeFiles(opened);
    }
    const tEnd = performance.now();
    if (o.pidFile !== undefined) writeFileSync(o.pidFile, `${pid}\n`);
    log.info({ targetPid: pid, pagesBytes }, 'restored');
    return {
      pid,
      pids: [pid],
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

/** Creates the task and rebuilds it; kills the half-built task on failure. */
function rebuild(o: RestoreOptions, pid: number, task: TaskRecord, xstates: ReadonlyMap<number, Buffer>,
  opened: Map<number, number>, pages: { fd: number; offset: number }): number {
  const n = native();
  const stubPath = o.config.restore.stub || defaultStubPath();
  if (!existsSync(stubPath)) throw new FerryError('ENOSTUB', `restore stub ${stubPath} is missing: run 'npm run build'`);
  let stub: number;
  try {
    stub = n.spawnStub(stubPath, [pid]);
  } catch (err) {
    if (errnoCode(err) === 'EEXIST') {
      throw new FerryError('EPIDINUSE', `pid ${pid} was taken by another process meanwhile: stop it, or restore elsewhere`, { cause: err });
    }
    throw new FerryError('ESPAWN', `cannot create a process with pid ${pid}: ${describeCause(err)}`, { cause: err });
  }
  const t = new Tracee(stub, stub);
  let threads: Tracee[] = [];
  try {
    n.setOptions(stub, PTRACE_O_EXITKILL);
    n.setSigmask(stub, ALL_SIGNALS); // threads created later inherit it
    const as = clearStub(t, task);
    const written = mapAreas(t, as, task, pages, o.config.image.chunkSize);
    setMm(t, as, task);
    restoreTaskState(t, as, task);
    installFds(t, task.fds, opened);
    threads = createThreads(t, as, task);
    queuePendingSignals(t, as, task);
    dropGadget(t, as, task);
    // Registers last, then let every thread go.
    const all = [t, ...threads];
    task.threads.forEach((th, i) => setThreadRegisters(all[i]!.tid, th, xstates.get(th.tid)!));
    for (const x of all) x.close();
    // A process stopped by a signal stays stopped: SIGSTOP queued now stops it as soon as it
    // is let go, before it runs a single instruction.
    if (task.stopped) n.tgkill(stub, stub, SIGSTOP);
    for (const x of threads) n.detach(x.tid, 0);
    n.detach(stub, 0);
    return written;
  } catch (err) {
    t.close();
    for (const x of threads) x.close();
    try {
      n.tgkill(stub, stub, 9);
      for (const x of threads) n.waitExit(x.tid);
      n.waitpid(stub);
    } catch { /* already gone */ }
    if (err instanceof FerryError) throw err;
    throw new FerryError('ERESTORE', `restore of pid ${pid} failed: ${describeCause(err)} (nothing was left running)`, { cause: err });
  }
}
