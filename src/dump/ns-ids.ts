/**
 * Process ids as the tree itself sees them.
 *
 * Ferry reads /proc and ptraces with the ids of its own pid namespace (the host's), but the
 * image records every id as the processes know it: in the innermost pid namespace of the
 * tree (a container's). Restore creates processes with those ids (clone3 set_tid takes the
 * innermost id first) and passes them to the syscalls it injects (setpgid, rt_tgsigqueueinfo,
 * /proc/<pid>/map_files inside the task). For a tree in ferry's own namespace both are equal.
 */
import { FerryError } from '../errors.js';
import { xstateEntry, type ProcessRecord, type TaskRecord } from '../image/records.js';
import { readProcText } from '../proc/read.js';
import { parseStatus } from '../proc/status.js';
import type { FrozenProcess } from './tree.js';

/** Host id -> id in the tree's namespace, for every process and thread of the tree. */
export class NsIds {
  private readonly ids = new Map<number, number>();
  /** Group and session of each process in the tree's namespace, by host pid. */
  private readonly groups = new Map<number, { pgid: number; sid: number }>();

  /**
   * `statuses`: /proc status texts by tid that the dump read already while the tree was
   * frozen (the main thread's is /proc/PID/status); whatever is missing (a zombie's) is read here.
   */
  constructor(processes: readonly FrozenProcess[], statuses: ReadonlyMap<number, string> = new Map()) {
    for (const p of processes) {
      const st = parseStatus(statuses.get(p.pid) ?? readProcText(p.pid, 'status'));
      this.ids.set(p.pid, st.nsPid.at(-1) ?? p.pid);
      this.groups.set(p.pid, { pgid: st.nsPgid.at(-1) ?? p.stat.pgrp, sid: st.nsSid.at(-1) ?? p.stat.session });
      for (const tid of p.tids.slice(1)) {
        const t = parseStatus(statuses.get(tid) ?? readProcText(p.pid, `task/${tid}/status`));
        this.ids.set(tid, t.nsPid.at(-1) ?? tid);
      }
    }
  }

  /** Whether any id differs, i.e. the tree lives in a pid namespace of its own. */
  get nested(): boolean {
    for (const [host, ns] of this.ids) if (host !== ns) return true;
    return false;
  }

  /** The id of a process or thread of the tree in its namespace. */
  of(host: number): number {
    const id = this.ids.get(host);
    if (id === undefined) throw new FerryError('EINTERNAL', `pid ${host} is not part of the frozen tree`);
    return id;
  }

  /** Group and session ids of process `host` in the tree's namespace (0: led from outside it). */
  groupOf(host: number): { pgid: number; sid: number } {
    return this.groups.get(host)!;
  }

  /** A tree.json record with the tree's ids; a parent outside the tree keeps its host id. */
  process(r: ProcessRecord, isRoot: boolean): ProcessRecord {
    const g = this.groupOf(r.pid);
    return {
      ...r, pid: this.of(r.pid), ppid: isRoot ? (this.nested ? 0 : r.ppid) : this.of(r.ppid), pgid: g.pgid, sid: g.sid,
      ...(r.sharesFiles !== undefined ? { sharesFiles: this.of(r.sharesFiles) } : {}),
      ...(r.sharesFs !== undefined ? { sharesFs: this.of(r.sharesFs) } : {}),
    };
  }

  /** A task record with the tree's ids (its threads, xstate entries, credentials, timers). */
  task(t: TaskRecord, isRoot: boolean): TaskRecord {
    const pid = this.of(t.pid);
    const g = this.groupOf(t.pid);
    return {
      ...t,
      pid,
      ppid: isRoot ? (this.nested ? 0 : t.ppid) : this.of(t.ppid),
      pgid: g.pgid,
      sid: g.sid,
      threads: t.threads.map((th) => ({ ...th, tid: this.of(th.tid), xstate: xstateEntry(pid, this.of(th.tid)) })),
      itimers: {
        ...t.itimers,
        posix: t.itimers.posix.map((x) => ({ ...x, thread: x.thread === null ? null : (this.ids.get(x.thread) ?? x.thread) })),
      },
      creds: { ...t.creds, threads: t.creds.threads.map((c) => ({ ...c, tid: this.of(c.tid) })) },
    };
  }
}
