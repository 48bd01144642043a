// Syscall injection into a ptrace-stopped task: through a `syscall` instruction the task has,
// call by call, or (native/inject-blob.cc) through a small program written into an r-x page
// ferry maps in it for one batch.
//
// Wraps PTRACE_GETREGS/SETREGS, PTRACE_SINGLESTEP, PTRACE_SYSCALL, PTRACE_GET_SYSCALL_INFO,
// PTRACE_GETSIGMASK/SETSIGMASK, PTRACE_INTERRUPT, PTRACE_CONT and waitpid(2),
// pidfd_getfd(2) within a batch (BatchOptions::take_at), and sched_getaffinity(2) /
// sched_setaffinity(2) / sched_getcpu(3) on ferry's own calling thread (and a read of
// /proc/loadavg to decide whether to pin it); the one-round-trip batch (inject-blob.cc) wraps
// its own. The tracee's
// registers are pointed at an existing `syscall` instruction (one in its [vdso], or in a
// gadget page restore maps), with rax = number and rdi, rsi, rdx, r10, r8, r9 = arguments,
// and orig_rax = -1 so the kernel's syscall-restart logic (arch_do_signal_or_restart) does
// not rewind rip when the task leaves its current stop. Afterwards the saved registers are
// put back, so the task's own interrupted syscall (if any) still restarts normally when it
// finally resumes.
//
// Two modes, because the two kinds of tracee need different things:
//
// kStep (restore stubs, traced with PTRACE_TRACEME and PTRACE_O_EXITKILL: if ferry dies they
// die, which is what a half-built restore needs). One PTRACE_SINGLESTEP runs exactly the
// syscall; the kernel reports the single-step trap (SIGTRAP) on the way back to user mode,
// where rax holds the result. The task is left in that SIGTRAP signal-delivery-stop, inside
// get_signal(), so when it is finally let go the kernel's restart logic runs on the registers
// restore gave it. Callers keep the stub's signals blocked.
//
// kSeized (a live task being checkpointed, PTRACE_SEIZE without EXITKILL): everything is
// arranged so that if ferry vanishes at any moment outside the few microseconds of one
// injected call, the kernel lets the task go exactly as it was (exit_ptrace() detaches every
// tracee of a dying tracer). A single-step would leave TF set and a SIGTRAP as the stop's
// exit code: a tracer's death then delivers that SIGTRAP and kills the task. A forced
// SIGTRAP also resets a blocked or ignored SIGTRAP's disposition to SIG_DFL
// (force_sig_info_to_task). So this mode:
//   1. blocks every signal (PTRACE_SETSIGMASK), so the resumes below dequeue none;
//   2. runs each call with two PTRACE_SYSCALL resumes: syscall-enter-stop, then
//      syscall-exit-stop, where rax holds the result. These are ptrace notifications, not
//      signals; their exit code (SIGTRAP|0x80 with PTRACE_O_TRACESYSGOOD, which the seize
//      sets) is not a valid signal, so if the tracer dies here nothing is delivered;
//   3. puts the saved registers back, then PTRACE_INTERRUPT + PTRACE_CONT: the task leaves the
//      syscall-exit-stop and, before it reaches user mode, traps into a PTRACE_EVENT_STOP
//      inside get_signal(), the very kind of stop the seize left it in (a group-stop's, if
//      it was stopped). A jobctl trap's exit code is never delivered as a signal;
//   4. puts the signal mask back.
// Between two calls of this function the task therefore holds nothing of ferry's: no
// register, no trap flag, no signal mask, no pending SIGTRAP. The window that remains is
// steps 1-4 themselves (tens of microseconds per call, measured in docs/architecture.md):
// a tracer that dies inside it leaves the task with ferry's registers (it runs on from the
// gadget and crashes) or with every signal blocked.
//
// Other stops seen meanwhile (a group-stop, SIGSTOP which cannot be blocked) are passed on
// and the step is retried if the syscall had not run yet.
//
// A batch is the unit: steps 1, 3 and 4 are paid once per batch, and the calls of a batch are
// chained from one syscall-exit-stop to the next syscall-enter-stop without going back to the
// PTRACE_EVENT_STOP in between. So a caller runs all of a task's calls in one batch, which
// needs two things from this file: a guard (the first `guard` calls must succeed, else the
// rest are not run: a scratch mmap(MAP_FIXED_NOREPLACE) that failed must not be written to),
// and a read-back of the task's memory at a given point of the batch (the results the calls
// left in the scratch area, read before the batch's last calls unmap it). Every ptrace request
// and every stop costs: per call, seized mode makes four requests (SETREGS, two SYSCALL, one
// GET_SYSCALL_INFO at the exit stop, which also carries the result) and two stops.
//
// Where the two run: each stop is a wake-up of ferry by the tracee and each resume one of the
// tracee by ferry. Across two CPUs every one of them is a cross-CPU wake-up (an IPI, and on a
// VM an idle vCPU woken through the hypervisor): measured here, 55 us per call unpinned, 120
// us with tracer and tracee on different CPUs, 18-22 us on one. So a batch runs with ferry's
// calling thread pinned to the CPU it is on (PinHere); the tracee, woken by ferry's thread
// with its CPU busy and its own previous CPU elsewhere, is placed on the waker's CPU
// (wake-affine) and stays there for the batch. Only ferry's own thread's affinity changes,
// and it is put back after the batch: nothing of the tracee's (its affinity mask included).
// On a machine busier than its CPUs the two are placed together anyway, and a pinned ferry
// would only share its CPU with a third task: then nothing is pinned (PinHere).
#include <napi.h>

