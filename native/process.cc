// Creating restore stubs with a chosen PID.
//
// Wraps clone3(2) with set_tid (CLONE_ARGS set_tid/set_tid_size: one entry per pid-namespace
// level, innermost first; needs CAP_SYS_ADMIN in the owning user namespace — root here),
// ptrace(PTRACE_TRACEME), close_range(2), execve(2), waitpid(2).
//
// We do not use ns_last_pid: it is racy. The child runs in a copy of this multi-threaded Node
// process, so between clone3 and execve it issues raw syscalls only (no malloc, no locks).
// PTRACE_TRACEME makes the calling JS thread the tracer, and execve stops the child with
// SIGTRAP before the stub's first instruction: a race-free point to take over from.
#include <napi.h>

#include <errno.h>
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

  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.exit_signal = SIGCHLD;
  if (!tids.empty()) {
    args.set_tid = reinterpret_cast<uintptr_t>(tids.data());
    args.set_tid_size = tids.size();
  }
  char* const argv[] = {const_cast<char*>(path.c_str()), nullptr};
  char* const envp[] = {nullptr};

  long child = syscall(SYS_clone3, &args, sizeof(args));
  if (child == 0) {
    // In the child: raw syscalls only.
    syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
    syscall(SYS_close_range, 0U, ~0U, 0U);
    syscall(SYS_execve, argv[0], argv, envp);
    syscall(SYS_exit_group, 127);
  }
  if (child < 0) {
    ThrowErrno(env, "clone3", errno, tids.empty() ? "" : "pid " + std::to_string(tids[0]));
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
