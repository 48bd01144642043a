/**
 * `checkpoint`: stop a process from outside, capture it whole into an image, then kill it or
 * let it run on (DESIGN.md §2).
 *
 * Nothing is touched before every check that can fail cheaply has passed (the process exists,
 * is not a kernel thread, has no children, holds only supported descriptors). From the moment
 * the task is seized, any failure detaches it with its signal mask restored, so the original
 * keeps running; the image file is removed by the writer.
 */
import { existsSync } from 'node:fs';
import type { CheckpointOptions, CheckpointResult } from '../api.js';
import { FerryError, describeCause, errnoCode } from '../errors.js';
import { collectFiles, checkSupported, describeFds } from '../files/collect.js';
import { hostFacts } from '../host.js';
import {
  FILES_ENTRY, pagesEntry, taskEntry, type FilesRecord, type TaskRecord,
} from '../image/records.js';
import { writeImage, type ImageEntry } from '../image/writer.js';
import { native } from '../native/binding.js';
import { parseMaps } from '../proc/maps.js';
import { listTids, readProcText } from '../proc/read.js';
import { parseSmapsVmFlags } from '../proc/smaps.js';
import { isKernelThread, parseStat } from '../proc/stat.js';
import { parseStatus } from '../proc/status.js';
import { parseChildren } from '../proc/children.js';
import { Tracee } from '../task/tracee.js';
import { FERRY_VERSION } from '../version.js';
import { planMemory } from './memory.js';
import { pendingSignals, readInjectedState, readMm, readPaths, readThread, vdsoGadget } from './task-state.js';
import { SIGKILL } from '../arch/x86-64.js';

/** Every signal blocked: injected syscalls must not dequeue the task's pending signals. */
const ALL_SIGNALS = (1n << 64n) - 1n;

/** Checks that `pid` can be checkpointed, before touching it. */
function precheck(pid: number): void {
  if (pid === process.pid) throw new FerryError('EINVAL', `pid ${pid} is ferry itself`);
  if (!existsSync(`/proc/${pid}`)) {
    throw new FerryError('ENOPROC', `no process with pid ${pid} (check the pid; it may have exited)`);
  }
  const stat = parseStat(readProcText(pid, 'stat'));
  if (isKernelThread(stat)) {
    throw new FerryError('EKTHREAD', `pid ${pid} (${stat.comm}) is a kernel thread: only user processes can be checkpointed`);
  }
  const status = parseStatus(readProcText(pid, 'status'));
  if (status.tgid !== pid) {
    throw new FerryError('EINVAL', `pid ${pid} is a thread of process ${status.tgid}: checkpoint the process`);
  }
  if (stat.state === 'Z') throw new FerryError('EZOMBIE', `pid ${pid} is a zombie: nothing to checkpoint`);
  if (status.tracerPid !== 0) {
    throw new FerryError('ETRACED', `pid ${pid} is already traced by pid ${status.tracerPid} (a debugger?): detach it first`);
  }
  const children = parseChildren(readProcText(pid, `task/${pid}/children`));
  if (children.length > 0) {
    throw new FerryError('EUNSUPPORTED', `pid ${pid} has children (${children.slice(0, 5).join(', ')}${children.length > 5 ? ', …' : ''}): process trees are not supported yet`);
  }
}

/**
 * Seizes and stops every thread of `pid`. Threads may be created (or exit) while we walk, so
 * /proc/PID/task is listed again after each round until a round finds nothing new: from then
 * on every thread sits in a ptrace stop and none can create another. Returns the tids, the
 * thread-group leader first.
 */
function seizeAll(pid: number): number[] {
  const n = native();
  const seized: number[] = [];
  const attach = (tid: number): boolean => {
    try {
      n.seize(tid, 0);
    } catch (err) {
      if (errnoCode(err) === 'ESRCH') return false; // the thread exited meanwhile
      throw new FerryError('ESEIZE', `cannot attach to ${tid === pid ? 'pid' : `thread ${tid} of pid`} ${pid}: ${describeCause(err)}`, { cause: err });
    }
    n.interrupt(tid);
    const st = n.waitpid(tid);
    if (!st || !st.stopped) return false;
    seized.push(tid);
    return true;
  };
  try {
    if (!attach(pid)) throw new FerryError('ENOPROC', `pid ${pid} exited before it could be stopped`);
    for (let round = 0; ; round++) {
      const fresh = listTids(pid).filter((t) => !seized.includes(t));
      if (fresh.length === 0) break;
      if (round > 1000) throw new FerryError('EBUSY', `pid ${pid} keeps creating threads faster than they can be stopped`);
      for (const tid of fresh) attach(tid);
    }
  } catch (err) {
    for (const tid of seized) {
      try { n.detach(tid, 0); } catch { /* gone */ }
    }
    throw err;
  }
  return seized;
}

/**
 * Waits (bounded) until a killed process's parent has reaped it, so its PID is free when
 * checkpoint returns; a parent that does not reap in time only delays that, nothing fails.
 */
