// One injected round trip for a whole batch of syscalls ("the program", below), and the
// ptrace helpers inject.cc shares with it (inject.h).
//
// Wraps PTRACE_SETREGS/GETREGS, PTRACE_CONT, PTRACE_INTERRUPT, waitpid(2), pwrite(2) to
// /proc/TID/mem, process_vm_writev(2)/process_vm_readv(2), nanosleep(2).
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vector>

#include "inject.h"
#include "wait.h"

namespace ferry {
namespace inject {

long Ptrace(long req, pid_t tid, void* addr, void* data) {
  return syscall(SYS_ptrace, req, tid, addr, data);
}

bool WaitStop(pid_t tid, int* status, const char** what) {
  if (WaitBounded(tid, status, 0, kWaitTimeoutMs) < 0) {
    *what = errno == ESRCH ? "injected syscall (task exited)" : "waitpid";
    return false;
  }
  if (!WIFSTOPPED(*status)) {
    errno = ESRCH;  // the task died under us
    *what = "injected syscall (task exited)";
    return false;
  }
  return true;
}

bool ReadRemote(pid_t tid, uint64_t addr, void* buf, size_t len) {
  struct iovec local = {buf, len};
  struct iovec remote = {reinterpret_cast<void*>(addr), len};
  ssize_t got = process_vm_readv(tid, &local, 1, &remote, 1, 0);
  if (got == static_cast<ssize_t>(len)) return true;
  if (got >= 0) errno = EFAULT;
  return false;
}

int PassOn(int status) {
  int sig = WSTOPSIG(status);
  if ((status >> 16) != 0 || sig == (SIGTRAP | 0x80) || sig == SIGTRAP) return 0;
  return sig;
}

namespace {

// The calls [at, at+count) of a seized batch can run without a ptrace stop each: a small
// position-independent program (kBlobCode below: this file's own bytes, assembled from
// the listing beside it) is written into an area the batch's earlier calls mapped PROT_READ|
// PROT_EXEC (through /proc/TID/mem, which writes a read-only page by breaking its COW; MDWE,
// PR_SET_MDWE, allows a fresh r-x anonymous mapping), the task is resumed with PTRACE_CONT at
// its first byte and runs the table of calls [nr, a0..a5] one after another, storing each
// result in a writable `work` region. Then it writes 1 into the work region's first word
// ("done") and waits in ppoll(NULL, 0, {T s}) with every signal still blocked. Ferry polls
// that word (process_vm_readv), then PTRACE_INTERRUPT: the ppoll returns -ERESTARTNOHAND into
// a PTRACE_EVENT_STOP, ferry checks the task stopped right after that `syscall` (so none of
// the program's own ending ran), reads the results, and the batch goes on as in kSeized.
// ppoll, not nanosleep: an interrupted nanosleep sets current->restart_block, which would
// replace the one the task's own interrupted nanosleep (or poll, futex...) left there and
// restart *ferry's* sleep when the task is let go; ppoll's -ERESTARTNOHAND needs none.
//
// If ferry dies instead, the kernel detaches the task (exit_ptrace; a pending interrupt trap
// is cancelled by __ptrace_unlink and an interrupted ppoll restarts on its own with the time
// left, which ppoll wrote back). After T seconds the program puts the task back by itself:
//   - rflags from the saved set (popfq, on the work region's own stack; from here on only
//     mov, lea, syscall and jmp run, none of which changes a flag, and a syscall returns
//     with the flags it was entered with);
//   - munmap of ferry's scratch area (the data area; the code area, which it runs from,
//     stays: one r-x page or two at an address that was free, holding ferry's copy of the
//     task's registers);
//   - rsp = the saved rsp, then rt_sigprocmask(SIG_SETMASK, the saved mask): a signal that
//     became deliverable is delivered there, its frame on the task's own stack below the red
//     zone as for any signal, its handler seeing rip inside this program; it returns into it;
//   - every general register from the saved set, then `jmp [saved rip]`. The saved set has the
//     kernel's syscall-restart fix-up applied first (arch_do_signal_or_restart: a task seized
//     inside a syscall that returned -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND re-executes
//     it, rip -= 2 and rax = orig_rax; -ERESTART_RESTARTBLOCK goes through restart_syscall,
//     whose restart_block is the task's own: ppoll left it alone). That is what the kernel
//     would have done had the task been let go from its stop with no signal to deliver.
//   One difference remains: a signal queued while the tree was frozen, with a handler, for a
//   task seized in a syscall that such a handler ends with EINTR (pause, sigsuspend, a read
//   without SA_RESTART): the handler runs, then the syscall restarts instead of returning
//   EINTR. Only when ferry dies inside this batch.
// Never used when the saved rflags has TF (a task single-stepping itself would trap inside
// this program) or the task runs 32-bit code. The program needs no trap, no breakpoint and
// no signal to end: nothing the kernel forces on the task (a forced SIGTRAP/SIGILL resets a
// blocked or ignored handler, force_sig_info_to_task).
//
// If ferry is alive but too slow (more than T s between the "done" word and its interrupt):
// the task has begun putting itself back; ferry sees a stop outside [entry, after_ppoll],
// lets it run out of the code area, and fails the batch without touching its registers or
// mask (the task is as it was; the caller reports the error and lets the tree go).
//
// Listing (intel syntax; rbx = table, rbp = results, r12 = count, r13 = work, set by ferry):
//   0x00 loop: test r12,r12; jz done; mov rax,[rbx]; mov rdi,[rbx+8]; mov rsi,[rbx+16];
//        mov rdx,[rbx+24]; mov r10,[rbx+32]; mov r8,[rbx+40]; mov r9,[rbx+48]; syscall;
//        mov [rbp],rax; add rbx,56; add rbp,8; dec r12; jmp loop
//   0x33 done: mov qword [r13],1; ppoll(rdi=0, rsi=0, rdx=r13+8, r10=0, r8=8)
//   0x53 after: mov qword [r13],2; lea rsp,[r13+64]; push [rip->flags]; popfq;
//        munmap([unmap_addr], [unmap_len]); mov rsp,[saved rsp];
//        rt_sigprocmask(SIG_SETMASK, &mask, NULL, 8);
//        mov each of rax rbx rcx rdx rsi rdi rbp r8..r15 from its slot; jmp [saved rip]
// The slots are 8 bytes each from kBlobSlots: flags, unmap_addr, unmap_len, rsp, mask, rip,
// then rax rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15. The work region (in ferry's
// writable scratch area, written with process_vm_writev): [0] the state word (0 running, 1
// done, 2 putting back), [8] the ppoll timespec, [24, 64) the popfq stack, [64] the results
// (8 bytes a call), then the table (56 bytes a call). Only the one code page is written
// through /proc/TID/mem (a forced write breaks COW page by page: ~50 us a page measured here).
const uint8_t kBlobCode[] = {
    0x4d, 0x85, 0xe4, 0x74, 0x2e, 0x48, 0x8b, 0x03, 0x48, 0x8b, 0x7b, 0x08,
    0x48, 0x8b, 0x73, 0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20,
    0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, 0x30, 0x0f, 0x05, 0x48, 0x89,
    0x45, 0x00, 0x48, 0x83, 0xc3, 0x38, 0x48, 0x83, 0xc5, 0x08, 0x49, 0xff,
    0xcc, 0xeb, 0xcd, 0x49, 0xc7, 0x45, 0x00, 0x01, 0x00, 0x00, 0x00, 0xb8,
    0x0f, 0x01, 0x00, 0x00, 0x31, 0xff, 0x31, 0xf6, 0x49, 0x8d, 0x55, 0x08,
    0x45, 0x31, 0xd2, 0x41, 0xb8, 0x08, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x49,
    0xc7, 0x45, 0x00, 0x02, 0x00, 0x00, 0x00, 0x49, 0x8d, 0x65, 0x40, 0xff,
    0x35, 0x9b, 0x03, 0x00, 0x00, 0x9d, 0xb8, 0x0b, 0x00, 0x00, 0x00, 0x48,
    0x8b, 0x3d, 0x96, 0x03, 0x00, 0x00, 0x48, 0x8b, 0x35, 0x97, 0x03, 0x00,
    0x00, 0x0f, 0x05, 0x48, 0x8b, 0x25, 0x96, 0x03, 0x00, 0x00, 0xb8, 0x0e,
    0x00, 0x00, 0x00, 0xbf, 0x02, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x8d,
    0x03, 0x00, 0x00, 0xba, 0x00, 0x00, 0x00, 0x00, 0x41, 0xba, 0x08, 0x00,
    0x00, 0x00, 0x0f, 0x05, 0x48, 0x8b, 0x05, 0x89, 0x03, 0x00, 0x00, 0x48,
    0x8b, 0x1d, 0x8a, 0x03, 0x00, 0x00, 0x48, 0x8b, 0x0d, 0x8b, 0x03, 0x00,
    0x00, 0x48, 0x8b, 0x15, 0x8c, 0x03, 0x00, 0x00, 0x48, 0x8b, 0x35, 0x8d,
    0x03, 0x00, 0x00, 0x48, 0x8b, 0x3d, 0x8e, 0x03, 0x00, 0x00, 0x48, 0x8b,
    0x2d, 0x8f, 0x03, 0x00, 0x00, 0x4c, 0x8b, 0x05, 0x90, 0x03, 0x00, 0x00,
    0x4c, 0x8b, 0x0d, 0x91, 0x03, 0x00, 0x00, 0x4c, 0x8b, 0x15, 0x92, 0x03,
    0x00, 0x00, 0x4c, 0x8b, 0x1d, 0x93, 0x03, 0x00, 0x00, 0x4c, 0x8b, 0x25,
    0x94, 0x03, 0x00, 0x00, 0x4c, 0x8b, 0x2d, 0x95, 0x03, 0x00, 0x00, 0x4c,
    0x8b, 0x35, 0x96, 0x03, 0x00, 0x00, 0x4c, 0x8b, 0x3d, 0x97, 0x03, 0x00,
    0x00, 0xff, 0x25, 0x19, 0x03, 0x00, 0x00
};
constexpr uint64_t kBlobAfterPpoll = 0x53;
constexpr size_t kBlobSlots = 0x400;
constexpr size_t kBlobWorkHead = 64;
constexpr uint64_t kTrapFlag = 0x100;
constexpr uint64_t kUserCs64 = 0x33;

// Bytes of the code area (one page), and of the work region a program of `count` calls needs.
size_t BlobCodeLen() { return 4096; }
size_t BlobWorkLen(size_t count) { return kBlobWorkHead + count * 8 + count * 7 * 8; }

// Writes `len` bytes at `addr` of the task through /proc/TID/mem (FOLL_FORCE: r-x pages too).
bool WriteForce(pid_t tid, uint64_t addr, const void* data, size_t len) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/mem", tid);
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < len) {
    ssize_t w = pwrite(fd, static_cast<const uint8_t*>(data) + done, len - done, static_cast<off_t>(addr + done));
    if (w <= 0) {
      if (w == 0) errno = EIO;
      close(fd);
      return false;
    }
    done += static_cast<size_t>(w);
  }
  close(fd);
  return true;
}

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// While the program runs, a stop may come (SIGSTOP cannot be blocked; a group-stop): pass it
// on and resume, as ToSyscallStop does. False with errno ESRCH when the task died.
bool ResumeStops(pid_t tid, const char** what) {
  for (;;) {
    int status;
    pid_t r = waitpid(tid, &status, WNOHANG | __WALL);
    if (r == 0) return true;
    if (r < 0) {
      if (errno == EINTR) continue;
      *what = "waitpid";
      return false;
    }
    if (!WIFSTOPPED(status)) {
      errno = ESRCH;
      *what = "injected syscall (task exited)";
      return false;
    }
    if (Ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(PassOn(status)))) < 0) {
      *what = "ptrace(PTRACE_CONT)";
      return false;
    }
  }
}

