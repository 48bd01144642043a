/**
 * Contract tests of the native addon: every declared export exists, errors are shaped like
 * Node's fs errors, and each family works on real processes. Needs root (ptrace of a
 * non-child, clone3 with set_tid).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { DUMP_TRACE_OPTIONS, SYS } from '../../src/arch/x86-64.js';
import { decodeRegs } from '../../src/arch/x86-64.js';
import { defaultStubPath, INJECT_SEIZED, INJECT_STEP, native, NATIVE_EXPORTS } from '../../src/native/binding.js';
import { directBuffer } from '../../src/image/direct.js';
import { parseMaps } from '../../src/proc/maps.js';
import { parseSmaps } from '../../src/proc/smaps.js';
import { syscallGadget } from '../../src/dump/task-state.js';
// Importing it closes what the shell leaked: what this spawns starts with descriptors 0-2 only.
import { cleanup, own } from '../helpers/processes.js';

const root = process.getuid?.() === 0;
const skipUnlessRoot = root ? false : 'needs root (ptrace of other processes, clone3 with set_tid)';
after(cleanup);

/** What a non-blocking `fd` gives until its text holds `want`, or `ms` have passed. */
async function readUntil(fd: number, want: string, ms: number): Promise<string> {
  let text = '';
  for (const end = Date.now() + ms; !text.includes(want) && Date.now() < end; await new Promise((r) => setTimeout(r, 5))) {
    try {
      const buf = Buffer.alloc(4096);
      text += buf.toString('utf8', 0, readSync(fd, buf));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
    }
  }
  return text;
}

function startSleeper(): number {
  const c = spawn('sleep', ['60'], { stdio: 'ignore', detached: true });
  own(c.pid!);
  return c.pid!;
}