#include <functional>
#include <vector>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errors.h"
#include "inject.h"
#include "wait.h"

namespace ferry {
namespace {

enum Mode : int64_t { kStep = 0, kSeized = 1 };

using namespace inject;

void SetCall(struct user_regs_struct* r, uint64_t gadget, const uint64_t call[7]) {
  r->rip = gadget;
  r->rax = call[0];
  r->orig_rax = static_cast<uint64_t>(-1);
  r->rdi = call[1];
  r->rsi = call[2];
  r->rdx = call[3];
  r->r10 = call[4];
  r->r8 = call[5];
  r->r9 = call[6];
}

// kStep: runs one syscall with PTRACE_SINGLESTEP. `saved` holds the registers to run from.
bool RunStep(pid_t tid, const struct user_regs_struct& saved, uint64_t gadget, const uint64_t call[7],
             int64_t* result, const char** what) {
  struct user_regs_struct r = saved;
  SetCall(&r, gadget, call);
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &r) < 0) {
    *what = "ptrace(PTRACE_SETREGS)";
    return false;
  }
  for (int attempt = 0; attempt < 32; attempt++) {
    if (Ptrace(PTRACE_SINGLESTEP, tid, nullptr, nullptr) < 0) {
      *what = "ptrace(PTRACE_SINGLESTEP)";
      return false;
    }
    int status;
    if (!WaitStop(tid, &status, what)) return false;
    struct user_regs_struct after;
    if (Ptrace(PTRACE_GETREGS, tid, nullptr, &after) < 0) {
      *what = "ptrace(PTRACE_GETREGS)";
      return false;
    }
    if (after.rip == gadget + 2) {  // `syscall` is two bytes: it ran.
      *result = static_cast<int64_t>(after.rax);
      return true;
    }
    if (after.rip != gadget) {
      errno = EFAULT;
      *what = "injected syscall (tracee left the gadget)";
      return false;
    }
    // A stop before the syscall ran (group-stop, an unblockable signal): step again.
  }
  errno = EAGAIN;
  *what = "injected syscall (too many stops)";
  return false;
}

