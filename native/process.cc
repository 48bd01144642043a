// Creating restore stubs with a chosen PID, and ferry's helper processes (the watchdog).
//
// Wraps clone3(2) with set_tid (CLONE_ARGS set_tid/set_tid_size: one entry per pid-namespace
// level, innermost first; needs CAP_SYS_ADMIN in the owning user namespace — root here),
// ptrace(PTRACE_TRACEME, PTRACE_SETOPTIONS), prctl(PR_SET_PDEATHSIG), close_range(2),
// execve(2), waitpid(2); and for spawnDetached
// pipe2(2), setsid(2), dup2(2) and fcntl(2) F_DUPFD.
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
#include <fcntl.h>
#include <pthread.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "errors.h"

extern char** environ;  // ferry's environment, which a helper inherits

namespace ferry {
namespace {

// What the child needs, prepared by the parent: the child must not allocate.
struct SpawnChild {
  const char* path;
  char* const* argv;
  char* const* envp;
  sigset_t mask;  // the caller's, restored in the child before execve
  long parent;    // with die_with_parent: the caller's pid, which the child checks after its prctl
  bool die_with_parent;
};

// A syscall with no errno (the child shares the caller's TLS), -errno on failure.
long Raw(long nr, long a = 0, long b = 0, long c = 0, long d = 0) {
  register long r10 asm("r10") = d;
  long ret = nr;
  asm volatile("syscall" : "+a"(ret) : "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return ret;
}

// In a child, before execve: every handler back to SIG_DFL (none of Node's may run there) and,
// with `ignored`, every ignored signal too, as libuv's spawn does (Node ignores SIGPIPE, which
// a program such as `runc delete` or `sh` must not inherit).
void DefaultHandlers(bool ignored) {
  struct {
    uint64_t handler, flags, restorer, mask;
  } act, dfl = {0, 0, 0, 0};
  for (long sig = 1; sig <= 64; sig++) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    if (Raw(SYS_rt_sigaction, sig, 0, reinterpret_cast<long>(&act), 8) != 0) continue;
    if (act.handler == reinterpret_cast<uint64_t>(SIG_DFL)) continue;
    if (act.handler != reinterpret_cast<uint64_t>(SIG_IGN) || ignored) Raw(SYS_rt_sigaction, sig, reinterpret_cast<long>(&dfl), 0, 8);
  }
}

// clone3(CLONE_VM | CLONE_VFORK) onto a stack of this frame: the child calls `child(arg)` there
// and never returns; the caller goes on once the child has exec'd or exited. Every signal is
// blocked around it (no handler of Node's may run in the child), the caller's mask saved in
// `*mask` for the child to put back. `tids`: clone3's set_tid (none when empty). The child's
// pid, or -errno.
template <typename T>
long VforkCall(void (*child)(const T*), const T* arg, sigset_t* mask, const std::vector<pid_t>& tids) {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, mask);
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
  // The child starts after the `syscall` with rsp at the top of `stack` (16-byte aligned) and
  // every other register as the caller's; it calls child(arg) there. The caller goes on with
  // rax = the child's pid or -errno.
  register long rdi asm("rdi") = reinterpret_cast<long>(&args);
  register long rsi asm("rsi") = sizeof(args);
  register long r12 asm("r12") = reinterpret_cast<long>(arg);
  register long r13 asm("r13") = reinterpret_cast<long>(child);
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
  pthread_sigmask(SIG_SETMASK, mask, nullptr);
  return rax;
}

// The child, on its own stack in the caller's memory: handlers back to SIG_DFL (none of
// Node's may run here), the caller's mask back, then traced, no descriptors, the stub.
[[noreturn]] __attribute__((noinline)) void StubChild(const SpawnChild* c) {
  DefaultHandlers(false);
  // Before the exec, the caller is not yet a tracer that can ask for PTRACE_O_EXITKILL: a
  // caller killed meanwhile would let the program run. The parent-death signal covers that
  // window (kept across the exec: root execs with no gain of capabilities); a parent already
  // gone before the prctl is seen by getppid.
  if (c->die_with_parent) {
    Raw(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
    if (Raw(SYS_getppid) != c->parent) Raw(SYS_exit_group, 127);
  }
  Raw(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&c->mask), 0, 8);
  Raw(SYS_ptrace, PTRACE_TRACEME);
  Raw(SYS_close_range, 0, ~0U, 0);
  Raw(SYS_execve, reinterpret_cast<long>(c->path), reinterpret_cast<long>(c->argv), reinterpret_cast<long>(c->envp));
  Raw(SYS_exit_group, 127);
  __builtin_unreachable();
}

// spawnStub(path, tids: number[], dieWithParent?) -> pid. tids[0] is the PID in the innermost
// namespace; an empty array lets the kernel choose. On return the child is stopped (SIGTRAP
// after execve), traced by the calling thread with PTRACE_O_EXITKILL: it dies with ferry.
// Without that option a tracer's death resumes the exec-stopped child, which then runs the
// program untraced (seen: a stand-in Node ran and exited 0). `dieWithParent`: it also dies if
// ferry dies before its exec (PR_SET_PDEATHSIG SIGKILL, which it keeps: only for a child that
// is killed before it ever runs, never a restored process). Throws EEXIST (syscall clone3)
// when the PID is taken.
Napi::Value SpawnStub(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray() || (info.Length() > 2 && !info[2].IsBoolean() && !info[2].IsUndefined())) {
    ThrowType(env, "spawnStub(path: string, tids: number[], dieWithParent?: boolean)");
    return {};
  }
  bool die_with_parent = info.Length() > 2 && info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value();
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array arr = info[1].As<Napi::Array>();
  std::vector<pid_t> tids(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) tids[i] = arr.Get(i).As<Napi::Number>().Int32Value();

