/**
 * Restore onto another kernel build's vDSO (src/restore/vdso.ts), with build/workloads/
 * vdsocalls, which calls clock_gettime, gettimeofday, time, clock_getres and sched_getcpu
 * through the addresses glibc took from its vDSO at start. This machine has one kernel, so
 * "another build" is the image's vdso.bin edited: bytes that differ outside the functions (the
 * .comment section) make the restore proxy the image's vDSO, as a kernel upgrade would; a
 * function renamed is one this kernel's vDSO lacks. (The proxy's mapping of moved functions
 * by name is tested on a vDSO with its symbols moved, in test/unit/vdso.test.ts.)
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { needs, WORKLOADS } from '../helpers/env.js';
import { bytes, editImage, json } from '../helpers/images.js';
import { alive, checkpointFreed, cleanup, ferry, own, startWorkload, verify } from '../helpers/processes.js';
import { parseMaps } from '../../src/proc/maps.js';

const skip = needs('root', 'build');
after(cleanup);

const VDSOCALLS = join(WORKLOADS, 'vdsocalls');

/** The bytes of an ELF section by name (the vDSO has section headers). */
function section(elf: Buffer, name: string): { offset: number; size: number } {
  const shoff = Number(elf.readBigUInt64LE(40)), shentsize = elf.readUInt16LE(58), shnum = elf.readUInt16LE(60), shstrndx = elf.readUInt16LE(62);
  const at = (i: number): { name: number; offset: number; size: number } => {
    const sh = shoff + i * shentsize;
    return { name: elf.readUInt32LE(sh), offset: Number(elf.readBigUInt64LE(sh + 24)), size: Number(elf.readBigUInt64LE(sh + 32)) };
  };
  const names = at(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const s = at(i);
    const end = elf.indexOf(0, names.offset + s.name);
    if (elf.toString('latin1', names.offset + s.name, end) === name) return s;
  }
  throw new Error(`no section ${name}`);
}

/**
 * `src` as another kernel build would have made it: its vdso.bin changed by `change`, and the
 * manifest's host naming another kernel release with that vDSO's sha256.
 */
async function otherKernel(src: string, dst: string, change: (b: Buffer) => Buffer): Promise<void> {
  let made: Buffer | undefined;
  await editImage(src, dst, [
    ['vdso.bin', bytes((b) => (made = change(b)))],
    ['manifest.json', json<{ host: { kernelRelease: string; kernelVersion: string; vdsoSha256: string } }>((m) => {
      m.host.kernelRelease = '6.18.0-another-build';
      m.host.kernelVersion = '#1 SMP PREEMPT_DYNAMIC (another build)';
      m.host.vdsoSha256 = createHash('sha256').update(made!).digest('hex');
    })],
  ]);
}

