// Syscall injection into a ptrace-stopped task, with no code placed in it.
//
// Wraps PTRACE_GETREGS/SETREGS, PTRACE_SINGLESTEP and waitpid(2). The tracee's registers are
// pointed at an existing `syscall` instruction (one in its [vdso], or in a gadget page restore
// maps), with rax = number and rdi, rsi, rdx, r10, r8, r9 = arguments, and orig_rax = -1 so
// the kernel's syscall-restart logic (arch_do_signal_or_restart) does not rewind rip when the
// task leaves its current stop. One PTRACE_SINGLESTEP runs exactly the syscall; the kernel
// reports the single-step trap (SIGTRAP) on the way back to user mode, where rax holds the
// result. Then the saved registers are put back, so the task's own interrupted syscall (if
// any) still restarts normally when it finally resumes.
//
// Signals: callers block every signal in the tracee (PTRACE_SETSIGMASK) before injecting, so
// pending signals are not dequeued. Other stops seen meanwhile (a group-stop, SIGCONT/SIGSTOP
// that cannot be blocked) are swallowed and the step is retried if the syscall had not run.
#include <napi.h>

#include <errno.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errors.h"

namespace ferry {
namespace {

long Ptrace(long req, pid_t tid, void* addr, void* data) {
  return syscall(SYS_ptrace, req, tid, addr, data);
}

// Runs one syscall in `tid` through the instruction at `gadget`. `saved` holds the registers
// to run from (restored by the caller). Returns false with errno/what set on failure.
bool RunOne(pid_t tid, const struct user_regs_struct& saved, uint64_t gadget, const uint64_t call[7],
            int64_t* result, const char** what) {
  struct user_regs_struct r = saved;
  r.rip = gadget;
  r.rax = call[0];
  r.orig_rax = static_cast<uint64_t>(-1);
  r.rdi = call[1];
  r.rsi = call[2];
  r.rdx = call[3];
  r.r10 = call[4];
  r.r8 = call[5];
  r.r9 = call[6];
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
    pid_t w;
    do {
      w = waitpid(tid, &status, __WALL);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      *what = "waitpid";
      return false;
    }
    if (!WIFSTOPPED(status)) {
      errno = ESRCH;  // the task died under us
      *what = "injected syscall (task exited)";
      return false;
    }
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

bool CallArgs(const Napi::CallbackInfo& info, size_t first, uint64_t call[7]) {
  for (size_t i = 0; i < 7; i++) {
    call[i] = 0;
    if (first + i < info.Length() && !info[first + i].IsUndefined()) {
      if (!ArgU64(info, first + i, &call[i])) return false;
    }
  }
  return true;
}

// injectSyscall(tid, gadget, nr, a0..a5) -> bigint: the raw return value (negative errno on
// failure, as the kernel returns it). Registers are restored afterwards.
Napi::Value InjectSyscall(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid64;
  uint64_t gadget, call[7];
  if (!ArgInt(info, 0, &tid64) || !ArgU64(info, 1, &gadget) || !CallArgs(info, 2, call)) return {};
  pid_t tid = static_cast<pid_t>(tid64);
  struct user_regs_struct saved;
  if (Ptrace(PTRACE_GETREGS, tid, nullptr, &saved) < 0) {
    ThrowErrno(env, "ptrace(PTRACE_GETREGS)", errno, "tid " + std::to_string(tid));
    return {};
  }
  int64_t result = 0;
  const char* what = "";
  bool ok = RunOne(tid, saved, gadget, call, &result, &what);
  int err = errno;
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &saved) < 0 && ok) {
    ok = false;
    err = errno;
    what = "ptrace(PTRACE_SETREGS)";
  }
  if (!ok) {
    ThrowErrno(env, what, err, "tid " + std::to_string(tid) + ", syscall " + std::to_string(call[0]));
    return {};
  }
  return Napi::BigInt::New(env, result);
}

// injectSyscalls(tid, gadget, calls: BigUint64Array of n*7 [nr, a0..a5]) -> BigInt64Array of n
// results. Saves and restores registers once for the whole batch. A failing call (negative
// result) does not stop the batch: callers check each result.
Napi::Value InjectSyscalls(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t tid64;
  uint64_t gadget;
  if (!ArgInt(info, 0, &tid64) || !ArgU64(info, 1, &gadget)) return {};
  if (info.Length() < 3 || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array) {
    ThrowType(env, "injectSyscalls: calls must be a BigUint64Array");
    return {};
  }
  auto calls = info[2].As<Napi::TypedArrayOf<uint64_t>>();
  size_t n = calls.ElementLength() / 7;
  pid_t tid = static_cast<pid_t>(tid64);
  struct user_regs_struct saved;
  if (Ptrace(PTRACE_GETREGS, tid, nullptr, &saved) < 0) {
    ThrowErrno(env, "ptrace(PTRACE_GETREGS)", errno, "tid " + std::to_string(tid));
    return {};
  }
  auto out = Napi::TypedArrayOf<int64_t>::New(env, n, napi_bigint64_array);
  bool ok = true;
  int err = 0;
  const char* what = "";
  for (size_t i = 0; i < n && ok; i++) {
    int64_t result = 0;
    ok = RunOne(tid, saved, gadget, calls.Data() + i * 7, &result, &what);
    err = errno;
    out[i] = result;
  }
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, &saved) < 0 && ok) {
    ok = false;
    err = errno;
    what = "ptrace(PTRACE_SETREGS)";
  }
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
