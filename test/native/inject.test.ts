/**
 * Injected batches (native/inject.cc): one batch per task is what the checkpoint runs, so the
 * batch's guard (no call after a failed guarded one) and its read-back of the task's memory
 * before the batch's last calls must hold, and the task must come out with its registers,
 * signal mask and kind of stop as before. Needs root (ptrace of a non-child, clone3 with
 * set_tid for the stub).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import {
  DUMP_TRACE_OPTIONS, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PAGE_SIZE, PROT_READ, PROT_WRITE, SYS,
} from '../../src/arch/x86-64.js';
import { defaultStubPath, INJECT_SEIZED, INJECT_STEP, native } from '../../src/native/binding.js';
import { freeRange, parseMaps } from '../../src/proc/maps.js';
import { syscallGadget } from '../../src/dump/task-state.js';
// Importing it closes what the shell leaked: what this spawns starts with descriptors 0-2 only.
import { cleanup, own } from '../helpers/processes.js';

const root = process.getuid?.() === 0;
const skipUnlessRoot = root ? false : 'needs root (ptrace of other processes, clone3 with set_tid)';
after(cleanup);

const ECANCELED = 125n;

/** A `sleep` that has exec'd, seized and stopped in a PTRACE_EVENT_STOP. */
function seizedSleeper(): number {
  const c = spawn('sleep', ['60'], { stdio: 'ignore', detached: true });
  const pid = c.pid!;
  own(pid);
  for (let i = 0; i < 100 && !readFileSync(`/proc/${pid}/maps`, 'utf8').includes('sleep'); i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
  }
  const n = native();
  n.seize(pid, DUMP_TRACE_OPTIONS);
  n.interrupt(pid);
  assert.equal(n.waitpid(pid)?.event, 128, 'PTRACE_EVENT_STOP');
  return pid;
}

const flat = (calls: ReadonlyArray<ReadonlyArray<bigint | number>>): BigUint64Array => {
  const out = new BigUint64Array(calls.length * 7);
  calls.forEach((c, i) => c.forEach((v, j) => { out[i * 7 + j] = BigInt.asUintN(64, BigInt(v)); }));
  return out;
};

describe('injected batches', { timeout: 60_000 }, () => {
  it('map, write, read back and unmap in one seized batch, leaving the task as it was', { skip: skipUnlessRoot }, () => {
    const n = native();
    const pid = seizedSleeper();
    const maps = readFileSync(`/proc/${pid}/maps`, 'utf8');
    const gadget = syscallGadget(pid, parseMaps(maps));
    const regs = n.getRegs(pid);
    const mask = n.getSigmask(pid);
    const addr = freeRange(parseMaps(maps), PAGE_SIZE)!;
    const into = Buffer.alloc(PAGE_SIZE);
    const results = n.injectSyscalls(pid, gadget, flat([
      [SYS.mmap, addr, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0],
      [SYS.prctl, 40 /* PR_GET_TID_ADDRESS */, addr + 8n, 0, 0, 0],
      [SYS.sigaltstack, 0, addr + 16n],
      [SYS.munmap, addr, PAGE_SIZE],
    ]), INJECT_SEIZED, { guard: 1, readAt: 3, readAddr: addr, readInto: into });
    assert.deepEqual([...results], [addr, 0n, 0n, 0n]);
    assert.equal(into.readInt32LE(16 + 8), 2, 'sigaltstack flags SS_DISABLE, read back before the munmap');
    assert.equal(readFileSync(`/proc/${pid}/maps`, 'utf8'), maps, 'the layout as it was');
    assert.deepEqual(n.getRegs(pid), regs, 'registers as they were');
    assert.equal(n.getSigmask(pid), mask, 'signal mask as it was');
    n.detach(pid, 0);
    assert.match(readFileSync(`/proc/${pid}/status`, 'utf8'), /TracerPid:\t0/);
  });

  it('runs nothing after a guarded call that failed, and reads nothing back', { skip: skipUnlessRoot }, () => {
    const n = native();
    const pid = seizedSleeper();
    const maps = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
    const gadget = syscallGadget(pid, maps);
    // MAP_FIXED_NOREPLACE over the vdso itself: EEXIST.
    const taken = maps.find((v) => v.path === '[vdso]')!.start;
    const into = Buffer.alloc(8, 0xaa);
    const results = n.injectSyscalls(pid, gadget, flat([
      [SYS.mmap, taken, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0],
      [SYS.getpid],
      [SYS.munmap, taken, PAGE_SIZE],
    ]), INJECT_SEIZED, { guard: 1, readAt: 2, readAddr: taken, readInto: into });
    assert.deepEqual([...results], [-17n, -ECANCELED, -ECANCELED]);
    assert.equal(into.readBigUInt64LE(0), 0xaaaaaaaaaaaaaaaan, 'nothing read back');
    assert.ok(readFileSync(`/proc/${pid}/maps`, 'utf8').includes('[vdso]'), 'the vdso is still mapped');
    // Without a guard a failed call does not stop the batch.
    assert.deepEqual([...n.injectSyscalls(pid, gadget, flat([[SYS.close, 12345], [SYS.getpid]]), INJECT_SEIZED)], [-9n, BigInt(pid)]);
    n.detach(pid, 0);
  });

  it('fails a read-back of unmapped memory with EFAULT after running every call', { skip: skipUnlessRoot }, () => {
    const n = native();
    const pid = seizedSleeper();
    const maps = parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
    const gadget = syscallGadget(pid, maps);
    const mask = n.getSigmask(pid);
    assert.throws(() => n.injectSyscalls(pid, gadget, flat([[SYS.getpid], [SYS.getpid]]), INJECT_SEIZED,
      { readAt: 1, readAddr: freeRange(maps, PAGE_SIZE)!, readInto: Buffer.alloc(16) }),
    { code: 'EFAULT' });
    assert.equal(n.getSigmask(pid), mask, 'signal mask as it was');
    n.detach(pid, 0);
  });

  it('spawns stubs with CLONE_VM | CLONE_VFORK that start as a fork-made one did', { skip: skipUnlessRoot }, () => {
    const n = native();
    const mine = readFileSync('/proc/self/status', 'utf8');
    const pid = n.spawnStub(defaultStubPath(), []);
    own(pid);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (text: string, key: string): string => new RegExp(`^${key}:\\s*(.*)$`, 'm').exec(text)?.[1] ?? '';
    assert.equal(field(status, 'TracerPid'), String(process.pid));
    assert.equal(field(status, 'SigCgt'), '0000000000000000', 'no handler of Node\'s survives');
    assert.equal(field(status, 'SigIgn'), field(mine, 'SigIgn'), 'ignored signals stay ignored, as execve keeps them');
    assert.equal(field(status, 'SigBlk'), field(mine, 'SigBlk'), 'the caller\'s signal mask');
    assert.equal(field(mine, 'SigBlk'), field(readFileSync('/proc/self/status', 'utf8'), 'SigBlk'), 'ferry\'s own mask back');
    assert.deepEqual(readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0], defaultStubPath());
    const gadget = syscallGadget(pid, parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')));
    assert.equal(n.injectSyscall(pid, gadget, INJECT_STEP, SYS.getpid), BigInt(pid));
    n.tgkill(pid, pid, 9);
    assert.ok(n.waitpid(pid)?.signaled);
  });
});
