// ptrace(2) and waitpid(2) for the controller.
//
// Wraps: PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, PTRACE_CONT, PTRACE_SETOPTIONS,
// PTRACE_GETREGS/SETREGS, PTRACE_GETREGSET/SETREGSET (NT_X86_XSTATE), PTRACE_GETSIGMASK/
// SETSIGMASK, PTRACE_GET_RSEQ_CONFIGURATION, PTRACE_PEEKSIGINFO, waitpid(2) with __WALL, waitid(2), get_robust_list(2),
// tgkill(2), waitid(2).
//
// Thread affinity: the kernel accepts ptrace requests only from the thread that attached
// (task->parent is that thread). Every function here is synchronous and must be called on the
// JS thread that seized the tracee; never from a worker pool.
#include <napi.h>

#include <elf.h>
#include <errno.h>
#include <linux/ptrace.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "errors.h"
#include "wait.h"

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
struct ptrace_rseq_configuration {
  __u64 rseq_abi_pointer;
  __u32 rseq_abi_size;
  __u32 signature;
  __u32 flags;
  __u32 pad;
};
#endif

namespace ferry {
namespace {

// The largest XSAVE area a CPU can have today is under 12 KiB (AMX tiles add 8 KiB).
constexpr size_t kMaxXstate = 16384;

long Ptrace(long req, pid_t tid, void* addr, void* data) {
  return syscall(SYS_ptrace, req, tid, addr, data);
}

bool TidArg(const Napi::CallbackInfo& info, pid_t* tid) {
  int64_t v;
  if (!ArgInt(info, 0, &v)) return false;
  *tid = static_cast<pid_t>(v);
  return true;
}

// seize(tid, options): PTRACE_SEIZE. The tracee keeps running until interrupted.
Napi::Value Seize(const Napi::CallbackInfo& info) {
  pid_t tid;
  int64_t opts = 0;
  if (!TidArg(info, &tid)) return {};
  if (info.Length() > 1 && !ArgInt(info, 1, &opts)) return {};
  if (Ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(opts)) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SEIZE)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// interrupt(tid): PTRACE_INTERRUPT; the tracee reports a PTRACE_EVENT_STOP to waitpid.
Napi::Value Interrupt(const Napi::CallbackInfo& info) {
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  if (Ptrace(PTRACE_INTERRUPT, tid, nullptr, nullptr) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_INTERRUPT)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// detach(tid, signal): PTRACE_DETACH, delivering `signal` (0 for none).
Napi::Value Detach(const Napi::CallbackInfo& info) {
  pid_t tid;
  int64_t sig = 0;
  if (!TidArg(info, &tid)) return {};
  if (info.Length() > 1 && !ArgInt(info, 1, &sig)) return {};
  if (Ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(sig)) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_DETACH)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// cont(tid, signal): PTRACE_CONT.
Napi::Value Cont(const Napi::CallbackInfo& info) {
  pid_t tid;
  int64_t sig = 0;
  if (!TidArg(info, &tid)) return {};
  if (info.Length() > 1 && !ArgInt(info, 1, &sig)) return {};
  if (Ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(sig)) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_CONT)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// syscallResume(tid, signal): PTRACE_SYSCALL: runs the tracee to its next syscall-entry (or
// -exit) stop, delivering `signal` (0 for none).
Napi::Value SyscallResume(const Napi::CallbackInfo& info) {
  pid_t tid;
  int64_t sig = 0;
  if (!TidArg(info, &tid)) return {};
  if (info.Length() > 1 && !ArgInt(info, 1, &sig)) return {};
  if (Ptrace(PTRACE_SYSCALL, tid, nullptr, reinterpret_cast<void*>(sig)) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SYSCALL)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// setOptions(tid, options): PTRACE_SETOPTIONS (e.g. PTRACE_O_EXITKILL for restore stubs).
Napi::Value SetOptions(const Napi::CallbackInfo& info) {
  pid_t tid;
  int64_t opts;
  if (!TidArg(info, &tid) || !ArgInt(info, 1, &opts)) return {};
  if (Ptrace(PTRACE_SETOPTIONS, tid, nullptr, reinterpret_cast<void*>(opts)) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SETOPTIONS)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// waitpid(tid, flags, timeoutMs): waitpid(2) on ONE pid (never -1: libuv owns SIGCHLD for its
// children), bounded (wait.h): a task that dies without being collectable throws ESRCH, one
// that never reports throws ETIMEDOUT after timeoutMs (default kWaitTimeoutMs).
// __WALL is always added. Returns null for WNOHANG with nothing to report, else
// { status, exited, exitCode, signaled, termSig, stopped, stopSig, event }.
Napi::Value Waitpid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  int64_t flags = 0, timeout = kWaitTimeoutMs;
  if (!TidArg(info, &tid)) return {};
  if (info.Length() > 1 && !info[1].IsUndefined() && !ArgInt(info, 1, &flags)) return {};
  if (info.Length() > 2 && !info[2].IsUndefined() && !ArgInt(info, 2, &timeout)) return {};
  int status = 0;
  pid_t r = WaitBounded(tid, &status, static_cast<int>(flags), static_cast<int>(timeout));
  if (r < 0) {
    ThrowErrno(env, "waitpid", errno, "pid " + std::to_string(tid));
    return {};
  }
  if (r == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("status", status);
  o.Set("exited", WIFEXITED(status));
  o.Set("exitCode", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  o.Set("signaled", WIFSIGNALED(status));
  o.Set("termSig", WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  o.Set("stopped", WIFSTOPPED(status));
  o.Set("stopSig", WIFSTOPPED(status) ? WSTOPSIG(status) : 0);
  o.Set("event", WIFSTOPPED(status) ? (status >> 16) & 0xff : 0);
  return o;
}

// waitExit(pid, noWait): waitid(P_PID, pid, WEXITED | __WALL [| WNOWAIT]) -> { code, status }.
// With noWait the zombie is left for its real parent to reap: a tracer that is also the
// parent (a library caller that spawned the target) must not steal libuv's exit status.
Napi::Value WaitExit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  bool noWait = info.Length() > 1 && info[1].ToBoolean().Value();
  siginfo_t si = {};
  int r;
  // Bounded like every wait (wait.h): polled with WNOHANG, giving up after kWaitTimeoutMs.
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  for (long sleep_ns = 10000;; sleep_ns = sleep_ns < 1000000 ? sleep_ns * 2 : sleep_ns) {
    si.si_pid = 0;
    r = waitid(P_PID, static_cast<id_t>(tid), &si, WEXITED | WNOHANG | __WALL | (noWait ? WNOWAIT : 0));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || si.si_pid != 0) break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 > kWaitTimeoutMs) {
      r = -1;
      errno = ETIMEDOUT;
      break;
    }
    struct timespec ts = {0, sleep_ns};
    nanosleep(&ts, nullptr);
  }
  if (r < 0) {
    ThrowErrno(env, "waitid", errno, "pid " + std::to_string(tid));
    return {};
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("code", si.si_code);
  o.Set("status", si.si_status);
  return o;
}

// getRegs(tid) -> Buffer: PTRACE_GETREGS, struct user_regs_struct (27 x u64; fs_base/gs_base
// included).
Napi::Value GetRegs(const Napi::CallbackInfo& info) {
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  auto buf = Napi::Buffer<uint8_t>::New(info.Env(), sizeof(struct user_regs_struct));
  if (Ptrace(PTRACE_GETREGS, tid, nullptr, buf.Data()) < 0) {
    ThrowErrno(info.Env(), "ptrace(PTRACE_GETREGS)", errno, "tid " + std::to_string(tid));
    return {};
  }
  return buf;
}

// setRegs(tid, Buffer): PTRACE_SETREGS.
Napi::Value SetRegs(const Napi::CallbackInfo& info) {
  pid_t tid;
  Napi::Buffer<uint8_t> buf;
  if (!TidArg(info, &tid) || !ArgBuffer(info, 1, &buf)) return {};
  if (buf.Length() != sizeof(struct user_regs_struct)) {
    ThrowType(info.Env(), "setRegs: buffer must be sizeof(user_regs_struct)");
    return {};
  }
  if (Ptrace(PTRACE_SETREGS, tid, nullptr, buf.Data()) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SETREGS)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// getXstate(tid) -> Buffer: PTRACE_GETREGSET NT_X86_XSTATE; the kernel trims iov_len to the
// real size (XSAVE layout; bytes 464.. hold the software-reserved xfeatures/xstate_size).
Napi::Value GetXstate(const Napi::CallbackInfo& info) {
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  uint8_t tmp[kMaxXstate] __attribute__((aligned(64)));
  struct iovec iov = {tmp, sizeof(tmp)};
  if (Ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0) {
    ThrowErrno(info.Env(), "ptrace(PTRACE_GETREGSET)", errno, "NT_X86_XSTATE, tid " + std::to_string(tid));
    return {};
  }
  return Napi::Buffer<uint8_t>::Copy(info.Env(), tmp, iov.iov_len);
}

// setXstate(tid, Buffer): PTRACE_SETREGSET NT_X86_XSTATE.
Napi::Value SetXstate(const Napi::CallbackInfo& info) {
  pid_t tid;
  Napi::Buffer<uint8_t> buf;
  if (!TidArg(info, &tid) || !ArgBuffer(info, 1, &buf)) return {};
  uint8_t tmp[kMaxXstate] __attribute__((aligned(64)));
  if (buf.Length() > sizeof(tmp)) {
    ThrowType(info.Env(), "setXstate: buffer too large");
    return {};
  }
  memcpy(tmp, buf.Data(), buf.Length());
  struct iovec iov = {tmp, buf.Length()};
  if (Ptrace(PTRACE_SETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SETREGSET)", errno, "NT_X86_XSTATE, tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// getSigmask(tid) -> bigint: PTRACE_GETSIGMASK (the blocked set, 64 bits).
Napi::Value GetSigmask(const Napi::CallbackInfo& info) {
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  uint64_t mask = 0;
  if (Ptrace(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0) {
    ThrowErrno(info.Env(), "ptrace(PTRACE_GETSIGMASK)", errno, "tid " + std::to_string(tid));
    return {};
  }
  return Napi::BigInt::New(info.Env(), mask);
}

// setSigmask(tid, bigint): PTRACE_SETSIGMASK.
Napi::Value SetSigmask(const Napi::CallbackInfo& info) {
  pid_t tid;
  uint64_t mask;
  if (!TidArg(info, &tid) || !ArgU64(info, 1, &mask)) return {};
  if (Ptrace(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0)
    ThrowErrno(info.Env(), "ptrace(PTRACE_SETSIGMASK)", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

// getRseq(tid) -> { pointer, size, signature, flags } | null: PTRACE_GET_RSEQ_CONFIGURATION.
Napi::Value GetRseq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  struct ptrace_rseq_configuration conf = {};
  if (Ptrace(PTRACE_GET_RSEQ_CONFIGURATION, tid, reinterpret_cast<void*>(sizeof(conf)), &conf) < 0) {
    ThrowErrno(env, "ptrace(PTRACE_GET_RSEQ_CONFIGURATION)", errno, "tid " + std::to_string(tid));
    return {};
  }
  if (conf.rseq_abi_pointer == 0) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("pointer", Napi::BigInt::New(env, static_cast<uint64_t>(conf.rseq_abi_pointer)));
  o.Set("size", conf.rseq_abi_size);
  o.Set("signature", conf.signature);
  o.Set("flags", conf.flags);
  return o;
}

// getRobustList(tid) -> { head, len }: get_robust_list(2) (needs ptrace access to tid).
Napi::Value GetRobustList(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  void* head = nullptr;
  size_t len = 0;
  if (syscall(SYS_get_robust_list, tid, &head, &len) < 0) {
    ThrowErrno(env, "get_robust_list", errno, "tid " + std::to_string(tid));
    return {};
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("head", Napi::BigInt::New(env, reinterpret_cast<uint64_t>(head)));
  o.Set("len", static_cast<double>(len));
  return o;
}

// peekSiginfo(tid, shared) -> Buffer[]: PTRACE_PEEKSIGINFO, every queued siginfo (128 bytes
// each) of the thread's private queue, or with `shared` of the process-wide queue. Peeking
// leaves the signals queued.
Napi::Value PeekSiginfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  pid_t tid;
  if (!TidArg(info, &tid)) return {};
  bool shared = info.Length() > 1 && info[1].ToBoolean().Value();
  Napi::Array out = Napi::Array::New(env);
  siginfo_t batch[32];
  for (uint64_t off = 0;;) {
    struct ptrace_peeksiginfo_args args = {off, shared ? PTRACE_PEEKSIGINFO_SHARED : 0u, 32};
    long n = Ptrace(PTRACE_PEEKSIGINFO, tid, &args, batch);
    if (n < 0) {
      ThrowErrno(env, "ptrace(PTRACE_PEEKSIGINFO)", errno, "tid " + std::to_string(tid));
      return {};
    }
    for (long i = 0; i < n; i++) {
      out.Set(out.Length(), Napi::Buffer<uint8_t>::Copy(env, reinterpret_cast<uint8_t*>(&batch[i]), sizeof(siginfo_t)));
    }
    if (n < 32) break;
    off += static_cast<uint64_t>(n);
  }
  return out;
}

// tgkill(tgid, tid, signal).
Napi::Value Tgkill(const Napi::CallbackInfo& info) {
  int64_t tgid, tid, sig;
  if (!ArgInt(info, 0, &tgid) || !ArgInt(info, 1, &tid) || !ArgInt(info, 2, &sig)) return {};
  if (syscall(SYS_tgkill, tgid, tid, sig) < 0)
    ThrowErrno(info.Env(), "tgkill", errno, "tid " + std::to_string(tid));
  return info.Env().Undefined();
}

}  // namespace

void InitPtrace(Napi::Env env, Napi::Object exports) {
  exports.Set("seize", Napi::Function::New(env, Seize));
  exports.Set("interrupt", Napi::Function::New(env, Interrupt));
  exports.Set("detach", Napi::Function::New(env, Detach));
  exports.Set("cont", Napi::Function::New(env, Cont));
  exports.Set("syscallResume", Napi::Function::New(env, SyscallResume));
  exports.Set("setOptions", Napi::Function::New(env, SetOptions));
  exports.Set("waitpid", Napi::Function::New(env, Waitpid));
  exports.Set("waitExit", Napi::Function::New(env, WaitExit));
  exports.Set("getRegs", Napi::Function::New(env, GetRegs));
  exports.Set("setRegs", Napi::Function::New(env, SetRegs));
  exports.Set("getXstate", Napi::Function::New(env, GetXstate));
  exports.Set("setXstate", Napi::Function::New(env, SetXstate));
  exports.Set("getSigmask", Napi::Function::New(env, GetSigmask));
  exports.Set("setSigmask", Napi::Function::New(env, SetSigmask));
  exports.Set("getRseq", Napi::Function::New(env, GetRseq));
  exports.Set("getRobustList", Napi::Function::New(env, GetRobustList));
  exports.Set("tgkill", Napi::Function::New(env, Tgkill));
  exports.Set("peekSiginfo", Napi::Function::New(env, PeekSiginfo));
}

}  // namespace ferry