  char* const argv[] = {const_cast<char*>(path.c_str()), nullptr};
  char* const envp[] = {nullptr};
  SpawnChild c = {path.c_str(), argv, envp, {}, static_cast<long>(getpid()), die_with_parent};
  long child = VforkCall(&StubChild, &c, &c.mask, tids);
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
  if (ptrace(PTRACE_SETOPTIONS, static_cast<pid_t>(child), nullptr, reinterpret_cast<void*>(PTRACE_O_EXITKILL)) != 0) {
    int e = errno;
    kill(static_cast<pid_t>(child), SIGKILL);
    waitpid(static_cast<pid_t>(child), &status, __WALL);
    ThrowErrno(env, "ptrace", e, "PTRACE_SETOPTIONS of stub " + std::to_string(child));
    return {};
  }
  return Napi::Number::New(env, static_cast<double>(child));
}


// What a detached helper's child needs, prepared by the parent (the child must not allocate).
struct DetachedChild {
  const char* path;
  char* const* argv;
  char* const* envp;
  sigset_t mask;
  int in, out;          // its stdin (read end), its stdout and stderr (write end)
  const int* hold;      // descriptors it gets as 3, 4, ...
  int nhold;
  int high;             // first descriptor above every one involved, for the shuffle
};

// Writes a fixed message and the errno to fd 1 (the caller's pipe), raw.
void ChildFail(const char* what, long err) {
  char buf[96];
  int n = 0;
  for (const char* p = "ferry-watchdog: "; *p && n < 40; p++) buf[n++] = *p;
  for (const char* p = what; *p && n < 80; p++) buf[n++] = *p;
  buf[n++] = ' ';
  char digits[12];
  int d = 0;
  for (long e = err < 0 ? -err : err; d == 0 || e > 0; e /= 10) digits[d++] = static_cast<char>('0' + e % 10);
  while (d > 0 && n < 94) buf[n++] = digits[--d];
  buf[n++] = '\n';
  Raw(SYS_write, 1, reinterpret_cast<long>(buf), n);
}

