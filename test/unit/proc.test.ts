/** /proc parsers, on real text from this machine and on edge cases. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { parseAuxv } from '../../src/proc/auxv.js';
import { fdCloexec, imagePos, parseFdinfo } from '../../src/proc/fdinfo.js';
import { O_APPEND, O_CLOEXEC } from '../../src/proc/fcntl.js';
import { freeRange, parseMaps } from '../../src/proc/maps.js';
import { dumpablePageRuns, nextScanStart } from '../../src/proc/pagemap.js';
import { INITIAL_PID_NS, ownPidNamespace, pidNamespaceLine } from '../../src/proc/pid-ns.js';
import { parseSmaps, parseSmapsVmFlags } from '../../src/proc/smaps.js';
import { isKernelThread, parseStat } from '../../src/proc/stat.js';
import { parseCpuList, parseStatus, statusComm } from '../../src/proc/status.js';

describe('maps', { timeout: 30_000 }, () => {
  it('parses this process', () => {
    const vmas = parseMaps(readFileSync('/proc/self/maps', 'utf8'));
    assert.ok(vmas.length > 10);
    const vdso = vmas.find((v) => v.path === '[vdso]');
    assert.ok(vdso && vdso.exec && !vdso.write && vdso.end > vdso.start);
    assert.ok(vmas.some((v) => v.path.endsWith('/node') && v.inode > 0n));
  });

  it('handles spaces, (deleted), escaped newlines and anonymous areas', () => {
    const text = [
      '7f0000000000-7f0000001000 rw-s 00002000 00:01 1046                       /dev/zero (deleted)',
      '7f0000001000-7f0000003000 r--p 00000000 fe:00 42                         /tmp/a file with spaces',
      '7f0000003000-7f0000004000 r--p 00000000 fe:00 43                         /tmp/new\\012line',
      '7f0000004000-7f0000005000 rw-p 00000000 00:00 0 ',
      '',
    ].join('\n');
    const [z, s, n, a] = parseMaps(text);
    assert.deepEqual([z!.path, z!.deleted, z!.shared, z!.offset], ['/dev/zero', true, true, 0x2000n]);
    assert.equal(s!.path, '/tmp/a file with spaces');
    assert.equal(n!.path, '/tmp/new\nline');
    assert.deepEqual([a!.path, a!.inode, a!.major, a!.minor], ['', 0n, 0, 0]);
    assert.equal(s!.major, 0xfe);
  });

  it('refuses a malformed line', () => {
    assert.throws(() => parseMaps('garbage\n'), /cannot parse/);
  });
});

describe('stat and status', { timeout: 30_000 }, () => {
  it('parses a comm with spaces and parentheses', () => {
    const line = '123 (a (b) c) S 1 123 123 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 1000 10 1 '
      + '4096 8192 140000 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 12288 16384 20480 24576 28672 32768 36864 0\n';
    const s = parseStat(line);
    assert.equal(s.comm, 'a (b) c');
    assert.equal(s.state, 'S');
    assert.equal(s.ppid, 1);
    assert.equal(s.startCode, 4096n);
    assert.equal(s.startStack, 140000n);
    assert.equal(s.startData, 12288n);
    assert.equal(s.envEnd, 36864n);
    assert.equal(isKernelThread(s), false);
  });

  it('reads this process and recognises kthreadd as a kernel thread', () => {
    const self = parseStat(readFileSync('/proc/self/stat', 'utf8'));
    assert.equal(self.comm, 'node');
    assert.ok(self.startBrk > 0n && self.argEnd > self.argStart);
    assert.equal(isKernelThread(parseStat(readFileSync('/proc/2/stat', 'utf8'))), true);
    const st = parseStatus(readFileSync('/proc/self/status', 'utf8'));
    assert.equal(st.tgid, process.pid);
    assert.equal(st.umask, process.umask());
    assert.equal(st.uid.length, 4);
    assert.equal(typeof st.sigIgn, 'bigint');
  });

  it('takes a thread\'s comm from its status exactly as the comm file has it', () => {
    // This thread renamed (through its own comm file) to names the status escapes or could
    // trim, each read back both ways; its name is put back whatever happens.
    const comm = '/proc/thread-self/comm';
    const was = readFileSync(comm, 'utf8').replace(/\n$/, '');
    try {
      for (const name of ['a\\b\nc', ' x\ty\r ', 'n\\n\\\\', 'ends\n', 'plain', '\\']) {
        writeFileSync(comm, name);
        const want = readFileSync(comm, 'utf8').replace(/\n$/, '');
        assert.equal(want, name.slice(0, 15));
        assert.equal(statusComm(readFileSync('/proc/thread-self/status', 'utf8')), want);
      }
    } finally {
      writeFileSync(comm, was);
    }
    assert.equal(statusComm('Umask:\t0022\nName:\tx\\\\y\nState:\tS\n'), 'x\\y');
    // An escape this parser does not know (octal, as some kernel could write): the caller reads comm.
    assert.equal(statusComm('Name:\tx\\012y\n'), undefined);
    assert.equal(statusComm('State:\tS\n'), undefined);
  });
});

describe('fdinfo', { timeout: 30_000 }, () => {
  it('parses octal flags including O_CLOEXEC and keeps extra lines', () => {
    const info = parseFdinfo('pos:\t42\nflags:\t02102002\nmnt_id:\t31\nino:\t77\ntfd:        5 events:       19 data:                0\ntfd:        6 events:       19 data:                1\n');
    assert.equal(info.pos, 42n);
    assert.equal(info.flags & O_APPEND, O_APPEND);
    assert.ok(fdCloexec(info));
    assert.equal(info.flags & 3, 2);
    assert.equal(info.mntId, 31);
    assert.equal(info.lines.get('tfd')?.length, 2);
    assert.equal(fdCloexec(parseFdinfo('pos: 0\nflags: 0100002\n')), false);
    assert.equal(O_CLOEXEC, 0o2000000);
  });
});

describe('smaps, auxv, pagemap', { timeout: 30_000 }, () => {
  it('reads VmFlags of this process', () => {
    const flags = parseSmapsVmFlags(readFileSync('/proc/self/smaps', 'utf8'));
    const stack = parseMaps(readFileSync('/proc/self/maps', 'utf8')).find((v) => v.path === '[stack]')!;
    assert.ok(flags.get(stack.start)?.includes('gd'), 'the stack grows down');
  });

  it('tells the areas none of whose pages another process maps (Shared_* all 0 kB, each seen)', () => {
    const area = (start: string, fields: string): string => `${start}-${start.replace(/0$/, '8')} rw-p 00000000 00:00 0 \n${fields}VmFlags: rd wr mr mw me ac \n`;
    const text = area('1000', 'Rss:  8 kB\nShared_Clean:          0 kB\nShared_Dirty:          0 kB\nShared_Hugetlb:        0 kB\n')
      + area('2000', 'Shared_Clean:          0 kB\nShared_Dirty:          4 kB\n')
      + area('3000', 'Shared_Clean:          0 kB\nShared_Dirty:          0 kB\nShared_Hugetlb:     2048 kB\n')
      + area('4000', 'Shared_Clean:          0 kB\n')
      + area('5000', '');
    const { vmas, vmflags, unshared } = parseSmaps(text);
    assert.equal(vmas.length, 5);
    assert.deepEqual(vmflags.get(0x1000n), ['rd', 'wr', 'mr', 'mw', 'me', 'ac']);
    assert.deepEqual([...unshared], [0x1000n], 'only the area with every Shared_ line seen at 0');
    // This process: its private anonymous areas are unshared unless it forked (it has not).
    const own = parseSmaps(readFileSync('/proc/self/smaps', 'utf8'));
    const stack = own.vmas.find((v) => v.path === '[stack]')!;
    assert.ok(own.unshared.has(stack.start), 'the stack is mapped by this process alone');
  });

  it('parses the auxiliary vector up to AT_NULL', () => {
    const aux = parseAuxv(readFileSync('/proc/self/auxv'));
    assert.deepEqual(aux.at(-1), [0n, 0n]);
    assert.ok(aux.some(([k]) => k === 33n), 'AT_SYSINFO_EHDR');
  });

  it('finds runs of stored pages', () => {
    const e = Buffer.alloc(8 * 8);
    const set = (i: number, hi: number): void => { e.writeUInt32LE(hi >>> 0, i * 8 + 4); };
    set(0, 1 << 31);                 // present anon
    set(1, 1 << 31);                 // present anon
    set(2, (1 << 31) | (1 << 29));   // present file page: not stored
    set(4, 1 << 30);                 // swapped
    set(5, (1 << 31) | (1 << 29));   // present shared-anon page
    assert.deepEqual(dumpablePageRuns(e, 0, false), [[0, 2], [4, 1]]);
    assert.deepEqual(dumpablePageRuns(e, 10, true), [[10, 3], [14, 2]]);
    assert.deepEqual(dumpablePageRuns(e.subarray(8), 0, false), [[0, 1], [3, 1]], 'unaligned views work');
    // A swapped entry of type 31 (bits 0-4) is a marker, no page: never stored.
    e.writeUInt32LE(31, 4 * 8);
    assert.deepEqual(dumpablePageRuns(e, 0, false), [[0, 2]]);
    assert.deepEqual(dumpablePageRuns(e, 0, true), [[0, 3], [5, 1]]);
    e.writeUInt32LE(30 | (7 << 5), 4 * 8); // type 30 (a migration entry): a page
    assert.deepEqual(dumpablePageRuns(e, 0, false), [[0, 2], [4, 1]]);
  });

  it('goes on with a PAGEMAP_SCAN walk from where the kernel stopped, or ends it', () => {
    const regions = (...r: number[]): BigUint64Array => BigUint64Array.from(r.map(BigInt));
    // Fewer regions than asked: done, even with a walk_end short of the end (kernel quirk).
    assert.equal(nextScanStart({ regions: regions(0, 8, 8, 12, 16, 8), walkEnd: 9n }, 0n, 100n, 4), 100n);
    // Full: from walk_end, or from the last region's end when walk_end lags behind it.
    assert.equal(nextScanStart({ regions: regions(0, 8, 8, 12, 16, 8), walkEnd: 40n }, 0n, 100n, 2), 40n);
    assert.equal(nextScanStart({ regions: regions(0, 8, 8, 12, 16, 8), walkEnd: 9n }, 0n, 100n, 2), 16n);
  });
});

describe('free ranges and smaps', { timeout: 30_000 }, () => {
  const vma = (start: bigint, end: bigint, path = ''): ReturnType<typeof parseMaps>[number] => ({
    start, end, read: true, write: true, exec: false, shared: false, offset: 0n, major: 0, minor: 0, inode: 0n, path, deleted: false,
  });

  it('takes the highest gap with a free page on each side', () => {
    const vmas = [vma(0x10000000n, 0x10001000n), vma(0x20000000n, 0x20001000n), vma(0x7ffffffde000n, 0x7ffffffff000n, '[stack]')];
    const at = freeRange(vmas, 8192)!;
    assert.equal(at % 4096n, 0n);
    // Below the stack's guard gap, above the second area with a page to spare.
    assert.ok(at + 8192n <= 0x7ffffffde000n - 256n * 4096n - 4096n);
    assert.ok(at >= 0x20001000n + 4096n);
    for (const v of vmas) assert.ok(at + 8192n + 4096n <= v.start || at >= v.end + 4096n, 'no neighbour within a page');
  });

  it('refuses gaps too small to keep a page free on each side', () => {
    // Only a 3-page hole between two areas, and nothing else free below USER_MAX.
    const vmas = [vma(0x10000n, 0x20000000n), vma(0x20003000n, 0x7ffffffff000n)];
    assert.equal(freeRange(vmas, 8192), undefined);
    assert.equal(freeRange(vmas, 4096), 0x20001000n);
  });

  it('keeps the guard gap below a growsdown area', () => {
    const vmas = [vma(0x10000n, 0x7f0000000000n), vma(0x7f0000200000n, 0x7f0000300000n), vma(0x7f0000301000n, 0x7ffffffff000n)];
    const flags = new Map([[0x7f0000200000n, ['rd', 'wr', 'gd']]]);
    assert.equal(freeRange(vmas, 4096), 0x7f00001fe000n, 'without VmFlags: right below the area, a page apart');
    assert.equal(freeRange(vmas, 4096, flags), 0x7f00000fe000n, 'a growsdown area keeps its 1 MiB guard gap free');
  });

  it('reads this process\'s layout and VmFlags from one smaps', () => {
    const { vmas, vmflags } = parseSmaps(readFileSync('/proc/self/smaps', 'utf8'));
    assert.ok(vmas.length > 10);
    assert.ok(vmas.every((v) => vmflags.has(v.start)));
    assert.ok(vmas.some((v) => v.path === '[vdso]'));
  });

  it('parses Cpus_allowed_list', () => {
    assert.deepEqual(parseCpuList('0-3,8,10-11\n'), [0, 1, 2, 3, 8, 10, 11]);
    assert.deepEqual(parseCpuList(''), []);
    assert.ok(parseStatus(readFileSync('/proc/self/status', 'utf8')).cpus.length >= 1);
  });
});

describe('imagePos', () => {
  it('takes any off_t an image gives, a 63-bit directory cookie too, and nothing beyond', () => {
    assert.equal(imagePos('0'), 0n);
    assert.equal(imagePos('348274370846604351'), 348274370846604351n);
    assert.equal(imagePos('9223372036854775807'), 2n ** 63n - 1n);
    assert.equal(imagePos(4096), 4096n);
    for (const bad of ['9223372036854775808', '-1', '1e3', '', ' 1', '0x10', 2 ** 53, -1, 1.5, null, undefined, {}]) {
      assert.equal(imagePos(bad), undefined, String(bad));
    }
  });
});

describe('pid namespaces', { timeout: 30_000 }, () => {
  it('reads the line of a process\'s pid namespaces up to the initial one, its own first', async () => {
    const own = pidNamespaceLine(process.pid);
    assert.ok(own !== undefined && own[0] === ownPidNamespace() && own.at(-1) === INITIAL_PID_NS, JSON.stringify(own));
    // A process in a pid namespace of its own, a child of ours: its line goes through ours;
    // ours does not hold its namespace.
    const outer = spawn('unshare', ['--pid', '--fork', '--kill-child', 'sleep', '30'], { stdio: 'ignore' });
    try {
      let inner: number | undefined;
      for (let i = 0; i < 200 && inner === undefined; i++) {
        await new Promise((r) => setTimeout(r, 10));
        try {
          const kids = readFileSync(`/proc/${outer.pid!}/task/${outer.pid!}/children`, 'utf8').trim();
          if (kids !== '' && readFileSync(`/proc/${kids.split(' ')[0]}/comm`, 'utf8').trim() === 'sleep') inner = Number(kids.split(' ')[0]);
        } catch { /* not yet */ }
      }
      assert.ok(inner !== undefined, 'the sleep in its own pid namespace');
      const line = pidNamespaceLine(inner);
      assert.ok(line !== undefined && line.length === own.length + 1, JSON.stringify(line));
      assert.deepEqual(line.slice(1), own);
      assert.notEqual(line[0], own[0]);
      assert.ok(!own.includes(line[0]!));
    } finally {
      outer.kill('SIGKILL');
    }
    assert.equal(pidNamespaceLine(2 ** 22 + 1), undefined, 'no such process');
  });
});
