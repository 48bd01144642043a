// Creating restore stubs with a chosen PID.
//
// Wraps clone3(2) with set_tid (CLONE_ARGS set_tid/set_tid_size: one entry per pid-namespace
// level, innermost first; needs CAP_SYS_ADMIN in the owning user namespace — root here),
// ptrace(PTRACE_TRACEME), close_range(2), execve(2), waitpid(2).
//
// We do not use ns_last_pid: it is racy. PTRACE_TRACEME makes the calling JS thread the
// tracer, and execve stops the child with SIGTRAP before the stub's first instruction: a
// race-free point to take over from.
//
// The child is made the way posix_spawn makes one (CLONE_VM | CLONE_VFORK, its own stack):
// it shares Node's memory instead of copying it, which fork-style cloning a process of this
// size costs (its page tables: milliseconds), and the calling thread sleeps in clone3 until
// the child has exec'd. Sharing memory with a running multi-threaded process, the child issues
// raw syscalls only (no malloc, no locks, no errno), on a stack of its own in the caller's
// frame (the caller is suspended until the exec). Signals: the caller blocks every signal
// around clone3, so none can run one of Node's handlers in the child (they would run on the
// child's stack in Node's memory); the child sets every caught signal back to SIG_DFL, as
// execve would, and only then restores the caller's mask, which the stub inherits as a
// fork-made child did. Ignored signals stay ignored, as execve keeps them.
#include <napi.h>

#include <errno.h>
#include <pthread.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"

namespace ferry {
namespace {

// What the child needs, prepared by the parent: the child must not allocate.
struct SpawnChild {
  const char* path;
  char* const* argv;
  char* const* envp;
  sigset_t mask;  // the caller's, restored in the child before execve
};

// A syscall with no errno (the child shares the caller's TLS), -errno on failure.
long Raw(long nr, long a = 0, long b = 0, long c = 0, long d = 0) {
  register long r10 asm("r10") = d;
  long ret = nr;
  asm volatile("syscall" : "+a"(ret) : "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return ret;
}

// The child, on its own stack in the caller's memory: handlers back to SIG_DFL (none of
// Node's may run here), the caller's mask back, then traced, no descriptors, the stub.
[[noreturn]] __attribute__((noinline)) void StubChild(const SpawnChild* c) {
  struct {
    uint64_t handler, flags, restorer, mask;
  } act, dfl = {0, 0, 0, 0};
  for (long sig = 1; sig <= 64; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (Raw(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&act), 8) != 0) continue;
    if (act.handler != reinterpret_cast<uint64_t>(SIG_DFL) && act.handler != reinterpret_cast<uint64_t>(SIG_IGN)) {
      Raw(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, 8);
    }
  }
  Raw(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&c->mask), 0, 8);
  Raw(SYS_ptrace, PTRACE_TRACEME);
  Raw(SYS_close_range, 0, ~0U, 0);
  Raw(SYS_execve, reinterpret_cast<long>(c->path), reinterpret_cast<long>(c->argv), reinterpret_cast<long>(c->envp));
  Raw(SYS_exit_group, 127);
  __builtin_unreachable();
}

// spawnStub(path, tids: number[]) -> pid. tids[0] is the PID in the innermost namespace; an
// empty array lets the kernel choose. On return the child is stopped (SIGTRAP after execve)
// and traced by the calling thread. Throws EEXIST (syscall clone3) when the PID is taken.
Napi::Value SpawnStub(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray()) {
    ThrowType(env, "spawnStub(path: string, tids: number[])");
    return {};
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<pid_t> tids(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) tids[i] = arr.Get(i).As<Napi::Number>().Int32Value();

  char* const argv[] = {const_cast<char*>(path.c_str()), nullptr};
  char* const envp[] = {nullptr};
  SpawnChild c = {path.c_str(), argv, envp, {}};
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &c.mask);

  alignas(16) uint8_t stack[16384];
  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.flags = CLONE_VM | CLONE_VFORK;
  args.exit_signal = SIGCHLD;
  args.stack = reinterpret_cast<uintptr_t>(stack);
  args.stack_size = sizeof(stack);
  if (!tids.empty()) {
    args.set_tid = reinterpret_cast<uintptr_t>(tids.data());
    args.set_tid_size = tids.size();
  }
  long child;
  {
    // The child starts after the `syscall` with rsp at the top of `stack` (16-byte aligned)
    // and every other register as the parent's; it calls StubChild(&c) there and never
    // returns. The parent goes on with rax = the child's pid or -errno.
    register long rdi asm("rdi") = reinterpret_cast<long>(&args);
    register long rsi asm("rsi") = sizeof(args);
    register long r12 asm("r12") = reinterpret_cast<long>(&c);
    register long r13 asm("r13") = reinterpret_cast<long>(&StubChild);
    long rax = SYS_clone3;
    asm volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "mov %%r12, %%rdi\n\t"
        "call *%%r13\n\t"
        "ud2\n\t"
        "1:\n\t"
        : "+a"(rax)
        : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13)
        : "rcx", "r11", "memory", "cc");
    child = rax;
  }
  pthread_sigmask(SIG_SETMASK, &c.mask, nullptr);
  if (child < 0) {
    ThrowErrno(env, "clone3", static_cast<int>(-child), tids.empty() ? "" : "pid " + std::to_string(tids[0]));
    return {};
  }
  int status = 0;
  pid_t w;
  do {
    w = waitpid(static_cast<pid_t>(child), &status, __WALL);
  } while (w < 0 && errno == EINTR);
  if (w < 0) {
    ThrowErrno(env, "waitpid", errno, "stub " + std::to_string(child));
    return {};
  }
  if (!WIFSTOPPED(status) || WSTOPSIG(status) != SIGTRAP) {
    if (WIFSTOPPED(status)) {
      kill(static_cast<pid_t>(child), SIGKILL);
      waitpid(static_cast<pid_t>(child), &status, __WALL);
    }
    ThrowErrno(env, "execve", ENOEXEC, "stub " + path + " did not start (status " + std::to_string(status) + ")");
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(child));
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("spawnStub", Napi::Function::New(env, SpawnStub));
}

}  // namespace ferry