describe('native binding', { timeout: 60_000 }, () => {
  it('exports exactly the declared functions', () => {
    const exported = Object.keys(native()).sort();
    assert.deepEqual(exported, [...NATIVE_EXPORTS].sort());
    for (const name of NATIVE_EXPORTS) assert.equal(typeof native()[name], 'function', name);
  });

  it('throws fs-style errors with code, errno and syscall', () => {
    assert.throws(() => native().seize(0x7ffffff0), (err: NodeJS.ErrnoException) =>
      err.code === 'ESRCH' && err.errno === 3 && err.syscall === 'ptrace(PTRACE_SEIZE)');
    assert.throws(() => native().lseek(-1, 0, 0), { code: 'EBADF', syscall: 'lseek' });
  });

  it('reads XCR0 with x87 and SSE enabled', () => {
    assert.equal(native().xgetbv() & 3n, 3n);
  });

  it('reads memory of a process with process_vm_readv', () => {
    // Our own [vdso] is an ELF image: read it and check the magic.
    const vdso = parseMaps(readFileSync('/proc/self/maps', 'utf8')).find((v) => v.path === '[vdso]')!;
    const len = Number(vdso.end - vdso.start);
    const buf = Buffer.alloc(len + 8);
    assert.equal(native().readMemory(process.pid, new Float64Array([Number(vdso.start), len]), buf, 8), len);
    assert.equal(buf.subarray(8, 12).toString('latin1'), '\x7fELF');
    // Page 1 is never mapped (mmap_min_addr): the error names the address.
    assert.throws(() => native().readMemory(process.pid, new Float64Array([4096, 4096]), Buffer.alloc(4096)),
      (err: NodeJS.ErrnoException) => err.code === 'EFAULT' && err.syscall === 'process_vm_readv' && /0x1000/.test(err.message));
  });

  it('faults a buffer in with populate (and populateLater): its pages resident at once, its bytes as they were', async () => {
    const n = native();
    const bytes = 32 << 20;
    // Bytes of this process's areas advised MADV_HUGEPAGE (VmFlags "hg"): advice, which the
    // kernel records whether or not it finds huge pages.
    const advisedHuge = (): number => {
      const { vmas, vmflags } = parseSmaps(readFileSync('/proc/self/smaps', 'utf8'));
      return vmas.reduce((sum, v) => sum + (vmflags.get(v.start)?.includes('hg') ? Number(v.end - v.start) : 0), 0);
    };
    const plain = directBuffer(bytes);
    let advised = advisedHuge();
    assert.equal(n.populate(plain), true);
    assert.ok(advisedHuge() - advised < bytes, 'no huge pages advised unless asked');
    advised = advisedHuge();
    const buf = directBuffer(bytes); // fresh: none of its pages is resident yet
    const before = process.memoryUsage().rss;
    assert.equal(n.populate(buf, true), true);
    const grown = process.memoryUsage().rss - before;
    assert.ok(grown >= bytes * 0.9, `rss grew by ${grown} bytes for a ${bytes}-byte buffer`);
    assert.ok(advisedHuge() - advised >= bytes, 'huge pages advised for it');
    assert.equal(buf.indexOf(1), -1, 'still all zeros');
    // Any view, not aligned, over bytes that are there already: they stay.
    const some = Buffer.from(directBuffer(3 * 4096).buffer, 100, 2 * 4096 + 1).fill(5);
    assert.equal(n.populate(some), true);
    assert.ok(some.every((b) => b === 5));
    assert.equal(n.populate(Buffer.alloc(0)), true);
    // On libuv's pool, the buffer held until it is done.
    const later = directBuffer(bytes);
    const rss = process.memoryUsage().rss;
    advised = advisedHuge();
    const pending = n.populateLater(later, true);
    assert.ok(pending instanceof Promise);
    assert.equal(await pending, true);
    assert.ok(process.memoryUsage().rss - rss >= bytes * 0.9, 'faulted in on the pool');
    assert.ok(advisedHuge() - advised >= bytes, 'huge pages advised on the pool too');
    assert.equal(later.indexOf(1), -1);
    assert.throws(() => n.populate('x' as unknown as Buffer), TypeError);
  });

  it('tells shared open files apart with kcmp', () => {
    const a = openSync('/proc/self/stat', 'r');
    const b = openSync('/proc/self/stat', 'r');
    try {
      assert.equal(native().kcmp(process.pid, process.pid, 0, a, a), 0);
      assert.notEqual(native().kcmp(process.pid, process.pid, 0, a, b), 0);
    } finally {
      closeSync(a);
      closeSync(b);
    }
  });

  it('counts the pages of a file range in the page cache with cachestat: none after an O_DIRECT write, all once read', () => {
    const dir = mkdtempSync(join('/var/tmp', 'ferry-cachestat-'));
    const path = join(dir, 'f');
    const size = 1 << 20;
    let fd = -1;
    try {
      let direct: number;
      try {
        direct = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_DIRECT, 0o600);
      } catch {
        return; // a file system without O_DIRECT: nothing to compare
      }
      writeSync(direct, directBuffer(size).fill(7), 0, size, 0);
      closeSync(direct);
      fd = openSync(path, 'r');
      const before = native().cachedPages(fd, 0, size);
      if (before === -1) return; // a kernel before 6.5
      assert.equal(before, 0, 'written around the page cache');
      readFileSync(path);
      assert.equal(native().cachedPages(fd, 0, size), size / 4096, 'all of it once read through it');
      assert.equal(native().cachedPages(fd, size / 2, size / 4), size / 4 / 4096, 'a range of it');
    } finally {
      if (fd >= 0) closeSync(fd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('seizes, stops, injects syscalls and detaches', { skip: skipUnlessRoot }, () => {
    const n = native();
    const pid = startSleeper();
    // Wait until sleep has exec'd (its maps show the sleep binary).
    for (let i = 0; i < 100 && !readFileSync(`/proc/${pid}/maps`, 'utf8').includes('sleep'); i++) {
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
    }
    n.seize(pid, DUMP_TRACE_OPTIONS);
    n.interrupt(pid);
    const st = n.waitpid(pid);
    assert.ok(st?.stopped, 'stopped after PTRACE_INTERRUPT');
    assert.equal(st.event, 128, 'PTRACE_EVENT_STOP');
    const before = n.getRegs(pid);
    const gadget = syscallGadget(pid, parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')));
    const mask = n.getSigmask(pid);
    for (const mode of [INJECT_STEP, INJECT_SEIZED]) {
      assert.equal(n.injectSyscall(pid, gadget, mode, SYS.getpid), BigInt(pid));
      const batch = new BigUint64Array(14);
      batch[0] = BigInt(SYS.getpid);
      batch[7] = BigInt(SYS.close);
      batch[8] = 12345n; // not open: -EBADF
      assert.deepEqual([...n.injectSyscalls(pid, gadget, batch, mode)], [BigInt(pid), -9n]);
      assert.deepEqual(n.getRegs(pid), before, `registers restored after injection (mode ${mode})`);
      assert.equal(n.getSigmask(pid), mask, `signal mask as before (mode ${mode})`);
    }
    assert.ok(n.getXstate(pid).length >= 576, 'XSAVE area has legacy + header');
    assert.equal(typeof n.getSigmask(pid), 'bigint');
    assert.equal(n.getRobustList(pid).len, 24);
    const rseq = n.getRseq(pid);
    assert.ok(rseq === null || rseq.size >= 32);
    assert.ok(decodeRegs(before).rsp > 0n);
    n.detach(pid, 0);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    assert.match(status, /TracerPid:\t0/);
    assert.match(status, /State:\t[RS]/, 'running again, not stopped');
  });

  it('spawns the stub with a chosen PID, stopped and traced', { skip: skipUnlessRoot }, () => {
    const n = native();
    // A PID just used by a short-lived process is free again once it is reaped.
    const probe = spawn('true');
    const pid = probe.pid!;
    return new Promise<void>((resolve, reject) => {
      probe.on('exit', () => {
        try {
          const stub = n.spawnStub(defaultStubPath(), [pid]);
          own(stub);
          assert.equal(stub, pid);
          assert.match(readFileSync(`/proc/${pid}/status`, 'utf8'), new RegExp(`TracerPid:\\t${process.pid}`));
          assert.throws(() => n.spawnStub(defaultStubPath(), [pid]), { code: 'EEXIST', syscall: 'clone3' });
          n.tgkill(pid, pid, 9);
          const st = n.waitpid(pid);
          assert.ok(st?.signaled);
          resolve();
        } catch (err) {
          reject(err as Error);
        }
      });
    });
  });

  it('spawns a helper detached, with its pipes and the descriptors it holds only', async () => {
    const n = native();
    const held = openSync('/proc/self/status', 'r'); // any file, told apart by its link
    // Tested before any command substitution, whose pipe the shell holds meanwhile.
    const script = 'for fd in 0 1 2 3 4 5 6 7 8 9; do [ -e /proc/$$/fd/$fd ] && printf "%s " $fd; done; '
      + 'echo "sid=$(cut -d" " -f6 /proc/$$/stat) pid=$$ 3=$(readlink /proc/$$/fd/3)"; read x; echo "got=$x"';
    const c = n.spawnDetached('/bin/sh', ['-c', script], [held]);
    own(c.pid);
    closeSync(held);
    try {
      const flags = (fd: number): number => parseInt(/flags:\s+(\d+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);
      const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
      assert.ok((flags(c.stdin) & O_CLOEXEC) !== 0 && (flags(c.stdout) & O_CLOEXEC) !== 0, 'ferry\'s ends are close-on-exec');
      assert.ok((flags(c.stdout) & O_NONBLOCK) !== 0, 'ferry\'s read end does not block');
      writeSync(c.stdin, 'hello\n');
      const text = await readUntil(c.stdout, 'got=', 10_000);
      // 0-2 and the one held (as 3), no other; its own session.
      assert.match(text, new RegExp(`^0 1 2 3 sid=${c.pid} pid=${c.pid} 3=/proc/${process.pid}/status$`, 'm'));
      assert.match(text, /^got=hello$/m);
      assert.ok(n.waitpid(c.pid)?.exited, 'reaped by its caller');
    } finally {
      closeSync(c.stdin);
      closeSync(c.stdout);
    }
  });

  it('reaps a killed child of 256 threads: its leader is a zombie before the others are gone', { skip: skipUnlessRoot }, async () => {
    // The leader of a killed thread group turns zombie at once but is reported only once
    // every other thread has exited; waitpid took that zombie for one that never reports
    // (ESRCH), and the child stayed a zombie holding its pid.
    const n = native();
    for (let round = 0; round < 3; round++) {
      const c = n.spawnDetached(join(process.cwd(), 'build/workloads/threads'), ['255'], []);
      own(c.pid);
      closeSync(c.stdin);
      try {
        assert.match(await readUntil(c.stdout, 'ready pid=', 20_000), /ready pid=/);
        n.tgkill(c.pid, c.pid, 9);
        const st = n.waitpid(c.pid);
        assert.deepEqual([st?.signaled, st?.termSig], [true, 9]);
        assert.throws(() => readFileSync(`/proc/${c.pid}/stat`), { code: 'ENOENT' }, 'reaped, its pid free');
      } finally {
        closeSync(c.stdout);
      }
    }
  });
});