// PTRACE_INTERRUPT, then the PTRACE_EVENT_STOP it brings (passing other stops on).
bool InterruptToStop(pid_t tid, const char** what) {
  if (Ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0) {
    *what = "ptrace(PTRACE_INTERRUPT)";
    return false;
  }
  for (int attempt = 0; attempt < 32; attempt++) {
    int status;
    if (!WaitStop(tid, &status, what)) return false;
    if ((status >> 16) == PTRACE_EVENT_STOP) return true;
    if (Ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(PassOn(status)))) < 0) {
      *what = "ptrace(PTRACE_CONT)";
      return false;
    }
  }
  errno = EAGAIN;
  *what = "injected syscall (the task does not stop again)";
  return false;
}

}  // namespace

BlobResult RunBlob(pid_t tid, const struct user_regs_struct& saved, uint64_t mask, const uint64_t* calls,
                   size_t count, BatchOptions& o, int64_t* out, const char** what) {
  // Not for a task single-stepping itself (TF), nor one in 32-bit mode (cs other than
  // __USER_CS: the program is 64-bit code, and its restart numbers would be wrong).
  if ((saved.eflags & kTrapFlag) != 0 || saved.cs != kUserCs64 || o.blob_code_len < BlobCodeLen() ||
      o.blob_work_len < BlobWorkLen(count)) {
    return kBlobSkipped;
  }
  // The code area: program and slots (read-only to the task: the program only loads them).
  uint8_t code[kBlobSlots + 21 * 8] = {};
  memcpy(code, kBlobCode, sizeof(kBlobCode));
  struct user_regs_struct back = saved;
  // The kernel's syscall-restart fix-up (arch_do_signal_or_restart, no handler to run).
  if (static_cast<int64_t>(saved.orig_rax) >= 0) {
    int64_t ax = static_cast<int64_t>(saved.rax);
    if (ax == -512 || ax == -513 || ax == -514) {  // ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
      back.rip -= 2;
      back.rax = saved.orig_rax;
    } else if (ax == -516) {  // ERESTART_RESTARTBLOCK
      back.rip -= 2;
      back.rax = SYS_restart_syscall;
    }
  }
  const uint64_t slots[] = {back.eflags, o.blob_unmap, o.blob_unmap_len, back.rsp, mask, back.rip,
                            back.rax, back.rbx, back.rcx, back.rdx, back.rsi, back.rdi, back.rbp,
                            back.r8, back.r9, back.r10, back.r11, back.r12, back.r13, back.r14, back.r15};
  static_assert(sizeof(slots) == 21 * 8, "slots");
  memcpy(code + kBlobSlots, slots, sizeof(slots));
  // The work region: state word, ppoll timespec, stack slot, results, table.
  std::vector<uint64_t> work(BlobWorkLen(count) / 8, 0);
  work[1] = static_cast<uint64_t>(o.blob_wait_s);
  memcpy(work.data() + (kBlobWorkHead + count * 8) / 8, calls, count * 7 * 8);
  bool w1 = WriteForce(tid, o.blob_code, code, sizeof(code));
  struct iovec local = {work.data(), work.size() * 8};
  struct iovec remote = {reinterpret_cast<void*>(o.blob_work), work.size() * 8};
  bool w2 = w1 && process_vm_writev(tid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(work.size() * 8);
  // Nothing ran in the task yet: if the program or its table cannot be written (a kernel that
  // refuses forced writes to /proc/PID/mem: proc_mem.force_override=never), the calls go one
  // by one.
  if (!w2) return kBlobSkipped;
  struct user_regs_struct r = saved;
  r.rip = o.blob_code;
  r.orig_rax = static_cast<uint64_t>(-1);
  r.rbx = o.blob_work + kBlobWorkHead + count * 8;
  r.rbp = o.blob_work + kBlobWorkHead;
  r.r12 = count;
  r.r13 = o.blob_work;
  r.rsp = o.blob_work + kBlobWorkHead;
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &r) < 0) {
    *what = "ptrace(PTRACE_SETREGS)";
    return kBlobFailed;
  }
  if (Ptrace(PTRACE_CONT, tid, nullptr, nullptr) < 0) {
    *what = "ptrace(PTRACE_CONT)";
    return kBlobFailed;
  }
  // From here until the task is seen stopped inside the calls or the ppoll, it may be anywhere
  // in the program: a failure leaves its memory alone (BatchOptions.blob_loose).
  o.blob_loose = true;
  // Poll the state word, sleeping 20 us between two reads for 2 ms, then in growing steps: the
  // task may have been woken onto this CPU (wake-affine; this thread may be pinned), and a
  // sleep lets it run where a spin (even with sched_yield) held it off, measured here: a
  // batch of 78 calls runs in ~90 us natively, and its round trip took 150-600 us spinning,
  // 190-300 us sleeping. Bounded: a program that never finishes is interrupted where it is.
  const int64_t start = NowNs();
  long sleep_ns = 20000;
  uint64_t state = 0;
  for (;;) {
    if (!ReadRemote(tid, o.blob_work, &state, sizeof(state)) || state != 0) break;
    if (!ResumeStops(tid, what)) return kBlobFailed;
    int64_t now = NowNs();
    if (now - start > static_cast<int64_t>(kWaitTimeoutMs) * 1000000) break;
    struct timespec ts = {0, now - start < 2000000 ? 20000 : sleep_ns};
    nanosleep(&ts, nullptr);
    if (now - start >= 2000000 && sleep_ns < 1000000) sleep_ns *= 2;
  }
  if (o.on_blob_wait) o.on_blob_wait();
  if (!InterruptToStop(tid, what)) return kBlobFailed;
  struct user_regs_struct at;
  if (Ptrace(PTRACE_GETREGS, tid, nullptr, &at) < 0) {
    *what = "ptrace(PTRACE_GETREGS)";
    return kBlobFailed;
  }
  if (at.rip >= o.blob_code && at.rip <= o.blob_code + kBlobAfterPpoll) {
    // Stopped inside the calls or in the final ppoll: nothing of the ending ran, and the
    // caller puts the registers and mask back from this stop.
    o.blob_loose = false;
    if (state != 1) {
      errno = ETIMEDOUT;
      *what = "injected program (its calls did not finish, or its state word could not be read)";
      return kBlobFailed;
    }
    if (!ReadRemote(tid, o.blob_work + kBlobWorkHead, out, count * 8)) {
      *what = "process_vm_readv (results of the injected program)";
      return kBlobFailed;
    }
    return kBlobDone;
  }
  // Too late: the program is putting the task back (or has). Let it leave the code area.
  for (int attempt = 0; attempt < 1000 && at.rip >= o.blob_code && at.rip < o.blob_code + o.blob_code_len; attempt++) {
    if (Ptrace(PTRACE_CONT, tid, nullptr, nullptr) < 0) {
      *what = "ptrace(PTRACE_CONT)";
      return kBlobFailed;
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, nullptr);
    if (!InterruptToStop(tid, what)) return kBlobFailed;
    if (Ptrace(PTRACE_GETREGS, tid, nullptr, &at) < 0) {
      *what = "ptrace(PTRACE_GETREGS)";
      return kBlobFailed;
    }
  }
  errno = ETIMEDOUT;
  *what = "injected program (ferry came back after its wait ended: the task put itself back)";
  return kBlobSelfRestored;
}

}  // namespace inject
}  // namespace ferry