// kSeized: resumes with PTRACE_SYSCALL until the next syscall-stop. At the syscall-exit-stop
// (`exit`), PTRACE_GET_SYSCALL_INFO confirms it is one and gives the result (`*rval`); the
// enter-stop before it is not asked (from a PTRACE_EVENT_STOP or a syscall-exit-stop the next
// syscall-stop can only be an entry; a wrong one shows at the exit, where op must be EXIT).
bool ToSyscallStop(pid_t tid, bool exit, int64_t* rval, const char** what) {
  int sig = 0;
  for (int attempt = 0; attempt < 32; attempt++) {
    if (Ptrace(PTRACE_SYSCALL, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0) {
      *what = "ptrace(PTRACE_SYSCALL)";
      return false;
    }
    int status;
    if (!WaitStop(tid, &status, what)) return false;
    sig = PassOn(status);
    if (WSTOPSIG(status) != (SIGTRAP | 0x80)) continue;  // a group-stop or a signal: again
    if (!exit) return true;
    struct __ptrace_syscall_info si = {};
    if (Ptrace(PTRACE_GET_SYSCALL_INFO, tid, reinterpret_cast<void*>(sizeof(si)), &si) < 0) {
      *what = "ptrace(PTRACE_GET_SYSCALL_INFO)";
      return false;
    }
    if (si.op == PTRACE_SYSCALL_INFO_EXIT) {
      *rval = si.exit.rval;
      return true;
    }
    errno = EPROTO;
    *what = "injected syscall (unexpected syscall-stop)";
    return false;
  }
  errno = EAGAIN;
  *what = "injected syscall (too many stops)";
  return false;
}

// kSeized: runs one syscall through a syscall-enter-stop and a syscall-exit-stop.
bool RunSyscall(pid_t tid, const struct user_regs_struct& saved, uint64_t gadget, const uint64_t call[7],
                int64_t* result, const char** what) {
  struct user_regs_struct r = saved;
  SetCall(&r, gadget, call);
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &r) < 0) {
    *what = "ptrace(PTRACE_SETREGS)";
    return false;
  }
  int64_t unused;
  return ToSyscallStop(tid, false, &unused, what) && ToSyscallStop(tid, true, result, what);
}

// kSeized: from a syscall-exit-stop back into a PTRACE_EVENT_STOP inside get_signal(), with
// no user instruction run in between (the interrupt traps on the way out of the kernel).
bool Settle(pid_t tid, const char** what) {
  if (Ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0) {
    *what = "ptrace(PTRACE_INTERRUPT)";
    return false;
  }
  int sig = 0;
  for (int attempt = 0; attempt < 32; attempt++) {
    if (Ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0) {
      *what = "ptrace(PTRACE_CONT)";
      return false;
    }
    int status;
    if (!WaitStop(tid, &status, what)) return false;
    if ((status >> 16) == PTRACE_EVENT_STOP) return true;
    sig = PassOn(status);
  }
  errno = EAGAIN;
  *what = "injected syscall (the task does not stop again)";
  return false;
}

bool IsError(int64_t r) { return r < 0 && r >= -4095; }

// Tasks runnable on the whole machine right now (the fourth field of /proc/loadavg, "R/T",
// nr_running()), ferry's thread included; -1 when unreadable. Read at most every 20 ms (a
// restore runs thousands of small batches).
int RunnableNow() {
  static int64_t read_at = 0;
  static int runnable = -1;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  if (read_at != 0 && now - read_at < 20000000) return runnable;
  read_at = now;
  runnable = -1;
  int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return runnable;
  char buf[128];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (n <= 0) return runnable;
  buf[n] = '\0';
  double a, b, c;
  int r, t;
  if (sscanf(buf, "%lf %lf %lf %d/%d", &a, &b, &c, &r, &t) == 5) runnable = r;
  return runnable;
}

// Pins the calling thread to the CPU it runs on, for one batch (see the top of this file), and
// puts its affinity back when it goes out of scope. Only while the machine has no more
// runnable tasks than ferry may use CPUs: with more, ferry's CPU may hold another task too,
// which then takes turns with ferry and the tracee there (measured under load: 15 us a call
// unpinned, 35 us pinned on a busy CPU), and the scheduler puts the two together by itself.
// Best effort: a thread whose affinity cannot be read or set runs the batch unpinned.
class PinHere {
 public:
  // `tid`: the tracee, which must be allowed on this CPU (a container's cpuset may keep it
  // off it: pinned here, every stop would cross CPUs).
  explicit PinHere(pid_t tid) {
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(0, sizeof(saved_), &saved_) != 0) return;
    cpu_set_t theirs;
    if (sched_getaffinity(tid, sizeof(theirs), &theirs) != 0 || !CPU_ISSET(cpu, &theirs)) return;
    int runnable = RunnableNow();
    if (runnable < 0 || runnable > CPU_COUNT(&saved_)) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    pinned_ = sched_setaffinity(0, sizeof(one), &one) == 0;
  }
  ~PinHere() {
    if (pinned_) sched_setaffinity(0, sizeof(saved_), &saved_);
  }
  PinHere(const PinHere&) = delete;
  PinHere& operator=(const PinHere&) = delete;

 private:
  cpu_set_t saved_;
  bool pinned_ = false;
};