async function waitReaped(pid: number, timeoutMs: number): Promise<void> {
  for (const end = Date.now() + timeoutMs; existsSync(`/proc/${pid}`) && Date.now() < end;) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Checkpoints the process `o.pid` into `o.image`. */
export async function checkpoint(o: CheckpointOptions): Promise<CheckpointResult> {
  const t0 = performance.now();
  const { pid } = o;
  const log = o.logger.child({ op: 'checkpoint', targetPid: pid });
  precheck(pid);
  checkSupported(describeFds(pid));

  const n = native();
  // A process stopped by a signal (state T) must come back stopped.
  const stoppedBefore = parseStat(readProcText(pid, 'stat')).state === 'T';
  const tids = seizeAll(pid);
  const tStopped = performance.now();
  log.debug({ threads: tids.length }, 'stopped');
  const tracees = tids.map((tid) => new Tracee(pid, tid));
  const main = tracees[0]!;
  const realSigmasks = new Map<number, bigint>();
  let released = false;
  /** Lets every thread go with everything as it was. */
  const release = (): void => {
    if (released) return;
    released = true;
    for (const tid of tids) {
      try {
        const mask = realSigmasks.get(tid);
        if (mask !== undefined) n.setSigmask(tid, mask);
        n.detach(tid, 0);
      } catch (err) {
        log.warn({ err, tid }, 'detach failed');
      }
    }
  };

  try {
    for (const tid of tids) {
      realSigmasks.set(tid, n.getSigmask(tid));
      n.setSigmask(tid, ALL_SIGNALS);
    }
    const stat = parseStat(readProcText(pid, 'stat'));
    const status = parseStatus(readProcText(pid, 'status'));
    let maps = parseMaps(readProcText(pid, 'maps'));
    const gadget = vdsoGadget(pid, maps);
    for (const t of tracees) t.gadget = gadget;
    const injected = readInjectedState(main, tracees.slice(1));
    // Read the layout after the scratch page is gone again.
    maps = parseMaps(readProcText(pid, 'maps'));
    const vmflags = parseSmapsVmFlags(readProcText(pid, 'smaps'));
    const threads = tids.map((tid) => readThread(pid, tid, realSigmasks.get(tid)!, injected.threads.get(tid)!));
    const descs = describeFds(pid);
    const files = collectFiles(new Map([[pid, descs]]));
    const memory = planMemory(pid, maps, vmflags);
    const paths = readPaths(pid);
    log.debug({ vmas: memory.vmas.length, pagesBytes: memory.pagesBytes, fds: descs.length }, 'collected');

    const task: TaskRecord = {
      pid,
      ppid: stat.ppid,
      pgid: stat.pgrp,
      sid: stat.session,
      comm: stat.comm,
      exe: paths.exe,
      cwd: paths.cwd,
      umask: status.umask,
      mm: readMm(pid, stat, injected.brk),
      vmas: memory.vmas,
      sigactions: injected.sigactions,
      sharedPending: pendingSignals(pid, true),
      itimers: injected.itimers,
      stopped: stoppedBefore,
      threads: threads.map((th) => th.record),
      fds: files.fds.get(pid) ?? [],
      pagesBytes: memory.pagesBytes,
    };
    const filesRecord: FilesRecord = { files: files.files };
    const json = (name: string, value: unknown): ImageEntry => {
      const data = Buffer.from(JSON.stringify(value));
      return { name, size: data.length, produce: async (sink) => { await sink(data); } };
    };
    const entries: ImageEntry[] = [
      json(FILES_ENTRY, filesRecord),
      json(taskEntry(pid), task),
      ...threads.map((th): ImageEntry => ({ name: th.record.xstate, size: th.xstate.length, produce: async (sink) => { await sink(th.xstate); } })),
      { name: pagesEntry(pid), size: memory.pagesBytes, produce: (sink) => memory.produce(sink, o.config.image.chunkSize) },
    ];
    const host = hostFacts();
    const written = await writeImage(o.image, {
      ferryVersion: FERRY_VERSION,
      createdAt: new Date().toISOString(),
      host: { ...host, xstateSize: threads[0]!.xstate.length },
      root: { pid },
      tasks: [pid],
    }, entries, {
      onProgress: (done, total) => o.onProgress?.({ phase: 'write', done, total }),
    });
    for (const t of tracees) t.close();

    let tReleased: number;
    if (o.leaveRunning) {
      release();
      tReleased = performance.now();
    } else {
      released = true;
      n.tgkill(pid, pid, SIGKILL);
      // Collect each thread's death as its tracer (the leader's is reported last); that hands
      // the zombie to its parent. When ferry itself is the parent (a library caller that
      // spawned it), leave the leader's zombie for it to reap.
      for (const tid of tids.slice(1)) n.waitExit(tid);
      n.waitExit(pid, stat.ppid === process.pid);
      tReleased = performance.now();
      if (stat.ppid !== process.pid) await waitReaped(pid, 3000);
    }
    const tEnd = performance.now();
    log.info({ imageBytes: written.bytes, pagesBytes: memory.pagesBytes }, 'checkpointed');
    return {
      pids: [pid],
      imageBytes: written.bytes,
      pagesBytes: memory.pagesBytes,
      frozenMs: tReleased - tStopped,
      totalMs: tEnd - t0,
    };
  } catch (err) {
    for (const t of tracees) t.close();
    release();
    if (err instanceof FerryError) throw err;
    throw new FerryError('EDUMP', `checkpoint of pid ${pid} failed: ${describeCause(err)} (the process was left running)`, { cause: err });
  }
}
