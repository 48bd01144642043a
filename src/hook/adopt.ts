/**
 * Adopting a container's init that a runtime started as the restore stub, when ferry did not
 * start the runtime itself (an OCI hook): wait until the init runs the stub, seize it, and
 * give it a pidfd of ferry, through which every task pulls its files (pidfd_getfd(2)).
 *
 * Ferry's pid is not visible in the container's pid namespace, so the stub cannot open that
 * pidfd itself, and no descriptor of ferry existed when the runtime set up the container's
 * descriptors. The kernel makes one on the way in instead: the stub creates a socketpair with
 * SO_PASSPIDFD on one end (socket(7), Linux 6.5), ferry takes the other end with
 * pidfd_getfd(2) and sends one byte on it, and the stub's recvmsg(2) gets an SCM_PIDFD
 * control message: a pidfd of the sender, ferry, made by the kernel in the stub. Pidfds work
 * across pid namespaces. The pidfd is then moved above every descriptor of the image and
 * everything below it is closed, as `restoreContainer` does with the one runc passes.
 */
import { SYS, MAP_ANONYMOUS, MAP_PRIVATE, PROT_READ, PROT_WRITE, PAGE_SIZE, SOL_SOCKET } from '../arch/x86-64.js';
import { seizeStub } from '../container/restore.js';
import { enterTimeNamespace, type ContainerClocks } from '../container/clocks.js';
import { FerryError, describeCause } from '../errors.js';
import { native } from '../native/binding.js';
import { parseMaps } from '../proc/maps.js';
import { readProcText, startTimeOf } from '../proc/read.js';
import type { Tracee } from '../task/tracee.js';
import { STUB_DIR_IN_CONTAINER, STUB_IN_CONTAINER } from './spec.js';

/** Syscalls used here only (arch/x86/entry/syscalls/syscall_64.tbl). */
const NR = { recvmsg: 47, socketpair: 53, setsockopt: 54, rmdir: 84, unlink: 87, umount2: 166 } as const;
const AF_UNIX = 1, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0x80000;
/** SO_PASSPIDFD and SCM_PIDFD (<asm-generic/socket.h>, <linux/socket.h>): Linux 6.5. */
const SO_PASSPIDFD = 76, SCM_PIDFD = 4;
const MSG_DONTWAIT = 0x40, MSG_CMSG_CLOEXEC = 0x40000000;
const F_DUPFD_CLOEXEC = 1030;
const MNT_DETACH = 2;

/** /proc/PID/stat field 22 (start time): tells a pid reused by another process apart. */
export const startTime = startTimeOf;

/** Whether process `pid` has the restore stub mapped (its runtime has exec'd it). */
function runsStub(pid: number): boolean {
  try {
    return parseMaps(readProcText(pid, 'maps')).some((v) => v.path.endsWith('/ferry-stub'));
  } catch {
    return false;
  }
}

/**
 * Waits until the container's init `pid` (started at `started`, /proc stat time) runs the
 * stub: the runtime execs it only on `start`, which may come any time after `create`.
 * Resolves false if the init goes away first.
 */
export async function waitForStub(pid: number, started: string): Promise<boolean> {
  for (let delay = 2; ; delay = Math.min(delay * 2, 50)) {
    if (startTime(pid) !== started) return false;
    if (runsStub(pid)) return true;
    await new Promise((r) => setTimeout(r, delay));
  }
}

/**
 * Seizes the init `pid` of container `id` (it runs the stub), unmounts the stub's bind mount
 * from the container, and gives it a pidfd of ferry above `maxFd`, closing every descriptor
 * below. Returns that descriptor; the stub stays seized and stopped by the calling thread.
 */
export async function adoptStub(pid: number, id: string, maxFd: number, clocks?: ContainerClocks): Promise<number> {
  const stub = await seizeStub(pid, id);
  try {
    let fd: number;
    try {
      fd = handPidfd(stub, maxFd + 1);
    } catch (err) {
      throw new FerryError('ESPAWN', `container ${id}: cannot hand its init ${pid} a pidfd of ferry: ${describeCause(err)}`, { cause: err });
    }
    // Its clocks go on from the checkpoint (container/clocks.ts).
    if (clocks !== undefined) enterTimeNamespace(stub, pid, fd, clocks, id);
    return fd;
  } finally {
    stub.close();
  }
}

function handPidfd(stub: Tracee, top: number): number {
  const n = native();
  const page = stub.syscall(SYS.mmap, 0, PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  // Layout of the page: [0] int[2] of socketpair, [16] int 1, [32] msghdr, [96] iovec,
  // [128] one byte of data, [256] control buffer, [512..] paths.
  const at = (off: number): bigint => page + BigInt(off);
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  stub.writeMem(at(16), one);
  stub.syscall(NR.socketpair, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, at(0));
  const pair = stub.readMem(at(0), 8);
  const [mine, theirs] = [pair.readInt32LE(0), pair.readInt32LE(4)];
  stub.syscall(NR.setsockopt, mine, SOL_SOCKET, SO_PASSPIDFD, at(16), 4);

  // Ferry sends one byte through its copy of the other end: the kernel attaches its pid.
  const stubPidfd = n.pidfdOpen(stub.pid);
  try {
    const end = n.pidfdGetfd(stubPidfd, theirs);
    try {
      n.unixSend(end, Buffer.from('F'));
    } finally {
      n.closeFd(end);
    }
  } finally {
    n.closeFd(stubPidfd);
  }

  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(at(128), 0);
  iov.writeBigUInt64LE(1n, 8);
  stub.writeMem(at(96), iov);
  const msg = Buffer.alloc(56); // struct msghdr
  msg.writeBigUInt64LE(at(96), 16); // msg_iov
  msg.writeBigUInt64LE(1n, 24); // msg_iovlen
  msg.writeBigUInt64LE(at(256), 32); // msg_control
  msg.writeBigUInt64LE(64n, 40); // msg_controllen
  stub.writeMem(at(32), msg);
  stub.syscall(NR.recvmsg, mine, at(32), MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  const got = stub.readMem(at(32), 56);
  const cmsg = stub.readMem(at(256), 24); // cmsghdr { u64 len; i32 level; i32 type } + int
  if (got.readBigUInt64LE(40) < 20n || cmsg.readInt32LE(8) !== SOL_SOCKET || cmsg.readInt32LE(12) !== SCM_PIDFD) {
    throw new Error('recvmsg got no SCM_PIDFD (needs Linux 6.5 or later)');
  }
  const pidfd = cmsg.readInt32LE(16);
  const moved = Number(stub.syscall(SYS.fcntl, pidfd, F_DUPFD_CLOEXEC, top));
  stub.syscall(SYS.close_range, 0, moved - 1, 0);

  // The stub's bind mount and its mount point go: the restored container shows neither. The
  // stub's pages stay mapped (a detached mount lives on while it is in use).
  const path = (off: number, s: string): bigint => { stub.writeMem(at(off), Buffer.from(`${s}\0`)); return at(off); };
  stub.syscall(NR.umount2, path(512, STUB_IN_CONTAINER), MNT_DETACH);
  stub.trySyscall(NR.unlink, path(1024, STUB_IN_CONTAINER));
  stub.trySyscall(NR.rmdir, path(1536, STUB_DIR_IN_CONTAINER));
  stub.syscall(SYS.munmap, page, PAGE_SIZE);
  return moved;
}