// The helper child: handlers and ignored signals back to SIG_DFL, a session of its own (no Ctrl-C of ferry's
// terminal reaches it), the pipes as 0-2, the held descriptors as 3.., nothing else, the
// caller's mask, then the program.
[[noreturn]] __attribute__((noinline)) void DetachedChildMain(const DetachedChild* c) {
  DefaultHandlers(true);
  Raw(SYS_setsid);
  // Every source first above every target (a held descriptor may be numbered 0..2+n), then down.
  long in = Raw(SYS_fcntl, c->in, F_DUPFD, c->high);
  long out = Raw(SYS_fcntl, c->out, F_DUPFD, c->high);
  long held[64];
  long ok = in >= 0 && out >= 0;
  for (int i = 0; i < c->nhold && ok; i++) ok = (held[i] = Raw(SYS_fcntl, c->hold[i], F_DUPFD, c->high)) >= 0;
  ok = ok && Raw(SYS_dup2, in, 0) >= 0 && Raw(SYS_dup2, out, 1) >= 0 && Raw(SYS_dup2, out, 2) >= 0;
  for (int i = 0; i < c->nhold && ok; i++) ok = Raw(SYS_dup2, held[i], 3 + i) >= 0;
  if (!ok) {
    Raw(SYS_exit_group, 126);
    __builtin_unreachable();
  }
  Raw(SYS_close_range, 3 + c->nhold, ~0U, 0);
  Raw(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&c->mask), 0, 8);
  long r = Raw(SYS_execve, reinterpret_cast<long>(c->path), reinterpret_cast<long>(c->argv), reinterpret_cast<long>(c->envp));
  ChildFail("execve failed, errno", r);
  Raw(SYS_exit_group, 127);
  __builtin_unreachable();
}

// spawnDetached(path, args: string[], hold: number[]) -> { pid, stdin, stdout }: starts `path`
// with `args` (argv[1..]) and ferry's environment, in a session of its own, as a posix_spawn
// does (CLONE_VM | CLONE_VFORK: none of Node's memory is copied, which a fork of Node costs:
// 1-5 ms here). Its stdin is a pipe whose write end is returned (`stdin`), its stdout and
// stderr one pipe whose read end is returned (`stdout`, O_NONBLOCK); both are O_CLOEXEC in ferry, so no
// other child of ferry inherits them. `hold` (at most 64) become its descriptors 3, 4, ...; it
// has no other. The child is ferry's to reap (waitpid): Node does not know it.
Napi::Value SpawnDetached(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsArray() || !info[2].IsArray()) {
    ThrowType(env, "spawnDetached(path: string, args: string[], hold: number[])");
    return {};
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array a = info[1].As<Napi::Array>();
  Napi::Array h = info[2].As<Napi::Array>();
  if (h.Length() > 64) {
    ThrowType(env, "spawnDetached: at most 64 descriptors to hold");
    return {};
  }
  std::vector<std::string> args;
  args.push_back(path);
  for (uint32_t i = 0; i < a.Length(); i++) {
    if (!a.Get(i).IsString()) {
      ThrowType(env, "spawnDetached: args must be strings");
      return {};
    }
    args.push_back(a.Get(i).As<Napi::String>().Utf8Value());
  }
  std::vector<char*> argv;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::vector<int> hold(h.Length());
  int high = 3 + static_cast<int>(h.Length());
  for (uint32_t i = 0; i < h.Length(); i++) {
    if (!h.Get(i).IsNumber()) {
      ThrowType(env, "spawnDetached: hold descriptors must be numbers");
      return {};
    }
    hold[i] = h.Get(i).As<Napi::Number>().Int32Value();
    if (hold[i] < 0) {
      ThrowType(env, "spawnDetached: hold descriptors must be >= 0");
      return {};
    }
    if (hold[i] + 1 > high) high = hold[i] + 1;
  }
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) {
    ThrowErrno(env, "pipe2", errno, path);
    return {};
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    int e = errno;
    close(in[0]);
    close(in[1]);
    ThrowErrno(env, "pipe2", e, path);
    return {};
  }
  // Ferry's end only: the child's stdout and stderr stay blocking.
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  for (int fd : {in[0], in[1], out[0], out[1]}) if (fd + 1 > high) high = fd + 1;
  DetachedChild c = {path.c_str(), argv.data(), environ, {}, in[0], out[1], hold.data(), static_cast<int>(hold.size()), high};
  long child = VforkCall(&DetachedChildMain, &c, &c.mask, std::vector<pid_t>());
  close(in[0]);
  close(out[1]);
  if (child < 0) {
    close(in[1]);
    close(out[0]);
    ThrowErrno(env, "clone3", static_cast<int>(-child), path);
    return {};
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("pid", Napi::Number::New(env, static_cast<double>(child)));
  r.Set("stdin", Napi::Number::New(env, in[1]));
  r.Set("stdout", Napi::Number::New(env, out[0]));
  return r;
}

}  // namespace

void InitProcess(Napi::Env env, Napi::Object exports) {
  exports.Set("spawnStub", Napi::Function::New(env, SpawnStub));
  exports.Set("spawnDetached", Napi::Function::New(env, SpawnDetached));
}

}  // namespace ferry