// Runs `n` calls ([nr, a0..a5] each) in `tid`, results into `out`. Registers (and in kSeized
// the signal mask and the kind of stop) are as before afterwards, also after a failure when
// the task still exists. A failing call does not stop the batch, except within `o.guard`.
bool Inject(pid_t tid, uint64_t gadget, const uint64_t* calls, size_t n, Mode mode, BatchOptions& o,
            int64_t* out, const char** what, int* err) {
  PinHere pin(tid);
  QuietWaits quiet;
  uint64_t mask = 0, all = ~0ULL;
  if (mode == kSeized) {
    if (Ptrace(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0 ||
        Ptrace(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof(all)), &all) < 0) {
      *err = errno;
      *what = "ptrace(PTRACE_SETSIGMASK)";
      return false;
    }
  }
  struct user_regs_struct saved;
  bool ok = Ptrace(PTRACE_GETREGS, tid, nullptr, &saved) >= 0;
  if (!ok) {
    *err = errno;
    *what = "ptrace(PTRACE_GETREGS)";
  }
  bool ran = false, stopped = false, self_restored = false;
  int read_err = 0;  // the read-back failed: the calls after it still run (they unmap what it read)
  for (size_t i = 0; i < n; i++) out[i] = -ECANCELED;
  for (size_t i = 0; i <= n && ok && !stopped; i++) {
    if (o.read_buf != nullptr && i == o.read_at && !ReadRemote(tid, o.read_addr, o.read_buf, o.read_len)) read_err = errno != 0 ? errno : EFAULT;
    if (o.take_pidfd >= 0 && i == o.take_at && i > 0 && !IsError(out[i - 1])) {
      long fd = syscall(SYS_pidfd_getfd, o.take_pidfd, static_cast<int>(out[i - 1]), 0);
      o.taken = fd >= 0 ? static_cast<int>(fd) : -errno;
    }
    if (i == n) break;
    ran = true;
    if (mode == kSeized && o.blob_count > 0 && i == o.blob_at &&
        (o.blob_mapped_at == SIZE_MAX || static_cast<uint64_t>(out[o.blob_mapped_at]) == o.blob_code)) {
      BlobResult b = RunBlob(tid, saved, mask, calls + i * 7, o.blob_count, o, out + i, what);
      if (b == kBlobDone) {
        i += o.blob_count - 1;
        continue;
      }
      if (b != kBlobSkipped) {
        ok = false;
        *err = errno;
        self_restored = b == kBlobSelfRestored;
        break;
      }
    }
    uint64_t call[7];
    for (size_t k = 0; k < 7; k++) call[k] = calls[i * 7 + k];
    if (o.take_pidfd >= 0 && i == o.take_at) call[1] = static_cast<uint64_t>(out[i - 1]);
    ok = mode == kSeized ? RunSyscall(tid, saved, gadget, call, &out[i], what)
                         : RunStep(tid, saved, gadget, call, &out[i], what);
    if (!ok) *err = errno;
    if (ok && i < o.guard && IsError(out[i])) stopped = true;
  }
  if (self_restored) {
    // The task runs its own code again, with its own registers and mask: leave them.
    return false;
  }
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &saved) < 0 && ok) {
    ok = false;
    *err = errno;
    *what = "ptrace(PTRACE_SETREGS)";
  }
  if (mode == kSeized) {
    const char* w2 = "";
    if (ran && !Settle(tid, &w2) && ok) {
      ok = false;
      *err = errno;
      *what = w2;
    }
    if (Ptrace(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0 && ok) {
      ok = false;
      *err = errno;
      *what = "ptrace(PTRACE_SETSIGMASK)";
    }
  }
  if (ok && read_err != 0) {
    ok = false;
    *err = read_err;
    *what = "process_vm_readv (read-back of an injected batch)";
  }
  return ok;
}

bool ModeArg(const Napi::CallbackInfo& info, size_t i, Mode* mode) {
  *mode = kStep;
  if (i >= info.Length() || info[i].IsUndefined()) return true;
  int64_t v;
  if (!ArgInt(info, i, &v)) return false;
  if (v != kStep && v != kSeized) {
    ThrowType(info.Env(), "inject: mode must be 0 (step) or 1 (seized)");
    return false;
  }
  *mode = static_cast<Mode>(v);
  return true;
}