describe('a vDSO of another kernel build', { skip, timeout: 120_000 }, () => {
  it('is proxied: the image\'s vDSO stays where it was, its functions jump into this kernel\'s; every call works on', async () => {
    const w = await startWorkload(VDSOCALLS, []);
    const image = join(w.dir, 'vdso.tar');
    const vdsoWas = parseMaps(readFileSync(`/proc/${w.pid}/maps`, 'utf8')).find((v) => v.path === '[vdso]')!;
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'other-kernel.tar');
    await otherKernel(image, edited, (b) => {
      const c = Buffer.from(b);
      const comment = section(c, '.comment');
      c.fill(0x2a, comment.offset, comment.offset + comment.size); // another build's compiler string
      return c;
    });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    const maps = parseMaps(readFileSync(`/proc/${w.pid}/maps`, 'utf8'));
    const vdso = maps.find((v) => v.path === '[vdso]')!;
    assert.notEqual(vdso.start, vdsoWas.start, 'this kernel\'s vDSO lives elsewhere');
    const proxy = maps.find((v) => v.start === vdsoWas.start)!;
    assert.ok(proxy !== undefined && proxy.path === '' && proxy.read && proxy.exec && !proxy.write, `the proxy is where the vDSO was: ${proxy?.path} r${proxy?.read} w${proxy?.write} x${proxy?.exec}`);
    assert.ok(maps.some((v) => v.path.startsWith('[vvar') && v.end === vdso.start), 'its data pages went with it');
    const n = w.ticks().length;
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(w.ticks().length > n, 'it counts on');
    assert.equal(await verify(w), 'PASS');
  });

  it('lacking a function the image\'s vDSO has: refused naming it, nothing left', async () => {
    const w = await startWorkload(VDSOCALLS, []);
    const image = join(w.dir, 'vdso.tar');
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'renamed.tar');
    await otherKernel(image, edited, (b) => {
      const c = Buffer.from(b);
      const at = c.indexOf('__vdso_time\0', section(c, '.dynstr').offset, 'latin1');
      c.write('__vdso_tima', at, 'latin1');
      return c;
    });
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.equal(rs.stderr, 'ferry restore: the image\'s vDSO has __vdso_tima, which this kernel\'s vDSO lacks: restore on a kernel that has it\n');
    assert.ok(!alive(w.pid), 'nothing was left running');
  });

  it('a vdso.bin that is not the vDSO its manifest names is refused; an older image without one needs the same kernel', async () => {
    const w = await startWorkload(VDSOCALLS, []);
    const image = join(w.dir, 'vdso.tar');
    await checkpointFreed(w, image);
    const mismatched = join(w.dir, 'mismatched.tar');
    await editImage(image, mismatched, { 'vdso.bin': bytes((b) => Buffer.from(b).fill(0x2a, b.length - 16)) });
    let rs = ferry(['restore', '--image', mismatched, '--max-creds', 'root']);
    assert.equal(rs.stderr, `ferry restore: image ${mismatched}: vdso.bin is not the vDSO the manifest names (host.vdsoSha256)\n`);
    // An image of an older ferry (no vdso.bin) from another kernel: the old rule.
    const older = join(w.dir, 'older.tar');
    await editImage(image, older, [
      ['manifest.json', json<{ host: { kernelRelease: string } }>((m) => { m.host.kernelRelease = '6.18.0-another-build'; })],
    ], { drop: ['vdso.bin'] });
    rs = ferry(['restore', '--image', older, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.match(rs.stderr, /image was made on kernel 6\.18\.0-another-build .*: an image without its kernel's vDSO \(vdso\.bin: older ferry versions did not write it\) needs the same kernel build/);
    assert.ok(!alive(w.pid));
  });

  it('an edited vdso.bin that is no ELF is refused with one line', async () => {
    const w = await startWorkload(VDSOCALLS, []);
    const image = join(w.dir, 'vdso.tar');
    await checkpointFreed(w, image);
    const edited = join(w.dir, 'garbage.tar');
    await otherKernel(image, edited, (b) => Buffer.alloc(b.length, 0x41));
    const rs = ferry(['restore', '--image', edited, '--max-creds', 'root']);
    assert.equal(rs.code, 1);
    assert.equal(rs.stderr, `ferry restore: image ${edited}: vdso.bin is not a vDSO this ferry can read (not a 64-bit little-endian ELF)\n`);
    assert.ok(!alive(w.pid));
  });
});

describe('a process that unmapped its vDSO', { skip, timeout: 120_000 }, () => {
  const NOVDSO = join(WORKLOADS, 'novdso');
  const vdsoOf = (pid: number): boolean => parseMaps(readFileSync(`/proc/${pid}/maps`, 'utf8')).some((v) => v.path === '[vdso]');

  it('is checkpointed through a syscall of its own code and comes back without one, twice', async () => {
    const w = await startWorkload(NOVDSO, []);
    const image = join(w.dir, 'novdso.tar');
    await checkpointFreed(w, image);
    let rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(vdsoOf(w.pid), false, 'no [vdso] after restore');
    // The restored copy is checkpointed again: injection finds no vDSO there either.
    await checkpointFreed({ pid: w.pid, exited: Promise.resolve() }, image, 'second checkpoint');
    rs = ferry(['restore', '--image', image]);
    assert.equal(rs.code, 0, rs.stderr);
    own(w.pid);
    assert.equal(await verify(w), 'PASS', w.text());
  });

  it('--leave-running leaves it as it was', async () => {
    const w = await startWorkload(NOVDSO, []);
    const cp = ferry(['checkpoint', '--pid', String(w.pid), '--image', join(w.dir, 'lr.tar'), '--leave-running']);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(alive(w.pid));
    assert.equal(vdsoOf(w.pid), false);
    assert.equal(await verify(w), 'PASS', w.text());
  });
});