// injectSyscall(tid, gadget, mode, nr, a0..a5) -> bigint: the raw return value (negative
// errno on failure, as the kernel returns it). Registers are restored afterwards.
Napi::Value InjectSyscall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid64;
  uint64_t gadget, call[7];
  Mode mode;
  if (!ArgInt(info, 0, &tid64) || !ArgU64(info, 1, &gadget) || !ModeArg(info, 2, &mode)) return {};
  for (size_t i = 0; i < 7; i++) {
    call[i] = 0;
    if (3 + i < info.Length() && !info[3 + i].IsUndefined() && !ArgU64(info, 3 + i, &call[i])) return {};
  }
  pid_t tid = static_cast<pid_t>(tid64);
  int64_t result = 0;
  const char* what = "";
  int err = 0;
  BatchOptions none;
  if (!Inject(tid, gadget, call, 1, mode, none, &result, &what, &err)) {
    ThrowErrno(env, what, err, "tid " + std::to_string(tid) + ", syscall " + std::to_string(call[0]));
    return {};
  }
  return Napi::BigInt::New(env, result);
}

// injectSyscalls(tid, gadget, calls: BigUint64Array of n*7 [nr, a0..a5], mode, options?)
// -> BigInt64Array of n results. Saves and restores registers once for the whole batch. A
// failing call (negative result) does not stop the batch: callers check each result.
// options: { guard?: number, readAt?: number, readAddr?: bigint, readInto?: Buffer } (see
// BatchOptions): calls not run because a guarded call failed hold -ECANCELED.
Napi::Value InjectSyscalls(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid64;
  uint64_t gadget;
  Mode mode;
  if (!ArgInt(info, 0, &tid64) || !ArgU64(info, 1, &gadget)) return {};
  if (info.Length() < 3 || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    ThrowType(env, "injectSyscalls: calls must be a BigUint64Array");
    return {};
  }
  if (!ModeArg(info, 3, &mode)) return {};
  auto calls = info[2].As<Napi::TypedArrayOf<uint64_t>>();
  size_t n = calls.ElementLength() / 7;
  BatchOptions o;
  if (info.Length() > 4 && !info[4].IsUndefined()) {
    if (!info[4].IsObject()) {
      ThrowType(env, "injectSyscalls: options must be an object");
      return {};
    }
    Napi::Object opts = info[4].As<Napi::Object>();
    Napi::Value guard = opts.Get("guard"), into = opts.Get("readInto");
    if (!guard.IsUndefined()) {
      if (!guard.IsNumber() || guard.As<Napi::Number>().Int64Value() < 0) {
        ThrowType(env, "injectSyscalls: guard must be a count of calls");
        return {};
      }
      o.guard = static_cast<size_t>(guard.As<Napi::Number>().Int64Value());
    }
    if (!into.IsUndefined()) {
      Napi::Value at = opts.Get("readAt"), addr = opts.Get("readAddr");
      bool lossless = true;
      if (!into.IsBuffer() || !at.IsNumber() || !addr.IsBigInt() || at.As<Napi::Number>().Int64Value() < 0 ||
          static_cast<size_t>(at.As<Napi::Number>().Int64Value()) > n) {
        ThrowType(env, "injectSyscalls: readInto needs a Buffer, readAt a call index (0..n) and readAddr a bigint");
        return {};
      }
      auto buf = into.As<Napi::Buffer<uint8_t>>();
      o.read_buf = buf.Data();
      o.read_len = buf.Length();
      o.read_at = static_cast<size_t>(at.As<Napi::Number>().Int64Value());
      o.read_addr = addr.As<Napi::BigInt>().Uint64Value(&lossless);
    }
    Napi::Value takeAt = opts.Get("takeFdAt"), takePidfd = opts.Get("takeFdPidfd");
    if (!takeAt.IsUndefined()) {
      if (!takeAt.IsNumber() || !takePidfd.IsNumber() || takeAt.As<Napi::Number>().Int64Value() < 1 ||
          static_cast<size_t>(takeAt.As<Napi::Number>().Int64Value()) > n || takePidfd.As<Napi::Number>().Int32Value() < 0) {
        ThrowType(env, "injectSyscalls: takeFdAt needs a call index (1..n) and takeFdPidfd a pidfd");
        return {};
      }
      o.take_at = static_cast<size_t>(takeAt.As<Napi::Number>().Int64Value());
      o.take_pidfd = takePidfd.As<Napi::Number>().Int32Value();
    }
  }
  Napi::Value blob = info.Length() > 4 && info[4].IsObject() ? info[4].As<Napi::Object>().Get("blob") : env.Undefined();
  Napi::FunctionReference on_wait;
  if (!blob.IsUndefined()) {
    // { at, count, mappedAt, code, codeLen, work, workLen, unmap, unmapLen, waitS, onWait? }
    if (!blob.IsObject()) {
      ThrowType(env, "injectSyscalls: blob must be an object");
      return {};
    }
    Napi::Object b = blob.As<Napi::Object>();
    auto num = [&](const char* k, size_t* v) {
      Napi::Value x = b.Get(k);
      if (!x.IsNumber() || x.As<Napi::Number>().Int64Value() < 0) return false;
      *v = static_cast<size_t>(x.As<Napi::Number>().Int64Value());
      return true;
    };
    auto big = [&](const char* k, uint64_t* v) {
      Napi::Value x = b.Get(k);
      bool lossless = true;
      if (!x.IsBigInt()) return false;
      *v = x.As<Napi::BigInt>().Uint64Value(&lossless);
      return lossless;
    };
    size_t wait_s = 0;
    o.blob_mapped_at = SIZE_MAX;  // absent: the area is mapped already
    if (!num("at", &o.blob_at) || !num("count", &o.blob_count) ||
        (!b.Get("mappedAt").IsUndefined() && !num("mappedAt", &o.blob_mapped_at)) ||
        !big("code", &o.blob_code) || !num("codeLen", &o.blob_code_len) || !big("work", &o.blob_work) ||
        !num("workLen", &o.blob_work_len) || !big("unmap", &o.blob_unmap) || !num("unmapLen", &o.blob_unmap_len) ||
        !num("waitS", &wait_s) || wait_s < 1 || wait_s > 60 || (o.blob_mapped_at != SIZE_MAX && o.blob_mapped_at >= o.blob_at) ||
        o.blob_at + o.blob_count > n || o.guard > o.blob_at ||
        (o.read_buf != nullptr && o.read_at > o.blob_at && o.read_at < o.blob_at + o.blob_count) ||
        (o.take_pidfd >= 0 && o.take_at > o.blob_at && o.take_at <= o.blob_at + o.blob_count)) {
      ThrowType(env, "injectSyscalls: blob needs at/count/mappedAt (mappedAt < at, at + count <= n, no guard, "
                     "read or take inside), code/work/unmap bigints, their lengths, waitS 1..60");
      return {};
    }
    o.blob_wait_s = static_cast<int>(wait_s);
    Napi::Value cb = b.Get("onWait");
    if (cb.IsFunction()) {
      on_wait = Napi::Persistent(cb.As<Napi::Function>());
      o.on_blob_wait = [&on_wait]() { on_wait.Call({}); };
    }
  }
  pid_t tid = static_cast<pid_t>(tid64);
  auto out = Napi::TypedArrayOf<int64_t>::New(env, n, napi_bigint64_array);
  const char* what = "";
  int err = 0;
  bool ok = Inject(tid, gadget, calls.Data(), n, mode, o, out.Data(), &what, &err);
  if (o.take_pidfd >= 0 && info[4].IsObject()) {
    // The copy is the caller's to close, also when the batch failed after it was taken.
    info[4].As<Napi::Object>().Set("takenFd", Napi::Number::New(env, o.taken));
  }
  if (!blob.IsUndefined()) {
    blob.As<Napi::Object>().Set("loose", Napi::Boolean::New(env, o.blob_loose));
  }
  if (env.IsExceptionPending()) return {};  // thrown by onWait
  if (!ok) {
    ThrowErrno(env, what, err, "tid " + std::to_string(tid));
    return {};
  }
  return out;
}

}  // namespace

void InitInject(Napi::Env env, Napi::Object exports) {
  exports.Set("injectSyscall", Napi::Function::New(env, InjectSyscall));
  exports.Set("injectSyscalls", Napi::Function::New(env, InjectSyscalls));
}

}  // namespace ferry
